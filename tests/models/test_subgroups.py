"""Teacher vs student slices (models/subgroups.py) on hand-made slice lists, numbers worked out by hand,
and the hour buckets of models/metrics.py on hand-made hours (the slice AUCs against sklearn)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from featurestore.errors import MetricError
from models.metrics import UNKNOWN_HOUR, evaluate, hour_bucket
from models.subgroups import MIN_WINDOWS, TOLERANCE, compare_slices


def _s(kind: str, value: str, auc: float | None, n_windows: int = 120, n_classes: int = 10) -> dict:
    return {"slice": kind, "value": value, "n_windows": n_windows, "n_classes": n_classes, "auc": auc}


TEACHER = [_s("fold", "0", 0.90), _s("fold", "1", 0.84),
           _s("site", "S01", 0.90), _s("site", "S02", 0.80), _s("site", "S03", 0.95, n_windows=12),
           _s("hour", "dawn", 0.88), _s("hour", "night", 0.85),
           _s("overlap", "<3 labels", 0.87), _s("class_name", "Amphibia", 0.70, n_classes=2),
           _s("class_name", "Aves", 0.90), _s("frequency", "rare", 0.75)]


def _student(drops: dict[tuple[str, str], float], default: float) -> list[dict]:
    return [{**e, "auc": e["auc"] - drops.get((e["slice"], e["value"]), default)} for e in TEACHER]


def test_a_planted_slice_drop_is_flagged_and_a_uniform_drop_is_not() -> None:
    # every slice 0.01 worse, the night 0.08 worse; fold 1 0.50 worse (folds are the headline's parts, never rows);
    # S03 (12 windows) 0.30 worse and Amphibia (2 classes) 0.20 worse: too small to be chosen
    planted = _student({("hour", "night"): 0.08, ("fold", "1"): 0.50, ("site", "S03"): 0.30,
                        ("class_name", "Amphibia"): 0.20}, 0.01)
    c = compare_slices(TEACHER, planted, 0.87, 0.86)
    assert [(r.slice, r.value) for r in c.rows] == [
        ("site", "S01"), ("site", "S02"), ("site", "S03"), ("hour", "dawn"), ("hour", "night"),
        ("overlap", "<3 labels"), ("class_name", "Amphibia"), ("class_name", "Aves"), ("frequency", "rare")]
    night = c.rows[4]
    assert (night.teacher_auc, night.student_auc) == (0.85, pytest.approx(0.77))
    assert night.drop == pytest.approx(0.08) and (night.n_windows, night.n_classes) == (120, 10)
    assert c.headline_drop == pytest.approx(0.01)
    assert c.largest_drop is night and c.flagged            # 0.08 > 0.01 + 0.01
    assert not c.rows[2].large_enough and c.rows[2].n_windows < MIN_WINDOWS and not c.rows[6].large_enough
    text = c.render()
    assert "FLAGGED" in text and "largest slice drop: hour = night +0.0800 (120 windows, 10 classes)" in text
    assert "headline (fold mean): teacher 0.8700, student 0.8600, drop +0.0100" in text
    assert [line for line in text.splitlines() if line.endswith(" *")] == [
        "  hour       night               0.8500    0.7700  +0.0800      120      10 *"]
    assert c.summary() == {"worst_slice": "hour=night", "worst_drop": pytest.approx(0.08),
                           "headline_drop": pytest.approx(0.01), "tolerance": TOLERANCE, "flagged": True}

    # every slice 0.02 worse and the headline 0.02 worse: the student keeps the teacher's shape
    uniform = compare_slices(TEACHER, _student({}, 0.02), 0.87, 0.85)
    assert uniform.largest_drop.drop == pytest.approx(0.02) and not uniform.flagged
    assert "within the headline drop +0.0200" in uniform.render()
    # the tolerance is the line: a 0.025 slice drop on a 0.02 headline drop passes, 0.035 does not
    assert not compare_slices(TEACHER, _student({("site", "S02"): 0.025}, 0.02), 0.87, 0.85).flagged
    assert compare_slices(TEACHER, _student({("site", "S02"): 0.035}, 0.02), 0.87, 0.85).flagged


def test_undefined_and_one_sided_slices_are_listed_but_never_chosen() -> None:
    teacher = [_s("site", "S01", 0.90), _s("site", "S02", float("nan")), _s("overlap", ">=3 labels", 0.80)]
    student = [_s("site", "S01", 0.88), _s("site", "S02", 0.40), _s("overlap", ">=3 labels", None),
               _s("hour", "night", 0.30), _s("hour", "day", 0.60)]   # an older teacher row has no hour slices
    # as stored in an experiments row: JSON text, NaN written as NaN
    c = compare_slices(json.dumps(teacher), json.dumps(student), 0.9, 0.89)
    assert {(r.slice, r.value): r.drop for r in c.rows} == {
        ("site", "S01"): pytest.approx(0.02), ("site", "S02"): None, ("hour", "night"): None, ("hour", "day"): None,
        ("overlap", ">=3 labels"): None}
    assert c.largest_drop.value == "S01" and c.flagged          # 0.02 > 0.01 + 0.01 (only S01 is defined on both)
    assert "slice kind(s) hour on one side only" in c.render()
    assert compare_slices(teacher, student, 0.9, 0.89).rows == c.rows          # the parsed list gives the same
    # nothing comparable, or no headline: never flagged, and the text says why
    none = compare_slices(teacher[1:], student[1:], 0.9, 0.5)
    assert none.largest_drop is None and not none.flagged and "largest slice drop: none" in none.render()
    no_head = compare_slices(teacher, student, float("nan"), 0.89)
    assert no_head.headline_drop is None and not no_head.flagged and "not judged" in no_head.render()
    assert compare_slices(None, student, 0.9, 0.89).largest_drop is None


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not JSON"), ('{"slice": "site"}', "expected a list"), ('[{"slice": "site", "value": "S01"}]',
                                                                          "lacks slice, value or auc"),
    (json.dumps([_s("site", "S01", 0.9), _s("site", "S01", 0.8)]), "site = S01 appears twice"),
    (json.dumps([_s("site", "S01", "high")]), "auc 'high' is not a number")])
def test_malformed_slices_are_refused_naming_the_entry(bad: str, message: str) -> None:
    with pytest.raises(MetricError, match=message):
        compare_slices(bad, [], 0.9, 0.9)


def test_hour_buckets_by_hand() -> None:
    hours = [0, 4, 5, 8, 9, 16, 17, 20, 21, 23, np.int8(6), 7.0, None, -1, float("nan"), UNKNOWN_HOUR]
    assert hour_bucket(hours).tolist() == ["night", "night", "dawn", "dawn", "day", "day", "dusk", "dusk", "night",
                                           "night", "dawn", "dawn"] + [UNKNOWN_HOUR] * 4
    for bad in (24, 5.5, "07", True):
        with pytest.raises(MetricError, match="not an hour of the day"):
            hour_bucket([3, bad])


def test_evaluate_slices_by_hour_bucket_with_sklearn_aucs() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random((96, 4)) < 0.35).astype(int)
    s = rng.random(y.shape) + 0.6 * y
    hours = np.repeat([2, 6, 12, 19, 22, -1], 16)             # night, dawn, day, dusk, night, unknown
    report = evaluate(y, s, list("abcd"), hours=hours, n_boot=0)
    got = {r["value"]: r for r in report.slices.to_pylist() if r["slice"] == "hour"}
    assert sorted(got) == sorted(["night", "dawn", "day", "dusk", UNKNOWN_HOUR])
    for name, rows in (("night", np.r_[0:16, 64:80]), ("dawn", np.r_[16:32]), ("unknown", np.r_[80:96])):
        name = UNKNOWN_HOUR if name == "unknown" else name
        ok = [c for c in range(4) if 0 < y[rows, c].sum() < len(rows)]
        want = np.mean([roc_auc_score(y[rows, c], s[rows, c]) for c in ok])
        assert got[name]["n_windows"] == len(rows) and got[name]["n_classes"] == len(ok)
        assert math.isclose(got[name]["auc"], want, rel_tol=1e-12)
    assert not any(r["slice"] == "hour" for r in evaluate(y, s, list("abcd"), n_boot=0).slices.to_pylist())


def test_site_hour_of_reads_the_soundscapes_table_and_keeps_hour_less_stores_working(tmp_path) -> None:
    import pyarrow as pa

    from featurestore.store import FeatureStore
    from featurestore.windows import FOCAL, SOUNDSCAPE
    from models.training import site_hour_of

    a, b = "BC2026_Train_0001_S01_20240101_053000.ogg", "BC2026_Train_0002_S22_20240101_120000.ogg"
    keys = [f"{SOUNDSCAPE}/{a}", f"{SOUNDSCAPE}/{b}", f"{SOUNDSCAPE}/gone.ogg", f"{FOCAL}/1161364/iNat1.ogg"]
    sources = [SOUNDSCAPE, SOUNDSCAPE, SOUNDSCAPE, FOCAL]
    with FeatureStore.open(tmp_path / "store") as store:
        assert site_hour_of(store, keys, sources) == (None, None)           # no soundscapes table: no such slices
        store.write_table("soundscapes", pa.table({"filename": [a, b], "site": ["S01", "S22"],
                                                   "hour": pa.array([5, None], pa.int8())}))
        sites, hours = site_hour_of(store, keys, sources)
        assert site_hour_of(store, keys[2:], sources[2:]) == (None, None)   # none of these windows is in it
    assert sites == ["S01", "S22", "(unknown)", "(unknown)"] and hours == [5, None, None, None]
    assert hour_bucket(hours).tolist() == ["dawn", UNKNOWN_HOUR, UNKNOWN_HOUR, UNKNOWN_HOUR]
