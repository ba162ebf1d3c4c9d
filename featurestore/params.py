"""Frozen ``*Params`` dataclasses built from user overrides: unknown keys are an error naming the known ones.

The house style for every parameter set (head kinds, stackers, folds, ...): a frozen dataclass whose
defaults are documented beside each field, built from a JSON-able ``overrides`` dict by
:func:`params_from`, so a typo in ``--params`` is one clear error instead of a silently ignored key.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path

from featurestore.errors import StackError, UserInputError


def params_from(cls: type, overrides: dict | None, what: str, error: type[StackError] = UserInputError):
    """``cls(**overrides)`` after checking every key is a field of ``cls``; ``what`` names the set."""
    overrides = dict(overrides or {})
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise error(f"unknown {what} parameter(s) {unknown}; known: {sorted(names)}")
    return cls(**overrides)


def read_json_object(path: Path, what: str, error: type[StackError] = UserInputError) -> dict:
    """The JSON object in ``path``; ``error`` naming the file when it is missing, not JSON or not an object."""
    if not path.is_file():
        raise error(f"{what} {path}: not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}: invalid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
