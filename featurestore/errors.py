"""The project's one error hierarchy. Every error a user can fix derives from :class:`StackError`;
the CLI boundary (``pipelines._cli.run_main``) prints its message as ``error: …`` and exits 2, and
anything else is a bug and keeps its traceback.

===========================  ================================================================
class                        raised when
===========================  ================================================================
``UserInputError``           an argument or parameter is wrong (unknown head kind, view, key)
``DataError``                competition input is wrong (CSV rows, labels, names)
``AudioError``               an audio file cannot be decoded (names the file)
``ModelError``               a model file or its description is unusable (names the file)
``StoreError``               a feature-store operation failed (names the table or file)
``StoreBusyError``           another process holds the store or its catalog
``DiskFullError``            no space left while writing into the store
``BundleError``              a trained-head folder is incomplete or does not fit this machine
``MetricError``              a score is undefined (e.g. a class positive in every window)
``SubmissionError``          a submission file is malformed
===========================  ================================================================

The classes also derive from the built-in they refine (``ValueError`` or ``RuntimeError``), so
code catching those keeps working. This module imports nothing: the inference path (no store,
no duckdb) raises these too.
"""

from __future__ import annotations

import os
from pathlib import Path


class StackError(Exception):
    """Base of every error a user can act on; the message says what went wrong and what to run next."""


class UserInputError(StackError, ValueError):
    """A command-line argument or parameter is wrong; the message lists the valid choices."""


class DataError(StackError, ValueError):
    """Bad competition input; the message names the file and row."""


class AudioError(DataError):
    """An audio file cannot be decoded; the message names the file."""


class ModelError(DataError):
    """A model file or its description is unusable; the message names the file."""


class StoreError(StackError, RuntimeError):
    """A feature-store operation failed; the message names the table or file."""


class StoreBusyError(StoreError):
    """Another process writes the store (or holds its catalog open); the message names it."""


class DiskFullError(StoreError):
    """No space left while writing into the store; the message names the file and the folder to free."""

    def __init__(self, path: str | os.PathLike, directory: str | os.PathLike | None = None,
                 kept: str = "finished parts are kept"):
        self.path, self.directory, self.kept = str(path), str(directory or Path(path).parent), kept
        super().__init__(f"disk full while writing {self.path}: free space in {self.directory} and re-run; {kept}")

    def __reduce__(self):  # picklable across worker processes
        return DiskFullError, (self.path, self.directory, self.kept)


class BundleError(StackError, RuntimeError):
    """A trained-head folder is incomplete, or its extractors cannot be rebuilt identically here."""


class HeadError(UserInputError):
    """A head was given bad parameters or data (unknown kind or key, wrong shapes)."""


class MetricError(StackError, ValueError):
    """A metric is undefined for the given labels (as Kaggle's scorer would refuse them)."""


class SubmissionError(StackError, ValueError):
    """A submission file is malformed; the message names the file and line."""
