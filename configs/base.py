"""A template for a new dataset's config: every field at its default (real-model settings).

Every field is documented in ``genalign_jax/config.py``; copy ``configs/sst2.py`` for a new
dataset.  ``python launch/train.py --config=configs/base.py:tiny`` runs the defaults (SST-2).
"""

from __future__ import annotations

from genalign_jax.config import base_config
from genalign_jax.variants import apply_variant


def get_config(variant: str = ""):
    """The defaults of every field, with the ``embedded`` or ``tiny`` variant applied."""
    return apply_variant(base_config(), variant, "base")
