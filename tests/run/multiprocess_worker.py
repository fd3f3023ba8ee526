"""One process of the multi-process checks in ``tests/run/test_multiprocess.py``.

Started by the test as ``python tests/run/multiprocess_worker.py --num_processes N --process_id I
--port P --out DIR [...]``: with ``N > 1`` it joins a ``jax.distributed`` job on
``127.0.0.1:P`` (CPU devices, gloo collectives), with ``N == 1`` it runs alone on 8 simulated
devices.  Every stage writes the *global* values it computed (gathered across processes) to
``DIR/<stage>_p<I>.npz`` / ``.json``, so the test can compare the runs number by number:

* ``sampler_ppo``: the ``:tiny`` random Llama sharded over a (data 2, fsdp 2, tensor 2) mesh (as
  ``run.components`` builds it) samples a batch of random prompts (tokens, log-probs), then
  ``make_rollout`` + one ``ppo_update`` on it (advantages, metrics, updated LoRA/value head);
* ``trainer``: one ``:tiny`` SST-2 epoch of ``Trainer`` (``mesh.distributed=True`` with explicit
  coordinator flags when ``N > 1``), its metrics and final train state, and a record of every file
  this process opened for writing inside the run folder (Python-level opens, via an audit hook);
* ``trainer_init`` (with ``--init trainer``): only ``Trainer(config)`` with
  ``mesh.distributed=True``, which must join the job itself (what ``launch/train.py`` does);
* ``resume`` (``N == 1`` only): ``Trainer(resume=True)`` on the run folder of the 2-process job,
  i.e. restoring orbax checkpoints written by both processes in one process.

``XLA_FLAGS`` must be set by the caller (``--xla_force_host_platform_device_count=8/N``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_cpu_collectives_implementation", "gloo")

import numpy as np


def gather(tree):
    """Global numpy values of ``tree`` (arrays may span processes)."""
    from jax.experimental import multihost_utils

    def one(x):
        if not isinstance(x, jax.Array):
            return np.asarray(x)
        if x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(jax.device_get(x))
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.tree.map(one, tree)


def flat(tree, prefix: str) -> dict[str, np.ndarray]:
    """``{prefix/path: array}`` of a pytree (PRNG keys as their raw data)."""
    out = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            leaf = jax.random.key_data(leaf)
        out[prefix + jax.tree_util.keystr(path)] = leaf
    return {k: v for k, v in gather(out).items()}


def stage_sampler_ppo(args, results: dict) -> None:
    """The sharded sampler and one PPO update, built exactly as the trainer builds them (same
    model, mesh, sampler and PPO programs: the trainer stage then compiles none of them again)."""
    from genalign_jax import generator as gen
    from genalign_jax import ppo
    from genalign_jax.run import checkpoint as ckpt
    from genalign_jax.run import components
    from genalign_jax.run.trainer import as_run_config

    start = time.perf_counter()
    config = as_run_config(trainer_config(args))
    mesh = components.build_mesh(config)
    results["mesh"] = dict(mesh.shape)
    results["sampler_processes"] = [jax.process_index(), jax.process_count(),
                                    jax.local_device_count()]
    g = components.build_generator(config, mesh)
    state = ckpt.init_train_state(g.model, config, mesh).ppo
    batch, length = config.generator.sampling.batch_size, config.generator.max_prompt_tokens
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, len(g.tokenizer), size=(batch, length)).astype(np.int32)
    mask = np.ones_like(tokens)
    for row in range(batch):  # left padding of 0..(length - 8) tokens
        pad = int(rng.integers(0, length - 8))
        tokens[row, :pad], mask[row, :pad] = 0, 0
    out = gen.generate(g.model, tokens, mask, g.sampling.replace(use_lora=True),
                       jax.random.key(3))
    arrays = flat({"tokens": out.tokens, "mask": out.mask, "logprobs": out.logprobs,
                   "sampling_logprobs": out.sampling_logprobs, "lengths": out.lengths},
                  "sampler/")
    results["sampler_sharding"] = str(out.tokens.sharding)
    results["sampler_fully_addressable"] = out.tokens.is_fully_addressable
    results["time_sampler_s"] = time.perf_counter() - start

    start = time.perf_counter()
    scores = np.linspace(-1.0, 1.0, batch).astype(np.float32)
    rollout = ppo.make_rollout(state, out, scores, config.ppo)
    new_state, metrics = ppo.ppo_update(state, rollout, config.ppo, jax.random.key(5))
    arrays.update(flat({"advantages": rollout.advantages, "values": rollout.values,
                        "logprobs": rollout.logprobs, "ref_logprobs": rollout.ref_logprobs},
                       "rollout/"))
    arrays.update(flat(new_state.trainable, "ppo/trainable"))
    arrays.update(flat(metrics, "ppo/metrics/"))
    results["time_ppo_s"] = time.perf_counter() - start
    np.savez(Path(args.out) / f"sampler_ppo_p{args.process_id}.npz", **arrays)


class WriteAudit:
    """Records every Python-level open for writing under ``root`` (open(), os.open())."""

    def __init__(self, root: Path):
        self.root = str(root)
        self.paths: set[str] = set()
        sys.addaudithook(self)

    def __call__(self, event, args):
        if event != "open" or not args or not isinstance(args[0], (str, bytes, os.PathLike)):
            return
        path = os.fsdecode(args[0])
        mode, flags = args[1], args[2]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            mode is None and isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR))
        absolute = os.path.abspath(path)
        if writing and absolute.startswith(self.root):
            self.paths.add(os.path.relpath(absolute, self.root))


def trainer_config(args):
    from configs import sst2

    c = sst2.get_config("tiny")
    c.output_dir = str(Path(args.run_dir).parent)
    c.run_name = Path(args.run_dir).name
    c.data.data_dir = args.data_dir
    c.loop.epochs = 1
    c.logging.progress_bars = False
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = (int(n) for n in args.mesh.split(","))
    c.reward.credit = "broadcast"  # one classifier per epoch: the cheapest credit mode to compile
    if args.num_processes > 1:
        c.mesh.distributed = True
        c.mesh.coordinator_address = f"127.0.0.1:{args.port}"
        c.mesh.num_processes = args.num_processes
        c.mesh.process_id = args.process_id
    return c


def stage_trainer(args, results: dict) -> None:
    from genalign_jax.run.trainer import Trainer

    start = time.perf_counter()
    audit = WriteAudit(Path(args.run_dir).absolute())
    trainer = Trainer(trainer_config(args), run_dir=args.run_dir)
    results["trainer_is_writer"] = trainer.is_writer
    results["trainer_has_lock"] = trainer._lock is not None
    results["lock_text"] = (Path(args.run_dir) / ".lock").read_text()
    summary = trainer.run()
    results["trainer_summary"] = summary
    results["trainer_history"] = trainer.history
    results["trainer_written"] = sorted(audit.paths)
    np.savez(Path(args.out) / f"trainer_state_p{args.process_id}.npz",
             **flat(trainer.state.items(), "state"))
    results["time_trainer_s"] = time.perf_counter() - start


def stage_trainer_init(args, results: dict) -> None:
    """``Trainer(config)`` with ``mesh.distributed=True`` as ``launch/train.py`` runs it: the
    trainer itself must join the distributed job (run with ``--init trainer``)."""
    from genalign_jax.run.trainer import Trainer

    trainer = Trainer(trainer_config(args), run_dir=args.run_dir)
    results["init_is_writer"] = trainer.is_writer
    results["init_has_lock"] = trainer._lock is not None
    results["init_process_count"] = jax.process_count()
    results["init_device_count"] = jax.device_count()
    trainer.close()


def stage_resume(args, results: dict) -> None:
    """Restores the 2-process run's last checkpoint in this (1-process, 8-device) run, once the
    test has written ``--resume_after`` (the 2-process job has ended): ``go`` or ``abort``."""
    from genalign_jax.run.trainer import Trainer

    marker = Path(args.resume_after)
    while not marker.exists():
        time.sleep(0.2)
    if marker.read_text().strip() != "go":
        results["resume_skipped"] = marker.read_text().strip()
        return
    start = time.perf_counter()
    c = trainer_config(args)
    trainer = Trainer(c, run_dir=args.resume_dir, resume=True)
    results["resume_start_epoch"] = trainer.start_epoch
    results["resume_history"] = trainer.history
    np.savez(Path(args.out) / "resumed_state.npz", **flat(trainer.state.items(), "state"))
    trainer.close()
    results["time_resume_s"] = time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--num_processes", type=int, required=True)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--stages", default="sampler_ppo,trainer")
    parser.add_argument("--run_dir", default="")
    parser.add_argument("--data_dir", default="")
    parser.add_argument("--resume_dir", default="")
    parser.add_argument("--mesh", default="2,2,2", help="data,fsdp,tensor sizes")
    parser.add_argument("--resume_after", default="",
                        help="resume stage: wait for this file (go | abort) before restoring")
    parser.add_argument("--init", choices=("early", "trainer"), default="early",
                        help="early: sharding.maybe_initialize_distributed before anything else; "
                             "trainer: leave it to Trainer/build_mesh (config.mesh.distributed)")
    args = parser.parse_args()
    stages = [s for s in args.stages.split(",") if s]
    if args.num_processes > 1 and args.init == "early":
        from genalign_jax import sharding as sharding_lib
        sharding_lib.maybe_initialize_distributed(f"127.0.0.1:{args.port}", args.num_processes,
                                                  args.process_id)
    results: dict = {"stages_done": [], "pid": os.getpid()}
    out_json = Path(args.out) / f"results_p{args.process_id}.json"

    def dump():
        out_json.write_text(json.dumps(results, indent=1, default=str))

    try:
        for stage in stages:
            {"sampler_ppo": stage_sampler_ppo, "trainer": stage_trainer,
             "trainer_init": stage_trainer_init, "resume": stage_resume}[stage](args, results)
            results["stages_done"].append(stage)
            dump()
        results.update(process_index=jax.process_index(), process_count=jax.process_count(),
                       device_count=jax.device_count(),
                       local_device_count=jax.local_device_count())
    except BaseException as err:
        import traceback
        results["error"] = f"{type(err).__name__}: {err}"
        results["traceback"] = traceback.format_exc()
        dump()
        raise
    dump()


if __name__ == "__main__":
    main()
