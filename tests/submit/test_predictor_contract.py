"""The predictor contract: a single head and a stacked head answer the same calls the same way
(:class:`submit.predict.Predictor`), checked on the session's trained demo heads and real demo soundscapes.

For each: the protocol's members; ``predict_file`` equals ``rows_from_features`` on the file's embedded
views and is deterministic; rows have the width of ``prior`` and the windows of the file's grid;
``finish`` maps all files' rows to (windows, classes) probabilities in [0, 1], gives ``output_prior`` to rows
without usable audio and leaves the usable rows' numbers as they are without them; ``predict_audio``
(what predict and the notebook run) equals ``finish`` over ``predict_file`` of every file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embed.features import embed_file_views
from models.bundle import HEADS_DIR
from submit.predict import Predictor, file_rows, open_predictor, predict_audio
from submit.submission import expected_row_ids, file_window_ids, list_audio

KINDS = ("linear", "lgbm", "stack")


@pytest.fixture(scope="module")
def heads(demo_trained) -> dict[str, Path]:
    root = demo_trained.store / HEADS_DIR
    return {"linear": root / demo_trained.head("linear"), "lgbm": root / demo_trained.head("lgbm"),
            "stack": demo_trained.stack.bundle_dir}


@pytest.fixture(scope="module")
def files(demo_data: Path) -> list[Path]:
    return list_audio(demo_data / "test_soundscapes")[:2]


@pytest.fixture(scope="module", params=KINDS)
def predictor(request, heads: dict[str, Path]) -> tuple[str, Predictor]:
    return request.param, open_predictor(heads[request.param])


_ROWS: dict = {}


def rows_of(kind: str, p: Predictor, path: Path) -> tuple[list[str], np.ndarray]:
    """``p.predict_file(path)``, embedded once per module (BirdNET on a 60-s file is the slow part)."""
    if (kind, path) not in _ROWS:
        _ROWS[kind, path] = p.predict_file(path)
    return _ROWS[kind, path]


def test_single_and_stacked_heads_answer_the_protocol(predictor, heads: dict[str, Path]) -> None:
    kind, p = predictor
    assert isinstance(p, Predictor)
    assert p.head_id == heads[kind].name and p.class_names and len(set(p.class_names)) == len(p.class_names)
    assert p.extractors and p.requests and all(isinstance(v, str) and isinstance(q, str) for v, q in p.requests)
    assert p.prior.ndim == 1 and len(p.prior) % len(p.class_names) == 0
    assert p.output_prior.shape == (len(p.class_names),)
    assert p.output_prior.min() >= 0 and p.output_prior.max() <= 1


def test_predict_file_equals_rows_from_the_embedded_views(predictor, files: list[Path]) -> None:
    kind, p = predictor
    path = files[0]
    ids, rows = rows_of(kind, p, path)
    again_ids, again = p.rows_from_features(path, embed_file_views(path, p.extractors, p.requests, soundscape=True))
    assert ids == again_ids == expected_row_ids(path)
    np.testing.assert_array_equal(rows, again)
    np.testing.assert_array_equal(p.predict_file(path)[1], rows)               # deterministic
    assert rows.shape == (len(ids), len(p.prior)) and rows.dtype == np.float32
    assert np.isfinite(rows).all() and rows.min() >= 0 and rows.max() <= 1


def test_finish_gives_the_output_prior_to_rows_without_audio(predictor, files: list[Path]) -> None:
    kind, p = predictor
    ids, rows = rows_of(kind, p, files[0])
    window_ids = file_window_ids(files[0], np.arange(len(ids)) * 5)[0]
    out = p.finish(window_ids, rows)
    assert out.shape == (len(ids), len(p.class_names)) and out.min() >= 0 and out.max() <= 1
    usable = np.ones(len(ids), bool)
    usable[-3:] = False                                    # the file's last 15 s had no usable audio
    part = p.finish(window_ids, rows, usable)
    np.testing.assert_allclose(part[~usable], np.tile(p.output_prior, (3, 1)), atol=1e-7)
    ok = p.finish(window_ids[:-3], rows[:-3])              # what the usable rows get on their own
    np.testing.assert_allclose(part[usable], ok, atol=1e-6)


def test_a_missing_file_gets_the_prior_on_every_expected_row(predictor, tmp_path: Path) -> None:
    _, p = predictor
    missing = tmp_path / "BC2026_Test_0000_S01_20250101_000000.ogg"
    ids, rows, warning, usable = file_rows(missing, p)
    assert ids == expected_row_ids(missing) and len(ids) == 12 and not usable.any()
    assert "file not found" in warning and "class prior" in warning
    np.testing.assert_array_equal(rows, np.tile(p.prior, (12, 1)))


def test_predict_audio_is_finish_over_every_file(predictor, heads: dict[str, Path], files: list[Path],
                                                 tmp_path: Path) -> None:
    kind, p = predictor
    audio = tmp_path / "audio"
    audio.mkdir()
    for f in files:
        (audio / f.name).symlink_to(f)
    row_ids, probs, warnings = predict_audio(heads[kind], audio, p.class_names, workers=1)
    assert warnings == []
    blocks = [rows_of(kind, p, f) for f in files]
    window_ids = [w for f, (ids, _) in zip(files, blocks, strict=True)
                  for w in file_window_ids(f, np.arange(len(ids)) * 5)[0]]
    expected = p.finish(window_ids, np.vstack([rows for _, rows in blocks]))
    assert row_ids == [r for ids, _ in blocks for r in ids]
    np.testing.assert_allclose(probs, expected, atol=1e-6)
