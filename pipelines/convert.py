"""``python -m pipelines.convert``: Perch v2's SavedModel folder -> .onnx (tf2onnx) or .tflite (TensorFlow's
converter), with labels.csv copied beside it, then a parity check on real audio through the perch extractor
(min embedding cosine, max |dlogit| against the SavedModel; refused past the thresholds, the file moved to
<out>.failed). tf2onnx cannot convert the real Perch v2 graph (one jax2tf XlaCallModule op): --to onnx says so
at once and names the known route; --to tflite works on it. Needs pip install 'birdclef-stack[perch]'.
The library: embed/convert.py.
"""

from __future__ import annotations

from pathlib import Path

from embed.convert import MAX_DLOGIT, MIN_COSINE, TARGETS, audio_files, convert_checked
from pipelines._cli import parser, positive_int, run_main, say

EPILOG = f"""
Example:
  python -m pipelines.convert --model ~/models/perch_v2_cpu/1 --to tflite --out ~/models/perch_v2.tflite \\
      --check-audio data/train_audio --max-files 5
  python -m pipelines.embed --store store --extractor perch --model ~/models/perch_v2.tflite

Thresholds: embedding cosine >= {MIN_COSINE}, max |dlogit| (rescaled) <= {MAX_DLOGIT}.
"""


def main(argv: list[str] | None = None) -> int:
    ap = parser("convert", __doc__, EPILOG)
    ap.add_argument("--model", required=True, type=Path, help="the Perch v2 SavedModel folder (with saved_model.pb)")
    ap.add_argument("--to", required=True, choices=TARGETS, help="the form to write")
    ap.add_argument("--out", required=True, type=Path, help="the file to write (*.onnx or *.tflite)")
    ap.add_argument("--check-audio", nargs="+", type=Path, default=None, metavar="PATH",
                    help="audio files or folders for the parity check (required unless --no-check)")
    ap.add_argument("--max-files", type=positive_int, default=5, help="files of --check-audio to check on (default 5)")
    ap.add_argument("--store", type=Path, default=None,
                    help="a feature store whose taxonomy maps the logits, to check the stored (mapped) ones too")
    ap.add_argument("--no-check", action="store_true", help="skip the parity check (not recommended)")
    args = ap.parse_args(argv)
    if args.no_check and args.check_audio:
        ap.error("--no-check and --check-audio contradict each other")
    if not args.no_check and not args.check_audio:
        ap.error("give --check-audio PATH ... for the parity check (or --no-check to skip it)")
    clips = None if args.no_check else audio_files(args.check_audio, args.max_files)
    taxonomy = None
    if args.store is not None:
        from featurestore.store import FeatureStore

        with FeatureStore.open(args.store, read_only=True) as store:
            taxonomy = store.read_table("taxonomy")
    convert_checked(args.model, args.to, args.out, clips, say=say, taxonomy=taxonomy)
    return 0


if __name__ == "__main__":
    run_main(main, interrupted="interrupted; --out is replaced only by a conversion that passed its parity check, "
                                "so it is as it was: re-run the same command")
