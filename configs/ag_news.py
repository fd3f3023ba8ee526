"""Config for the ag_news dataset.  Variants: `configs/ag_news.py` (real models), `:embedded`, `:tiny`.

Every field is documented in genalign_jax/config.py; variants in genalign_jax/variants.py.
"""

from __future__ import annotations

from genalign_jax.config import base_config
from genalign_jax.variants import apply_variant


def get_config(variant: str = ""):
    """Returns the ag_news config, optionally with the `embedded` or `tiny` variant applied."""
    c = base_config()
    c.data.name = "ag_news"
    c.data.icl_pool_size = 1000      # the three roles are a seeded stratified split of all.csv
    c.data.golden_size = 400
    c.data.test_size = 2000
    c.generator.sampling.max_new_tokens = 96  # news snippets are longer than reviews
    c.classifier.max_length = 160
    c = apply_variant(c, variant, "ag_news")
    return c
