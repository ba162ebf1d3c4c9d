"""Progress bars as the library sees them: a protocol the command line fills in, and the bar of a caller that
wants none. The one home of both: a library function takes a :data:`ProgressFactory` (or a bar) and never
imports the command line (pipelines/_cli.py has the real bars: a tqdm bar on a terminal, a line every 30 s in
a log)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Planned(Protocol):
    """A progress bar whose total is known once the work is planned (:class:`pipelines._cli.PlannedProgress`):
    ``start(total)`` draws it, ``update(n)`` advances it, ``with`` closes it (its ``done`` line only when the
    block ends normally). Nothing is drawn when ``start`` is never called."""

    def start(self, total: float) -> None: ...

    def update(self, n: float = 1) -> None: ...

    def __enter__(self) -> Planned: ...

    def __exit__(self, *exc) -> None: ...


ProgressFactory = Callable[[str, str], Planned]    # (description, unit) -> a bar, started by the stage


class NoProgress:
    """The :data:`ProgressFactory` of a quiet run (or a library call without one): draws nothing."""

    def __init__(self, desc: str = "", unit: str = "") -> None:
        pass

    def start(self, total: float) -> None:
        pass

    def update(self, n: float = 1) -> None:
        pass

    def __enter__(self) -> NoProgress:
        return self

    def __exit__(self, *exc) -> None:
        pass
