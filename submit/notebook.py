"""The generated Kaggle notebook and the two metadata files that make a bundle pushable as it stands.

The notebook is a thin driver (nbformat, written at export time only):

1. find the bundle and check it against its ``manifest.json`` **with the standard library only**,
   before anything from it is installed - the same file rules as :func:`submit.runtime.verify_bundle`
   (paths inside the bundle, no symbolic links, exactly the listed files, size + sha256 of each,
   levels under ``heads/``) - then install its wheels offline (``pip install --no-index --no-deps
   --ignore-installed --find-links``);
2. call :func:`submit.runtime.run` (which verifies the bundle again with every rule);
3. print where the runtime modules were imported from (the dry run checks they came from the bundle).

Guarantees: a failure anywhere in cells 1-2 (a truncated or modified bundle file, pip, the run
itself) still writes ``submission.csv`` - ``sample_submission.csv``'s columns, 12 rows per test
soundscape (the competition's 60-s files; ``sample_submission.csv``'s rows when there is no test
audio), the manifest's class prior (``"prior"``; 0.5 for a column it lacks) on every row - prints
:data:`FALLBACK` and the reason, and the notebook ends normally. Cell 1's check is the one place the
bundle rules are written twice: the toolkit that holds them is one of the files checked, and may not
be installable.
"""

from __future__ import annotations

import json

from featurestore.windows import SOUNDFILE_SUFFIXES

NOTEBOOK = "birdclef_stack_inference.ipynb"
FALLBACK = "birdclef-stack FALLBACK:"      # printed first by the prior-only path (the dry run looks for it)

INSTALL = '''# 1. find the bundle, check every file against its manifest.json, install its wheels offline.
# The check is submit.runtime.verify_bundle's file rules written again with the standard library, because it
# must run before anything from the bundle is installed: the toolkit wheel is one of the files it checks.
# Any failure here or in cell 2 still writes a submission with the manifest's class prior, and says why.
import csv, glob, hashlib, importlib, importlib.util, json, os, subprocess, sys, time, traceback
T0 = time.perf_counter()
ROOT = os.environ.get("BIRDCLEF_STACK_INPUT", "/kaggle/input")
WORKING = os.environ.get("BIRDCLEF_STACK_WORKING", "/kaggle/working")
MANIFEST, FAILED = {}, None

def find(name, ok):                      # the first folder (depth <= 4 below ROOT) holding `name` that passes ok
    for depth in range(5):
        for path in sorted(glob.glob(os.path.join(ROOT, *["*"] * depth, name))):
            if ok(path):
                return os.path.dirname(path)
    raise RuntimeError(f"no {name} under {ROOT}")

def is_bundle(path):
    try:
        with open(path) as f:
            return json.load(f).get("kind") == "birdclef-stack-bundle"
    except (OSError, ValueError, AttributeError):
        return False

def verify(bundle, manifest):
    listed = {e["path"]: e for e in manifest["files"]}
    bad = [p for p in listed if p.startswith("/") or os.path.normpath(p) != p or ".." in p.split("/")]
    bad += [f"levels {lv!r}" for lv in manifest["levels"] if "/" in lv or f"heads/{lv}/config.json" not in listed]
    if bad or manifest["toolkit_wheel"] not in listed:
        raise ValueError(f"manifest.json names paths outside the bundle or not in it: {bad[:3] or 'toolkit_wheel'}")
    found = set()
    for here, dirs, names in os.walk(bundle):
        if links := [n for n in dirs + names if os.path.islink(os.path.join(here, n))]:
            raise ValueError(f"{os.path.relpath(os.path.join(here, links[0]), bundle)} is a symbolic link")
        found |= {os.path.relpath(os.path.join(here, n), bundle) for n in names} - {"manifest.json"}
    if found != set(listed):
        raise ValueError(f"unlisted files {sorted(found - set(listed))[:3]}, missing {sorted(set(listed) - found)[:3]}")
    for path, entry in listed.items():
        with open(os.path.join(bundle, path), "rb") as f:
            if os.fstat(f.fileno()).st_size != entry["bytes"] or hashlib.file_digest(f, "sha256").hexdigest() != entry["sha256"]:
                raise ValueError(f"bundle file {path} does not match manifest.json (truncated or modified)")

def fallback(why):                       # the prior-only submission, without the toolkit
    global FAILED
    FAILED = why
    print(f"birdclef-stack FALLBACK: {why}; writing the class prior for every row", flush=True)
    comp = os.environ.get("BIRDCLEF_STACK_COMPETITION") or find(
        "sample_submission.csv", lambda p: os.path.isdir(os.path.join(os.path.dirname(p), "test_soundscapes")))
    with open(os.path.join(comp, "sample_submission.csv"), newline="") as f:
        rows = list(csv.reader(f))
    tests = os.path.join(comp, "test_soundscapes")       # submit.submission.list_audio's suffixes, folder's own files
    audio = sorted(n for n in os.listdir(tests) if n.lower().endswith(AUDIO_SUFFIXES) and not n.startswith(".")
                   and os.path.isfile(os.path.join(tests, n)))
    ids = [f"{os.path.splitext(n)[0]}_{end}" for n in audio for end in range(5, 65, 5)] or [r[0] for r in rows[1:] if r]
    prior = MANIFEST.get("prior") if isinstance(MANIFEST, dict) and isinstance(MANIFEST.get("prior"), dict) else {}
    p = [v if type(v := prior.get(c)) in (int, float) and 0 <= v <= 1 else 0.5 for c in rows[0][1:]]
    with open(os.path.join(WORKING, "submission.csv"), "w", newline="") as f:
        csv.writer(f).writerows([rows[0], *([i, *p] for i in dict.fromkeys(ids))])
    print(f"wrote {os.path.join(WORKING, 'submission.csv')}: {len(set(ids))} rows, the class prior of "
          f"{sum(c in prior for c in rows[0][1:])} of {len(rows[0]) - 1} columns from the manifest (else 0.5)")

try:
    BUNDLE = os.path.realpath(os.environ.get("BIRDCLEF_STACK_BUNDLE") or find("manifest.json", is_bundle))
    os.environ["BIRDCLEF_STACK_BUNDLE"] = BUNDLE
    with open(os.path.join(BUNDLE, "manifest.json")) as f:
        MANIFEST = json.load(f)
    verify(BUNDLE, MANIFEST)
    need = [p for p in MANIFEST["runtime_packages"] if not (p == "flatbuffers" and importlib.util.find_spec(p))]
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--ignore-installed",
                          "--find-links", os.path.join(BUNDLE, "wheels"), *need,
                          os.path.join(BUNDLE, MANIFEST["toolkit_wheel"])], capture_output=True, text=True)
    if pip.returncode:
        raise RuntimeError(f"pip install failed: {(pip.stderr.strip() or pip.stdout.strip() or '?').splitlines()[-1]}")
    importlib.invalidate_caches()
    print(f"verified {len(MANIFEST['files'])} files, installed {need} + {MANIFEST['toolkit_wheel']} from {BUNDLE} "
          f"in {time.perf_counter() - T0:.1f} s")
except Exception as exc:                 # anything at all: still leave a submission
    fallback(f"{type(exc).__name__}: {exc}")
'''
# the fallback lists the test audio as submit.submission.list_audio does (the suffix table; it cannot ask
# soundfile which formats it decodes before anything is installed)
INSTALL = INSTALL.replace("AUDIO_SUFFIXES", repr(tuple(SOUNDFILE_SUFFIXES)))

RUN = '''# 2. verify the bundle (every rule), predict every test soundscape under the time guard, write + validate the submission
if FAILED is None:
    try:
        from submit.runtime import run
        report = run(out=os.path.join(WORKING, "submission.csv"))
    except Exception as exc:
        traceback.print_exc()
        fallback(f"{type(exc).__name__}: {exc}")
'''

WHERE = '''# 3. where the runtime came from (the dry run checks these are the bundle's copies)
if FAILED is None:
    import ai_edge_litert, lightgbm, numpy, sklearn, submit
    print("runtime modules:", json.dumps({m.__name__: m.__file__ for m in (ai_edge_litert, submit, numpy, lightgbm, sklearn)}))
else:
    print(f"prior-only submission: {FAILED}")
print(f"notebook total {time.perf_counter() - T0:.1f} s")
'''


def notebook_json(head_id: str, levels: list[str]) -> dict:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    intro = (f"# birdclef-stack inference\n\nHead `{head_id}`; time-guard levels: "
             f"{' → '.join(f'`{x}`' for x in levels)} → class prior.\n\n"
             "Runs offline (internet off): verifies every bundle file against `manifest.json`, installs the "
             "bundle's wheels, predicts `test_soundscapes` with all cores and writes a validated "
             "`/kaggle/working/submission.csv`; if anything fails it still writes the class prior and says why. "
             "Generated by `python -m pipelines.export`; do not edit here, re-export instead.")
    nb.cells = [nbformat.v4.new_markdown_cell(intro), nbformat.v4.new_code_cell(INSTALL),
                nbformat.v4.new_code_cell(RUN), nbformat.v4.new_code_cell(WHERE)]
    nbformat.validate(nb)
    return nb


def kaggle_files(*, owner: str, slug: str, competition: str, head_id: str, levels: list[str]) -> dict[str, str]:
    """The notebook and the Kaggle metadata files of a bundle: file name -> text."""
    import nbformat

    dataset = {"title": f"birdclef-stack {head_id}"[:50], "id": f"{owner}/{slug}",
               "licenses": [{"name": "CC-BY-NC-SA-4.0"}]}
    kernel = {"id": f"{owner}/{slug}-inference"[:100], "title": f"birdclef-stack {head_id} inference"[:50],
              "code_file": NOTEBOOK, "language": "python", "kernel_type": "notebook", "is_private": True,
              "enable_gpu": False, "enable_tpu": False, "enable_internet": False,
              "dataset_sources": [f"{owner}/{slug}"], "competition_sources": [competition], "kernel_sources": [],
              "model_sources": []}
    return {NOTEBOOK: nbformat.writes(notebook_json(head_id, levels)) + "\n",
            "dataset-metadata.json": json.dumps(dataset, indent=1),
            "kernel-metadata.json": json.dumps(kernel, indent=1)}
