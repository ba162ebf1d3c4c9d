"""Process checks the kill -9 tests share: read from ``/proc`` (Linux), no extra dependency."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def alive(pid: int) -> bool:
    """Still running (a zombie waiting to be reaped has exited: not alive)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def spawned_children(pid: int) -> list[int]:
    """Worker processes (multiprocessing's spawned interpreters) whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid and \
                    b"spawn_main" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def survivors(pids: list[int], within_s: float = 10.0) -> list[int]:
    """The ``pids`` still alive after waiting up to ``within_s`` for them to exit; each survivor is then
    killed, so a failing test leaves no process behind."""
    deadline = time.time() + within_s
    while time.time() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    left = [p for p in pids if alive(p)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left
