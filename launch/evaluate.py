"""Evaluate an aligned generator against its base model on the real test set.

    python launch/evaluate.py --config=configs/sst2.py \
        --checkpoint=outputs/sst2-default/checkpoint_epoch_10 --num_examples=400 --seeds=3

For each seed: N examples from the aligned generator and N from the base
generator (LoRA off) each train a fresh classifier, scored on the held-out test
split; ``--real_baseline`` adds a classifier trained on N real examples.  Prints
a mean ± std table and writes JSON (default: next to the checkpoint).
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch.common import parse_flags, setup_logging  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file used for training, e.g. configs/sst2.py:tiny.", lock_config=True)
_CHECKPOINT = flags.DEFINE_string("checkpoint", None,
                                  "A run's checkpoint folder: <run_dir>/checkpoint_epoch_N.")
_NUM = flags.DEFINE_integer("num_examples", 400, "Synthetic examples per generator and seed.")
_SEEDS = flags.DEFINE_integer("seeds", 3, "Number of seeds (mean ± std over them).")
_REAL = flags.DEFINE_bool("real_baseline", True, "Also train on N real examples.")
_OUTPUT = flags.DEFINE_string("output", None, "JSON path (default <run_dir>/eval_epoch_N.json).")
flags.mark_flags_as_required(["config", "checkpoint"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from genalign_jax.checkpointing import parse_checkpoint_path
    from genalign_jax.evaluation import evaluate_generators, format_table, summarise
    from genalign_jax.loop import Trainer
    try:
        run_dir, epoch = parse_checkpoint_path(_CHECKPOINT.value)
        config = _CONFIG.value
        batch = config.generator.sampling.batch_size
        if _NUM.value < 1 or _NUM.value % batch:
            raise ValueError(f"--num_examples ({_NUM.value}) must be a positive multiple of "
                             f"config.generator.sampling.batch_size ({batch})")
        if _SEEDS.value < 1:
            raise ValueError(f"--seeds must be >= 1, got {_SEEDS.value}")
        trainer = Trainer(config, run_dir=run_dir, logger=False, evaluation=True)
        trainer.restore(epoch)
        results = evaluate_generators(trainer, _NUM.value, _SEEDS.value,
                                      real_baseline=_REAL.value)
    except (ValueError, FileNotFoundError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = summarise(results)
    table = format_table(summary)
    print(f"test-set metrics over {_SEEDS.value} seeds, {_NUM.value} examples each "
          f"(checkpoint epoch {epoch}):")
    print(table)
    out = _OUTPUT.value or os.path.join(run_dir, f"eval_epoch_{epoch}.json")
    with open(out, "w") as f:
        json.dump({"checkpoint": os.path.abspath(_CHECKPOINT.value), "epoch": epoch,
                   "num_examples": _NUM.value, "seeds": _SEEDS.value, "summary": summary,
                   "per_seed": results}, f, indent=2)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
