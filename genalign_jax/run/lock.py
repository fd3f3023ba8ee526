"""An exclusive lock on a run folder for the lifetime of its writer.

Two trainers writing one folder would overwrite each other's checkpoints and interleave their
metrics.  ``RunLock(run_dir)`` takes ``fcntl.flock`` on ``<run_dir>/.lock`` (the kernel drops it
when the process dies, so a stale lock of a killed run never blocks) and records the holder's
pid and host for the error message of the next writer.
"""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

__all__ = ["RunLock", "RunLockedError"]


class RunLockedError(FileExistsError):
    """Another live process holds the run folder."""


class RunLock:
    """``with RunLock(run_dir): ...`` or ``lock = RunLock(run_dir); ...; lock.release()``."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / ".lock"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(self._fd)
            self._fd = None
            raise RunLockedError(f"{self.path.parent} is in use by another run ({holder}); "
                                 "wait for it to finish or choose another --config.run_name")
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)

    def release(self) -> None:
        """Drops the lock (idempotent)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
