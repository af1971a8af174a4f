"""One accelerated clock for several processes: the control processes, the bridges, the
payment simulators and the fleet all read simulated time from a small file, so a process
restarted by the chaos schedule comes back on the same "now" as the others.

The file holds ``{"base_sim", "base_wall", "speed"}``: ``now = base_sim + (time.time() -
base_wall) * speed``, or ``base_sim`` while paused (``base_wall`` null). It is re-read only
when it is replaced (inode, modification time) (one ``stat`` per ``now()``) and replaced atomically.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path


class SharedClock:
    """An ``AcceleratedClock`` (firmware_sim/clocks.py) whose state lives in a file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._version: tuple[int, int] = (-1, -1)
        self._base_sim = 0.0
        self._base_wall: float | None = None
        self.speed = 1.0
        self._load()

    @classmethod
    def create(cls, path: Path, start: float, speed: float, *, paused: bool) -> SharedClock:
        _write(path, start, None if paused else time.time(), speed)
        return cls(path)

    def _load(self) -> None:
        st = os.stat(self.path)
        version = (st.st_ino, st.st_mtime_ns)  # replaced atomically: a new inode each time
        if version == self._version:
            return
        state = json.loads(self.path.read_text())
        self._base_sim, self._base_wall = float(state["base_sim"]), state["base_wall"]
        self.speed = float(state["speed"])
        self._version = version

    def now(self) -> float:
        with self._lock:
            self._load()
            if self._base_wall is None:
                return self._base_sim
            return self._base_sim + (time.time() - self._base_wall) * self.speed

    @property
    def paused(self) -> bool:
        with self._lock:
            self._load()
            return self._base_wall is None

    def pause(self) -> None:
        now = self.now()
        with self._lock:
            _write(self.path, now, None, self.speed)

    def resume(self) -> None:
        now = self.now()
        with self._lock:
            _write(self.path, now, time.time(), self.speed)

    def advance(self, seconds: float) -> None:
        """Jump simulated time forward while paused (the end-of-run checks let a re-send
        delay pass at once)."""
        with self._lock:
            self._load()
            if self._base_wall is not None:
                raise RuntimeError("advance() is for a paused clock")
            _write(self.path, self._base_sim + seconds, None, self.speed)

    def real_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.speed


def _write(path: Path, base_sim: float, base_wall: float | None, speed: float) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"base_sim": base_sim, "base_wall": base_wall, "speed": speed}))
    os.replace(tmp, path)
