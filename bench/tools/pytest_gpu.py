"""A pytest plugin for the GPU session (bench/tools/gpu_check.sh part 2):
``python -m pytest -p bench.tools.pytest_gpu``.

Always: every test's outcome goes to a JSON file as soon as the test ends (``GPU_CHECK_TESTS_JSON``, one
section per ``GPU_CHECK_TESTS_LABEL``), and a failure is printed at once as ``FAILED <id>: <message>``,
so a run stopped at its time limit still leaves every finished result.

With ``GPU_CHECK_OPS_ON=cuda`` (part 2's second run): the equivalence tests (tests/test_ops_*.py) run the
ops on the GPU. They build their inputs on the CPU; this plugin wraps ``kernels.relu_lrn`` and the other
public ops so that a CPU input on the Triton path (the ``path="triton"`` parametrisation; the plain-PyTorch
path, ``kernels.triton_disabled()``, is left alone) is copied to the GPU, the op and its backward run
there as compiled Triton kernels, and the output is copied back. The reference stays PyTorch's CPU op, so
these are the same checks the interpreter runs on the CPU, now on compiled code. ``path="torch"`` items
are deselected (the CPU suite covers them). Non-dense inputs (sliced / transposed views) arrive on the GPU
contiguous; inside ``torch.compile`` the wrapper steps aside (the op runs as the test wrote it). A failure
whose message says the tensors are on different devices, or that the output is not
the input object, comes from this harness, not from a kernel: the summary lists those apart.

``GPU_CHECK_MAX_EXAMPLES=N`` caps every hypothesis test of tests/_utils.py's ``FAST`` / ``examples(n)``
at N examples, without shrinking (the first failing example is reported as found).
``GPU_CHECK_OPS_ON=cpu`` exercises the wrapper on the CPU (a rehearsal: the copy is a no-op there).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import time
from pathlib import Path

OPS = ("relu_lrn", "max_pool2d", "relu_max_pool2d", "relu_lrn_max_pool2d", "dropout", "relu_dropout")
HARNESS_MARKERS = (
    "same device",
    "Expected all tensors to be on the same device",
    "cuda:0 and cpu",
    "cpu and cuda:0",
    "is not the input",
)

_results: dict = {}
_started = time.time()


def _worker() -> bool:
    return bool(os.environ.get("PYTEST_XDIST_WORKER"))


def _path() -> Path | None:
    p = os.environ.get("GPU_CHECK_TESTS_JSON")
    return Path(p) if p and not _worker() else None


def _label() -> str:
    return os.environ.get("GPU_CHECK_TESTS_LABEL", "tests")


def _write(final: dict | None = None) -> None:
    path = _path()
    if path is None:
        return
    try:
        data = json.loads(path.read_text()) if path.exists() else {}
    except ValueError:
        data = {}
    counts: dict = {}
    for r in _results.values():
        counts[r["outcome"]] = counts.get(r["outcome"], 0) + 1
    section = {
        "label": _label(),
        "argv": sys.argv[1:],
        "ops_on": os.environ.get("GPU_CHECK_OPS_ON"),
        "max_examples": os.environ.get("GPU_CHECK_MAX_EXAMPLES"),
        "counts": counts,
        "seconds": round(time.time() - _started, 1),
        "finished": final is not None,
        "failures": [r for r in _results.values() if r["outcome"] in ("failed", "error")],
        "tests": {k: {"outcome": v["outcome"], "s": v["s"]} for k, v in _results.items()},
    }
    if final:
        section.update(final)
    data[_label()] = section
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


# ------------------------------------------------------------------------------ ops on the GPU


def _wrap(fn, device: str):
    import torch

    from kernels import _common

    @functools.wraps(fn)
    def on_device(x, *args, **kwargs):
        st = _common._state
        if (
            isinstance(x, torch.Tensor)
            and x.device.type == "cpu"
            and not torch.compiler.is_compiling()  # inside torch.compile: the op as the test wrote it
            and not getattr(st, "disabled", False)
            and getattr(st, "recorder", None) is None
        ):
            return fn(x.to(device), *args, **kwargs).to("cpu")
        return fn(x, *args, **kwargs)

    on_device.__wrapped_for_gpu_check__ = True
    return on_device


def _patch_ops(device: str) -> list[str]:
    import kernels

    done = []
    for name in OPS:
        fn = getattr(kernels, name, None)
        if fn is not None and not getattr(fn, "__wrapped_for_gpu_check__", False):
            setattr(kernels, name, _wrap(fn, device))
            done.append(name)
    return done


def _cap_examples(n: int) -> None:
    from hypothesis import Phase, settings

    import tests._utils as u

    u.FAST = settings(u.FAST, max_examples=n, phases=[Phase.explicit, Phase.reuse, Phase.generate])
    u.examples = lambda k: settings(u.FAST, max_examples=min(k, n))


def pytest_configure(config):
    ops_on = os.environ.get("GPU_CHECK_OPS_ON")
    if os.environ.get("GPU_CHECK_MAX_EXAMPLES"):
        _cap_examples(int(os.environ["GPU_CHECK_MAX_EXAMPLES"]))
    if ops_on:
        patched = _patch_ops(ops_on)
        if not _worker():
            print(
                f"gpu_check: ops {', '.join(patched)} run on {ops_on} for CPU inputs on the Triton path",
                file=sys.stderr,
                flush=True,
            )
    _write()


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("GPU_CHECK_OPS_ON"):
        return
    keep, drop = [], []
    for item in items:
        cs = getattr(item, "callspec", None)
        (drop if cs is not None and cs.params.get("path") == "torch" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _message(report) -> str:
    lr = report.longrepr
    if lr is None:
        return ""
    crash = getattr(getattr(lr, "reprcrash", None), "message", None)
    text = crash if crash else str(lr)
    return text.strip()[:1500]


def pytest_runtest_logreport(report):
    if _worker():
        return
    r = _results.setdefault(report.nodeid, {"id": report.nodeid, "outcome": "passed", "s": 0.0})
    r["s"] = round(r["s"] + getattr(report, "duration", 0.0), 3)
    if report.failed:
        r["outcome"] = "failed" if report.when == "call" else "error"
        r["when"] = report.when
        r["message"] = _message(report)
        r["harness"] = any(m in r["message"] for m in HARNESS_MARKERS)
        first = r["message"].splitlines()[0] if r["message"] else ""
        print(f"\nFAILED {report.nodeid} ({report.when}): {first}", file=sys.stderr, flush=True)
    elif report.skipped and r["outcome"] == "passed":
        r["outcome"] = "skipped"
    if report.when == "teardown" or report.failed or report.skipped:
        _write()


def pytest_sessionfinish(session, exitstatus):
    _write({"exitstatus": int(exitstatus)})
