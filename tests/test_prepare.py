"""Tests of ``python -m train.prepare``: the paper's 256x256 preparation, at tiny sizes (the real code path:
the same resize, JPEG writing, manifest and process pool), on the built-in dataset's generator and on a
generated ImageNet-like tree (odd aspect ratios, a grayscale image, a PNG, ``.JPEG`` names)."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from train import data, prepare
from train.data import Preprocess

SIZE = 24   # the prepared side in these tests (256 in the paper)


def photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A smooth random colour field with an edge and noise: (h, w, 3) uint8."""
    coarse = rng.uniform(0, 255, (4, 4, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR), dtype=np.float32)
    img[:, : w // 3] *= 0.6
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_tree(root, classes=3, train_per_class=4, val_per_class=2, seed=0) -> str:
    """An ImageNet-like ImageFolder tree of tiny JPEGs (plus one grayscale JPEG and one PNG)."""
    rng = np.random.default_rng(seed)
    for split, per in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = os.path.join(root, split, f"n{c:08d}")
            os.makedirs(folder)
            for i in range(per):
                h, w = rng.integers(20, 48, 2)
                img = Image.fromarray(photo_like(rng, int(h), int(w)))
                name = f"n{c:08d}_{i}.JPEG"
                if split == "train" and c == 0 and i == 0:
                    img = img.convert("L")                       # grayscale, read as RGB
                if split == "train" and c == 1 and i == 0:
                    img.save(os.path.join(folder, f"n{c:08d}_{i}.png"))
                    continue
                img.save(os.path.join(folder, name), quality=95)
    return str(root)


def run(capfd, src, out, *args) -> tuple[int, str, str]:
    rc = prepare.main(["--data", str(src), "--out", str(out), "--size", str(SIZE), "--workers", "1",
                       "--no-progress", *map(str, args)])
    o, e = capfd.readouterr()
    return rc, o, e


def listing(root) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime_ns) of every file under ``root`` except the manifest."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if f != data.MANIFEST:
                st = os.stat(os.path.join(d, f))
                out[os.path.relpath(os.path.join(d, f), root)] = (st.st_ino, st.st_mtime_ns)
    return out


def manifest(root) -> dict:
    with open(os.path.join(root, data.MANIFEST)) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("src"))


def test_prepared_images_are_the_training_codes_square_as_jpeg(tree, tmp_path, capfd):
    out = tmp_path / "out"
    rc, o, e = run(capfd, tree, out, "--quality", 85)
    assert rc == 0, e
    _, train, val = data.scan_image_folders(tree)
    _, ptrain, pval = data.scan_image_folders(str(out))
    assert len(ptrain) == len(train) and len(pval) == len(val)
    pre = Preprocess(SIZE, SIZE - 4, data.IMAGENET_MEAN, data.IMAGENET_EIGVAL, data.IMAGENET_EIGVEC)
    for (src, label), (dst, plabel) in zip(train + val, ptrain + pval):
        assert label == plabel and os.path.basename(dst) == prepare.output_name(os.path.basename(src))
        buf = io.BytesIO()
        pre._square(data.load_image(src)).save(buf, format="JPEG", quality=85)
        with open(dst, "rb") as f:
            assert f.read() == buf.getvalue(), dst
        assert pre._square(img := data.load_image(dst)) is img          # train.run skips the resize
    m = manifest(out)
    assert m["complete"] and m["settings"]["size"] == SIZE and m["settings"]["quality"] == 85
    assert m["counts"] == dict(classes=3, train=12, val=6, bad=0) and m["bad_images"] == []
    assert m["source"] == os.path.abspath(tree)
    assert "18 written, 0 already there" in o


def test_manifest_statistics_are_the_sets_mean_and_pca(tree, tmp_path, capfd):
    out = tmp_path / "out"
    assert run(capfd, tree, out)[0] == 0
    _, ptrain, _ = data.scan_image_folders(str(out))
    x = torch.cat([torch.from_numpy(np.array(data.load_image(p))).reshape(-1, 3) for p, _ in ptrain])
    x = x.double() / 255
    st = manifest(out)["statistics"]
    torch.testing.assert_close(torch.tensor(st["mean"], dtype=torch.float64), x.mean(0), rtol=0, atol=1e-12)
    cov = torch.cov(x.T, correction=0)
    eigval, eigvec = torch.tensor(st["eigval"], dtype=torch.float64), torch.tensor(st["eigvec"],
                                                                                   dtype=torch.float64)
    assert (eigval[:-1] >= eigval[1:]).all()
    torch.testing.assert_close(eigvec.T @ torch.diag(eigval) @ eigvec, cov, rtol=0, atol=1e-12)
    # train.run reads them from the manifest (no rescan), at the prepared size only
    scanned = []
    real = data.image_statistics
    data.image_statistics = lambda *a, **k: scanned.append(1) or real(*a, **k)
    try:
        mean, ev, vec = data.train_statistics(str(out), ptrain, SIZE)
        assert (list(mean), list(ev), [list(v) for v in vec]) == (st["mean"], st["eigval"], st["eigvec"])
        assert not scanned
        data.train_statistics(str(out), ptrain, SIZE + 8)
        assert scanned
    finally:
        data.image_statistics = real


def test_interrupted_run_resumes_to_the_same_result_and_a_rerun_changes_nothing(tree, tmp_path, capfd,
                                                                                  monkeypatch):
    ref = tmp_path / "ref"
    assert run(capfd, tree, ref)[0] == 0
    out = tmp_path / "out"
    calls, real = [], prepare._work

    def killed_after_5(job):
        if len(calls) == 5:
            raise KeyboardInterrupt
        calls.append(job)
        return real(job)

    monkeypatch.setattr(prepare, "_work", killed_after_5)
    rc, _, e = run(capfd, tree, out)
    assert rc == 130 and "rerun continues" in e
    assert not manifest(out)["complete"] and len(listing(out)) == 5
    monkeypatch.setattr(prepare, "_work", real)
    # a killed worker's temporary file, as os.replace never ran
    part = os.path.join(out, "train", "n00000002", f"n00000002_3.JPEG{prepare.TMP_MARK}99")
    with open(part, "wb") as f:
        f.write(b"\xff\xd8 half")
    before = listing(out)
    rc, o, _ = run(capfd, tree, out)
    assert rc == 0 and "13 written, 5 already there" in o and "removed 1 half-written" in o
    after = listing(out)
    assert all(after[k] == v for k, v in before.items() if prepare.TMP_MARK not in k)   # kept, untouched
    assert set(after) == set(listing(ref))
    assert manifest(out) == manifest(ref)
    # idempotent: nothing rewritten, the same manifest
    text = open(os.path.join(out, data.MANIFEST)).read()
    rc, o, _ = run(capfd, tree, out)
    assert rc == 0 and "0 written, 18 already there" in o
    assert listing(out) == after and open(os.path.join(out, data.MANIFEST)).read() == text
    # other settings are refused, not mixed in
    rc, _, e = run(capfd, tree, out, "--quality", 70)
    assert rc == 2 and e.count("\n") == 1 and "other settings" in e


def test_bad_image_stops_with_its_path_or_is_skipped_and_listed(tmp_path, capfd):
    src = make_tree(tmp_path / "src", classes=2, train_per_class=3, val_per_class=1, seed=1)
    bad = os.path.join(src, "train", "n00000001", "broken.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 not a jpeg")
    rc, _, e = run(capfd, src, tmp_path / "out")
    assert rc == 2 and e.count("\n") == 1
    assert e.startswith(f"train.prepare: error: unreadable image: {bad}") and "--skip-bad-images" in e
    rc, o, e = run(capfd, src, tmp_path / "out", "--skip-bad-images")
    assert rc == 0, e
    assert f"skipped unreadable image: {bad}" in o
    m = manifest(tmp_path / "out")
    assert m["bad_images"] == [os.path.join("train", "n00000001", "broken.jpg")]
    assert m["counts"] == dict(classes=2, train=6, val=2, bad=1) and m["statistics"]["images"] == 6
    assert not os.path.exists(os.path.join(tmp_path, "out", "train", "n00000001", "broken.jpg"))


def test_builtin_set_with_a_process_pool_gives_the_one_process_manifest(tmp_path, capfd):
    root, _ = data.make_builtin_dataset(str(tmp_path / "cache"), size=32, train_per_class=2, val_per_class=1,
                                        processes=1)
    one, two = tmp_path / "one", tmp_path / "two"
    assert run(capfd, root, one)[0] == 0
    assert prepare.main(["--data", root, "--out", str(two), "--size", str(SIZE), "--workers", "2",
                         "--no-progress"]) == 0
    assert manifest(one) == manifest(two)
    assert manifest(one)["counts"] == dict(classes=10, train=20, val=10, bad=0)
    assert {k for k in listing(one)} == {k for k in listing(two)}


def test_bad_arguments_are_one_line_exit_2(tree, tmp_path, capfd):
    assert run(capfd, tmp_path / "missing", tmp_path / "out")[0] == 2
    rc, _, e = run(capfd, tree, os.path.join(tree, "inside"))
    assert rc == 2 and "inside --data" in e
    rc, _, e = run(capfd, tree, tmp_path / "out", "--quality", 0)
    assert rc == 2 and e.count("\n") == 1
