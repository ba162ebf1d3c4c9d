"""``--engine ray``: a job's per-file tasks run as Ray Data actor tasks on a Ray cluster (the ``[ray]`` extra).

Guarantees:

* :func:`ray_session` joins the cluster named by ``--address`` (``auto``: the one ``ray start`` runs on this
  machine; ``ray://HOST:10001``: a remote head), else ``$RAY_ADDRESS``, else starts a Ray runtime on this
  machine for the job alone (stopped when the job ends). Ray is imported only here and only then: without
  it the job stops with one ``error:`` line naming ``pip install 'birdclef-stack[ray]'``.
* :func:`run_actor_tasks` feeds a list of tasks through one Ray Data pipeline (``from_items`` with one block
  per task -> ``map_batches`` over a fixed pool of ``actors`` actors, one CPU each, ``batch_size=1``). Each
  actor builds its state (models) ONCE with ``make_handler()`` and then calls it on one task at a time; the
  pool is full before the first task starts (``wait_for_min_actors_s``). Results stream back as tasks finish
  (any order), so the caller drives its progress display. A handler's exception (or its construction's) is
  re-raised on the driver as itself, so a :class:`~featurestore.errors.StackError` stays one ``error:`` line;
  a killed actor process (SIGKILL, a lost node) is restarted and its task retried by Ray (``retries`` times
  each): handlers must therefore be idempotent (the embed job's parts have deterministic names).
* Reusable beyond embedding (``submit`` builds its batch prediction on it): nothing here knows about tasks'
  contents, only that tasks and results pickle.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from featurestore.errors import DataError, StoreError, UserInputError

RAY_HINT = "pip install 'birdclef-stack[ray]'"
WAIT_FOR_ACTORS_S = 300     # a pool not full by then: the cluster lacks the CPUs (or nodes are still joining)
RETRIES = 3                 # restarts per actor and retries per task after a process death
INFLIGHT = 2                # tasks queued per actor: the next task is there when one ends


def import_ray():
    """The ``ray`` module with Ray Data, or a :class:`UserInputError` naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401 - the [data] part of the extra
    except ImportError as exc:
        raise UserInputError(f"--engine ray needs Ray Data, which is not installed here ({exc}): run "
                             f"{RAY_HINT} on every machine of the cluster, or use --engine local") from None
    return ray


@dataclass
class ClusterInfo:
    """The cluster a job runs on: where, how big, how long joining (or starting) it took."""

    address: str
    nodes: int
    cpus: int
    started_here: bool
    connect_s: float
    dashboard: str | None = None

    def describe(self) -> str:
        where = "a Ray runtime started for this job" if self.started_here else f"Ray cluster {self.address}"
        board = f", dashboard {self.dashboard}" if self.dashboard else ""
        return f"{where}: {self.nodes} node(s), {self.cpus} CPU(s), joined in {self.connect_s:.1f} s{board}"


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[ClusterInfo]:
    """Join (or start) the Ray cluster for one job; see the module docstring. A session already open in
    this process (``ray.init`` by the caller, e.g. a test's cluster) is used as it is and left open."""
    ray = import_ray()
    t0 = time.perf_counter()
    started = False
    if not ray.is_initialized():
        target = address or os.environ.get("RAY_ADDRESS") or "local"
        options: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": True}
        if target == "local":
            options["include_dashboard"] = False
        else:
            _check_reachable(target)
        try:
            ray.init(address=target, **options)
        except (ConnectionError, ValueError, RuntimeError, TimeoutError) as exc:
            message = " ".join(str(exc).split())[:300].rstrip(".")
            raise UserInputError(f"cannot join the Ray cluster at --address {target}: {message}; check the head "
                                 "runs (ray status on it) and the address (auto, or ray://HOST:10001)") from None
        started = True
    try:
        resources = ray.cluster_resources()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        context = ray.get_runtime_context()
        dashboard = None
        with contextlib.suppress(Exception):
            dashboard = context.dashboard_url or None  # type: ignore[attr-defined]
        info = ClusterInfo(address=str(getattr(context, "gcs_address", "") or address or "local"),
                           nodes=len(nodes), cpus=int(resources.get("CPU", 0)),
                           started_here=started and not (address or os.environ.get("RAY_ADDRESS")),
                           connect_s=time.perf_counter() - t0, dashboard=dashboard)
        yield info
    finally:
        if started:
            ray.shutdown()


def _check_reachable(target: str) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` address nothing answers at is one error within seconds (``ray.init``
    itself keeps retrying for minutes)."""
    host, sep, port = target.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit() or target == "auto":
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as exc:
        raise UserInputError(f"cannot join the Ray cluster at --address {target}: nothing answers there "
                             f"({exc.strerror or exc}); start it (ray start --head on {host}) or check the address "
                             "(auto, HOST:6379, or ray://HOST:10001)") from None


@dataclass
class ActorStats:
    """What :func:`run_actor_tasks` measured: seconds from the pipeline's start until each of the pool's first
    actors (those that ran a task) had built its state (``startup_s``), every actor process seen (pid@host,
    a restarted actor counts again) and the tasks done."""

    startup_s: float = 0.0
    actors: set[str] = field(default_factory=set)
    tasks: int = 0


class _Raise:
    """A task's (or an actor's construction's) exception, carried back to the driver."""

    def __init__(self, exc: BaseException):
        try:
            pickle.dumps(exc)
            self.exc = exc
        except Exception:  # an exception that does not pickle: its words
            self.exc = RuntimeError(f"{type(exc).__name__}: {exc}")


class _ActorShell:
    """The Ray Data actor class: builds the handler once, then runs one pickled task per row."""

    def __init__(self, make_handler: Callable[[], Callable[[Any], Any]], env: dict[str, str] | None = None):
        self.where = f"{os.getpid()}@{socket.gethostname()}"
        self.error: _Raise | None = None
        try:
            if env:   # set here, not as a runtime_env (that costs every actor a fresh worker process start)
                from threadpoolctl import threadpool_limits

                os.environ.update(env)
                if env.get("OMP_NUM_THREADS") == "1":
                    self._limits = threadpool_limits(1)   # BLAS pools numpy already started
            self.handler = make_handler()
        except Exception as exc:   # reported with the first task, so the driver raises it as itself
            self.error = _Raise(exc)
        self.ready_at = time.time()

    def __call__(self, batch):
        import pyarrow as pa

        out = []
        for payload in batch.column("task").to_pylist():
            if self.error is not None:
                outcome: Any = self.error
            else:
                try:
                    outcome = self.handler(pickle.loads(payload))
                except Exception as exc:
                    outcome = _Raise(exc)
            out.append(pickle.dumps((outcome, self.ready_at, self.where)))
        return pa.table({"result": pa.array(out, pa.binary())})


def run_actor_tasks(make_handler: Callable[[], Callable[[Any], Any]], tasks: Sequence[Any], *, actors: int,
                    env: dict[str, str] | None = None, retries: int = RETRIES,
                    wait_for_actors_s: float = WAIT_FOR_ACTORS_S, stats: ActorStats | None = None) -> Iterator[Any]:
    """``handler(task)`` for every task on a pool of ``actors`` Ray actors (one CPU each; ``handler =
    make_handler()`` built once per actor), yielding the results as they finish; see the module docstring.

    Needs an open :func:`ray_session`. ``make_handler`` and the tasks must pickle (cloudpickle); ``env``: extra
    environment variables set in each actor process before ``make_handler()`` (``OMP_NUM_THREADS=1`` also
    limits the BLAS pools already loaded to one thread). Raises the handler's own exception,
    or a :class:`StoreError` when Ray gives up (the pool cannot start, a task's process died ``retries`` + 1
    times): what was done so far stays done, so re-running the job resumes.
    """
    if not tasks:
        return
    ray = import_ray()
    from ray.data import ActorPoolStrategy, DataContext

    n = max(1, min(actors, len(tasks)))
    stats = stats if stats is not None else ActorStats()
    ctx = DataContext.get_current()
    saved = (ctx.wait_for_min_actors_s, ctx.enable_progress_bars, ctx.print_on_execution_start)
    ctx.wait_for_min_actors_s = int(wait_for_actors_s)
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    # Ray Data says once that its progress bars are off (ours shows the job's) and logs each run at INFO
    ray.util.debug.log_once("ray_data_progress_manager_disabled")
    data_log = logging.getLogger("ray.data")
    level = data_log.level
    data_log.setLevel(max(level, logging.WARNING))

    class Shell(_ActorShell):   # the factory travels with the class, not as constructor arguments in the
        def __init__(self):     # object store (which Ray cannot promise to keep for a restart)
            super().__init__(make_handler, env)

    t0 = time.time()
    try:
        ds = ray.data.from_items([{"task": pickle.dumps(t)} for t in tasks], override_num_blocks=len(tasks))
        with warnings.catch_warnings():   # max_restarts/max_task_retries have no named parameter yet (Ray 2.60)
            warnings.simplefilter("ignore", DeprecationWarning)
            ds = ds.map_batches(Shell, batch_size=1, batch_format="pyarrow", num_cpus=1,
                                compute=ActorPoolStrategy(min_size=n, max_size=n, max_tasks_in_flight_per_actor=INFLIGHT),
                                max_restarts=retries, max_task_retries=retries)
        for row in ds.iter_rows():
            outcome, ready_at, where = pickle.loads(row["result"])
            if isinstance(outcome, _Raise):
                raise outcome.exc
            if where not in stats.actors:
                stats.actors.add(where)
                if len(stats.actors) <= n:   # the pool's first actors, not one restarted after a death
                    stats.startup_s = max(stats.startup_s, ready_at - t0)
            stats.tasks += 1
            yield outcome
    except ray.exceptions.RayError as exc:
        message = " ".join(str(exc).split())[:400]
        raise StoreError(f"the Ray cluster gave up on the job ({type(exc).__name__}: {message}); what finished is "
                         "kept: re-run the same command to do the rest (ray status shows the cluster's nodes)"
                         ) from None
    finally:
        ctx.wait_for_min_actors_s, ctx.enable_progress_bars, ctx.print_on_execution_start = saved
        data_log.setLevel(level)


def check_visible(paths: Sequence[str | os.PathLike]) -> None:
    """Raise a :class:`DataError` naming this node when a folder of ``paths`` is not visible here: the
    store (and the audio) must be on a filesystem every node of the cluster mounts at the same path."""
    for path in paths:
        if not Path(path).is_dir():
            raise DataError(f"node {socket.gethostname()} cannot see {path}: the store and audio folders must be on "
                            "a filesystem every Ray node mounts at the same path (README 'Running on a cluster'); "
                            "mount it there, or use --engine local")
