"""The tuner measures what the leaderboard measures, prunes on per-fold AUCs and resumes without repeats."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest

from featurestore.folds import fold_version
from featurestore.store import FeatureStore, StoreError
from models.frame import SOUNDSCAPE, FrameSpec, build_frame
from models.training import Subsample, focal_cap_mask
from models.tuning import METRIC_NAME, TuneSpec, run_tune, storage_url


@pytest.fixture(scope="module")
def store(demo_trained, store_copy) -> Path:
    """A writable copy of the session's trained demo store."""
    return store_copy(demo_trained.store, "tuning")


@pytest.fixture(scope="module")
def default_linear(demo_trained):
    """The linear head on BirdNET with default parameters (trained once per session)."""
    return demo_trained.results["linear"]


def _load(store: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=storage_url(store))


def test_full_mode_objective_is_the_leaderboard_headline(store: Path, default_linear) -> None:
    out = run_tune(store, TuneSpec("linear", FrameSpec("birdnet")), 2, "full-linear", record_best=False,
                   say=lambda _: None)
    study = _load(store, "full-linear")
    first = study.trials[0]  # the defaults are enqueued first in a new study
    assert first.params == {"C": 0.1, "pca_components": 256, "balanced": True}
    assert first.value == pytest.approx(default_linear.fold_mean, abs=1e-9)
    assert first.user_attrs["head_id"] == default_linear.head_id
    # intermediate values are the per-fold AUCs at step = fold id, equal to the experiment's fold scores
    scores = default_linear.report.fold_scores
    assert first.intermediate_values == pytest.approx({int(k): v for k, v in scores.items()}, abs=1e-9)
    assert first.user_attrs["fold_std"] == pytest.approx(default_linear.fold_std, abs=1e-9)
    assert {f"fold_{k}_auc" for k in scores} <= set(first.user_attrs)
    assert first.user_attrs["seconds"] > 0 and first.user_attrs["n_eval_windows"] > 0
    assert study.metric_names == [METRIC_NAME]
    attrs = study.user_attrs
    assert attrs["head"] == "linear" and attrs["features"] == "birdnet" and attrs["mode"] == "full"
    assert attrs["pooling"] == "mean" and attrs["context"] is False and attrs["seed"] == 0
    with FeatureStore.open(store, read_only=True) as fs:
        assert attrs["fold_version"] == fold_version(fs)
    assert out.trials == 2 and out.best_value >= first.value


def test_fast_mode_keeps_full_evaluation_and_its_best_holds_up_under_full_cv(store: Path, default_linear) -> None:
    spec = TuneSpec("linear", FrameSpec("birdnet"), mode="fast", subsample=Subsample(focal_per_class=4))
    out = run_tune(store, spec, 3, "fast-linear", say=lambda _: None)
    out = run_tune(store, spec, 1, "fast-linear", say=lambda _: None)  # a fast study resumes too
    assert out.trials == 4
    study = _load(store, "fast-linear")
    full = _load(store, "full-linear").trials[0]
    trial = study.trials[0]
    assert trial.user_attrs["n_train_windows"] < full.user_attrs["n_train_windows"]
    assert trial.user_attrs["n_eval_windows"] == full.user_attrs["n_eval_windows"]
    assert out.best_head_id and out.best_head_id.startswith("linear-")
    assert out.best_fold_mean >= default_linear.fold_mean - 0.02, out.render()
    with FeatureStore.open(store, read_only=True) as fs:
        tag, mode = fs.first("SELECT tag, mode FROM experiments WHERE head_id = ?", [out.best_head_id])
    assert (tag, mode) == ("tuned", "full")


def test_resuming_adds_new_parameter_sets_and_fails_stale_trials(store: Path) -> None:
    spec = TuneSpec("linear", FrameSpec("birdnet"), fixed={"pca_components": 32})
    run_tune(store, spec, 3, "resume", record_best=False, say=lambda _: None)
    stale = _load(store, "resume").ask()  # a trial left RUNNING, as by a process killed mid-trial
    messages: list[str] = []
    run_tune(store, spec, 3, "resume", record_best=False, say=messages.append)
    study = _load(store, "resume")
    assert any("left running" in m for m in messages)
    assert study.trials[stale.number].state == optuna.trial.TrialState.FAIL
    done = [t for t in study.trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    assert len(done) == 6
    assert "pca_components" not in done[0].params  # a fixed parameter leaves the search space
    keys = [tuple(sorted(t.params.items())) for t in done]
    assert len(set(keys)) == len(keys), keys


def test_a_study_cannot_change_its_setup(store: Path) -> None:
    run_tune(store, TuneSpec("linear", FrameSpec("birdnet")), 1, "setup", record_best=False, say=lambda _: None)
    with pytest.raises(StoreError, match="features: study has 'birdnet', now 'classical'"):
        run_tune(store, TuneSpec("linear", FrameSpec("classical")), 1, "setup", record_best=False)


def test_focal_cap_keeps_soundscapes_and_at_most_n_focal_windows_per_class(store: Path) -> None:
    with FeatureStore.open(store, read_only=True) as fs:
        frame = build_frame(fs, FrameSpec("birdnet"))
    keep = focal_cap_mask(frame, 3, seed=0)
    scape = frame.source == SOUNDSCAPE
    assert keep[scape].all()
    focal_kept = keep & ~scape
    per_class = frame.Y[focal_kept].sum(axis=0)
    available = frame.Y[~scape].sum(axis=0)
    # every class keeps min(3, available) of its own windows, plus what multi-label windows bring along
    own_first = np.minimum(3, available)
    assert (per_class >= own_first).all()
    assert focal_kept.sum() <= 3 * frame.Y.shape[1]
    assert np.array_equal(keep, focal_cap_mask(frame, 3, seed=0))
    assert not np.array_equal(keep, focal_cap_mask(frame, 3, seed=1))


def test_every_default_lies_in_its_search_space() -> None:
    """The defaults are enqueued as trial 0 only where the space holds them; a default moved outside
    its range would silently drop out of the first trial."""
    from dataclasses import asdict

    from models.heads import make_params
    from models.tuning import SEARCH_SPACES

    for kind, space in SEARCH_SPACES.items():
        defaults = asdict(make_params(kind))
        outside = {name: defaults[name] for name, dim in space.items() if not dim.contains(defaults[name])}
        assert outside == {}, f"{kind}: defaults outside the search space: {outside}"
