"""Post-processing ops on hand-worked cases: every expected number below was computed by hand."""

from __future__ import annotations

import numpy as np
import pytest

from featurestore.errors import UserInputError
from stack.post import FileLayout, apply_post, parse_post

# two files, rows deliberately not in time order: the layout must follow the window ids
IDS = ["s/A.ogg@10", "s/B.ogg@5", "s/A.ogg@0", "s/A.ogg@15", "s/B.ogg@0", "s/A.ogg@5"]
BY_TIME = {"A@0": [0.2, 0.4], "A@5": [0.6, 0.8], "A@10": [0.4, 0.2], "A@15": [1.0, 0.6],
           "B@0": [0.5, 0.1], "B@5": [0.1, 0.3]}
GROUPS = ["Aves", "Amphibia"]


def _key(wid: str) -> str:
    return wid.split("/")[1].replace(".ogg", "")


P = np.array([BY_TIME[_key(w)] for w in IDS])
LAYOUT = FileLayout(IDS)


def _as_dict(out: np.ndarray) -> dict[str, list[float]]:
    return {_key(w): out[i].tolist() for i, w in enumerate(IDS)}


def _check(out: np.ndarray, expected: dict[str, list[float]]) -> None:
    got = _as_dict(out)
    for key, values in expected.items():
        assert got[key] == pytest.approx(values, abs=1e-12), key


def test_neighbours_follow_time_within_a_file_and_repeat_at_edges() -> None:
    row = {_key(w): i for i, w in enumerate(IDS)}
    nxt, prv = LAYOUT.neighbour(1), LAYOUT.neighbour(-1)
    assert nxt[row["A@0"]] == row["A@5"] and nxt[row["A@10"]] == row["A@15"]
    assert nxt[row["A@15"]] == row["A@15"] and nxt[row["B@5"]] == row["B@5"]      # file end: itself
    assert prv[row["A@0"]] == row["A@0"] and prv[row["B@5"]] == row["B@0"]
    assert LAYOUT.neighbour(2)[row["A@5"]] == row["A@15"] and LAYOUT.neighbour(-2)[row["A@5"]] == row["A@0"]
    # a missing window is an edge: @5 absent, so @0 and @10 are not neighbours
    gap = FileLayout(["s/C.ogg@0", "s/C.ogg@10", "s/C.ogg@15"])
    assert gap.neighbour(1).tolist() == [0, 2, 2] and gap.neighbour(-1).tolist() == [0, 1, 1]
    # groups (folds) split one file into separate blocks
    split = FileLayout(["s/D.ogg@0", "s/D.ogg@5"], groups=[0, 1])
    assert split.neighbour(1).tolist() == [0, 1] and split.n_files == 2


def test_smooth_default_kernel_in_probability_space() -> None:
    out = apply_post(P, [("smooth", {})], LAYOUT, GROUPS)        # kernel (0.25, 0.5, 0.25)
    _check(out, {"A@0": [0.30, 0.50], "A@5": [0.45, 0.55], "A@10": [0.60, 0.45], "A@15": [0.85, 0.50],
                 "B@0": [0.40, 0.15], "B@5": [0.20, 0.25]})


def test_smooth_kernel_per_taxon_group_with_edge_repeat() -> None:
    steps = [("smooth", {"kernel": [0, 1, 0], "by_group": {"Amphibia": {"kernel": [1, 1, 1, 1, 1]}}})]
    out = apply_post(P, steps, LAYOUT, GROUPS)
    # Aves: identity kernel; Amphibia: 5-tap box, windows beyond the file edge repeat the edge window
    _check(out, {"A@0": [0.2, 0.44], "A@5": [0.6, 0.48], "A@10": [0.4, 0.52], "A@15": [1.0, 0.56],
                 "B@0": [0.5, 0.18], "B@5": [0.1, 0.22]})


def test_smooth_in_logit_space() -> None:
    layout = FileLayout(["s/E.ogg@0", "s/E.ogg@5", "s/E.ogg@10"])
    p = 1.0 / (1.0 + np.exp(-np.array([[0.0], [2.0], [-2.0]])))   # logits 0, 2, -2
    out = apply_post(p, [("smooth", {"kernel": [1, 2, 1], "space": "logit"})], layout, ["Aves"])
    # (0+0*2+2)/4 = 0.5; (0+2*2-2)/4 = 0.5; (2-2*2-2)/4 = -1
    assert out[:, 0] == pytest.approx([0.6224593312018546, 0.6224593312018546, 0.2689414213699951], abs=1e-12)


def test_filescale_probability_form() -> None:
    out = apply_post(P, [("filescale", {"a": 0.5, "top_k": 2})], LAYOUT, GROUPS)
    # file A: top-2 means 0.8 (class 0) and 0.7 (class 1) -> factors 0.9, 0.85; file B: 0.3, 0.2 -> 0.65, 0.6
    _check(out, {"A@0": [0.18, 0.34], "A@5": [0.54, 0.68], "A@10": [0.36, 0.17], "A@15": [0.90, 0.51],
                 "B@0": [0.325, 0.06], "B@5": [0.065, 0.18]})
    # top_k 3: file A class 0 mean of 1.0, 0.6, 0.4 = 2/3; file B has 2 windows -> mean of both
    out3 = apply_post(P, [("filescale", {"a": 0.0, "top_k": 3})], LAYOUT, GROUPS)
    _check(out3, {"A@0": [0.2 * 2 / 3, 0.4 * 0.6], "B@5": [0.1 * 0.3, 0.3 * 0.2]})
    assert np.array_equal(apply_post(P, [("filescale", {"a": 1.0})], LAYOUT, GROUPS), P)


def test_filescale_logit_form() -> None:
    layout = FileLayout(["s/F.ogg@0", "s/F.ogg@5"])
    p = 1.0 / (1.0 + np.exp(-np.array([[2.0], [-2.0]])))
    out = apply_post(p, [("filescale", {"a": 0.5, "top_k": 1, "form": "logit"})], layout, ["Aves"])
    # top-1 logit of the file is 2: 0.5*2 + 0.5*2 = 2, 0.5*(-2) + 0.5*2 = 0
    assert out[:, 0] == pytest.approx([0.8807970779778823, 0.5], abs=1e-12)


def test_power_temperature_and_per_group_settings() -> None:
    out = apply_post(P, [("power", {"gamma": 2, "by_group": {"Amphibia": {"gamma": 1}}})], LAYOUT, GROUPS)
    _check(out, {"A@0": [0.04, 0.4], "A@5": [0.36, 0.8], "B@5": [0.01, 0.3]})
    p = np.array([[1.0 / (1.0 + np.exp(-2.0)), 0.5]])
    t = apply_post(p, [("temperature", {"temperature": 2})], FileLayout(["s/G.ogg@0"]), GROUPS)
    assert t[0] == pytest.approx([0.7310585786300049, 0.5], abs=1e-12)


def test_order_is_explicit() -> None:
    power_first = apply_post(P, [("power", {"gamma": 2}), ("filescale", {"a": 0.5, "top_k": 2})], LAYOUT, GROUPS)
    scale_first = apply_post(P, [("filescale", {"a": 0.5, "top_k": 2}), ("power", {"gamma": 2})], LAYOUT, GROUPS)
    # file B class 0, [0.5, 0.1]: squared [0.25, 0.01], top-2 mean 0.13, factor 0.565; class 1, [0.1, 0.3]:
    # squared [0.01, 0.09], top-2 mean 0.05, factor 0.525. The other way: the filescale numbers squared
    _check(power_first, {"B@0": [0.14125, 0.00525], "B@5": [0.00565, 0.04725]})
    _check(scale_first, {"B@0": [0.105625, 0.0036], "B@5": [0.004225, 0.0324]})


def test_input_is_not_modified_and_no_steps_is_identity() -> None:
    before = P.copy()
    apply_post(P, [("smooth", {}), ("filescale", {}), ("power", {"gamma": 3})], LAYOUT, GROUPS)
    assert np.array_equal(P, before)
    assert np.array_equal(apply_post(P, [], LAYOUT, GROUPS), P)


def test_steps_round_trip_through_json() -> None:
    steps = parse_post([("smooth", {"kernel": [1, 2, 1], "by_group": {"Insecta": {"kernel": [1, 1, 1, 1, 1]}}}),
                        ("filescale", {"a": 0.3, "top_k": 3, "form": "logit"}), "power"])
    assert parse_post([s.to_json() for s in steps]) == steps
    assert steps[1].params.top_k == 3 and steps[2].params.gamma == 1.0
    assert steps[0].for_group("Insecta").kernel == (1.0,) * 5 and steps[0].for_group("Aves").kernel == (1.0, 2.0, 1.0)


@pytest.mark.parametrize(("steps", "message"), [
    ([("blur", {})], "unknown post-processing op 'blur'; choose from smooth, filescale, power, temperature"),
    ([("smooth", {"kernal": [1, 1, 1]})], "unknown smooth parameter(s) ['kernal']"),
    ([("smooth", {"kernel": [1, 1]})], "odd number of weights"),
    ([("smooth", {"kernel": [1, -1, 1]})], "must be finite, >= 0"),
    ([("smooth", {"space": "db"})], "unknown space 'db'"),
    ([("filescale", {"a": 1.5})], "a must be in [0, 1]"),
    ([("filescale", {"top_k": 0})], "top_k must be an integer >= 1"),
    ([("filescale", {"top_k": "two"})], "top_k must be int"),
    ([("power", {"gamma": 0})], "gamma must be > 0"),
    ([("power", {"by_group": {"Aves": {"gama": 2}}})], "unknown power parameter(s) ['gama']"),
    ([("power", {"by_group": {"Reptilia": {"gamma": 2}}})], "unknown taxon group(s) ['Reptilia']"),
])
def test_bad_steps_are_refused_with_the_choices(steps, message) -> None:
    with pytest.raises(UserInputError) as err:
        apply_post(P, steps, LAYOUT, GROUPS)
    assert message in str(err.value)


def test_file_statistics_equal_a_brute_force_reference() -> None:
    rng = np.random.default_rng(3)
    ids = [f"s/f{f}.ogg@{5 * s}" for f in range(7) for s in range(int(rng.integers(1, 9)))]
    rng.shuffle(ids)
    values = np.round(rng.random((len(ids), 5)), 1)           # rounded: ties inside files
    layout = FileLayout(ids)
    files = [w.split("@")[0] for w in ids]
    for k in (1, 2, 3, 20):
        expected = np.array([[np.mean(sorted([values[j, c] for j in range(len(ids)) if files[j] == files[i]],
                                             reverse=True)[:k]) for c in range(5)] for i in range(len(ids))])
        assert np.allclose(layout.file_reduce(values, "topk", k), expected, atol=1e-12, rtol=0)
    expected_max = np.array([[max(values[j, c] for j in range(len(ids)) if files[j] == files[i]) for c in range(5)]
                             for i in range(len(ids))])
    assert np.array_equal(layout.file_reduce(values, "max"), expected_max)
    expected_mean = np.array([[np.mean([values[j, c] for j in range(len(ids)) if files[j] == files[i]])
                               for c in range(5)] for i in range(len(ids))])
    assert np.allclose(layout.file_reduce(values, "mean"), expected_mean, atol=1e-12, rtol=0)
