"""The closed loop (genalign_jax.run.trainer) on the tiny config: end to end, resume determinism, compile counts, errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import sst2
from genalign_jax.run.convergence import ConvergenceTracker
from genalign_jax.run.logger import read_jsonl
from genalign_jax.run.trainer import Trainer
from tests.data import shared_data_dir

REPO = Path(__file__).resolve().parents[2]
SST2 = shared_data_dir() / "sst2"
pytestmark = pytest.mark.skipif(not (SST2 / "train.tsv").is_file(),
                                reason=f"SST-2 files not found in {SST2} (set GENALIGN_DATA_DIR)")


def _config(tmp_path, epochs=2, **overrides):
    c = sst2.get_config("tiny")
    c.output_dir = str(tmp_path)
    c.data.data_dir = str(SST2)
    c.loop.epochs = epochs
    c.logging.progress_bars = False
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def _comparable(row):
    return {k: v for k, v in row.items() if not k.startswith(("time/", "compiles/"))
            and k not in ("gen/tokens_per_s", "golden/train_examples_per_s")}


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory):
    root = tmp_path_factory.mktemp("unbroken")
    c = _config(root, epochs=3, **{"loop.patience": 10})
    # Earlier tests in this process (tests/run/test_reliability.py) run the same :tiny programs;
    # start from empty compilation caches so epoch 1 compiles as in a fresh process.
    jax.clear_caches()
    trainer = Trainer(c)
    summary = trainer.run()
    return trainer.run_dir, summary, read_jsonl(trainer.run_dir / "metrics.jsonl")


def test_unbroken_run_logs_every_term_and_compiles_nothing_after_epoch_1(unbroken):
    run_dir, summary, rows = unbroken
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert summary["stop_reason"] == "reached loop.epochs=3"
    for key in ("golden/loss", "golden/accuracy", "golden/macro_f1", "reward/sequence_mean",
                "raw/golden_loss", "raw/inter", "raw/intra", "ppo/beta", "ppo/approx_kl",
                "ppo/entropy", "ppo/clip_frac", "ppo/explained_variance", "gen/kept_fraction",
                "gen/distinct_2", "gen/tokens_per_s", "time/epoch_s", "compiles/epoch",
                "gen/rejected/empty", "gen/rejected/duplicate"):
        assert key in rows[-1], key
    assert rows[0]["compiles/epoch"] > 0
    assert rows[1]["compiles/epoch"] == 0 and rows[2]["compiles/epoch"] == 0, rows
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch_*")) == [
        "checkpoint_epoch_1", "checkpoint_epoch_2", "checkpoint_epoch_3"]
    # TensorBoard events read back with tensorboard's own reader.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert "golden/accuracy" in tags and "ppo/beta" in tags and "reward/sequence_mean" in tags
    assert [e.step for e in events.Scalars("golden/loss")] == [1, 2, 3]
    assert "samples" in events.Tags()["tensors"] or "samples/text_summary" in events.Tags()["tensors"]


def test_resumed_run_reproduces_the_unbroken_run(unbroken, tmp_path):
    _, _, reference = unbroken
    first = Trainer(_config(tmp_path, epochs=2, **{"loop.patience": 10}))
    first.run()
    with pytest.raises(FileExistsError, match="--resume"):
        Trainer(_config(tmp_path, epochs=3, **{"loop.patience": 10}))
    resumed = Trainer(_config(tmp_path, epochs=3, **{"loop.patience": 10}), resume=True)
    assert resumed.start_epoch == 3
    resumed.run()
    rows = read_jsonl(resumed.run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for ours, theirs in zip(rows, reference):
        a, b = _comparable(ours), _comparable(theirs)
        assert a.keys() == b.keys()
        for key in a:
            if a[key] is None or b[key] is None:
                assert a[key] == b[key], key
            else:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_convergence_stops_with_a_reason(tmp_path):
    tracker = ConvergenceTracker("golden/accuracy", "max", patience=2, min_delta=0.01)
    assert not tracker.update(1, {"golden/accuracy": 0.5})
    assert not tracker.update(2, {"golden/accuracy": 0.505})   # below min_delta: 1 bad epoch
    assert tracker.update(3, {"golden/accuracy": 0.50})        # 2 bad epochs: converged
    assert tracker.best == 0.5 and tracker.best_epoch == 1
    # An epoch that kept no example is never an improvement, whatever its score.
    fresh = ConvergenceTracker("golden/accuracy", "max", patience=2)
    assert not fresh.update(1, {"golden/accuracy": 0.9}, counts=False)
    assert fresh.best is None and fresh.bad_epochs == 1
    with pytest.raises(ValueError, match="not a logged metric"):
        tracker.update(4, {"golden/loss": 1.0})


def _cli(*args, timeout=600):
    env = dict(os.environ, CI="1", JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_cli_train_then_evaluate(unbroken, tmp_path):
    run_dir, _, _ = unbroken
    checkpoint = run_dir / "checkpoint_epoch_3"
    out = tmp_path / "eval.json"
    proc = _cli("launch/evaluate.py", "--config=configs/sst2.py:tiny",
                f"--config.data.data_dir={SST2}", f"--checkpoint={checkpoint}",
                "--num_examples=16", "--seeds=2", f"--output={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "aligned" in proc.stdout and "base" in proc.stdout and "real" in proc.stdout
    result = json.loads(out.read_text())
    assert set(result["summary"]) == {"aligned", "base", "real"}
    assert len(result["per_seed"]["aligned"]) == 2
    acc = result["summary"]["aligned"]["accuracy"]
    assert 0.0 <= acc["mean"] <= 1.0 and acc["std"] >= 0.0


@pytest.mark.parametrize("args, message", [
    (["--config=configs/sst2.py:tiny", "--config.ppo.kl_coefx=0.1"], "kl_coefx"),
    (["--config=configs/sst2.py:tiny", "--config.ppo.kl_coef=abc"], "kl_coef"),
    (["--config=configs/sst2.py:nope"], "unknown config variant 'nope'"),
    (["--config=configs/nope.py"], "cannot load the config file"),
    (["--config=configs/sst2.py:tiny", "--config.generator.source=hf",
      "--config.generator.path=/nonexistent/llama"], "checkpoint folder not found"),
    (["--config=configs/sst2.py:tiny", "--config.loop.rollouts_per_epoch=15"],
     "must be a positive multiple"),
])
def test_cli_bad_config_is_a_clear_error(tmp_path, args, message):
    proc = _cli("launch/train.py", *args, f"--config.output_dir={tmp_path}",
                f"--config.data.data_dir={SST2}", timeout=300)
    assert proc.returncode != 0
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_evaluate_missing_checkpoint_is_a_clear_error(tmp_path):
    proc = _cli("launch/evaluate.py", "--config=configs/sst2.py:tiny",
                f"--checkpoint={tmp_path}/run/checkpoint_epoch_4", timeout=300)
    assert proc.returncode != 0
    assert "checkpoint not found" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_of_a_damaged_checkpoint_is_one_clear_line(unbroken, tmp_path):
    import shutil
    run_dir, _, _ = unbroken
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    for path in (copy / "checkpoint_epoch_3").rglob("*"):
        if path.is_file() and path.stat().st_size > 0 and "state" in str(path):
            path.write_bytes(b"\xff" * 64)        # damage every array file
    proc = _cli("launch/evaluate.py", "--config=configs/sst2.py:tiny",
                f"--config.data.data_dir={SST2}", f"--checkpoint={copy / 'checkpoint_epoch_3'}",
                "--num_examples=16", "--seeds=1", timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "cannot be restored" in proc.stderr and "Traceback" not in proc.stderr, \
        proc.stderr[-3000:]
