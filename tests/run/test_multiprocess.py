"""A real multi-process run: 2 processes x 4 CPU devices against 1 process x 8 devices.

The module fixture starts ``tests/run/multiprocess_worker.py`` three times at once: processes 0
and 1 of a ``jax.distributed`` job on localhost (coordinator on a free port, gloo CPU
collectives, ``--xla_force_host_platform_device_count=4`` each) and one lone process with 8
devices.  Both runs build the same (data 2, fsdp 2, tensor 2) mesh over 8 devices and run

1. the sharded sampler (``generator.generate`` on the ``:tiny`` random Llama sharded by
   ``genalign_jax.sharding``),
2. ``ppo.make_rollout`` + one ``ppo.ppo_update`` on its samples,
3. one ``:tiny`` SST-2 epoch of ``run.trainer.Trainer`` (``mesh.distributed=True`` with
   ``coordinator_address`` / ``num_processes`` / ``process_id`` in the 2-process job),

and must agree number by number (``ATOL``).  Only process 0 may write the run folder's logs
(``metrics.jsonl``, ``config.json``, ``summary.json``, TensorBoard) and hold its lock; the orbax
checkpoint both processes wrote must restore in the 1-process run (``Trainer(resume=True)``).
A second, short 2-process job checks that ``Trainer`` joins the distributed job by itself, as
``launch/train.py --config.mesh.distributed=True`` needs.

Every worker is killed when a worker fails or the deadline passes.  Each process compiles every
program of the loop (the 2 jobs in parallel on 2 cores), with XLA's LLVM optimisation turned
down (the same flags in both runs, so the comparison is unaffected): a few minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.data import shared_data_dir

REPO = Path(__file__).resolve().parents[2]
WORKER = Path(__file__).with_name("multiprocess_worker.py")
SST2 = shared_data_dir() / "sst2"
ATOL = 1e-5
DEADLINE_S = 540  # for the whole main job, generous for a loaded 2-core machine; then all die
# Faster CPU compiles; identical in both runs, so the 1- vs 2-process comparison is unaffected.
FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"

HAVE_SST2 = (SST2 / "train.tsv").is_file()
NO_SST2 = f"SST-2 files not found in {SST2} (set GENALIGN_DATA_DIR)"
needs_sst2 = pytest.mark.skipif(not HAVE_SST2, reason=NO_SST2)

pytestmark = pytest.mark.slow

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 25) -> str:
    if not path.exists():
        return "(no log)"
    text = [line for line in path.read_text(errors="replace").splitlines()
            if "spmd_partitioner" not in line and "[Gloo]" not in line]
    return "\n".join(text[-lines:])


class Job:
    """Worker processes started together; all are killed on failure, timeout or exit."""

    def __init__(self, root: Path):
        self.root = root
        self.procs: dict[str, tuple[subprocess.Popen, Path]] = {}

    def start(self, name: str, devices: int, *args: str) -> None:
        env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_COMPILE}")
        env.pop("CI", None)
        log = self.root / f"{name}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, str(WORKER), *args], cwd=REPO, env=env,
                                    stdout=f, stderr=subprocess.STDOUT)
        self.procs[name] = (proc, log)

    def wait(self, names: list[str], deadline: float, grace: float = 20.0) -> dict[str, int]:
        """Exit codes of ``names``; ``grace`` seconds after one fails, the others are killed (they
        would wait for it in a collective until JAX's heartbeat timeout)."""
        codes: dict[str, int] = {}
        failed_at = None
        while len(codes) < len(names):
            for name in names:
                code = self.procs[name][0].poll()
                if code is not None and name not in codes:
                    codes[name] = code
            if any(codes.values()) and failed_at is None:
                failed_at = time.monotonic()
            if failed_at is not None and time.monotonic() > failed_at + grace:
                for name in names:
                    if name not in codes:
                        self.kill(name)
                        codes[name] = -9
            if time.monotonic() > deadline:
                for name in names:
                    if name not in codes:
                        self.kill(name)
                        codes[name] = -9
                raise TimeoutError(f"workers {names} ran past the deadline:\n" + self.logs(names))
            time.sleep(0.2)
        return codes

    def kill(self, name: str) -> None:
        proc = self.procs[name][0]
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)

    def kill_all(self) -> None:
        for name in self.procs:
            self.kill(name)

    def logs(self, names: list[str]) -> str:
        return "\n".join(f"--- {name}:\n{_tail(self.procs[name][1])}" for name in names)


def _results(out: Path, process_id: int) -> dict:
    path = out / f"results_p{process_id}.json"
    return json.loads(path.read_text()) if path.exists() else {"error": "no results written"}


def _errors(results: list[dict]) -> list[str]:
    """The errors the workers reported (a worker that fails writes ``error`` to its results)."""
    return [r["error"] for r in results if "error" in r]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    multi, single = root / "multi", root / "single"
    multi.mkdir()
    single.mkdir()
    go = root / "resume_go"
    port = _free_port()
    job = Job(root)
    start = time.monotonic()
    try:
        for pid in (0, 1):
            job.start(f"p{pid}", 4, "--num_processes", "2", "--process_id", str(pid),
                      "--port", str(port), "--out", str(multi), "--run_dir", str(multi / "run"),
                      "--data_dir", str(SST2),
                      "--stages", "sampler_ppo,trainer" if HAVE_SST2 else "sampler_ppo")
        job.start("single", 8, "--num_processes", "1", "--out", str(single),
                  "--run_dir", str(single / "run"), "--data_dir", str(SST2),
                  "--stages", "sampler_ppo,trainer,resume" if HAVE_SST2 else "sampler_ppo",
                  "--resume_dir", str(root / "resumed_run"), "--resume_after", str(go))
        deadline = start + DEADLINE_S
        codes = job.wait(["p0", "p1"], deadline)
        multi_results = [_results(multi, 0), _results(multi, 1)]
        trainer_ok = HAVE_SST2 and all("trainer" in r.get("stages_done", ())
                                       for r in multi_results)
        if trainer_ok and not any(codes.values()):  # resume a copy: keep the job's folder as is
            shutil.copytree(multi / "run", root / "resumed_run")
            go.write_text("go")
        else:
            go.write_text("abort")
        codes.update(job.wait(["single"], deadline))
        seconds = time.monotonic() - start
        single_results = _results(single, 0)
        logs = job.logs(["p0", "p1", "single"])
    finally:
        job.kill_all()
    if any(codes.values()) or _errors(multi_results + [single_results]):
        pytest.fail(f"a worker failed ({codes}):\n{logs}")
    print(f"multi-process job + 1-process reference: {seconds:.0f} s")
    return {"root": root, "multi": multi, "single": single, "p": multi_results,
            "single_results": single_results, "seconds": seconds}


def _load(out: Path, name: str) -> dict[str, np.ndarray]:
    path = out / name
    if not path.exists():
        pytest.fail(f"{path} was not written")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _max_diffs(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
    out = {}
    for key, x in a.items():
        y = b[key]
        assert x.shape == y.shape, (key, x.shape, y.shape)
        if not x.size:
            out[key] = 0.0
        elif x.dtype.kind in "iub":
            out[key] = float(np.max(x != y))
        else:
            out[key] = float(np.max(np.abs(x.astype(np.float64) - y)))
    return out


def _check_close(a, b, what: str) -> float:
    diffs = _max_diffs(a, b)
    bad = {k: v for k, v in diffs.items() if not v <= ATOL}
    assert not bad, f"{what}: 2 processes vs 1 process differ: {bad}"
    worst = max(diffs.values(), default=0.0)
    print(f"{what}: {len(diffs)} arrays, max |diff| {worst:.3g}")
    return worst


def _comparable(row: dict) -> dict[str, float]:
    """Epoch metrics without timings (None, as metrics.jsonl writes non-finite values, -> NaN)."""
    return {k: float("nan") if v is None else float(v) for k, v in row.items()
            if not k.startswith(("time/", "compiles/"))
            and k not in ("gen/tokens_per_s", "golden/train_examples_per_s")}


def _metric_diffs(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """``|a - b|`` per metric; 0 where both are NaN, inf where only one is."""
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))
    return {k: 0.0 if (np.isnan(a[k]) and np.isnan(b[k])) else
            (abs(a[k] - b[k]) if np.isfinite(a[k]) and np.isfinite(b[k]) else float("inf"))
            for k in a}


def test_sharded_sampler_and_ppo_update_match_one_process(runs):
    multi = [_load(runs["multi"], f"sampler_ppo_p{i}.npz") for i in (0, 1)]
    single = _load(runs["single"], "sampler_ppo_p0.npz")
    assert runs["p"][0]["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert runs["p"][0]["sampler_fully_addressable"] is False  # really spans both processes
    assert [r["sampler_processes"] for r in runs["p"]] == [[0, 2, 4], [1, 2, 4]]
    assert runs["single_results"]["sampler_processes"] == [0, 1, 8]
    assert _max_diffs(multi[0], multi[1]) == {k: 0.0 for k in multi[0]}  # both see one array
    for prefix in ("sampler/", "rollout/", "ppo/"):
        part = {k: v for k, v in multi[0].items() if k.startswith(prefix)}
        assert part, prefix
        _check_close(part, {k: single[k] for k in part}, prefix.rstrip("/"))
    # The sampled tokens agree exactly, and the update moved the parameters.
    np.testing.assert_array_equal(multi[0]["sampler/['tokens']"], single["sampler/['tokens']"])
    assert float(multi[0]["ppo/metrics/['grad_norm']"]) > 0


@needs_sst2
def test_tiny_epoch_matches_one_process(runs):
    p0, p1, single = runs["p"][0], runs["p"][1], runs["single_results"]
    assert p0["process_count"] == 2 and p0["device_count"] == 8 and p0["local_device_count"] == 4
    assert single["process_count"] == 1 and single["device_count"] == 8

    rows = [_comparable(r["trainer_history"][0]) for r in (p0, p1, single)]
    assert _metric_diffs(rows[0], rows[1]) == {k: 0.0 for k in rows[0]}  # the same epoch on both
    diffs = _metric_diffs(rows[0], rows[2])
    bad = {k: v for k, v in diffs.items() if not v <= ATOL}
    assert not bad, f"epoch metrics, 2 processes vs 1: {bad}"
    print(f"epoch metrics: {len(diffs)} values, max |diff| {max(diffs.values()):.3g}")
    assert rows[0]["gen/num_kept"] > 0  # the classifier and reward stages really ran
    _check_close(_load(runs["multi"], "trainer_state_p0.npz"),
                 _load(runs["single"], "trainer_state_p0.npz"), "train state after the epoch")
    # The metrics file of the 2-process run holds the same single epoch.
    from genalign_jax.run.logger import read_jsonl
    logged = read_jsonl(runs["multi"] / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in logged] == [1]
    logged = _comparable({k: v for k, v in logged[0].items() if k != "epoch"})
    assert _metric_diffs(logged, rows[0]) == {k: 0.0 for k in rows[0]}


@needs_sst2
def test_only_process_0_writes_logs_and_holds_the_lock(runs):
    p0, p1 = runs["p"]
    run_dir = runs["multi"] / "run"
    assert p0["trainer_is_writer"] and p0["trainer_has_lock"]
    assert not p1["trainer_is_writer"] and not p1["trainer_has_lock"]
    for name in ("metrics.jsonl", "config.json", "summary.json", "tensorboard"):
        assert (run_dir / name).exists(), name
        assert any(w == name or w.startswith(name + "/") for w in p0["trainer_written"]), name
    # Process 1 opened nothing for writing but its own orbax shard metadata.
    assert all(w.startswith("checkpoint_epoch_1") for w in p1["trainer_written"]), \
        p1["trainer_written"]
    # While the trainers ran, the lock file named process 0.
    assert p0["lock_text"] == p1["lock_text"] and p0["lock_text"].startswith(f"pid {p0['pid']} ")
    assert sorted(p.name for p in run_dir.glob("checkpoint_epoch_*")) == ["checkpoint_epoch_1"]


@needs_sst2
def test_checkpoint_of_both_processes_restores_in_one_process(runs):
    single = runs["single_results"]
    assert "resume" in single["stages_done"] and "resume_skipped" not in single, single
    assert single["resume_start_epoch"] == 2
    assert len(single["resume_history"]) == 1
    restored = _load(runs["single"], "resumed_state.npz")
    written = _load(runs["multi"], "trainer_state_p0.npz")
    diffs = _max_diffs(restored, written)
    assert all(v == 0.0 for v in diffs.values()), {k: v for k, v in diffs.items() if v}


@needs_sst2
def test_trainer_joins_the_distributed_job_itself(tmp_path):
    """``Trainer(config)`` with ``mesh.distributed=True`` and no earlier initialisation."""
    job = Job(tmp_path)
    port = _free_port()
    try:
        for pid in (0, 1):
            job.start(f"p{pid}", 4, "--num_processes", "2", "--process_id", str(pid),
                      "--port", str(port), "--out", str(tmp_path), "--init", "trainer",
                      "--run_dir", str(tmp_path / "run"), "--data_dir", str(SST2),
                      "--stages", "trainer_init")
        codes = job.wait(["p0", "p1"], time.monotonic() + 240)
        logs = job.logs(["p0", "p1"])
    finally:
        job.kill_all()
    results = [_results(tmp_path, 0), _results(tmp_path, 1)]
    assert not any(codes.values()) and not _errors(results), f"{codes}\n{logs}"
    assert [r["init_process_count"] for r in results] == [2, 2]
    assert [r["init_device_count"] for r in results] == [8, 8]
    assert [r["init_is_writer"] for r in results] == [True, False]
    assert [r["init_has_lock"] for r in results] == [True, False]
