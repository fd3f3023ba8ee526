"""Command-line entry points: ``genalign-train`` / ``genalign-evaluate`` (and ``launch/*.py``).

Expected user errors (a bad config value, a missing file, weights or checkpoint, bad data) print
one ``error: ...`` line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

from genalign_jax.config import ConfigError
from genalign_jax.data.loaders import DataFileError, DatasetUnavailableError
from genalign_jax.hf_checkpoint import CheckpointError
from genalign_jax.run import checkpoint as ckpt
from genalign_jax.run.components import build_components
from genalign_jax.run.evaluate import evaluate_generators, format_table, summarise
from genalign_jax.run.trainer import Trainer, as_run_config

__all__ = ["USER_ERRORS", "setup_logging", "parse_flags", "train_main", "evaluate_main"]

# What a user can cause and fix: reported in one line, exit code 2.
USER_ERRORS = (ConfigError, DataFileError, DatasetUnavailableError, CheckpointError,
               ckpt.CheckpointRestoreError, ckpt.NonFiniteStateError, FileNotFoundError,
               FileExistsError)


def setup_logging() -> None:
    """INFO logs from genalign_jax; orbax (absl) only from WARNING, it logs every file it writes."""
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)


def parse_flags(argv: list[str]) -> list[str]:
    """Parses absl/ml-collections flags; a bad flag or override exits 2 with a one-line error.

    ml-collections raises plain exceptions (``AttributeError`` for an unknown ``--config.x``
    field, ``ValueError`` for a bad type or config file) that absl would print as a traceback.
    """
    try:
        return flags.FLAGS(argv)
    except flags.Error as err:
        message = str(err)
        if "Traceback" in message:  # a config file raised: keep its head and its final line
            head = message.split("Traceback")[0].strip()
            message = f"{head} {message.strip().splitlines()[-1]}"
        print(f"error: {message}\nPass --help for usage.", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, ValueError, TypeError, KeyError, FileNotFoundError) as err:
        message = str(err).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        print(f"error: bad flag or config override: {message}", file=sys.stderr)
        sys.exit(2)


def _user_error(err: BaseException) -> int:
    print(f"error: {err}", file=sys.stderr)
    return 2


# ---------------------------------------------------------------------------- train

def define_train_flags() -> None:
    """The flags of ``genalign-train`` (defined once per process)."""
    config_flags.DEFINE_config_file(
        "config", None, "Path to a config file, e.g. configs/sst2.py or configs/sst2.py:tiny.",
        lock_config=True)
    flags.DEFINE_bool("resume", False, "Continue from the run's latest checkpoint.")
    flags.DEFINE_string("run_dir", None,
                        "Run folder (default: <config.output_dir>/<config.run_name>).")
    flags.mark_flags_as_required(["config"])


def _train(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    f = flags.FLAGS
    try:
        summary = Trainer(f.config, run_dir=f.run_dir, resume=f.resume).run()
    except USER_ERRORS as err:
        return _user_error(err)
    print(f"stopped after epoch {summary['last_epoch']}: {summary['stop_reason']}")
    return 0


def train_main() -> None:
    """``genalign-train``: align the generator with PPO until the golden metrics converge."""
    define_train_flags()
    app.run(_train, flags_parser=parse_flags)


# ---------------------------------------------------------------------------- evaluate

def define_evaluate_flags() -> None:
    """The flags of ``genalign-evaluate``."""
    config_flags.DEFINE_config_file(
        "config", None, "Config file used for training, e.g. configs/sst2.py:tiny.",
        lock_config=True)
    flags.DEFINE_string("checkpoint", None, "A run's checkpoint folder: <run_dir>/checkpoint_epoch_N.")
    flags.DEFINE_integer("num_examples", 400, "Synthetic examples per generator and seed.")
    flags.DEFINE_integer("seeds", 3, "Number of seeds (mean ± std over them).")
    flags.DEFINE_bool("real_baseline", True, "Also train on N real examples.")
    flags.DEFINE_string("output", None, "JSON path (default <run_dir>/eval_epoch_N.json).")
    flags.mark_flags_as_required(["config", "checkpoint"])


def _evaluate(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    f = flags.FLAGS
    try:
        run_dir, epoch = ckpt.parse_checkpoint_path(f.checkpoint)
        config = as_run_config(f.config)
        batch = config.generator.sampling.batch_size
        if f.num_examples < 1 or f.num_examples % batch:
            raise ConfigError(f"--num_examples ({f.num_examples}) must be a positive multiple of "
                              f"config.generator.sampling.batch_size ({batch})")
        if f.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {f.seeds}")
        components = build_components(config)
        ckpt.load_policy(components.generator.model, config, components.mesh, f.checkpoint)
        results = evaluate_generators(components, f.num_examples, f.seeds,
                                      real_baseline=f.real_baseline)
    except USER_ERRORS as err:
        return _user_error(err)
    summary = summarise(results)
    print(f"test-set metrics over {f.seeds} seeds, {f.num_examples} examples each "
          f"(checkpoint epoch {epoch}):")
    print(format_table(summary))
    out = f.output or os.path.join(run_dir, f"eval_epoch_{epoch}.json")
    with open(out, "w") as fh:
        json.dump({"checkpoint": os.path.abspath(f.checkpoint), "epoch": epoch,
                   "num_examples": f.num_examples, "seeds": f.seeds, "summary": summary,
                   "per_seed": results}, fh, indent=2)
    print(f"wrote {out}")
    return 0


def evaluate_main() -> None:
    """``genalign-evaluate``: aligned vs base generator (and real data) on the real test set."""
    define_evaluate_flags()
    app.run(_evaluate, flags_parser=parse_flags)
