"""The labelling loop: one annotator labels one class, a linear probe retrains after every page and picks the next.

perch-hoplite's "agile modelling" on the store (issue 27, item 2): the first page (round 0) is a search by
example (:func:`models.search.search`, ``class:CODE`` by default); each click is written at once to the store's
``user_labels`` log (:func:`featurestore.user_labels.append_labels`, with the session, the query text and the
round); :meth:`LabelLoop.next_page` then

1. trains a **probe**: the project's linear head (:class:`models.heads.LinearHead`, one class column,
   class-balanced, PCA, L-BFGS) on every current decisive label of the class (all annotators, resolved as
   training resolves them: :func:`featurestore.user_labels.training_labels`) plus up to
   ``weak_negatives`` random windows (one fixed random order per loop) with no user label of the class and not
   labelled with it in the store's ``window_labels``, as negatives at weight ``weak_weight``;
2. **scores every window** with the probe: the head's standardisation, PCA and weights folded into one
   effective weight vector ``w`` and bias ``b`` (``p = sigmoid(x . w + b)``, :func:`effective_weights`, equal to
   ``LinearHead.predict_proba`` to float32 rounding), one chunked matrix-vector product over the exact stored rows
   (:class:`models.search.VectorCache`), float16/float32 -> float64 a chunk at a time;
3. **picks the page**: ``top_share`` of it the highest probe scores, ``margin_share`` the scores nearest the
   boundary (probability 0.5: the class-balanced probe's decision value 0), the rest a random audit sample of the
   candidates; at most ``per_file`` windows of one audio file on a page. The items come in that order (top,
   margin, audit; each best first, ties by window id); the same labels, seed and round give the same page. Candidates: windows with features, not
   labelled for the class by anyone (any current label, uncertain included), not in the store's expert/focal
   ``window_labels`` (those are labelled already), inside the search's ``where`` filter when one is given.

The probe trains from round 1 on as soon as the class has a decisive positive and a negative: a user's negative
label or a weak negative (as in agile modelling, positives and weak negatives suffice; with ``weak_negatives = 0``
a user negative is needed). Before that, a page continues the search ranking: its next hits not yet shown in this
loop nor labelled for the class, ``why = 'search'``, and the round line says what is missing. Round 0 is always the
search page.

The held-out AUC of a round: the user labels of the class (decisive, all annotators) split into
``heldout_folds`` folds grouped by audio file (sklearn ``StratifiedGroupKFold``); each fold's probe trains on
the other folds' labels plus the weak negatives outside the fold's files and scores the fold; the pooled
out-of-fold probabilities give ``sklearn.metrics.roc_auc_score``. Weak negatives are training rows only, never
scored. Undefined (None, with the reason in ``heldout_note``) below 2 positives and 2 negatives or 2 files.

State lives in the store: a new :class:`LabelLoop` on the same store, class and annotator resumes at round
``1 + max(probe_round)`` of the annotator's labels of the class and rebuilds that round's page from the labels
(a page is not stored: the rebuilt page is the one the current labels give, not necessarily the one on screen
when the previous loop stopped). A window of the page is clicked with :meth:`LabelLoop.label`; a window not on the
current page is refused (its click would carry a round that did not show it: label it through
``pipelines.label --import`` instead).

The methods of a loop hold one lock: a web server may call them from several threads.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from featurestore.errors import StoreError, UserInputError
from featurestore.progress import NoProgress
from featurestore.user_labels import (
    DECISIVE,
    LABELS,
    LabelClick,
    UndoResult,
    append_labels,
    current_labels,
    resolve,
)
from featurestore.user_labels import undo as undo_click
from featurestore.windows import file_of
from models.heads import LinearHead, LinearParams, one_blas_thread
from models.search import SearchParams, capped, load_vectors, parse_query, search, windows_sql

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

WHYS = ("search", "top", "margin", "audit")
SCORE_CHUNK_ROWS = 16384          # rows converted to float64 at a time when scoring (128 MB at 1,024 dims)


# ---------------------------------------------------------------------------- parameters and results
@dataclass(frozen=True)
class ProbeParams:
    """How the probe trains and how a page is made (module docstring)."""

    page_size: int = 12
    weak_negatives: int = 20_000      # random windows not labelled for the class, negatives at weak_weight
    weak_weight: float = 0.05         # perch-hoplite's agile modelling weight for weak negatives
    margin_share: float = 0.5         # of a page after round 0: windows with probe scores nearest the boundary
    top_share: float = 0.25           # highest probe scores; the rest: a random audit sample of unlabelled windows
    per_file: int | None = 2          # diversity cap per audio file on a page
    heldout_folds: int = 3            # grouped (by audio file) folds for the held-out AUC on the user's own labels
    #                                   (0: none; each fold is one more probe fit per round)
    seed: int = 0
    linear: LinearParams = LinearParams()
    exclude_labelled: bool = True     # never show windows of the store's window_labels (expert and focal labels)

    def check(self) -> ProbeParams:
        """This, or :class:`UserInputError` naming the bad value."""
        if self.page_size < 1:
            raise UserInputError(f"page_size must be >= 1 (got {self.page_size})")
        if self.weak_negatives < 0:
            raise UserInputError(f"weak_negatives must be >= 0 (got {self.weak_negatives})")
        if not 0 < self.weak_weight <= 1:
            raise UserInputError(f"weak_weight must be in (0, 1] (got {self.weak_weight})")
        for name in ("margin_share", "top_share"):
            value = getattr(self, name)
            if not 0 <= value <= 1:
                raise UserInputError(f"{name} must be in [0, 1] (got {value})")
        if self.margin_share + self.top_share > 1 + 1e-9:
            raise UserInputError(f"margin_share + top_share must be <= 1 (got {self.margin_share} + "
                                 f"{self.top_share}); the rest of a page is the audit sample")
        if self.per_file is not None and self.per_file < 1:
            raise UserInputError(f"per_file must be >= 1 (or None for no cap; got {self.per_file})")
        if self.heldout_folds < 2 and self.heldout_folds != 0:
            raise UserInputError(f"heldout_folds must be >= 2, or 0 for no held-out AUC (got {self.heldout_folds})")
        if not isinstance(self.linear, LinearParams):
            raise UserInputError(f"linear must be a models.heads.LinearParams (got {type(self.linear).__name__})")
        return self

    def shares(self) -> tuple[int, int, int]:
        """``(top, margin, audit)`` counts of a probe page (rounded; they sum to ``page_size``)."""
        top = int(round(self.top_share * self.page_size))
        margin = min(self.page_size - top, int(round(self.margin_share * self.page_size)))
        return top, margin, self.page_size - top - margin


@dataclass
class PageItem:
    """One window of a page. ``score``: the probe's probability (round >= 1) or the search cosine (``why`` =
    'search'); ``label``: this annotator's current label of the class for the window (None: none)."""

    window_id: str
    source: str
    filename: str
    start_s: int
    site: str | None
    score: float | None
    why: str
    label: str | None = None


@dataclass
class RoundStats:
    """The per-round figures (:meth:`line`). Counts are windows of the class with a current label (all
    annotators, resolved as training resolves them: a positive-vs-negative conflict counts as neither)."""

    round: int
    labelled: int
    positives: int
    negatives: int
    uncertain: int
    last_page_precision: float | None   # positives / decisive labels this annotator gave on the previous page
    heldout_auc: float | None           # grouped-by-file CV AUC of the probe on the user labels (None: see note)
    heldout_note: str
    n_weak: int
    fit_seconds: float
    probe: bool = False                 # whether a probe picked this page (False: the search ranking)
    note: str = ""                      # why there is no probe yet, or other news of the round
    score_seconds: float = 0.0          # scoring every window

    def line(self) -> str:
        """One line: ``round 3: 36 labelled (12 positive, 20 negative, 4 uncertain); last page precision 0.58;
        held-out AUC 0.91 (3 folds by file, 12 pos / 20 neg); probe on 32 labels + 20,000 weak negatives (1.2 s
        fit, 0.8 s scoring)``."""
        parts = [f"round {self.round}: {self.labelled} labelled ({self.positives} positive, {self.negatives} "
                 f"negative, {self.uncertain} uncertain)"]
        if self.last_page_precision is not None:
            parts.append(f"last page precision {self.last_page_precision:.2f}")
        auc = "n/a" if self.heldout_auc is None else f"{self.heldout_auc:.3f}"
        parts.append(f"held-out AUC {auc} ({self.heldout_note})")
        if self.probe:
            parts.append(f"probe on {self.positives + self.negatives} labels + {self.n_weak:,} weak negatives "
                         f"({self.fit_seconds:.1f} s fit, {self.score_seconds:.1f} s scoring)")
        if self.note:
            parts.append(self.note)
        return "; ".join(parts)


@dataclass
class Page:
    round: int
    items: list[PageItem]
    stats: RoundStats


# ---------------------------------------------------------------------------- the probe's math
def effective_weights(head: LinearHead, column: int = 0) -> tuple[np.ndarray, float]:
    """``(w, b)`` (float64) with ``head.decision_function(X)[:, column] == X @ w + b`` up to float32 rounding:
    the head computes ``((X - mean) / scale) @ components @ coef + bias``, so ``w = (components @ coef) / scale``
    and ``b = bias - mean . w``."""
    coef = np.asarray(head.coef_, np.float64)[:, column]
    direction = coef if head.components_ is None else np.asarray(head.components_, np.float64) @ coef
    w = direction / np.asarray(head.scale_, np.float64)
    b = float(head.bias_[column]) - float(np.asarray(head.mean_, np.float64) @ w)
    return w, b


def score_rows(exact: np.ndarray, w: np.ndarray, b: float, *, threads: int = 2,
               progress: Callable[[int], object] | None = None) -> np.ndarray:
    """``sigmoid(exact @ w + b)`` (float64) of every row, :data:`SCORE_CHUNK_ROWS` rows at a time in float64 on
    ``threads`` threads (a memory-mapped float16/float32 matrix is never copied whole)."""
    from scipy.special import expit

    n = len(exact)
    out = np.empty(n, np.float64)

    def one(a: int) -> int:
        c = min(n, a + SCORE_CHUNK_ROWS)
        out[a:c] = np.asarray(exact[a:c], np.float64) @ w
        return c - a

    with one_blas_thread(), concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        for done in pool.map(one, range(0, n, SCORE_CHUNK_ROWS)):
            if progress is not None:
                progress(done)
    out += b
    return expit(out, out=out)


def fit_probe(X: np.ndarray, y: np.ndarray, weight: np.ndarray, params: LinearParams, label: str = "class"
              ) -> LinearHead:
    """The project's linear head on one class column (``y`` 0/1, ``weight`` per row)."""
    head = LinearHead(params, [label], [f"f{i}" for i in range(X.shape[1])])
    return head.fit(np.asarray(X, np.float32), np.asarray(y, np.float32)[:, None], np.asarray(weight, np.float64))


# ---------------------------------------------------------------------------- the loop
@dataclass
class _Labels:
    """The class's labels now: resolved per window (all annotators) and this annotator's own."""

    positive: list[str] = field(default_factory=list)
    negative: list[str] = field(default_factory=list)
    uncertain: int = 0
    any_label: set[str] = field(default_factory=set)          # windows with any current label of the class
    mine: dict[str, str] = field(default_factory=dict)        # this annotator: window -> current label
    rounds: dict[str, int | None] = field(default_factory=dict)   # this annotator: window -> round of the label
    max_round: int | None = None                              # this annotator's largest probe_round (any click)


class LabelLoop:
    """One annotator labelling one class with a probe; state lives in the store (user_labels), so a new LabelLoop
    on the same store/class/annotator resumes (round = 1 + the max probe_round of its labels, page rebuilt).

    ``features``: the view to search and train on (``birdnet``, ``perch``, ``custom:NAME``; the pooling is
    ``search_params.pooling``); ``query``: the round-0 search (default ``["class:CODE"]``); ``session``: written
    with every click and the scope of :meth:`undo` (default: a new ``probe-<hex>`` id); ``search_params``: the
    round-0 search's filters (``where`` also restricts every probe page; ``k`` and ``per_file`` are the loop's
    own: ``page_size`` and ``params.per_file``); ``bars``: a progress-bar factory for the long steps (cache
    build, scoring). Raises :class:`UserInputError` for an unknown class, an empty annotator or bad parameters,
    :class:`StoreError` when the features are not embedded."""

    def __init__(self, store: FeatureStore, features: str, primary_label: str, annotator: str, *,
                 query: Sequence[str] | None = None, params: ProbeParams = ProbeParams(), session: str | None = None,
                 search_params: SearchParams | None = None, bars=None, threads: int = 2):
        self.store = store
        self.features = features
        self.params = params.check()
        self.primary_label = primary_label
        self.annotator = (annotator or "").strip()
        if not self.annotator:
            raise UserInputError("the labelling loop needs an annotator name")
        self._check_class()
        self.query = list(query) if query else [f"class:{primary_label}"]
        parse_query(self.query, store)                       # a bad query is refused before any long work
        self.query_text = " ".join(self.query)
        self.session = session or f"probe-{uuid.uuid4().hex[:12]}"
        self.search_params = replace((search_params or SearchParams()).check(), per_file=None, exclude_labelled=False)
        self.bars = bars or NoProgress
        self.threads = threads
        self._lock = threading.RLock()
        self._shown: set[str] = set()
        self._search_k = 0
        self.scores: np.ndarray | None = None               # the last probe's probability of every cache row
        self.head: LinearHead | None = None                 # the last probe
        self._weak_order: np.ndarray | None = None
        with self.bars(f"search cache of {features} (float16)", "window") as bar:
            self.cache = load_vectors(store, features, self.search_params.pooling, progress=bar.update,
                                      on_total=bar.start)
        if len(self.cache) == 0:
            raise StoreError(f"no stored {features} features in {store.root}; run python -m pipelines.embed "
                             f"--store {store.root} first")
        self.ids: list[str] = (list(self.cache.ids) if self.cache.ids is not None else
                               store.sql(f"SELECT window_id FROM {self.cache.ids_sql()} ORDER BY row")
                               .column(0).to_pylist())
        if any(a >= b for a, b in zip(self.ids, self.ids[1:], strict=False)):   # relied on by _rows_of
            raise StoreError(f"the search cache of {features} in {store.root} does not list its windows in sorted "
                             f"order; delete {store.root / 'search_cache'} and start again")
        self._allowed = self._allowed_rows()
        self._class_positive_rows = self._rows_of(self._store_positives())
        labels = self._labels()
        self.round = 0 if labels.max_round is None else labels.max_round + 1
        self._page = self._build_page(labels)

    # ------------------------------------------------------------------ public API
    def page(self) -> Page:
        """The current page, with this annotator's current labels filled in."""
        with self._lock:
            mine = self._labels().mine
            for item in self._page.items:
                item.label = mine.get(item.window_id)
            return self._page

    def label(self, window_id: str, label: str) -> None:
        """Record one click (durable when this returns): class ``primary_label`` is ``label`` (positive, negative,
        uncertain or cleared) in ``window_id``, with this loop's session, query text and round. A window not on
        the current page or an unknown label value is refused (:class:`UserInputError`)."""
        with self._lock:
            if label not in LABELS:
                raise UserInputError(f"unknown label {label!r}; use one of {', '.join(LABELS)}")
            if window_id not in {i.window_id for i in self._page.items}:
                raise UserInputError(f"window {window_id!r} is not on the current page (round {self.round}) of "
                                     f"class {self.primary_label}; label other windows with python -m "
                                     "pipelines.label --import")
            append_labels(self.store, [LabelClick(window_id, self.primary_label, label, self.annotator,
                                                  session=self.session, query=self.query_text,
                                                  probe_round=self.round)])
            for item in self._page.items:
                if item.window_id == window_id:
                    item.label = None if label == "cleared" else label

    def undo(self) -> UndoResult:
        """Revert this annotator's last click of the class in this session (:func:`featurestore.user_labels.undo`);
        :class:`UserInputError` when there is none."""
        with self._lock:
            result = undo_click(self.store, self.annotator, session=self.session, primary_label=self.primary_label)
            for item in self._page.items:
                if item.window_id == result.window_id:
                    item.label = None if result.now == "cleared" else result.now
            return result

    def next_page(self) -> Page:
        """Retrain the probe on the current labels, score every window and pick the next page (round + 1). On an
        error (or Ctrl-C) the loop stays at the current round and page."""
        with self._lock:
            self.round += 1
            try:
                self._page = self._build_page(self._labels())
            except BaseException:
                self.round -= 1
                raise
            return self._page

    # ------------------------------------------------------------------ store reads
    def _check_class(self) -> None:
        known = {r[0] for r in self.store.rows("SELECT primary_label FROM taxonomy")} \
            if self.store.has_table("taxonomy") else set()
        if self.primary_label not in known:
            close = sorted(k for k in known if self.primary_label.lower() in k.lower())[:5]
            raise UserInputError(f"unknown class {self.primary_label!r}"
                                 + (f" (did you mean {', '.join(close)}?)" if close else "")
                                 + f"; list the classes with python -m pipelines.sql --store {self.store.root} -c "
                                   "\"SELECT primary_label, common_name FROM taxonomy\"")

    def _rows_of(self, window_ids) -> np.ndarray:
        """Cache rows of the windows that have features (ids are sorted: a binary search each)."""
        out = []
        n = len(self.ids)
        for w in window_ids:
            i = bisect.bisect_left(self.ids, w)
            if i < n and self.ids[i] == w:
                out.append(i)
        return np.asarray(sorted(out), np.int64)

    def _allowed_rows(self) -> np.ndarray:
        """Bool mask of the rows a page may show: inside ``where``, not expert/focal labelled (params)."""
        import duckdb

        conditions = []
        if self.search_params.where and self.search_params.where.strip():
            conditions.append(f"({self.search_params.where})")
        if self.params.exclude_labelled and self.store.has_table("window_labels"):
            conditions.append("window_id NOT IN (SELECT window_id FROM window_labels)")
        mask = np.ones(len(self.ids), bool)
        if conditions:
            try:
                keep = self.store.sql(f"SELECT window_id FROM ({windows_sql()}) WHERE {' AND '.join(conditions)}"
                                      ).column(0).to_pylist()
            except duckdb.Error as exc:
                raise UserInputError(f"--where {self.search_params.where!r} is not a valid SQL condition "
                                     f"({str(exc).strip().splitlines()[0]})") from None
            mask[:] = False
            mask[self._rows_of(keep)] = True
        return mask

    def _store_positives(self) -> list[str]:
        """Windows the store's window_labels label with the class (never weak negatives)."""
        if not self.store.has_table("window_labels"):
            return []
        return [r[0] for r in self.store.rows("SELECT window_id FROM window_labels WHERE list_contains(labels, ?)",
                                              [self.primary_label])]

    def _labels(self) -> _Labels:
        table = current_labels(self.store, include_cleared=True)
        out = _Labels()
        votes: dict[str, set[str]] = {}
        for r in table.to_pylist():
            if r["primary_label"] != self.primary_label:
                continue
            if r["annotator"] == self.annotator:
                if r["probe_round"] is not None:
                    out.max_round = max(out.max_round if out.max_round is not None else -1, r["probe_round"])
                if r["label"] != "cleared":
                    out.mine[r["window_id"]] = r["label"]
                    out.rounds[r["window_id"]] = r["probe_round"]
            if r["label"] != "cleared":
                votes.setdefault(r["window_id"], set()).add(r["label"])
        for w, values in sorted(votes.items()):
            out.any_label.add(w)
            said = resolve(values)
            if said == "uncertain":
                out.uncertain += 1
            elif said != "conflict":
                (out.positive if said == "positive" else out.negative).append(w)
        return out

    # ------------------------------------------------------------------ pages
    def _stats(self, labels: _Labels, **kw) -> RoundStats:
        prev = [v for w, v in labels.mine.items() if labels.rounds.get(w) == self.round - 1 and v in DECISIVE]
        precision = (sum(v == "positive" for v in prev) / len(prev)) if prev else None
        defaults = {"heldout_auc": None, "heldout_note": "no probe yet", "n_weak": 0, "fit_seconds": 0.0}
        return RoundStats(self.round, len(labels.any_label), len(labels.positive), len(labels.negative),
                          labels.uncertain, precision, **{**defaults, **kw})

    def _build_page(self, labels: _Labels) -> Page:
        training = None
        if self.round > 0 and labels.positive:
            training = self._training_set(labels.positive, labels.negative, labels.any_label)
            if not labels.negative and not training[3]:
                training = None
        if training is None:
            missing = "a positive label" if not labels.positive else "a negative label (or weak negatives)"
            items = self._search_items(labels)
            note = ("search page" if self.round == 0 else
                    f"no probe yet (needs {missing} of {self.primary_label}): the page continues the search ranking")
            page = Page(self.round, items, self._stats(labels, note=note))
        else:
            page = self._probe_page(labels, training)
        for item in page.items:
            item.label = labels.mine.get(item.window_id)
        if not page.items:      # say why, not just an empty page (a small store may hold labelled windows only)
            where = " or outside --where" if (self.search_params.where or "").strip() else ""
            page.stats.note = "; ".join(x for x in (page.stats.note, (
                f"no window left to show: each of the {len(self.ids):,} windows with {self.features} features is "
                f"labelled already (for {self.primary_label}, or in the store's expert / focal labels){where}")) if x)
        self._shown.update(i.window_id for i in page.items)
        return page

    def _search_items(self, labels: _Labels) -> list[PageItem]:
        """The next search hits not shown in this loop nor labelled for the class (capped per file)."""
        skip = self._shown | labels.any_label
        k = max(self._search_k, 4 * self.params.page_size + len(skip))
        while True:
            result = search(self.store, self.features, self.query, replace(self.search_params, k=k),
                            threads=self.threads, bars=self.bars)
            allowed = self._allowed
            fresh = [h for h in result.hits if h.window_id not in skip
                     and allowed[self._rows_of([h.window_id])].all()]
            picked = capped(fresh, self.params.page_size, self.params.per_file, lambda h: h.filename)
            if len(picked) == self.params.page_size or len(result.hits) < k:
                self._search_k = k
                return [PageItem(h.window_id, h.source, h.filename, h.start_s, h.site, float(h.score), "search")
                        for h in picked]
            k *= 2

    def _training_set(self, positive: list[str], negative: list[str], labelled: set[str],
                      exclude_files: set[str] = frozenset()) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """``(rows, y, weight, n_weak)``: the labelled rows (weight 1) and up to ``weak_negatives`` weak negatives
        (weight ``weak_weight``): rows in one fixed random order per loop (``seed``), skipping windows with any
        label of the class (``labelled``), the store's positives of the class and the files ``exclude_files``."""
        pos, neg = self._rows_of(positive), self._rows_of(negative)
        weak = np.zeros(0, np.int64)
        if self.params.weak_negatives:
            if self._weak_order is None:
                self._weak_order = np.random.default_rng(self.params.seed).permutation(len(self.ids))
            banned = np.zeros(len(self.ids), bool)
            banned[self._class_positive_rows] = True
            banned[self._rows_of(labelled)] = True
            for f in exclude_files:         # a file's windows are contiguous rows (ids sorted, ids share "file@")
                banned[bisect.bisect_left(self.ids, f + "@"):bisect.bisect_left(self.ids, f + "A")] = True
            order = self._weak_order[~banned[self._weak_order]]
            weak = np.sort(order[:self.params.weak_negatives])
        rows = np.concatenate([pos, neg, weak])
        y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg) + len(weak))])
        weight = np.concatenate([np.ones(len(pos) + len(neg)), np.full(len(weak), self.params.weak_weight)])
        return rows, y, weight, len(weak)

    def _features(self, rows: np.ndarray) -> np.ndarray:
        return np.asarray(self.cache.exact[np.sort(rows)], np.float32)

    def _fit(self, rows: np.ndarray, y: np.ndarray, weight: np.ndarray) -> LinearHead:
        order = np.argsort(rows, kind="stable")
        X = self._features(rows)                      # sorted rows: memory-mapped reads in file order
        return fit_probe(X, y[order], weight[order], self.params.linear, self.primary_label)

    def _probe_page(self, labels: _Labels, training: tuple[np.ndarray, np.ndarray, np.ndarray, int]) -> Page:
        t0 = time.perf_counter()
        rows, y, weight, n_weak = training
        self.head = self._fit(rows, y, weight)
        fit_s = time.perf_counter() - t0
        w, b = effective_weights(self.head)
        t1 = time.perf_counter()
        with self.bars(f"score {len(self.ids):,} windows with the probe", "window") as bar:
            bar.start(len(self.ids))
            self.scores = score_rows(self.cache.exact, w, b, threads=self.threads, progress=bar.update)
        score_s = time.perf_counter() - t1
        auc, note = self._heldout(labels)
        items = self._pick(labels)
        stats = self._stats(labels, heldout_auc=auc, heldout_note=note, n_weak=n_weak, fit_seconds=fit_s,
                            score_seconds=score_s, probe=True)
        return Page(self.round, items, stats)

    def _pick(self, labels: _Labels) -> list[PageItem]:
        """Top, margin and audit windows among the candidates (module docstring), per-file cap over the page."""
        p = self.scores
        candidate = self._allowed.copy()
        candidate[self._rows_of(labels.any_label)] = False
        cand = np.flatnonzero(candidate)
        n_top, n_margin, n_audit = self.params.shares()
        files: dict[str, int] = {}
        taken: set[int] = set()
        picked: list[tuple[int, str]] = []
        cap = self.params.per_file

        def walk(order: np.ndarray, n: int, why: str) -> int:
            got = 0
            for r in order.tolist():
                if got == n:
                    break
                if r in taken:
                    continue
                f = file_of(self.ids[r])
                if cap is not None and files.get(f, 0) >= cap:
                    continue
                files[f] = files.get(f, 0) + 1
                taken.add(r)
                picked.append((r, why))
                got += 1
            return got

        def walk_best(key: np.ndarray, n: int, why: str) -> None:
            """The candidates by ascending ``key`` (ties: by row, i.e. window id) walked until ``n`` are taken:
            a partial sort of the first ``need``, grown while the caps leave the walk short."""
            keys = key[cand]
            need = n + len(taken) + (0 if cap is None else 8 * n)
            while n > 0:
                m = min(len(cand), need)
                if m == 0:
                    return
                idx = np.argpartition(keys, m - 1)[:m] if m < len(cand) else np.arange(len(cand))
                idx = np.flatnonzero(keys <= keys[idx].max()) if m < len(cand) else idx   # ties at the cut
                idx = idx[np.lexsort((cand[idx], keys[idx]))]
                n -= walk(cand[idx], n, why)
                if m == len(cand):
                    return
                need *= 4

        walk_best(-p, n_top, "top")
        walk_best(np.abs(p - 0.5), n_margin, "margin")
        rng = np.random.default_rng([self.params.seed, self.round])
        walk(rng.permutation(cand), self.params.page_size - len(picked), "audit")
        meta = self._meta([self.ids[r] for r, _ in picked])
        return [PageItem(self.ids[r], *meta[self.ids[r]], float(p[r]), why) for r, why in picked]

    def _meta(self, window_ids: list[str]) -> dict[str, tuple]:
        import pyarrow as pa

        self.store.con.register("_probe_ids", pa.table({"window_id": pa.array(window_ids, pa.string())}))
        try:
            rows = self.store.rows(f"SELECT window_id, source, filename, start_s, site FROM ({windows_sql()}) "
                                   "WHERE window_id IN (SELECT window_id FROM _probe_ids)")
        finally:
            self.store.con.unregister("_probe_ids")
        return {r[0]: tuple(r[1:]) for r in rows}

    # ------------------------------------------------------------------ held-out AUC
    def _heldout(self, labels: _Labels) -> tuple[float | None, str]:
        """Grouped-by-file cross-validated AUC of the probe on the class's decisive user labels (module
        docstring)."""
        from sklearn.metrics import roc_auc_score
        from sklearn.model_selection import StratifiedGroupKFold

        have = set(self.ids[r] for r in self._rows_of(labels.positive + labels.negative))
        pos = [w for w in labels.positive if w in have]
        neg = [w for w in labels.negative if w in have]
        counts = f"{len(pos)} pos / {len(neg)} neg"
        if not self.params.heldout_folds:
            return None, f"not computed (heldout_folds 0), {counts}"
        if len(pos) < 2 or len(neg) < 2:
            return None, f"needs >= 2 positive and >= 2 negative labels, has {counts}"
        wids = pos + neg
        y = np.array([1] * len(pos) + [0] * len(neg))
        groups = np.array([file_of(w) for w in wids])
        n_files = len(set(groups))
        k = min(self.params.heldout_folds, n_files)
        if k < 2:
            return None, f"all {counts} labels are in one audio file: no grouped fold"
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=self.params.seed)
        oof = np.full(len(wids), np.nan)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)   # "least populated class has fewer than n_splits members"
            splits = list(splitter.split(np.zeros(len(y)), y, groups))
        for train, test in splits:
            tp = [wids[i] for i in train if y[i] == 1]
            tn = [wids[i] for i in train if y[i] == 0]
            if not tp or not tn:
                return None, f"{k} folds by file, {counts}: a training fold has no positive or no negative"
            rows, yy, weight, _ = self._training_set(tp, tn, labels.any_label, exclude_files=set(groups[test]))
            head = self._fit(rows, yy, weight)
            w, b = effective_weights(head)
            X = self.cache.exact[self._rows_of([wids[i] for i in test])]
            test_sorted = sorted(test, key=lambda i: wids[i])       # _rows_of returns rows in id order
            oof[test_sorted] = score_rows(X, w, b, threads=1)
        return float(roc_auc_score(y, oof)), f"{k} folds by file, {counts}"
