"""When to stop: a metric that has not improved by ``min_delta`` for ``patience`` epochs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from genalign_jax.config import ConfigError, LoopSection

__all__ = ["ConvergenceTracker"]


@dataclasses.dataclass
class ConvergenceTracker:
    """Stops when ``metric`` has not improved by more than ``min_delta`` for ``patience`` epochs.

    Mode and patience are validated by :meth:`genalign_jax.config.RunConfig.validate`.
    """

    metric: str
    mode: str = "max"
    patience: int = 3
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    @classmethod
    def from_config(cls, loop: LoopSection) -> ConvergenceTracker:
        return cls(loop.convergence_metric, loop.convergence_mode, loop.patience, loop.min_delta)

    def update(self, epoch: int, metrics: dict[str, Any], counts: bool = True) -> bool:
        """Records ``metrics[self.metric]``; returns True when the run has converged.

        ``counts=False`` (e.g. an epoch that kept no example) is a bad epoch whatever the value.
        """
        if self.metric not in metrics:
            raise ConfigError(
                f"config.loop.convergence_metric {self.metric!r} is not a logged metric; "
                f"choose one of {sorted(metrics)}")
        value = float(metrics[self.metric])
        sign = 1.0 if self.mode == "max" else -1.0
        if counts and math.isfinite(value) and (
                self.best is None or sign * (value - self.best) > self.min_delta):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def state(self) -> dict[str, Any]:
        return {"best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs}

    def load(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
