"""README's section "Use the kernels in your own model": every Python example runs as written, and the
report printed by the kernels.patch example is the one README shows."""

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

import kernels

README = Path(__file__).resolve().parent.parent / "README.md"


def examples() -> list[str]:
    text = README.read_text()
    section = text.split("## Use the kernels in your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_readme_has_the_three_levels():
    code = examples()
    assert len(code) == 4
    assert any("kernels.patch(" in c for c in code) and any("enable_compile_fusion" in c for c in code)


@pytest.mark.parametrize("index", range(4))
def test_readme_example_runs(index):
    code = examples()[index]
    out = io.StringIO()
    torch._dynamo.reset()
    with kernels.triton_disabled(), contextlib.redirect_stdout(out):  # the ops' CPU path: quick
        exec(compile(code, f"README example {index + 1}", "exec"), {})
    shown = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    if "print(kernels.patch(" in code:  # the report as README shows it
        assert out.getvalue().splitlines() == shown
    torch._dynamo.reset()
