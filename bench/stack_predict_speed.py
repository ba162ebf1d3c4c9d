"""What a stacked head adds to predict time, beside the embedding it sits on, measured in one run.

Two measurements, alternated so machine load hits both:

* **embedding** - the real extractors of a stacked head on real soundscapes (default: the demo's
  stack and test soundscapes; run ``python -m pipelines.demo`` first): seconds per 60-s file for
  :func:`embed.features.embed_file_views` over the union of the base heads' extractors, and for
  :meth:`submit.stack_predictor.StackPredictor.predict_file` (the same embedding + every base head);
* **level-2 at competition scale** - the ridge stacker with site/hour priors and three post steps
  (the costliest configuration), fitted on synthetic OOF of 739 windows x 234 classes x ``--heads``
  sources, then applied to 600 files x 12 windows (what :meth:`StackPredictor.finish` does for the
  Kaggle test set), plus the equivalent blend.

The embedding is projected to 600 files (per-file cost x 600: files are independent), the level-2
step is measured at 600 files directly. Printed: seconds, and the level-2 step as a share of the
embedding (target < 5%). The base heads' cost on 234 classes is not projected (the demo's heads have
14 classes); it is printed per file as measured.

Usage: python bench/stack_predict_speed.py [--demo DIR] [--files 4] [--repeats 3] [--heads 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stack_speed import POST, synthetic_inputs  # noqa: E402

from embed.features import embed_file_views  # noqa: E402
from featurestore.demo_data import default_out
from stack.inputs import StackInputs  # noqa: E402
from stack.post import FileLayout, apply_post  # noqa: E402
from stack.stackers import fit_stacker, make_stack_params, training_rows  # noqa: E402
from submit.stack_predictor import StackPredictor
from submit.submission import list_audio

TEST_FILES, WINDOWS_PER_FILE = 600, 12


def stack_head(store: Path) -> str:
    from featurestore.store import FeatureStore

    with FeatureStore.open(store, read_only=True) as fs:
        heads = [h for h, kind in fs.rows("SELECT head_id, head FROM experiments ORDER BY fold_mean DESC")
                 if kind == "stack"]
    if not heads:
        raise SystemExit(f"no stacked head in {store}; run python -m pipelines.demo (it stacks its heads)")
    return heads[0]


def test_inputs(train: StackInputs, n_files: int, seed: int = 1) -> StackInputs:
    """Unlabelled inputs shaped like the Kaggle test set: ``n_files`` x 12 windows, same sources/classes."""
    rng = np.random.default_rng(seed)
    ids = [f"test_soundscapes/S{f % 9:02d}_{f:04d}.ogg@{s * 5}" for f in range(n_files) for s in range(WINDOWS_PER_FILE)]
    n, C = len(ids), len(train.class_names)
    P = rng.random((len(train.heads), n, C), dtype=np.float32)
    return StackInputs(np.asarray(ids), train.heads, train.class_names, train.class_groups, P, train.available,
                       np.zeros((n, C), np.float32), np.full(n, -1, np.int64), np.full(n, "test_soundscapes", object),
                       np.array([f"S{i // WINDOWS_PER_FILE % 9:02d}" for i in range(n)], dtype=object),
                       np.array([i // WINDOWS_PER_FILE % 24 for i in range(n)], dtype=np.int64))


def level2(fitted, steps, data: StackInputs) -> np.ndarray:
    p = fitted.predict(data)
    return apply_post(p, steps, FileLayout(data.window_ids), data.class_groups)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", type=Path, default=default_out(), help="demo folder (python -m pipelines.demo --out)")
    ap.add_argument("--files", type=int, default=4, help="real soundscapes to embed per repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--heads", type=int, default=5, help="level-2 sources at competition scale")
    args = ap.parse_args()
    store, audio = args.demo / "store", args.demo / "data" / "test_soundscapes"
    if not (store / "catalog.duckdb").exists():
        raise SystemExit(f"no demo store at {store}; run python -m pipelines.demo --out {args.demo}")
    head = stack_head(store)
    predictor = StackPredictor(store / "heads" / head)
    files = list_audio(audio)[: args.files]

    train = synthetic_inputs(739, 234, args.heads)
    test = test_inputs(train, TEST_FILES)
    from stack.post import parse_post

    steps = parse_post(POST)
    ridge_params = make_stack_params("ridge", {"site_prior": True, "hour_prior": True})
    ridge = fit_stacker(train, "ridge", ridge_params, training_rows(train, ridge_params, None))
    blend_params = make_stack_params("blend", {"method": "rank"})
    blend = fit_stacker(train, "blend", blend_params, training_rows(train, blend_params, None))

    runs = {
        "embed (union of extractors), s/file": lambda: [embed_file_views(f, predictor.extractors, predictor.requests,
                                                                         soundscape=True) for f in files],
        "embed + base heads, s/file": lambda: [predictor.predict_file(f) for f in files],
        "ridge+priors+post, 600 files": lambda: level2(ridge, steps, test.subset(np.ones(test.n, bool))),
        "blend rank+post, 600 files": lambda: level2(blend, steps, test.subset(np.ones(test.n, bool))),
    }
    for run in runs.values():              # warm-up: interpreters, imports, model loads
        run()
    # what is timed is what is counted: every window of the files, every test window x class
    for f in files:
        views = embed_file_views(f, predictor.extractors, predictor.requests, soundscape=True)
        n_views = {len(starts) for starts, _, _ in views.values()}
        rows = len(predictor.predict_file(f)[0])
        assert len(n_views) == 1 and rows == n_views.pop() > 0, f"{f}: {rows} predicted rows, view windows {n_views}"
    for fitted in (ridge, blend):
        shape = level2(fitted, steps, test.subset(np.ones(test.n, bool))).shape
        assert shape == (TEST_FILES * WINDOWS_PER_FILE, len(train.class_names)), shape
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - t0)
    embed_file = statistics.median(times["embed (union of extractors), s/file"]) / len(files)
    with_heads = statistics.median(times["embed + base heads, s/file"]) / len(files)
    embed_600 = embed_file * TEST_FILES
    print(f"stacked head {head} over {len(predictor.bases)} base heads + {len(predictor.bundle.config.zero_shot)} "
          f"zero-shot views; extractors {[e.name for e in predictor.extractors]}")
    print(f"real embedding: {embed_file:.3f} s per 60-s file on {len(files)} demo files -> {embed_600:.0f} s for "
          f"{TEST_FILES} files (one process)")
    print(f"embedding + base heads (demo: {len(predictor.class_names)} classes): {with_heads:.3f} s per file "
          f"({100 * (with_heads / embed_file - 1):+.1f}%; differences of a few % are load noise)")
    worst = 0.0
    for name in ("ridge+priors+post, 600 files", "blend rank+post, 600 files"):
        t = statistics.median(times[name])
        worst = max(worst, t / embed_600)
        print(f"{name} ({test.n} windows x 234 classes x {args.heads} sources): {t:.3f} s = "
              f"{100 * t / embed_600:.2f}% of the embedding")
    print(f"(median of {args.repeats} alternated repeats)")
    print(f"level-2 step adds {100 * worst:.2f}% to the base heads' embedding (target < 5%)")


if __name__ == "__main__":
    main()
