"""Perch v2 label -> BirdCLEF 2026 taxonomy mapping (embed.perch_map) on the real taxonomy.csv.

A Perch-like labels.csv is built here from the real taxonomy: the exact names of some classes
(some written in upper case, with underscores or doubled spaces), only OTHER species of the genus
for other classes, FSD50K-style names (including ``Insect_buzzing``, which would lure the
``Insect sonNN`` sonotypes into a bogus genus proxy), unrelated fillers, all shuffled. The
expected mapping is derived from how the file was built, not by re-running the matching rules.
Wall time ~1 s.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from embed.perch_map import (
    ClassMapRow,
    build_class_map,
    coverage_summary,
    mapped_logits,
    mapped_rows,
    read_perch_labels,
    to_records,
)
from featurestore.competition import read_taxonomy
from featurestore.errors import ModelError

FSD50K = ["Speech_synthesizer", "Breathing", "Insect", "Insect_buzzing", "Frog",
          "Bird_vocalization_and_bird_call_and_bird_song", "Walk_and_footsteps"]
FILLERS = ["Rana temporaria", "Erithacus rubecula", "Parus major", "Fringilla coelebs", "Sylvia atricapilla"]
SONOTYPE_RE = re.compile(r"son\d+$")       # the 2026 sonotypes: primary labels 47158son01 .. 47158son25


def _write_labels(path: Path, labels: list[str], header: str | None = "inat2024_fsd50k") -> Path:
    lines = ([header] if header is not None else []) + labels
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def world(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The real taxonomy, a built labels.csv, and the mapping expected from how it was built."""
    taxonomy = read_taxonomy(shared_data / "bc2026" / "taxonomy.csv")
    classes = taxonomy.to_pylist()
    rng = np.random.default_rng(26)
    genera = {c["scientific_name"].split()[0] for c in classes}
    assert not {f.split()[0] for f in FILLERS} & genera          # the fillers must not touch the taxonomy

    mode: dict[str, str] = {}
    for c in classes:
        if SONOTYPE_RE.search(c["primary_label"]):
            mode[c["primary_label"]] = "sonotype"
        else:
            mode[c["primary_label"]] = str(rng.choice(["exact", "proxy", "absent"], p=[0.5, 0.25, 0.25]))
    # Planted labels: (text, what it is). Exact names get case / underscore / spacing variants.
    planted: list[tuple[str, str]] = []
    styles = ["plain", "upper", "underscore", "spaces"]
    for k, c in enumerate(c for c in classes if mode[c["primary_label"]] == "exact"):
        sci, style = c["scientific_name"], styles[k % len(styles)]
        text = {"plain": sci, "upper": sci.upper(), "underscore": sci.replace(" ", "_"),
                "spaces": sci.replace(" ", "   ")}[style]
        planted.append((text, "exact:" + c["primary_label"]))
    proxy_genera = sorted({c["scientific_name"].split()[0] for c in classes if mode[c["primary_label"]] == "proxy"})
    for g in proxy_genera:
        planted += [(f"{g} fakeusa", "other:" + g), (f"{g} fakeusb", "other:" + g)]
    planted += [(t, "fsd") for t in FSD50K] + [(t, "filler") for t in FILLERS]
    order = rng.permutation(len(planted))
    planted = [planted[i] for i in order]
    labels_path = _write_labels(tmp_path_factory.mktemp("perch") / "labels.csv", [t for t, _ in planted])

    # Expected per class, from the construction: an exact name -> its position; otherwise every
    # planted species of the genus (exact names of its relatives + the fake ones) -> genus proxy.
    position_of = {what: i for i, (_, what) in enumerate(planted) if what.startswith("exact:")}
    genus_positions: dict[str, list[int]] = {}
    for i, (_, what) in enumerate(planted):
        if what.startswith("exact:"):
            pl = what.removeprefix("exact:")
            g = next(c["scientific_name"].split()[0] for c in classes if c["primary_label"] == pl)
        elif what.startswith("other:"):
            g = what.removeprefix("other:")
        else:
            continue
        genus_positions.setdefault(g, []).append(i)
    expected: dict[str, tuple[str, list[int]]] = {}
    for c in classes:
        pl, g = c["primary_label"], c["scientific_name"].split()[0]
        if mode[pl] == "exact":
            expected[pl] = ("exact", [position_of["exact:" + pl]])
        elif mode[pl] != "sonotype" and g in genus_positions:
            expected[pl] = ("genus", sorted(genus_positions[g]))
        else:
            expected[pl] = ("none", [])
    return {"taxonomy": taxonomy, "classes": classes, "labels_path": labels_path, "mode": mode,
            "planted": planted, "expected": expected}


def test_read_perch_labels_keeps_logit_order(world):
    labels = read_perch_labels(world["labels_path"])
    assert labels == [t.strip() for t, _ in world["planted"]]
    assert "inat2024_fsd50k" not in labels


def test_class_map_matches_the_construction(world):
    rows = build_class_map(read_perch_labels(world["labels_path"]), world["taxonomy"])
    classes, expected = world["classes"], world["expected"]
    assert [r.primary_label for r in rows] == [c["primary_label"] for c in classes]   # taxonomy order
    labels = [t for t, _ in world["planted"]]
    for r, c in zip(rows, classes, strict=True):
        kind, indices = expected[r.primary_label]
        assert (r.match, list(r.perch_indices)) == (kind, indices), r
        assert r.perch_names == tuple(labels[i] for i in indices)
        assert (r.scientific_name, r.class_name) == (c["scientific_name"], c["class_name"])
    kinds = Counter(r.match for r in rows)
    assert kinds["exact"] == sum(m == "exact" for m in world["mode"].values()) > 50
    assert kinds["genus"] >= 20 and kinds["none"] >= 25          # every kind is exercised for real


def test_hand_worked_cases_and_normalisation(world):
    """Turdus: one class exact in upper case with underscores, one proxied by it and a fake relative."""
    taxonomy = [  # list-of-dicts input, given out of class_index order
        {"primary_label": "crbthr1", "scientific_name": "Turdus amaurochalinus", "class_name": "Aves",
         "class_index": 2},
        {"primary_label": "rubthr1", "scientific_name": " Turdus  rufiventris ", "class_name": "Aves",
         "class_index": 1},
        {"primary_label": "47158son01", "scientific_name": "Insect son01", "class_name": "Insecta",
         "class_index": 3},
        {"primary_label": "houspa", "scientific_name": "Passer domesticus", "class_name": "Aves",
         "class_index": 0},
    ]
    labels = ["Speech_synthesizer", "TURDUS_RUFIVENTRIS", "Insect_buzzing", "Turdus fakeusa", "Turdus",
              "Passer\tdomesticus", "Insect", "passer_domesticus"]
    rows = build_class_map(labels, taxonomy)
    assert [(r.primary_label, r.match, r.perch_indices) for r in rows] == [
        ("houspa", "exact", (5,)),                 # a tab inside; the first of two equal names
        ("rubthr1", "exact", (1,)),                # case, underscore, spaces on the taxonomy side
        ("crbthr1", "genus", (1, 3)),              # "Turdus" alone (one token) is not a species
        ("47158son01", "none", ()),                # not lured by "Insect_buzzing"
    ]
    assert rows[2].perch_names == ("TURDUS_RUFIVENTRIS", "Turdus fakeusa")


def test_sonotypes_get_no_proxy(world):
    rows = build_class_map(read_perch_labels(world["labels_path"]), world["taxonomy"])
    sonotypes = [r for r in rows if SONOTYPE_RE.search(r.primary_label)]
    assert len(sonotypes) == 25 and {r.scientific_name.split()[0] for r in sonotypes} == {"Insect"}
    assert all(r.match == "none" and r.perch_indices == () for r in sonotypes)
    assert any(t == "Insect_buzzing" for t, _ in world["planted"])   # the lure was there


def test_mapped_logits_equal_a_float64_loop(world):
    labels = read_perch_labels(world["labels_path"])
    rows = build_class_map(labels, world["taxonomy"])
    rng = np.random.default_rng(5)
    logits = rng.normal(0.0, 3.0, size=(9, len(labels)))            # float64 in, float32 out
    kept = mapped_rows(rows)
    assert [r.match for r in kept] == [r.match for r in rows if r.match != "none"]
    reference = np.empty((logits.shape[0], len(kept)))
    for j, r in enumerate(kept):
        for w in range(logits.shape[0]):
            reference[w, j] = max(float(logits[w, i]) for i in r.perch_indices)
    got = mapped_logits(logits, rows)
    assert got.dtype == np.float32 and got.shape == reference.shape
    np.testing.assert_array_equal(got, reference.astype(np.float32))
    np.testing.assert_array_equal(mapped_logits(logits.astype(np.float32), rows), reference.astype(np.float32))

    full = mapped_logits(logits, rows, mapped_only=False)
    assert full.shape == (logits.shape[0], len(rows))
    is_none = np.array([r.match == "none" for r in rows])
    assert np.isnan(full[:, is_none]).all()
    np.testing.assert_array_equal(full[:, ~is_none], reference.astype(np.float32))

    with pytest.raises(ModelError, match="columns"):
        mapped_logits(logits[:, :10], rows)
    assert mapped_logits(logits, [r for r in rows if r.match == "none"]).shape == (9, 0)


def test_coverage_summary_counts(world):
    rows = build_class_map(read_perch_labels(world["labels_path"]), world["taxonomy"])
    text = coverage_summary(rows)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["group", "classes", "exact"]
    table = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in lines[1:]}
    recount: dict[str, list[int]] = {}
    for c in world["classes"]:
        kind = world["expected"][c["primary_label"]][0]
        counts = recount.setdefault(c["class_name"], [0, 0, 0, 0])
        counts[0] += 1
        counts[["exact", "genus", "none"].index(kind) + 1] += 1
    assert {k: v for k, v in table.items() if k != "total"} == recount
    assert set(recount) == {"Aves", "Amphibia", "Insecta", "Mammalia", "Reptilia"}
    assert table["total"] == [len(world["classes"]), *(sum(v[k] for v in recount.values()) for k in (1, 2, 3))]


def test_to_records_fit_a_store_table(world):
    rows = build_class_map(read_perch_labels(world["labels_path"]), world["taxonomy"])
    records = to_records(rows)
    table = pa.Table.from_pylist(records)
    assert table.column_names == ["primary_label", "scientific_name", "class_name", "match",
                                  "perch_indices", "perch_names"]
    assert pa.types.is_integer(table.schema.field("perch_indices").type.value_type)
    assert pa.types.is_string(table.schema.field("perch_names").type.value_type)
    back = [ClassMapRow(**{**r, "perch_indices": tuple(r["perch_indices"]), "perch_names": tuple(r["perch_names"])})
            for r in table.to_pylist()]
    assert back == rows


def test_bad_label_files_name_the_file(tmp_path):
    no_header = _write_labels(tmp_path / "no_header.csv", ["Turdus merula", "Breathing"], header=None)
    with pytest.raises(ModelError, match=r"no_header\.csv.*inat2024_fsd50k"):
        read_perch_labels(no_header)
    empty = tmp_path / "empty.csv"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ModelError, match=r"empty\.csv: empty.*inat2024_fsd50k"):
        read_perch_labels(empty)
    only_header = _write_labels(tmp_path / "only_header.csv", [])
    with pytest.raises(ModelError, match=r"only_header\.csv.*no labels"):
        read_perch_labels(only_header)
    gap = _write_labels(tmp_path / "gap.csv", ["Turdus merula", "", "Breathing"])
    with pytest.raises(ModelError, match=r"gap\.csv line 3"):
        read_perch_labels(gap)
    with pytest.raises(ModelError, match=r"missing\.csv.*not found"):
        read_perch_labels(tmp_path / "missing.csv")


def test_module_imports_no_pyarrow():
    code = "import sys, embed.perch_map; print(sorted(m for m in ('pyarrow', 'duckdb', 'tensorflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
