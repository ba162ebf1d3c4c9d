"""Cross-validated training of one head on the store: fold models, OOF predictions, one experiment row.

Artifacts land in plain folders inside the store:

* ``heads/<head_id>/config.json`` and ``heads/<head_id>/fold_<k>/`` (a saved head each, plus the
  window ids it was trained on, so leakage can be audited);
* ``oof/<head_id>.parquet``: one row per training window (window_id, head_id, fold, source and one
  float32 column per class), byte-identical for the same configuration and seed;
* a row in the DuckDB table ``experiments``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore.ingest import latest_data_version
from featurestore.store import FeatureStore, StoreError, utc_now, write_parquet_atomic
from models.frame import SOUNDSCAPE, FrameSpec, TrainingFrame, build_frame
from models.heads import Head, config_hash, load_head, make_head, make_params
from models.metrics import MetricReport, evaluate
from models.predict import EXTRACTORS_FILE

HEADS_DIR = "heads"
OOF_DIR = "oof"
TRAINING_VERSION = "train-1"


@dataclass
class ExperimentResult:
    head_id: str
    kind: str
    oof_auc: float
    fold_mean: float
    fold_std: float
    report: MetricReport
    train_seconds: float
    predict_seconds: float
    oof_path: Path
    eval_rows: str

    def render(self) -> str:
        return (f"head {self.head_id} ({self.kind}): OOF AUC {self.oof_auc:.4f} on {self.eval_rows} "
                f"(fold mean {self.fold_mean:.4f} +/- {self.fold_std:.4f}); train {self.train_seconds:.1f} s, "
                f"predict {self.predict_seconds:.1f} s\n{self.report.render()}")


def extractor_params(store: FeatureStore, feature_versions: dict) -> dict[str, dict]:
    """The stored parameters of every extractor version a head uses (what inference rebuilds)."""
    from embed.features import version_meta

    out = {}
    for name, version in feature_versions.items():
        if name == "pooling":
            continue
        meta = version_meta(store, version)
        if not meta:
            raise StoreError(f"extractor version {version} has no extractor_versions row in {store.root}")
        out[name] = meta["params"]
    return out


def fold_assignment(store: FeatureStore, window_ids: np.ndarray, version: str | None,
                    kind: str = "folds") -> tuple[np.ndarray, str]:
    """Fold of each window (-1 where the fold table has none) and the fold version used."""
    from featurestore.folds import load_folds

    mapping, fold_version = load_folds(store, version=version, kind=kind)
    return np.array([mapping.get(w, -1) for w in window_ids], dtype=np.int64), fold_version


def replay_window_ids(store: FeatureStore) -> set[str]:
    if not store.has_table("replay_windows"):
        raise StoreError("no replay_windows table; run pipelines.folds first")
    return {r[0] for r in store.rows("SELECT window_id FROM replay_windows")}


def cross_validate(frame: TrainingFrame, folds: np.ndarray, kind: str, overrides: dict,
                   out_dir: Path | None, progress=None) -> tuple[np.ndarray, float, float]:
    """Train one head per fold on the other folds; returns OOF predictions and train/predict seconds."""
    oof = np.full(frame.Y.shape, np.nan, dtype=np.float32)
    train_s = predict_s = 0.0
    for f in sorted(set(folds.tolist()) - {-1}):
        held = folds == f
        train = (folds != f) & (folds != -1)
        head = make_head(kind, frame.class_names, frame.feature_names, overrides)
        t0 = time.perf_counter()
        head.fit(frame.X[train], frame.Y[train], frame.weight[train], groups=frame.groups[train])
        t1 = time.perf_counter()
        oof[held] = head.predict_proba(frame.X[held])
        predict_s += time.perf_counter() - t1
        train_s += t1 - t0
        if out_dir is not None:
            fold_dir = head.save(out_dir / f"fold_{f}")
            pq.write_table(pa.table({"window_id": frame.window_ids[train]}), fold_dir / "train_windows.parquet",
                           compression="zstd")
        if progress:
            progress(f)
    return oof, train_s, predict_s


def oof_table(frame: TrainingFrame, folds: np.ndarray, oof: np.ndarray, head_id: str) -> pa.Table:
    cols = {"window_id": pa.array(frame.window_ids.tolist()), "head_id": pa.array([head_id] * len(folds)),
            "fold": pa.array(folds, pa.int32()), "source": pa.array(frame.source.tolist())}
    for i, name in enumerate(frame.class_names):
        cols[name] = pa.array(oof[:, i], pa.float32())
    return pa.table(cols)


def ensure_experiments_table(store: FeatureStore) -> None:
    store.con.execute(
        "CREATE TABLE IF NOT EXISTS experiments (head_id VARCHAR, head VARCHAR, tag VARCHAR, features VARCHAR, "
        "params JSON, config JSON, fold_version VARCHAR, data_version VARCHAR, feature_versions JSON, seed INTEGER, "
        "eval_rows VARCHAR, n_train_windows INTEGER, oof_auc DOUBLE, fold_mean DOUBLE, fold_std DOUBLE, "
        "ci_low DOUBLE, ci_high DOUBLE, rare_auc DOUBLE, padded_cmap DOUBLE, per_class JSON, slices JSON, "
        "train_seconds DOUBLE, predict_seconds DOUBLE, training_version VARCHAR, created_at TIMESTAMP)")


def _slice_value(report: MetricReport, slice_name: str, value: str) -> float | None:
    for r in report.slices.to_pylist():
        if r["slice"] == slice_name and r["value"] == value and r["n_classes"]:
            return r["auc"]
    return None


def train_head(store_dir: str | Path, kind: str, spec: FrameSpec, *, overrides: dict | None = None,
               fold_version: str | None = None, replay: bool = False, seed: int = 0, tag: str | None = None,
               progress=None) -> ExperimentResult:
    """Cross-validate ``kind`` on the store's features and record the experiment."""
    overrides = dict(overrides or {})
    if kind == "lgbm":
        overrides.setdefault("seed", seed)
    params = make_params(kind, overrides)
    with FeatureStore.open(store_dir) as store:
        replay_ids = sorted(replay_window_ids(store)) if replay else None
        frame = build_frame(store, spec, window_ids=replay_ids)
        folds, fold_version = fold_assignment(store, frame.window_ids, fold_version)
        if (folds == -1).all():
            raise StoreError("none of the training windows has a fold; re-run pipelines.folds")
        data_version = latest_data_version(store)
        config = {"head": kind, "params": asdict(params), "frame": asdict(spec), "fold_version": fold_version,
                  "data_version": data_version, "feature_versions": frame.feature_versions, "seed": seed,
                  "replay": replay, "training_version": TRAINING_VERSION}
        head_id = f"{kind}-{config_hash(config)}"
        out_dir = store.root / HEADS_DIR / head_id
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "config.json").write_text(json.dumps(config, indent=1, sort_keys=True))
        (out_dir / EXTRACTORS_FILE).write_text(json.dumps(extractor_params(store, frame.feature_versions), indent=1))
        oof, train_s, predict_s = cross_validate(frame, folds, kind, asdict(params), out_dir, progress)

        scored = folds != -1
        is_scape = (frame.source == SOUNDSCAPE) & scored
        eval_mask, eval_rows = (is_scape, "labelled soundscape windows") if is_scape.any() else (scored, "all windows")
        focal_counts = frame.Y[frame.source != SOUNDSCAPE].sum(axis=0)
        taxon = dict(store.rows("SELECT primary_label, class_name FROM taxonomy"))
        report = evaluate(frame.Y[eval_mask], oof[eval_mask], frame.class_names, folds=folds[eval_mask],
                          file_ids=frame.groups[eval_mask], train_counts=focal_counts,
                          taxon_class=[taxon[c] for c in frame.class_names], n_boot=100, seed=seed)
        oof_path = store.root / OOF_DIR / f"{head_id}.parquet"
        oof_path.parent.mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(oof_table(frame, folds, oof, head_id), oof_path)
        refresh_oof_view(store)

        ensure_experiments_table(store)
        store.con.execute("DELETE FROM experiments WHERE head_id = ?", [head_id])
        ci = report.ci or (None, None)
        store.con.execute(
            "INSERT INTO experiments VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [head_id, kind, tag or ("replay" if replay else "full"), spec.features, json.dumps(asdict(params)),
             json.dumps(config, sort_keys=True), fold_version, data_version, json.dumps(frame.feature_versions),
             seed, eval_rows, int(scored.sum()), report.auc, report.fold_mean, report.fold_std, ci[0], ci[1],
             _slice_value(report, "frequency", "rare"), report.padded_cmap,
             json.dumps(report.per_class.to_pylist(), default=float),
             json.dumps(report.slices.to_pylist(), default=float), train_s, predict_s, TRAINING_VERSION, utc_now()])
    return ExperimentResult(head_id, kind, report.auc, report.fold_mean or float("nan"),
                            report.fold_std or float("nan"), report, train_s, predict_s, oof_path, eval_rows)


def refresh_oof_view(store: FeatureStore) -> None:
    """View ``oof_predictions`` over every OOF file (columns unioned by name)."""
    glob = str(store.root / OOF_DIR / "*.parquet").replace("'", "''")
    if list((store.root / OOF_DIR).glob("*.parquet")):
        store.con.execute(f"CREATE OR REPLACE VIEW oof_predictions AS SELECT * FROM read_parquet('{glob}', "
                          "union_by_name = true)")


def load_fold_heads(store_root: Path, head_id: str) -> tuple[dict, list[Head]]:
    """The config and every fold model of a trained head (for prediction: average them)."""
    folder = Path(store_root) / HEADS_DIR / head_id
    if not (folder / "config.json").exists():
        raise StoreError(f"no trained head {head_id!r} under {folder.parent}; see pipelines.leaderboard")
    heads = [load_head(p) for p in sorted(folder.glob("fold_*")) if (p / "head.json").exists()]
    if not heads:
        raise StoreError(f"head {head_id!r} has no fold models in {folder}")
    return json.loads((folder / "config.json").read_text()), heads
