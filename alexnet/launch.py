"""The project's own launcher: one process per device on this machine, like a small ``torchrun``.

``launch(fn, nprocs, args)`` spawns ``nprocs`` processes; each sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE and ALEXNET_INIT_METHOD (a ``file://`` store in a temporary folder, so there is no
port to race for) and calls ``fn(*args)``, inside which ``alexnet.parallel.init_distributed()`` works
as under torchrun. ``fn`` must be importable (a module-level function): the processes are spawned.

If a rank fails (raises, exits non-zero, or is killed) the others get ``grace_s`` seconds to exit on
their own (a rank waiting in a collective usually fails at once with "connection reset"), then are
terminated, so every rank exits non-zero within a bounded time. ``launch`` then raises
``LaunchError`` whose message starts with the traceback of the rank that failed first. Secondary
failures (communication errors caused by a peer's death) are listed after it even when they were
reported earlier.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from multiprocessing.connection import wait

# Messages of the communication errors that a rank sees when a peer dies (gloo, NCCL, the c10d store).
_SECONDARY = ("Connection reset by peer", "Connection closed by peer", "Broken pipe", "Socket Timeout",
              "NCCL communicator was aborted", "ProcessGroupNCCL", "DistNetworkError", "DistBackendError")


@dataclass
class RankFailure:
    rank: int
    exitcode: int | None  # negative: killed by that signal
    time: float  # when it failed (wall clock): its report, else when the launcher saw it exit
    traceback: str | None  # None when the rank left no report (killed, or exited without raising)
    secondary: bool  # a communication error caused by another rank's failure
    terminated: bool  # stopped by the launcher after another rank failed

    def describe(self) -> str:
        if self.terminated:
            head = f"rank {self.rank}: terminated by the launcher after another rank failed"
        elif self.exitcode is not None and self.exitcode < 0:
            head = f"rank {self.rank}: killed by signal {signal.Signals(-self.exitcode).name} (no traceback)"
        else:
            head = f"rank {self.rank}: exit code {self.exitcode}"
        return head if self.traceback is None else f"{head}\n{self.traceback.rstrip()}"


class LaunchError(RuntimeError):
    """Some rank failed. ``failures`` is sorted root cause first."""

    def __init__(self, failures: list[RankFailure]):
        self.failures = failures
        first, rest = failures[0], failures[1:]
        lines = [f"rank {first.rank} failed first; {len(rest)} other rank(s) failed after it", "",
                 first.describe()]
        for f in rest:
            lines += ["", "-" * 20, f.describe()]
        super().__init__("\n".join(lines))


def _is_secondary(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in _SECONDARY)


def _worker(rank: int, nprocs: int, fn, args, env: dict, report_dir: str):
    os.environ.update(env)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    if "OMP_NUM_THREADS" not in env:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    try:
        fn(*args)
    except SystemExit as e:
        if e.code in (0, None):
            _exit_cleanly()
        _report(report_dir, rank, e, secondary=False)
        os._exit(e.code if isinstance(e.code, int) else 1)
    except BaseException as e:  # noqa: BLE001 -- every failure is reported to the launcher
        _report(report_dir, rank, e, secondary=_is_secondary(e))
        os._exit(1)  # now: no atexit handlers or process-group destructors that could hang
    _exit_cleanly()


def _exit_cleanly():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(0)


def _report(report_dir: str, rank: int, exc: BaseException, secondary: bool):
    text = "".join(traceback.format_exception(exc))
    path = os.path.join(report_dir, f"rank{rank}.json")
    with open(path + ".tmp", "w") as f:
        json.dump({"time": time.time(), "traceback": text, "secondary": secondary}, f)
    os.replace(path + ".tmp", path)


def launch(fn, nprocs: int, args=(), backend: str | None = None, store_dir: str | None = None,
           grace_s: float = 10.0) -> None:
    """Run ``fn(*args)`` in ``nprocs`` spawned processes; raise ``LaunchError`` if any of them fails.

    backend: passed to ``init_distributed`` through ALEXNET_BACKEND (default: nccl with CUDA, else gloo).
    store_dir: folder for the ``file://`` init store and the ranks' error reports (default: a new
    temporary folder, removed afterwards).
    grace_s: how long the other ranks may take to exit after the first failure before they are terminated.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    tmp = None
    if store_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="alexnet-launch-")
        store_dir = tmp.name
    report_dir = os.path.join(store_dir, "reports")
    os.makedirs(report_dir, exist_ok=True)
    store = os.path.join(store_dir, "store")
    if os.path.exists(store):
        os.remove(store)  # a file store left by an earlier run would confuse the rendezvous
    env = {"WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
           "ALEXNET_INIT_METHOD": "file://" + os.path.abspath(store)}
    if backend is not None:
        env["ALEXNET_BACKEND"] = backend
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(r, nprocs, fn, args, env, report_dir), name=f"rank{r}")
             for r in range(nprocs)]
    exit_time: dict[int, float] = {}
    terminated: set[int] = set()
    try:
        for p in procs:
            p.start()
        first_failure = None
        while len(exit_time) < nprocs:
            alive = [p for r, p in enumerate(procs) if r not in exit_time]
            timeout = 1.0 if first_failure is None else max(0.0, first_failure + grace_s - time.monotonic())
            wait([p.sentinel for p in alive], timeout=timeout)
            for r, p in enumerate(procs):
                if r not in exit_time and p.exitcode is not None:
                    exit_time[r] = time.time()
                    if p.exitcode != 0 and first_failure is None:
                        first_failure = time.monotonic()
            if first_failure is not None and time.monotonic() >= first_failure + grace_s:
                for r, p in enumerate(procs):
                    if r not in exit_time:
                        terminated.add(r)
                        p.terminate()
                for r, p in enumerate(procs):
                    if r not in exit_time:
                        p.join(5.0)
                        if p.exitcode is None:
                            p.kill()
                            p.join()
                        exit_time[r] = time.time()
    finally:
        for p in procs:  # the launcher itself was interrupted: leave no orphans
            if p.exitcode is None and p.pid is not None:
                p.kill()
                p.join()

    failures = []
    for r, p in enumerate(procs):
        if p.exitcode == 0:
            continue
        report = None
        path = os.path.join(report_dir, f"rank{r}.json")
        if os.path.exists(path):
            with open(path) as f:
                report = json.load(f)
        failures.append(RankFailure(
            rank=r, exitcode=p.exitcode, time=report["time"] if report else exit_time[r],
            traceback=report["traceback"] if report else None,
            secondary=bool(report and report["secondary"]), terminated=r in terminated and report is None))
    if tmp is not None:
        tmp.cleanup()
    if failures:
        failures.sort(key=lambda f: (f.terminated, f.secondary, f.time))
        raise LaunchError(failures)
