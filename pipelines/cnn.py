"""``python -m pipelines.cnn``: train the spectrogram CNN student (TensorFlow) and export it to TFLite.

Stage 1 distils the stored teacher embedding of every training window (labelled or not) with a
cosine loss; stage 2 fine-tunes on the labels (+ stored pseudo-labels with --pseudo), with time-shift,
gain and background mixing. With --folds one model per fold gives OOF predictions, the fold-mean
headline (an experiments row, mode "cnn") and the int8 accuracy check; then one model on all data is
exported into --out as cnn.tflite + cnn.json (float32), cnn_f16.* and, when int8 holds, cnn_int8.*.
Re-running the same command resumes at the last finished epoch. The library: students/cnn.py.
"""

from __future__ import annotations

from pathlib import Path

from pipelines._cli import (
    add_question,
    add_seed,
    add_store,
    add_workers,
    json_object,
    parser,
    positive_int,
    run_main,
    store_question,
)
from students.cnn import make_cnn_params, train_cnn

EPILOG = """
Needs TensorFlow: pip install -e '.[cnn]'. The exported model runs without it (ai-edge-litert).

Examples:
  python -m pipelines.cnn --store work/store --teacher birdnet --out work/cnn --folds --epochs 6
  python -m pipelines.cnn --store work/store --teacher custom:perch_v2 --out work/cnn_perch --folds \\
      --pseudo pseudo-1a2b3c4d5e6f --params '{"channels": [24, 48, 96, 192]}'
  python -m pipelines.embed --store work/store --extractor cnn --model work/cnn/cnn.tflite
  python -m pipelines.train --store work/store --head-kind linear --features cnn
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("cnn", __doc__, EPILOG)
    add_store(ap)
    ap.add_argument("--teacher", default="birdnet",
                    help="stored embedding to distil: birdnet or custom:<name> (default birdnet)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the model files, checkpoints and summary")
    ap.add_argument("--folds", action="store_true",
                    help="also train one model per fold: OOF predictions, fold mean, experiments row, int8 check")
    ap.add_argument("--epochs", type=positive_int, default=None, help="fine-tuning epochs (default 6)")
    ap.add_argument("--distill-epochs", type=positive_int, default=None, help="distillation epochs (default 4)")
    ap.add_argument("--pseudo", help="pseudo-label version (pipelines.pseudo) for the unlabelled windows")
    ap.add_argument("--params", type=json_object, default="{}",
                    help="JSON object of CNN parameters (students/cnn.py CnnParams)")
    ap.add_argument("--frontend", type=json_object, default="{}",
                    help="JSON object of front-end parameters (embed/cnn.py FrontEnd)")
    ap.add_argument("--fold-version", help="fold version to use (default: the latest)")
    ap.add_argument("--tag", help="experiments tag (default cnn)")
    add_workers(ap, "worker processes for the front-end cache")
    add_seed(ap)
    add_question(ap)
    args = ap.parse_args(argv)
    overrides, frontend = args.params, args.frontend
    for key, value in (("epochs", args.epochs), ("distill_epochs", args.distill_epochs)):
        if value is not None:
            if value < 0:
                ap.error(f"--{key.replace('_', '-')} must be >= 0")
            overrides[key] = value
    overrides.setdefault("seed", args.seed)
    params = make_cnn_params(overrides)
    result = train_cnn(args.store, args.out, teacher=args.teacher, params=params, frontend=frontend, folds=args.folds,
                       fold_version=args.fold_version, pseudo=args.pseudo, workers=args.workers, tag=args.tag)
    print(result.render())
    # an experiments row only with --folds (mode cnn)
    store_question(args.store, [result.cnn_id] if args.folds else [], args.question)
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; every finished epoch is checkpointed and the front-end cache is kept: re-run the "
        "same command to resume at the next epoch"
    ))
