"""Config for the trec dataset.  Variants: `configs/trec.py` (real models), `:embedded`, `:tiny`.

See configs/base.py for every field.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import base  # noqa: E402


def get_config(variant: str = ""):
    """Returns the trec config, optionally with the `embedded` or `tiny` variant applied."""
    c = base.get_base_config()
    c.data.name = "trec"
    c.data.icl_pool_size = 1000      # ICL pool and golden from train.txt, test = test.txt
    c.data.golden_size = 400
    c.data.test_size = 500
    c.generator.sampling.max_new_tokens = 32  # questions are short
    c.classifier.max_length = 48
    c = base.apply_variant(c, variant, "trec")
    return c
