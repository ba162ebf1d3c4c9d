"""Write and validate competition submissions (row_id + one probability column per class)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np


class SubmissionError(ValueError):
    """An invalid submission; the message names the row or column."""


def read_header(path: Path) -> list[str]:
    if not Path(path).exists():
        raise SubmissionError(f"{path}: file not found")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        header = next(csv.reader(fh), None)
    if not header:
        raise SubmissionError(f"{path}: empty file")
    return header


def write_submission(path: str | os.PathLike, row_ids: list[str], probs: np.ndarray, columns: list[str]) -> Path:
    """Write ``row_id`` + ``columns`` (the sample_submission order) atomically."""
    path = Path(path)
    if probs.shape != (len(row_ids), len(columns)):
        raise SubmissionError(f"predictions {probs.shape} do not match {len(row_ids)} rows x {len(columns)} classes")
    tmp = path.with_name(f".{path.name}.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row_id", *columns])
        for rid, row in zip(row_ids, probs, strict=True):
            writer.writerow([rid, *(f"{v:.6g}" for v in row)])
    os.replace(tmp, path)
    return path


def expected_row_ids(stems: Iterable[str], n_windows: int = 12, window_s: int = 5) -> list[str]:
    return [f"{stem}_{window_s * (i + 1)}" for stem in stems for i in range(n_windows)]


def validate_submission(path: str | os.PathLike, sample_submission: str | os.PathLike | list[str],
                        expected_ids: list[str] | None = None) -> int:
    """Check columns and order, row ids (unique, complete), numbers, NaN and [0, 1]; returns the row count.

    ``sample_submission`` is the sample file or its header (``["row_id", *classes]``).
    """
    path = Path(path)
    header = read_header(path)
    wanted = list(sample_submission) if isinstance(sample_submission, list) else read_header(Path(sample_submission))
    if header != wanted:
        if sorted(header) == sorted(wanted):
            first = next(i for i, (a, b) in enumerate(zip(header, wanted, strict=True)) if a != b)
            raise SubmissionError(f"{path}: columns are in the wrong order: column {first + 1} is {header[first]!r}, "
                                  f"sample_submission has {wanted[first]!r}")
        missing = [c for c in wanted if c not in header]
        extra = [c for c in header if c not in wanted]
        raise SubmissionError(f"{path}: columns differ from sample_submission: missing {missing[:10]}, "
                              f"unexpected {extra[:10]}")
    seen: dict[str, int] = {}
    with open(path, newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        for line, row in enumerate(reader, start=2):
            if len(row) != len(header):
                raise SubmissionError(f"{path} line {line}: {len(row)} fields, expected {len(header)}")
            rid = row[0]
            if rid in seen:
                raise SubmissionError(f"{path} line {line}: row_id {rid!r} repeats line {seen[rid]}")
            seen[rid] = line
            for col, text in zip(header[1:], row[1:], strict=True):
                try:
                    value = float(text)
                except ValueError:
                    raise SubmissionError(f"{path} line {line} ({rid}), column {col}: {text!r} is not a number") from None
                if math.isnan(value):
                    raise SubmissionError(f"{path} line {line} ({rid}), column {col}: NaN")
                if not 0.0 <= value <= 1.0:
                    raise SubmissionError(f"{path} line {line} ({rid}), column {col}: {value} is outside [0, 1]")
    if not seen:
        raise SubmissionError(f"{path}: no rows")
    if expected_ids is not None:
        missing = [r for r in expected_ids if r not in seen]
        extra = [r for r in seen if r not in set(expected_ids)]
        if missing:
            raise SubmissionError(f"{path}: {len(missing)} expected row_id(s) missing, e.g. {missing[:3]}")
        if extra:
            raise SubmissionError(f"{path}: {len(extra)} unexpected row_id(s), e.g. {extra[:3]}")
    return len(seen)
