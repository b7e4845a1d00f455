"""Tests of train/progress.py: tqdm bars on a terminal, plain lines in a log (a file, a pipe), nothing with
``--no-progress``; and ``train.run`` and ``train.prepare`` run as a user runs them, to a file, through a pipe
and on a terminal."""

from __future__ import annotations

import io
import os
import re
import select
import subprocess
import sys
import time

import pytest
import torch
from tqdm import tqdm

from train import prepare, progress, run
from train.data import DataError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--resize", "76", "--image-size", "67", "--width", "0.125", "--batch-size", "16", "--workers", "0",
        "--ops", "eager", "--epochs", "1", "--max-steps-per-epoch", "2", "--ten-crop", "off"]
EVERY_UPDATE = os.environ | {progress.INTERVAL_VAR: "0"}   # a progress line at every update


class Stream(io.StringIO):
    """A stream that is a terminal or not."""

    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


# ---------------------------------------------------------------------------------------------------------
# The helper: the choice, the lines, the log lines.

@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "no-terminal"])
def test_a_bar_on_a_terminal_lines_elsewhere(tty, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Stream(tty))   # where the bars go
    assert progress.on_terminal() is tty
    bar = progress.bar(10, "epoch 1/1", unit="step")
    try:
        assert isinstance(bar, tqdm if tty else progress.Lines), type(bar)
    finally:
        bar.close()


def test_a_stream_without_isatty_or_closed_is_no_terminal():
    closed = io.StringIO()
    closed.close()
    assert not progress.on_terminal(object())
    assert not progress.on_terminal(closed)


def test_lines_come_every_interval_with_this_steps_postfix(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", Stream(False))
    monkeypatch.setenv(progress.INTERVAL_VAR, "30")
    clock = [1000.0]
    monkeypatch.setattr(progress.time, "monotonic", lambda: clock[0])
    bar = progress.bar(100, "epoch 2/9", unit="step", initial=20)
    for i in range(12):             # a step every 5 s: a line at 30 s and at 60 s
        clock[0] += 5
        bar.set_postfix(loss=f"{2 - i / 10:.4f}", img_s=64)
        bar.update(1)
    bar.close()
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "epoch 2/9: 26/100 (26%), 00:30 elapsed, 06:10 left, 0.2 step/s, loss=1.5000, img_s=64",
        "epoch 2/9: 32/100 (32%), 01:00 elapsed, 05:40 left, 0.2 step/s, loss=0.9000, img_s=64",
    ]
    assert err == "" and sys.stderr.getvalue() == ""


def test_a_disabled_bar_prints_nothing_anywhere(monkeypatch, capsys):
    monkeypatch.setenv(progress.INTERVAL_VAR, "0")
    for tty in (True, False):
        monkeypatch.setattr(sys, "stderr", Stream(tty))
        bar = progress.bar(3, "epoch 1/1", enabled=False)
        bar.update(3)
        bar.close()
        assert sys.stderr.getvalue() == ""
    assert capsys.readouterr() == ("", "")


@pytest.mark.parametrize("tty", [True, False], ids=["terminal", "no-terminal"])
def test_log_lines_go_to_stdout(tty, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stderr", Stream(tty))
    progress.write("epoch   1 | train loss 2.3026")
    assert capsys.readouterr().out == "epoch   1 | train loss 2.3026\n"


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "inf"])
def test_a_bad_interval_is_refused(value, monkeypatch):
    monkeypatch.setattr(sys, "stderr", Stream(False))
    monkeypatch.setenv(progress.INTERVAL_VAR, value)
    with pytest.raises(DataError, match=progress.INTERVAL_VAR):
        progress.bar(3)


# ---------------------------------------------------------------------------------------------------------
# The programs, as a user runs them.

def test_train_run_into_a_file_writes_lines_not_bar_frames(tiny_data, tmp_path):
    log = tmp_path / "run.log"
    with open(log, "w") as f:           # python -m train.run ... > run.log 2>&1
        proc = subprocess.run([sys.executable, "-m", "train.run", *TINY, "--data", tiny_data, "--out",
                               str(tmp_path / "run")], cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env=EVERY_UPDATE, timeout=300)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "\r" not in text, text
    lines = text.splitlines()
    step_line = (r"epoch 1/1: [12]/2 \((50|100)%\), \d\d:\d\d elapsed, \S+ left, [\d.]+ step/s, "
                 r"loss=[\d.]+, img_s=\d+")
    steps = [i for i, s in enumerate(lines) if re.fullmatch(step_line, s)]
    summary = [i for i, s in enumerate(lines) if s.startswith("epoch   1 | train loss")]
    assert len(steps) == 2 and len(summary) == 1, text
    assert steps[-1] < summary[0], text     # in the order they happened


def test_train_prepare_through_a_pipe_writes_lines_not_bar_frames(tiny_data, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.prepare", "--data", tiny_data, "--out",
                           str(tmp_path / "out"), "--size", "24", "--workers", "1"], cwd=ROOT,
                          capture_output=True, text=True, env=EVERY_UPDATE, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "\r" not in proc.stdout + proc.stderr and proc.stderr == "", proc.stderr
    progress_lines = [s for s in proc.stdout.splitlines() if s.startswith("images: ")]
    assert len(progress_lines) == 120, proc.stdout                  # 80 training + 40 validation images
    assert re.fullmatch(r"images: 120/120 \(100%\), \d\d:\d\d elapsed, 00:00 left, [\d.]+ img/s",
                        progress_lines[-1]), progress_lines[-1]
    assert proc.stdout.splitlines()[-1].startswith("done in ")


def test_train_prepare_on_a_terminal_shows_the_bar(tiny_data, tmp_path):
    pty = pytest.importorskip("pty")
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))   # 24 rows, 120 columns
    proc = subprocess.Popen([sys.executable, "-m", "train.prepare", "--data", tiny_data, "--out",
                             str(tmp_path / "out"), "--size", "24", "--workers", "1"], cwd=ROOT,
                            stdin=slave, stdout=slave, stderr=slave, env=EVERY_UPDATE)
    os.close(slave)
    out, deadline = b"", time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 1)[0]:
                continue
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:                 # the process ended: the terminal is closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(timeout=60) == 0, out
    finally:
        proc.kill()
        os.close(master)
    text = out.decode(errors="replace")
    assert re.search(r"\rimages: +100%.*120/120 \[", text), text     # tqdm's frames, drawn over each other
    assert "images: 1/120 (" not in text, text                       # and no progress lines


@pytest.mark.parametrize("program", ["train.run", "train.prepare"])
def test_no_progress_prints_no_progress_lines(program, tiny_data, tmp_path, monkeypatch, capfd):
    monkeypatch.setenv(progress.INTERVAL_VAR, "0")
    monkeypatch.setattr(progress, "on_terminal", lambda stream=None: False)
    if program == "train.run":
        threads = torch.get_num_threads()
        torch.set_num_threads(1)    # a tiny model: spares a busy machine from spinning OpenMP threads
        try:
            rc = run.main([*TINY, "--data", tiny_data, "--out", str(tmp_path / "run"), "--no-progress",
                           "--max-steps", "2"])
        finally:
            torch.set_num_threads(threads)
    else:
        rc = prepare.main(["--data", tiny_data, "--out", str(tmp_path / "out"), "--size", "24",
                           "--workers", "1", "--no-progress"])
    out, err = capfd.readouterr()
    assert rc == 0, out + err
    assert not re.search(r"/s(,|$)", out + err, re.M), out + err      # no "step/s" or "img/s" line
    assert ("stopped after --max-steps 2" if program == "train.run" else "done in ") in out, out
