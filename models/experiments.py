"""The ``experiments`` table: one row per cross-validated head, and the leaderboard ranking over it.

This module owns the table's schema, how a row is written (by named columns), how rows are read
(:func:`latest_row`, :func:`fold_means`, :func:`rows_with_tag`, :func:`heads_on_fold_version`,
:func:`best_on`), how rows are ranked and how the ranking is rendered; training, tuning, the stack,
the students, the reports, the leaderboard job and predict's "best head" all go through it.

Guarantees:

* the headline of a row is ``fold_mean`` - the mean over folds of the competition metric, each
  fold scored on the predictions of the one model that held it out (as Kaggle scores one model);
  ``oof_auc`` is the *pooled* OOF score (all folds' predictions at once), a diagnostic only, and
  ``calibration_gap = oof_auc - fold_mean`` says how much pooling differently calibrated fold
  models costs;
* ``scored_on`` says which rows were scored: ``soundscape`` (labelled soundscape windows, the
  test domain), ``focal`` (fallback when no soundscape window is scorable) or ``none``;
* ``mode`` separates full cross-validation (``full``) from cheaper runs (``fast``, ``replay``):
  the leaderboard ranks them in separate sections and "best head" is taken from ``full`` only;
* a row is replaced in one transaction (a kill never loses it); stores written by older versions
  get the new columns added (NULL for old rows).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa

from featurestore.errors import StoreError
from featurestore.store import FeatureStore, utc_now

TABLE = "experiments"
FULL_MODE = "full"
BEST = "best"                    # the --head-id that names the leaderboard's best full-CV head
# "cnn": a CNN student (pipelines.cnn), fully cross-validated but a .tflite model, not a head bundle:
# ranked in its own section, never "best head"; use it through --extractor cnn
MODES = ("full", "fast", "replay", "cnn")

# name -> DuckDB type, in table order (new columns go at the end: older stores get them by ALTER).
COLUMNS: dict[str, str] = {
    "head_id": "VARCHAR", "head": "VARCHAR", "tag": "VARCHAR", "features": "VARCHAR", "params": "JSON",
    "config": "JSON", "fold_version": "VARCHAR", "data_version": "VARCHAR", "feature_versions": "JSON",
    "seed": "INTEGER", "eval_rows": "VARCHAR", "n_train_windows": "INTEGER", "oof_auc": "DOUBLE",
    "fold_mean": "DOUBLE", "fold_std": "DOUBLE", "ci_low": "DOUBLE", "ci_high": "DOUBLE", "rare_auc": "DOUBLE",
    "padded_cmap": "DOUBLE", "per_class": "JSON", "slices": "JSON", "train_seconds": "DOUBLE",
    "predict_seconds": "DOUBLE", "training_version": "VARCHAR", "created_at": "TIMESTAMP",
    "mode": "VARCHAR", "scored_on": "VARCHAR", "n_eval_windows": "INTEGER", "n_folds_scored": "INTEGER",
    "fold_scores": "JSON", "calibration_gap": "DOUBLE", "n_classes_scored": "INTEGER",
    "n_classes_degenerate": "INTEGER", "degenerate_classes": "JSON",
    # user labels (featurestore.user_labels) the head trained with: windows, positives, negatives used (0: none)
    # and models.frame.UserLabelUse as JSON (digest, new windows, what was skipped); NULL for older rows
    "n_user_windows": "INTEGER", "n_user_positives": "INTEGER", "n_user_negatives": "INTEGER", "user_labels": "JSON",
    # the search log (issue 29): the question a run asked (--question), and what was learned
    # (pipelines.answer: the answer, a verdict of ANSWER_VERDICTS, when)
    "question": "VARCHAR", "answer": "VARCHAR", "verdict": "VARCHAR", "answered_at": "TIMESTAMP",
    # the predict cost measured once on real audio by the planner's code (submit.plan.record_predict_costs): JSON
    # with per_file_s (seconds per 60-s file, one process), kaggle_minutes (projected for n_files test files on
    # cpus Kaggle CPUs), n_files, cpus, measured_at, audio (the folder), measured_files and the projection's parts
    "predict_cost": "JSON",
    # a student's teacher (distill, selftrain): the head id whose behaviour it should keep
    "teacher_id": "VARCHAR",
    # the submission track a head was exported on (pipelines.export --track): JSON with the track, the bundle
    # folder, its projected minutes, when
    "track": "JSON",
}
# what pipelines.answer may say of an idea a run tested
ANSWER_VERDICTS = ("reproduced", "rejected", "postponed")
# the columns written after a run, by annotate() (the run's own record() keeps them: a re-run of the same head id
# keeps its question and answer unless the run gives new ones)
ANNOTATION_COLUMNS = ("question", "answer", "verdict", "answered_at", "predict_cost", "teacher_id", "track")

BOARD_COLUMNS = ("rank", "head_id", "head", "tag", "mode", "features", "fold_mean", "fold_std", "oof_auc",
                 "calibration_gap", "ci_low", "ci_high", "rare_auc", "n_classes_scored", "n_classes_degenerate",
                 "scored_on", "n_eval_windows", "train_seconds")


def finite_or_none(value) -> float | None:
    """A number as stored and shown: None (NULL) when undefined (None or NaN)."""
    return None if value is None or not math.isfinite(float(value)) else float(value)


def metric_columns(report, *, fold_mean: float | None = None, fold_std: float | None = None,
                   fold_scores: dict | None = None) -> dict:
    """The columns a run's :class:`models.metrics.MetricReport` fills (``report`` None: nothing scorable),
    undefined values as NULL. The fold mean, std and per-fold scores are the report's unless given (the
    stack scores its folds itself). Every writer of a row (heads, stacks, the CNN) goes through here."""
    if report is not None:
        fold_mean = report.fold_mean if fold_mean is None else fold_mean
        fold_std = report.fold_std if fold_std is None else fold_std
        fold_scores = report.fold_scores if fold_scores is None else fold_scores
    scores = {str(k): finite_or_none(v) for k, v in (fold_scores or {}).items()}
    pooled = report.auc if report is not None else None
    ci = report.ci if report is not None and report.ci else (None, None)
    rare = None if report is None else next(
        (r["auc"] for r in report.slices.to_pylist()
         if r["slice"] == "frequency" and r["value"] == "rare" and r["n_classes"]), None)
    gap = None if pooled is None or fold_mean is None else pooled - fold_mean
    return {
        "oof_auc": finite_or_none(pooled), "fold_mean": finite_or_none(fold_mean), "fold_std": finite_or_none(fold_std),
        "ci_low": finite_or_none(ci[0]), "ci_high": finite_or_none(ci[1]), "rare_auc": finite_or_none(rare),
        "padded_cmap": finite_or_none(report.padded_cmap) if report is not None else None,
        "per_class": json.dumps(report.per_class.to_pylist(), default=float) if report is not None else None,
        "slices": json.dumps(report.slices.to_pylist(), default=float) if report is not None else None,
        "n_folds_scored": sum(v is not None for v in scores.values()), "fold_scores": json.dumps(scores),
        "calibration_gap": finite_or_none(gap),
        "n_classes_scored": report.n_scored_classes if report is not None else 0,
        "n_classes_degenerate": report.n_degenerate_classes if report is not None else 0,
        "degenerate_classes": json.dumps(report.degenerate if report is not None else [])}


def ensure_table(store: FeatureStore) -> None:
    """Create the table, or add the columns an older store lacks."""
    cols = ", ".join(f"{name} {kind}" for name, kind in COLUMNS.items())
    store.con.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({cols})")
    have = _columns(store)
    for name, kind in COLUMNS.items():
        if name not in have:
            store.con.execute(f"ALTER TABLE {TABLE} ADD COLUMN {name} {kind}")


def _columns(store: FeatureStore) -> set[str]:
    return {r[0] for r in store.rows(f"SELECT column_name FROM duckdb_columns() WHERE table_name = '{TABLE}'")}


def record(store: FeatureStore, row: dict) -> None:
    """Insert (or replace, by ``head_id``) one experiment row atomically."""
    unknown = sorted(set(row) - set(COLUMNS))
    if unknown:
        raise StoreError(f"unknown experiment column(s) {unknown}")
    ensure_table(store)
    kept = {k: v for k, v in latest_row(store, row["head_id"]).items() if k in ANNOTATION_COLUMNS and v is not None}
    row = {"created_at": utc_now(), **kept, **row}
    values = [json.dumps(v, default=float) if COLUMNS[k] == "JSON" and not isinstance(v, str) and v is not None
              else v for k, v in row.items()]
    names = ", ".join(row)
    marks = ", ".join("?" for _ in row)
    with store.transaction() as con:
        con.execute(f"DELETE FROM {TABLE} WHERE head_id = ?", [row["head_id"]])
        con.execute(f"INSERT INTO {TABLE} ({names}) VALUES ({marks})", values)


def annotate(store: FeatureStore, head_id: str, **columns) -> None:
    """Set some of :data:`ANNOTATION_COLUMNS` of the existing row of ``head_id`` in one transaction (JSON columns
    take a dict). :class:`StoreError` naming the head when it has no row (run it first)."""
    unknown = sorted(set(columns) - set(ANNOTATION_COLUMNS))
    if unknown:
        raise StoreError(f"not annotation column(s) {unknown}; annotate sets only {', '.join(ANNOTATION_COLUMNS)}")
    if not columns:
        return
    ensure_table(store)
    if not store.first(f"SELECT 1 FROM {TABLE} WHERE head_id = ?", [head_id]):
        raise StoreError(f"no experiment {head_id!r} in {store.root}; list them with python -m pipelines.leaderboard "
                         f"--store {store.root}")
    values = [json.dumps(v, default=float) if COLUMNS[k] == "JSON" and not isinstance(v, str) and v is not None
              else v for k, v in columns.items()]
    sets = ", ".join(f"{k} = ?" for k in columns)
    with store.transaction() as con:
        con.execute(f"UPDATE {TABLE} SET {sets} WHERE head_id = ?", [*values, head_id])


@dataclass(frozen=True)
class BoardFilter:
    tag: str | None = None
    mode: str | None = None          # None = every mode (full first)
    head: str | None = None


def ranked(store: FeatureStore, flt: BoardFilter = BoardFilter()) -> pa.Table:
    """Experiments ranked within each mode by fold mean (ties: lower fold std, then faster).

    Rows of older stores with no ``mode`` count as ``replay`` when tagged so, else ``full``.
    """
    empty = pa.table({c: pa.array([], pa.string()) for c in BOARD_COLUMNS})
    if not store.has_table(TABLE):
        return empty
    have = _columns(store)  # an older store may lack the newer columns: read them as NULL
    mode_expr = ("coalesce(mode, CASE WHEN tag = 'replay' THEN 'replay' ELSE 'full' END)"
                 if "mode" in have else "CASE WHEN tag = 'replay' THEN 'replay' ELSE 'full' END")
    select = {c: c if c in have else f"NULL AS {c}" for c in BOARD_COLUMNS if c not in ("rank", "mode")}
    where, params = [], []
    for column, value in (("tag", flt.tag), ("head", flt.head)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if flt.mode:
        where.append(f"{mode_expr} = ?")
        params.append(flt.mode)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    mode_order = "CASE m.mode WHEN 'full' THEN 0 WHEN 'cnn' THEN 1 WHEN 'fast' THEN 2 ELSE 3 END"
    return store.sql(
        f"SELECT row_number() OVER (PARTITION BY m.mode ORDER BY m.fold_mean DESC NULLS LAST, m.fold_std, "
        f"m.train_seconds) AS rank, m.* FROM (SELECT {mode_expr} AS mode, "
        f"{', '.join(select.values())} FROM {TABLE} {clause}) m ORDER BY {mode_order}, rank",
        params or None).select(list(BOARD_COLUMNS))


def known_values(store: FeatureStore, column: str) -> list[str]:
    """Distinct values of ``tag`` / ``head`` / ``mode`` (for 'no such tag' messages)."""
    if not store.has_table(TABLE):
        return []
    return sorted(str(r[0]) for r in store.rows(f"SELECT DISTINCT {column} FROM {TABLE} WHERE {column} IS NOT NULL"))


def best_head_id(store: FeatureStore) -> str:
    """The first full-CV head of the leaderboard (fast / replay runs never count as 'best')."""
    board = ranked(store, BoardFilter(mode=FULL_MODE))
    if board.num_rows == 0:
        raise StoreError(f"no fully cross-validated experiment in {store.root}; run pipelines.train first")
    return board.column("head_id")[0].as_py()


def resolve_head_id(store: FeatureStore, head_id: str) -> str:
    """A ``--head-id`` as given, with ``best`` read as :func:`best_head_id` (predict, export)."""
    return best_head_id(store) if head_id == BEST else head_id


# ---------------------------------------------------------------------------- reading rows
def latest_row(store: FeatureStore, head_id: str) -> dict:
    """Every column of the head's row (the latest one recorded), or {} when it has none."""
    if not store.has_table(TABLE):
        return {}
    rows = store.sql(f"SELECT * FROM {TABLE} WHERE head_id = ? ORDER BY created_at DESC LIMIT 1", [head_id]).to_pylist()
    return rows[0] if rows else {}


def fold_means(store: FeatureStore, head_ids: Sequence[str]) -> dict[str, float | None]:
    """head id -> recorded fold mean (None: nothing was scorable) of those of ``head_ids`` that have a row."""
    if not store.has_table(TABLE) or not head_ids:
        return {}
    return dict(store.rows(f"SELECT head_id, fold_mean FROM {TABLE} WHERE head_id IN "
                           f"({', '.join('?' * len(head_ids))})", list(head_ids)))


def rows_with_tag(store: FeatureStore, tag: str) -> list[dict]:
    """``{head_id, fold_mean, config}`` (``config`` as JSON text) of every row with ``tag``, newest first."""
    if not store.has_table(TABLE):
        return []
    rows = store.rows(f"SELECT head_id, fold_mean, config FROM {TABLE} WHERE tag = ? ORDER BY created_at DESC",
                      [tag])
    return [{"head_id": h, "fold_mean": m, "config": c} for h, m, c in rows]


def heads_on_fold_version(store: FeatureStore, fold_version: str) -> list[str]:
    """Head ids recorded on ``fold_version``, best fold mean first (unscored last, ties by id)."""
    if not store.has_table(TABLE):
        return []
    return [h for (h,) in store.rows(f"SELECT head_id FROM {TABLE} WHERE fold_version = ? "
                                     "ORDER BY fold_mean DESC NULLS LAST, head_id", [fold_version])]


def best_on(store: FeatureStore, *, head: str, features: str, fold_version: str,
            mode: str = FULL_MODE) -> tuple[str, float] | None:
    """``(head id, fold mean)`` of the best scored ``head`` run on ``features`` and ``fold_version``, or None."""
    if not store.has_table(TABLE):
        return None
    row = store.first(f"SELECT head_id, fold_mean FROM {TABLE} WHERE head = ? AND fold_version = ? AND mode = ? "
                      "AND features = ? AND fold_mean IS NOT NULL ORDER BY fold_mean DESC LIMIT 1",
                      [head, fold_version, mode, features])
    return (row[0], row[1]) if row else None


# ---------------------------------------------------------------------------- the search log (issue 29)
# a question asked by a run that writes no experiments row (pipelines.pseudo: a pseudo-label version), with its
# answer: the same columns as the experiments row's, keyed by the run's id
QUESTIONS_TABLE = "run_questions"
QUESTIONS_COLUMNS = {"subject": "VARCHAR", "kind": "VARCHAR", "question": "VARCHAR", "asked_at": "TIMESTAMP",
                     "answer": "VARCHAR", "verdict": "VARCHAR", "answered_at": "TIMESTAMP"}


def stack_bases(store: FeatureStore, head_id: str) -> list[str]:
    """The base head ids of a stacked head's row (its ``config`` JSON), [] for a plain head or no row."""
    config = latest_row(store, head_id).get("config")
    data = json.loads(config) if isinstance(config, str) else (config or {})
    return list(data.get("base_heads") or []) if isinstance(data, dict) else []


def record_question(store: FeatureStore, head_ids: Sequence[str], question: str, *,
                    with_bases: bool = False) -> list[str]:
    """Store ``question`` on the experiments row of each of ``head_ids`` (replacing the question they had), in one
    call; ``with_bases``: also on the base heads of those that are stacked heads (:func:`stack_bases`; for a run that
    re-trained them, e.g. selftrain's stacked student - never for pipelines.stack, whose bases are earlier runs').
    Returns the ids. A blank question is refused (UserInputError); an id with no row: StoreError naming it
    (:func:`annotate`) - checked for every id before any is written."""
    from featurestore.errors import UserInputError

    question = (question or "").strip()
    if not question:
        raise UserInputError("--question is empty; say what this run asks, e.g. --question 'does max pooling help?'")
    ensure_table(store)
    ids = list(dict.fromkeys(head_ids))
    if with_bases:
        ids = list(dict.fromkeys(x for h in ids for x in (h, *stack_bases(store, h))))
    missing = [h for h in ids if not store.first(f"SELECT 1 FROM {TABLE} WHERE head_id = ?", [h])]
    if missing:
        raise StoreError(f"no experiment {missing[0]!r} in {store.root} to store the question on; list them with "
                         f"python -m pipelines.leaderboard --store {store.root}")
    for h in ids:
        annotate(store, h, question=question)
    return ids


def record_run_question(store: FeatureStore, subject: str, kind: str, question: str) -> None:
    """Store ``question`` for a run that writes no experiments row (``kind`` ``pseudo``: ``subject`` is the
    pseudo-label version), replacing an earlier question of the same subject; :func:`record_answer` answers it."""
    from featurestore.errors import UserInputError

    question = (question or "").strip()
    if not question:
        raise UserInputError("--question is empty; say what this run asks")
    cols = ", ".join(f"{n} {k}" for n, k in QUESTIONS_COLUMNS.items())
    with store.transaction() as con:
        con.execute(f"CREATE TABLE IF NOT EXISTS {QUESTIONS_TABLE} ({cols})")
        con.execute(f"DELETE FROM {QUESTIONS_TABLE} WHERE subject = ?", [subject])
        con.execute(f"INSERT INTO {QUESTIONS_TABLE} (subject, kind, question, asked_at) VALUES (?, ?, ?, ?)",
                    [subject, kind, question, utc_now()])


def record_answer(store: FeatureStore, head_id: str, answer: str, verdict: str | None = None) -> dict:
    """Record what was learned from the run ``head_id`` (an experiments row, else a question of
    :func:`record_run_question`): ``answer``, ``verdict`` (one of :data:`ANSWER_VERDICTS` or None) and
    ``answered_at`` (now, UTC), replacing an earlier answer. Returns ``{head_id, question, answer, verdict,
    answered_at}``. A blank answer or an unknown verdict: UserInputError; an unknown id: StoreError naming the
    store and what lists its ids. Nothing is written on an error."""
    from featurestore.errors import UserInputError

    answer = (answer or "").strip()
    if not answer:
        raise UserInputError("the answer is empty; say what was learned, e.g. \"max pooling adds 0.01 on rare "
                             "classes\"")
    if verdict is not None and verdict not in ANSWER_VERDICTS:
        raise UserInputError(f"unknown verdict {verdict!r}; use one of {', '.join(ANSWER_VERDICTS)}")
    when = utc_now()
    row = latest_row(store, head_id)
    if row:
        annotate(store, head_id, answer=answer, verdict=verdict, answered_at=when)
        question = row.get("question")
    elif store.has_table(QUESTIONS_TABLE) and (got := store.first(
            f"SELECT question FROM {QUESTIONS_TABLE} WHERE subject = ?", [head_id])):
        question = got[0]
        with store.transaction() as con:
            con.execute(f"UPDATE {QUESTIONS_TABLE} SET answer = ?, verdict = ?, answered_at = ? WHERE subject = ?",
                        [answer, verdict, when, head_id])
    else:
        raise StoreError(f"no experiment {head_id!r} in {store.root}; list the head ids with python -m "
                         f"pipelines.leaderboard --store {store.root}")
    return {"head_id": head_id, "question": question, "answer": answer, "verdict": verdict, "answered_at": when}


def search_log(store: FeatureStore) -> list[dict]:
    """Every asked question, newest first: ``{head_id, kind, question, answer, verdict, answered_at}`` of the
    experiments rows with a question (``kind`` the row's head kind) and of :func:`record_run_question`'s runs
    (``kind`` e.g. ``pseudo``, ``head_id`` the run's id)."""
    out: list[dict] = []
    if store.has_table(TABLE) and "question" in _columns(store):
        out += store.sql(f"SELECT head_id, head AS kind, question, answer, verdict, answered_at, created_at AS at "
                         f"FROM {TABLE} WHERE question IS NOT NULL").to_pylist()
    if store.has_table(QUESTIONS_TABLE):
        out += store.sql(f"SELECT subject AS head_id, kind, question, answer, verdict, answered_at, asked_at AS at "
                         f"FROM {QUESTIONS_TABLE}").to_pylist()
    out.sort(key=lambda r: (r["at"] is not None, r["at"]), reverse=True)
    return [{k: v for k, v in r.items() if k != "at"} for r in out]


# ---------------------------------------------------------------------------- rendering
BASELINE_HEADS = ("prior", "zeroshot")     # shown with tag base/<tag>: floors to beat, not candidates


def _f(value, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def _pooled(r: dict) -> str:
    """The pooled OOF AUC with its file-bootstrap CI beside it (the CI is of the pooled AUC, not the fold mean)."""
    if r["oof_auc"] is None:
        return "-"
    ci = f" [{_f(r['ci_low'], '.3f')}, {_f(r['ci_high'], '.3f')}]" if r["ci_low"] is not None else ""
    return f"{r['oof_auc']:.3f}{ci}"


# header, alignment, the row's cell, the columns it shows (a column whose columns are NULL in every row of a
# section is left out of that section)
BOARD_TEXT_COLUMNS: tuple[tuple[str, str, object, tuple[str, ...]], ...] = (
    ("#", ">", lambda r: str(r["rank"]), ("rank",)),
    ("head_id", "<", lambda r: str(r["head_id"]), ("head_id",)),
    ("tag", "<", lambda r: f"base/{r['tag']}" if r["head"] in BASELINE_HEADS else str(r["tag"] or "-"), ("tag",)),
    ("features", "<", lambda r: str(r["features"] or "-"), ("features",)),
    ("fold mean", ">", lambda r: _f(r["fold_mean"]), ("fold_mean",)),
    ("± std", ">", lambda r: _f(r["fold_std"]), ("fold_std",)),
    ("pooled [95% CI]", "<", _pooled, ("oof_auc", "ci_low")),
    ("gap", ">", lambda r: _f(r["calibration_gap"], "+.3f"), ("calibration_gap",)),
    ("rare", ">", lambda r: _f(r["rare_auc"], ".3f"), ("rare_auc",)),
    ("cls", ">", lambda r: _f(r["n_classes_scored"], "d"), ("n_classes_scored",)),
    ("degen", ">", lambda r: _f(r["n_classes_degenerate"], "d"), ("n_classes_degenerate",)),
    ("scored on", "<", lambda r: str(r["scored_on"] or "-"), ("scored_on",)),
    ("windows", ">", lambda r: _f(r["n_eval_windows"], "d"), ("n_eval_windows",)),
    ("train s", ">", lambda r: _f(r["train_seconds"], ".1f"), ("train_seconds",)),
)


def _legend(rows: list[dict], shown: set[str]) -> list[str]:
    """One line per tag or column of the board that needs words (only those the board shows)."""
    from models.metrics import FREQUENCY_BUCKETS

    lines = []
    if any(r["head"] in BASELINE_HEADS for r in rows):
        lines.append("tag base/...: a baseline head (prior, zero-shot): the floor to beat, not a candidate")
    if "pooled [95% CI]" in shown:
        lines.append("pooled [95% CI]: AUC of all folds' OOF scores at once and its file-bootstrap CI - an interval "
                     "for the pooled AUC, not for the fold mean; gap = pooled - fold mean")
    if "rare" in shown:
        lines.append(f"rare: macro AUC over the classes with fewer than {FREQUENCY_BUCKETS[0]} focal training "
                     "windows")
    return lines


MODE_NOTES = {"fast": " (trained on a subset; not comparable with full)",
              "replay": " (trained on a subset; not comparable with full)",
              "cnn": " (CNN students: fully cross-validated; used through --extractor cnn, never 'best')"}


def render(table: pa.Table) -> str:
    """The ranked table (:func:`ranked`) as text: one section per mode, full cross-validation first, each with
    only the columns some of its rows fill (widths fitted to the values), then a legend of the tags and columns
    that need words: ``base/<tag>`` baselines, the pooled AUC's CI (not a CI of the fold mean) and ``rare``."""
    rows = table.to_pylist()
    lines: list[str] = []
    shown: set[str] = set()
    for mode in MODES:
        section = [r for r in rows if r["mode"] == mode]
        if not section:
            continue
        columns = [c for c in BOARD_TEXT_COLUMNS if any(r[k] is not None for r in section for k in c[3])]
        shown |= {c[0] for c in columns}
        cells = [[cell(r) for _, _, cell, _ in columns] for r in section]
        widths = [max(len(head), *(len(row[i]) for row in cells)) for i, (head, *_) in enumerate(columns)]
        aligns = [align for _, align, _, _ in columns]

        def line(values: list[str], widths=widths, aligns=aligns) -> str:
            return "  ".join(format(v, f"{a}{w}") for v, a, w in zip(values, aligns, widths, strict=True)).rstrip()

        lines += ["", f"[{mode}]" + MODE_NOTES.get(mode, ""), line([c[0] for c in columns])]
        lines += [line(row) for row in cells]
    legend = _legend(rows, shown)
    if legend:
        lines += ["", *legend]
    return "\n".join(lines).lstrip("\n")


def empty_message(store: FeatureStore, flt: BoardFilter) -> str:
    """Why the board is empty: no experiments at all, or none matching the filter (with what there is)."""
    asked = {k: v for k, v in (("tag", flt.tag), ("mode", flt.mode), ("head", flt.head)) if v}
    if not asked or not known_values(store, "head_id"):
        return "no experiments yet; run pipelines.train"
    have = "; ".join(f"{k}s present: {', '.join(known_values(store, k)) or 'none'}" for k in asked)
    wanted = ", ".join(f"{k} {v!r}" for k, v in asked.items())
    return f"no experiments with {wanted} ({have})"


def leaderboard(store_dir: str | os.PathLike, flt: BoardFilter = BoardFilter()) -> str:
    """The rendered leaderboard of the store at ``store_dir`` (opened read-only), or why it is empty."""
    with FeatureStore.open(store_dir, create=False, read_only=True) as store:
        board = ranked(store, flt)
        return render(board) if board.num_rows else empty_message(store, flt)
