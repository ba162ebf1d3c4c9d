"""Perch v2 logits -> the competition taxonomy: an exact match, a genus proxy, or nothing.

Perch v2 has 14,795 logits named by its ``assets/labels.csv``: a header line ``inat2024_fsd50k``
then one name per line in logit order: scientific binomials with a capitalised genus
(``"Turdus rufiventris"``) and FSD50K sound-event names with underscores (``"Speech_synthesizer"``).
:func:`build_class_map` gives every taxonomy class (in taxonomy order) one :class:`ClassMapRow`:

1. ``"exact"``: the class's scientific name equals a Perch label once both are normalised
   (lower case, underscores read as spaces, runs of whitespace collapsed) -> that one logit
   (the first one if several labels normalise alike);
2. ``"genus"``: otherwise, if the scientific name is a Linnaean name (see below) and Perch has
   species labels of its genus (labels of >= 2 normalised tokens whose first token is the genus)
   -> all of them; :func:`mapped_logits` scores the class by their maximum (as the public
   BirdCLEF 2026 Perch notebooks do);
3. ``"none"``: no Perch signal; a head trained on the embeddings has to cover the class.

Which names get a genus proxy is decided from the data: the BirdCLEF 2026 taxonomy names its 25
insect sonotypes ``"Insect son01"`` .. ``"Insect son25"`` (primary labels ``47158son01`` ..,
all with the iNat id of the class Insecta), so their first token is not a genus and a proxy
would score them by whatever Perch calls ``"Insect ..."``. A name gets a proxy only when it has
two or three tokens (genus, epithet, optional subspecies), each made of letters (hyphens allowed
inside a token), so a token with digits (``son01``) rules it out. Every other class of the
2026 taxonomy (birds, frogs, cicadas, mammals, the caiman) has a binomial.

This module imports only numpy and the standard library; taxonomy tables may be pyarrow Tables
(or lists of dicts) but pyarrow is never imported here.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from featurestore.errors import DataError, ModelError

if TYPE_CHECKING:  # taxonomy tables come from a store; the inference path needs no pyarrow
    import pyarrow as pa

PERCH_LABELS_HEADER = "inat2024_fsd50k"
MATCH_KINDS = ("exact", "genus", "none")
TAXONOMY_KEYS = ("primary_label", "scientific_name", "class_name")

_SPACE_RE = re.compile(r"\s+")


def normalise_name(text: str | None) -> str:
    """A label or scientific name as compared here: lower case, ``_`` read as a space, whitespace collapsed."""
    return _SPACE_RE.sub(" ", (text or "").replace("_", " ")).strip().lower()


def is_taxon_name(scientific_name: str) -> bool:
    """True for a binomial or trinomial made of letters (``"Turdus rufiventris"``), False for
    sonotype placeholders such as ``"Insect son01"`` (a token with digits), single words, or more
    than three tokens. Only such names get a genus proxy (module docstring)."""
    tokens = normalise_name(scientific_name).split(" ")
    return 2 <= len(tokens) <= 3 and all(t.replace("-", "").isalpha() and not t.startswith("-")
                                          and not t.endswith("-") for t in tokens)


def read_perch_labels(path: str | Path) -> list[str]:
    """The logit names of Perch v2's ``assets/labels.csv``, in logit order (the header kept out).

    The first line must be the header ``inat2024_fsd50k``; every following row holds exactly one
    non-empty name (trailing blank lines are allowed). Anything else raises :class:`ModelError`
    naming the file: a missing header would silently shift every logit by one, and a blank or
    multi-field row in the middle would misalign the names after it. (``embed.custom.read_model_labels``
    is not reused because it accepts any header and drops blank rows.)
    """
    path = Path(path)
    expected = f"a header line {PERCH_LABELS_HEADER!r} then one label per line"
    if not path.is_file():
        raise ModelError(f"{path}: Perch labels file not found (expected {expected})")
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if not rows:
        raise ModelError(f"{path}: empty Perch labels file (expected {expected})")
    header = [cell.strip() for cell in rows[0]]
    if header != [PERCH_LABELS_HEADER]:
        raise ModelError(f"{path}: first line is {','.join(header)!r}, expected the header "
                         f"{PERCH_LABELS_HEADER!r} (Perch v2's assets/labels.csv: {expected})")
    labels = []
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != 1 or not row[0].strip():
            raise ModelError(f"{path} line {line}: expected one label, got {row!r}")
        labels.append(row[0].strip())
    if not labels:
        raise ModelError(f"{path}: only the header {PERCH_LABELS_HEADER!r}, no labels (expected {expected})")
    return labels


@dataclass(frozen=True)
class ClassMapRow:
    """How one taxonomy class reads Perch: its logit indices (and their names) and the match kind."""

    primary_label: str
    scientific_name: str
    class_name: str                     # taxon group: Aves, Amphibia, Insecta, Mammalia, Reptilia
    match: Literal["exact", "genus", "none"]
    perch_indices: tuple[int, ...]
    perch_names: tuple[str, ...]

    def __post_init__(self):
        if self.match not in MATCH_KINDS:
            raise ValueError(f"{self.primary_label}: match must be one of {MATCH_KINDS}, got {self.match!r}")
        if len(self.perch_indices) != len(self.perch_names):
            raise ValueError(f"{self.primary_label}: {len(self.perch_indices)} indices but "
                             f"{len(self.perch_names)} names")
        wanted = {"exact": (1, 1), "genus": (1, None), "none": (0, 0)}[self.match]
        n = len(self.perch_indices)
        if n < wanted[0] or (wanted[1] is not None and n > wanted[1]):
            raise ValueError(f"{self.primary_label}: a {self.match!r} match with {n} Perch indices")


def _taxonomy_rows(taxonomy: pa.Table | Sequence[Mapping]) -> list[Mapping]:
    """Rows with primary_label, scientific_name, class_name in taxonomy order (``class_index`` when
    every row has one, as ``embed.custom.match_labels`` orders them; else as given)."""
    if hasattr(taxonomy, "to_pylist") and hasattr(taxonomy, "column_names"):
        rows = taxonomy.to_pylist()
        columns = set(taxonomy.column_names)
    else:
        rows = list(taxonomy)
        columns = set.intersection(*(set(r) for r in rows)) if rows else set()
    missing = [k for k in TAXONOMY_KEYS if k not in columns]
    if rows and missing:
        raise DataError(f"taxonomy: missing column(s) {missing} (need {list(TAXONOMY_KEYS)})")
    if "class_index" in columns:
        order = np.argsort(np.asarray([r["class_index"] for r in rows], dtype=np.int64), kind="stable")
        rows = [rows[i] for i in order]
    return rows


def build_class_map(labels: Sequence[str], taxonomy: pa.Table | Sequence[Mapping]) -> list[ClassMapRow]:
    """One :class:`ClassMapRow` per taxonomy class, in taxonomy order (rules in the module docstring).

    ``labels`` are Perch's logit names (:func:`read_perch_labels`); ``taxonomy`` is a table (or a
    list of dicts) with primary_label, scientific_name, class_name and optionally class_index.
    """
    exact: dict[str, int] = {}
    by_genus: dict[str, list[int]] = {}
    for i, label in enumerate(labels):
        key = normalise_name(label)
        exact.setdefault(key, i)
        tokens = key.split(" ")
        if len(tokens) >= 2:
            by_genus.setdefault(tokens[0], []).append(i)
    out = []
    for r in _taxonomy_rows(taxonomy):
        sci = str(r["scientific_name"] or "").strip()
        key = normalise_name(sci)
        if key and key in exact:
            match, indices = "exact", [exact[key]]
        elif is_taxon_name(sci) and key.split(" ")[0] in by_genus:
            match, indices = "genus", by_genus[key.split(" ")[0]]
        else:
            match, indices = "none", []
        out.append(ClassMapRow(primary_label=str(r["primary_label"]), scientific_name=sci,
                               class_name=str(r["class_name"] or ""), match=match,
                               perch_indices=tuple(indices), perch_names=tuple(labels[i] for i in indices)))
    return out


def mapped_rows(rows: Iterable[ClassMapRow]) -> list[ClassMapRow]:
    """The rows with a Perch signal (exact or genus), in order: the columns of ``mapped_logits(...)``."""
    return [r for r in rows if r.match != "none"]


def mapped_logits(logits: np.ndarray, rows: Sequence[ClassMapRow], *, mapped_only: bool = True,
                  fill: float = np.nan) -> np.ndarray:
    """Class scores (n, k) float32 from Perch logits (n, L).

    An exact row takes its column, a genus row the maximum over its columns. With ``mapped_only``
    (the default) rows without a match are left out, so the columns are ``mapped_rows(rows)``;
    otherwise every row gets a column and unmatched ones hold ``fill`` (NaN: no Perch signal).
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ModelError(f"Perch logits must be 2-D (windows, labels), got shape {logits.shape}")
    rows = list(rows)
    keep = [r for r in rows if r.match != "none"]
    n = logits.shape[0]
    if keep:
        lengths = np.fromiter((len(r.perch_indices) for r in keep), dtype=np.int64, count=len(keep))
        cols = np.fromiter((i for r in keep for i in r.perch_indices), dtype=np.int64, count=int(lengths.sum()))
        if cols.min() < 0 or cols.max() >= logits.shape[1]:
            raise ModelError(f"class map refers to Perch logit {int(cols.max())} but the logits have "
                             f"{logits.shape[1]} columns: was the map built from this model's labels.csv?")
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        scores = np.maximum.reduceat(logits[:, cols], starts, axis=1).astype(np.float32, copy=False)
    else:
        scores = np.empty((n, 0), dtype=np.float32)
    if mapped_only:
        return scores
    out = np.full((n, len(rows)), fill, dtype=np.float32)
    where = np.fromiter((j for j, r in enumerate(rows) if r.match != "none"), dtype=np.int64, count=len(keep))
    out[:, where] = scores
    return out


def coverage_summary(rows: Sequence[ClassMapRow]) -> str:
    """A small table by taxon group (alphabetical): classes, exact, genus proxy, none; then a total line."""
    groups: dict[str, list[int]] = {}
    for r in rows:
        counts = groups.setdefault(r.class_name or "?", [0, 0, 0, 0])
        counts[0] += 1
        counts[1 + MATCH_KINDS.index(r.match)] += 1
    header = ("group", "classes", "exact", "genus proxy", "none")
    body = [(name, *map(str, groups[name])) for name in sorted(groups)]
    total = ("total", *(str(sum(c[k] for c in groups.values())) for k in range(4)))
    table = [header, *body, total]
    widths = [max(len(line[k]) for line in table) for k in range(len(header))]

    def fmt(line: tuple[str, ...]) -> str:
        return "  ".join([line[0].ljust(widths[0])] + [v.rjust(w) for v, w in zip(line[1:], widths[1:], strict=True)])

    return "\n".join([fmt(header), *map(fmt, body), fmt(total)])


def to_records(rows: Iterable[ClassMapRow]) -> list[dict]:
    """Rows for the store table ``perch_class_map``: primary_label, scientific_name, class_name,
    match, perch_indices (list<int>), perch_names (list<str>)."""
    return [{"primary_label": r.primary_label, "scientific_name": r.scientific_name,
             "class_name": r.class_name, "match": r.match,
             "perch_indices": [int(i) for i in r.perch_indices], "perch_names": list(r.perch_names)}
            for r in rows]
