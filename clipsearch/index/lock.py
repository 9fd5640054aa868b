"""One `clipsearch index` per database at a time: an advisory flock on `<db>.lock`, which
the kernel releases when the holder dies, so a killed run never leaves a stale lock."""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path

from clipsearch.errors import DatabaseError, LockedError, ReadOnlyCacheError


class IndexLock:
    def __init__(self, db_path: Path, wait_seconds: float = 0.0):
        self.db_path = db_path
        self.path = db_path.with_name(db_path.name + ".lock")
        self.wait_seconds = wait_seconds
        self.fd: int | None = None

    def __enter__(self) -> "IndexLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
                raise ReadOnlyCacheError(self.db_path) from None
            raise DatabaseError(f"{self.path}: cannot take the index lock ({exc.strerror}); check the folder") from None
        deadline = time.monotonic() + self.wait_seconds
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = self._holder()
                    os.close(self.fd)
                    self.fd = None
                    raise LockedError(
                        f"{self.path}: another clipsearch index{holder} is running on this database; "
                        f"it was left alone (use --wait SECONDS to wait for it)") from None
                time.sleep(0.2)
        os.ftruncate(self.fd, 0)
        os.write(self.fd, f"{os.getpid()}\n".encode())
        return self

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                pid = f.read().strip()
            return f" (pid {pid})" if pid else ""
        except OSError:
            return ""

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
