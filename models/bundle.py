"""The bundle: the folder a cross-validated head kind leaves behind, one writer and one reader.

Words: a *head kind* is a model family (``prior``, ``linear``, ...); a *Head*
(:class:`models.heads.Head`) is one fitted fold model; a *bundle* is the folder
``<store>/heads/<head_id>/`` holding everything inference needs::

    config.json          HeadConfig: head kind, parameters, frame, fold/data/feature versions, seed
    extractors.json      the stored parameters of every extractor the features came from
    fold_<k>/            one saved Head per fold (models.heads.Head.save) and
    fold_<k>/train_windows.parquet   the window ids that fold model was trained on
    record.json          written last: the fold ids and the size + sha256 of every other file

Guarantees:

* The JSON on disk is exactly what earlier versions wrote (same keys, ``config.json`` with sorted
  keys, ``feature_versions`` with a flat ``"pooling"`` key beside the extractor versions), so a
  head id - the hash of :meth:`HeadConfig.to_json` - names the same run as before.
  :meth:`HeadConfig.from_json` is the exact inverse of ``to_json``.
* :class:`BundleWriter` assembles a bundle under a hidden temporary name and renames it into place
  only after its last fold (:meth:`BundleWriter.publish`): no reader ever sees half a bundle. The
  writer is a context manager: an error inside it removes the partial folder
  ``heads/.partial-<head_id>-<pid>`` (a full disk: one :class:`~featurestore.errors.DiskFullError` naming
  the file being written) - except for a resumable writer (training), whose finished folds survive an
  error, Ctrl-C or ``kill -9`` and are taken over by the next run of the same head on the same inputs,
  so a re-run resumes at the next fold with a bit-identical result (see :class:`BundleWriter`).
* **A head folder is whole or refused.** :meth:`BundleWriter.publish` writes ``record.json`` (the
  folds written and the size + sha256 of every file) before the rename; every reader
  (:func:`load_bundle`, and for stacked heads :func:`stack.bundle.load_stack`) first checks the
  folder against it (:func:`verify_head_dir`): the ``fold_<k>`` folders are exactly the recorded
  folds, every recorded file is there with the same size and sha256, and nothing else is (no extra
  file or folder, no symlink). A missing fold, a changed byte or an added file is one
  :class:`BundleError` line naming the folder and the first difference. Nothing writes into a head
  folder after it is published. The record guards against a lost fold or a bad copy; it is not a
  signature (a bundle from a stranger is checked against the Kaggle bundle's manifest too).
* ``train_windows.parquet`` (training provenance, not needed to predict) is recorded as optional:
  a copy may leave it out (``submit.export`` does), and it is checked when present.
* A head folder written before the record existed (no ``record.json``) is refused with one line
  saying so: re-running the same train/stack command writes it again under the same head id.

Only numpy and the head code are imported here (the Kaggle inference path loads bundles without
pyarrow or duckdb; writing ``train_windows.parquet`` imports pyarrow when it happens).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from featurestore.errors import BundleError, DiskFullError
from featurestore.files import file_sha256, pid_alive, walk_tree
from models.frame import FeatureVersions, FrameSpec
from models.heads import Head, config_hash, load_head

HEADS_DIR = "heads"                      # bundles live in <store>/heads/<head_id>/
CONFIG_FILE = "config.json"
EXTRACTORS_FILE = "extractors.json"
TRAIN_WINDOWS_FILE = "train_windows.parquet"
HEAD_FILE = "head.json"                  # written by Head.save: marks a complete fold folder
RECORD_FILE = "record.json"              # the fold ids and every file's size + sha256, written by publish
RECORD_FORMAT = 1
RESUME_FILE = ".resume.npz"              # in a finished fold of a partial bundle: key, file checksums, state
INCOMPLETE_DIR = ".incomplete"           # folds being written (resumable writers), renamed out when finished
OPTIONAL_FILES = frozenset({TRAIN_WINDOWS_FILE})   # provenance: a copy may leave these out


def fold_dir_name(fold: int) -> str:
    return f"fold_{fold}"


def fold_of_dir(folder: Path) -> int:
    """The fold a ``fold_<k>`` folder holds (the inverse of :func:`fold_dir_name`)."""
    try:
        return int(folder.name.removeprefix("fold_"))
    except ValueError:
        raise BundleError(f"{folder}: not a fold folder (expected fold_<k>)") from None


def bundle_dir(store_root: str | os.PathLike, head_id: str) -> Path:
    """Where the bundle of ``head_id`` lives in a store."""
    return Path(store_root) / HEADS_DIR / head_id


@dataclass(frozen=True)
class HeadConfig:
    """What ``config.json`` holds: everything that defines one cross-validated run of a head kind.

    :attr:`head_id` (``<kind>-<hash of to_json()>``) names the run: the same inputs give the same id.
    ``subsample`` is set for the tuner's fast runs; ``feature_coverage`` and ``allow_partial`` for a
    run trained on a partial frame; ``pseudo`` for a student trained with pseudo-labels; ``user_labels``
    for a run whose frame user labels changed (the label set's digest: the same labels give the same
    head id). Each is omitted from the JSON when None, so older head ids are unchanged.
    """

    kind: str                       # head kind ("head" in the JSON)
    params: dict                    # the head kind's parameters (dataclasses.asdict of its params)
    frame: FrameSpec
    fold_version: str
    data_version: str | None
    feature_versions: FeatureVersions
    seed: int
    replay: bool
    training_version: str
    subsample: dict | None = None
    feature_coverage: dict | None = None
    allow_partial: bool | None = None
    pseudo: dict | None = None      # pseudo-labels trained on: {"version", "weight", "teacher_id", "n_windows"}
    user_labels: dict | None = None  # user labels trained on: {"digest", "n_windows"} (models.training)

    def to_json(self) -> dict:
        out = {"head": self.kind, "params": dict(self.params), "frame": asdict(self.frame),
               "fold_version": self.fold_version, "data_version": self.data_version,
               "feature_versions": self.feature_versions.to_json(), "seed": self.seed, "replay": self.replay,
               "training_version": self.training_version}
        for key in _OPTIONAL:
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    @classmethod
    def from_json(cls, data: Mapping, where: str = CONFIG_FILE) -> HeadConfig:
        if not isinstance(data, Mapping):
            raise BundleError(f"{where}: not a JSON object")
        known = set(_REQUIRED) | set(_OPTIONAL)
        unknown = sorted(set(data) - known)
        missing = sorted(set(_REQUIRED) - set(data))
        if unknown or missing:
            raise BundleError(f"{where}: unknown key(s) {unknown}, missing key(s) {missing}; known: {sorted(known)}")
        frame_fields = {f.name for f in fields(FrameSpec)}
        if not isinstance(data["frame"], Mapping) or set(data["frame"]) - frame_fields:
            raise BundleError(f"{where}: 'frame' must be an object with keys from {sorted(frame_fields)}")
        return cls(kind=data["head"], params=dict(data["params"]), frame=FrameSpec(**data["frame"]),
                   fold_version=data["fold_version"], data_version=data["data_version"],
                   feature_versions=FeatureVersions.from_json(data["feature_versions"], f"{where}: feature_versions"),
                   seed=data["seed"], replay=data["replay"], training_version=data["training_version"],
                   **{key: data.get(key) for key in _OPTIONAL})

    @property
    def head_id(self) -> str:
        return f"{self.kind}-{config_hash(self.to_json())}"


_REQUIRED = ("head", "params", "frame", "fold_version", "data_version", "feature_versions", "seed", "replay",
             "training_version")
_OPTIONAL = ("subsample", "feature_coverage", "allow_partial", "pseudo", "user_labels")


# ---------------------------------------------------------------------------- writer
class BundleWriter:
    """Writes one bundle: config and extractor parameters, then the fold Heads, then :meth:`publish`.

    Everything goes to ``heads/.partial-<head_id>-<pid>/``, which the writer holds locked (``flock``) while
    it lives, so a folder nobody holds is the remains of a stopped run. :meth:`publish` writes
    ``record.json`` and renames the folder to ``heads/<head_id>`` (replacing an older copy), so a bundle
    appears complete or not at all. Use it as a context manager; a full disk is one :class:`DiskFullError`
    naming the file being written, and the partial folder is removed.

    Without ``resume_key`` (stacked heads) an error before :meth:`publish` removes the partial folder, and
    the remains of stopped runs of the same head id are removed when a new writer starts.

    With ``resume_key`` (training: a digest of everything the fold models are computed from, see
    :func:`models.training.fold_inputs_key`) a fold is finished in one step: :meth:`add_fold` writes it to
    ``.incomplete/fold_<k>/`` with :data:`RESUME_FILE` (the key, the size + sha256 of every file of the fold
    and the caller's ``state``, e.g. its out-of-fold predictions) and then renames it to ``fold_<k>/``. An
    error or interrupt (Ctrl-C) keeps the finished folds (a full disk still removes them); a new writer of
    the same head id takes over the folder of a stopped run (Ctrl-C or ``kill -9``) and keeps exactly its
    folds whose key is the same and whose files still match their sizes and checksums: :attr:`kept` maps
    each to its ``state``, and the caller trains only the other folds. Anything else there (a half-written
    fold, a fold of other inputs) is removed. The resume files are deleted by :meth:`publish`, so a
    published bundle is byte for byte what an uninterrupted run writes. A partial folder that another
    live writer holds is never touched.
    """

    def __init__(self, heads_dir: str | os.PathLike, config: HeadConfig, extractor_params: Mapping[str, dict], *,
                 resume_key: str | None = None):
        heads_dir = Path(heads_dir)
        self.head_id = config.head_id
        self.final_dir = heads_dir / self.head_id
        self.work_dir = heads_dir / f".partial-{self.head_id}-{os.getpid()}"
        self.resume_key = resume_key
        self.fold_ids: list[int] = []
        self.kept: dict[int, dict[str, np.ndarray]] = {}   # fold -> state, folds a stopped run finished
        self._lock: int | None = None
        self._owned = False                                  # work_dir is this writer's (made or taken over)
        try:
            with self.writing(self.work_dir):
                heads_dir.mkdir(parents=True, exist_ok=True)
                self._take_over(heads_dir)
            self.write_text(CONFIG_FILE, json.dumps(config.to_json(), indent=1, sort_keys=True))
            self.write_text(EXTRACTORS_FILE, json.dumps(dict(extractor_params), indent=1))
        except BaseException as exc:
            self.__exit__(type(exc), exc, None)
            raise

    def _take_over(self, heads_dir: Path) -> None:
        """Make :attr:`work_dir`, locked: the folder of a stopped run of this head id with the most folds
        to keep (resume), else a new one; the other stopped runs' folders are removed."""
        stopped: dict[Path, int | None] = {}
        for folder in sorted(heads_dir.glob(f".partial-{self.head_id}-*")):
            held, fd = _lock_folder(folder)
            if not held:
                stopped[folder] = fd
            elif folder == self.work_dir:
                raise BundleError(f"{folder}: head {self.head_id} is being written by this process already")
        try:
            keep = {folder: self._keepable(folder) for folder in stopped} if self.resume_key is not None else {}
            base = max(keep, key=lambda f: (len(keep[f]), f == self.work_dir), default=None)
            if base is not None and not keep[base]:
                base = None
            for folder in [f for f in stopped if f != base]:
                shutil.rmtree(folder, ignore_errors=True)
                _unlock(stopped.pop(folder))
            if base is None:
                self.work_dir.mkdir()
                self._owned = True
                held, self._lock = _lock_folder(self.work_dir)
                if held:
                    self._owned = False
                    raise BundleError(f"{self.work_dir}: another run of head {self.head_id} took this folder as "
                                      "it was made; run one train command per head at a time")
            else:
                self._lock = stopped.pop(base)
                if base != self.work_dir:
                    base.rename(self.work_dir)
                self._owned = True
                self._clear_except(keep[base])
        except BaseException:
            for fd in stopped.values():
                _unlock(fd)
            raise

    def _keepable(self, folder: Path) -> dict[int, dict[str, np.ndarray]]:
        """The finished folds in a stopped run's folder that this writer may keep (see the class doc)."""
        kept = {}
        for fold_dir in folder.glob("fold_*"):
            tail = fold_dir.name.removeprefix("fold_")
            if tail.isdigit() and fold_dir.is_dir() and not fold_dir.is_symlink():
                state = _finished_fold_state(fold_dir, self.resume_key)
                if state is not None:
                    kept[int(tail)] = state
        return kept

    def _clear_except(self, kept: dict[int, dict[str, np.ndarray]]) -> None:
        """Empty the taken-over folder but for the folds kept, and note them as written."""
        keep = {fold_dir_name(k) for k in kept}
        for entry in self.work_dir.iterdir():
            if entry.name in keep:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        self.kept = dict(sorted(kept.items()))
        self.fold_ids = list(self.kept)

    def __enter__(self) -> BundleWriter:
        return self

    def __exit__(self, kind, exc, tb) -> None:
        if exc is None or not self._owned:
            self._release()
            return
        if self.resume_key is None or isinstance(exc, DiskFullError) or not self.work_dir.is_dir():
            self.discard()
        else:   # keep the finished folds for a re-run; a half-written one is of no use to it
            shutil.rmtree(self.work_dir / INCOMPLETE_DIR, ignore_errors=True)
            self._release()

    def _release(self) -> None:
        _unlock(self._lock)
        self._lock = None

    def discard(self) -> None:
        """Remove the partial folder (nothing to do once published, or when it is not this writer's)."""
        if self._owned:
            shutil.rmtree(self.work_dir, ignore_errors=True)
        self._release()

    @contextlib.contextmanager
    def writing(self, path: Path) -> Iterator[None]:
        """Turn a full disk inside the block into one :class:`DiskFullError` naming the file being
        written (the OS's file name when it gives one, else ``path``); the partial folder is removed."""
        try:
            yield
        except Exception as exc:
            from featurestore.store import is_disk_full  # pyarrow/duckdb: not on the inference path

            if isinstance(exc, DiskFullError) or not is_disk_full(exc):
                raise
            self.discard()
            raise DiskFullError(getattr(exc, "filename", None) or path, self.final_dir.parent,
                                kept=f"the partial head folder was removed (no {self.head_id} was written)") from exc

    def write_text(self, relative: str, text: str) -> Path:
        """Write one text file of the bundle (``relative`` to its folder)."""
        path = self.work_dir / relative
        with self.writing(path):
            path.write_text(text)
        return path

    def fold_folder(self, fold: int) -> Path:
        """The folder fold ``fold``'s model is written to (it is recorded as one of the bundle's folds)."""
        if fold in self.fold_ids:
            raise BundleError(f"{self.work_dir}: fold {fold} written twice")
        self.fold_ids.append(int(fold))
        return self.work_dir / fold_dir_name(fold)

    def add_fold(self, fold: int, head: Head, train_window_ids: Sequence[str] | np.ndarray,
                 pseudo_teacher_fold: Sequence[int | None] | None = None,
                 state: Mapping[str, np.ndarray] | None = None) -> Path:
        """Save the fold's Head and the ids of the windows it was trained on (for leakage audits);
        with pseudo-labels, ``pseudo_teacher_fold`` names the teacher fold model that labelled each
        pseudo-labelled window (None for labelled windows). With a ``resume_key``, ``state`` (arrays) is
        kept with the fold until :meth:`publish` and the fold appears finished in one rename (class doc)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        if fold in self.fold_ids:
            raise BundleError(f"{self.work_dir}: fold {fold} written twice")
        final = self.work_dir / fold_dir_name(fold)
        folder = self.work_dir / INCOMPLETE_DIR / fold_dir_name(fold) if self.resume_key is not None else final
        with self.writing(folder):
            shutil.rmtree(folder, ignore_errors=True)
            head.save(folder)
        columns = {"window_id": pa.array(list(train_window_ids), pa.string())}
        if pseudo_teacher_fold is not None:
            columns["pseudo_teacher_fold"] = pa.array(list(pseudo_teacher_fold), pa.int32())
        with self.writing(folder / TRAIN_WINDOWS_FILE):
            pq.write_table(pa.table(columns), folder / TRAIN_WINDOWS_FILE, compression="zstd")
        if self.resume_key is not None:
            files, _dirs, _other = walk_tree(folder)
            manifest = {rel: [size, file_sha256(folder / rel)] for rel, size in files.items()}
            arrays = {f"state_{k}": np.asarray(v) for k, v in (state or {}).items()}
            with self.writing(folder / RESUME_FILE):
                np.savez(folder / RESUME_FILE, key=np.array(self.resume_key), files=np.array(json.dumps(manifest)),
                         **arrays)
            folder.rename(final)          # the fold is finished: one atomic step
        self.fold_ids.append(int(fold))
        return final

    def publish(self) -> Path:
        """Record the folds and every file's checksum (``record.json``), then make the fully written
        bundle visible under its final name (an older copy is replaced)."""
        for fold in self.fold_ids:           # resume state: not part of the bundle
            (self.work_dir / fold_dir_name(fold) / RESUME_FILE).unlink(missing_ok=True)
        shutil.rmtree(self.work_dir / INCOMPLETE_DIR, ignore_errors=True)
        with self.writing(self.work_dir / RECORD_FILE):
            write_record(self.work_dir, self.head_id, self.fold_ids)
        if self.final_dir.exists():
            trash = self.final_dir.with_name(f".old-{self.final_dir.name}-{os.getpid()}")
            self.final_dir.rename(trash)
            self.work_dir.rename(self.final_dir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            self.work_dir.rename(self.final_dir)
        self._owned = False                  # published: nothing of it is the writer's to remove
        self._release()
        return self.final_dir


def _lock_folder(folder: Path) -> tuple[bool, int | None]:
    """``(held, fd)``: whether a live writer holds ``folder`` (``flock``), else the descriptor now locking
    it for this writer (None where the folder vanished, or the filesystem has no flock: then the pid in the
    folder's name decides)."""
    import fcntl

    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return False, None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return True, None
    except OSError:     # no flock here (some network filesystems): a live pid of this machine holds it
        os.close(fd)
        pid = folder.name.rpartition("-")[2]
        return pid.isdigit() and int(pid) != os.getpid() and pid_alive(int(pid)), None
    return False, fd


def _unlock(fd: int | None) -> None:
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)      # closing the descriptor releases its flock


def _finished_fold_state(fold_dir: Path, resume_key: str | None) -> dict[str, np.ndarray] | None:
    """The state saved with a finished fold of a partial bundle, or None when it cannot be kept: no or an
    unreadable :data:`RESUME_FILE`, another key, or a file that is not the size and sha256 written."""
    try:
        with np.load(fold_dir / RESUME_FILE, allow_pickle=False) as saved:
            if str(saved["key"]) != resume_key:
                return None
            manifest = json.loads(str(saved["files"]))
            state = {k.removeprefix("state_"): saved[k] for k in saved.files if k.startswith("state_")}
        files, _dirs, other = walk_tree(fold_dir)
        files.pop(RESUME_FILE, None)
        if other or set(files) != set(manifest):
            return None
        for rel, (size, sha) in manifest.items():
            if files[rel] != size or file_sha256(fold_dir / rel) != sha:
                return None
    except Exception:   # a torn or foreign file: the fold is trained again
        return None
    return state


# ---------------------------------------------------------------------------- the record
@dataclass(frozen=True)
class HeadRecord:
    """``record.json``: the head id, the folds written and every file's size and sha256."""

    head_id: str
    folds: tuple[int, ...]
    files: dict[str, dict]        # path relative to the head folder (posix) -> {"size", "sha256"[, "optional"]}


def write_record(folder: str | os.PathLike, head_id: str, fold_ids: Sequence[int]) -> Path:
    """Write ``record.json`` for a fully written head folder: the folds and the size + sha256 of every
    other file (:data:`OPTIONAL_FILES` marked optional). Called by :meth:`BundleWriter.publish`."""
    folder = Path(folder)
    files, _dirs, other = walk_tree(folder)
    if other:
        raise BundleError(f"{folder}: {other[0]} is not a regular file; a head folder holds only plain files")
    folds = sorted(int(k) for k in fold_ids)
    present = sorted(p.name for p in folder.glob("fold_*"))
    if present != sorted(fold_dir_name(k) for k in folds):
        raise BundleError(f"{folder}: fold folders {present} are not the folds written {folds}")
    entries: dict[str, dict] = {}
    for rel, size in files.items():
        if rel == RECORD_FILE:
            continue
        entries[rel] = {"size": size, "sha256": file_sha256(folder / rel)}
        if rel.rpartition("/")[2] in OPTIONAL_FILES:
            entries[rel]["optional"] = True
    record = {"format": RECORD_FORMAT, "head_id": head_id, "folds": folds, "files": entries}
    path = folder / RECORD_FILE
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return path


def _rerun(head_id: str, copy: bool = True) -> str:
    job = "pipelines.stack" if head_id.startswith("stack-") else "pipelines.train"
    return ("re-copy the whole folder from where it was made, or " if copy else "") + (
        f"re-run the python -m {job} command that made it (the same arguments give the same head id {head_id})")


def read_record(head_dir: Path) -> HeadRecord:
    """``record.json`` of a head folder; BundleError when it is missing (an older version's folder) or
    malformed."""
    path = head_dir / RECORD_FILE
    if not path.is_file() or path.is_symlink():
        raise BundleError(f"{head_dir}: written by an older birdclef-stack (no {RECORD_FILE}: its folds and file "
                          f"checksums were never recorded, so it cannot be checked); {_rerun(head_dir.name, copy=False)}")
    try:
        data = json.loads(path.read_text())
        record = HeadRecord(str(data["head_id"]), tuple(int(k) for k in data["folds"]),
                            {str(k): dict(v) for k, v in data["files"].items()})
        if data["format"] != RECORD_FORMAT:
            raise ValueError(f"format {data['format']!r}, this version reads {RECORD_FORMAT}")
        for rel, entry in record.files.items():
            if not isinstance(entry.get("size"), int) or not isinstance(entry.get("sha256"), str):
                raise ValueError(f"entry {rel!r} lacks size or sha256")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BundleError(f"{path}: malformed ({exc}); {_rerun(head_dir.name)}") from None
    return record


def verify_head_dir(head_dir: str | os.PathLike) -> HeadRecord:
    """Check a head folder against its ``record.json`` (see the module doc) and return the record;
    one BundleError line naming the folder and the first difference otherwise."""
    head_dir = Path(head_dir)
    record = read_record(head_dir)
    recorded_folds = {fold_dir_name(k) for k in record.folds}
    present_folds = {p.name for p in head_dir.glob("fold_*")}
    listed = ",".join(map(str, record.folds)) or "none"
    missing_folds = sorted(recorded_folds - present_folds, key=_fold_order)
    extra_folds = sorted(present_folds - recorded_folds, key=_fold_order)
    problems = [f"{name} is missing (recorded folds {listed})" for name in missing_folds]
    problems += [f"{name} is not a recorded fold (recorded folds {listed})" for name in extra_folds]

    def under(rel: str, tops: list[str]) -> bool:
        return rel.split("/", 1)[0] in tops

    files, dirs, other = walk_tree(head_dir)
    problems += [f"{rel} is a symlink or not a regular file (a head folder holds only the files training "
                 "wrote)" for rel in other if not under(rel, extra_folds)]
    recorded_dirs = set()
    for rel in record.files:
        while "/" in rel:
            rel = rel.rpartition("/")[0]
            recorded_dirs.add(rel)
    problems += [f"{rel}/ is not in {RECORD_FILE} (added after training)" for rel in dirs
                 if rel not in recorded_dirs and not under(rel, extra_folds)]
    problems += [f"{rel} is not in {RECORD_FILE} (added after training)" for rel in files
                 if rel != RECORD_FILE and rel not in record.files and not under(rel, extra_folds)]
    for rel, entry in sorted(record.files.items()):
        size = files.get(rel)
        if size is None:
            if not entry.get("optional") and not under(rel, missing_folds):
                problems.append(f"{rel} is missing")
            continue
        if size != entry["size"]:
            problems.append(f"{rel} changed since training ({size} bytes, recorded {entry['size']})")
        elif (digest := file_sha256(head_dir / rel)) != entry["sha256"]:
            problems.append(f"{rel} changed since training (sha256 {digest[:12]}..., recorded "
                            f"{entry['sha256'][:12]}...)")
    if problems:
        more = f" (and {len(problems) - 1} more difference(s))" if len(problems) > 1 else ""
        raise BundleError(f"{head_dir}: {problems[0]}{more}; {_rerun(record.head_id)}")
    return record


def _fold_order(name: str) -> tuple[int, str]:
    tail = name.removeprefix("fold_")
    return (int(tail), "") if tail.isdigit() else (1 << 30, tail)


# ---------------------------------------------------------------------------- reader
@dataclass
class HeadBundle:
    """A bundle as loaded from its folder: its config, extractor parameters and fold Heads."""

    head_id: str
    config: HeadConfig
    extractor_params: dict[str, dict]
    folds: list[Head]
    fold_ids: list[int]                  # the fold each of ``folds`` held out, ascending

    @property
    def class_names(self) -> list[str]:
        return self.folds[0].class_names


def load_bundle(head_dir: str | os.PathLike) -> HeadBundle:
    """Load the bundle in ``head_dir`` after checking it against its record (:func:`verify_head_dir`);
    BundleError naming the folder when it is incomplete, changed or malformed."""
    head_dir = Path(head_dir)
    for required in (CONFIG_FILE, EXTRACTORS_FILE):
        if not (head_dir / required).exists():
            raise BundleError(f"{head_dir}: not a trained head folder (missing {required})")
    record = verify_head_dir(head_dir)
    if not record.folds:
        raise BundleError(f"{head_dir}: no fold models")
    folds = [load_head(head_dir / fold_dir_name(k)) for k in record.folds]
    try:
        config_json = json.loads((head_dir / CONFIG_FILE).read_text())
        extractor_params = json.loads((head_dir / EXTRACTORS_FILE).read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{head_dir}: unreadable JSON ({exc})") from None
    config = HeadConfig.from_json(config_json, str(head_dir / CONFIG_FILE))
    return HeadBundle(head_dir.name, config, extractor_params, folds, list(record.folds))


def class_prior(bundle: HeadBundle) -> np.ndarray:
    """The bundle's class base rates (mean over its fold Heads), float32 in [0, 1]."""
    return np.clip(np.mean([h.prior_ for h in bundle.folds], axis=0), 0.0, 1.0).astype(np.float32)
