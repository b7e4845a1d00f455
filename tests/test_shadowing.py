"""Another package named ``kernels`` (Hugging Face's kernel hub on PyPI is one) found before this project's:
``import alexnet`` raises an ImportError of one line, and ``python -m train.run`` / ``train.prepare`` stop
with that line, exit code 2 and no traceback (alexnet.check_kernels)."""

from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest

import alexnet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def shadowed(tmp_path) -> dict:
    """An environment whose ``sys.path`` holds another ``kernels`` package first, then this project (run
    from ``tmp_path``, not from the project's root, which Python would search first)."""
    fake = tmp_path / "site" / "kernels"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('"""Another package named kernels."""\n')
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), ROOT]))


def assert_names_the_shadow(line: str, tmp_path) -> None:
    assert "another package named kernels" in line, line
    assert str(tmp_path / "site" / "kernels") in line, line          # where it is
    assert "pip uninstall kernels" in line and ROOT in line, line     # and what to do


@pytest.mark.parametrize("program", ["train.run", "train.prepare"])
def test_a_program_stops_with_one_line(program, shadowed, tmp_path):
    proc = subprocess.run([sys.executable, "-m", program, "--help"], cwd=tmp_path, env=shadowed,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("train: error: "), proc.stderr
    assert_names_the_shadow(lines[0], tmp_path)


def test_import_alexnet_raises_an_import_error_of_one_line(shadowed, tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import alexnet"], cwd=tmp_path, env=shadowed,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.splitlines()[-1]
    assert last.startswith("ImportError: "), proc.stderr
    assert_names_the_shadow(last, tmp_path)


def test_another_kernels_imported_before_is_refused(monkeypatch):
    monkeypatch.setitem(sys.modules, "kernels", types.ModuleType("kernels"))
    with pytest.raises(ImportError, match="another package named kernels") as info:
        alexnet.check_kernels()
    assert info.value.name == "kernels" and "\n" not in str(info.value)


def test_this_projects_kernels_passes():
    import kernels

    assert os.path.dirname(kernels.__file__) == os.path.join(ROOT, "kernels")
    alexnet.check_kernels()
