"""Train: align the generator with PPO until the golden metrics converge.

    python launch/train.py --config=configs/sst2.py                 # Llama-3.1-8B + roberta-base
    python launch/train.py --config=configs/sst2.py:embedded        # offline SmolLM2 + MiniLM
    python launch/train.py --config=configs/sst2.py:tiny --config.loop.epochs=2
    python launch/train.py --config=configs/sst2.py:tiny --resume   # continue the latest checkpoint

Outputs go to ``<config.output_dir>/<config.run_name>/``: ``checkpoint_epoch_N/``,
``tensorboard/``, ``metrics.jsonl``, ``config.json`` and ``summary.json``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from launch.common import parse_flags, setup_logging  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file, e.g. configs/sst2.py or configs/sst2.py:tiny.",
    lock_config=True)
_RESUME = flags.DEFINE_bool("resume", False, "Continue from the run's latest checkpoint.")
_RUN_DIR = flags.DEFINE_string("run_dir", None,
                               "Run folder (default: <config.output_dir>/<config.run_name>).")
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> int:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    setup_logging()
    from genalign_jax.loop import Trainer
    try:
        trainer = Trainer(_CONFIG.value, run_dir=_RUN_DIR.value, resume=_RESUME.value)
        summary = trainer.run()
    except (ValueError, FileNotFoundError, FileExistsError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"stopped after epoch {summary['last_epoch']}: {summary['stop_reason']}")
    return 0


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
