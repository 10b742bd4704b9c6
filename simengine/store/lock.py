"""One writer per index directory, across processes: an OS file lock, plus a note naming who holds it."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from filelock import FileLock, Timeout

from simengine.errors import IndexBusyError, SimengineError

LOCK_FILE = "LOCK"
HOLDER_FILE = "LOCK.holder"
DEFAULT_TIMEOUT_S = 60.0


class WriterLock:
    """Held while a version is written. The OS releases it when the holder dies, so kill -9 never wedges an index.

    The holder note is informational only (it may be stale after a crash); the lock itself is the flock.
    """

    def __init__(self, folder: Path, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.folder = Path(folder)
        self.timeout_s = timeout_s
        self._lock = FileLock(str(self.folder / LOCK_FILE), timeout=timeout_s)

    def __enter__(self) -> "WriterLock":
        try:
            self._lock.acquire()
        except Timeout:
            raise IndexBusyError(f"{self.folder}: another writer holds the index ({self.holder()}); "
                                 f"waited {self.timeout_s:g} s") from None
        except OSError as exc:  # a folder or file system this user may read but not write
            raise SimengineError(f"{self.folder}: this index cannot be written here "
                                 f"({(exc.strerror or str(exc)).lower()}); reading it needs no write access") from None
        note = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv)[:200],
                "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (self.folder / HOLDER_FILE).write_text(json.dumps(note))
        return self

    def __exit__(self, *exc) -> None:
        self._lock.release()

    def holder(self) -> str:
        try:
            note = json.loads((self.folder / HOLDER_FILE).read_text())
            return f"pid {note['pid']} on {note['host']}, `{note['command']}`, since {note['since']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"
