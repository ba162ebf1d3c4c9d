"""The bundled demo: deterministic competition-layout data and the end-to-end command."""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import soundfile as sf

from featurestore.competition import read_soundscape_labels, read_taxonomy, read_train_csv
from featurestore.demo_data import DEMO_CLASSES, SMALL, generate_demo_dataset
from submit.submission import expected_ids_for_audio, validate_submission

REPO = Path(__file__).resolve().parents[2]


def _digest_tree(root: Path) -> dict[str, str]:
    """sha256 of each CSV's bytes and of each .ogg's decoded PCM (libvorbis picks a random stream serial)."""
    def digest(path: Path) -> str:
        if path.suffix == ".ogg":
            return hashlib.sha256(sf.read(str(path), dtype="int16")[0].tobytes()).hexdigest()
        return hashlib.sha256(path.read_bytes()).hexdigest()
    return {p.relative_to(root).as_posix(): digest(p) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_demo_command_runs_end_to_end(tmp_path: Path) -> None:
    """The README's first command, on the small dataset with its default seed. (First in this file: it needs
    no shared fixture, so it runs on one worker while the other builds the session's demo chain.)"""
    result = subprocess.run([sys.executable, "-m", "pipelines.demo", "--out", str(tmp_path / "demo"), "--small"],
                            cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "problems: 0 error(s)" in out and "folds created" in out and "524/524 of this shard's windows" in out
    for kind in ("prior", "zeroshot", "linear", "lgbm"):
        assert f"[demo] train {kind} on" in out
    demo = tmp_path / "demo"
    assert (demo / "memo.html").exists() and (demo / "store" / "catalog.duckdb").exists()
    assert "[demo] stack" in out and "stacked head stack-" in out
    assert "error page written to" in out and (demo / "errors.html").stat().st_size > 10_000
    assert "[demo] pseudo-labels" in out and "288 unlabelled windows" in out
    label_auc = float(out.split("against the held-back answers: ")[1].split()[0])
    assert label_auc > 0.85, out                       # the stack's thresholded labels of the unlabelled windows
    score = float(out.split("demo test-set AUC ")[1].split()[0])
    assert "(validated)" in out and score > 0.85
    sample = demo / "data" / "sample_submission.csv"
    assert validate_submission(demo / "submission.csv", sample,
                               expected_ids_for_audio(demo / "data" / "test_soundscapes")) == 48


def test_demo_dataset_is_competition_shaped(demo_data: Path) -> None:
    """(Determinism: the next test generates the dataset again, without the unlabelled soundscapes, and every
    file it shares with the session's must be the same.)"""
    taxonomy = read_taxonomy(demo_data / "taxonomy.csv")
    groups = Counter(taxonomy.column("class_name").to_pylist())
    assert taxonomy.num_rows >= 12 and {"Aves", "Amphibia", "Insecta"} <= set(groups)
    known = set(taxonomy.column("primary_label").to_pylist())
    train = read_train_csv(demo_data / "train.csv", known)
    with open(demo_data / "train.csv") as fh:
        assert next(csv.reader(fh)) == ["primary_label", "secondary_labels", "type", "latitude", "longitude",
                                        "scientific_name", "common_name", "class_name", "inat_taxon_id", "author",
                                        "license", "rating", "url", "filename", "collection"]
    for filename in train.column("filename").to_pylist():
        info = sf.info(str(demo_data / "train_audio" / filename))
        assert info.samplerate == 32000 and 1.0 <= info.duration <= 40.0
    labels, report = read_soundscape_labels(demo_data / "train_soundscapes_labels.csv", known)
    assert report.duplicate_rows == labels.num_rows and report.conflicts == []  # every window listed twice
    scapes = sorted((demo_data / "train_soundscapes").glob("*.ogg"))
    tests = sorted((demo_data / "test_soundscapes").glob("*.ogg"))
    assert len(scapes) >= 8 and len(tests) >= 4
    for path in scapes + tests:
        info = sf.info(str(path))
        assert info.samplerate == 32000 and abs(info.duration - 60.0) < 0.01
    assert max(len(x) for x in labels.column("labels").to_pylist()) >= 2  # classes overlap in windows
    with open(demo_data / "sample_submission.csv") as fh:
        assert next(csv.reader(fh)) == ["row_id", *[c.primary_label for c in DEMO_CLASSES]]


def test_unlabelled_soundscapes_have_answers_outside_the_competition_folder(demo_data: Path, tmp_path: Path) -> None:
    """3x the labelled soundscapes, with no row in the labels file; their true labels only in the
    answers file beside the data folder; the other files are the same with or without them."""
    from dataclasses import replace

    from featurestore.demo_data import ANSWERS_FILE

    with open(demo_data / "train_soundscapes_labels.csv", newline="") as fh:
        labelled = {r[0] for r in csv.reader(fh)}
    scapes = {p.name for p in (demo_data / "train_soundscapes").glob("*.ogg")}
    with open(demo_data.parent / ANSWERS_FILE, newline="") as fh:
        answers = list(csv.DictReader(fh))
    unlabelled = {r["filename"] for r in answers}
    n_labelled = len(scapes - unlabelled)
    assert n_labelled == SMALL.train_soundscapes and len(unlabelled) == SMALL.unlabelled_soundscapes >= 3 * n_labelled
    assert unlabelled <= scapes and not (unlabelled & labelled)
    assert len(answers) == 12 * len(unlabelled) and sum(bool(r["primary_label"]) for r in answers) > len(answers) / 4
    sites = {n.split("_")[3] for n in scapes - unlabelled}
    assert {n.split("_")[3] for n in unlabelled} == sites
    without = generate_demo_dataset(tmp_path / "without", replace(SMALL, unlabelled_soundscapes=0), seed=7)
    full = _digest_tree(demo_data)
    assert all(full[k] == v for k, v in _digest_tree(without).items())
    assert not (tmp_path / "without" / "data" / ANSWERS_FILE).exists()
