"""The store's locks: one builder per key (``locks/<key>.lock``), and gc against running builds (``locks/gc.lock``)."""
from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Callable, Iterator


class StoreLocks:
    """The locks of the store at ``self.root`` (a part of pipeline.store.local.Store)."""

    root: Path

    def lock(self, key: str):
        from filelock import FileLock

        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Held, shared, while a build runs: ``gc`` (``collecting``) waits until no build holds it,
        so it never removes what a running build uses."""
        fd = self._gc_lock()
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    @contextlib.contextmanager
    def collecting(self, waiting: Callable[[], None] = lambda: None) -> Iterator[None]:
        """Held, exclusive, while gc runs; ``waiting`` is called once if builds hold the store."""
        fd = self._gc_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                waiting()
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _gc_lock(self) -> int:
        (self.root / "locks").mkdir(parents=True, exist_ok=True)
        return os.open(self.root / "locks" / "gc.lock", os.O_RDWR | os.O_CREAT, 0o644)
