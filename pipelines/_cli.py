"""Shared command-line plumbing for ``python -m pipelines.<job>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from featurestore.competition import DataError
from featurestore.store import StoreError
from models.heads import HeadError
from models.metrics import MetricError
from models.submission import SubmissionError

USER_ERRORS: tuple[type[Exception], ...] = (DataError, StoreError, HeadError, MetricError, SubmissionError,
                                            FileNotFoundError)


def parser(prog: str, description: str) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog=f"python -m pipelines.{prog}", description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> None:
    """Run a job's main; a user error prints one clear line and exits with status 2."""
    try:
        code = main(argv)
    except USER_ERRORS as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print("interrupted; finished parts are kept, re-run to resume", file=sys.stderr)
        code = 130
    sys.exit(code)
