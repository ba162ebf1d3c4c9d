"""Shared command-line plumbing for ``python -m pipelines.<job>``.

* :func:`run_main` is the one error boundary: the project's errors and bad-input ``ValueError``s
  become one ``error: ...`` line on stderr and exit status 2 (no traceback); Ctrl-C exits 130.
* Shared options, so every job spells them the same: :func:`add_store` (``--store``; only ingest
  creates a store, every other job refuses a missing one), :func:`add_workers`, :func:`add_seed`,
  ``--quiet`` (every job, from :func:`parser`), :func:`add_measure`.
* Words: ``--head-kind`` is a kind of head (train, tune), ``--head-id`` one trained head
  (predict); ``--fold-version`` a stored fold version, ``--k`` a number of folds.
* :func:`progress` is a tqdm bar on a terminal and a periodic one-line status otherwise (a log
  file gets a few readable lines, not hundreds of carriage returns). Jobs create it only after
  their inputs are validated, so an error never lands on a half-drawn bar (:class:`PlannedProgress`:
  once the library reports its total); a bar left by an exception (an error, Ctrl-C) prints no
  "done" line, so the job's one error or interrupt line stands alone; :func:`say` prints a progress
  line at once. The library never imports this module: a job passes its bars down as callables
  (``progress=bar.update``, ``on_total=bar.start``, or a factory such as :class:`PlannedProgress`).
* The status period (:data:`HEARTBEAT_S`: a bar's status line about this often in a log, a still-working
  line after this much silence) is 30 s, or ``$BIRDCLEF_STACK_STATUS_S`` seconds (the tests run jobs
  at 0.2 s instead of waiting 30).
* ``--params``-style options parse with ``type=`` :func:`json_object` (:func:`json_list`): one error
  message for every job.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from featurestore.errors import StackError
from featurestore.store import is_disk_full

# every error a user can act on (featurestore/errors.py), and the OS's words for a wrong path
USER_ERRORS: tuple[type[Exception], ...] = (StackError, FileNotFoundError, NotADirectoryError)


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """A job's parser; every job takes ``--quiet`` (no progress bars, status or heartbeat lines; results and
    errors still print)."""
    ap = argparse.ArgumentParser(prog=f"python -m pipelines.{prog}", description=description, epilog=epilog,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quiet", action="store_true", help="no progress output (bars, status and heartbeat lines)")
    return ap


STATUS_ENV = "BIRDCLEF_STACK_STATUS_S"
DEFAULT_STATUS_S = 30.0


def status_seconds() -> float:
    """The status period: ``$BIRDCLEF_STACK_STATUS_S`` (seconds > 0), else 30 s. A value that is not a positive
    number is not used: one warning on stderr names it, and the period is 30 s."""
    text = os.environ.get(STATUS_ENV, "").strip()
    if not text:
        return DEFAULT_STATUS_S
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        if multiprocessing.parent_process() is None:   # said once, by the job (its workers import this too)
            print(f"warning: ${STATUS_ENV}={text!r} is not a number of seconds > 0; status lines every "
                  f"{DEFAULT_STATUS_S:.0f} s", file=sys.stderr)
        return DEFAULT_STATUS_S
    return value


# the status period, read once per process: a job silent this long prints a line saying it still works
# (Heartbeat), and a progress bar in a log prints a line at most this often (LineProgress)
HEARTBEAT_S = status_seconds()


class _Stamped:
    """A stream that records when, and what, was last written to it (for :class:`Heartbeat`)."""

    def __init__(self, stream, beat: Heartbeat):
        self._stream, self._beat = stream, beat

    def write(self, text: str) -> int:
        if text.strip():
            self._beat.seen(text)
        return self._stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


class Heartbeat:
    """While a job runs, one line on stderr whenever it has printed nothing for ``every`` seconds: how long
    since its last line (quoted), its time in all and its memory, so a log shows within 30 s that a long
    fit or read is alive (and how big it got) even where the library reports nothing in between."""

    def __init__(self, every: float = HEARTBEAT_S):
        self.every = every
        self.t0 = self.last = time.monotonic()
        self.last_line = ""
        self._stop = threading.Event()
        self._streams: tuple = ()

    def seen(self, text: str) -> None:
        self.last = time.monotonic()
        self.last_line = text.strip().splitlines()[-1][:100]

    def __enter__(self) -> Heartbeat:
        self._streams = (sys.stdout, sys.stderr)
        sys.stdout, sys.stderr = _Stamped(sys.stdout, self), _Stamped(sys.stderr, self)
        threading.Thread(target=self._run, name="heartbeat", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if isinstance(sys.stdout, _Stamped) and isinstance(sys.stderr, _Stamped):
            sys.stdout, sys.stderr = self._streams

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.every)):
            now = time.monotonic()
            if now - self.last < self.every:
                continue
            since = f" since: {self.last_line}" if self.last_line else ""
            line = (f"... still working ({now - self.last:.0f} s{since}; {_duration(now - self.t0)} in all; "
                    f"memory {_rss_gb():.2f} GB, peak {_peak_rss_gb():.2f} GB)")
            self.last = now
            with contextlib.suppress(Exception):   # a closed stream at exit: nothing to say
                print(line, file=self._streams[1], flush=True)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds // 60:.0f} min {seconds % 60:02.0f} s"


def _rss_gb() -> float:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 1024 ** 3


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2   # KiB on Linux


def run_main(main: Callable[[list[str] | None], int], argv: list[str] | None = None, *,
             interrupted: str = "interrupted", heartbeat: bool = True) -> None:
    """Run a job's main; a user error prints one clear line and exits with status 2. A job that prints
    nothing for 30 s says it still works (:class:`Heartbeat`; not with ``--quiet``, nor with ``heartbeat=False``:
    a server that waits for its user, whose long steps report through their own bars). Ctrl-C prints
    ``interrupted``: the job's own words for what it keeps (each job says it; nothing is promised here)."""
    quiet = "--quiet" in (sys.argv[1:] if argv is None else argv)
    try:
        with contextlib.nullcontext() if quiet or not heartbeat else Heartbeat(HEARTBEAT_S):
            code = main(argv)
    except BrokenPipeError:
        # the reader went away (``| head``): Python's own recipe - point stdout at /dev/null so the interpreter's
        # last flush cannot raise again - and the status a shell reports for a writer killed by SIGPIPE
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
        code = 128 + signal.SIGPIPE
    except Exception as exc:
        if isinstance(exc, USER_ERRORS):
            message = " ".join(str(exc).split("\n")[:1]) or type(exc).__name__
            if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
                message = f"{message}: {exc.filename}"
        elif isinstance(exc, OSError) and is_disk_full(exc):
            where = f" while writing {exc.filename}" if exc.filename else ""
            message = f"disk full{where}: free some space and re-run; finished work is kept"
        else:
            raise
        print(f"error: {message}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        # on a terminal a progress bar may be half drawn: start the line afresh (a log gets whole lines only)
        print(("\n" if sys.stderr.isatty() else "") + interrupted, file=sys.stderr)
        code = 130
    sys.exit(code)


# ---------------------------------------------------------------------------- shared options
def port_number(text: str) -> int:
    """An argparse type: a TCP port 0-65535 (0: the system picks a free one)."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0 picks a free port)")
    return port


def add_store(ap: argparse.ArgumentParser, *, creates: bool = False, help: str | None = None) -> None:
    text = help or ("feature store folder (created if missing)" if creates else
                    "feature store folder (made by pipelines.ingest)")
    ap.add_argument("--store", required=True, type=Path, help=text)


def add_pseudo_params(ap: argparse.ArgumentParser, defaults) -> None:
    """The pseudo-label transform options shared by pseudo and selftrain (``defaults``: a PseudoParams)."""
    d = defaults
    ap.add_argument("--power", type=float, default=d.power, help=f"sharpen: p ** power (default {d.power:g})")
    ap.add_argument("--min-prob", type=float, default=d.min_prob,
                    help=f"labels whose teacher probability is below this become 0 (default {d.min_prob:g})")
    ap.add_argument("--cap", type=float, default=d.cap, help="cap each window's label sum (default: no cap)")
    ap.add_argument("--weight", type=float, default=d.weight,
                    help=f"students' sample weight for the pseudo-labelled windows (default {d.weight:g})")


def pseudo_overrides(args: argparse.Namespace) -> dict:
    """The values of :func:`add_pseudo_params`' options, keyed by PseudoParams field."""
    return {"power": args.power, "min_prob": args.min_prob, "cap": args.cap, "weight": args.weight}


def add_workers(ap: argparse.ArgumentParser, what: str = "worker processes") -> None:
    ap.add_argument("--workers", type=positive_int, default=os.cpu_count() or 1,
                    help=f"{what} (default: all {os.cpu_count() or 1} cores)")


def add_engine(ap: argparse.ArgumentParser, what: str = "files") -> None:
    """``--workers``, ``--engine local|ray``, ``--address``, ``--actors``: where a job's per-file tasks run (the
    process pool of ``--workers``, or a Ray cluster's actor pool; see the README's "Running on a cluster");
    :func:`check_engine` after parsing."""
    add_workers(ap)
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help=f"run the {what} in a local process pool (default) or as Ray actor tasks "
                         "(pip install 'birdclef-stack[ray]')")
    ap.add_argument("--address", default=None,
                    help="--engine ray: the cluster (auto = the one `ray start` runs here, ray://HOST:10001 = a "
                         "remote head; default: $RAY_ADDRESS, else a Ray runtime started for this job)")
    ap.add_argument("--actors", type=positive_int, default=None,
                    help="--engine ray: actors (one CPU and one model copy each; default: every CPU of the cluster)")
    ap.set_defaults(workers=None)   # after add_workers: an explicit --workers told apart from its default


def check_engine(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse options of the other engine (:func:`add_engine`) in one line; the local engine's ``--workers``
    default (every core) filled in."""
    if args.engine == "local":
        if args.address is not None or args.actors is not None:
            ap.error("--address and --actors need --engine ray (the local engine takes --workers)")
        if args.workers is None:
            args.workers = os.cpu_count() or 1
    elif args.workers is not None:
        ap.error("--workers counts local processes; with --engine ray the cluster's actors do the work: use --actors")


def add_storage(ap: argparse.ArgumentParser) -> None:
    """``--storage URL`` and ``--workers N`` of a tuner (pipelines.tune, pipelines.stack)."""
    ap.add_argument("--storage", default=None,
                    help="where the study lives: journal:PATH, postgresql://..., mysql://..., sqlite:///PATH "
                         "(default: the store's optuna.db; journal:<store>/optuna.journal with --workers > 1)")
    ap.add_argument("--workers", type=positive_int, default=1,
                    help="tuning processes on this machine, sharing --trials (default 1)")


def _question(text: str) -> str:
    """argparse ``type=`` of ``--question``: the text, stripped; blank is refused before the run starts."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty; say what this run asks, e.g. --question 'does max pooling help?'")
    return text.strip()


_question.__name__ = "question"


def add_question(ap: argparse.ArgumentParser) -> None:
    """``--question TEXT``, spelt the same by every job that writes experiments (train, tune, stack, pseudo,
    selftrain, distill, cnn): the search log's question, stored by :func:`store_question` after the run."""
    ap.add_argument("--question", type=_question, default=None, metavar="TEXT",
                    help="the question this run asks, for the search log (e.g. 'does max pooling help rare "
                         "classes?'): stored on every experiments row the run writes; record what was learned "
                         "with python -m pipelines.answer --store DIR --head-id ID 'answer'")


def store_question(store_dir, head_ids, question: str | None, *, kind: str | None = None,
                   with_bases: bool = False) -> None:
    """After a run: ``question`` (``--question``; None: nothing to do) stored on the experiments rows ``head_ids``
    (:func:`models.experiments.record_question`), or with ``kind`` on a run that writes no row (its id the one of
    ``head_ids``: :func:`models.experiments.record_run_question`); ``with_bases``: a stacked head's base heads too
    (selftrain's stacked students, whose bases the run re-trained); one line says where. No id: says nothing was
    stored (the run wrote no row)."""
    if question is None:
        return
    from featurestore.store import FeatureStore
    from models.experiments import record_question, record_run_question

    ids = [h for h in head_ids if h]
    if not ids:
        say("question not stored: this run wrote no experiments row")
        return
    with FeatureStore.open(store_dir, create=False) as store:
        if kind is None:
            ids = record_question(store, ids, question, with_bases=with_bases)
        else:
            for subject in ids:
                record_run_question(store, subject, kind, question)
    say(f"question stored on {', '.join(ids)}; answer it with python -m pipelines.answer --store {store_dir} "
        f"--head-id {ids[0]} 'what was learned'")


def add_seed(ap: argparse.ArgumentParser, default: int = 0) -> None:
    ap.add_argument("--seed", type=int, default=default, help=f"random seed (default {default})")


def add_measure(ap: argparse.ArgumentParser, *, audio_help: str, files_help: str, files_default: int = 3,
                zero_skips: bool = False, many: bool = False, audio_alias: str | None = None,
                files_alias: str | None = None) -> None:
    """The cost-measurement options, spelt the same by every job that measures (export, plan, distill):
    ``--measure-audio`` (a folder; ``many``: one or more files) and ``--measure-files N`` (how many files;
    ``zero_skips``: 0 skips the measurement). ``*_alias``: the job's earlier spelling, still accepted."""
    audio = ["--measure-audio", *([audio_alias] if audio_alias else [])]
    files = ["--measure-files", *([files_alias] if files_alias else [])]
    ap.add_argument(*audio, dest="measure_audio", default=None, nargs="*" if many else None, type=Path,
                    metavar="FILES" if many else "DIR", help=audio_help)
    ap.add_argument(*files, dest="measure_files", default=files_default, metavar="N",
                    type=non_negative_int if zero_skips else positive_int,
                    help=f"{files_help} (default {files_default}{'; 0: skip' if zero_skips else ''})")


def json_object(text: str) -> dict:
    """argparse ``type=`` of a JSON-object option (``--params``, ``--frontend``): bad JSON or another JSON
    value is one ``error: argument --params: ...`` line (exit 2)."""
    return _json_of(text, dict, "a JSON object, e.g. '{\"C\": 0.05}'")


def json_list(text: str) -> list:
    """argparse ``type=`` of a JSON-list option (``--post-json``), as :func:`json_object`."""
    return _json_of(text, list, "a JSON list, e.g. '[[\"smooth\", {}]]'")


def _json_of(text: str, kind: type, what: str):
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); expected {what}") from None
    if not isinstance(value, kind):
        raise argparse.ArgumentTypeError(f"expected {what}, got {type(value).__name__} {text!r}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    """The argparse ``type`` of a count option: a whole number >= ``minimum``, else argparse's one-line usage error
    naming the option (every count option of every job uses it, so ``--cpus 0`` never reaches a division)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {value}")
        return value

    parse.__name__ = f"whole number >= {minimum}"    # what argparse names in its message
    return parse


positive_int = at_least(1)
non_negative_int = at_least(0)


def cap_or_none(text: str) -> int | None:
    """The argparse ``type`` of a cap that may be off: a whole number >= 1, or ``none`` (also ``0``) for no cap."""
    return None if text.strip().lower() in ("none", "0") else positive_int(text)


cap_or_none.__name__ = "whole number >= 1, or none"


# ---------------------------------------------------------------------------- progress
class LineProgress:
    """tqdm's ``update``/``close`` for a non-terminal: a status line (``n/N unit (pct) in t s, ~eta left``) at the
    first update about ``every`` seconds (default :data:`HEARTBEAT_S`; a tenth of it, at most 1 s, early) after
    the last one, and a ``done:`` line at
    :meth:`close`, or at the end of a ``with`` block that ends normally (one ended by an exception, or a
    ``close`` in a ``finally`` an exception runs through, says nothing: the job's error or interrupt line is the
    last word)."""

    def __init__(self, total: float, desc: str, unit: str, every: float | None = None, stream=None):
        self.total, self.desc, self.unit = total, desc, unit
        self.every = HEARTBEAT_S if every is None else every
        self.n = 0.0
        self.stream = stream or sys.stderr
        self.t0 = self.last = time.monotonic()
        self.closed = False

    def update(self, n: float = 1) -> None:
        self.n += n
        now = time.monotonic()
        # due a little before a full period: the heartbeat speaks after a full period of silence, so a bar that
        # moves gets its own line in first rather than a still-working line just before it
        if now - self.last >= self.every - min(1.0, self.every / 10):
            self.last = now
            self._line()

    def _line(self, final: bool = False) -> None:
        elapsed = time.monotonic() - self.t0
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        rate = self.n / elapsed if elapsed > 0 else 0.0
        eta = f", ~{(self.total - self.n) / rate:.0f} s left" if rate > 0 and self.total and not final else ""
        done = "done: " if final else ""
        print(f"{self.desc}: {done}{self.n:.0f}/{self.total:.0f} {self.unit}{pct} in {elapsed:.0f} s{eta}",
              file=self.stream, flush=True)

    def close(self) -> None:
        """The ``done:`` line, once; none while an exception propagates (a ``finally: bar.close()`` on Ctrl-C)."""
        if not self.closed:
            self.closed = True
            if sys.exc_info()[0] is None:
                self._line(final=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        self.closed = True


class _Silent:
    def update(self, n: float = 1) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: float, desc: str, unit: str = "file", *, quiet: bool = False, every: float | None = None):
    """A progress reporter: a tqdm bar when stderr is a terminal, status lines every ``every`` seconds (default
    :data:`HEARTBEAT_S`) otherwise; a context manager (see :class:`LineProgress`)."""
    if quiet:
        return _Silent()
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
    return LineProgress(total, desc, unit, every=every)


class PlannedProgress:
    """A :func:`progress` bar for a job whose total is known only once its work is planned: pass
    :meth:`start` as the library's ``on_total`` and :meth:`update` as its ``progress``; the bar appears
    at ``start`` (so an input error never lands on a half-drawn bar) and ``with`` closes it (with its
    ``done:`` line only when the block ends normally). ``PlannedProgress`` itself is the factory a
    library takes as ``progress(desc, unit)`` (e.g. :func:`pipelines._demo.run_demo`)."""

    def __init__(self, desc: str, unit: str = "file", *, quiet: bool = False):
        self.desc, self.unit, self.quiet = desc, unit, quiet
        self.bar = None

    def start(self, total: float) -> None:
        self.bar = progress(total, self.desc, self.unit, quiet=self.quiet)

    def update(self, n: float = 1) -> None:
        self.bar.update(n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> PlannedProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)


def say(message: str) -> None:
    """A job's progress line, printed at once (a log file shows it as it happens)."""
    print(message, flush=True)
