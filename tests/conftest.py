"""Test setup. Without a CUDA GPU, the Triton kernels run on CPU tensors in Triton's interpreter:
TRITON_INTERPRET must be set before anything imports triton (``@triton.jit`` reads it when a
kernel is defined), so this file sets it first. With a GPU the kernels run compiled on CUDA
tensors and CPU tensors take the plain-PyTorch path."""

import os
import signal

import torch  # importing torch does not import triton

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

HAS_CUDA = torch.cuda.is_available()


def _lighter_interpreter() -> None:
    """Two costs of Triton's interpreter (3.6-3.8) that change nothing it computes; together they took
    about 60% of an interpreted test's time (README.md, "Tests"):
    - with ``debug`` off it still checks every int32 add, sub and mul for overflow (the sum redone in int64
      and compared), then drops the check: ``device_assert`` returns at once without ``debug``;
    - every call of a ``@triton.jit`` helper inside a kernel patches ``triton.language`` again (a scan of
      its members, ~0.3 ms), which the launch has already patched for the same modules.
    Each is skipped only where the interpreter looks as expected; otherwise it runs as shipped."""
    import dataclasses
    import inspect

    import triton.language as tl
    from triton.runtime import interpreter

    builder = getattr(interpreter, "interpreter_builder", None)
    options = getattr(builder, "options", None)
    if dataclasses.is_dataclass(options) and {"debug", "sanitize_overflow"} <= options.__dict__.keys() \
            and not options.debug:
        builder.options = dataclasses.replace(options, sanitize_overflow=False)

    patch_lang = getattr(interpreter, "_patch_lang", None)
    executor = getattr(interpreter, "GridExecutor", None)
    scope = getattr(interpreter, "_LangPatchScope", None)
    if patch_lang is None or executor is None or scope is None:
        return
    patched = []  # the language modules patched by the running launch (one launch at a time)

    def modules(fn) -> set[int]:  # the modules _patch_lang patches for fn
        return {id(v) for v in fn.__globals__.values() if inspect.ismodule(v) and v in (tl, tl.core)}

    def once_per_launch(fn):
        if patched:
            wanted = modules(fn)
            if wanted <= patched[-1]:
                return scope()  # nothing to restore
            patched[-1] |= wanted
        return patch_lang(fn)

    launch = executor.__call__

    def call(self, *args, **kwargs):
        patched.append(set())  # filled by the launch's own _patch_lang
        try:
            return launch(self, *args, **kwargs)
        finally:
            patched.pop()

    interpreter._patch_lang = once_per_launch
    executor.__call__ = call


if os.environ.get("TRITON_INTERPRET") == "1":
    _lighter_interpreter()

# The exhaustive tier (.ci/run runs it after the plain `python -m pytest -q`): ALEXNET_EXHAUSTIVE=1 runs the
# tests marked slow and gives the hypothesis tests their full number of examples (tests/_utils.py).
EXHAUSTIVE = os.environ.get("ALEXNET_EXHAUSTIVE", "0") not in ("", "0")

# A shell script starts a background job (`pytest &`) with SIGINT ignored, and a child
# inherits that: `python -m train.run` then keeps Ctrl-C ignored, as it should in the background, and
# the tests that press Ctrl-C in a run would hang or pass without testing anything. The runs these
# tests start get SIGINT as a terminal's foreground job does, however pytest itself was started.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Interpreted kernels are single-threaded Python: the default tier runs on one pytest-xdist worker per core
# (the dev extra installs it), each with its share of torch's threads. `-n 0` runs in one process; without
# pytest-xdist (a lent GPU machine) or with a CUDA GPU the suite runs in one process, as before.
def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if WORKERS > 1:
    torch.set_num_threads(max(1, _cores() // WORKERS))


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """``-n auto --dist worksteal`` unless told otherwise (runs before pytest-xdist reads its options)."""
    if (getattr(config.option, "numprocesses", 0) is None and not HAS_CUDA and not config.option.collectonly
            and not config.option.usepdb and "PYTEST_XDIST_WORKER" not in os.environ):
        config.option.numprocesses = "auto"
        if config.option.dist == "no":
            config.option.dist = "worksteal"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config):
    return _cores()


def pytest_report_header(config):
    return f"tier: {'exhaustive' if EXHAUSTIVE else 'default (ALEXNET_EXHAUSTIVE=1 for the exhaustive tier)'}"


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_slow = pytest.mark.skip(reason="exhaustive tier: ALEXNET_EXHAUSTIVE=1")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "slow" in item.keywords and not EXHAUSTIVE:
            item.add_marker(skip_slow)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """The built-in generator at a tiny size: 10 classes, 8 training and 4 validation images each (one
    folder per test module: a module may damage its copy)."""
    from train import data

    root, made = data.make_builtin_dataset(str(tmp_path_factory.mktemp("cache")), size=76, train_per_class=8,
                                           val_per_class=4, processes=1)
    assert made
    return root


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory):
    """A finished one-epoch, two-step run folder of train.run at tiny settings (read only: copy it to
    change it)."""
    from tests.test_fault_tolerance import TINY
    from train import run

    out = tmp_path_factory.mktemp("finished") / "run"
    assert run.main([*TINY, "--data", tiny_data, "--epochs", "1", "--max-steps-per-epoch", "2",
                     "--init", "kaiming", "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module of tiny training runs: as fast, and spares a busy machine from
    spinning OpenMP threads (torch was imported before train/__init__.py could ask for passive waiting)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sigint_ignored():
    """SIGINT ignored in this process for the test, as in a shell script's background job."""
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
