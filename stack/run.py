"""A stacked head run: level-2 CV over trained heads, the stacked bundle, its OOF table and its
``experiments`` row (head ``stack``), so ``pipelines.leaderboard`` ranks it with the base heads.

:func:`run_stack` is what ``python -m pipelines.stack`` (without ``--trials``) calls, and what the
stack tuner (:mod:`stack.tuning`) calls to re-train the best trial.

Guarantees:

* the recorded ``fold_mean`` / ``fold_std`` / ``fold_scores`` are those of
  :func:`stack.stackers.cross_validate_stack` (each fold scored on the predictions of the level-2
  model that never saw it, after the post steps), on the same rows and by the same code as a head's;
* the OOF table ``oof/<stack id>.parquet`` has a head's layout (``window_id, head_id, fold, source``
  and one float32 column per class) and holds the post-processed level-2 OOF predictions;
* the bundle (:mod:`stack.bundle`) holds each fold's level-2 model and the full-data one (what
  ``pipelines.predict`` applies) and a ``record.json`` of its folds and file checksums (checked, with
  the base heads' own records, by every reader); a failed or disk-full write leaves no partial
  folder; base heads must all be head bundles trained on one fold version.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from featurestore.errors import DataError, UserInputError
from featurestore.folds import require_same_fold_version
from featurestore.windows import FOCAL, file_of
from models.bundle import HEADS_DIR, HeadConfig
from stack.bundle import STACK_KIND, StackConfig, StackLayout, head_config, steps_json, write_stack
from stack.inputs import StackInputs, load_inputs
from stack.post import parse_post
from stack.stackers import StackCV, cross_validate_stack, fit_stacker, make_stack_params, training_rows

TRAINING_TAG = "full"


@dataclass
class StackResult:
    head_id: str
    cv: StackCV
    bundle_dir: Path
    oof_path: Path
    seconds: float
    tag: str
    pooled: float | None = None          # pooled OOF AUC: a diagnostic beside the fold mean

    @property
    def fold_mean(self) -> float:
        return self.cv.fold_mean

    def render(self) -> str:
        score = self.cv.score
        folds = " ".join(f"{k}:{v:.3f}" for k, v in sorted(score.fold_scores.items()))
        post = " -> ".join(s.name for s in self.cv.post) or "none"
        pooled = (f"; pooled OOF {self.pooled:.4f} (calibration gap {self.pooled - score.fold_mean:+.4f})"
                  if self.pooled is not None else "")
        return (f"stacked head {self.head_id} ({self.cv.kind}, post {post}, tag {self.tag}): fold mean "
                f"{score.fold_mean:.4f} +/- {score.fold_std:.4f} [{folds}] on {int(score.eval_mask.sum())} "
                f"{score.scored_on} windows{pooled}; {self.seconds:.1f} s\n"
                f"bundle {self.bundle_dir}\nOOF {self.oof_path}")


def base_configs(store_dir: str | Path, heads: Sequence[str]) -> dict[str, HeadConfig]:
    """Each base head's config; UserInputError for a missing or stacked one."""
    out = {}
    for h in heads:
        config = head_config(store_dir, h)
        if isinstance(config, StackConfig):
            raise UserInputError(f"{h} is a stacked head; stack base heads only")
        out[h] = config
    return out


def base_fold_version(configs: Mapping[str, HeadConfig]) -> str:
    """The one fold version the base heads were trained on (UserInputError naming a head on another)."""
    if not configs:
        raise UserInputError("no heads to stack: give at least one head id")
    (first, config), *rest = configs.items()
    for h, c in rest:
        require_same_fold_version(f"base head {h}", c.fold_version, config.fold_version,
                                  f"retrain the base heads on one fold version (that of {first})")
    return config.fold_version


def stack_params(method: str, params):
    """A stacker's parameter dataclass from a dataclass, a dict of overrides or None."""
    if is_dataclass(params):
        return params.check()
    return make_stack_params(method, params)


def run_stack(store_dir: str | Path, heads: Sequence[str], method: str, params=None, post: Sequence = (), *,
              zero_shot: Sequence[str] = (), zero_shot_pooling: str = "mean", tag: str | None = None,
              data: StackInputs | None = None) -> StackResult:
    """Cross-validate a stacker (+ post steps) over ``heads`` and write the stacked head; see the module doc.

    ``params``: the stacker's parameters (dataclass or dict of overrides); ``post``: a post-processing
    chain (:func:`stack.post.parse_post`); ``zero_shot``: stored logit views added as sources;
    ``data``: already loaded inputs of exactly these sources (the tuner passes them).
    """
    from featurestore.store import FeatureStore, write_parquet_atomic
    from models.experiments import record
    from models.training import OOF_DIR, oof_table, refresh_oof_view

    t0 = time.perf_counter()
    heads, zero_shot = list(heads), list(zero_shot)
    params = stack_params(method, params)
    steps = parse_post(post)
    configs = base_configs(store_dir, heads)
    fold_version = base_fold_version(configs)
    data_versions = sorted({str(c.data_version) for c in configs.values()})
    if len(data_versions) > 1:
        raise DataError(f"the base heads were trained on different data versions {data_versions}; retrain them on one")
    if data is None:
        data = load_inputs(store_dir, heads, zero_shot=zero_shot, zero_shot_pooling=zero_shot_pooling,
                           focal=bool(getattr(params, "use_focal", False)))
    elif list(data.heads) != heads + zero_shot:
        raise UserInputError(f"inputs hold sources {list(data.heads)}, not {heads + zero_shot}")
    cv = cross_validate_stack(data, method, params, steps)
    full = fit_stacker(data, method, params, training_rows(data, params, None))
    config = StackConfig(tuple(heads), tuple(zero_shot), zero_shot_pooling, method, asdict(params), steps_json(steps),
                         fold_version, configs[heads[0]].data_version)
    head_id = config.head_id
    with FeatureStore.open(store_dir, create=False) as store:
        zs_versions, zs_params = zero_shot_extractors(store, zero_shot)
        layout = StackLayout(tuple(data.heads), tuple(data.class_names), tuple(map(str, data.class_groups)),
                             data.available, zs_versions)
        folder = write_stack(store.root / HEADS_DIR, config, layout, zs_params, cv.models, full)
        done = data.folds != -1
        rows = SimpleNamespace(window_ids=data.window_ids[done], source=data.source[done], class_names=data.class_names)
        oof_path = store.root / OOF_DIR / f"{head_id}.parquet"
        oof_path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(oof_table(rows, data.folds[done], cv.oof[done].astype(np.float32), head_id), oof_path)
        refresh_oof_view(store)
        seconds = time.perf_counter() - t0
        tag = tag or TRAINING_TAG
        row = experiment_row(store, data, cv, config, configs, seconds, tag)
        record(store, row)
    return StackResult(head_id, cv, folder, oof_path, seconds, tag, row["oof_auc"])


def zero_shot_extractors(store, views: Sequence[str]) -> tuple[dict[str, str], dict[str, dict]]:
    """(extractor -> version read, extractor -> stored params) of the zero-shot views."""
    from embed.features import resolve_version
    from embed.registry import split_views, stored_params

    versions: dict[str, str] = {}
    for view in views:
        for spec in split_views(view):
            versions.setdefault(spec.extractor, resolve_version(store, spec.extractor, None))
    return versions, stored_params(store, versions)


def experiment_row(store, data: StackInputs, cv: StackCV, config: StackConfig, configs: Mapping[str, HeadConfig],
                   seconds: float, tag: str) -> dict:
    """The ``experiments`` row of a stacked run (the full metric report on the scored rows)."""
    from featurestore.errors import MetricError
    from models.experiments import metric_columns
    from models.metrics import evaluate
    from models.training import SCORED_ON_TEXT
    from stack.inputs import store_labels

    score = cv.score
    mask = score.eval_mask
    report = None
    if score.scored_on != "none":
        index = {c: i for i, c in enumerate(data.class_names)}
        focal = np.zeros(len(data.class_names))
        for w, labels in store_labels(store).items():
            if w.startswith(f"{FOCAL}/"):
                for lab in labels:
                    if lab in index:
                        focal[index[lab]] += 1
        try:
            report = evaluate(data.Y[mask], np.nan_to_num(cv.oof[mask], nan=0.0), data.class_names,
                              folds=data.folds[mask], file_ids=[file_of(w) for w in data.window_ids[mask]],
                              # the same site and hour-bucket slices as every head's row (models.training.score_run)
                              sites=["(unknown)" if s is None else s for s in data.site[mask].tolist()],
                              hours=data.hour[mask],
                              train_counts=focal, taxon_class=[str(g) for g in data.class_groups], n_boot=100,
                              seed=0)
        except MetricError:
            report = None

    feature_versions: dict[str, str] = {}
    for c in configs.values():   # in config.json's (sorted) key order
        feature_versions.update(sorted(c.feature_versions.to_json().items()))
    features = f"{len(config.base_heads)} heads" + (f"+{len(config.zero_shot)} zero-shot" if config.zero_shot else "")
    return {
        "head_id": config.head_id, "head": STACK_KIND, "tag": tag, "features": features,
        "params": json.dumps({"stacker": config.stacker, **config.params, "post": list(config.post)}),
        "config": json.dumps(config.to_json(), sort_keys=True), "fold_version": config.fold_version,
        "data_version": config.data_version, "feature_versions": json.dumps(feature_versions), "seed": 0,
        "eval_rows": SCORED_ON_TEXT[score.scored_on], "n_train_windows": int(training_rows(data, cv.params, None).sum()),
        "train_seconds": seconds, "predict_seconds": 0.0, "training_version": config.stack_version,
        "mode": "full", "scored_on": score.scored_on, "n_eval_windows": int(mask.sum()),
        **metric_columns(report, fold_mean=score.fold_mean, fold_std=score.fold_std, fold_scores=score.fold_scores)}
