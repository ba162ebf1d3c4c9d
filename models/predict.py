"""Inference: audio files → the head's extractors → fold-averaged probabilities → submission rows.

Everything needed comes from the head folder (``heads/<head_id>/``): ``config.json`` (feature
views, pooling, context), ``extractors.json`` (the exact extractor parameters the head was trained
on) and the fold models. An extractor that would now produce a different version (another model
file, other code) is refused rather than silently mixed. Only numpy, scipy, soundfile,
ai-edge-litert, lightgbm and scikit-learn are imported on this path.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurestore.store import StoreError
from models.frame import add_context
from models.heads import Head, load_head

AUDIO_SUFFIXES = (".ogg", ".flac", ".wav", ".mp3")
EXTRACTORS_FILE = "extractors.json"


@dataclass
class HeadBundle:
    """A trained head as loaded from its folder."""

    head_id: str
    config: dict
    extractor_params: dict[str, dict]
    folds: list[Head]

    @property
    def class_names(self) -> list[str]:
        return self.folds[0].class_names


def load_bundle(head_dir: str | os.PathLike) -> HeadBundle:
    head_dir = Path(head_dir)
    for required in ("config.json", EXTRACTORS_FILE):
        if not (head_dir / required).exists():
            raise StoreError(f"{head_dir}: not a trained head folder (missing {required})")
    folds = [load_head(p) for p in sorted(head_dir.glob("fold_*")) if (p / "head.json").exists()]
    if not folds:
        raise StoreError(f"{head_dir}: no fold models")
    return HeadBundle(head_dir.name, json.loads((head_dir / "config.json").read_text()),
                      json.loads((head_dir / EXTRACTORS_FILE).read_text()), folds)


def build_extractors(bundle: HeadBundle, **runtime) -> list:
    """Rebuild the head's extractors; refuse any whose version differs from training."""
    from embed.extractors import extractor_from_params

    trained = {k: v for k, v in bundle.config["feature_versions"].items() if k != "pooling"}
    out = []
    for name, version in sorted(trained.items()):
        params = bundle.extractor_params.get(name)
        if params is None:
            raise StoreError(f"head {bundle.head_id}: no parameters recorded for extractor {name!r}")
        extractor = extractor_from_params(params, **runtime)
        if extractor.version != version:
            raise StoreError(f"head {bundle.head_id} was trained on {name} features version {version}, but this "
                             f"machine's {name} extractor is version {extractor.version} (model file or code "
                             "changed); re-embed and retrain, or restore the original model")
        out.append(extractor)
    return out


def file_window_ids(path: Path, starts: np.ndarray) -> tuple[list[str], list[str]]:
    """(window ids for context features, competition row ids) of a soundscape's windows."""
    ids = [f"{path.name}@{int(s)}" for s in starts]
    return ids, [f"{path.stem}_{int(s) + 5}" for s in starts]


def predict_file(path: Path, bundle: HeadBundle, extractors: list) -> tuple[list[str], np.ndarray]:
    """Row ids and fold-averaged probabilities (windows × head classes) of one audio file."""
    from embed.features import embed_file

    frame = bundle.config["frame"]
    view = frame["features"]
    starts, X = embed_file(path, extractors, soundscape=True, views=[view], pooling=frame["pooling"])[view]
    ids, row_ids = file_window_ids(path, starts)
    if frame.get("context"):
        X, _ = add_context(X, np.asarray(ids))
    probs = np.mean([head.predict_proba(X) for head in bundle.folds], axis=0)
    return row_ids, probs.astype(np.float32)


def prior_rows(path: Path, bundle: HeadBundle) -> tuple[list[str], np.ndarray]:
    """Fallback for an undecodable file: 12 rows of the class prior, so the submission stays complete."""
    starts = np.arange(12) * 5
    _, row_ids = file_window_ids(path, starts)
    prior = np.mean([h.prior_ for h in bundle.folds], axis=0)
    return row_ids, np.tile(prior.astype(np.float32), (len(starts), 1))


_WORKER: dict = {}


def _init_worker(head_dir: str, runtime: dict) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    bundle = load_bundle(head_dir)
    _WORKER.update(bundle=bundle, extractors=build_extractors(bundle, **runtime))


def _predict_one(path: str) -> tuple[str, list[str], np.ndarray, str | None]:
    bundle = _WORKER["bundle"]
    try:
        row_ids, probs = predict_file(Path(path), bundle, _WORKER["extractors"])
        return path, row_ids, probs, None
    except Exception as exc:  # any decode/model failure of one file must not sink the submission
        row_ids, probs = prior_rows(Path(path), bundle)
        return path, row_ids, probs, f"{path}: {type(exc).__name__}: {exc} (wrote the class prior for its rows)"


def iter_predictions(head_dir: Path, files: list[Path], workers: int, runtime: dict) -> Iterator[tuple]:
    """(path, row_ids, probs, error) per file, in file order."""
    if workers <= 1 or len(files) <= 1:
        _init_worker(str(head_dir), runtime)
        yield from map(_predict_one, map(str, files))
        return
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(min(workers, len(files)), initializer=_init_worker, initargs=(str(head_dir), runtime)) as pool:
        yield from pool.imap(_predict_one, map(str, files), chunksize=1)


def list_audio(audio_dir: str | os.PathLike) -> list[Path]:
    audio_dir = Path(audio_dir)
    if not audio_dir.is_dir():
        raise StoreError(f"audio folder {audio_dir} not found")
    return sorted(p for p in audio_dir.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())


def predict_audio(head_dir: str | os.PathLike, audio_dir: str | os.PathLike, columns: list[str], *,
                  workers: int = 1, runtime: dict | None = None,
                  progress: Callable[[int], object] | None = None,
                  on_start: Callable[[int], object] | None = None) -> tuple[list[str], np.ndarray, list[str]]:
    """Predict every audio file; returns (row_ids, probs in ``columns`` order, per-file errors).

    ``on_start(n_files)`` is called once every input is checked, before any file is decoded.
    """
    head_dir = Path(head_dir)
    bundle = load_bundle(head_dir)
    missing = [c for c in columns if c not in bundle.class_names]
    if missing:
        raise StoreError(f"submission columns {missing[:5]} are not classes of head {bundle.head_id}")
    order = [bundle.class_names.index(c) for c in columns]
    build_extractors(bundle, **(runtime or {}))  # fail fast on a version mismatch, before any work
    files = list_audio(audio_dir)
    if not files:
        raise StoreError(f"no audio files in {audio_dir}")
    if on_start:
        on_start(len(files))
    row_ids: list[str] = []
    blocks: list[np.ndarray] = []
    errors: list[str] = []
    for _, ids, probs, error in iter_predictions(head_dir, files, workers, runtime or {}):
        row_ids += ids
        blocks.append(probs[:, order])
        if error:
            errors.append(error)
        if progress:
            progress(1)
    return row_ids, np.vstack(blocks), errors
