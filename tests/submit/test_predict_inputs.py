"""Issue 28 items 9 and 10: which files predict reads (every format soundfile decodes here, the folder's own
files; what it skips is said, by name and reason) and the dry run's projection (one-time cost apart from the
steady per-file rate, with the planner's scaling model)."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from submit.submission import expected_ids_for_audio, list_audio

FOCAL_CLIP = "bc2026/train_audio/1595929/iNat1242532.ogg"   # real, 32 kHz, 35 s


def _name(i: int, suffix: str) -> str:
    return f"BC2026_Test_{i:04d}_S01_20240301_000000{suffix}"


@pytest.fixture(scope="module")
def mixed(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real minute (the focal clip repeated) in six formats, next to entries predict must skip: an m4a,
    a text file, a hidden file, a broken link and a sub-folder holding another soundscape."""
    samples, rate = sf.read(str(shared_data / FOCAL_CLIP), dtype="float32")
    minute = np.resize(samples, 60 * rate)
    audio = tmp_path_factory.mktemp("mixed") / "test_soundscapes"
    audio.mkdir()
    sf.write(str(audio / _name(1, ".wav")), minute, rate, subtype="FLOAT")
    sf.write(str(audio / _name(2, ".aiff")), minute, rate, subtype="FLOAT")
    sf.write(str(audio / _name(3, ".caf")), minute, rate, subtype="FLOAT")
    sf.write(str(audio / _name(4, ".flac")), minute, rate, subtype="PCM_24")
    sf.write(str(audio / _name(5, ".ogg")), minute, rate, format="OGG", subtype="VORBIS")
    sf.write(str(audio / _name(6, ".mp3")), minute, rate, format="MP3", subtype="MPEG_LAYER_III")
    shutil.copy(shared_data / FOCAL_CLIP, audio / _name(7, ".m4a"))     # the suffix decides: ffmpeg's, skipped
    (audio / "notes.txt").write_text("recorder 3 battery low\n")
    (audio / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (audio / _name(8, ".ogg")).symlink_to(audio / "gone.ogg")            # broken link
    (audio / "day2").mkdir()
    shutil.copy(shared_data / FOCAL_CLIP, audio / "day2" / _name(9, ".ogg"))
    return audio


def test_predict_reads_every_soundfile_format_and_names_what_it_skips(demo_trained, mixed: Path,
                                                                      tmp_path: Path) -> None:
    """wav/aiff/caf (float), flac, ogg and mp3 of one real minute are all predicted on all 12 windows; the m4a,
    the text file, the hidden file, the broken link and the sub-folder are skipped with one line saying so -
    the same list gives the validator's expected rows, so the submission is complete for what was read."""
    from submit.predict import predict_submission

    assert "MP3" in sf.available_formats()      # libsndfile >= 1.1 here (1.2.2); the mp3 must then be read
    said: list[str] = []
    files = list_audio(mixed, on_skipped=said.append)
    assert [f.name for f in files] == [_name(i, s) for i, s in
                                       enumerate((".wav", ".aiff", ".caf", ".flac", ".ogg", ".mp3"), 1)]
    assert len(said) == 1
    note = said[0]
    assert note.startswith(f"{mixed}: skipped 5 of its 11 entries - ")
    assert (f"1 audio file(s) soundfile cannot decode without ffmpeg ({_name(7, '.m4a')}): convert them first, "
            f"e.g. ffmpeg -i {_name(7, '.m4a')} {_name(7, '.flac')}") in note
    assert "1 file(s) not audio by their suffix (notes.txt; predicted: .ogg .oga .opus .flac .wav" in note
    assert "1 hidden file(s) (.DS_Store)" in note
    assert f"not regular files, e.g. broken links ({_name(8, '.ogg')})" in note
    assert ("1 sub-folder(s) not searched (day2/, holding 1 audio file(s)): only the folder's own files are "
            "predicted, as in Kaggle's flat test_soundscapes/") in note

    out = tmp_path / "submission.csv"
    summary = predict_submission(demo_trained.store, mixed, out, head_id=demo_trained.head("classical"))
    assert summary.warnings == [note]                    # nothing else: every file decoded all 12 windows
    assert summary.n_rows == 6 * 12 == len(expected_ids_for_audio(mixed))
    with open(out, newline="") as f:
        rows = list(csv.reader(f))[1:]
    probs = {r[0]: np.array([float(x) for x in r[1:]]) for r in rows}
    by_file = {i: np.array([probs[f"{Path(_name(i, '')).stem}_{e}"] for e in range(5, 65, 5)]) for i in range(1, 7)}
    # the same float samples in three containers: the same numbers (6 significant digits in the CSV)
    np.testing.assert_allclose(by_file[2], by_file[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_file[3], by_file[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(by_file[4], by_file[1], atol=1e-3)       # 24-bit PCM
    from submit.predict import open_predictor

    pred = open_predictor(demo_trained.store / "heads" / demo_trained.head("classical"))
    prior = np.asarray(pred.output_prior)
    for i in (5, 6):                                     # lossy, but decoded: predictions, not the prior
        assert np.abs(by_file[i] - prior).max() > 1e-3


def test_each_file_is_timed_apart_from_the_predictor_load(demo_trained, mixed: Path) -> None:
    """The runtime's per-file record (iter_predictions ``timings``): the first file of a run is flagged (it pays
    the warm-up) and carries the predictor's load, every file its 5-s windows by its header and its own seconds,
    which together fit in the wall time they were measured in."""
    from submit.predict import iter_predictions

    files = list_audio(mixed)[:3]
    timings: list = []
    t = time.perf_counter()
    out = list(iter_predictions(demo_trained.store / "heads" / demo_trained.head("classical"), files, 1, {},
                                timings=timings))
    wall = time.perf_counter() - t
    assert [o[0] for o in out] == [str(f) for f in files]
    assert [(x.first, x.pool) for x in timings] == [(True, 1), (False, 1), (False, 1)]
    assert [x.windows for x in timings] == [round(sf.info(str(f)).duration / 5) for f in files] == [12, 12, 12]
    assert timings[0].load_s > 0 and timings[1].load_s == timings[2].load_s == 0
    assert all(x.seconds > 0 for x in timings)
    assert timings[0].load_s + sum(x.seconds for x in timings) <= wall


def test_predict_help_states_the_sub_folder_rule() -> None:
    from pipelines.predict import main

    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        main(["--help"])
    flat = " ".join(text.getvalue().split())
    assert "its own files only, sub-folders are not searched (skipped with a warning)" in flat
    assert "Sub-folders are not searched" in flat


# ---------------------------------------------------------------------------- item 10: the projection
def _timing(s: float, first: bool, windows: int = 6, pool: int = 2, load_s: float = 0.0) -> dict:
    return {"s": s, "first": first, "load_s": load_s, "windows": windows, "pool": pool}


def test_dry_run_projection_separates_one_time_cost_from_the_steady_rate_by_hand() -> None:
    """Worked by hand: two workers on six 30-s files (one undecodable), then the same run with a measured
    two-worker efficiency of 0.8 (the planner's S(n) = n e^log2 n)."""
    from submit.dryrun import project_dry_run
    from submit.plan import Costs, LevelCost

    report = {"workers": 2, "file_timing": [
        _timing(3.0, True, load_s=5.0), _timing(3.4, True, load_s=5.2), _timing(1.0, False), _timing(1.2, False),
        _timing(0.05, False, windows=0), _timing(1.1, False)]}
    p = project_dry_run(report, {}, n_files=600, cpus=4, wall=40.0)
    # S(n) = n: one process, 60 s: 1.0, 1.2, 1.1 x 12/6 x S(2)/2 -> mean 2.2 s; the five files with audio hold
    # 5 x 2.2 x 6/12 / S(2) = 2.75 s of the wall; once = 40 - 2.75; per file on 4 CPUs 2.2 / 4
    assert p.per_file_s == pytest.approx(2.2) and p.once_s == pytest.approx(37.25)
    assert p.target_per_file_s == pytest.approx(0.55) and p.projected_s == pytest.approx(37.25 + 600 * 0.55)
    assert (p.rate_files, p.steady, p.trusted, p.pool, p.load_s, p.planner_min) == (3, True, True, 2, 5.1, None)
    assert not any(line.startswith("warning:") for line in p.lines())

    costs = Costs(3, 60.0, 0.1, {}, {"birdnet": 1.0}, {"birdnet": 48000},
                  [LevelCost("h", 2.0, ["birdnet"], 0.1, 1e-4, 1.2)], 2, 1.6)
    p = project_dry_run(report, {"stage_costs": costs.to_json()}, n_files=600, cpus=4, wall=40.0)
    # e = 0.8: S(2) = 1.6, S(4) = 4 x 0.64 = 2.56; one process: mean(1.0, 1.2, 1.1) x 2 x 1.6/2 = 1.76 s
    assert p.per_file_s == pytest.approx(1.76)
    assert p.once_s == pytest.approx(40 - 5 * 1.76 * 0.5 / 1.6)
    assert p.projected_s == pytest.approx(p.once_s + 600 * 1.76 / 2.56)
    # the planner's own total for the same costs: load + 600 x (decode + birdnet + heads) / S(4) + 7200 x finish
    assert p.planner_min == pytest.approx((2.0 + 600 * (0.1 + 1.0 + 0.1) / 2.56 + 7200 * 1e-4) / 60)


def test_too_few_files_take_the_rate_from_first_files_and_say_so() -> None:
    """Two files on two workers (the issue's case: 27.6 min projected where the planner said 10.1): every file
    is its worker's first, so the rate comes from them - an upper bound - and the projection says so."""
    from submit.dryrun import DryRun, project_dry_run

    report = {"workers": 2, "stage_seconds": {"predict": 20.0}, "levels": {"h": 2}, "warnings": [],
              "guard_events": [], "file_timing": [_timing(4.0, True, 12, load_s=6.0), _timing(5.0, True, 12, load_s=7.0)]}
    p = project_dry_run(report, {}, n_files=600, cpus=4, wall=60.0)
    assert (p.rate_files, p.steady, p.trusted) == (2, False, False)
    assert p.per_file_s == pytest.approx(4.5)                  # (4 + 5) / 2 x 12/12 x S(2)/2
    assert p.once_s == pytest.approx(60 - 2 * 4.5 / 2)         # the two files' share of the wall, 2 at once
    lines = p.lines()
    assert lines[0] == ("one-time cost here: 55.5 s (kernel start, install, verify, predictor loads 6.5 s per worker, "
                        "first-file warm-up, finish, write)")
    assert "from 2 first file(s) of their workers: warm-up included, an upper bound" in lines[1]
    assert lines[-1] == ("warning: too few files to trust the rate (2 usable; each of the 2 worker(s)' first file pays "
                         "its warm-up): dry-run at least 4 files")
    run = DryRun(Path("w"), Path("s"), Path("r"), 0.0, 24, "off", report, {}, p.projected_s / 60, 90.0, projection=p)
    rendered = run.render().splitlines()
    assert rendered[-1] == f"projected Kaggle minutes: {p.projected_s / 60:.1f} (budget 90)"
    assert rendered[-2] == lines[-1] and rendered[-5] == lines[0]


def test_a_report_without_per_file_timing_asks_for_a_re_export() -> None:
    from featurestore.errors import BundleError
    from submit.dryrun import project_dry_run

    with pytest.raises(BundleError, match="predates this dry run; re-export the bundle with pipelines.export"):
        project_dry_run({"workers": 2, "file_done_s": [1.0, 2.0]}, {}, 600, 4, 10.0)


def test_the_notebook_fallback_lists_the_same_suffixes(mixed: Path) -> None:
    """The prior-only cell cannot ask soundfile; it uses list_audio's suffix table (one rule)."""
    from submit.notebook import INSTALL
    from submit.submission import SOUNDFILE_SUFFIXES

    assert f"endswith({tuple(SOUNDFILE_SUFFIXES)!r})" in INSTALL
    names = sorted(n for n in os.listdir(mixed) if n.lower().endswith(tuple(SOUNDFILE_SUFFIXES))
                   and not n.startswith(".") and os.path.isfile(mixed / n))
    assert names == [f.name for f in list_audio(mixed)]
