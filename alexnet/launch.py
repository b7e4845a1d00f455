"""The project's own launcher: one process per device on this machine, like a small ``torchrun``.

``launch(fn, nprocs, args)`` spawns ``nprocs`` processes; each sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE and ALEXNET_INIT_METHOD (a ``file://`` store in a temporary folder, so there is no
port to race for) and calls ``fn(*args)``, inside which ``alexnet.parallel.init_distributed()`` works
as under torchrun. ``fn`` must be importable (a module-level function): the processes are spawned.
``launch`` returns the ranks' return values (picklable ones), in rank order.

If a rank fails (raises, exits non-zero, or is killed) the others get ``grace_s`` seconds to exit on
their own (a rank waiting in a collective usually fails at once with "connection reset"), then are
terminated, so every rank exits non-zero within a bounded time. ``launch`` then raises
``LaunchError`` whose message starts with the traceback of the rank that failed first. Secondary
failures (communication errors caused by a peer's death) are listed after it even when they were
reported earlier.

Signals. Ctrl-C (SIGINT) belongs to the launcher: the ranks start with SIGINT ignored, so a terminal's
Ctrl-C, which reaches the whole process group, interrupts nothing in them. The launcher turns its first
SIGINT or SIGTERM into one SIGTERM to every rank (``fn`` may handle it, e.g. to stop at a step boundary
and save; by default it ends the rank), a second one into SIGKILL, and kills ranks still running
``stop_timeout_s`` after the first; it then raises ``LaunchInterrupted`` (a ``KeyboardInterrupt``).
A launcher that starts with SIGINT ignored (a shell's background job) leaves it ignored, as Python and
``train.run``'s one-process path do; SIGTERM still stops it.
A rank whose launcher died (even by SIGKILL) sends itself SIGTERM within a fraction of a second, exits
by itself at most ``stop_timeout_s`` later, and removes the launcher's temporary folder. ``fn`` and
``args`` travel to the ranks in a file, not through the start-up pipe, so a rank that dies while
starting never blocks the launcher; folders of launchers that no longer run are removed by the next
launch.

The launcher and its ranks exchange pickles (``fn`` and ``args``, the ranks' results and exceptions), and
unpickling can run code, so they live in a folder only the user can write: a new ``mkdtemp`` folder (mode
0700) by default. A ``store_dir`` that is not the user's own, or that others may write, is refused by the
launcher (``PermissionError``) and by every rank before it reads anything from it.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing as mp
import os
import pickle
import re
import shutil
import signal
import sys
import tempfile
import threading
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
    exception: BaseException | None = None  # what the rank raised, where it could be pickled

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


class LaunchInterrupted(KeyboardInterrupt):
    """The launcher got SIGINT or SIGTERM (``signum``, the first one); every rank has exited since.
    ``results``: the ranks' return values, None for a rank that returned none."""

    def __init__(self, signum: int, results: list):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.results = signum, results


_TMP_PREFIX = "alexnet-launch-"


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_dirs() -> None:
    """Temporary folders of launchers that no longer run (killed before they could clean up)."""
    base = tempfile.gettempdir()
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        m = re.fullmatch(re.escape(_TMP_PREFIX) + r"(\d+)-.+", name)
        path = os.path.join(base, name)
        try:
            if m and os.stat(path).st_uid == os.getuid() and not pid_alive(int(m[1])):
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass


def _watch_launcher(launcher_pid: int, stop_timeout_s: float) -> None:
    """If the launcher dies, SIGTERM this rank (it saves and stops, or just ends), and end it for good
    ``stop_timeout_s`` later."""
    def watch():
        while os.getppid() == launcher_pid:
            time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(stop_timeout_s)
        os._exit(128 + signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


def _is_secondary(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(s in text for s in _SECONDARY)


def _worker(rank: int, nprocs: int, payload: str, env: dict, report_dir: str, launcher_pid: int,
            stop_timeout_s: float, owned_dir: str | None):
    # SIGINT arrives ignored (inherited from the launcher, so also while Python starts) and stays so;
    # SIGTERM ends the rank unless fn handles it. Both were blocked while the launcher started the ranks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    _watch_launcher(launcher_pid, stop_timeout_s)
    os.environ.update(env)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank))
    if "OMP_NUM_THREADS" not in env:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nprocs))
    try:
        check_private(report_dir)
        fn, args = load_payload(payload)
        result = fn(*args)
        _write(os.path.join(report_dir, f"rank{rank}.result"), _pickled(result))
    except SystemExit as e:
        if e.code in (0, None):
            _remove_if_orphaned(owned_dir, launcher_pid)
            _exit_cleanly()
        _report(report_dir, rank, e, secondary=False)
        _remove_if_orphaned(owned_dir, launcher_pid)
        _exit_now(e.code if isinstance(e.code, int) else 1)
    except BaseException as e:  # noqa: BLE001 -- every failure is reported to the launcher
        _report(report_dir, rank, e, secondary=_is_secondary(e))
        _remove_if_orphaned(owned_dir, launcher_pid)
        _exit_now(1)
    _remove_if_orphaned(owned_dir, launcher_pid)
    _exit_cleanly()


def _exit_now(code: int) -> None:
    """Exit at once: no atexit handlers or process-group destructors that could hang, but multiprocessing's
    own clean-up (named semaphores, such as tqdm's lock, would otherwise be reported as leaked)."""
    with contextlib.suppress(Exception):
        mp.util._run_finalizers(0)
    os._exit(code)


def _remove_if_orphaned(owned_dir: str | None, launcher_pid: int) -> None:
    """A rank that outlived its launcher removes the launcher's temporary folder (the last one out wins)."""
    if owned_dir and os.getppid() != launcher_pid:
        shutil.rmtree(owned_dir, ignore_errors=True)


def _exit_cleanly():
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    sys.exit(0)


def _report(report_dir: str, rank: int, exc: BaseException, secondary: bool):
    text = "".join(traceback.format_exception(exc))
    _write(os.path.join(report_dir, f"rank{rank}.exception"), _pickled(exc))
    _write(os.path.join(report_dir, f"rank{rank}.json"),
           json.dumps({"time": time.time(), "traceback": text, "secondary": secondary}).encode())


def _pickled(obj) -> bytes:
    try:
        return pickle.dumps(obj)
    except Exception:  # noqa: BLE001 -- what doesn't pickle comes back as None (a failure keeps its traceback)
        return pickle.dumps(None)


def load_payload(path: str):
    """The launcher's ``(fn, args)``, unpickled only from a private folder (``check_private``)."""
    check_private(os.path.dirname(path))
    with open(path, "rb") as f:
        return pickle.load(f)


def check_private(folder: str) -> None:
    """``PermissionError`` unless ``folder`` is the user's own and no one else may write in it: what the
    launcher and the ranks unpickle from it must be what they wrote themselves."""
    st = os.stat(folder)
    if st.st_uid != os.getuid() or st.st_mode & 0o022:
        raise PermissionError(f"{folder} (mode {st.st_mode & 0o777:o}, owner uid {st.st_uid}) is not "
                              f"private: the launcher's pickles are read from it, so it must belong to uid "
                              f"{os.getuid()} and be writable by no one else")


def _write(path: str, data: bytes) -> None:
    try:
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
    except OSError:  # the launcher's folder is gone (the launcher died): nobody to report to
        pass


def _read(path: str):
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        try:
            return pickle.load(f)
        except Exception:  # noqa: BLE001 -- a class the launcher can't import
            return None


def launch(fn, nprocs: int, args=(), backend: str | None = None, store_dir: str | None = None,
           grace_s: float = 10.0, stop_timeout_s: float = 60.0) -> list:
    """Run ``fn(*args)`` in ``nprocs`` spawned processes and return their results; raise ``LaunchError``
    if any of them fails (``failures[i].exception``: what it raised).

    backend: passed to ``init_distributed`` through ALEXNET_BACKEND (default: nccl with CUDA, else gloo).
    store_dir: folder for the ``file://`` init store, the ranks' error reports and the pickled ``fn`` and
    ``args`` (default: a new private temporary folder, removed afterwards); it must be the user's own and
    writable by no one else (``PermissionError``).
    grace_s: how long the other ranks may take to exit after the first failure before they are terminated.
    stop_timeout_s: how long the ranks may take to exit after the launcher was signalled (module docstring)
    before they are killed; raises ``LaunchInterrupted`` after such a stop.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    _remove_stale_dirs()
    owned_dir = None
    if store_dir is None:
        store_dir = owned_dir = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-")
    try:
        return _launch(fn, nprocs, args, backend, store_dir, owned_dir, grace_s, stop_timeout_s)
    finally:
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)


def _launch(fn, nprocs, args, backend, store_dir, owned_dir, grace_s, stop_timeout_s) -> list:
    os.makedirs(store_dir, mode=0o700, exist_ok=True)
    check_private(store_dir)
    report_dir = os.path.join(store_dir, "reports")
    os.makedirs(report_dir, mode=0o700, exist_ok=True)
    check_private(report_dir)
    store = os.path.join(store_dir, "store")
    if os.path.exists(store):
        os.remove(store)  # a file store left by an earlier run would confuse the rendezvous
    payload = os.path.join(store_dir, "payload.pkl")
    with open(payload, "wb") as f:  # (fn, args) can be large: a file, never the start-up pipe
        pickle.dump((fn, args), f)
    env = {"WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
           "ALEXNET_INIT_METHOD": "file://" + os.path.abspath(store)}
    if backend is not None:
        env["ALEXNET_BACKEND"] = backend
    if "OMP_NUM_THREADS" in os.environ:
        env["OMP_NUM_THREADS"] = os.environ["OMP_NUM_THREADS"]

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker, name=f"rank{r}",
                         args=(r, nprocs, payload, env, report_dir, os.getpid(), stop_timeout_s, owned_dir))
             for r in range(nprocs)]
    exit_time: dict[int, float] = {}
    terminated: set[int] = set()
    signals: list[int] = []   # what the launcher received, in order
    stop_deadline = [None]

    def forward(signum, frame):
        signals.append(signum)
        if stop_deadline[0] is None:
            stop_deadline[0] = time.monotonic() + stop_timeout_s
        for p in procs:   # the first signal asks the ranks to stop, a second one ends them
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signal.SIGTERM if len(signals) == 1 else signal.SIGKILL)

    main_thread = threading.current_thread() is threading.main_thread()
    old_handlers = {}
    try:
        if main_thread:   # the ranks inherit SIGINT ignored; signals wait until the handlers are in place
            old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
            old_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            for p in procs:
                p.start()
        finally:
            if main_thread:
                old_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, forward)
                if old_handlers[signal.SIGINT] is not signal.SIG_IGN:   # a background job's stays ignored
                    signal.signal(signal.SIGINT, forward)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        first_failure = None
        while len(exit_time) < nprocs:
            alive = [p for r, p in enumerate(procs) if r not in exit_time]
            timeout = 1.0 if first_failure is None else max(0.0, first_failure + grace_s - time.monotonic())
            wait([p.sentinel for p in alive], timeout=min(timeout, 1.0))
            for r, p in enumerate(procs):
                if r not in exit_time and p.exitcode is not None:
                    exit_time[r] = time.time()
                    if p.exitcode != 0 and first_failure is None:
                        first_failure = time.monotonic()
            stop_late = stop_deadline[0] is not None and time.monotonic() >= stop_deadline[0]
            if stop_late or (first_failure is not None and time.monotonic() >= first_failure + grace_s):
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
            if p.pid is not None and p.exitcode is None:
                p.kill()
                p.join()
        for s, h in old_handlers.items():
            signal.signal(s, h)
    results = [_read(os.path.join(report_dir, f"rank{r}.result")) for r in range(nprocs)]
    if signals:
        raise LaunchInterrupted(signals[0], results)

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
            secondary=bool(report and report["secondary"]), terminated=r in terminated and report is None,
            exception=_read(os.path.join(report_dir, f"rank{r}.exception"))))
    if failures:
        failures.sort(key=lambda f: (f.terminated, f.secondary, f.time))
        raise LaunchError(failures)
    return results
