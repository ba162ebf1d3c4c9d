"""The error-analysis page: where a head (or a stacked head) goes wrong, with the audio to listen to
(the library behind ``python -m pipelines.errors``).

Competitors listen before they trust a number. One self-contained HTML page (plots as base64 PNG,
5-s windows as base64 OGG, so it works offline) from a head's OOF table in the store:

* **summary** - the head's experiment row (fold mean +/- std: the headline; pooled AUC beside it);
* **per-class AUC** - every class scored on the labelled soundscape windows, worst first, with its
  training counts (focal clips, labelled soundscape windows), taxon group and frequency bucket;
* **worst classes** - for the ``worst`` lowest-AUC classes, the top false positives (negatives
  scored highest) and missed positives (positives scored lowest), each as a mel-spectrogram
  thumbnail with an audio player of the window, its true labels and the class that outscored it;
* **confusion pairs** - on missed positives, which other class outscores the true one;
* **slices** - the macro AUC by fold, site, hour, overlap-heavy windows, taxon group and
  frequency bucket (``models.metrics.evaluate``, as the experiment rows store them);
* **head diversity** - the OOF Spearman correlation between this head, its base heads when it is a
  stack, and the best other heads on the same folds (``stack.inputs.head_correlation``).

Definitions (also printed on the page):

* per-class AUC here is *pooled* over the OOF windows of all folds (each window scored by the fold
  model that held it out); the headline remains the fold mean;
* a positive ``(window, c)`` is **missed** when at least ``MISSED_QUANTILE`` of ``c``'s negatives
  score above it (it sits below the ``1 - MISSED_QUANTILE`` quantile of the negatives); its
  **confuser** is the highest-scoring class that is not a label of the window, counted when it
  scores above ``c`` in that window.

Reads the store only (opened read-only) and the audio under the data folder recorded by ingest (or
``data_dir``). ``head_id`` may be ``best``: the leaderboard's best full-CV head, as predict and export read it.
Refused before any work (:class:`UserInputError`, one line): a missing ``--out`` folder, and, when the page shows
examples, a data folder that does not exist or holds none of the examples' audio files (a page of notes instead of
audio is not what was asked for). An example whose own file is missing or unreadable, among others that are found,
becomes a note on its card.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from featurestore.errors import DataError, UserInputError
from featurestore.windows import SOUNDSCAPE, WINDOW_SECONDS, parse_window_id
from models.metrics import evaluate, fast_auc, frequency_bucket
from reports.htmlpage import (
    audio_tag,
    b64,
    check_out,
    fixed,
    html_table,
    img,
    ogg_bytes,
    png,
    png_bytes,
    pyplot,
    render_page,
    write_page,
)
from stack.inputs import Diversity, StackInputs, available_heads, head_correlation, load_inputs

SECTIONS = (("summary", "Summary"), ("per-class", "Per-class AUC, worst first"),
            ("worst", "Worst classes: false positives and missed positives"),
            ("confusions", "Confusion pairs on missed positives"), ("slices", "Slices"),
            ("diversity", "Head diversity"))
MISSED_QUANTILE = 0.10        # a positive is missed when >= 10% of the class's negatives outscore it
THUMB_MELS = 64               # thumbnail front end: 64 mel bands, 1024-point FFT, 10-ms hop at 32 kHz
THUMB_FFT = 1024


@dataclass(frozen=True)
class ErrorPageParams:
    worst: int = 8                  # classes shown with audio examples
    examples: int = 3               # false positives and missed positives per worst class
    confusion_pairs: int = 20       # rows of the confusion-pair table
    diversity_heads: int = 8        # other heads (best fold mean first) in the diversity matrix

    def check(self) -> ErrorPageParams:
        for name in ("worst", "examples", "confusion_pairs", "diversity_heads"):
            if getattr(self, name) < 0:
                raise UserInputError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        return self


@dataclass
class Example:
    """One window shown for a class: a false positive or a missed positive."""

    window_id: str
    kind: str                       # "false positive" | "missed positive"
    label: str                      # the class it is shown for
    score: float
    fold: int
    labels: list[str]
    confuser: str | None            # top-scoring class that is not a label of the window
    confuser_score: float | None
    audio_b64: str | None = None
    mel_b64: str | None = None
    note: str | None = None


@dataclass
class ErrorReport:
    """What the page shows (no HTML here)."""

    head_id: str
    experiment: dict
    scored_on: str
    n_windows: int
    per_class: list[dict]
    slices: list[dict]
    confusions: list[dict]
    examples: dict[str, list[Example]] = field(default_factory=dict)
    diversity: Diversity | None = None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- pure parts
def missed_mask(Y: np.ndarray, P: np.ndarray, quantile: float = MISSED_QUANTILE) -> np.ndarray:
    """(n, C) bool: positives with at least ``quantile`` of their class's negatives scoring above them."""
    missed = np.zeros(Y.shape, bool)
    for c in range(Y.shape[1]):
        pos, neg = Y[:, c] > 0, Y[:, c] <= 0
        if pos.any() and neg.any():
            cut = np.quantile(P[neg, c], 1.0 - quantile)
            missed[pos, c] = P[pos, c] < cut
    return missed


def confusions(Y: np.ndarray, P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per window: the index of the top-scoring class that is not one of its labels (-1 when every
    class is a label) and its score (the confuser of the window's missed positives)."""
    masked = np.where(Y > 0, -np.inf, P.astype(np.float64))
    top = masked.argmax(axis=1)
    top_score = masked[np.arange(len(P)), top]
    top = np.where(np.isfinite(top_score), top, -1)
    return top, top_score


def confusion_pairs(Y: np.ndarray, P: np.ndarray, class_names: list[str], missed: np.ndarray,
                    limit: int) -> list[dict]:
    """(true class, confuser) pairs over missed positives where the confuser outscores the true class,
    most frequent first, with the mean score margin."""
    top, top_score = confusions(Y, P)
    counts: Counter = Counter()
    margins: dict[tuple[int, int], float] = {}
    for w, c in zip(*np.nonzero(missed), strict=True):
        d = int(top[w])
        if d >= 0 and top_score[w] > P[w, c]:
            counts[(int(c), d)] += 1
            margins[(int(c), d)] = margins.get((int(c), d), 0.0) + float(top_score[w] - P[w, c])
    n_missed = missed.sum(axis=0)
    rows = [{"true_class": class_names[c], "outscored_by": class_names[d], "n_windows": n,
             "share_of_missed": n / max(1, int(n_missed[c])), "mean_margin": margins[(c, d)] / n}
            for (c, d), n in counts.items()]
    rows.sort(key=lambda r: (-r["n_windows"], -r["mean_margin"], r["true_class"], r["outscored_by"]))
    return rows[:limit]


def pick_examples(Y: np.ndarray, P: np.ndarray, c: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of class ``c``'s ``k`` highest-scoring negatives and ``k`` lowest-scoring positives
    (ties broken by row order, so the page is deterministic)."""
    neg, pos = np.flatnonzero(Y[:, c] <= 0), np.flatnonzero(Y[:, c] > 0)
    fp = neg[np.argsort(-P[neg, c], kind="stable")[:k]]
    mp = pos[np.argsort(P[pos, c], kind="stable")[:k]]
    return fp, mp


# ---------------------------------------------------------------------------- audio
def read_window(path: Path, start_s: float) -> tuple[np.ndarray, int]:
    """The mono 5-s window starting at ``start_s`` of an audio file, at its native rate."""
    import soundfile as sf

    with sf.SoundFile(str(path)) as f:
        sr = f.samplerate
        f.seek(min(int(round(start_s * sr)), f.frames))
        y = f.read(int(round(WINDOW_SECONDS * sr)), dtype="float32", always_2d=True)
    return y.mean(axis=1), sr


def mel_png(y: np.ndarray, sr: int) -> bytes:
    """A small log-mel spectrogram PNG of a window (the classical extractor's STFT and Slaney mel basis)."""
    from embed.classical import mel_basis, power_to_db, stft_power

    hop = max(1, sr // 100)
    S = power_to_db(stft_power(y, THUMB_FFT, hop) @ mel_basis(sr, THUMB_FFT, THUMB_MELS).T)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(3.2, 1.3))
    top = float(S.max()) if S.size else 0.0
    ax.imshow(S.T, origin="lower", aspect="auto", cmap="magma", vmin=top - 80.0, vmax=top,
              extent=(0.0, len(y) / sr, 0, THUMB_MELS))
    ax.set_yticks([])
    ax.tick_params(labelsize=6)
    return png_bytes(fig, dpi=72)


@dataclass
class WindowMedia:
    """A window's mel thumbnail (PNG) and 5-s clip (OGG/Vorbis), or ``note`` saying why there are none."""

    png: bytes = b""
    ogg: bytes = b""
    note: str | None = None

    @property
    def mel_b64(self) -> str:
        return b64(self.png)

    @property
    def audio_b64(self) -> str:
        return b64(self.ogg)


def window_media(path: Path, start_s: float) -> WindowMedia:
    """The thumbnail and clip of the 5-s window at ``start_s`` of an audio file; a missing or unreadable file is a
    note (the page still renders): the error page, the search page and the labelling page show windows this way."""
    if not path.exists():
        return WindowMedia(note=f"audio not found: {path} (pass --data DIR)")
    try:
        y, sr = read_window(path, start_s)
    except Exception as exc:  # an unreadable file is shown as a note; the page still renders
        return WindowMedia(note=f"could not read {path}: {type(exc).__name__}: {exc}")
    return WindowMedia(mel_png(y, sr), ogg_bytes(y, sr))


def check_data_dir(data_dir: Path, given: bool, instead: str = "") -> None:
    """Refuse a data folder that does not exist (``given``: it came from ``--data``; else ingest recorded it);
    ``instead``: the page's own way round it, added to the message."""
    if data_dir.is_dir():
        return
    what = f"--data {data_dir}" if given else f"the data folder ingest recorded, {data_dir},"
    raise UserInputError(f"{what} does not exist: pass --data DIR, the competition folder holding train_soundscapes/ "
                         f"and train_audio/{instead}")


def attach_media(examples: list[Example], data_dir: Path) -> None:
    """Fill each example's thumbnail and audio from the audio under ``data_dir`` (a note on an example whose file
    is missing or unreadable). Refused (:class:`UserInputError`) when the folder holds none of the examples'
    files: the wrong folder, not a few missing files."""
    paths = [data_dir / parse_window_id(ex.window_id)[0] for ex in examples]
    if paths and not any(p.exists() for p in paths):
        raise UserInputError(f"none of the {len(paths)} example windows' audio files is under {data_dir} (e.g. "
                             f"{paths[0]}): pass --data DIR, the competition folder holding train_soundscapes/ and "
                             "train_audio/ (or --worst 0 for a page without audio examples)")
    for ex, path in zip(examples, paths, strict=True):
        media = window_media(path, parse_window_id(ex.window_id)[1])
        if media.note is not None:
            ex.note = media.note
        else:
            ex.mel_b64, ex.audio_b64 = media.mel_b64, media.audio_b64


# ---------------------------------------------------------------------------- gathering
def _class_meta(store) -> dict[str, dict]:
    from featurestore.sqlfiles import run_sql_file

    rows = run_sql_file(store, "eda/long_tail").to_pylist()
    return {r["primary_label"]: r for r in rows}


def _common_names(store) -> dict[str, str]:
    cols = {r[0] for r in store.rows("SELECT column_name FROM information_schema.columns WHERE table_name = 'taxonomy'")}
    if "common_name" not in cols:
        return {}
    return {k: v for k, v in store.rows("SELECT primary_label, common_name FROM taxonomy")}


def diversity_heads(store, store_dir: Path, head_id: str, experiment: dict, limit: int) -> list[str]:
    """This head, its base heads when it is a stack, then the best other heads on the same fold version
    (a head without a bundle, such as a CNN student's OOF table, has no base heads)."""
    from models.bundle import bundle_dir
    from models.experiments import heads_on_fold_version
    from stack.bundle import StackConfig, head_config

    heads = [head_id]
    config = head_config(store_dir, head_id) if bundle_dir(store_dir, head_id).is_dir() else None
    if isinstance(config, StackConfig):
        heads += [h for h in config.base_heads if h not in heads]
    present = set(available_heads(store_dir))
    if experiment.get("fold_version"):
        others = heads_on_fold_version(store, experiment["fold_version"])
        heads += [h for h in others if h not in heads and h in present][:limit]
    return [h for h in heads if h in present]


def gather(store_dir: str | os.PathLike, head_id: str, params: ErrorPageParams = ErrorPageParams(), *,
           data_dir: str | os.PathLike | None = None) -> ErrorReport:
    """Everything the page shows, computed from the store (read-only) and the audio; ``head_id`` ``best`` is the
    leaderboard's best full-CV head (the report names the head it resolved to)."""
    from embed.job import data_dir_of
    from featurestore.store import FeatureStore
    from models.experiments import latest_row, resolve_head_id

    params.check()
    root = Path(store_dir).expanduser().resolve()
    with FeatureStore.open(root, create=False, read_only=True) as store:
        head_id = resolve_head_id(store, head_id)
        audio_root = Path(data_dir).expanduser().resolve() if data_dir else data_dir_of(store)
        if data_dir or (params.worst and params.examples):     # a wrong --data is refused even when unused
            check_data_dir(audio_root, given=bool(data_dir), instead=" (or --worst 0 for a page without audio examples)")
        present = available_heads(root)
        if head_id not in present:
            raise UserInputError(f"no OOF table for head {head_id!r} in {root / 'oof'}; heads present: {present} "
                                 "(python -m pipelines.leaderboard --store DIR lists them)")
        experiment = latest_row(store, head_id)
        meta = _class_meta(store)
        common = _common_names(store)
        candidates = diversity_heads(store, root, head_id, experiment, params.diversity_heads)
    notes: list[str] = []
    data = load_inputs(root, [head_id])
    scored_on = "soundscape"
    if not (data.folds >= 0).any():
        data, scored_on = load_inputs(root, [head_id], focal=True), "focal"
        notes.append("no labelled soundscape window is in a fold: the focal windows are analysed instead")
    rows = data.folds >= 0
    sub = data.subset(rows)
    report = _report(sub, head_id, experiment, scored_on, meta, common, params)
    report.notes += notes
    all_examples = [ex for exs in report.examples.values() for ex in exs]
    attach_media(all_examples, audio_root)
    missing = sum(ex.note is not None for ex in all_examples)
    if missing:
        report.notes.append(f"{missing} of {len(all_examples)} example windows have no audio (see their notes)")
    report.diversity = _diversity(root, candidates, report)
    return report


def _report(data: StackInputs, head_id: str, experiment: dict, scored_on: str, meta: dict[str, dict],
            common: dict[str, str], params: ErrorPageParams) -> ErrorReport:
    Y, P, names = data.Y, data.P[0], data.class_names
    n_clips = np.array([int(meta.get(c, {}).get("n_clips") or 0) for c in names])
    n_scape = np.array([int(meta.get(c, {}).get("n_soundscape_segments") or 0) for c in names])
    metric = evaluate(Y, P, names, folds=data.folds,
                      sites=[s if s is not None else "(focal)" for s in data.site],
                      hours=[h if h >= 0 else "(unknown)" for h in data.hour],
                      train_counts=n_clips + n_scape, taxon_class=list(data.class_groups), n_boot=0)
    auc = fast_auc(Y, P)
    per_class = []
    for c, name in enumerate(names):
        per_class.append({"label": name, "common_name": common.get(name, ""), "taxon": str(data.class_groups[c]),
                          "auc": float(auc[c]), "n_pos_scored": int(Y[:, c].sum()), "focal_clips": int(n_clips[c]),
                          "scape_windows": int(n_scape[c]),
                          "bucket": str(frequency_bucket(np.array([n_clips[c] + n_scape[c]]))[0])})
    per_class.sort(key=lambda r: (np.isnan(r["auc"]), r["auc"] if not np.isnan(r["auc"]) else 0.0, r["label"]))
    missed = missed_mask(Y, P)
    pairs = confusion_pairs(Y, P, names, missed, params.confusion_pairs)
    top, top_score = confusions(Y, P)
    report = ErrorReport(head_id, experiment, scored_on, data.n, per_class, metric.slices.to_pylist(), pairs)
    index = {n: i for i, n in enumerate(names)}
    for r in [r for r in per_class if not np.isnan(r["auc"])][:params.worst]:
        c = index[r["label"]]
        fp, mp = pick_examples(Y, P, c, params.examples)
        shown = []
        for kind, idx in (("false positive", fp), ("missed positive", mp)):
            for w in idx:
                labels = [names[j] for j in np.flatnonzero(Y[w] > 0)]
                d = int(top[w])                   # a false positive's confuser is the class itself: none shown
                conf, conf_s = ((names[d], float(top_score[w])) if kind == "missed positive" and d >= 0
                                else (None, None))
                shown.append(Example(str(data.window_ids[w]), kind, names[c], float(P[w, c]), int(data.folds[w]),
                                     labels, conf, conf_s))
        report.examples[names[c]] = shown
    return report


def _diversity(root: Path, heads: list[str], report: ErrorReport) -> Diversity | None:
    """The diversity matrix over the same windows the page analyses (labelled soundscape windows in a
    fold, or the focal ones when the page fell back to them)."""
    if len(heads) < 2:
        report.notes.append("head diversity needs a second head on the same folds; train one with pipelines.train")
        return None
    try:
        data = load_inputs(root, heads, focal=report.scored_on == "focal")
    except DataError as exc:
        report.notes.append(f"head diversity left out: the heads' OOF tables do not align ({exc})")
        return None
    rows = data.folds >= 0
    if report.scored_on != "focal":
        rows &= data.source == SOUNDSCAPE
    return head_correlation(data, rows)


# ---------------------------------------------------------------------------- HTML
def _summary(report: ErrorReport) -> str:
    e = report.experiment
    if e:
        fm, fs, pooled = e.get("fold_mean"), e.get("fold_std"), e.get("oof_auc")
        head_line = (f"<p>Head <code>{html.escape(report.head_id)}</code> ({html.escape(str(e.get('head')))} on "
                     f"{html.escape(str(e.get('features')))}): <b>fold mean {_f(fm)} ± {_f(fs)}</b> "
                     f"(the headline: each fold scored by the model that held it out); pooled OOF AUC {_f(pooled)}; "
                     f"fold version <code>{html.escape(str(e.get('fold_version')))}</code>.</p>")
    else:
        head_line = f"<p>Head <code>{html.escape(report.head_id)}</code> (no experiments row).</p>"
    scored = sum(not np.isnan(r["auc"]) for r in report.per_class)
    return (head_line
            + f"<p>Analysed: {report.n_windows} labelled {report.scored_on} windows in a fold; {scored} classes "
              f"with a positive and a negative there. Per-class AUC on this page is pooled over the folds. A positive "
              f"is <i>missed</i> when at least {MISSED_QUANTILE:.0%} of its class's negatives score above it; its "
              f"confuser is the top-scoring class that is not a label of the window.</p>"
            + "".join(f"<p class='note'>{html.escape(n)}</p>" for n in report.notes))


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.4f}"


def _examples_html(report: ErrorReport) -> str:
    if not report.examples:
        return "<p class='none'>no scored class</p>"
    parts = []
    auc = {r["label"]: r for r in report.per_class}
    for label, exs in report.examples.items():
        r = auc[label]
        parts.append(f"<h3 id='class-{html.escape(label)}'>{html.escape(label)} {html.escape(r['common_name'])} "
                     f"({html.escape(r['taxon'])}): AUC {_f(r['auc'])}, {r['n_pos_scored']} positive windows</h3>")
        for kind in ("false positive", "missed positive"):
            cards = []
            for ex in (e for e in exs if e.kind == kind):
                conf = (f"<br>outscored by {html.escape(ex.confuser)} ({ex.confuser_score:.3f})"
                        if ex.confuser and ex.confuser_score is not None and ex.confuser_score > ex.score else "")
                media = (img(ex.mel_b64, f"mel {ex.window_id}") + audio_tag(ex.audio_b64)) if ex.audio_b64 else \
                    f"<p class='note'>{html.escape(ex.note or '')}</p>"
                cards.append(f"<div class='clip' data-kind='{kind}'><code>{html.escape(ex.window_id)}</code>"
                             f"score {ex.score:.3f}, fold {ex.fold}; labels: "
                             f"{html.escape(', '.join(ex.labels) or 'none')}{conf}{media}</div>")
            parts.append(f"<h4>{kind}s</h4><div class='clips'>{''.join(cards) or '<p class=none>none</p>'}</div>")
    return "".join(parts)


AUC_DECIMALS = 4      # every AUC cell of the page: one column never mixes 0.9 and 0.8123


def class_auc_cell(row: dict, column: str) -> str | None:
    """The per-class table's AUC cell: 4 decimals, or why the class has none on the analysed windows."""
    if column != "auc" or not np.isnan(row["auc"]):
        return None
    return "no positives" if row["n_pos_scored"] == 0 else "no negatives"


def per_class_html(per_class: list[dict]) -> str:
    return html_table(per_class, None, formats={"auc": fixed(AUC_DECIMALS)}, cell=class_auc_cell)


def _slices_html(slices: list[dict]) -> str:
    out = []
    for name in dict.fromkeys(r["slice"] for r in slices):
        rows = [{k: r[k] for k in ("value", "n_windows", "n_classes", "auc")} for r in slices if r["slice"] == name]
        out.append(f"<h3>{html.escape(name)}</h3>"
                   + html_table(rows, 60, formats={"auc": fixed(AUC_DECIMALS, "no class scorable")}))
    return "".join(out) or "<p class='none'>no slices</p>"


def _diversity_html(report: ErrorReport) -> str:
    div = report.diversity
    if div is None:
        return "".join(f"<p class='note'>{html.escape(n)}</p>" for n in report.notes if "diversity" in n) or \
            "<p class='none'>no second head</p>"
    n = len(div.heads)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 0.9 + 0.45 * n))
    im = ax.imshow(div.matrix, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(n), [str(i) for i in range(n)], fontsize=7)
    ax.set_yticks(range(n), [f"[{i}] {h}" for i, h in enumerate(div.heads)], fontsize=7)
    for i in range(n):
        for j in range(n):
            if not np.isnan(div.matrix[i, j]):
                ax.text(j, i, f"{div.matrix[i, j]:.2f}", ha="center", va="center", fontsize=6,
                        color="k" if div.matrix[i, j] > 0.6 else "w")
    fig.colorbar(im, ax=ax, shrink=0.8)
    rows = [{"head": h, **{f"[{j}]": float(div.matrix[i, j]) for j in range(n)}} for i, h in enumerate(div.heads)]
    return ("<p>Mean over classes of the Spearman correlation between two heads' OOF scores on the labelled "
            "soundscape windows: low values mark heads worth stacking.</p>"
            + img(png(fig), "head diversity") + html_table(rows, None, formats={f"[{j}]": fixed(2) for j in range(n)}))


def render_html(report: ErrorReport) -> str:
    bodies = {
        "summary": _summary(report),
        "per-class": per_class_html(report.per_class),
        "worst": _examples_html(report),
        "confusions": ("<p>On missed positives: the class that outscored the true one in the same window, most "
                       "frequent first.</p>"
                       + html_table(report.confusions, None,
                                    formats={"share_of_missed": fixed(2), "mean_margin": fixed(3)})),
        "slices": _slices_html(report.slices),
        "diversity": _diversity_html(report),
    }
    return render_page(f"Error analysis: {report.head_id}", "python -m pipelines.errors",
                       [(sid, title, bodies[sid]) for sid, title in SECTIONS], toc_from=1)


def write_error_page(store_dir: str | os.PathLike, head_id: str, out_path: str | os.PathLike,
                     params: ErrorPageParams = ErrorPageParams(), *,
                     data_dir: str | os.PathLike | None = None) -> tuple[Path, ErrorReport]:
    """Gather, render and write the page atomically; returns its path and the report."""
    check_out(out_path)                       # before the work: a bad --out costs nothing
    report = gather(store_dir, head_id, params, data_dir=data_dir)
    return write_page(out_path, render_html(report)), report


def summary_line(path: Path, report: ErrorReport) -> str:
    worst = [f"{r['label']} {r['auc']:.3f}" for r in report.per_class[:3] if not np.isnan(r["auc"])]
    return (f"error page written to {path} ({path.stat().st_size / 1024:.0f} KiB): head {report.head_id}, "
            f"{report.n_windows} windows, "
            f"worst classes {', '.join(worst) or 'none'}; {len(report.confusions)} confusion pairs"
            + (f"; {json.dumps(report.notes)}" if report.notes else ""))
