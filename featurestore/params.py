"""Frozen ``*Params`` dataclasses built from user overrides: unknown keys are an error naming the known ones.

The house style for every parameter set (head kinds, stackers, folds, ...): a frozen dataclass whose
defaults are documented beside each field, built from a JSON-able ``overrides`` dict by
:func:`params_from`, so a typo in ``--params`` is one clear error instead of a silently ignored key.
"""

from __future__ import annotations

from dataclasses import fields

from featurestore.errors import StackError, UserInputError


def params_from(cls: type, overrides: dict | None, what: str, error: type[StackError] = UserInputError):
    """``cls(**overrides)`` after checking every key is a field of ``cls``; ``what`` names the set."""
    overrides = dict(overrides or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise error(f"unknown {what} parameter(s) {unknown}; known: {sorted(names)}")
    return cls(**overrides)
