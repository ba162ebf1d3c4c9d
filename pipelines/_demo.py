"""The demo: the whole birdclef-stack flow on a bundled synthetic dataset (the library behind
``python -m pipelines.demo``).

:func:`run_demo` generates a small BirdCLEF-shaped dataset (:mod:`featurestore.demo_data`: 14 real
classes, focal clips and 60-s soundscapes with exact 5-s labels) and runs every stage on it: ingest
→ folds → embed (BirdNET + classical) → data memo → the baseline ladder of head kinds →
a ridge stack over the trained heads → pseudo-labels of the unlabelled train soundscapes by the stack,
scored against the demo's held-back answers → leaderboard → predict the test soundscapes with the best head
→ validated submission, scored against the demo's hidden test labels → the error-analysis page of
the best head. Re-running re-uses everything already computed.

Progress: every stage that can run past the status period reports ``n of N`` through the ``progress``
factory the caller passes (the job passes :class:`pipelines._cli.PlannedProgress`: a bar on a terminal,
a line every 30 s in a log): the dataset's files, ingest's audio QA, embed's audio seconds, each head's
folds, predict's files. The other stages take seconds (the job's heartbeat covers a slow machine). Each
stage's own summary line is flushed at once, so a log shows it as it happens.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv

from embed.job import run_embed
from featurestore.demo_data import ANSWERS_FILE, FULL, SMALL, audio_file_count, generate_demo_dataset
from featurestore.folds import make_folds
from featurestore.ingest import run_ingest
from featurestore.progress import NoProgress, Planned, ProgressFactory  # noqa: E402
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


def ensure_dataset(out: Path, small: bool, seed: int, bar: Planned | None = None) -> Path:
    """Generate the dataset unless ``out`` already holds the same one (same size and seed); ``bar`` counts the
    audio files written (started only when the dataset is generated)."""
    wanted = {"size": "small" if small else "full", "seed": seed, "generator": 3}
    marker = out / MARKER
    data = out / "data"
    if marker.exists() and json.loads(marker.read_text()) == wanted and (data / "train.csv").exists():
        return data
    size = SMALL if small else FULL
    bar = bar or NoProgress()
    bar.start(audio_file_count(size))
    data = generate_demo_dataset(out, size, seed=seed, progress=bar.update)
    marker.write_text(json.dumps(wanted))
    return data


# LightGBM settings for a few hundred training windows (the defaults target ~100k windows).
DEMO_LGBM = {"inner_valid_fraction": 0.0, "n_estimators": 200, "learning_rate": 0.05, "num_leaves": 7,
             "feature_fraction": 0.2, "min_child_samples": 10}
DEMO_LADDER = (("prior", "birdnet", {}), ("zeroshot", "birdnet_logits", {}), ("linear", "classical", {}),
               ("linear", "birdnet", {}), ("lgbm", "birdnet", DEMO_LGBM))
STACKED_KINDS = ("linear", "lgbm")     # the stack's base heads: every trained head of these kinds


def run_demo(out: Path, *, small: bool = False, seed: int = 2026, workers: int | None = None,
             quiet: bool = False, progress: ProgressFactory | None = None) -> dict:
    """Run every stage on the demo dataset; returns the stage summaries by name. ``progress(desc, unit)``
    makes each stage's bar (default, and with ``quiet``: none); ``quiet`` prints nothing."""
    def say(text: str) -> None:
        if not quiet:
            print(text, flush=True)      # a log file shows each stage as it ends

    bars: ProgressFactory = NoProgress if quiet or progress is None else progress
    out = Path(out).expanduser().resolve()
    store = out / "store"
    summaries: dict = {}

    def stage(name: str, run: Callable[[Planned], object], render=lambda r: r.render(), *,
              bar: tuple[str, str] | None = None) -> None:
        """Run one stage; ``bar`` (description, unit): its progress bar, which ``run`` starts once it knows
        its total (a stage without one runs with a bar that draws nothing)."""
        t0 = time.perf_counter()
        with (bars(*bar) if bar else NoProgress()) as planned:
            summaries[name] = run(planned)
        say(f"[demo] {name} ({time.perf_counter() - t0:.1f} s)\n{render(summaries[name])}")

    stage("dataset", lambda b: ensure_dataset(out, small, seed, b), lambda d: f"competition layout at {d}",
          bar=("demo data", "file"))
    data = summaries["dataset"]
    stage("ingest", lambda b: run_ingest(data, store, workers=workers, progress=b.update, on_total=b.start),
          bar=("audio QA", "file"))
    stage("folds", lambda _b: make_folds(store, new_version=True))  # regenerated demo data = new fold inputs
    stage("embed", lambda b: run_embed(store, ("birdnet", "classical"), workers=workers, progress=b.update,
                                       on_total=b.start), bar=("embed", "audio-s"))
    stage("report", lambda _b: write_memo(store, out / "memo.html"), lambda p: f"data memo: {p}")
    n_folds = int(summaries["folds"].params["k"])

    def train(bar: Planned, kind: str, features: str, params: dict):
        bar.start(n_folds)      # each fold trained this run (a fold kept from an interrupted run is not counted)
        return train_head(store, kind, FrameSpec(features), overrides=params, seed=seed,
                          progress=lambda _fold: bar.update(1))

    for kind, features, params in DEMO_LADDER:
        stage(f"train {kind} on {features}", lambda b, k=kind, f=features, p=params: train(b, k, f, p),
              lambda r: r.render().splitlines()[0], bar=(f"train {kind} on {features}", "fold"))
    bases = [summaries[f"train {k} on {f}"].head_id for k, f, _ in DEMO_LADDER if k in STACKED_KINDS]
    stage("stack", lambda _b: run_stack(store, bases, "ridge"), lambda r: r.render().splitlines()[0])
    # the stack labels the unlabelled train soundscapes fold by fold; the demo holds their true labels back
    # (ANSWERS_FILE beside the data folder), so the labels' quality is measured, not guessed
    stage("pseudo-labels", lambda _b: run_pseudo(store, summaries["stack"].head_id, {},
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
    stage("predict", lambda b: predict_to_csv(bundle_dir(store, best), data, submission, columns, workers, b),
          lambda score: f"{submission} from head {best} (validated); demo test-set AUC {score:.4f}",
          bar=("predict", "file"))
    stage("errors", lambda _b: write_error_page(store, best, out / "errors.html"), lambda r: summary_line(*r))
    say(f"[demo] store: {store}\n[demo] try: {try_command(store)}")
    return summaries


TRY_SQL = "SELECT head_id, fold_mean, fold_std, oof_auc FROM experiments ORDER BY fold_mean DESC"


def try_command(store: Path) -> str:
    """The closing hint: a query of the demo's store with this toolkit's own SQL job (the DuckDB CLI is not
    installed by ``pip install``), quoted for a POSIX shell."""
    return f"python -m pipelines.sql --store {shlex.quote(str(store))} -c {shlex.quote(TRY_SQL)}"


def predict_to_csv(head_dir: Path, data: Path, out: Path, columns: list[str], workers: int | None,
                   bar: Planned | None = None) -> float:
    """Predict the demo's test soundscapes, validate the file and score it against the hidden labels; ``bar``
    counts the files predicted."""
    bar = bar or NoProgress()
    row_ids, probs, errors = predict_audio(head_dir, data / "test_soundscapes", columns, workers=workers or 1,
                                           progress=bar.update, on_start=bar.start)
    if errors:
        raise RuntimeError("; ".join(errors))
    write_submission(out, row_ids, probs, columns)
    validate_submission(out, data / "sample_submission.csv", expected_ids_for_audio(data / "test_soundscapes"))
    as_text = pacsv.ConvertOptions(column_types={"row_id": pa.string()})
    solution = pacsv.read_csv(data.parent / "test_solution.csv", convert_options=as_text)
    return competition_score(solution, pacsv.read_csv(out, convert_options=as_text))
