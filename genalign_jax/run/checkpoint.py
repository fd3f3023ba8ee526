"""Orbax checkpoints of a training run: ``<run_dir>/checkpoint_epoch_N``.

A checkpoint holds one pytree (``state``: trainable policy params, optimizer
state, KL-controller and reward-normaliser state, RNG key, loop counters) and
one JSON document (``meta``: the config, the epoch, the convergence tracker and
anything else that is not an array).  Restoring needs a target pytree of the
same structure (``abstract_state``), so arrays come back with the right
shapes, dtypes and shardings.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx, struct
from jax.sharding import Mesh

from genalign_jax import ppo
from genalign_jax import sharding as sharding_lib
from genalign_jax.config import ConfigError, RunConfig, config_differences
from genalign_jax.reward import RewardNormalizerState

log = logging.getLogger(__name__)

__all__ = ["CHECKPOINT_PREFIX", "CheckpointRestoreError", "NonFiniteStateError", "RunCheckpointer",
           "TrainState", "init_train_state", "restore_train_state", "restore_latest",
           "load_policy", "check_same_run", "parse_checkpoint_path", "check_finite"]


class CheckpointRestoreError(ValueError):
    """A checkpoint exists but cannot be restored (damaged, or from a different model shape)."""


class NonFiniteStateError(ValueError):
    """NaN/inf in the training state: it is neither trained on nor saved."""


def check_finite(tree: Any, what: str) -> None:
    """Raises ``NonFiniteStateError`` naming the first leaves of ``tree`` with NaN/inf."""
    bad = [jax.tree_util.keystr(path) for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
           if hasattr(leaf, "dtype") and jax.numpy.issubdtype(leaf.dtype, jax.numpy.inexact)
           and not bool(jax.numpy.isfinite(leaf).all())]
    if bad:
        raise NonFiniteStateError(f"{what}: {len(bad)} array(s) hold NaN/inf, e.g. {bad[:3]}")

CHECKPOINT_PREFIX = "checkpoint_epoch"


def parse_checkpoint_path(path: str | os.PathLike) -> tuple[Path, int]:
    """Splits ``.../<run>/checkpoint_epoch_N`` into ``(run_dir, N)``, with clear errors."""
    path = Path(path)
    match = re.fullmatch(rf"{CHECKPOINT_PREFIX}_(\d+)", path.name)
    if match is None:
        raise ConfigError(f"checkpoint path {path} does not end in {CHECKPOINT_PREFIX}_<epoch>")
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return path.parent, int(match.group(1))


class RunCheckpointer:
    """Saves and restores the run state every ``every_epochs`` epochs, keeping ``max_to_keep``."""

    def __init__(self, run_dir: str | os.PathLike, max_to_keep: int = 3, every_epochs: int = 1,
                 *, create: bool = True):
        if every_epochs < 1:
            raise ValueError(f"checkpoint.every_epochs must be >= 1, got {every_epochs}")
        self.run_dir = Path(run_dir).absolute()
        self.every_epochs = every_epochs
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create,
                                               step_prefix=CHECKPOINT_PREFIX)
        self._manager = ocp.CheckpointManager(self.run_dir, options=options)

    def latest_epoch(self) -> int | None:
        """The newest saved epoch, or ``None``."""
        return self._manager.latest_step()

    def all_epochs(self) -> list[int]:
        return list(self._manager.all_steps())

    def path(self, epoch: int) -> Path:
        return self.run_dir / f"{CHECKPOINT_PREFIX}_{epoch}"

    def should_save(self, epoch: int, last: bool = False) -> bool:
        return last or epoch % self.every_epochs == 0

    def save(self, epoch: int, state: Any, meta: dict[str, Any]) -> Path:
        """Writes ``state`` (arrays) and ``meta`` (JSON) as ``checkpoint_epoch_<epoch>``."""
        if epoch in self._manager.all_steps():
            log.warning("checkpoint for epoch %d exists; keeping the existing one", epoch)
            return self.path(epoch)
        check_finite(state, f"the state of epoch {epoch} (not saved; the last good checkpoint "
                            "is kept)")
        self._manager.save(epoch, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
        self._manager.wait_until_finished()
        log.info("saved %s", self.path(epoch))
        return self.path(epoch)

    def restore(self, epoch: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
        """Restores epoch ``epoch`` onto the structure/shardings of ``abstract_state``."""
        if epoch not in self._manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for epoch {epoch} in {self.run_dir} "
                                    f"(have {sorted(self._manager.all_steps())})")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        try:
            restored = self._manager.restore(epoch, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
        except Exception as err:  # orbax raises many types (ValueError, KeyError, OSError, ...)
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointRestoreError(f"{self.path(epoch)} cannot be restored (damaged, or "
                                         f"saved with another model/LoRA shape): {first[:300]}"
                                         ) from err
        return restored["state"], restored["meta"]

    def restore_meta(self, epoch: int) -> dict[str, Any]:
        """Only the JSON part (config, counters) of epoch ``epoch``."""
        restored = self._manager.restore(epoch, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))
        return restored["meta"]

    def set_aside(self, epoch: int) -> Path:
        """Renames a damaged ``checkpoint_epoch_<epoch>`` to ``damaged_checkpoint_epoch_<epoch>``
        (kept for inspection; a resumed run writes that epoch anew)."""
        target = self.run_dir / f"damaged_{CHECKPOINT_PREFIX}_{epoch}"
        self.path(epoch).rename(target)
        self._manager.reload()
        return target

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


@struct.dataclass
class TrainState:
    """What a checkpoint holds besides its JSON meta: the PPO state and the reward normaliser."""

    ppo: ppo.PPOState
    reward_norm: RewardNormalizerState

    def items(self) -> dict[str, Any]:
        """The array pytree that is saved (and the restore target)."""
        return {"ppo": self.ppo.checkpoint_items(), "reward_norm": self.reward_norm}


def _on_mesh(state: ppo.PPOState, mesh: Mesh) -> ppo.PPOState:
    """Places the PPO state's arrays with the mesh's rules (LoRA, value head, optimizer state and
    scalars replicated), so updates return arrays of the same sharding and the sampler/update
    programs are not recompiled after the first epoch."""
    items = state.checkpoint_items()
    return state.restore(jax.device_put(items, sharding_lib.state_shardings(items, mesh)))


def init_train_state(model: nnx.Module, config: RunConfig, mesh: Mesh) -> TrainState:
    """Fresh LoRA adapters + value head on the generator (synced into it) and an empty normaliser."""
    state = _on_mesh(ppo.init_ppo_state(model, config.ppo, rngs=nnx.Rngs(config.seed + 1)), mesh)
    ppo.sync_model(model, state)
    return TrainState(ppo=state, reward_norm=RewardNormalizerState.init())


def restore_train_state(checkpointer: RunCheckpointer, epoch: int, template: TrainState,
                        model: nnx.Module) -> tuple[TrainState, dict[str, Any]]:
    """Loads ``checkpoint_epoch_<epoch>`` onto ``template``'s structure; ``model`` is synced."""
    restored, meta = checkpointer.restore(epoch, template.items())
    state = TrainState(ppo=template.ppo.restore(restored["ppo"]),
                       reward_norm=restored["reward_norm"])
    ppo.sync_model(model, state.ppo)
    return state, meta


def restore_latest(checkpointer: RunCheckpointer, template: TrainState, model: nnx.Module
                   ) -> tuple[TrainState, dict[str, Any], int]:
    """The newest checkpoint that restores; damaged newer ones are skipped with a warning."""
    epochs = sorted(checkpointer.all_epochs(), reverse=True)
    if not epochs:
        raise FileNotFoundError(f"--resume: no {CHECKPOINT_PREFIX}_* in {checkpointer.run_dir}")
    errors, damaged = [], []
    for epoch in epochs:
        try:
            state, meta = restore_train_state(checkpointer, epoch, template, model)
        except CheckpointRestoreError as err:
            log.warning("skipping damaged checkpoint: %s", err)
            errors.append(str(err))
            damaged.append(epoch)
            continue
        for bad in damaged:
            log.warning("moved the damaged checkpoint of epoch %d to %s", bad,
                        checkpointer.set_aside(bad))
        return state, meta, epoch
    raise CheckpointRestoreError(f"no checkpoint of {checkpointer.run_dir} restores: "
                                 + "; ".join(errors))


def load_policy(model: nnx.Module, config: RunConfig, mesh: Mesh, checkpoint: str | os.PathLike
                ) -> tuple[TrainState, dict[str, Any]]:
    """The trained policy of ``<run_dir>/checkpoint_epoch_N`` synced into ``model`` (read-only).

    The run's stored ``config.json`` must agree with ``config`` on every field that changes what
    the run is (ConfigError listing the differences otherwise).
    """
    run_dir, epoch = parse_checkpoint_path(checkpoint)
    check_same_run(run_dir, config, "evaluate")
    checkpointer = RunCheckpointer(run_dir, create=False)
    try:
        return restore_train_state(checkpointer, epoch, init_train_state(model, config, mesh), model)
    finally:
        checkpointer.close()


def check_same_run(run_dir: str | os.PathLike, config: RunConfig, action: str) -> None:
    """Compares ``<run_dir>/config.json`` with ``config`` (see ``config_differences``)."""
    stored = Path(run_dir) / "config.json"
    if not stored.is_file():
        raise FileNotFoundError(f"{action}: {stored} not found (not a genalign_jax run folder)")
    try:
        saved = json.loads(stored.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"{action}: {stored} is not valid JSON ({err})") from err
    blocking, allowed = config_differences(saved, config)
    if blocking:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}"
                           for k, (old, new) in list(blocking.items())[:12])
        raise ConfigError(f"{action}: the config differs from the run's {stored} in fields that "
                          f"change what the run is: {listed}")
    for name, (old, new) in allowed.items():
        log.info("%s: %s changed %r -> %r", action, name, old, new)
