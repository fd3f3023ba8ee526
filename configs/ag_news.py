"""Config for the ag_news dataset.  Variants: `configs/ag_news.py` (real models), `:embedded`, `:tiny`.

See configs/base.py for every field.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402


def get_config(variant: str = ""):
    """Returns the ag_news config, optionally with the `embedded` or `tiny` variant applied."""
    c = base.get_base_config()
    c.data.name = "ag_news"
    c.data.icl_pool_size = 1000      # the three roles are a seeded stratified split of all.csv
    c.data.golden_size = 400
    c.data.test_size = 2000
    c.generator.sampling.max_new_tokens = 96  # news snippets are longer than reviews
    c.classifier.max_length = 160
    c = base.apply_variant(c, variant, "ag_news")
    return c
