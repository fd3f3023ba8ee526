"""Counts XLA compilations, to check that steady-state epochs compile nothing new."""

from __future__ import annotations

import threading

import jax

__all__ = ["CompileCounter", "compile_count"]

_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"
_lock = threading.Lock()
_count = 0
_registered = False


def _listener(event: str, duration: float, **kwargs) -> None:
    global _count
    if event == _BACKEND_COMPILE_EVENT:
        with _lock:
            _count += 1


def compile_count() -> int:
    """Number of backend compilations in this process since counting started."""
    global _registered
    if not _registered:
        jax.monitoring.register_event_duration_secs_listener(_listener)
        _registered = True
    return _count


class CompileCounter:
    """Context manager: ``with CompileCounter() as c: ...; c.count`` compiles inside the block."""

    def __enter__(self) -> "CompileCounter":
        self._start = compile_count()
        self.count = 0
        return self

    def __exit__(self, *exc) -> None:
        self.count = compile_count() - self._start

    @property
    def so_far(self) -> int:
        return compile_count() - self._start
