"""The GenAlign closed loop: generate → parse → classify → reward → PPO, epoch after epoch.

``Trainer(config).run()`` is what ``launch/train.py`` calls.  One epoch:

1. build ``loop.rollouts_per_epoch`` label-balanced ICL prompts and sample one
   completion each with the current policy (LoRA on);
2. parse completions into examples (every rejection counted by reason);
3. fine-tune a fresh classifier (from the pretrained encoder) on the kept
   examples — one per group with ``reward.credit='groups'`` — and score it on
   the golden set (loss, accuracy, macro-F1);
4. embed the kept examples with the *pretrained* encoder (a fixed space, so the
   distance terms are comparable across epochs) and compute inter/intra-class
   distances;
5. combine golden loss and distances into per-sample rewards (rejected
   completions get ``reward.invalid_reward``);
6. one PPO update (LoRA + value head, KL penalty against adapters-off);
7. log everything, checkpoint, and check convergence.

Every epoch derives its random streams from ``(seed, epoch)``, so a run resumed
from ``checkpoint_epoch_N`` reproduces the epochs an unbroken run would have.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from genalign_jax import builders
from genalign_jax.compile_counter import compile_count

log = logging.getLogger(__name__)

__all__ = ["Trainer", "ConvergenceTracker", "Rollouts", "distinct_n"]


@dataclasses.dataclass
class ConvergenceTracker:
    """Stops when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs."""

    metric: str
    mode: str = "max"
    patience: int = 3
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def __post_init__(self):
        if self.mode not in ("max", "min"):
            raise builders.ConfigError(f"config.loop.convergence_mode must be 'max' or 'min', "
                                       f"got {self.mode!r}")
        if self.patience < 1:
            raise builders.ConfigError(f"config.loop.patience must be >= 1, got {self.patience}")

    def update(self, epoch: int, metrics: dict[str, Any]) -> bool:
        """Records ``metrics[self.metric]``; returns True when the run has converged."""
        if self.metric not in metrics:
            raise builders.ConfigError(
                f"config.loop.convergence_metric {self.metric!r} is not a logged metric; "
                f"choose one of {sorted(metrics)}")
        value = float(metrics[self.metric])
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or (math.isfinite(value) and
                                 sign * (value - self.best) > self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]


def fixed_prompt_length(tokens: np.ndarray, mask: np.ndarray, length: int,
                        pad_id: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Left-pads (or left-truncates) a left-padded prompt batch to exactly ``length`` tokens.

    A fixed prompt length keeps the sampler and PPO programs identical across
    epochs (no recompilation); ``length <= 0`` leaves the batch as it is.
    Returns ``(tokens, mask, number of truncated prompts)``.
    """
    if length <= 0:
        return tokens, mask, 0
    b, p = tokens.shape
    truncated = int((mask.sum(axis=1) > length).sum())
    if p >= length:
        return tokens[:, p - length:], mask[:, p - length:], truncated
    pad = np.full((b, length - p), pad_id, tokens.dtype)
    return (np.concatenate([pad, tokens], 1),
            np.concatenate([np.zeros((b, length - p), mask.dtype), mask], 1), truncated)


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n: unique word n-grams / all word n-grams over ``texts`` (0 if none)."""
    grams = [tuple(words[i:i + n]) for words in (t.split() for t in texts)
             for i in range(len(words) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


@dataclasses.dataclass
class Rollouts:
    """One epoch's generations: prompts, sampler outputs per chunk, texts and their parse."""

    prompts: list
    samples: list
    completions: list[str]
    parse: Any
    generated_tokens: int
    seconds: float
    truncated_prompts: int = 0


class Trainer:
    """Builds every component from ``config`` and runs the loop (see the module docstring).

    ``evaluation=True`` opens an existing run without writing to it (``launch/evaluate.py``).
    """

    def __init__(self, config: ml_collections.ConfigDict, *, run_dir: str | os.PathLike | None = None,
                 resume: bool = False, show_progress: bool | None = None, logger: bool = True,
                 evaluation: bool = False):
        self.config = config
        c = config
        if show_progress is None:
            show_progress = bool(c.logging.progress_bars) and not os.environ.get("CI")
        self.show_progress = show_progress
        self.run_dir = Path(run_dir or Path(c.output_dir) / (c.run_name or "run")).absolute()
        self._check_sizes()
        t0 = time.perf_counter()
        self.mesh = builders.build_mesh(c)
        self.data = builders.build_data(c)
        self.num_labels = self.data.spec.num_labels
        self._eval_cache: dict[bool, tuple[list[str], np.ndarray]] = {}
        self.model, self.tokenizer = builders.build_generator(c, self.mesh)
        self.sampling = builders.build_sampling_config(c, self.tokenizer)
        self.pretrained_classifier = builders.build_classifier(c, self.num_labels, self.mesh)
        self.classifier_config = builders.build_classifier_config(
            c, self.num_labels, show_progress=self.show_progress)
        self.reward_config = builders.build_reward_config(c)
        self.ppo_config = builders.build_ppo_config(c)
        from genalign_jax import ppo
        from genalign_jax.reward import RewardNormalizerState
        self.ppo_state = self._on_mesh(ppo.init_ppo_state(self.model, self.ppo_config,
                                                          rngs=nnx.Rngs(c.seed + 1)))
        ppo.sync_model(self.model, self.ppo_state)
        self.reward_norm = RewardNormalizerState.init()
        self.tracker = ConvergenceTracker(c.loop.convergence_metric, c.loop.convergence_mode,
                                          c.loop.patience, c.loop.min_delta)
        self.start_epoch = 1
        self.history: list[dict[str, float]] = []
        from genalign_jax.checkpointing import RunCheckpointer
        self.checkpointer = RunCheckpointer(self.run_dir, c.checkpoint.max_to_keep,
                                            c.checkpoint.every_epochs)
        if resume:
            self._resume()
        elif not evaluation and self.checkpointer.latest_epoch() is not None:
            raise FileExistsError(f"{self.run_dir} already has checkpoints "
                                  f"{self.checkpointer.all_epochs()}: pass --resume to continue, "
                                  "or choose another --config.run_name")
        self.logger = None
        if logger:
            from genalign_jax.run_logging import RunLogger
            self.logger = RunLogger(self.run_dir, tensorboard=c.logging.tensorboard)
        if not evaluation:
            (self.run_dir / "config.json").write_text(c.to_json_best_effort(indent=2))
        log.info("set up in %.1f s on %s; run dir %s", time.perf_counter() - t0,
                 builders.describe_devices(), self.run_dir)

    # ------------------------------------------------------------------ set-up helpers

    def _check_sizes(self) -> None:
        c = self.config
        n, b = c.loop.rollouts_per_epoch, c.generator.sampling.batch_size
        if n < 1 or b < 1 or n % b:
            raise builders.ConfigError(
                f"config.loop.rollouts_per_epoch ({n}) must be a positive multiple of "
                f"config.generator.sampling.batch_size ({b})")
        if n % c.ppo.num_minibatches:
            raise builders.ConfigError(
                f"config.loop.rollouts_per_epoch ({n}) must divide by config.ppo.num_minibatches "
                f"({c.ppo.num_minibatches})")
        if c.loop.epochs < 1:
            raise builders.ConfigError(f"config.loop.epochs must be >= 1, got {c.loop.epochs}")

    def _on_mesh(self, ppo_state):
        """Places the PPO state's arrays with the mesh's rules (LoRA, value head, optimizer
        state and scalars replicated), so updates return arrays of the same sharding and
        the sampler/update programs are not recompiled after the first epoch."""
        from genalign_jax import sharding as sharding_lib
        items = ppo_state.checkpoint_items()
        placed = jax.device_put(items, sharding_lib.state_shardings(items, self.mesh))
        return ppo_state.restore(placed)

    def _key(self, epoch: int, stream: int) -> jax.Array:
        return jax.random.fold_in(jax.random.fold_in(jax.random.key(self.config.seed), epoch),
                                  stream)

    def checkpoint_state(self) -> dict[str, Any]:
        """The array part of a checkpoint: PPO items and reward-normaliser statistics."""
        return {"ppo": self.ppo_state.checkpoint_items(), "reward_norm": self.reward_norm}

    def _resume(self) -> None:
        epoch = self.checkpointer.latest_epoch()
        if epoch is None:
            raise FileNotFoundError(f"--resume: no checkpoint_epoch_* in {self.run_dir}")
        self.restore(epoch)
        log.info("resumed from %s", self.checkpointer.path(epoch))

    def restore(self, epoch: int) -> dict[str, Any]:
        """Loads ``checkpoint_epoch_<epoch>`` of this run into the trainer (policy synced)."""
        from genalign_jax import ppo
        state, meta = self.checkpointer.restore(epoch, self.checkpoint_state())
        self.ppo_state = self.ppo_state.restore(state["ppo"])
        self.reward_norm = state["reward_norm"]
        ppo.sync_model(self.model, self.ppo_state)
        self.tracker.load(meta["tracker"])
        self.history = meta.get("history", [])
        self.start_epoch = int(meta["epoch"]) + 1
        return meta

    # ------------------------------------------------------------------ stages

    def generate(self, n: int, rng_seed: Any, key: jax.Array, *, use_lora: bool = True,
                 progress_desc: str = "generate") -> Rollouts:
        """Samples ``n`` label-balanced examples (prompts, completions and their parse)."""
        from tqdm.auto import tqdm

        from genalign_jax import tokenization
        from genalign_jax.data import parse_prompt_completions
        from genalign_jax.sampling import generate

        c = self.config
        start = time.perf_counter()
        prompts = self.data.prompt_builder.build_balanced(n, rng=np.random.default_rng(rng_seed))
        forms = [list(p.messages) for p in prompts] if c.generator.chat else [p.text for p in prompts]
        tokens, mask = tokenization.encode_prompts(self.tokenizer, forms, chat=c.generator.chat,
                                                   bucket=False)
        tokens, mask, truncated = fixed_prompt_length(tokens, mask, c.generator.max_prompt_tokens,
                                                      self.sampling.pad_token_id)
        config = self.sampling.replace(use_lora=use_lora)
        batch = c.generator.sampling.batch_size
        samples, completions, generated = [], [], 0
        for i in tqdm(range(0, n, batch), desc=progress_desc, disable=not self.show_progress,
                      leave=False):
            out = generate(self.model, tokens[i:i + batch], mask[i:i + batch], config,
                           jax.random.fold_in(key, i))
            samples.append(out)
            completions.extend(tokenization.decode_completions(self.tokenizer, out))
            generated += int(np.asarray(out.lengths).sum())
        parse = parse_prompt_completions(prompts, completions, self.data.parse_config)
        return Rollouts(prompts, samples, completions, parse, generated,
                        time.perf_counter() - start, truncated)

    def _eval_set(self, test: bool) -> tuple[list[str], np.ndarray]:
        """Texts and labels of the golden (or test) split, read from the dataset once."""
        if test not in self._eval_cache:
            split = self.data.splits.test if test else self.data.splits.golden
            self._eval_cache[test] = (list(split["text"][:]), np.asarray(split["label"][:]))
        return self._eval_cache[test]

    def train_and_score(self, texts: list[str], labels: list[int], key: jax.Array,
                        test: bool = False) -> tuple[Any, dict[str, float]]:
        """Fine-tunes a fresh classifier on ``texts`` and scores it on golden (or test) data."""
        from genalign_jax import classifier as clf

        gold_texts, gold_labels = self._eval_set(test)
        if len(texts) == 0:
            log.warning("no usable synthetic examples: scoring an untrained classifier")
            trained = self.pretrained_classifier
            stats = None
        else:
            trained, stats = clf.train_classifier(self.pretrained_classifier, texts, labels,
                                                  self.classifier_config, key)
        result = clf.evaluate(trained, gold_texts, gold_labels,
                              batch_size=self.config.classifier.eval_batch_size)
        out = {"loss": result.loss, "accuracy": result.accuracy, "macro_f1": result.macro_f1}
        out.update({f"acc_class{i}": float(a) for i, a in enumerate(result.per_class_accuracy)})
        if stats is not None:
            out["train_loss"] = stats.final_loss
            out["train_examples_per_s"] = stats.examples_per_second
        return trained, out

    def reward(self, rollouts: Rollouts, key: jax.Array) -> tuple[np.ndarray, dict[str, float]]:
        """Per-completion sequence rewards and every reward/golden/distance term."""
        from genalign_jax import classifier as clf
        from genalign_jax.metrics import class_distance_metrics
        from genalign_jax.reward import RewardTerms, compute_reward, group_assignments

        c = self.config
        parse = rollouts.parse
        texts, labels = parse.kept_texts, np.asarray(parse.kept_labels, np.int64)
        metrics: dict[str, float] = {}
        groups = None
        if self.reward_config.credit == "groups" and len(texts) >= self.reward_config.num_groups:
            groups = group_assignments(len(texts), self.reward_config.num_groups)
            losses, accs = [], []
            for g in range(self.reward_config.num_groups):
                rows = np.flatnonzero(groups == g)
                _, score = self.train_and_score([texts[i] for i in rows], labels[rows].tolist(),
                                                jax.random.fold_in(key, g))
                losses.append(score["loss"])
                accs.append(score["accuracy"])
            golden_loss = np.asarray(losses)
            metrics.update({"golden/loss": float(np.mean(losses)),
                            "golden/accuracy": float(np.mean(accs))})
        else:
            _, score = self.train_and_score(texts, labels.tolist(), key)
            golden_loss = score["loss"]
            metrics.update({f"golden/{k}": v for k, v in score.items()})
        rewards = np.full(len(rollouts.completions), c.reward.invalid_reward, np.float32)
        if len(texts) >= 2:
            # Pad to the rollout count so the distance program has one static shape.
            n, size = len(texts), len(rollouts.completions)
            emb = clf.embed(self.pretrained_classifier, texts, pooling=c.classifier.embedding_pooling)
            padded = np.zeros((size, emb.shape[1]), np.float32)
            padded[:n] = emb
            padded_labels = np.zeros(size, np.int64)
            padded_labels[:n] = labels
            valid = np.arange(size) < n
            dist = class_distance_metrics(padded, padded_labels, self.num_labels,
                                          metric=c.reward.distance_metric, mask=valid)
            padded_groups = None
            if groups is not None:
                padded_groups = np.zeros(size, np.int64)
                padded_groups[:n] = groups
            terms = RewardTerms.from_metrics(golden_loss, dist, group_ids=padded_groups,
                                             sample_mask=valid)
            scalar, per_sample, self.reward_norm, info = compute_reward(
                terms, self.reward_config, self.reward_norm)
            rewards[np.asarray(parse.kept_indices)] = per_sample[:n]
            metrics.update(info)
            metrics["reward/epoch_scalar"] = float(scalar)
        metrics["reward/sequence_mean"] = float(rewards.mean())
        return rewards, metrics

    def ppo_step(self, rollouts: Rollouts, rewards: np.ndarray, key: jax.Array) -> dict[str, float]:
        """One PPO update on this epoch's rollouts; the model is synced afterwards."""
        from genalign_jax import ppo

        batch = self.config.generator.sampling.batch_size
        parts = [ppo.make_rollout(self.ppo_state, sample, rewards[i * batch:(i + 1) * batch],
                                  self.ppo_config) for i, sample in enumerate(rollouts.samples)]
        rollout = parts[0] if len(parts) == 1 else ppo.concat_rollouts(parts, self.ppo_config)
        self.ppo_state, metrics = ppo.ppo_update(self.ppo_state, rollout, self.ppo_config, key)
        ppo.sync_model(self.model, self.ppo_state)
        return {f"ppo/{k}": float(v) for k, v in metrics.items()}

    # ------------------------------------------------------------------ the loop

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Runs one full epoch and returns its metrics (also logged)."""
        c = self.config
        start, compiles0 = time.perf_counter(), compile_count()
        rollouts = self.generate(c.loop.rollouts_per_epoch, [c.seed, epoch], self._key(epoch, 0))
        rewards, metrics = self.reward(rollouts, self._key(epoch, 1))
        metrics.update(self.ppo_step(rollouts, rewards, self._key(epoch, 2)))
        parse = rollouts.parse
        lengths = np.concatenate([np.asarray(s.lengths) for s in rollouts.samples])
        metrics.update({
            "gen/kept_fraction": parse.kept_fraction(),
            "gen/num_kept": parse.num_kept,
            "gen/completion_tokens_mean": float(lengths.mean()),
            "gen/distinct_1": distinct_n(parse.kept_texts, 1),
            "gen/distinct_2": distinct_n(parse.kept_texts, 2),
            "gen/truncated_prompts": rollouts.truncated_prompts,
            "gen/tokens_per_s": rollouts.generated_tokens / max(rollouts.seconds, 1e-9),
            "time/generate_s": rollouts.seconds,
            "time/epoch_s": time.perf_counter() - start,
            "compiles/epoch": compile_count() - compiles0,
        })
        metrics.update({f"gen/rejected/{k}": v for k, v in parse.rejected.items()})
        if self.logger is not None:
            self.logger.scalars(epoch, metrics)
            self.logger.histogram(epoch, "reward/sequence", rewards)
            self.logger.text(epoch, "samples", self._samples_markdown(rollouts))
            self.logger.flush()
        return metrics

    def _samples_markdown(self, rollouts: Rollouts) -> str:
        per_label: dict[int, list[str]] = {}
        for text, label in zip(rollouts.parse.kept_texts, rollouts.parse.kept_labels):
            per_label.setdefault(label, []).append(text)
        lines = []
        for label, name in enumerate(self.data.spec.label_names):
            for text in per_label.get(label, [])[:self.config.logging.num_text_samples]:
                lines.append(f"* **{name}**: {text}")
        return "\n".join(lines) or "(no kept examples)"

    def run(self) -> dict[str, Any]:
        """Runs epochs until convergence or ``loop.epochs``; returns a summary with the stop reason."""
        c = self.config
        reason = f"reached loop.epochs={c.loop.epochs}"
        if self.start_epoch > c.loop.epochs:
            reason = f"already at epoch {self.start_epoch - 1} of loop.epochs={c.loop.epochs}"
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, c.loop.epochs + 1):
            metrics = self.run_epoch(epoch)
            converged = self.tracker.update(epoch, metrics)
            self.history.append({k: float(v) for k, v in metrics.items()})
            log.info("epoch %d: golden acc %.4f loss %.4f, kept %d/%d, reward %.4f, KL %.4f, "
                     "%.1f s, %d compiles", epoch, metrics.get("golden/accuracy", float("nan")),
                     metrics.get("golden/loss", float("nan")), metrics["gen/num_kept"],
                     c.loop.rollouts_per_epoch, metrics["reward/sequence_mean"],
                     metrics.get("ppo/rollout_kl", float("nan")), metrics["time/epoch_s"],
                     metrics["compiles/epoch"])
            last = converged or epoch == c.loop.epochs
            if self.checkpointer.should_save(epoch, last=last):
                meta = {"epoch": epoch, "config": json.loads(c.to_json_best_effort()),
                        "tracker": self.tracker.state(), "history": self.history}
                self.checkpointer.save(epoch, self.checkpoint_state(), meta)
            if converged:
                reason = (f"converged: {self.tracker.metric} did not improve by more than "
                          f"{self.tracker.min_delta} for {self.tracker.patience} epochs "
                          f"(best {self.tracker.best:.4f} at epoch {self.tracker.best_epoch})")
                break
        log.info("stopped after epoch %d: %s", epoch, reason)
        summary = {"last_epoch": epoch, "stop_reason": reason, **self.tracker.state()}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        if self.logger is not None:
            final = self.history[-1] if self.history else {}
            hparams = {k: v for k, v in _flatten(c.to_dict()).items()}
            self.logger.hparams(hparams, {k: final[k] for k in
                                          ("golden/accuracy", "golden/loss") if k in final})
            self.logger.close()
        self.checkpointer.close()
        return summary


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
