"""The reward's settings: term names, weights, credit mode and normalisation (one frozen dataclass).

See :mod:`genalign_jax.reward.combine` for what the weights mean and
:mod:`genalign_jax.reward.credit` for the credit modes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from typing import Any, Literal

from genalign_jax.reward.distances import METRICS

logger = logging.getLogger(__name__)

GOLDEN = "golden_loss"
INTER = "inter"
INTRA = "intra"
PS_INTER = "per_sample_inter"
PS_INTRA = "per_sample_intra"
TERM_NAMES: tuple[str, ...] = (GOLDEN, INTER, INTRA, PS_INTER, PS_INTRA)
CREDIT_MODES: tuple[str, ...] = ("influence", "broadcast", "groups")
INFLUENCE_PARAMS: tuple[str, ...] = ("head", "head+last_k", "all")
INFLUENCE_PRECONDITIONERS: tuple[str, ...] = ("adam", "sgd")
INFLUENCE_NORMALIZATIONS: tuple[str, ...] = ("none", "unit", "cosine")
INFLUENCE_GOLDEN_BALANCES: tuple[str, ...] = ("error", "none")
INFLUENCE_CENTERINGS: tuple[str, ...] = ("label", "none")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    """Weights, credit assignment and normalisation of the reward (see module docstring).

    Attributes:
      golden_loss_weight: weight of the golden loss; negative because lower loss is better.
      inter_weight: weight of inter-class distance; positive rewards separated classes.
      intra_weight: weight of intra-class distance; positive rewards diversity within a class.
      credit: per-sample golden credit, ``"influence"`` (default), ``"broadcast"`` or ``"groups"``
        (see :mod:`genalign_jax.reward.credit`).
      num_groups: number of groups (classifiers) per batch when ``credit == "groups"`` (>= 2).
      per_sample_distance: per-sample rewards use each sample's own distance terms (else the
        batch distance terms are broadcast).
      normalize: standardise every term with its running mean/std.
      clip: clip each (normalised) term to ``[-clip, clip]``; ``None`` disables.
      eps: added to the running std before dividing.
      influence_params: parameters the influence inner product runs over: ``"head"``,
        ``"head+last_k"`` (head + the last ``influence_last_k`` encoder layers) or ``"all"``.
      influence_last_k: encoder layers for ``"head+last_k"`` (0: the head and, for BERT, the
        pooler).
      influence_checkpoints: classifier checkpoints T (evenly spaced steps) summed over.
      influence_preconditioner: ``"adam"`` (1/(sqrt(v_hat)+eps), as the classifier trains) or
        ``"sgd"`` (identity).
      influence_normalize: per-example gradient normalisation, ``"none"``, ``"unit"`` (unit-norm
        per example) or ``"cosine"`` (unit-norm example and golden gradients).
      influence_golden_balance: ``"error"`` weighs golden classes by the inverse of their summed
        error, so the golden gradient carries no class-prior shift; or ``"none"``.
      influence_center: ``"label"`` subtracts each label's mean credit; or ``"none"``.
      influence_golden_size: golden examples for the golden gradient (0 = all of the split).
      The influence defaults are the variant measured best at finding mislabelled examples
      (``benchmarks/influence_variants.py``); :mod:`genalign_jax.classifier.influence` explains
      each option.
      invalid_reward: sequence reward of a completion the parser rejected.
      distance_metric: embedding distance of the class terms, one of ``METRICS``.
    """

    golden_loss_weight: float = -1.0
    inter_weight: float = 0.25
    intra_weight: float = 0.25
    credit: Literal["influence", "broadcast", "groups"] = "influence"
    num_groups: int = 1
    per_sample_distance: bool = True
    normalize: bool = True
    clip: float | None = 5.0
    eps: float = 1e-8
    influence_params: str = "head+last_k"
    influence_last_k: int = 1
    influence_checkpoints: int = 3
    influence_preconditioner: str = "adam"
    influence_normalize: str = "none"
    influence_golden_balance: str = "error"
    influence_center: str = "label"
    influence_golden_size: int = 0
    invalid_reward: float = -1.0
    distance_metric: str = "cosine"

    def __post_init__(self) -> None:
        for name in ("golden_loss_weight", "inter_weight", "intra_weight"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"RewardConfig.{name} must be finite, got {getattr(self, name)}")
        if self.credit not in CREDIT_MODES:
            raise ValueError(f"RewardConfig.credit must be one of {CREDIT_MODES}, got {self.credit!r}")
        if self.credit == "groups" and int(self.num_groups) < 2:
            raise ValueError(f"credit='groups' needs num_groups >= 2, got {self.num_groups}")
        if int(self.num_groups) < 1:
            raise ValueError(f"RewardConfig.num_groups must be >= 1, got {self.num_groups}")
        if self.clip is not None and not float(self.clip) > 0:
            raise ValueError(f"RewardConfig.clip must be > 0 or None, got {self.clip}")
        for name, allowed in (("influence_params", INFLUENCE_PARAMS),
                              ("influence_preconditioner", INFLUENCE_PRECONDITIONERS),
                              ("influence_normalize", INFLUENCE_NORMALIZATIONS),
                              ("influence_golden_balance", INFLUENCE_GOLDEN_BALANCES),
                              ("influence_center", INFLUENCE_CENTERINGS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"RewardConfig.{name} must be one of {allowed}, "
                                 f"got {getattr(self, name)!r}")
        if int(self.influence_checkpoints) < 1:
            raise ValueError(f"RewardConfig.influence_checkpoints must be >= 1, got "
                             f"{self.influence_checkpoints}")
        if int(self.influence_last_k) < 0:
            raise ValueError(f"RewardConfig.influence_last_k must be >= 0, got "
                             f"{self.influence_last_k}")
        if int(self.influence_golden_size) < 0:
            raise ValueError(f"RewardConfig.influence_golden_size must be >= 0 (0 = all), got "
                             f"{self.influence_golden_size}")
        if not math.isfinite(float(self.invalid_reward)):
            raise ValueError(f"RewardConfig.invalid_reward must be finite, got {self.invalid_reward}")
        if self.distance_metric not in METRICS:
            raise ValueError(f"RewardConfig.distance_metric must be one of {METRICS}, "
                             f"got {self.distance_metric!r}")
        if not float(self.eps) > 0:
            raise ValueError(f"RewardConfig.eps must be > 0, got {self.eps}")
        if self.golden_loss_weight > 0:
            logger.warning(
                "golden_loss_weight=%s > 0 rewards a HIGHER golden loss; use a negative weight "
                "unless that is intended", self.golden_loss_weight,
            )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any]) -> RewardConfig:
        """Build from a dict / ``ml_collections.ConfigDict``; unknown keys raise ``ValueError``."""
        cfg = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else cfg)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ValueError(f"unknown RewardConfig fields {unknown}; known: {sorted(known)}")
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for logging hparams and configs)."""
        return dataclasses.asdict(self)
