"""The demo: the whole birdclef-stack flow on a bundled synthetic dataset (the library behind
``python -m pipelines.demo``).

:func:`run_demo` generates a small BirdCLEF-shaped dataset (:mod:`featurestore.demo_data`: 14 real
classes, focal clips and 60-s soundscapes with exact 5-s labels) and runs every stage on it: ingest
→ folds → embed (BirdNET + classical) → data memo → the baseline ladder of head kinds →
a ridge stack over the trained heads → pseudo-labels of the unlabelled train soundscapes by the stack,
scored against the demo's held-back answers → leaderboard → predict the test soundscapes with the best head
→ validated submission, scored against the demo's hidden test labels → the error-analysis page of
the best head. Re-running re-uses everything already computed.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from embed.job import run_embed
from featurestore.demo_data import ANSWERS_FILE, FULL, SMALL, generate_demo_dataset
from featurestore.folds import make_folds
from featurestore.ingest import run_ingest
from featurestore.store import FeatureStore
from models.bundle import bundle_dir
from models.experiments import FULL_MODE, BoardFilter, best_head_id, ranked
from models.experiments import render as render_board
from models.frame import FrameSpec, class_names_of
from models.metrics import competition_score
from models.training import train_head
from reports.data_memo import write_memo
from reports.error_page import summary_line, write_error_page
from stack.run import run_stack
from students.pseudo import run_pseudo
from submit.predict import predict_audio
from submit.submission import expected_ids_for_audio, validate_submission, write_submission

MARKER = "demo.json"


def ensure_dataset(out: Path, small: bool, seed: int) -> Path:
    """Generate the dataset unless ``out`` already holds the same one (same size and seed)."""
    wanted = {"size": "small" if small else "full", "seed": seed, "generator": 3}
    marker = out / MARKER
    data = out / "data"
    if marker.exists() and json.loads(marker.read_text()) == wanted and (data / "train.csv").exists():
        return data
    data = generate_demo_dataset(out, SMALL if small else FULL, seed=seed)
    marker.write_text(json.dumps(wanted))
    return data


# LightGBM settings for a few hundred training windows (the defaults target ~100k windows).
DEMO_LGBM = {"inner_valid_fraction": 0.0, "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 7,
             "feature_fraction": 0.2, "min_child_samples": 10}
DEMO_LADDER = (("prior", "birdnet", {}), ("zeroshot", "birdnet_logits", {}), ("linear", "classical", {}),
               ("linear", "birdnet", {}), ("lgbm", "birdnet", DEMO_LGBM))
STACKED_KINDS = ("linear", "lgbm")     # the stack's base heads: every trained head of these kinds


def run_demo(out: Path, *, small: bool = False, seed: int = 2026, workers: int | None = None,
             quiet: bool = False) -> dict:
    """Run every stage on the demo dataset; returns the stage summaries by name."""
    say = (lambda *_: None) if quiet else print
    out = Path(out).expanduser().resolve()
    store = out / "store"
    summaries: dict = {}

    def stage(name: str, run, render=lambda r: r.render()) -> None:
        t0 = time.perf_counter()
        summaries[name] = run()
        say(f"[demo] {name} ({time.perf_counter() - t0:.1f} s)\n{render(summaries[name])}")

    stage("dataset", lambda: ensure_dataset(out, small, seed), lambda d: f"competition layout at {d}")
    data = summaries["dataset"]
    stage("ingest", lambda: run_ingest(data, store, workers=workers))
    stage("folds", lambda: make_folds(store, new_version=True))  # regenerated demo data = new fold inputs
    stage("embed", lambda: run_embed(store, ("birdnet", "classical"), workers=workers))
    stage("report", lambda: write_memo(store, out / "memo.html"), lambda p: f"data memo: {p}")
    for kind, features, params in DEMO_LADDER:
        stage(f"train {kind} on {features}",
              lambda k=kind, f=features, p=params: train_head(store, k, FrameSpec(f), overrides=p, seed=seed),
              lambda r: r.render().splitlines()[0])
    bases = [summaries[f"train {k} on {f}"].head_id for k, f, _ in DEMO_LADDER if k in STACKED_KINDS]
    stage("stack", lambda: run_stack(store, bases, "ridge"), lambda r: r.render().splitlines()[0])
    # the stack labels the unlabelled train soundscapes fold by fold; the demo holds their true labels back
    # (ANSWERS_FILE beside the data folder), so the labels' quality is measured, not guessed
    stage("pseudo-labels", lambda: run_pseudo(store, summaries["stack"].head_id, {},
                                              answers=data.parent / ANSWERS_FILE, say=lambda _m: None))
    with FeatureStore.open(store, read_only=True) as fs:
        board = ranked(fs)
        # the best head of THIS run: a re-run makes new fold versions, and a head an earlier run (or an older
        # toolkit) left in the store must not be the one predicted with
        ours = {s.head_id for name, s in summaries.items() if name.startswith("train ") or name == "stack"}
        best = next((r["head_id"] for r in ranked(fs, BoardFilter(mode=FULL_MODE)).to_pylist()
                     if r["head_id"] in ours), None) or best_head_id(fs)
        columns = class_names_of(fs)
    summaries["leaderboard"] = board
    say(render_board(board))
    submission = out / "submission.csv"
    stage("predict", lambda: predict_to_csv(bundle_dir(store, best), data, submission, columns, workers),
          lambda score: f"{submission} from head {best} (validated); demo test-set AUC {score:.4f}")
    stage("errors", lambda: write_error_page(store, best, out / "errors.html"), lambda r: summary_line(*r))
    say(f"[demo] store: {store}\n[demo] try: duckdb {store / 'catalog.duckdb'} "
        "\"SELECT head_id, fold_mean, fold_std, oof_auc FROM experiments ORDER BY fold_mean DESC\"")
    return summaries


def predict_to_csv(head_dir: Path, data: Path, out: Path, columns: list[str], workers: int | None) -> float:
    """Predict the demo's test soundscapes, validate the file and score it against the hidden labels."""
    row_ids, probs, errors = predict_audio(head_dir, data / "test_soundscapes", columns, workers=workers or 1)
    if errors:
        raise RuntimeError("; ".join(errors))
    write_submission(out, row_ids, probs, columns)
    validate_submission(out, data / "sample_submission.csv", expected_ids_for_audio(data / "test_soundscapes"))
    as_text = pacsv.ConvertOptions(column_types={"row_id": pa.string()})
    solution = pacsv.read_csv(data.parent / "test_solution.csv", convert_options=as_text)
    return competition_score(solution, pacsv.read_csv(out, convert_options=as_text))
