"""The GenAlign closed loop: generate → parse → classify → reward → PPO, epoch after epoch.

``Trainer(config).run()`` is what ``launch/train.py`` calls.  One epoch (:meth:`Trainer.run_epoch`):

1. :func:`~genalign_jax.run.rollouts.sample_rollouts`: ``loop.rollouts_per_epoch``
   label-balanced ICL prompts, one completion each with the current policy (LoRA on), parsed
   into examples (every rejection counted by reason);
2. :func:`~genalign_jax.run.scoring.score_rollouts`: a fresh classifier fine-tuned on the kept
   examples and scored on the golden set, embedding distances, per-sample rewards;
3. one PPO update (LoRA + value head, KL penalty against adapters-off);
4. log everything, checkpoint, and check convergence.

The trainer owns the loop, resume, checkpoints and logging only; every stage reads the typed
:class:`~genalign_jax.run.components.Components`.  Every epoch derives its random streams from
``(seed, epoch)``, so a run resumed from ``checkpoint_epoch_N`` reproduces the epochs an unbroken
run would have.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
import numpy as np

from genalign_jax import ppo
from genalign_jax import sharding as sharding_lib
from genalign_jax.compile_counter import compile_count
from genalign_jax.config import RunConfig, flatten
from genalign_jax.run import checkpoint as ckpt
from genalign_jax.run.components import Components, build_components, describe_devices
from genalign_jax.run.convergence import ConvergenceTracker
from genalign_jax.run.lock import RunLock
from genalign_jax.run.logger import RunLogger
from genalign_jax.run.rollouts import Rollouts, distinct_n, sample_rollouts
from genalign_jax.run.scoring import score_rollouts

log = logging.getLogger(__name__)

__all__ = ["Trainer", "as_run_config", "epoch_key"]


def as_run_config(config: RunConfig | ml_collections.ConfigDict) -> RunConfig:
    """The typed config (a ConfigDict is converted and validated once, here)."""
    return config if isinstance(config, RunConfig) else RunConfig.from_configdict(config)


def epoch_key(seed: int, epoch: int, stream: int) -> jax.Array:
    """The random key of ``stream`` in ``epoch``: resumed epochs draw what unbroken ones did."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), epoch), stream)


class Trainer:
    """Builds every component from ``config`` and runs the loop (see the module docstring)."""

    def __init__(self, config: RunConfig | ml_collections.ConfigDict, *,
                 run_dir: str | os.PathLike | None = None, resume: bool = False,
                 show_progress: bool | None = None):
        self.config = c = as_run_config(config)
        if show_progress is None:
            show_progress = c.logging.progress_bars and not os.environ.get("CI")
        self.show_progress = show_progress
        self.run_dir = Path(run_dir or Path(c.output_dir) / (c.run_name or "run")).absolute()
        t0 = time.perf_counter()
        if c.mesh.distributed:  # join the job before anything asks JAX for its process index
            m = c.mesh
            sharding_lib.maybe_initialize_distributed(
                m.coordinator_address or None, m.num_processes or None,
                m.process_id if m.coordinator_address else None)
        # Only process 0 writes the run folder (logs, metrics, config); orbax coordinates the
        # checkpoint writes of every process itself.
        self.is_writer = jax.process_index() == 0
        self._lock = RunLock(self.run_dir) if self.is_writer else None
        try:
            self._check_run_dir(resume)
            self.components: Components = build_components(c, show_progress=show_progress)
            self.state = ckpt.init_train_state(self.components.generator.model, c,
                                               self.components.mesh)
            self.tracker = ConvergenceTracker.from_config(c.loop)
            self.start_epoch = 1
            self.history: list[dict[str, float]] = []
            self.checkpointer = ckpt.RunCheckpointer(self.run_dir, c.checkpoint.max_to_keep,
                                                     c.checkpoint.every_epochs)
            if resume:
                self._resume()
        except BaseException:
            self.close()
            raise
        self.logger = RunLogger(self.run_dir, tensorboard=c.logging.tensorboard,
                                resume_epoch=self.start_epoch - 1 if resume else None,
                                write=self.is_writer)
        if self.is_writer:
            (self.run_dir / "config.json").write_text(json.dumps(c.to_dict(), indent=2))
        log.info("set up in %.1f s on %s; run dir %s", time.perf_counter() - t0,
                 describe_devices(), self.run_dir)

    # ------------------------------------------------------------------ run folder and resume

    _RUN_FILES = ("metrics.jsonl", "config.json", "summary.json", "tensorboard")

    def _check_run_dir(self, resume: bool) -> None:
        """A fresh run needs an empty folder; a resumed one the same config as the stored run."""
        if not resume:
            found = sorted(p.name for p in self.run_dir.glob("*")
                           if p.name in self._RUN_FILES or p.name.startswith("checkpoint_"))
            if found:
                raise FileExistsError(f"{self.run_dir} already holds a run ({', '.join(found)}): "
                                      "pass --resume to continue it, or choose another "
                                      "--config.run_name")
            return
        ckpt.check_same_run(self.run_dir, self.config, "--resume")

    def _resume(self) -> None:
        self.state, meta, epoch = ckpt.restore_latest(self.checkpointer, self.state,
                                                      self.components.generator.model)
        self.tracker.load(meta["tracker"])
        self.history = meta.get("history", [])
        self.start_epoch = int(meta["epoch"]) + 1
        log.info("resumed from %s", self.checkpointer.path(epoch))

    # ------------------------------------------------------------------ the epoch

    def _ppo_step(self, rollouts: Rollouts, rewards: np.ndarray, key: jax.Array) -> dict[str, float]:
        """One PPO update on this epoch's rollouts; the model is synced afterwards."""
        config, state = self.config.ppo, self.state
        batch = self.config.generator.sampling.batch_size
        start = time.perf_counter()
        parts = [ppo.make_rollout(state.ppo, sample, rewards[i * batch:(i + 1) * batch], config)
                 for i, sample in enumerate(rollouts.samples)]
        rollout = parts[0] if len(parts) == 1 else ppo.concat_rollouts(parts, config)
        jax.block_until_ready(rollout)
        rollout_s = time.perf_counter() - start
        start = time.perf_counter()
        new_ppo, metrics = ppo.ppo_update(state.ppo, rollout, config, key)
        out = {f"ppo/{k}": float(v) for k, v in metrics.items()}
        bad = [k for k in ("ppo/loss", "ppo/grad_norm") if not np.isfinite(out.get(k, 0.0))]
        if bad:
            raise ckpt.NonFiniteStateError(
                f"the PPO update produced non-finite {bad} ({', '.join(f'{k}={out[k]}' for k in bad)}); "
                "stopping before the state is used or saved (check the generator weights)")
        ppo.sync_model(self.components.generator.model, new_ppo)
        self.state = state.replace(ppo=new_ppo)
        out.update({"time/rollout_s": rollout_s, "time/ppo_s": time.perf_counter() - start})
        return out

    def run_epoch(self, epoch: int) -> dict[str, float]:
        """Runs one full epoch and returns its metrics (also logged)."""
        c = self.config
        start, compiles0 = time.perf_counter(), compile_count()
        rollouts = sample_rollouts(self.components, c.loop.rollouts_per_epoch, [c.seed, epoch],
                                   epoch_key(c.seed, epoch, 0), show_progress=self.show_progress)
        scores = score_rollouts(self.components, rollouts, self.state.reward_norm,
                                epoch_key(c.seed, epoch, 1))
        self.state = self.state.replace(reward_norm=scores.norm_state)
        metrics = dict(scores.metrics)
        metrics.update(self._ppo_step(rollouts, scores.rewards, epoch_key(c.seed, epoch, 2)))
        parse = rollouts.parse
        metrics.update({
            "gen/kept_fraction": parse.kept_fraction(),
            "gen/num_kept": parse.num_kept,
            "gen/completion_tokens_mean": float(rollouts.completion_lengths().mean()),
            "gen/distinct_1": distinct_n(parse.kept_texts, 1),
            "gen/distinct_2": distinct_n(parse.kept_texts, 2),
            "gen/truncated_prompts": rollouts.truncated_prompts,
            "gen/prompt_width": rollouts.prompt_width,  # max_prompt_tokens or a prompt bucket
            "gen/tokens_per_s": rollouts.generated_tokens / max(rollouts.seconds, 1e-9),
            "time/generate_s": rollouts.seconds,
            "time/epoch_s": time.perf_counter() - start,
            "compiles/epoch": compile_count() - compiles0,
        })
        metrics.update({f"gen/rejected/{k}": v for k, v in parse.rejected.items()})
        self.logger.scalars(epoch, metrics)
        self.logger.histogram(epoch, "reward/sequence", scores.rewards)
        if scores.credit is not None:
            self.logger.histogram(epoch, "credit/influence", scores.credit)
        self.logger.text(epoch, "samples", self._samples_markdown(rollouts))
        self.logger.flush()
        return metrics

    def _samples_markdown(self, rollouts: Rollouts) -> str:
        per_label: dict[int, list[str]] = {}
        for text, label in zip(rollouts.parse.kept_texts, rollouts.parse.kept_labels):
            per_label.setdefault(label, []).append(text)
        lines = []
        for label, name in enumerate(self.components.data.spec.label_names):
            for text in per_label.get(label, [])[:self.config.logging.num_text_samples]:
                lines.append(f"* **{name}**: {text}")
        return "\n".join(lines) or "(no kept examples)"

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Runs epochs until convergence or ``loop.epochs``; returns a summary with the stop reason.

        The trainer is closed afterwards (lock released, logs flushed), also when an epoch
        raises."""
        try:
            return self._run()
        finally:
            self.close()

    def _run(self) -> dict[str, Any]:
        c = self.config
        reason = f"reached loop.epochs={c.loop.epochs}"
        if self.start_epoch > c.loop.epochs:
            reason = f"already at epoch {self.start_epoch - 1} of loop.epochs={c.loop.epochs}"
        epoch = self.start_epoch - 1
        for epoch in range(self.start_epoch, c.loop.epochs + 1):
            metrics = self.run_epoch(epoch)
            # An epoch with no kept example scored an untrained classifier: never an improvement.
            converged = self.tracker.update(epoch, metrics, counts=metrics["gen/num_kept"] > 0)
            self.history.append({k: float(v) for k, v in metrics.items()})
            log.info("epoch %d: golden acc %.4f loss %.4f, kept %d/%d, reward %.4f, KL %.4f, "
                     "%.1f s (%s), %d compiles", epoch,
                     metrics.get("golden/accuracy", float("nan")),
                     metrics.get("golden/loss", float("nan")), metrics["gen/num_kept"],
                     c.loop.rollouts_per_epoch, metrics["reward/sequence_mean"],
                     metrics.get("ppo/rollout_kl", float("nan")), metrics["time/epoch_s"],
                     _stage_times(metrics), metrics["compiles/epoch"])
            if self.checkpointer.should_save(epoch, last=converged or epoch == c.loop.epochs):
                meta = {"epoch": epoch, "config": c.to_dict(), "tracker": self.tracker.state(),
                        "history": self.history}
                self.checkpointer.save(epoch, self.state.items(), meta)
            if converged:
                best = ("no epoch counted" if self.tracker.best is None else
                        f"best {self.tracker.best:.4f} at epoch {self.tracker.best_epoch}")
                reason = (f"converged: {self.tracker.metric} did not improve by more than "
                          f"{self.tracker.min_delta} for {self.tracker.patience} epochs ({best})")
                break
        log.info("stopped after epoch %d: %s", epoch, reason)
        summary = {"last_epoch": epoch, "stop_reason": reason, **self.tracker.state()}
        if self.is_writer:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        final = self.history[-1] if self.history else {}
        self.logger.hparams(flatten(c.to_dict()), {k: final[k] for k in
                                                   ("golden/accuracy", "golden/loss") if k in final})
        return summary

    def close(self) -> None:
        """Flushes and releases everything the trainer holds (idempotent)."""
        for name in ("logger", "checkpointer"):
            part = getattr(self, name, None)
            if part is not None:
                part.close()
                setattr(self, name, None)
        if self._lock is not None:
            self._lock.release()
            self._lock = None


_STAGES = ("generate", "classifier", "credit", "embed", "distances", "rollout", "ppo")


def _stage_times(metrics: dict[str, float]) -> str:
    """``generate 1.2 s, classifier 3.4 s, ...`` for the stages this epoch ran."""
    return ", ".join(f"{name} {metrics[f'time/{name}_s']:.1f} s" for name in _STAGES
                     if f"time/{name}_s" in metrics)
