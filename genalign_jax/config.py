"""The one config schema of a genalign_jax run: a frozen dataclass per section, defaults defined once.

``configs/<dataset>.py`` start from :func:`base_config` (an ``ml_collections.ConfigDict`` derived
from these dataclasses, so ``--config.x.y=z`` overrides are typed), and the run turns the final
ConfigDict into a :class:`RunConfig` with :meth:`RunConfig.from_configdict`.  That is the only
place a raw ConfigDict is read: every stage receives its typed section.  Every cross-field check
lives in :meth:`RunConfig.validate`; a bad value raises :class:`ConfigError` naming the field
(``config.<section>.<field>``) and what was expected.

Two sections are owned by their stage packages and reused here as they are:
``reward`` is :class:`genalign_jax.reward.RewardConfig` and ``ppo`` is
:class:`genalign_jax.ppo.PPOConfig`, minus the fields the run derives from the generator
(``trainable``/``lora_*`` from ``generator.lora_*``, ``temperature`` from the sampler).
In the ConfigDict form ``reward.clip <= 0`` means "no clipping" (``RewardConfig.clip=None``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from genalign_jax.generator.llama_config import REMAT_POLICIES
from genalign_jax.generator.tokenize import check_prompt_buckets
from genalign_jax.ppo.config import DEFAULT_LORA_TARGETS, PPOConfig, check_field_types
from genalign_jax.reward.config import RewardConfig

__all__ = [
    "ConfigError", "SamplingSection", "GeneratorSection", "ClassifierSection", "DataSection",
    "LoopSection", "MeshSection", "LoggingSection", "CheckpointSection", "RunConfig",
    "base_config", "PPO_DERIVED_FIELDS", "CONVERGENCE_METRICS", "RESUMABLE_FIELDS",
    "config_differences", "flatten",
]


class ConfigError(ValueError):
    """A config value is missing, unknown or inconsistent (the message names the field)."""


class _Section:
    """Type-checks a section's scalar fields on construction."""

    def __post_init__(self) -> None:
        check_field_types(self)


@dataclasses.dataclass(frozen=True)
class SamplingSection(_Section):
    """How the generator samples (see ``genalign_jax.generator.SamplingConfig``)."""

    max_new_tokens: int = 64       # generation budget per example (a power of two avoids extra buckets)
    temperature: float = 1.0
    top_k: int = 0                 # 0 = off
    top_p: float = 1.0             # 1.0 = off
    stop_at_newline: bool = True   # stop tokens = EOS ids + tokens that contain a newline
    batch_size: int = 64           # prompts per generation call


@dataclasses.dataclass(frozen=True)
class GeneratorSection(_Section):
    """The generator LLM, its tokenizer, its LoRA adapters and its sampler."""

    source: str = "hf"             # "hf": HF folder/hub id; "gguf": a .gguf file; "random": preset, random init
    path: str = "meta-llama/Llama-3.1-8B-Instruct"  # HF folder or hub id (in the local cache); .gguf path
    gguf_file: str = ""            # for source="gguf": "smollm2" (embedded asset) or a file path
    preset: str = "llama3p1_8b"    # architecture for source="random"
    tokenizer: str = ""            # tokenizer folder/hub id; "" = same as path; "char" = built-in char tokenizer
    chat: bool = True              # render prompts with the tokenizer's chat template (instruct models)
    max_prompt_tokens: int = 512   # prompts are left-padded/left-truncated to exactly this many tokens
                                   # (static shapes: no recompilation across epochs); 0 = power-of-two buckets
    prompt_buckets: tuple[int, ...] = ()  # ascending widths < max_prompt_tokens: an epoch's prompts take the
                                   # smallest that holds its longest prompt (max_prompt_tokens if none);
                                   # cuts padding FLOPs; each bucket compiles once, the first epoch it occurs
    dtype: str = "bfloat16"        # activations
    param_dtype: str = "bfloat16"  # weights
    remat: str = "full"            # what PPO's backward recomputes: "full" (each layer: least memory),
                                   # "dots" (attention only: ~1/4 fewer FLOPs), "none" (see LlamaConfig)
    lora_rank: int = 16            # LoRA rank on the projections; 0 = full fine-tuning (explicitly)
    lora_alpha: float = 32.0
    lora_targets: tuple[str, ...] = DEFAULT_LORA_TARGETS
    sampling: SamplingSection = dataclasses.field(default_factory=SamplingSection)


@dataclasses.dataclass(frozen=True)
class ClassifierSection(_Section):
    """The classifier fine-tuned on each epoch's synthetic data (and the embedding model)."""

    source: str = "hf"             # "hf": pretrained folder/hub id; "random": preset with random init
    path: str = "FacebookAI/roberta-base"  # or "embedded:minilm" (the packaged all-MiniLM-L6-v2)
    preset: str = "roberta_base"   # architecture for source="random"
    max_length: int = 128          # tokens per example (longer ones are truncated, and counted)
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    epochs: int = 3
    batch_size: int = 32
    grad_clip: float = 1.0         # global-norm clip; 0 = off
    label_smoothing: float = 0.0
    eval_batch_size: int = 128
    embedding_pooling: str = "mean"  # "mean" (masked) or "cls": embeddings for the distance terms


@dataclasses.dataclass(frozen=True)
class DataSection(_Section):
    """The dataset, its three disjoint roles, ICL prompting and completion parsing."""

    name: str = "sst2"             # registry name: sst2, ag_news, trec, rotten_tomatoes
    data_dir: str = ""             # local folder with the dataset's public files ("" = hub cache / embedded)
    fallback_name: str = ""        # dataset used instead when data_dir is "" (embedded variants)
    icl_pool_size: int = 1000      # real examples that prompts may show
    golden_size: int = 400         # real examples scoring the classifier during training (the reward)
    test_size: int = 400           # real examples for final evaluation only; never seen by the loop
    k_shot: int = 4                # ICL examples per prompt
    same_label: bool = True        # ICL examples share the target label (False: mixed labels)
    prompt_template: str = ""      # override of the dataset's plain prompt template ("" = default)
    min_words: int = 3             # parsing: completions with fewer words are rejected (too_short)
    max_words: int = 200           # parsing: completions with more words are rejected (too_long)
    near_duplicate_threshold: float = 0.8  # word-set Jaccard at/above which two examples are near duplicates
    icl_copy_threshold: float = 0.8  # same measure against the prompt's own ICL examples (copy_of_icl)


@dataclasses.dataclass(frozen=True)
class LoopSection(_Section):
    """Epochs, rollouts and the convergence rule."""

    epochs: int = 10               # maximum loop epochs
    rollouts_per_epoch: int = 256  # synthetic examples generated per epoch (balanced over labels)
    convergence_metric: str = "golden/accuracy"  # any logged scalar, e.g. "golden/loss", "reward/scalar"
    convergence_mode: str = "max"  # "max" or "min"
    patience: int = 3              # stop after this many epochs without improvement
    min_delta: float = 0.002       # improvement smaller than this does not count


@dataclasses.dataclass(frozen=True)
class MeshSection(_Section):
    """Device mesh (``data`` x ``fsdp`` x ``tensor``) and multi-host start-up."""

    data: int = -1                 # -1 = all remaining devices
    fsdp: int = 1
    tensor: int = 1
    distributed: bool = False      # call jax.distributed.initialize() (multi-host)
    coordinator_address: str = ""  # leave empty for cluster auto-detection
    num_processes: int = 0
    process_id: int = 0


@dataclasses.dataclass(frozen=True)
class LoggingSection(_Section):
    tensorboard: bool = True
    num_text_samples: int = 2      # generations per label shown in TensorBoard text summaries
    progress_bars: bool = True     # tqdm bars (also disabled when CI is set)


@dataclasses.dataclass(frozen=True)
class CheckpointSection(_Section):
    every_epochs: int = 1
    max_to_keep: int = 3


# Metrics every epoch logs, whatever the outcome (credit="groups" logs golden loss/accuracy only).
CONVERGENCE_METRICS = ("golden/loss", "golden/accuracy", "golden/macro_f1", "reward/sequence_mean",
                       "gen/kept_fraction", "gen/num_kept", "gen/distinct_2", "ppo/rollout_kl")
# Fields that may differ between a run and its resumption or evaluation (they do not change what
# the run is); prefixes end in ".".
RESUMABLE_FIELDS = ("loop.epochs", "loop.patience", "loop.min_delta", "loop.convergence_metric",
                    "loop.convergence_mode", "logging.", "checkpoint.", "mesh.", "output_dir",
                    "run_name", "data.data_dir", "classifier.eval_batch_size",
                    "generator.remat",  # remat trades memory for time only
                    "generator.prompt_buckets")  # drops padding-only columns: same results
PPO_DERIVED_FIELDS = ("temperature", "trainable", "lora_rank", "lora_alpha", "lora_targets")
_SECTIONS: dict[str, type] = {
    "generator": GeneratorSection, "classifier": ClassifierSection, "data": DataSection,
    "loop": LoopSection, "mesh": MeshSection, "logging": LoggingSection,
    "checkpoint": CheckpointSection,
}
_NESTED: dict[tuple[str, str], type] = {("generator", "sampling"): SamplingSection}


def _default_ppo() -> PPOConfig:
    return _derive_ppo({}, GeneratorSection())


def _derive_ppo(values: Mapping[str, Any], generator: GeneratorSection) -> PPOConfig:
    """``PPOConfig`` from the run's ``ppo`` section plus the fields derived from the generator."""
    derived = dict(values, temperature=float(generator.sampling.temperature) or 1.0)
    if generator.lora_rank > 0:
        derived.update(trainable="lora", lora_rank=generator.lora_rank,
                       lora_alpha=generator.lora_alpha, lora_targets=tuple(generator.lora_targets))
    else:
        derived["trainable"] = "full"
    return PPOConfig.from_dict(derived)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a run needs, typed and validated (build with :meth:`from_configdict`)."""

    seed: int = 0                  # master seed: data splits, prompts, sampling, classifier, PPO
    run_name: str = ""             # outputs/<run_name>; default "<dataset>-<variant>"
    output_dir: str = "outputs"    # parent folder of runs (checkpoints, TensorBoard, metrics.jsonl)
    generator: GeneratorSection = dataclasses.field(default_factory=GeneratorSection)
    classifier: ClassifierSection = dataclasses.field(default_factory=ClassifierSection)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    reward: RewardConfig = dataclasses.field(default_factory=RewardConfig)
    ppo: PPOConfig = dataclasses.field(default_factory=_default_ppo)
    loop: LoopSection = dataclasses.field(default_factory=LoopSection)
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)

    def __post_init__(self) -> None:
        try:
            check_field_types(self)
        except ValueError as err:
            raise ConfigError(f"config: {err}") from err
        self.validate()

    # ------------------------------------------------------------------ conversion

    @classmethod
    def from_configdict(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> RunConfig:
        """The typed config of a ConfigDict (or nested dict); unknown or bad fields raise ConfigError."""
        values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        _reject_unknown("config", values, {f.name for f in dataclasses.fields(cls)})
        kwargs: dict[str, Any] = {k: v for k, v in values.items()
                                  if k not in _SECTIONS and k not in ("reward", "ppo")}
        for name, section in _SECTIONS.items():
            if name in values:
                kwargs[name] = _build_section(name, section, values[name])
        generator = kwargs.get("generator", GeneratorSection())
        if "reward" in values:
            reward = dict(values["reward"])
            if reward.get("clip") is not None and reward["clip"] <= 0:
                reward["clip"] = None
            kwargs["reward"] = _wrap("reward", lambda: RewardConfig.from_mapping(reward))
        ppo_values = dict(values.get("ppo", {}))
        derived = sorted(set(ppo_values) & set(PPO_DERIVED_FIELDS))
        if derived:
            raise ConfigError(f"config.ppo: {derived} are set from config.generator "
                              "(lora_rank/lora_alpha/lora_targets, sampling.temperature)")
        kwargs["ppo"] = _wrap("ppo", lambda: _derive_ppo(ppo_values, generator))
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict in the ConfigDict layout (``from_configdict`` inverts it)."""
        out = dataclasses.asdict(self)
        out["reward"]["clip"] = self.reward.clip if self.reward.clip is not None else 0.0
        for name in PPO_DERIVED_FIELDS:
            out["ppo"].pop(name)
        out["generator"]["lora_targets"] = tuple(self.generator.lora_targets)
        out["generator"]["prompt_buckets"] = tuple(self.generator.prompt_buckets)
        return out

    # ------------------------------------------------------------------ cross-field checks

    def validate(self) -> None:
        """Every check that involves more than one field, or a choice among names."""
        g, s, k, d, lp = self.generator, self.generator.sampling, self.classifier, self.data, self.loop
        _choice("generator.source", g.source, ("hf", "gguf", "random"))
        _choice("generator.remat", g.remat, REMAT_POLICIES)
        _choice("classifier.source", k.source, ("hf", "random"))
        _choice("classifier.embedding_pooling", k.embedding_pooling, ("mean", "cls"))
        _choice("loop.convergence_mode", lp.convergence_mode, ("max", "min"))
        if g.lora_rank < 0:
            raise ConfigError(f"config.generator.lora_rank must be >= 1 (LoRA) or 0 (full "
                              f"fine-tuning), got {g.lora_rank}")
        if g.max_prompt_tokens < 0:
            raise ConfigError(f"config.generator.max_prompt_tokens must be >= 0, got "
                              f"{g.max_prompt_tokens}")
        buckets = g.prompt_buckets
        if buckets and g.max_prompt_tokens == 0:
            raise ConfigError("config.generator.prompt_buckets needs config.generator."
                              "max_prompt_tokens > 0 (0 already buckets by powers of two)")
        try:
            check_prompt_buckets(buckets, g.max_prompt_tokens)
        except ValueError as err:
            raise ConfigError(f"config.generator.prompt_buckets must be strictly ascending "
                              f"integers in (0, max_prompt_tokens={g.max_prompt_tokens}), "
                              f"got {buckets!r}") from err
        n, b = lp.rollouts_per_epoch, s.batch_size
        if n < 1 or b < 1 or n % b:
            raise ConfigError(f"config.loop.rollouts_per_epoch ({n}) must be a positive multiple "
                              f"of config.generator.sampling.batch_size ({b})")
        if n % self.ppo.num_minibatches:
            raise ConfigError(f"config.loop.rollouts_per_epoch ({n}) must divide by "
                              f"config.ppo.num_minibatches ({self.ppo.num_minibatches})")
        for name, value in (("loop.epochs", lp.epochs), ("loop.patience", lp.patience),
                            ("checkpoint.every_epochs", self.checkpoint.every_epochs),
                            ("checkpoint.max_to_keep", self.checkpoint.max_to_keep),
                            ("data.golden_size", d.golden_size), ("data.test_size", d.test_size),
                            ("data.icl_pool_size", d.icl_pool_size), ("data.k_shot", d.k_shot),
                            ("classifier.epochs", k.epochs), ("classifier.batch_size", k.batch_size),
                            ("classifier.eval_batch_size", k.eval_batch_size),
                            ("classifier.max_length", k.max_length),
                            ("generator.sampling.max_new_tokens", s.max_new_tokens)):
            if value < 1:
                raise ConfigError(f"config.{name} must be >= 1, got {value}")
        if d.min_words > d.max_words:
            raise ConfigError(f"config.data.min_words ({d.min_words}) must not exceed "
                              f"config.data.max_words ({d.max_words})")
        allowed = CONVERGENCE_METRICS
        if self.reward.credit == "groups":
            allowed = tuple(m for m in allowed if m != "golden/macro_f1")
        if lp.convergence_metric not in allowed:
            raise ConfigError(f"config.loop.convergence_metric must be one of {allowed}, "
                              f"got {lp.convergence_metric!r}")
        if self.reward.credit == "groups" and self.reward.num_groups > n:
            raise ConfigError(f"config.reward.num_groups ({self.reward.num_groups}) exceeds "
                              f"config.loop.rollouts_per_epoch ({n}): each group needs samples")


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": (1, 2)}}`` -> ``{"a.b": [1, 2]}``: dotted field names (tuples as lists)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def config_differences(stored: Mapping[str, Any], current: RunConfig
                       ) -> tuple[dict[str, tuple[Any, Any]], dict[str, tuple[Any, Any]]]:
    """``(blocking, allowed)`` differences ``{field: (stored, current)}`` between a run's saved
    config (its ``config.json`` / checkpoint meta) and ``current``.

    Blocking differences change what the run is (dataset, models, LoRA shape, seeds, reward...);
    allowed ones are :data:`RESUMABLE_FIELDS` (epochs, patience, logging, ...).
    """
    old, new = flatten(stored), flatten(current.to_dict())
    blocking, allowed = {}, {}
    for name in sorted(set(old) | set(new)):
        if old.get(name) == new.get(name):
            continue
        resumable = any(name == f or (f.endswith(".") and name.startswith(f))
                        for f in RESUMABLE_FIELDS)
        (allowed if resumable else blocking)[name] = (old.get(name), new.get(name))
    return blocking, allowed


def _reject_unknown(where: str, values: Mapping[str, Any], known: set[str]) -> None:
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")


def _wrap(where: str, build):
    try:
        return build()
    except ConfigError:
        raise
    except (ValueError, TypeError) as err:
        raise ConfigError(f"config.{where}: {err}") from err


def _build_section(name: str, cls: type, values: Any) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"config.{name} must be a section (mapping), got {values!r}")
    _reject_unknown(f"config.{name}", values, {f.name for f in dataclasses.fields(cls)})
    kwargs = dict(values)
    for (section, field), sub in _NESTED.items():
        if section == name and field in kwargs:
            kwargs[field] = _build_section(f"{name}.{field}", sub, kwargs[field])
    for field in ("lora_targets", "prompt_buckets"):  # ConfigDict/JSON may hold lists
        if isinstance(kwargs.get(field), (list, tuple)):
            kwargs[field] = tuple(kwargs[field])
    return _wrap(name, lambda: cls(**kwargs))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"config.{name} must be one of {allowed}, got {value!r}")


def base_config() -> ml_collections.ConfigDict:
    """The defaults of every field as a ConfigDict (real-model settings); datasets start here."""
    return ml_collections.ConfigDict(RunConfig().to_dict())
