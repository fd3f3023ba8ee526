"""Config for the trec dataset.  Variants: `configs/trec.py` (real models), `:embedded`, `:tiny`.

Every field is documented in genalign_jax/config.py; variants in genalign_jax/variants.py.
"""

from __future__ import annotations

from genalign_jax.config import base_config
from genalign_jax.variants import apply_variant


def get_config(variant: str = ""):
    """Returns the trec config, optionally with the `embedded` or `tiny` variant applied."""
    c = base_config()
    c.data.name = "trec"
    c.data.icl_pool_size = 1000      # ICL pool and golden from train.txt, test = test.txt
    c.data.golden_size = 400
    c.data.test_size = 500
    c.generator.sampling.max_new_tokens = 32  # questions are short
    c.classifier.max_length = 48
    c = apply_variant(c, variant, "trec")
    return c
