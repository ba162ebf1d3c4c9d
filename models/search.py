"""Search by example over the stored window embeddings: "find more windows like these".

A query is one or more items (:func:`parse_query`):

==========================  ==================================================================
item                        examples it gives
==========================  ==================================================================
``path/to/clip.ogg@12.5``   the 5-s window of an audio file starting at 12.5 s, embedded now by the
                            extractor rebuilt from the stored version's params (same space; a model
                            file that changed is refused, :func:`embed.registry.rebuild`)
``<stored window id>``      that window's stored features (``train_soundscapes/X.ogg@15``)
``class:CODE``              every stored window of the focal clips (``train_audio``) of class CODE
``head:HEAD_ID:CODE``       not examples: a trained head's probability of CODE ranks the windows (alone)
==========================  ==================================================================

Similarity is the cosine (rows L2-normalised) between a window's pooled features and each example;
several examples combine by the ``mean`` (default) or the ``max`` of their similarities. The query's own
windows are never returned.

Exact search, in two steps (:func:`search`):

1. a scan of every stored window in chunks, in float32 from a float16 copy of the L2-normalised rows
   (:class:`VectorCache`: contiguous ``.npy`` files per view and pooling under ``<store>/search_cache/``, built
   once from :func:`embed.features.load_window_features` at the most recently written extractor versions and
   rebuilt whenever the view's part files change, written atomically); a scanned cosine is within
   :data:`SCAN_EPS` of the exact one (float16 rounding, |x| = |q| = 1);
2. the best candidates, with every window whose scanned score is within ``2 * SCAN_EPS`` of the last one, are
   re-scored exactly (float64 cosines of the pooled rows exactly as ``load_window_features`` returns them, which
   the cache also keeps) and walked in exact-score order through the caps (``per_file``, ``per_site``). The
   candidate set grows until the last hit kept scores at least ``t - SCAN_EPS`` (``t``: the scanned score of
   the last candidate), which proves no window outside it could have ranked: the hits are the exact top-k of
   the float64 cosines under the filters and caps, ties broken by window id.

The cache costs disk: 2 bytes per value for the scan copy plus the exact copy (2 bytes per value when every
pooled value is a float16 - one frame per window, or max pooling - else 4): 4-6 GB for 1M windows x 1,024.
Building it decodes every stored row once (minutes at 1M windows); ``use_cache=False`` builds the same
matrices in memory for one query and writes nothing.

A ``head:`` query reads the head's own view, pooling and extractor versions, and scores every candidate
window (in chunks of whole files) with the mean of the head's fold models' probabilities: exact, no cache.

Filters (``where``): one SQL boolean over :data:`SEARCH_COLUMNS` (the store's ``windows`` table joined
with ``soundscapes``: site, date and hour are parsed from soundscape names; NULL for focal clips).
``exclude_labelled`` skips every window of the store's ``window_labels`` view (expert soundscape labels
and the focal clips' train.csv labels) and, when the table exists, of ``user_labels``.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.features import POOLINGS, load_window_features, resolve_version
from embed.registry import split_views
from featurestore.errors import DataError, StoreError, UserInputError
from featurestore.progress import NoProgress
from featurestore.windows import AUDIO_SOURCES, FOCAL

if TYPE_CHECKING:
    from featurestore.store import FeatureStore

SEARCH_COLUMNS = ("window_id", "source", "filename", "start_s", "site", "date", "hour")
COMBINES = ("mean", "max")
CACHE_DIR = "search_cache"
SCAN_CHUNK_ROWS = 16384                 # rows converted float16 -> float32 at a time (64 MB at 1,024 dims)
BUILD_CHUNK_WINDOWS = 262144            # windows per load_window_features call building the cache (1 GB float32)
HEAD_CHUNK_WINDOWS = 32768              # windows scored per chunk of a head query
# |scanned - exact| cosine bound for unit vectors: float16 rounding of each normalised value (relative 2^-11,
# so at most 2^-11 * |x| * |q| by Cauchy-Schwarz) plus float32 accumulation over the dimensions; 2x margin
SCAN_EPS = 1e-3
OVERFETCH = 4                           # first candidate pool: OVERFETCH * k * (per-file cap slack)
USER_LABELS = "user_labels"


# ---------------------------------------------------------------------------- parameters and results
@dataclass(frozen=True)
class SearchParams:
    """How a search ranks and filters. ``per_file`` / ``per_site``: at most this many hits from one audio file /
    one site (None: no cap; focal clips have no site); ``where``: SQL over :data:`SEARCH_COLUMNS`."""

    k: int = 50
    combine: str = "mean"
    pooling: str = "mean"
    where: str | None = None
    per_file: int | None = 2
    per_site: int | None = None
    exclude_labelled: bool = False

    def check(self) -> SearchParams:
        if self.k < 1:
            raise UserInputError(f"k must be >= 1 (got {self.k})")
        if self.combine not in COMBINES:
            raise UserInputError(f"unknown combine {self.combine!r}; use one of {', '.join(COMBINES)}")
        if self.pooling not in POOLINGS:
            raise UserInputError(f"unknown pooling {self.pooling!r}; use one of {', '.join(POOLINGS)}")
        for name in ("per_file", "per_site"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UserInputError(f"{name} must be >= 1 (or none for no cap; got {value})")
        return self


@dataclass(frozen=True)
class QueryItem:
    """One parsed query item: ``kind`` is audio | window | class | head."""

    text: str
    kind: str
    path: Path | None = None        # audio
    offset_s: float = 0.0           # audio
    window_id: str | None = None    # window
    label: str | None = None        # class, head
    head_id: str | None = None      # head


@dataclass
class Hit:
    rank: int
    window_id: str
    source: str
    filename: str
    start_s: int
    site: str | None
    date: object
    hour: int | None
    score: float
    best_query: str


@dataclass
class SearchResult:
    """The hits, best first, and what was searched: ``examples`` maps each query item's text to the window ids
    (or ``path@offset``) of its examples; ``scanned`` the windows that passed the filters."""

    query: list[QueryItem]
    features: str
    versions: dict[str, str]
    params: SearchParams
    hits: list[Hit]
    scanned: int
    examples: dict[str, list[str]] = field(default_factory=dict)
    cache: str = ""                 # the cache file scanned ("" for a head query or an in-memory matrix)


# ---------------------------------------------------------------------------- query parsing
_AUDIO_RE = re.compile(r"^(?P<path>.+)@(?P<offset>\d+(?:\.\d+)?)$")


def parse_query(texts: Sequence[str], store: FeatureStore) -> list[QueryItem]:
    """Parse the ``--query`` items: ``class:CODE``, ``head:HEAD_ID:CODE``, a stored window id, or an audio
    file ``path@offset`` (seconds). A window id is tried before a file path; an item that is neither is
    refused naming both forms. A ``head:`` item must be alone."""
    if not texts:
        raise UserInputError("no query: give --query class:CODE, a stored window id, clip.ogg@OFFSET or "
                             "head:HEAD_ID:CODE")
    items = []
    for text in texts:
        text = text.strip()
        if text.startswith("class:"):
            items.append(QueryItem(text, "class", label=text.removeprefix("class:")))
        elif text.startswith("head:"):
            head_id, _, label = text.removeprefix("head:").partition(":")
            if not head_id or not label:
                raise UserInputError(f"query {text!r}: write a head query as head:HEAD_ID:CLASS_CODE")
            items.append(QueryItem(text, "head", head_id=head_id, label=label))
        elif _is_stored_window(store, text):
            items.append(QueryItem(text, "window", window_id=text))
        else:
            m = _AUDIO_RE.match(text)
            if m is None:
                raise UserInputError(f"query {text!r} is neither a stored window id nor an audio file with an "
                                     "offset (clip.ogg@12.5), class:CODE or head:HEAD_ID:CODE")
            path = Path(m["path"]).expanduser()
            if not path.is_file():
                looks_stored = m["path"].split("/", 1)[0] in AUDIO_SOURCES
                what = "window id is not in the store's windows table" if looks_stored else "audio file not found"
                raise UserInputError(f"query {text!r}: {what} ({path}); list windows with python -m pipelines.sql "
                                     f"--store {store.root} -c \"SELECT window_id FROM windows LIMIT 20\"")
            items.append(QueryItem(text, "audio", path=path, offset_s=float(m["offset"])))
    if any(i.kind == "head" for i in items) and len(items) > 1:
        raise UserInputError("a head:HEAD_ID:CODE query ranks by the head's score and must be the only --query")
    return items


def _is_stored_window(store: FeatureStore, text: str) -> bool:
    if "@" not in text or text.split("/", 1)[0] not in AUDIO_SOURCES:
        return False
    return store.first("SELECT 1 FROM windows WHERE window_id = ?", [text]) is not None


# ---------------------------------------------------------------------------- candidate windows
def windows_sql() -> str:
    """The relation of :data:`SEARCH_COLUMNS`: every window with its soundscape's site, date and hour."""
    return ("SELECT w.window_id, w.source, w.filename, w.start_s, s.site, s.date, s.hour FROM windows w "
            "LEFT JOIN soundscapes s ON s.source_file = w.source || '/' || w.filename")


def _excluded_sql(store: FeatureStore, exclude_labelled: bool) -> str | None:
    parts = ["SELECT window_id FROM _search_examples"]
    if exclude_labelled:
        tables = set(store.table_names())
        if "window_labels" in tables:
            parts.append("SELECT window_id FROM window_labels")
        if USER_LABELS in tables:
            parts.append(f"SELECT window_id FROM {USER_LABELS}")
    return " UNION ".join(parts)


def _filtered_sql(store: FeatureStore, params: SearchParams) -> str:
    where = f"WHERE ({params.where})" if params.where and params.where.strip() else ""
    return (f"SELECT * FROM ({windows_sql()}) {where} "
            f"{'AND' if where else 'WHERE'} window_id NOT IN ({_excluded_sql(store, params.exclude_labelled)})")


def _run_filter(store: FeatureStore, query: str, params: SearchParams, args: list | None = None):
    import duckdb

    try:
        return store.sql(query, args)
    except duckdb.Error as exc:
        if params.where:
            first = str(exc).strip().splitlines()[0]
            raise UserInputError(f"--where {params.where!r} is not a valid SQL condition over the columns "
                                 f"{', '.join(SEARCH_COLUMNS)} ({first})") from None
        raise


def _check_store(store: FeatureStore) -> None:
    tables = set(store.table_names())
    for name in ("windows", "soundscapes"):
        if name not in tables:
            raise StoreError(f"{store.root} has no {name} table; run python -m pipelines.ingest --data DIR "
                             f"--store {store.root} first")


# ---------------------------------------------------------------------------- the float16 cache
def _normalise(X: np.ndarray) -> np.ndarray:
    """Rows of X over their L2 norm, float64 (a zero row stays zero: cosine 0 with everything)."""
    X = np.asarray(X, np.float64)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.where(norms > 0, norms, 1.0)


CACHE_FORMAT = 1


def _fingerprint(store: FeatureStore, features: str, pooling: str) -> str:
    """What a cache was built from: the view, the pooling and every part file (name, size, mtime) of the view's
    tables. Equal fingerprints give the same stored versions and rows (the versions are resolved from them)."""
    import hashlib

    h = hashlib.sha1()
    h.update(json.dumps([CACHE_FORMAT, features, pooling]).encode())
    for table in sorted({spec.table for spec in split_views(features)}):
        for part in sorted(store.part_files(table)):
            st = part.stat()
            h.update(f"{table}\0{part.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


@dataclass
class VectorCache:
    """One view at fixed extractor versions and pooling, every window with features (ids sorted):
    ``vectors[i]`` its L2-normalised row in float16 (the scan), ``exact[i]`` its pooled row exactly as
    :func:`embed.features.load_window_features` returns it (float32; float16 when every row is exactly a float16,
    e.g. one frame per window or max pooling). ``ids_path``: the ids' Parquet file (row, window_id), or ``ids``
    in memory; ``path`` is "" for a matrix held in memory only."""

    vectors: np.ndarray
    exact: np.ndarray
    versions: dict[str, str]
    ids_path: Path | None = None
    ids: list[str] | None = None
    path: str = ""

    def __len__(self) -> int:
        return len(self.vectors)

    def ids_sql(self) -> str:
        from featurestore.store import sql_str

        return f"read_parquet({sql_str(str(self.ids_path))})" if self.ids_path is not None else "_search_ids"

    def rows_of(self, store: FeatureStore, window_ids: Sequence[str]) -> dict[str, int]:
        """Row of each of ``window_ids`` that has features (the others are left out)."""
        if self.ids is not None:
            at = {w: i for i, w in enumerate(self.ids)}
            return {w: at[w] for w in window_ids if w in at}
        import pyarrow as pa

        store.con.register("_search_lookup", pa.table({"window_id": pa.array(list(window_ids), pa.string())}))
        try:
            rows = store.rows(f"SELECT c.window_id, c.row FROM {self.ids_sql()} c JOIN _search_lookup USING (window_id)")
        finally:
            store.con.unregister("_search_lookup")
        return {w: int(r) for w, r in rows}


def _cache_folder(store: FeatureStore, features: str, pooling: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", features)
    return Path(store.root) / CACHE_DIR / f"{safe}-{pooling}"


def _stored_ids(store: FeatureStore, features: str, versions: dict[str, str]) -> list[str]:
    """Window ids with features in every view of ``features`` at ``versions``, sorted."""
    from featurestore.store import sql_str

    selects = []
    for spec in split_views(features):
        glob = sql_str(store.part_glob(spec.table))
        selects.append(f"SELECT DISTINCT window_id FROM read_parquet({glob}, union_by_name = true) "
                       f"WHERE extractor_version = {sql_str(versions[spec.extractor])}")
    return store.sql(" INTERSECT ".join(selects) + " ORDER BY 1").column(0).to_pylist()


def load_vectors(store: FeatureStore, features: str, pooling: str, *, use_cache: bool = True,
                 progress: Callable[[int], object] | None = None,
                 on_total: Callable[[int], object] | None = None) -> VectorCache:
    """The :class:`VectorCache` of a view at its most recently written extractor versions: read from
    ``<store>/search_cache/`` when its fingerprint (:func:`_fingerprint`) matches, else built from
    :func:`embed.features.load_window_features` in chunks of :data:`BUILD_CHUNK_WINDOWS` and written there
    atomically (files named by the fingerprint, the manifest replaced last, older files removed afterwards; a
    reader never sees a half-written file). ``use_cache=False`` or a store folder this process cannot write:
    built in memory, nothing written. ``progress(n)`` counts windows built. :class:`StoreError` ("run
    pipelines.embed") when the view has no stored features."""
    import pyarrow as pa

    from featurestore.store import write_json_atomic, write_parquet_atomic

    fp = _fingerprint(store, features, pooling)
    folder = _cache_folder(store, features, pooling)
    manifest = folder / "manifest.json"
    names = {k: folder / f"{k}-{fp}.{ext}" for k, ext in (("vectors", "npy"), ("exact", "npy"), ("ids", "parquet"))}
    if use_cache and manifest.exists():
        try:
            meta = json.loads(manifest.read_text())
        except (OSError, json.JSONDecodeError):
            meta = {}
        if meta.get("fingerprint") == fp and all(p.exists() for p in names.values()):
            return VectorCache(np.load(names["vectors"], mmap_mode="r"), np.load(names["exact"], mmap_mode="r"),
                               dict(meta["versions"]), names["ids"], None, str(names["vectors"]))
    versions = {spec.extractor: resolve_version(store, spec.extractor) for spec in split_views(features)}
    ids = _stored_ids(store, features, versions)
    if on_total is not None:
        on_total(len(ids))
    writable = use_cache and _writable(Path(store.root))
    tag = uuid.uuid4().hex[:8]
    tmp = {k: folder / f".{k}-{fp}-{tag}.npy" for k in ("vectors", "exact", "exact16")}
    vectors = exact = None
    lossless = True
    try:
        for a in range(0, max(1, len(ids)), BUILD_CHUNK_WINDOWS):
            chunk = ids[a:a + BUILD_CHUNK_WINDOWS]
            if chunk:
                got, X, _, _ = load_window_features(store, features, pooling, window_ids=chunk, versions=versions)
                if got != chunk:
                    raise StoreError(f"{features} features changed while the search cache was built (window "
                                     f"{chunk[0]}..); run the search again")
            else:
                X = np.zeros((0, 0), np.float32)
            if vectors is None:
                shape = (len(ids), X.shape[1])
                if writable:
                    folder.mkdir(parents=True, exist_ok=True)
                    vectors = np.lib.format.open_memmap(tmp["vectors"], "w+", np.float16, shape)
                    exact = np.lib.format.open_memmap(tmp["exact"], "w+", np.float32, shape)
                else:
                    vectors, exact = np.empty(shape, np.float16), np.empty(shape, np.float32)
            exact[a:a + len(chunk)] = X
            vectors[a:a + len(chunk)] = _normalise(X).astype(np.float16)
            lossless = lossless and np.array_equal(X.astype(np.float16).astype(np.float32), X, equal_nan=True)
            if progress is not None:
                progress(len(chunk))
        if not writable:
            return VectorCache(vectors, exact, versions, None, ids)
        if lossless:       # every row is a float16 row: keep the exact copy at half the size
            small = np.lib.format.open_memmap(tmp["exact16"], "w+", np.float16, exact.shape)
            for a in range(0, len(exact), BUILD_CHUNK_WINDOWS):
                small[a:a + BUILD_CHUNK_WINDOWS] = exact[a:a + BUILD_CHUNK_WINDOWS]
            small.flush()
            del small
            tmp["exact"].unlink()
            tmp["exact"] = tmp.pop("exact16")
        vectors.flush()
        exact.flush()
        del vectors, exact
        write_parquet_atomic(pa.table({"row": pa.array(np.arange(len(ids)), pa.int64()),
                                       "window_id": pa.array(ids, pa.string())}), names["ids"])
        for k in ("vectors", "exact"):
            os.replace(tmp.pop(k), names[k])
        write_json_atomic(manifest, {"fingerprint": fp, "features": features, "pooling": pooling,
                                     "versions": versions, "windows": len(ids), "exact_dtype":
                                     "float16" if lossless else "float32"})
        for old in folder.iterdir():
            if fp not in old.name and not old.name.startswith(".") and old.name != manifest.name:
                old.unlink(missing_ok=True)
        return VectorCache(np.load(names["vectors"], mmap_mode="r"), np.load(names["exact"], mmap_mode="r"),
                           versions, names["ids"], None, str(names["vectors"]))
    finally:
        for path in tmp.values():
            path.unlink(missing_ok=True)


def _writable(root: Path) -> bool:
    folder = root / CACHE_DIR
    return os.access(folder if folder.exists() else root, os.W_OK)


def scan(vectors: np.ndarray, Q: np.ndarray, combine: str, rows: np.ndarray | None = None, *,
         threads: int = 2, progress: Callable[[int], object] | None = None) -> np.ndarray:
    """Scanned scores (float32) of every row of ``vectors`` (float16, normalised) against the unit examples
    ``Q`` [m, d]: the mean (one vector, the examples' mean) or the max of the m cosines. ``rows`` (bool mask):
    rows outside it score -inf. ``threads`` threads each convert :data:`SCAN_CHUNK_ROWS` rows at a time into
    their own reused float32 buffer (numpy's float16 -> float32 copy and the product release the GIL) with
    BLAS on one thread (:func:`models.heads.one_blas_thread`: BLAS's own threads only contend with them)."""
    from models.heads import one_blas_thread

    Qm = (Q.mean(axis=0, keepdims=True) if combine == "mean" else Q).astype(np.float32).T.copy()
    n = len(vectors)
    out = np.empty(n, np.float32)
    starts = list(range(0, n, SCAN_CHUNK_ROWS))
    local = threading.local()

    def one(a: int) -> int:
        b = min(n, a + SCAN_CHUNK_ROWS)
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty((min(n, SCAN_CHUNK_ROWS), vectors.shape[1]), np.float32)
        x = buf[:b - a]
        np.copyto(x, vectors[a:b])
        block = x @ Qm
        out[a:b] = block[:, 0] if block.shape[1] == 1 else block.max(axis=1)
        return b - a

    with one_blas_thread(), concurrent.futures.ThreadPoolExecutor(max(1, threads)) as pool:
        for done in pool.map(one, starts):
            if progress is not None:
                progress(done)
    if rows is not None:
        out[~rows] = -np.inf
    return out


# ---------------------------------------------------------------------------- examples
def _stored_examples(store: FeatureStore, items: list[QueryItem]) -> dict[int, list[str]]:
    """The stored example windows of each window or class item (checked before any long work)."""
    return {i: [item.window_id] if item.kind == "window" else _class_windows(store, item.label)
            for i, item in enumerate(items) if item.kind in ("window", "class")}


def _examples(store: FeatureStore, items: list[QueryItem], stored: dict[int, list[str]], cache: VectorCache,
              features: str, pooling: str) -> tuple[np.ndarray, list[int], dict[str, list[str]]]:
    """Unit example vectors (float64 [m, d]), the query item each came from, and each item's example names
    (stored rows from the cache's exact copy; audio embedded now)."""
    blocks, owner, names = [], [], {}
    for i, item in enumerate(items):
        if item.kind == "audio":
            blocks.append(_embed_audio(store, item, features, cache.versions, pooling))
            owner.append(i)
            names[item.text] = [f"{item.path}@{item.offset_s:g}"]
    for i, wanted in stored.items():
        rows = cache.rows_of(store, wanted)
        got = [w for w in wanted if w in rows]
        if not got:
            raise StoreError(f"query {items[i].text!r}: no stored {features} features at version "
                             f"{', '.join(cache.versions.values())} for its window(s) (e.g. {wanted[0]}); run python "
                             f"-m pipelines.embed --store {store.root} --extractor "
                             f"{','.join(dict.fromkeys(e.split(':', 1)[0] for e in cache.versions))}")
        blocks.append(np.asarray(cache.exact[[rows[w] for w in got]], np.float64))
        owner.extend([i] * len(got))
        names[items[i].text] = got
    return _normalise(np.vstack(blocks)), owner, names


def _class_windows(store: FeatureStore, label: str) -> list[str]:
    known = [r[0] for r in store.rows("SELECT primary_label FROM taxonomy ORDER BY 1")]
    if label not in known:
        close = [k for k in known if label.lower() in k.lower()][:5]
        raise UserInputError(f"unknown class {label!r}" + (f" (did you mean {', '.join(close)}?)" if close else "")
                             + f"; list the classes with python -m pipelines.sql --store {store.root} -c "
                               "\"SELECT primary_label, common_name FROM taxonomy\"")
    ids = [r[0] for r in store.rows(
        f"SELECT w.window_id FROM windows w JOIN recordings r ON w.source = '{FOCAL}' AND w.filename = r.filename "
        "WHERE r.primary_label = ? ORDER BY 1", [label])]
    if not ids:
        raise DataError(f"class {label!r} has no focal clips (train_audio) in {store.root} to search with; "
                        "give example windows or audio instead")
    return ids


def _embed_audio(store: FeatureStore, item: QueryItem, features: str, versions: dict[str, str],
                 pooling: str) -> np.ndarray:
    """The query window of an audio file, embedded by the stored versions' extractors (a changed model file
    or extractor code is refused: :func:`embed.registry.rebuild` raises BundleError)."""
    import soundfile as sf

    from embed.features import embed_file_views, extractors_from_store

    try:
        duration = sf.info(str(item.path)).duration
    except Exception as exc:  # soundfile raises several types for unreadable input
        from embed.audio import unreadable_audio

        raise unreadable_audio(item.path, exc) from exc
    if item.offset_s >= duration:
        raise UserInputError(f"query {item.text!r}: offset {item.offset_s:g} s is past the end of {item.path} "
                             f"({duration:.2f} s)")
    extractors = extractors_from_store(store, versions)
    got = embed_file_views(item.path, extractors, [(features, pooling)], soundscape=False,
                           window_starts=[item.offset_s])
    return got[(features, pooling)][1][:1]


# ---------------------------------------------------------------------------- search
def search(store: FeatureStore, features: str, query: Sequence[str], params: SearchParams = SearchParams(), *,
           use_cache: bool = True, threads: int = 2, bars: Callable[[str, str], object] | None = None,
           ) -> SearchResult:
    """Search the store's windows (module docstring). ``features``: a view as ``load_window_features`` takes it
    (``birdnet``, ``perch``, ``custom:<name>``; comma-joined views concatenate). ``bars(description, unit)``:
    a progress-bar factory (:class:`pipelines._cli.PlannedProgress`: a context manager with ``start(total)`` and
    ``update(n)``), one bar per long step (building the cache, the scan, a head's scoring). Raises :class:`UserInputError` for a bad
    query, class, where or parameter, :class:`StoreError` when the features are not embedded."""
    import pyarrow as pa

    params = params.check()
    bars = bars or NoProgress
    _check_store(store)
    items = parse_query(list(query), store)
    if items[0].kind == "head":
        return _search_head(store, items, params, bars)
    split_views(features)
    stored = _stored_examples(store, items)
    example_ids = [w for ids in stored.values() for w in ids]
    store.con.register("_search_examples", pa.table({"window_id": pa.array(example_ids, pa.string())}))
    registered_ids = False
    try:
        _run_filter(store, f"SELECT * FROM ({_filtered_sql(store, params)}) LIMIT 0", params)   # bad SQL: before any work
        what = "search cache" if use_cache else "features read"
        with bars(f"{what} of {features} (float16)", "window") as bar:
            cache = load_vectors(store, features, params.pooling, use_cache=use_cache, progress=bar.update,
                                 on_total=bar.start)
        if cache.ids is not None:
            store.con.register("_search_ids", pa.table({"row": pa.array(np.arange(len(cache.ids)), pa.int64()),
                                                        "window_id": pa.array(cache.ids, pa.string())}))
            registered_ids = True
        Q, owner, names = _examples(store, items, stored, cache, features, params.pooling)
        filtered = f"SELECT c.row, f.* FROM {cache.ids_sql()} c JOIN ({_filtered_sql(store, params)}) f USING (window_id)"
        rows = _run_filter(store, f"SELECT row FROM ({filtered})", params).column(0).to_numpy()
        mask = np.zeros(len(cache), bool)
        mask[rows] = True
        with bars(f"scan {features}", "window") as bar:
            bar.start(len(cache))
            scores = scan(cache.vectors, Q, params.combine, mask, threads=threads, progress=bar.update)
        hits = _exact_top(store, filtered, cache, params, Q, owner, items, scores)
    finally:
        store.con.unregister("_search_examples")
        if registered_ids:
            store.con.unregister("_search_ids")
    return SearchResult(items, features, cache.versions, params, hits, int(mask.sum()), names, cache.path)


def _rows_meta(store: FeatureStore, filtered: str, rows: list[int]) -> dict[int, dict]:
    """The :data:`SEARCH_COLUMNS` of some cache rows (``filtered``: the query of the rows that passed)."""
    import pyarrow as pa

    store.con.register("_search_cand", pa.table({"row": pa.array(rows, pa.int64())}))
    try:
        table = store.sql(f"SELECT * FROM ({filtered}) WHERE row IN (SELECT row FROM _search_cand)")
    finally:
        store.con.unregister("_search_cand")
    return {r.pop("row"): r for r in table.to_pylist()}


def _exact_top(store: FeatureStore, filtered: str, cache: VectorCache, params: SearchParams, Q: np.ndarray,
               owner: list[int], items: list[QueryItem], scores: np.ndarray) -> list[Hit]:
    """The capped top-k by exact float64 cosine (module docstring, step 2)."""
    n_ok = int(np.isfinite(scores).sum())
    slack = max(1, params.k if params.per_file is None else -(-params.k // params.per_file) * params.per_file)
    want = min(n_ok, OVERFETCH * max(params.k, slack))
    exact: dict[int, tuple[float, int]] = {}
    meta: dict[int, dict] = {}
    while True:
        if want == 0:
            return []
        top = np.argpartition(-scores, want - 1)[:want]
        t = float(scores[top].min())
        new = sorted(set(np.flatnonzero(scores >= t - 2 * SCAN_EPS).tolist()) - set(exact))
        if new:
            meta.update(_rows_meta(store, filtered, new))
            sims = _normalise(cache.exact[new]) @ Q.T
            per_item = np.full((len(new), len(items)), -np.inf)
            for j, o in enumerate(owner):
                per_item[:, o] = np.maximum(per_item[:, o], sims[:, j])
            combined = sims.mean(axis=1) if params.combine == "mean" else sims.max(axis=1)
            for r, s, best in zip(new, combined.tolist(), per_item.argmax(axis=1).tolist(), strict=True):
                exact[r] = (s, best)
        order = sorted(exact, key=lambda r: (-exact[r][0], meta[r]["window_id"]))
        picked = capped(order, params.k, params.per_file, lambda r: meta[r]["filename"], params.per_site,
                        lambda r: meta[r]["site"])
        complete = len(picked) == params.k or len(exact) >= n_ok
        if complete and (len(exact) >= n_ok or exact[picked[-1]][0] >= t - SCAN_EPS):
            break
        want = min(n_ok, want * 2)
    return [Hit(i + 1, *(meta[r][c] for c in SEARCH_COLUMNS), exact[r][0], items[exact[r][1]].text)
            for i, r in enumerate(picked)]


def capped(order: Sequence, k: int, per_file: int | None, file_of: Callable, per_site: int | None = None,
           site_of: Callable = lambda _r: None) -> list:
    """The first ``k`` of ``order`` with at most ``per_file`` per file and ``per_site`` per (non-None) site (None:
    no cap): the search's hits and the labelling loop's search pages."""
    files: dict[str, int] = {}
    sites: dict[str, int] = {}
    out = []
    for r in order:
        f, s = file_of(r), site_of(r)
        if per_file is not None and files.get(f, 0) >= per_file:
            continue
        if per_site is not None and s is not None and sites.get(s, 0) >= per_site:
            continue
        files[f] = files.get(f, 0) + 1
        if s is not None:
            sites[s] = sites.get(s, 0) + 1
        out.append(r)
        if len(out) == k:
            break
    return out


# ---------------------------------------------------------------------------- head-score query
def _search_head(store: FeatureStore, items: list[QueryItem], params: SearchParams, bars: Callable) -> SearchResult:
    import pyarrow as pa

    from models.bundle import bundle_dir, load_bundle

    item = items[0]
    folder = bundle_dir(store.root, item.head_id)
    if not folder.is_dir():
        raise UserInputError(f"query {item.text!r}: no trained head {item.head_id} in {store.root / 'heads'}; list "
                             f"them with python -m pipelines.leaderboard --store {store.root}")
    bundle = load_bundle(folder)
    if item.label not in bundle.class_names:
        raise UserInputError(f"query {item.text!r}: unknown class {item.label!r} for head {item.head_id} "
                             f"({len(bundle.class_names)} classes, e.g. {', '.join(bundle.class_names[:5])})")
    c = bundle.class_names.index(item.label)
    spec, fv = bundle.config.frame, bundle.config.feature_versions
    store.con.register("_search_examples", pa.table({"window_id": pa.array([], pa.string())}))
    try:
        meta = _run_filter(store, f"SELECT * FROM ({_filtered_sql(store, params)}) ORDER BY window_id", params)
    finally:
        store.con.unregister("_search_examples")
    wids = meta.column("window_id").to_pylist()
    with bars(f"score windows with {item.head_id}", "window") as bar:
        bar.start(len(wids))
        scores = _head_scores(store, bundle, c, wids, bar.update)
    cols = {col: meta.column(col).to_pylist() for col in SEARCH_COLUMNS}
    at = {w: i for i, w in enumerate(wids)}
    order = sorted(scores, key=lambda w: (-scores[w], w))
    picked = capped(order, params.k, params.per_file, lambda w: cols["filename"][at[w]], params.per_site,
                    lambda w: cols["site"][at[w]])
    hits = [Hit(i + 1, *(cols[col][at[w]] for col in SEARCH_COLUMNS), scores[w], item.text)
            for i, w in enumerate(picked)]
    return SearchResult(items, spec.features, dict(fv.extractors), replace(params, pooling=fv.pooling), hits,
                        len(scores), {item.text: []})


def _head_scores(store: FeatureStore, bundle, c: int, wids: list[str], progress: Callable[[int], object]
                 ) -> dict[str, float]:
    """Mean of the bundle's fold models' probability of class ``c`` for each window of ``wids`` that has the
    head's features (sorted ids, read in chunks of whole files: context features see the whole file)."""
    from featurestore.windows import file_of
    from models.frame import add_context

    spec, fv = bundle.config.frame, bundle.config.feature_versions
    scores: dict[str, float] = {}
    a = 0
    while a < len(wids):
        b = min(len(wids), a + HEAD_CHUNK_WINDOWS)
        while b < len(wids) and file_of(wids[b]) == file_of(wids[b - 1]):   # whole files (context features)
            b += 1
        chunk = wids[a:b]
        got, X, _, _ = load_window_features(store, spec.features, fv.pooling, window_ids=chunk,
                                            versions=dict(fv.extractors))
        if got:
            if spec.context:
                X, _ = add_context(X, np.asarray(got))
            p = np.mean([h.predict_proba(X)[:, c] for h in bundle.folds], axis=0)
            scores.update(zip(got, p.astype(np.float64).tolist(), strict=True))
        progress(len(chunk))
        a = b
    return scores
