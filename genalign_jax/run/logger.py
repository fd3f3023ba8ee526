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

__all__ = ["RunLogger", "read_jsonl", "truncate_jsonl"]


def _scalar(value: Any) -> float | None:
    try:
        value = float(np.asarray(value))
    except (TypeError, ValueError):
        return None
    return value


class RunLogger:
    """Writes per-epoch scalars to TensorBoard and ``metrics.jsonl`` in ``run_dir``."""

    def __init__(self, run_dir: str | os.PathLike, tensorboard: bool = True,
                 resume_epoch: int | None = None, write: bool = True):
        """``resume_epoch``: the epoch a resumed run restored; later rows (and TensorBoard events)
        written by the interrupted run are dropped, so every epoch is logged exactly once.
        ``write=False`` (every process but 0 of a multi-process run) writes nothing."""
        self.run_dir = Path(run_dir)
        self.jsonl_path = self.run_dir / "metrics.jsonl"
        self.write = write
        if write:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        if write and resume_epoch is not None:
            truncate_jsonl(self.jsonl_path, resume_epoch)
        self._writer = None
        if tensorboard and write:
            # tensorboardX is imported only when TensorBoard logging is on (it pulls protobuf).
            from tensorboardX import SummaryWriter
            purge = None if resume_epoch is None else resume_epoch + 1
            self._writer = SummaryWriter(logdir=str(self.run_dir / "tensorboard"), purge_step=purge)

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
        if self.write:
            _append_line(self.jsonl_path, json.dumps(row))

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


def _append_line(path: Path, line: str) -> None:
    """Appends one whole line: written, flushed and fsynced before the epoch goes on."""
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Reads ``metrics.jsonl`` back; a torn last line (a kill mid-write) is skipped with a warning."""
    rows = []
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i != len(lines) - 1:
                raise ValueError(f"{path}: line {i + 1} is not valid JSON") from None
            log.warning("%s: skipping a torn last line (%d characters)", path, len(line))
    return rows


def truncate_jsonl(path: str | os.PathLike, last_epoch: int) -> None:
    """Keeps only the rows of epochs ``<= last_epoch`` (and drops a torn tail), atomically."""
    path = Path(path)
    if not path.exists():
        return
    rows = [r for r in read_jsonl(path) if int(r.get("epoch", 0)) <= last_epoch]
    tmp = path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

