"""Tests of ``python -m train.run``: the real entry point on tiny settings (76x76 images, 67x67 crops, an
eighth of the paper's widths, a few steps), plus the pieces whose mistakes a short run would not show
(10-crop averaging, the paper's SGD update, the learning-rate schedule, the built-in dataset)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import kernels
from train import data, engine, run
from train.data import Preprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--resize", "76", "--image-size", "67", "--width", "0.125", "--batch-size", "16", "--workers", "0",
        "--ops", "eager", "--no-progress", "--log-every", "1"]
METRIC_FIELDS = {"epoch", "train_loss", "val_top1_error", "val_top5_error", "val_top1_error_10crop",
                 "val_top5_error_10crop", "lr", "images_per_sec", "seconds"}


pytestmark = pytest.mark.usefixtures("one_thread")


def train(capfd, *args, base=TINY) -> tuple[int, str, str]:
    """train.run's main in this process at tiny settings (``base``), args after them: (exit code, stdout,
    stderr)."""
    rc = run.main([*base, *map(str, args)])
    out, err = capfd.readouterr()
    return rc, out, err


def step_losses(out: str) -> dict[int, float]:
    return {int(s): float(v) for s, v in re.findall(r"^step (\d+) .* loss ([\d.]+)$", out, re.M)}


def read_metrics(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def assert_one_line_error(rc: int, err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert rc == 2, f"exit code {rc}, stderr: {err}"
    assert len(lines) == 1 and "Traceback" not in err, f"not a one-line error:\n{err}"
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


# ---------------------------------------------------------------------------------------------------------
# One device: the run folder, the metrics, the checkpoints.

def test_one_device_run_writes_metrics_plot_and_checkpoints(tiny_data, tmp_path, capfd):
    out_dir = tmp_path / "run"
    rc, out, err = train(capfd, "--data", tiny_data, "--epochs", 2, "--max-steps-per-epoch", 2,
                         "--ten-crop", "every", "--out", out_dir)
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].startswith(f"data {tiny_data}: 76x76 images, 67x67 crops, width 0.125"), lines[0]
    assert len(step_losses(out)) == 4
    assert len(re.findall(r"^epoch +\d+ \| train loss", out, re.M)) == 2
    assert lines[-1].startswith("done: 2 epochs")

    rows = read_metrics(out_dir)
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert METRIC_FIELDS <= set(r), f"missing fields {METRIC_FIELDS - set(r)}"
        for key in ("val_top1_error", "val_top5_error", "val_top1_error_10crop", "val_top5_error_10crop"):
            assert 0 <= r[key] <= 1, (key, r[key])
        assert r["val_top5_error"] <= r["val_top1_error"]
        assert r["lr"] == 0.01 and r["images_per_sec"] > 0 and r["seconds"] > 0 and r["train_loss"] > 0
    # the epoch's train loss is the mean of its step losses (equal batches of 16)
    losses = step_losses(out)
    assert rows[1]["train_loss"] == pytest.approx((losses[3] + losses[4]) / 2, abs=1e-5)

    with open(out_dir / "config.json") as f:
        cfg = json.load(f)
    assert (cfg["width"], cfg["lr"], cfg["momentum"], cfg["weight_decay"]) == (0.125, 0.01, 0.9, 5e-4)
    assert (out_dir / "curves.png").stat().st_size > 1000
    assert not [p for p in os.listdir(out_dir) if ".tmp" in p], "temporary files left behind"

    # the checkpoint holds the one-device state dict: it loads into a plain AlexNet
    from alexnet.model import AlexNet, AlexNetConfig
    ckpt = torch.load(out_dir / "last.pt", weights_only=True)
    model = AlexNet(AlexNetConfig(num_classes=10, image_size=67, width=0.125, init=cfg["init"]), ops="eager")
    model.load_state_dict(ckpt["model"])
    assert ckpt["state"]["epoch"] == 2 and ckpt["state"]["global_step"] == 4 and ckpt["history"] == rows
    assert (out_dir / "best.pt").exists()


def test_same_seed_same_losses_other_seed_other_losses(tiny_data, tmp_path, capfd):
    args = ["--data", tiny_data, "--epochs", 1, "--max-steps-per-epoch", 3, "--ten-crop", "off"]
    a = step_losses(train(capfd, *args, "--out", tmp_path / "a")[1])
    b = step_losses(train(capfd, *args, "--out", tmp_path / "b")[1])
    c = step_losses(train(capfd, *args, "--out", tmp_path / "c", "--seed", 1)[1])
    assert len(a) == 3 and a == b
    assert a != c


def test_fused_ops_run(tiny_data, tmp_path, capfd):
    """--ops fused end to end. On CPU tensors the fused ops take their plain-PyTorch path outside the
    Triton interpreter, as in a real CPU run (the kernels' own tests run them in the interpreter)."""
    import kernels
    with kernels.triton_disabled():
        rc, out, err = train(capfd, "--data", tiny_data, "--ops", "fused", "--epochs", 1,
                             "--max-steps-per-epoch", 2, "--ten-crop", "off", "--out", tmp_path / "f")
    assert rc == 0, err
    assert "ops fused" in out.splitlines()[0] and len(step_losses(out)) == 2


# ---------------------------------------------------------------------------------------------------------
# Two towers in two gloo processes against one device.

def test_two_gloo_processes_match_one_device(tiny_data, tmp_path, capfd, monkeypatch):
    # With dropout: the fused dropout gives each tower the one-device masks of its half of fc6/fc7.
    # Both runs take the ops' plain-PyTorch path (the same Philox masks as the kernels; the interpreter
    # would take minutes): triton_disabled here, TRITON_INTERPRET=0 for the spawned ranks.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    args = ["--data", tiny_data, "--epochs", 1, "--max-steps-per-epoch", 3, "--ops", "fused",
            "--ten-crop", "final"]
    with kernels.triton_disabled():
        rc1, out1, err1 = train(capfd, *args, "--out", tmp_path / "one")
        # with a DataLoader worker: the launched ranks are spawned processes, their workers must start too
        rc2, out2, err2 = train(capfd, *args, "--out", tmp_path / "two", "--gpus", 2, "--workers", 1)
    assert rc1 == 0 and rc2 == 0, err1 + err2
    if not torch.cuda.is_available():
        assert "two CPU processes over gloo" in out2
    one, two = step_losses(out1), step_losses(out2)
    assert len(one) == 3 and one.keys() == two.keys()
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-4), f"step {step}: {two[step]} vs {one[step]}"
    m1, m2 = read_metrics(tmp_path / "one")[0], read_metrics(tmp_path / "two")[0]
    for key in ("train_loss", "val_top1_error", "val_top5_error", "val_top1_error_10crop"):
        assert m2[key] == pytest.approx(m1[key], abs=1e-4), key
    w1 = torch.load(tmp_path / "one" / "last.pt", weights_only=True)["model"]
    w2 = torch.load(tmp_path / "two" / "last.pt", weights_only=True)["model"]
    for name in w1:   # the two-process checkpoint is the full one-device state dict too
        torch.testing.assert_close(w2[name], w1[name], atol=1e-5, rtol=1e-4,
                                   msg=lambda m, n=name: f"{n}: {m}")


# ---------------------------------------------------------------------------------------------------------
# Resume, Ctrl-C, evaluation.

def test_resume_mid_epoch_prints_the_same_losses(tiny_data, tmp_path, capfd):
    args = ["--data", tiny_data, "--epochs", 2, "--max-steps-per-epoch", 3, "--ten-crop", "final"]
    rc, full, err = train(capfd, *args, "--out", tmp_path / "full")
    assert rc == 0, err
    rc, first, err = train(capfd, *args, "--out", tmp_path / "cut", "--max-steps", 4)   # stops in epoch 2
    assert rc == 0 and "stopped after --max-steps 4" in first, err
    rc, second, err = train(capfd, "--resume", tmp_path / "cut")
    assert rc == 0, err
    assert "resumed from" in second and "at epoch 2, step 1/3" in second

    full_l, first_l, second_l = step_losses(full), step_losses(first), step_losses(second)
    assert sorted(first_l) == [1, 2, 3, 4] and sorted(second_l) == [5, 6]
    assert first_l | second_l == full_l                     # exactly the same numbers
    timing = ("seconds", "images_per_sec")
    strip = lambda rows: [{k: v for k, v in r.items() if k not in timing} for r in rows]
    assert strip(read_metrics(tmp_path / "cut")) == strip(read_metrics(tmp_path / "full"))


def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tiny_data, tmp_path):
    out_dir = tmp_path / "run"
    args = [*TINY, "--data", tiny_data, "--epochs", 1000, "--ten-crop", "off", "--out", out_dir]
    proc = subprocess.Popen([sys.executable, "-m", "train.run", *map(str, args)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:      # wait until training runs
            if line.startswith("step 2 "):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted: checkpoint saved" in out, out + err
    state = torch.load(out_dir / "last.pt", weights_only=True)["state"]
    assert state["global_step"] >= 2


def test_stop_flag_leaves_a_signal_that_arrived_ignored_ignored(sigint_ignored):
    """A run started as a background job (SIGINT ignored) keeps Ctrl-C ignored; SIGTERM still stops it
    at a step boundary. (tests/conftest.py makes sure the runs above start with SIGINT not ignored.)"""
    with engine.StopFlag() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert not stop.requested
        # (never SIGTERM this process without a handler in place: that would end the whole session)
        assert signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, signal.SIG_IGN)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)     # (the handler runs between bytecodes of the main thread)
        assert stop.requested and stop.signum == signal.SIGTERM
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_evaluate_reports_centre_and_ten_crop_errors(tiny_data, tmp_path, capfd):
    rc, out, err = train(capfd, "--data", tiny_data, "--epochs", 1, "--max-steps-per-epoch", 2,
                         "--out", tmp_path / "run")
    assert rc == 0, err
    row = read_metrics(tmp_path / "run")[-1]
    before = {p: (tmp_path / "run" / p).read_bytes() for p in os.listdir(tmp_path / "run")}
    rc = run.main(["--evaluate", str(tmp_path / "run" / "last.pt"), "--workers", "0"])
    out, err = capfd.readouterr()
    assert rc == 0, err
    m = re.search(r"on (\d+) images .* centre crop top-1 error ([\d.]+)%, top-5 error ([\d.]+)%; "
                  r"10 crops top-1 error ([\d.]+)%, top-5 error ([\d.]+)%", out)
    assert m, out
    assert int(m[1]) == 40
    got = [float(v) / 100 for v in m.groups()[1:]]
    keys = ("val_top1_error", "val_top5_error", "val_top1_error_10crop", "val_top5_error_10crop")
    want = [row[k] for k in keys]
    assert got == pytest.approx(want, abs=1e-4)
    assert before == {p: (tmp_path / "run" / p).read_bytes() for p in os.listdir(tmp_path / "run")}


def test_ten_crops_are_the_papers_and_their_softmax_is_averaged():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (9, 12, 3), dtype=np.uint8))
    pre = Preprocess(resize=9, crop=5, mean=(0.5, 0.5, 0.5), eigval=(0, 0, 0), eigvec=((1, 0, 0),) * 3)
    crops = pre.ten_crop(img)                                   # (10, 3, 5, 5)
    square = pre._finish(torch.from_numpy(np.array(pre._square(img))).permute(2, 0, 1).float() / 255)
    corners = [square[:, :5, :5], square[:, :5, 4:], square[:, 4:, :5], square[:, 4:, 4:],
               square[:, 2:7, 2:7]]
    # the mirrored five are the five crops of the mirrored image: its top-left is the top-right, mirrored
    for i, (want, mirror) in enumerate(zip(corners, [1, 0, 3, 2, 4])):
        torch.testing.assert_close(crops[i], want, msg=lambda m, i=i: f"crop {i}: {m}")
        torch.testing.assert_close(crops[5 + i], corners[mirror].flip(-1),
                                   msg=lambda m, i=i: f"crop {5 + i}: {m}")
    torch.testing.assert_close(crops[4], pre.centre(img))

    class CropVotes(torch.nn.Module):
        """Crop 4 (the centre) is sure of class 0, the other nine mildly prefer class 1: the mean softmax
        says 1 (0.29 vs 0.52), the centre says 0, and so would the mean logit (1.0 vs 0.9)."""
        def forward(self, x):
            n = x.shape[0] // 10
            logits = torch.zeros(n * 10, 3)
            logits.view(n, 10, 3)[:, 4, 0] = 10.0
            logits.view(n, 10, 3)[:, [0, 1, 2, 3, 5, 6, 7, 8, 9], 1] = 1.0
            return logits

    x = torch.zeros(2, 10, 3, 5, 5)
    loader = [(x, torch.tensor([1, 1]), [])]
    ctx = type("Ctx", (), dict(world_size=1, tp_size=1, is_main=True, device=torch.device("cpu")))()
    cfg = dict(skip_bad_images=False, precision="fp32")
    res = engine.evaluate(CropVotes(), loader, ctx, cfg, True, [], print)
    assert res["val_top1_error"] == 1.0 and res["val_top1_error_10crop"] == 0.0
    assert res["val_top5_error"] == 0.0 and res["val_images"] == 2


# ---------------------------------------------------------------------------------------------------------
# Bad input: one line, exit code 2, no traceback, nothing already written lost.

def _copy_tree(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


@pytest.mark.parametrize("case", ["no_data", "no_train", "no_val", "empty_class", "other_classes",
                                  "batch_size", "lr", "gpus", "gpus_choice"])
def test_bad_input_is_one_line_exit_2(case, tiny_data, tmp_path, capfd, monkeypatch):
    root = _copy_tree(tiny_data, tmp_path / "d")
    extra, needle = [], ""
    if case == "no_data":
        root, needle = tmp_path / "nowhere", "data folder not found"
    elif case == "no_train":
        os.rename(root / "train", root / "training")
        needle = "missing train/ folder"
    elif case == "no_val":
        os.rename(root / "val", root / "validation")
        needle = "missing val/ folder"
    elif case == "empty_class":
        for f in os.listdir(root / "val" / "star"):
            os.remove(root / "val" / "star" / f)
        needle = "class folder with no images: " + str(root / "val" / "star")
    elif case == "other_classes":
        os.rename(root / "val" / "star", root / "val" / "moon")
        needle = "different classes"
    elif case == "batch_size":
        extra, needle = ["--batch-size", "0"], "--batch-size must be positive"
    elif case == "lr":
        extra, needle = ["--lr", "-0.1"], "--lr must be positive"
    elif case == "gpus":   # as on a machine with one GPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
        extra, needle = ["--gpus", "2"], "--gpus 2 but only 1 CUDA device"
    elif case == "gpus_choice":
        extra, needle = ["--gpus", "3"], "argument --gpus: invalid choice"
    rc, out, err = train(capfd, "--data", root, "--epochs", 1, "--out", tmp_path / "run", *extra)
    assert_one_line_error(rc, err, needle)
    assert not os.path.exists(tmp_path / "run")


def test_bad_input_from_the_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train.run", "--data", str(tmp_path / "nowhere")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert_one_line_error(proc.returncode, proc.stderr, "data folder not found")


def test_corrupt_image_is_named_or_skipped_and_nothing_is_lost(tiny_data, tmp_path, capfd):
    root = _copy_tree(tiny_data, tmp_path / "d")
    args = ["--data", root, "--epochs", 2, "--ten-crop", "off", "--batch-size", 40]   # 2 steps per epoch
    rc, out, err = train(capfd, *args, "--out", tmp_path / "run", "--epochs", 1)
    assert rc == 0, err
    saved = {p: (tmp_path / "run" / p).read_bytes() for p in ("metrics.jsonl", "last.pt")}

    bad = [root / "train" / "disc" / "00003.jpg", root / "train" / "ring" / "00005.jpg"]
    bad[0].write_bytes(b"not a jpeg")
    bad[1].write_bytes(bad[1].read_bytes()[:200])              # truncated
    rc, out, err = train(capfd, *args, "--resume", tmp_path / "run")
    assert_one_line_error(rc, err, "unreadable image: ", "--skip-bad-images")
    assert str(bad[0]) in err or str(bad[1]) in err
    for p, content in saved.items():   # the earlier epoch's metrics and a loadable checkpoint are still there
        if p == "metrics.jsonl":
            assert (tmp_path / "run" / p).read_bytes() == content
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state"]["epoch"] == 1

    rc, out, err = train(capfd, *args, "--resume", tmp_path / "run", "--skip-bad-images")
    assert rc == 0, err
    for path in bad:
        assert f"skipped unreadable image: {path}" in out
    assert "skipped 2 unreadable image(s)" in out
    assert [r["epoch"] for r in read_metrics(tmp_path / "run")] == [1, 2]


def test_new_run_never_overwrites_an_existing_one(tiny_data, tmp_path, capfd):
    args = ["--data", tiny_data, "--epochs", 1, "--max-steps-per-epoch", 1, "--ten-crop", "off",
            "--out", tmp_path / "run"]
    assert train(capfd, *args)[0] == 0
    before = (tmp_path / "run" / "last.pt").read_bytes()
    rc, out, err = train(capfd, *args)
    assert_one_line_error(rc, err, "already holds a run", "--resume")
    assert (tmp_path / "run" / "last.pt").read_bytes() == before


# ---------------------------------------------------------------------------------------------------------
# The optimizer, the schedule, the built-in dataset.

def test_paper_sgd_matches_torch_sgd_at_constant_lr_and_differs_after_a_drop():
    torch.manual_seed(0)
    w0 = torch.randn(5, 3)
    grads = [torch.randn(5, 3) for _ in range(6)]
    paths = {}
    for cls in (engine.PaperSGD, torch.optim.SGD):
        w = torch.nn.Parameter(w0.clone())
        opt = cls([w], lr=0.1, momentum=0.9, weight_decay=5e-4)
        out = []
        for i, g in enumerate(grads):
            if i == 3:
                opt.param_groups[0]["lr"] = 0.01
            w.grad = g.clone()
            opt.step()
            out.append(w.detach().clone())
        paths[cls] = out
    for i in range(3):
        torch.testing.assert_close(paths[engine.PaperSGD][i], paths[torch.optim.SGD][i])
    # the paper's update, by hand, for the step after the drop: v <- 0.9 v - 5e-4 lr w - lr g; w <- w + v
    p = paths[engine.PaperSGD]
    v3 = p[2] - p[1]
    v4 = 0.9 * v3 - 5e-4 * 0.01 * p[2] - 0.01 * grads[3]
    torch.testing.assert_close(p[3], p[2] + v4)
    assert (p[3] - paths[torch.optim.SGD][3]).abs().max() > 1e-3


def test_lr_drops_by_10_after_patience_at_most_3_times():
    w = torch.nn.Parameter(torch.zeros(1))
    opt = engine.PaperSGD([w], lr=0.01)
    sched = engine.DropOnPlateau(opt, patience=2, max_drops=3)
    lrs = []
    for err in [0.5, 0.4, 0.4, 0.41, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3, 0.3]:
        sched.step(err)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.01, 0.01, 0.01, 1e-3, 1e-3, 1e-3, 1e-4, 1e-4, 1e-5, 1e-5, 1e-5, 1e-5, 1e-5,
                                 1e-5])
    restored = engine.DropOnPlateau(engine.PaperSGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01), 2, 3)
    restored.load_state_dict(sched.state_dict())
    assert restored.state_dict() == sched.state_dict()


def test_builtin_dataset_is_deterministic_and_not_given_away_by_colour(tmp_path):
    a = data.draw_image(3, 64, seed=123)
    assert np.array_equal(np.asarray(a), np.asarray(data.draw_image(3, 64, seed=123)))
    # Nearest class-mean on the mean colour, or on a single pixel, should be near chance (10%).
    n, size = 30, 48
    imgs = np.stack([np.asarray(data.draw_image(c, size, seed=1000 * c + i), dtype=np.float32)
                     for c in range(10) for i in range(2 * n)]).reshape(10, 2 * n, size, size, 3)
    centre = imgs[:, :, size // 2, size // 2]
    for name, feats in (("mean colour", imgs.mean((2, 3))), ("centre pixel", centre)):
        centroids = feats[:, :n].mean(1)                                       # (10, 3) from the first half
        test = feats[:, n:].reshape(-1, 3)
        pred = ((test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
        acc = (pred == np.repeat(np.arange(10), n)).mean()
        assert acc < 0.3, f"{name} predicts the class {acc:.0%} of the time"


def test_builtin_dataset_is_generated_once_as_an_image_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_DATA_CACHE", str(tmp_path / "cache"))
    assert data.default_cache_dir() == str(tmp_path / "cache")
    make = lambda: data.make_builtin_dataset(data.default_cache_dir(), size=70, train_per_class=2,
                                             val_per_class=1)
    root, made = make()
    assert made and root.startswith(str(tmp_path / "cache"))
    classes, train_s, val_s = data.scan_image_folders(root)
    assert classes == sorted(data.BUILTIN_CLASSES) and len(train_s) == 20 and len(val_s) == 10
    mtime = os.path.getmtime(train_s[0][0])
    time.sleep(0.01)
    assert make() == (root, False)
    assert os.path.getmtime(train_s[0][0]) == mtime
    assert not [p for p in os.listdir(tmp_path / "cache") if ".tmp" in p]
