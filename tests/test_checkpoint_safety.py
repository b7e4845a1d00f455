"""A checkpoint is data, never code (issue 22): a ``.pt`` from someone else, given to ``--evaluate`` or
``--resume`` or found as a run folder's ``best.pt``, is read with ``torch.load(weights_only=True)`` and
refused with one line before anything in it runs; today's checkpoints still resume bit for bit. And the
launcher's own pickles (``fn`` and ``args``, the ranks' reports) are read only from a private folder."""

from __future__ import annotations

import os
import pickle
import shutil
import stat
import zipfile

import pytest
import torch

from alexnet import launch as launcher
from tests.test_fault_tolerance import train
from tests.test_train import assert_one_line_error, step_losses
from train import checkpoint


class RunsACommand:
    """What a hostile checkpoint holds: unpickling it calls ``os.system``."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def hostile_pt(path, witness) -> None:
    """A .pt whose loading with weights_only=False would create ``witness`` (the issue's example)."""
    torch.save({"model": RunsACommand(f"echo PWNED > {witness}")}, path)


def test_the_hostile_file_would_run_its_command_if_unpickled(tmp_path):
    """The witness: the file really is hostile (so the tests below would see a regression)."""
    witness = tmp_path / "pwned.txt"
    hostile_pt(tmp_path / "evil.pt", witness)
    with zipfile.ZipFile(tmp_path / "evil.pt") as z:   # its pickle, unpickled as an unsafe load would
        pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))
    assert witness.exists()


@pytest.mark.parametrize("how", ["evaluate_file", "evaluate_folder", "resume_folder"])
def test_a_hostile_checkpoint_is_refused_in_one_line_and_runs_nothing(how, tiny_data, tmp_path, capfd):
    witness = tmp_path / "pwned.txt"
    folder = tmp_path / "run"
    folder.mkdir()
    hostile_pt(folder / "last.pt", witness)
    flag, target = {"evaluate_file": ("--evaluate", folder / "last.pt"),
                    "evaluate_folder": ("--evaluate", folder),
                    "resume_folder": ("--resume", folder)}[how]
    rc, _, err = train(capfd, "--data", tiny_data, flag, target)
    assert_one_line_error(rc, err, f"{folder / 'last.pt'} is not loaded", "posix.system",
                          "nothing in it was run")
    assert not witness.exists()


def test_a_hostile_best_pt_is_replaced_on_resume_without_running_it(finished_run, tmp_path, capfd):
    """The resume's best.pt repair reads best.pt to see whether it holds the best epoch: a hostile one is
    not a checkpoint of this run, so it is replaced by last.pt (the best epoch's), and never run."""
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    witness = tmp_path / "pwned.txt"
    hostile_pt(out / "best.pt", witness)
    rc, _, err = train(capfd, "--resume", out)   # nothing left to train: the repair, then the summary
    assert rc == 0, err
    assert not witness.exists()
    assert checkpoint.load(out / "best.pt")["state"] == checkpoint.load(out / "last.pt")["state"]


def test_todays_checkpoint_holds_only_plain_types(finished_run):
    ckpt = torch.load(finished_run / "last.pt", weights_only=True)

    def plain(x) -> bool:
        if isinstance(x, dict):
            return all(isinstance(k, str | int) and plain(v) for k, v in x.items())
        if isinstance(x, list | tuple):
            return all(plain(v) for v in x)
        return x is None or isinstance(x, bool | int | float | str | torch.Tensor)

    assert set(ckpt) == set(checkpoint.KEYS)
    assert all(plain(v) for v in ckpt.values())


def test_a_truncated_checkpoint_is_one_line(finished_run, tiny_data, tmp_path, capfd):
    (tmp_path / "cut.pt").write_bytes((finished_run / "last.pt").read_bytes()[:5000])
    rc, _, err = train(capfd, "--data", tiny_data, "--evaluate", tmp_path / "cut.pt")
    assert_one_line_error(rc, err, f"cannot read checkpoint {tmp_path / 'cut.pt'}")


@pytest.mark.slow
def test_gpus2_checkpoint_resumes_bit_for_bit_and_evaluates(tiny_data, tmp_path, capfd, monkeypatch):
    """Two gloo processes: a run cut after 2 of 3 steps and resumed ends with the weights of the run that
    was not cut, bit for bit; its checkpoint then evaluates with --gpus 2. (The one-process resume is
    tests/test_train.py's test_resume_mid_epoch_prints_the_same_losses.)"""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = ["--data", tiny_data, "--epochs", 1, "--max-steps-per-epoch", 3, "--ten-crop", "off", "--gpus", 2]
    rc, full, err = train(capfd, *args, "--out", tmp_path / "full")
    assert rc == 0, err
    rc, first, err = train(capfd, *args, "--out", tmp_path / "cut", "--max-steps", 2)
    assert rc == 0 and "stopped after --max-steps 2" in first, err
    rc, second, err = train(capfd, "--resume", tmp_path / "cut", "--gpus", 2)
    assert rc == 0, err
    assert step_losses(first) | step_losses(second) == step_losses(full)
    want = checkpoint.load(tmp_path / "full" / "last.pt")
    got = checkpoint.load(tmp_path / "cut" / "last.pt")
    for name, w in want["model"].items():
        torch.testing.assert_close(got["model"][name], w, rtol=0, atol=0)
    rc, out, err = train(capfd, "--evaluate", tmp_path / "cut", "--gpus", 2)
    assert rc == 0, err
    assert "evaluated" in out and "top-1" in out


# ---------------------------------------------------------------------------------------------------------
# The launcher's pickles.

def _folder_modes() -> dict:
    """Run inside a launched rank: the modes of the launcher's folder and of its reports folder."""
    store = os.path.dirname(os.environ["ALEXNET_INIT_METHOD"].removeprefix("file://"))
    return {name: stat.S_IMODE(os.stat(path).st_mode)
            for name, path in (("store", store), ("reports", os.path.join(store, "reports")))}


def test_the_launchers_own_folder_is_private():
    (modes,) = launcher.launch(_folder_modes, 1)
    assert modes == {"store": 0o700, "reports": 0o700}


def test_the_launcher_refuses_a_store_folder_others_can_write(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match="writable by no one else"):
        launcher.launch(_folder_modes, 1, store_dir=str(shared))
    assert os.listdir(shared) == []   # nothing written, nothing started


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_rank_refuses_a_payload_in_a_folder_others_can_write(mode, tmp_path):
    """What a rank does first: the (fn, args) file in a folder that another user could have written is
    not unpickled."""
    folder = tmp_path / "store"
    folder.mkdir()
    witness = tmp_path / "pwned.txt"
    with open(folder / "payload.pkl", "wb") as f:
        pickle.dump((RunsACommand(f"echo PWNED > {witness}"), ()), f)
    folder.chmod(mode)
    with pytest.raises(PermissionError, match="is not private"):
        launcher.load_payload(str(folder / "payload.pkl"))
    assert not witness.exists()
    folder.chmod(0o700)   # the same file from a private folder is read (and, being hostile, runs)
    launcher.load_payload(str(folder / "payload.pkl"))
    assert witness.exists()
