"""Worker pools (featurestore/workers.py): workers die with their parent, an initializer's error reaches the
caller (instead of workers respawned forever), a worker that dies is an error (not a wait for its lost task),
one BLAS thread per worker.

Real processes throughout: every pool runs in a subprocess with a timeout (a regression hangs, it must not hang
the suite), the parent is killed with a real SIGKILL and its workers are looked up in /proc.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from processes import alive, survivors

from featurestore.workers import ONE_THREAD_ENV, worker_pool

REPO = Path(__file__).resolve().parents[2]
LINUX_PROC = Path("/proc/self/stat").exists()

HELPERS = '''
import os
import signal
import time

from featurestore.errors import DataError


def refuse(message):
    raise DataError(message)


def stop(message):
    raise SystemExit(message)


def double(x):
    return 2 * x


def nap(seconds):
    time.sleep(seconds)
    return seconds


def killed_at_3(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x
'''


def _run(tmp_path: Path, code: str, timeout: float = 240) -> tuple[subprocess.CompletedProcess, float]:
    """``code`` in a new interpreter beside ``helpers.py`` (importable by the spawned workers too). A hang fails
    after ``timeout`` with what the script had printed, so the call that hung is named (the guard is generous:
    one run of the suite's, on a loaded box, took over 60 s to spawn its 14 workers, or hung; it printed nothing
    then)."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    script = tmp_path / "main.py"
    # every thread's stack on stderr shortly before the guard: a hang names its call
    script.write_text(f"import faulthandler, sys\nfaulthandler.dump_traceback_later({timeout - 20:.0f}, exit=True)\n"
                      f"sys.path[:0] = [{str(tmp_path)!r}, {str(REPO)!r}]\n" + textwrap.dedent(code))
    t0 = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        def text(b) -> str:
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        pytest.fail(f"the script ran over {timeout:.0f} s; it had printed:\n{text(exc.stdout)[-2000:]}\n"
                    f"stderr:\n{text(exc.stderr)[-2000:]}")
    return done, time.perf_counter() - t0


def test_initializer_error_is_raised_by_every_pool_call(tmp_path: Path) -> None:
    """The standard pool respawns a worker whose initializer raised, forever: the call hung. Here the first
    result raises the initializer's own exception (type and message), with the worker's traceback as cause."""
    done, _ = _run(tmp_path, """
        import helpers
        from featurestore.workers import worker_pool

        if __name__ == "__main__":
            for call in ("imap", "imap_unordered", "map", "starmap", "apply"):
                with worker_pool(2, helpers.refuse, ("labels.csv row 3: bad",)) as pool:
                    try:
                        if call == "apply":
                            pool.apply(helpers.double, (1,))
                        elif call == "starmap":
                            pool.starmap(helpers.double, [(1,), (2,)])
                        else:
                            list(getattr(pool, call)(helpers.double, range(8), chunksize=3))
                    except Exception as exc:
                        print(call, type(exc).__name__, exc, "|", "refuse" in str(exc.__cause__))
            with worker_pool(2, helpers.stop, ("bye",)) as pool:
                try:
                    pool.map(helpers.double, range(4))
                except Exception as exc:
                    print("exit", type(exc).__name__, exc)
            with worker_pool(2) as pool:           # and a pool whose initializer works still works
                print("ok", list(pool.imap(helpers.double, range(5))), list(pool.imap(helpers.double, range(5), 2)),
                      sorted(pool.imap_unordered(helpers.double, range(5), 3)), pool.map(helpers.double, range(3)))
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [
        *(f"{call} DataError labels.csv row 3: bad | True" for call in ("imap", "imap_unordered", "map", "starmap",
                                                                      "apply")),
        "exit ChildProcessError a worker's initializer stopped with SystemExit('bye')",
        "ok [0, 2, 4, 6, 8] [0, 2, 4, 6, 8] [0, 2, 4, 6, 8] [0, 2, 4]"]


def test_initializer_error_reaches_the_cli_as_one_line(tmp_path: Path) -> None:
    done, _ = _run(tmp_path, """
        import helpers
        from featurestore.workers import worker_pool
        from pipelines._cli import run_main

        def main(argv):
            with worker_pool(2, helpers.refuse, ("labels.csv row 3: bad",)) as pool:
                list(pool.imap_unordered(helpers.double, range(8)))
            return 0

        if __name__ == "__main__":
            run_main(main, [])
    """)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: labels.csv row 3: bad"


def test_predict_pool_with_a_broken_head_raises_instead_of_hanging(tmp_path: Path, shared_data: Path) -> None:
    """submit.predict's pool opens the head in every worker: a folder that is no head was a worker respawned
    every second, forever; now it is the BundleError."""
    head, clips = tmp_path / "no_head", sorted((shared_data / "bc2026" / "train_audio").rglob("*.ogg"))[:2]
    head.mkdir()
    done, _ = _run(tmp_path, f"""
        from pathlib import Path
        from submit.predict import iter_predictions

        if __name__ == "__main__":
            try:
                list(iter_predictions(Path({str(head)!r}), [Path(p) for p in {[str(c) for c in clips]!r}], 2, {{}}))
            except Exception as exc:
                print(type(exc).__name__, exc)
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("BundleError ") and str(head) in done.stdout, done.stdout


def test_a_worker_killed_mid_task_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A worker killed while it holds a task (here SIGKILL, as the out-of-memory killer sends): the standard pool
    starts another worker and waits for the lost task forever; here every blocking call raises."""
    done, _ = _run(tmp_path, """
        import helpers
        from featurestore.workers import worker_pool

        if __name__ == "__main__":
            for call, chunk in (("imap", 1), ("imap", 2), ("imap_unordered", 1), ("imap_unordered", 2), ("map", 2)):
                with worker_pool(2) as pool:
                    try:
                        list(getattr(pool, call)(helpers.killed_at_3, range(6), chunksize=chunk))
                    except ChildProcessError as exc:
                        print(call, str(exc).split(" ", 3)[3])
    """)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == [f"{call} was killed by SIGKILL while the pool ran (out of memory, or a crash "
                                        "in a library?): its task is lost; finished work is kept, re-run"
                                        for call in ("imap", "imap", "imap_unordered", "imap_unordered", "map")]


@pytest.mark.skipif(not LINUX_PROC, reason="looks the workers up in /proc")
def test_workers_exit_when_their_parent_is_killed(tmp_path: Path) -> None:
    """kill -9 of a parent whose pool is busy: its workers are gone within seconds (the standard pool's wait on
    their task pipe forever, re-parented to init)."""
    (tmp_path / "helpers.py").write_text(HELPERS)
    script = tmp_path / "main.py"
    script.write_text(f"import sys\nsys.path[:0] = [{str(tmp_path)!r}, {str(REPO)!r}]\n" + textwrap.dedent("""
        import helpers
        from featurestore.workers import worker_pool

        if __name__ == "__main__":
            pool = worker_pool(2)
            pool.map(helpers.double, range(4))                  # both workers up
            busy = pool.map_async(helpers.nap, [120, 120], chunksize=1)
            print(*pool.pids, flush=True)
            busy.get()
    """))
    parent = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in parent.stdout.readline().split()]
        assert len(pids) == 2 and all(alive(p) for p in pids)
        time.sleep(0.5)                                         # the naps have started
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        left = survivors(pids)                                  # killed too: a failure leaves nothing behind
    finally:
        parent.kill()
        parent.wait()
    assert not left, f"workers {left} outlived their killed parent"


def test_workers_run_one_blas_thread_and_this_process_keeps_its_environment() -> None:
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "3"
    try:
        with worker_pool(1) as pool:
            seen = pool.map(os.getenv, list(ONE_THREAD_ENV))
        assert seen == list(ONE_THREAD_ENV.values())
        assert os.environ["OMP_NUM_THREADS"] == "3"
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS")
        else:
            os.environ["OMP_NUM_THREADS"] = saved
