"""The README files as a reader uses them: every Python example runs as written (on a CPU), the report
printed by the kernels.patch example is the one README shows, every relative link leads to a file (and a
heading) that exists, and every command or repository path they name exists. Covers README.md and every
README.md under the project's folders, so a moved section or a moved script is caught here."""

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

import kernels

REPO = Path(__file__).resolve().parent.parent
FOLDERS = ("kernels", "alexnet", "train", "bench", "tests")  # the project's own top-level folders
READMES = ["README.md"] + sorted(
    str(p.relative_to(REPO)) for d in FOLDERS if (REPO / d).is_dir() for p in (REPO / d).rglob("README.md")
)


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / name).read_text(), re.S)


EXAMPLES = [(name, i) for name in READMES for i in range(len(python_blocks(name)))]


def test_readme_files_are_the_expected_ones():
    for name in ("README.md", "kernels/README.md", "train/README.md", "bench/README.md",
                 "bench/tools/README.md"):
        assert name in READMES, f"{name} is missing (README.md links to it)"


def test_readme_has_the_three_levels():
    text = (REPO / "README.md").read_text()
    section = text.split("## Use the kernels in your own model", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(code) == 4
    assert any("kernels.patch(" in c for c in code) and any("enable_compile_fusion" in c for c in code)


def test_readme_test_command_is_the_suite():
    """The first commands on the front page install and run, then test with the command CI runs."""
    first = re.search(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)[1]
    assert "pip install -e" in first
    assert any(line.split("#")[0].strip() == "python -m pytest -q" for line in first.splitlines()), first


@pytest.mark.parametrize("name,index", EXAMPLES, ids=[f"{n}-{i + 1}" for n, i in EXAMPLES])
def test_readme_example_runs(name, index):
    code = python_blocks(name)[index]
    out = io.StringIO()
    torch._dynamo.reset()
    with kernels.triton_disabled(), contextlib.redirect_stdout(out):  # the ops' CPU path: quick
        exec(compile(code, f"{name} example {index + 1}", "exec"), {})
    shown = [line[2:] for line in code.splitlines() if line.startswith("# ")]
    if "print(kernels.patch(" in code:  # the report as README shows it
        assert out.getvalue().splitlines() == shown
    torch._dynamo.reset()


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of a markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    heads = re.findall(r"^#{1,6} +(.+?) *$", text, re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in heads}


@pytest.mark.parametrize("name", READMES)
def test_readme_links_resolve(name):
    here = REPO / name
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", here.read_text()):
        if re.match(r"[a-z]+:", target):  # http(s), mailto: not checked here
            continue
        path, _, anchor = target.partition("#")
        dest = (here.parent / path).resolve() if path else here
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(REPO)}")
    assert not bad, f"{name}: " + "; ".join(bad)


@pytest.mark.parametrize("name", READMES)
def test_readme_names_existing_paths(name):
    """`python bench/x.py`, `bash bench/tools/x.sh`, `python -m train.run`, `tests/test_x.py`: each path
    from the repository root that a README names is there (the commands run from the root)."""
    text = (REPO / name).read_text()
    dirs = "|".join(FOLDERS)
    bad = []
    for path in set(re.findall(rf"(?<![\w/.-])((?:{dirs})/[\w/.-]*\.(?:py|sh|md|json))(?![\w*{{<])", text)):
        if not (REPO / path).exists():
            bad.append(path)
    for module in set(re.findall(r"-m +([\w.]+)", text)):
        top = module.split(".")[0]
        if top in FOLDERS:
            base = REPO / module.replace(".", "/")
            if not (base.with_suffix(".py").exists() or (base / "__init__.py").exists()):
                bad.append(f"-m {module}")
    assert not bad, f"{name} names what is not there: {sorted(bad)}"
