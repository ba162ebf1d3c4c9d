"""Worker process pools: the one way the toolkit starts worker processes (ingest, embed, the CNN cache,
predict, the planner).

:func:`worker_pool` returns a :class:`WorkerPool`, a :class:`multiprocessing.pool.Pool` of the ``spawn``
context (a DuckDB connection or an interpreter is never forked), used exactly like one
(``with worker_pool(n, init, args) as pool: pool.imap(...)``).

Guarantees:

* **Workers exit with their parent.** Each worker watches the read end of a pipe whose only write end
  the parent holds; when the parent dies in any way (``kill -9``, a bus error, a crash) the OS closes
  that end, the worker's read returns end-of-file and the worker exits at once. Nothing is polled. (A
  standard pool's workers hold both ends of their own task pipe, so they would wait forever; Linux's
  parent-death signal, ``prctl(PR_SET_PDEATHSIG)``, follows the *thread* that started a worker, so a
  pool made in a thread that ends would lose its workers: the pipe has neither catch and works on
  every OS.)
* **An initializer that raises is an error, not a loop.** A standard pool's worker exits when its
  initializer raises, and the pool starts another, forever. Here the worker keeps the exception and
  every task it is given raises it: the first result the parent reads raises the initializer's
  exception with its type and message (a :class:`~featurestore.errors.StackError` reaches the CLI as
  ``error: …``; a ``SystemExit`` or ``KeyboardInterrupt`` comes back as a ``ChildProcessError``
  naming it), the worker's traceback as its cause.
* **A worker that dies is an error, not a hang.** A worker killed (out of memory, a crash in a library,
  ``os._exit``) loses the task it held; the standard pool starts another worker and the caller waits for
  that task forever. Here every blocking call (``map``, ``starmap``, ``apply``, iterating ``imap`` /
  ``imap_unordered``) checks the workers every :data:`WATCH_SECONDS` while it waits and raises a
  ``ChildProcessError`` naming the worker and its signal or exit code.
* **Ctrl-C is the parent's.** A terminal's Ctrl-C sends SIGINT to the whole process group, workers
  included; a worker ignores it (it would otherwise print ``Process SpawnPoolWorker-2:`` and a
  traceback beside the job's own one line): the parent gets the ``KeyboardInterrupt``, leaving the
  ``with`` block terminates the workers. A worker the main thread starts ignores SIGINT from its first
  instruction (the disposition is inherited through ``exec``; the parent ignores SIGINT only for the
  instant of each fork + exec); one started from another thread (a pool made in a thread, a worker the
  pool replaces) ignores it from its initializer on.
* **One BLAS/OpenMP thread per worker**: the workers start with :data:`ONE_THREAD_ENV` (and the caller's
  ``env``) in their environment (this process's own environment is restored): the toolkit parallelises
  by process.

Leaving the ``with`` block terminates the workers (as :class:`multiprocessing.pool.Pool` does). Only
the standard library is imported here (the inference path uses it).
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import multiprocessing.pool
import os
import signal
import threading
from collections.abc import Callable, Iterable, Mapping

WATCH_SECONDS = 0.5       # how often a caller waiting for results checks that no worker died
# one BLAS/OpenMP (and TensorFlow op) thread per process: the toolkit parallelises by process (job workers,
# the test session)
ONE_THREAD_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                  "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}


@contextlib.contextmanager
def environ_set(updates: Mapping[str, str | None]):
    """Set (a value) or remove (None) environment variables for the duration; restores them after."""
    def put(values: Mapping[str, str | None]) -> None:
        for n, v in values.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v

    saved = {n: os.environ.get(n) for n in updates}
    try:
        put(updates)
        yield
    finally:
        put(saved)


# ---------------------------------------------------------------------------- inside a worker
_INIT_ERROR: list[BaseException] = []      # the initializer's exception, if it raised (one per worker)


def _start_worker(lifeline, initializer: Callable | None, initargs: tuple) -> None:
    """Every worker's initializer: ignore Ctrl-C (the parent reports it), watch the parent, then run the
    caller's initializer, keeping its error."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(lifeline,), name="exit-with-parent", daemon=True).start()
    if initializer is None:
        return
    try:
        initializer(*initargs)
    except BaseException as exc:  # kept and raised by every task (a worker that exits would be respawned)
        _INIT_ERROR.append(exc)


def _exit_with_parent(lifeline) -> None:
    """Block on the parent's pipe: the parent never writes, so this returns only when it has died."""
    with contextlib.suppress(EOFError, OSError):
        lifeline.recv_bytes()
    os._exit(1)


class _Checked:
    """A task function that first raises the worker's initializer error, if any."""

    def __init__(self, func: Callable):
        self.func = func

    def __call__(self, *args, **kwds):
        if _INIT_ERROR:
            exc = _INIT_ERROR[0]
            if not isinstance(exc, Exception):      # a pool's worker would die of it (and be respawned)
                raise ChildProcessError(f"a worker's initializer stopped with {exc!r}") from exc
            raise exc
        return self.func(*args, **kwds)


class _Chunk:
    """``func`` over a chunk of items (a task of a chunked imap)."""

    def __init__(self, func: Callable):
        self.func = func

    def __call__(self, chunk: tuple) -> list:
        return [self.func(x) for x in chunk]


# ---------------------------------------------------------------------------- in the parent
def _chunks(iterable: Iterable, size: int):
    items = iter(iterable)
    while chunk := tuple(itertools.islice(items, size)):
        yield chunk


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class _SpawnedWorker(multiprocessing.get_context("spawn").Process):
    """A spawned worker process that starts with SIGINT ignored when the main thread starts it: SIG_IGN is
    inherited through ``exec``, and Python installs its KeyboardInterrupt handler only over the default,
    so a Ctrl-C while the worker still imports its modules cannot print a traceback either. (The
    parent's own Ctrl-C in the instant of the fork + exec is lost: press it again.)"""

    def start(self) -> None:
        if threading.current_thread() is not threading.main_thread():   # only the main thread sets handlers
            return super().start()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            super().start()
        finally:
            signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)


class WorkerPool(multiprocessing.pool.Pool):
    """A spawn-context pool with the guarantees of this module (see :func:`worker_pool`)."""

    @staticmethod
    def Process(ctx, *args, **kwds):   # noqa: N802 (multiprocessing.pool.Pool's name)
        return _SpawnedWorker(*args, **kwds)

    def __init__(self, processes: int, initializer: Callable | None = None, initargs: Iterable = (),
                 env: Mapping[str, str | None] | None = None):
        ctx = multiprocessing.get_context("spawn")
        # the workers get the read end; the only write end stays here (pipes are not inherited by exec)
        self._lifeline_r, self._lifeline_w = ctx.Pipe(duplex=False)
        with environ_set({**ONE_THREAD_ENV, **(env or {})}):
            super().__init__(processes, _start_worker, (self._lifeline_r, initializer, tuple(initargs)),
                             context=ctx)
        self._started = list(self._pool)     # no worker leaves on its own while the pool runs (see _check)

    @property
    def pids(self) -> list[int]:
        """Process ids of the running workers."""
        return [p.pid for p in self._pool]

    # ------------------------------------------------------------ a worker that dies
    def _check(self) -> None:
        """Raise if a worker died (a signal, ``os._exit``, a crash in a library): the standard pool starts a new
        one and the task it held is never answered, so the caller would wait forever."""
        if self._state == multiprocessing.pool.TERMINATE:
            return
        for p in self._started:
            code = p.exitcode
            if code is not None and (code != 0 or self._state == multiprocessing.pool.RUN):
                how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
                raise ChildProcessError(f"worker process {p.pid} {how} while the pool ran (out of memory, or a crash "
                                        "in a library?): its task is lost; finished work is kept, re-run")

    def _watched(self, results):
        while True:
            try:
                yield results.next(timeout=WATCH_SECONDS)
            except StopIteration:
                return
            except multiprocessing.TimeoutError:
                self._check()

    def _wait(self, result):
        while True:
            try:
                return result.get(timeout=WATCH_SECONDS)
            except multiprocessing.TimeoutError:
                self._check()

    def imap(self, func, iterable, chunksize=1):
        if chunksize > 1:        # the standard pool's chunked imap hides its results iterator: chunk here
            return (x for chunk in self.imap(_Chunk(func), _chunks(iterable, chunksize)) for x in chunk)
        return self._watched(super().imap(func, iterable))

    def imap_unordered(self, func, iterable, chunksize=1):
        if chunksize > 1:
            return (x for chunk in self.imap_unordered(_Chunk(func), _chunks(iterable, chunksize)) for x in chunk)
        return self._watched(super().imap_unordered(func, iterable))

    def map(self, func, iterable, chunksize=None):
        return self._wait(self.map_async(func, iterable, chunksize))

    def starmap(self, func, iterable, chunksize=None):
        return self._wait(self.starmap_async(func, iterable, chunksize))

    def apply(self, func, args=(), kwds=None):
        return self._wait(self.apply_async(func, args, kwds))

    def _guarded_task_generation(self, result_job, func, iterable):   # map, imap, imap_unordered, starmap
        return super()._guarded_task_generation(result_job, _Checked(func), iterable)

    def apply_async(self, func, args=(), kwds=None, callback=None, error_callback=None):
        return super().apply_async(_Checked(func), args, kwds or {}, callback, error_callback)

    def terminate(self) -> None:
        super().terminate()
        self._lifeline_w.close()

    def join(self) -> None:
        super().join()
        self._lifeline_w.close()


def worker_pool(processes: int, initializer: Callable | None = None, initargs: Iterable = (),
                env: Mapping[str, str | None] | None = None) -> WorkerPool:
    """A pool of ``processes`` spawned workers, each running ``initializer(*initargs)`` once; see the module
    docstring for what it guarantees (exit with the parent, initializer errors raised, one BLAS thread).
    ``env``: more variables the workers start with (None removes one), e.g. :func:`embed.extractors.pool_env`."""
    return WorkerPool(processes, initializer, initargs, env)
