"""Run-folder integrity: locks, whole metric lines, resume checks and fallback, bad weights."""

from __future__ import annotations

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from configs import ag_news, sst2
from genalign_jax.config import ConfigError, RunConfig, config_differences
from genalign_jax.hf_checkpoint import CheckpointError
from genalign_jax.run.checkpoint import NonFiniteStateError
from genalign_jax.run.lock import RunLock, RunLockedError
from genalign_jax.run.logger import RunLogger, read_jsonl, truncate_jsonl
from genalign_jax.run.trainer import Trainer
from tests.data import shared_data_dir
from tests.hf_fixtures import make_tiny_hf_llama

SST2 = shared_data_dir() / "sst2"
needs_sst2 = pytest.mark.skipif(not (SST2 / "train.tsv").is_file(),
                                reason=f"SST-2 files not found in {SST2} (set GENALIGN_DATA_DIR)")


def _tiny(tmp_path, epochs=2, module=sst2):
    c = module.get_config("tiny")
    c.output_dir = str(tmp_path)
    c.run_name = "run"
    c.data.data_dir = str(SST2)
    c.loop.epochs = epochs
    c.loop.patience = 10
    c.logging.progress_bars = False
    return c


# ------------------------------------------------------------------ lock

def test_a_second_writer_is_refused_and_a_dead_holders_lock_is_free(tmp_path):
    lock = RunLock(tmp_path)
    with pytest.raises(RunLockedError, match=r"in use by another run \(pid \d+"):
        RunLock(tmp_path)
    lock.release()
    RunLock(tmp_path).release()
    # A process that dies holding the lock leaves nothing behind.
    code = (f"import os; from genalign_jax.run.lock import RunLock; l = RunLock({str(tmp_path)!r});"
            " os._exit(9)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 9
    RunLock(tmp_path).release()


# ------------------------------------------------------------------ metrics.jsonl

def test_torn_tail_is_skipped_and_resume_truncates(tmp_path):
    logger = RunLogger(tmp_path, tensorboard=False)
    for epoch in (1, 2, 3):
        logger.scalars(epoch, {"a": float(epoch)})
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "a": ')            # killed mid-write
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    truncate_jsonl(tmp_path / "metrics.jsonl", 2)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    RunLogger(tmp_path, tensorboard=False, resume_epoch=1).scalars(2, {"a": 9.0})
    assert [(r["epoch"], r["a"]) for r in read_jsonl(tmp_path / "metrics.jsonl")] == [(1, 1.0),
                                                                                      (2, 9.0)]
    (tmp_path / "bad.jsonl").write_text('{"epoch": 1}\nnot json\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_jsonl(tmp_path / "bad.jsonl")


# ------------------------------------------------------------------ config comparison

def test_config_differences_split_identity_from_resumable_fields():
    stored = RunConfig.from_configdict(sst2.get_config("tiny")).to_dict()
    changed = sst2.get_config("tiny")
    changed.loop.epochs = 9
    changed.generator.lora_rank = 8
    changed.data.name = "ag_news"
    blocking, allowed = config_differences(stored, RunConfig.from_configdict(changed))
    assert set(blocking) == {"generator.lora_rank", "data.name"}
    assert allowed == {"loop.epochs": (2, 9)}
    # The remat policy trades memory for time only: resumable, also for runs saved before it
    # existed; so are prompt buckets.
    del stored["generator"]["remat"]
    changed = sst2.get_config("tiny")
    changed.generator.remat = "dots"
    changed.generator.prompt_buckets = (192, 224)  # drops padding-only columns: also resumable
    blocking, allowed = config_differences(stored, RunConfig.from_configdict(changed))
    assert blocking == {} and allowed == {"generator.remat": (None, "dots"),
                                          "generator.prompt_buckets": ([], [192, 224])}


@needs_sst2
def test_fresh_run_refuses_a_used_folder_and_resume_refuses_another_dataset(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 1}\n')
    with pytest.raises(FileExistsError, match="already holds a run"):
        Trainer(_tiny(tmp_path))
    (run_dir / "config.json").write_text(
        json.dumps(RunConfig.from_configdict(_tiny(tmp_path)).to_dict()))
    with pytest.raises(ConfigError, match="data.name: 'sst2' -> 'ag_news'"):
        Trainer(_tiny(tmp_path, module=ag_news), resume=True)
    (run_dir / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Trainer(_tiny(tmp_path), resume=True)


@needs_sst2
def test_resume_falls_back_past_a_damaged_checkpoint(tmp_path):
    Trainer(_tiny(tmp_path, epochs=2)).run()
    run_dir = tmp_path / "run"
    for path in (run_dir / "checkpoint_epoch_2").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "state" in str(path):
            path.write_bytes(b"\xff" * 64)        # damage every array file of epoch 2
    resumed = Trainer(_tiny(tmp_path, epochs=3), resume=True)
    assert resumed.start_epoch == 2
    assert (run_dir / "damaged_checkpoint_epoch_2").is_dir()
    resumed.run()
    rows = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_1", "checkpoint_epoch_2", "checkpoint_epoch_3"]


# ------------------------------------------------------------------ bad weights files

def _first_tensor_span(path):
    header_len = int.from_bytes(path.read_bytes()[:8], "little")
    header = json.loads(path.read_bytes()[8:8 + header_len])
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__")
    start, end = info["data_offsets"]
    return name, 8 + header_len + start, 8 + header_len + end


def test_non_finite_truncated_and_corrupt_weights_are_named(tmp_path):
    from genalign_jax.generator import load_llama
    make_tiny_hf_llama(tmp_path)
    weights = tmp_path / "model.safetensors"
    good = weights.read_bytes()
    name, start, end = _first_tensor_span(weights)
    weights.write_bytes(good[:start] + b"\xff" * (end - start) + good[end:])
    with pytest.raises(CheckpointError, match=rf"tensor {name} holds \d+ NaN/inf"):
        load_llama(tmp_path)
    weights.write_bytes(good[:len(good) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_llama(tmp_path)
    weights.write_bytes(good[:8] + b"\xff\xfe" + good[10:])
    with pytest.raises(CheckpointError, match="corrupt header"):
        load_llama(tmp_path)
    weights.write_bytes(good)
    (tmp_path / "config.json").write_text("{\"hidden_size\": 64,")
    with pytest.raises(CheckpointError, match="invalid JSON"):
        load_llama(tmp_path)


@needs_sst2
def test_a_non_finite_ppo_update_stops_before_anything_is_saved(tmp_path):
    """NaN adapters (as from damaged weights): the epoch stops with a clear error, and neither a
    checkpoint nor a metrics line of the poisoned epoch is written."""
    trainer = Trainer(_tiny(tmp_path, epochs=2))
    try:
        state = trainer.state.ppo
        poisoned = dict(state.trainable,
                        value_head=jax.tree.map(lambda x: jnp.full_like(x, jnp.nan),
                                                state.trainable["value_head"]))
        trainer.state = trainer.state.replace(ppo=state.replace(trainable=poisoned))
        with pytest.raises(NonFiniteStateError, match="non-finite"):
            trainer.run()
    finally:
        trainer.close()
    run_dir = tmp_path / "run"
    assert not list(run_dir.glob("checkpoint_epoch_*"))
    metrics = run_dir / "metrics.jsonl"
    assert not metrics.exists() or read_jsonl(metrics) == []
