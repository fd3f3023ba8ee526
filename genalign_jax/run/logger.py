"""Run logging: TensorBoard (tensorboardX) scalars/text/hparams plus ``metrics.jsonl``.

Every scalar the loop produces is written under its own tag (``reward/mean``,
``golden/loss``, ``ppo/approx_kl``, ``gen/rejected/too_short`` ...) and as one
JSON line per epoch, so runs can be read by TensorBoard and by scripts.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

__all__ = ["RunLogger", "flatten", "read_jsonl"]


def _scalar(value: Any) -> float | None:
    try:
        value = float(np.asarray(value))
    except (TypeError, ValueError):
        return None
    return value


class RunLogger:
    """Writes per-epoch scalars to TensorBoard and ``metrics.jsonl`` in ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self._writer = None
        if tensorboard:
            from tensorboardX import SummaryWriter
            self._writer = SummaryWriter(logdir=str(self.run_dir / "tensorboard"))

    def scalars(self, epoch: int, metrics: dict[str, Any]) -> None:
        """Logs every numeric entry of ``metrics`` at step ``epoch`` (non-finite ones as NaN)."""
        row: dict[str, Any] = {"epoch": epoch}
        for tag, value in sorted(metrics.items()):
            number = _scalar(value)
            if number is None:
                continue
            row[tag] = number if math.isfinite(number) else None
            if self._writer is not None:
                self._writer.add_scalar(tag, number, epoch)
        with open(self.jsonl_path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def text(self, epoch: int, tag: str, text: str) -> None:
        """A text summary (e.g. sample generations per label)."""
        if self._writer is not None:
            self._writer.add_text(tag, text, epoch)

    def histogram(self, epoch: int, tag: str, values: Any) -> None:
        if self._writer is not None:
            values = np.asarray(values)
            if values.size:
                self._writer.add_histogram(tag, values, epoch)

    def hparams(self, hparams: dict[str, Any], final_metrics: dict[str, Any]) -> None:
        """Records the run's hyper-parameters with its final metrics (TensorBoard HParams tab)."""
        if self._writer is None:
            return
        clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v))
                 for k, v in hparams.items()}
        metrics = {f"final/{k}": v for k, v in final_metrics.items() if _scalar(v) is not None
                   and math.isfinite(_scalar(v))}
        self._writer.add_hparams(clean, metrics, name="hparams")

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads ``metrics.jsonl`` back (used by tests, notebooks and evaluate)."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (config fields as TensorBoard hparams)."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
