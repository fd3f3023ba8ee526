"""Command-line entry points: ``genalign-train`` / ``genalign-evaluate`` (and ``launch/*.py``).

Expected user errors (a bad config value, a missing file, weights or checkpoint, bad data) print
one ``error: ...`` line and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from absl import app, flags
from ml_collections import config_flags

from genalign_jax.config import ConfigError, RunConfig
from genalign_jax.data.loaders import DataFileError, DatasetUnavailableError
from genalign_jax.hf_checkpoint import CheckpointError
from genalign_jax.run import checkpoint as ckpt
from genalign_jax.run.components import build_components, build_generator, build_mesh
from genalign_jax.run.export import export_peft_adapter, import_peft_adapter
from genalign_jax.data.external import load_test_file
from genalign_jax.run.evaluate import evaluate_generators, format_markdown, format_table
from genalign_jax.run.logger import read_jsonl
from genalign_jax.run.plots import plot_evaluation
from genalign_jax.run.trainer import Trainer, as_run_config

__all__ = ["USER_ERRORS", "setup_logging", "parse_flags", "train_main", "evaluate_main",
           "export_main"]

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
    except OSError as err:  # --config's file is missing, seen first by a --config.x override
        print(f"error: {_config_file_error(err)}", file=sys.stderr)
        sys.exit(2)
    except (AttributeError, ValueError, TypeError, KeyError) as err:
        message = str(err).strip("'\"").replace("\\n", " ").replace("\\'", "'")
        print(f"error: bad flag or config override: {message}", file=sys.stderr)
        sys.exit(2)


def load_config() -> RunConfig:
    """The ``--config`` flag's RunConfig; ml-collections loads the file lazily, here."""
    try:
        return as_run_config(flags.FLAGS.config)
    except OSError as err:  # the file is missing or raised while loading
        raise ConfigError(_config_file_error(err)) from err


def _config_file_error(err: OSError) -> str:
    """One line for ml-collections' multi-line 'cannot load the config file' error."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"--config: cannot load the config file: {lines[-1] if lines else err}"


def _define_config_and_checkpoint(example: str) -> None:
    """``--config`` and ``--checkpoint``, shared by every command that opens a trained run."""
    config_flags.DEFINE_config_file(
        "config", None, f"Config file used for training, e.g. {example}.", lock_config=True)
    flags.DEFINE_string("checkpoint", None, "A run's checkpoint folder: <run_dir>/checkpoint_epoch_N.")


def _main(define: Callable[[], None], main: Callable[[list[str]], int]) -> None:
    define()
    app.run(main, flags_parser=parse_flags)


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
        summary = Trainer(load_config(), run_dir=f.run_dir, resume=f.resume).run()
    except USER_ERRORS as err:
        return _user_error(err)
    print(f"stopped after epoch {summary['last_epoch']}: {summary['stop_reason']}")
    return 0


def train_main() -> None:
    """``genalign-train``: align the generator with PPO until the golden metrics converge."""
    _main(define_train_flags, _train)


# ---------------------------------------------------------------------------- evaluate

def define_evaluate_flags() -> None:
    """The flags of ``genalign-evaluate``."""
    _define_config_and_checkpoint("configs/sst2.py:tiny")
    flags.DEFINE_string("adapter", None, "A PEFT adapter folder (from genalign-export) instead of "
                                         "--checkpoint.")
    flags.DEFINE_integer("num_examples", 256, "Synthetic examples per generator and seed.")
    flags.DEFINE_integer("seeds", 3, "Number of seeds (mean ± std over them).")
    flags.DEFINE_bool("real_baseline", True, "Also train on N real examples.")
    flags.DEFINE_string("test_file", None, "Score on this labelled TSV/CSV/JSONL file (columns "
                                           "text, label) instead of the run's test split.")
    flags.DEFINE_string("output", None, "JSON path (default <run_dir>/eval_epoch_N.json); the "
                                        "Markdown table and PNG are written beside it.")


def _evaluate(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    f = flags.FLAGS
    try:
        if (f.checkpoint is None) == (f.adapter is None):
            raise ConfigError("evaluate: pass exactly one of --checkpoint or --adapter")
        config = load_config()
        batch = config.generator.sampling.batch_size
        if f.num_examples < 1 or f.num_examples % batch:
            raise ConfigError(f"--num_examples ({f.num_examples}) must be a positive multiple of "
                              f"config.generator.sampling.batch_size ({batch})")
        if f.seeds < 1:
            raise ConfigError(f"--seeds must be >= 1, got {f.seeds}")
        if f.checkpoint is not None:
            run_dir, epoch = ckpt.parse_checkpoint_path(f.checkpoint)
            default_out, source = run_dir / f"eval_epoch_{epoch}.json", str(f.checkpoint)
        else:
            run_dir, default_out, source = None, Path(f.adapter) / "eval.json", str(f.adapter)
        components = build_components(config)
        test_set = None
        if f.test_file:
            test_set = load_test_file(f.test_file, components.data.spec)
        model = components.generator.model
        if f.checkpoint is not None:
            ckpt.load_policy(model, config, components.mesh, f.checkpoint)
        else:
            import_peft_adapter(model, f.adapter)
        report = evaluate_generators(components, f.num_examples, f.seeds,
                                     real_baseline=f.real_baseline, test_set=test_set)
    except USER_ERRORS as err:
        return _user_error(err)
    print(f"test-set metrics over {f.seeds} seeds, {f.num_examples} examples each ({source}):")
    print(format_table(report.summary()))
    for name, d in report.paired.items():
        print(f"{name}: {d['mean']:+.4f}, 95% CI [{d['ci_low']:+.4f}, {d['ci_high']:+.4f}]")
    out = Path(f.output or default_out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"source": os.path.abspath(source), "num_examples": f.num_examples,
               "seeds": f.seeds, "test_file": f.test_file, **report.to_json()}
    out.write_text(json.dumps(payload, indent=2))
    out.with_suffix(".md").write_text(format_markdown(report))
    history = read_jsonl(run_dir / "metrics.jsonl") if run_dir and (run_dir / "metrics.jsonl").is_file() else []
    plot_evaluation(report, history, out.with_suffix(".png"), title=config.run_name)
    print(f"wrote {out}, {out.with_suffix('.md').name} and {out.with_suffix('.png').name}")
    return 0


def evaluate_main() -> None:
    """``genalign-evaluate``: aligned vs base generator (and real data) on the real test set."""
    _main(define_evaluate_flags, _evaluate)


# ---------------------------------------------------------------------------- export

def define_export_flags() -> None:
    """The flags of ``genalign-export``."""
    _define_config_and_checkpoint("configs/sst2.py:embedded")
    flags.DEFINE_string("out", None, "Output folder of the PEFT adapter.")
    flags.DEFINE_enum("dtype", "float16", ["float16", "bfloat16", "float32"],
                      "Storage dtype of the adapter tensors.")
    flags.mark_flags_as_required(["config", "checkpoint", "out"])


def _export(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    f = flags.FLAGS
    try:
        config = load_config()
        if config.generator.lora_rank < 1:
            raise ConfigError("export: config.generator.lora_rank is 0 (full fine-tuning); only "
                              "LoRA adapters can be exported in the PEFT format")
        mesh = build_mesh(config)
        generator = build_generator(config, mesh)
        ckpt.load_policy(generator.model, config, mesh, f.checkpoint)
        g = config.generator
        base = g.path or g.gguf_file or g.preset
        out = export_peft_adapter(generator.model, f.out, base_model=base, dtype=f.dtype)
    except USER_ERRORS as err:
        return _user_error(err)
    print(f"wrote {out}/adapter_config.json and adapter_model.safetensors")
    return 0


def export_main() -> None:
    """``genalign-export``: a checkpoint's LoRA adapters as a Hugging Face PEFT adapter folder."""
    _main(define_export_flags, _export)
