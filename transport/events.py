"""The history seam: transport and harness processes append events the checker later merges."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Protocol


class EventSink(Protocol):
    def emit(self, type: str, **fields: Any) -> None: ...


class NullSink:
    """Default: the transport records nothing unless the caller asks for a history."""

    def emit(self, type: str, **fields: Any) -> None:
        return None


class JsonlSink:
    """One JSON object per line, written with one `os.write` so a killed process loses at most one line."""

    def __init__(self, path: str | os.PathLike[str], proc: str) -> None:
        self.path = Path(path)
        self.proc = proc
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def emit(self, type: str, **fields: Any) -> None:
        line = json.dumps({"t": time.time(), "proc": self.proc, "type": type, **fields}, default=str)
        data = (line + "\n").encode()
        with self._lock:
            if self._fd >= 0:
                os.write(self._fd, data)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
