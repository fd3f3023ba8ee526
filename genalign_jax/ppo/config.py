"""PPO hyper-parameters: a frozen, validated, dict-constructible dataclass.

``PPOConfig`` is hashable (it is a static argument of the jitted programs) and
can be built from a plain dict, e.g. ``PPOConfig.from_dict(cfg.ppo.to_dict())``
for an ml-collections ``ConfigDict``.  Unknown keys and out-of-range values
raise ``ValueError`` naming the offending field.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

__all__ = ["DEFAULT_LORA_TARGETS", "ValueHeadConfig", "PPOConfig", "check_field_types"]

DEFAULT_LORA_TARGETS: tuple[str, ...] = (
    "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _fail(owner: str, name: str, message: str) -> None:
    raise ValueError(f"{owner}.{name} {message}")


def check_field_types(obj: Any) -> None:
    """Checks a dataclass's ``float``/``int``/``bool``/``str`` fields against their annotations.

    Coerces ints to floats where a float is expected (and integral floats to ints); any other
    mismatch raises ``ValueError`` naming ``<Class>.<field>``.  Call it from ``__post_init__``.
    """
    owner = type(obj).__name__
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        kind = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                _fail(owner, field.name, f"must be a number, got {value!r}")
            object.__setattr__(obj, field.name, float(value))
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    object.__setattr__(obj, field.name, int(value))
                else:
                    _fail(owner, field.name, f"must be an integer, got {value!r}")
        elif kind == "bool":
            if not isinstance(value, bool):
                _fail(owner, field.name, f"must be true or false, got {value!r}")
        elif kind == "str":
            if not isinstance(value, str):
                _fail(owner, field.name, f"must be a string, got {value!r}")


def _from_dict(cls: type, values: Mapping[str, Any], nested: Mapping[str, type]) -> Any:
    if not isinstance(values, Mapping):
        raise ValueError(f"{cls.__name__}.from_dict expects a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{cls.__name__}.from_dict: unknown field(s) {unknown}; "
                         f"known fields: {sorted(known)}")
    kwargs = dict(values)
    for name, sub in nested.items():
        if name in kwargs and isinstance(kwargs[name], Mapping):
            kwargs[name] = sub.from_dict(kwargs[name])
    return cls(**kwargs)


@dataclasses.dataclass(frozen=True)
class ValueHeadConfig:
    """Critic settings.

    Attributes:
      critic: ``"shared"`` puts the value head on the policy trunk's final
        hidden states (one forward pass serves policy and value);
        ``"separate"`` puts it on a separate critic model passed to
        ``init_ppo_state(critic=...)``.
      init_scale: standard deviation of the value head's kernel init; ``0``
        (default) gives a zero-initialised head that predicts 0 at the start.
      stop_gradient: with a shared trunk, stop value-loss gradients at the
        trunk so only the head learns from the value loss.
    """

    critic: str = "shared"
    init_scale: float = 0.0
    stop_gradient: bool = False

    def __post_init__(self):
        check_field_types(self)
        if self.critic not in ("shared", "separate"):
            _fail("ValueHeadConfig", "critic",
                  f"must be 'shared' or 'separate', got {self.critic!r}")
        if self.init_scale < 0:
            _fail("ValueHeadConfig", "init_scale", f"must be >= 0, got {self.init_scale}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "ValueHeadConfig":
        """Builds the config from a plain dict, rejecting unknown keys."""
        return _from_dict(cls, values, {})


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    """All PPO hyper-parameters (defaults follow Ziegler et al. 2019 / TRL).

    Optimisation:
      ppo_epochs: passes over each rollout batch.
      num_minibatches: minibatches per epoch; the rollout batch size must divide by it.
      learning_rate, warmup_steps: peak learning rate and linear warm-up length, in
        optimizer steps (one step per minibatch).
      lr_schedule: ``"constant"`` (after warm-up), ``"cosine"`` or ``"linear"`` decay to 0
        at ``total_steps`` optimizer steps (required for the decaying schedules).
      max_grad_norm: global gradient-norm clip; ``0`` disables clipping.
      weight_decay, adam_b1, adam_b2, adam_eps: AdamW settings.

    Losses:
      clip_eps: ratio clip ε of the surrogate objective.
      value_clip_eps: clip of the value prediction around the rollout values.
      vf_coef, ent_coef: weights of the value loss and of the entropy bonus
        (``loss = pg_loss + vf_coef * vf_loss - ent_coef * entropy``).
      temperature: logits are divided by this before log-probabilities are
        taken; set it to the sampling temperature.

    Advantages:
      gamma, lam: GAE discount γ and λ over completion tokens.
      whiten_advantages: normalise advantages to zero mean, unit variance over
        the valid tokens of the rollout batch.

    KL penalty:
      kl_estimator: ``"k1"`` (log π − log π_ref) or ``"k3"``
        ((π_ref/π − 1) − log(π_ref/π), non-negative, lower variance).
      kl_coef: initial (or fixed) β; each completion token is rewarded −β·KL.
      adaptive_kl: adapt β with the proportional controller of Ziegler et al.:
        ``β ← β · (1 + clip(KL/target_kl − 1, −kl_clip, kl_clip) · n / kl_horizon)``
        with ``KL`` the mean per-sequence KL of the rollout and ``n`` its size.
      target_kl: target per-sequence KL (nats, summed over completion tokens).
      kl_horizon, kl_clip: controller horizon (in samples) and error clip.

    Rollout:
      recompute_logprobs: behaviour log-probs come from a teacher-forced
        forward of the current policy (``True``, exact PPO ratio of 1 on the
        first minibatch) instead of the sampler's output.  ``False`` reuses the
        sampler's log-probs (taken at ``temperature``: ``SamplingConfig(
        logprob_temperature=...)``) and hidden states and skips the policy
        forward; float32 only (bfloat16's cached decode rounds differently).

    Trainable parameters:
      trainable: ``"lora"`` trains LoRA adapters and the value head only; the
        reference policy is the same model with adapters switched off.
        ``"full"`` trains every ``nnx.Param`` and keeps a reference copy.
      lora_rank, lora_alpha, lora_targets: adapters attached by
        ``init_ppo_state`` when the model has none (scale = alpha / rank).
      value_head: see ``ValueHeadConfig``.
    """

    ppo_epochs: int = 4
    num_minibatches: int = 4
    clip_eps: float = 0.2
    value_clip_eps: float = 0.2
    vf_coef: float = 0.1
    ent_coef: float = 0.0
    temperature: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    whiten_advantages: bool = True
    kl_estimator: str = "k1"
    kl_coef: float = 0.05
    adaptive_kl: bool = True
    target_kl: float = 6.0
    kl_horizon: int = 10000
    kl_clip: float = 0.2
    recompute_logprobs: bool = True
    learning_rate: float = 1e-5
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 0
    max_grad_norm: float = 1.0
    weight_decay: float = 0.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    trainable: str = "lora"
    lora_rank: int = 16
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    value_head: ValueHeadConfig = dataclasses.field(default_factory=ValueHeadConfig)

    def __post_init__(self):
        check_field_types(self)
        name = "PPOConfig"
        for field in ("ppo_epochs", "num_minibatches", "kl_horizon", "lora_rank"):
            if getattr(self, field) < 1:
                _fail(name, field, f"must be >= 1, got {getattr(self, field)}")
        for field in ("warmup_steps", "total_steps"):
            if getattr(self, field) < 0:
                _fail(name, field, f"must be >= 0, got {getattr(self, field)}")
        for field in ("clip_eps", "value_clip_eps", "temperature", "target_kl", "kl_clip",
                      "learning_rate", "lora_alpha", "adam_eps"):
            if not getattr(self, field) > 0:
                _fail(name, field, f"must be > 0, got {getattr(self, field)}")
        for field in ("vf_coef", "ent_coef", "kl_coef", "max_grad_norm", "weight_decay"):
            if getattr(self, field) < 0:
                _fail(name, field, f"must be >= 0, got {getattr(self, field)}")
        for field in ("gamma", "lam", "adam_b1", "adam_b2"):
            if not 0.0 <= getattr(self, field) <= 1.0:
                _fail(name, field, f"must be in [0, 1], got {getattr(self, field)}")
        if self.kl_estimator not in ("k1", "k3"):
            _fail(name, "kl_estimator", f"must be 'k1' or 'k3', got {self.kl_estimator!r}")
        if self.trainable not in ("lora", "full"):
            _fail(name, "trainable", f"must be 'lora' or 'full', got {self.trainable!r}")
        if self.lr_schedule not in ("constant", "cosine", "linear"):
            _fail(name, "lr_schedule",
                  f"must be 'constant', 'cosine' or 'linear', got {self.lr_schedule!r}")
        if self.lr_schedule != "constant" and self.total_steps <= self.warmup_steps:
            _fail(name, "total_steps",
                  f"must exceed warmup_steps ({self.warmup_steps}) for the "
                  f"{self.lr_schedule!r} schedule, got {self.total_steps}")
        targets = self.lora_targets
        if isinstance(targets, str) or not all(isinstance(t, str) for t in targets):
            _fail(name, "lora_targets", f"must be a sequence of module names, got {targets!r}")
        object.__setattr__(self, "lora_targets", tuple(targets))
        if not self.lora_targets:
            _fail(name, "lora_targets", "must name at least one module")
        if isinstance(self.value_head, Mapping):
            object.__setattr__(self, "value_head", ValueHeadConfig.from_dict(self.value_head))
        elif not isinstance(self.value_head, ValueHeadConfig):
            _fail(name, "value_head", f"must be a ValueHeadConfig or dict, got {self.value_head!r}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "PPOConfig":
        """Builds the config from a plain (possibly nested) dict, rejecting unknown keys."""
        return _from_dict(cls, values, {"value_head": ValueHeadConfig})

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (for logging / hparams); ``from_dict`` inverts it."""
        out = dataclasses.asdict(self)
        out["lora_targets"] = list(self.lora_targets)
        return out

    def replace(self, **changes: Any) -> "PPOConfig":
        """Returns a validated copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    @property
    def lora_scale(self) -> float:
        """LoRA output scale ``alpha / rank``."""
        return self.lora_alpha / self.lora_rank
