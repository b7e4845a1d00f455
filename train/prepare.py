"""The paper's offline step: every image resized once to 256x256, before training.

    python -m train.prepare --data /imagenet --out /imagenet-256
    python -m train.run --data /imagenet-256 --mean train --pca train

Krizhevsky et al. (2012), section 2: "we down-sampled the images to a fixed resolution of 256 x 256 ...
rescaled the image such that the shorter side was of length 256, and then cropped out the central 256 x 256
patch". This writes that patch of every image of an ImageFolder tree (train/<class>/, val/<class>/) as a
JPEG (quality 90 by default) under the same relative path, on all cores, with a progress bar (without a
terminal, a line every 30 s: train/progress.py). The resize is the training code's own
(``train.data.Preprocess``: torchvision's antialiased bilinear resize of the shorter side, then the central
crop), so a prepared image is exactly what ``train.run`` would have computed from the original before its
random crop, up to the JPEG re-encoding.

Resumable and idempotent: each file is written to a temporary name in its folder and renamed when complete,
so a killed run leaves no half-written image; a rerun skips every file already there (and deletes the
temporary files a killed run left). ``manifest.json`` in ``--out`` records the source, the settings, the
counts, the unreadable images that were skipped, and the training set's per-channel mean and RGB PCA
(eigenvalues, eigenvectors as rows, on [0, 1] pixels), computed from every pixel of every prepared training
image as decoded from its JPEG; ``train.run --data OUT --mean train --pca train`` reads them from there
instead of rescanning. Its statistics are exact integer sums, so a rerun writes the same manifest. A folder
prepared with other settings is refused, not mixed.

An unreadable source image stops the run with its path (exit code 2) unless ``--skip-bad-images``, which
skips it and lists it in the manifest.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import sys
import time
from multiprocessing import get_context

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image

from train.data import MANIFEST, DataError, load_image, scan_image_folders
from train.progress import bar as progress_bar

FORMAT = "alexnet-triton prepared ImageFolder"
VERSION = 1
TMP_MARK = ".part-"             # temporary files: <name>.part-<pid>; never an image extension


def output_name(name: str) -> str:
    """A JPEG keeps its name; any other image gets ".jpg" appended (a.png -> a.png.jpg: no collisions)."""
    return name if name.lower().endswith((".jpg", ".jpeg")) else name + ".jpg"


def square(img: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size``, then the central size x size crop: ``Preprocess._square``'s arithmetic."""
    img = TF.resize(img, size)
    return TF.center_crop(img, [size, size])


def pixel_sums(jpeg: bytes) -> tuple[list[int], list[list[int]], int]:
    """(sum of R, G, B; sum of the 3x3 products; pixels) of a JPEG as decoded, all exact integers.

    Every partial sum is an integer below 2^53 (255^2 x 2^20 pixels), so float64 arithmetic is exact and
    sums over any number of images in any order give the same manifest."""
    x = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"), dtype=np.float64).reshape(-1, 3)
    return x.sum(0).astype(np.int64).tolist(), (x.T @ x).astype(np.int64).tolist(), x.shape[0]


def _work(job: tuple) -> tuple:
    """Prepare one image (or read back one already prepared). Returns (index, status, sums or error)."""
    index, src, dst, size, quality, want_sums = job
    if os.path.exists(dst):
        status = "kept"
        with open(dst, "rb") as f:
            jpeg = f.read() if want_sums else b""
    else:
        status = "written"
        try:
            out = square(load_image(src), size)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            return index, "bad", f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}".rstrip(": ")
        buf = io.BytesIO()
        out.save(buf, format="JPEG", quality=quality)
        jpeg = buf.getvalue()
        tmp = f"{dst}{TMP_MARK}{os.getpid()}"
        with open(tmp, "wb") as f:
            f.write(jpeg)
        os.replace(tmp, dst)           # atomic: dst is either absent or complete
    return index, status, pixel_sums(jpeg) if want_sums else None


def _init_worker() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the parent, which stops the pool
    torch.set_num_threads(1)


def statistics(sums: list, sqsums: list, pixels: int) -> dict:
    """Per-channel mean and RGB PCA on [0, 1] pixels from exact sums (population covariance)."""
    s = np.array(sums, dtype=np.float64) / 255.0
    q = np.array(sqsums, dtype=np.float64) / 255.0 ** 2
    mean = s / pixels
    cov = q / pixels - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)
    order = eigval.argsort()[::-1]
    vectors = eigvec[:, order].T
    vectors *= np.where(vectors.sum(1, keepdims=True) < 0, -1.0, 1.0)  # a fixed sign for each vector
    return dict(mean=mean.tolist(), eigval=eigval[order].tolist(), eigvec=vectors.tolist(), pixels=pixels)


def _write_json(path: str, obj: dict) -> None:
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def _remove_leftovers(folder: str) -> int:
    """Delete the temporary files a killed run left in ``folder``."""
    n = 0
    for e in os.scandir(folder):
        if TMP_MARK in e.name and e.is_file():
            os.remove(e.path)
            n += 1
    return n


def prepare(src: str, out: str, size: int = 256, quality: int = 90, workers: int | None = None,
            skip_bad_images: bool = False, progress: bool = True, log=print) -> dict:
    """Prepare ``src`` into ``out`` (see the module's docstring); returns the manifest."""
    if size < 1:
        raise DataError(f"--size must be positive, got {size}")
    if not 1 <= quality <= 100:
        raise DataError(f"--quality must be in [1, 100], got {quality}")
    src, out = os.path.abspath(src), os.path.abspath(out)
    if out == src or out.startswith(src + os.sep):
        raise DataError(f"--out {out} is inside --data {src}")
    classes, train, val = scan_image_folders(src)
    settings = dict(size=size, quality=quality, resize="torchvision resize (bilinear, antialiased) of the "
                                                        "shorter side, then the central square crop")
    manifest_path = os.path.join(out, MANIFEST)
    if os.path.exists(manifest_path):
        with open(manifest_path) as f:
            old = json.load(f)
        if old.get("format") != FORMAT or old.get("settings") != settings:
            raise DataError(f"{out} was prepared with other settings ({old.get('settings')}); choose another "
                            f"--out")
    os.makedirs(out, exist_ok=True)
    _write_json(manifest_path, dict(format=FORMAT, version=VERSION, complete=False, source=src,
                                    settings=settings))

    jobs = []
    leftovers = 0
    for split, samples in (("train", train), ("val", val)):
        for cname in classes:
            folder = os.path.join(out, split, cname)
            os.makedirs(folder, exist_ok=True)
            leftovers += _remove_leftovers(folder)
        for path, ci in samples:
            dst = os.path.join(out, split, classes[ci], output_name(os.path.basename(path)))
            jobs.append((len(jobs), path, dst, size, quality, split == "train"))
    if leftovers:
        log(f"removed {leftovers} half-written file(s) of an interrupted run")
    workers = workers or os.cpu_count() or 1
    log(f"preparing {len(train)} training and {len(val)} validation images ({len(classes)} classes) of {src} "
        f"into {out}: {size}x{size}, JPEG quality {quality}, {workers} process(es)")

    sums, sqsums, pixels = [0, 0, 0], [[0] * 3 for _ in range(3)], 0
    counts = dict(written=0, kept=0, bad=0)
    bad, bad_train = [], 0
    t0 = time.perf_counter()
    bar = progress_bar(len(jobs), "images", unit="img", enabled=progress, smoothing=0.05)
    chunk = max(1, min(64, len(jobs) // (workers * 8)))
    pool = get_context("fork").Pool(workers, _init_worker) if workers > 1 else None
    try:
        results = pool.imap_unordered(_work, jobs, chunksize=chunk) if pool else map(_work, jobs)
        for index, status, value in results:
            counts[status] += 1
            bar.update(1)
            if status == "bad":
                path = jobs[index][1]
                if not skip_bad_images:
                    raise DataError(f"unreadable image: {path} ({value}); pass --skip-bad-images to skip "
                                    f"such files (a rerun keeps what is done)")
                bad.append(os.path.relpath(path, src))
                bad_train += jobs[index][5]
                bar.write(f"skipped unreadable image: {path} ({value})")
            elif value is not None:
                s, q, n = value
                sums = [a + b for a, b in zip(sums, s)]
                sqsums = [[a + b for a, b in zip(ra, rb)] for ra, rb in zip(sqsums, q)]
                pixels += n
        if pool:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if pool:
            pool.terminate()
    bad.sort()
    n_train = len(train) - bad_train
    if n_train == 0:
        raise DataError(f"no readable training images in {src}")
    manifest = dict(format=FORMAT, version=VERSION, complete=True, source=src, settings=settings,
                    counts=dict(classes=len(classes), train=n_train, val=len(val) - len(bad) + bad_train,
                                bad=len(bad)),
                    bad_images=bad, statistics=dict(over="every pixel of every prepared training image",
                                                    images=n_train, **statistics(sums, sqsums, pixels)))
    _write_json(manifest_path, manifest)
    seconds = time.perf_counter() - t0
    log(f"done in {seconds:.1f}s: {counts['written']} written, {counts['kept']} already there, "
        f"{counts['bad']} unreadable skipped; manifest {manifest_path}")
    return manifest


class Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit code 2, like train.run
        print(f"train.prepare: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv=None) -> int:
    p = Parser(prog="python -m train.prepare", description=__doc__.split("\n\n")[0],
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True, help="the source ImageFolder tree: train/<class>/, val/<class>/")
    p.add_argument("--out", required=True, help="where the prepared tree and manifest.json go")
    p.add_argument("--size", type=int, default=256, help="shorter side, then central square crop (256)")
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the written images (90)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: every core)")
    p.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable images (listed in the manifest) instead of stopping")
    p.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (without a terminal: no progress lines)")
    try:
        args = p.parse_args(argv)
    except SystemExit as e:
        return e.code
    try:
        prepare(args.data, args.out, args.size, args.quality, args.workers, args.skip_bad_images,
                args.progress)
    except DataError as e:
        print(f"train.prepare: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("train.prepare: interrupted (a rerun continues where it stopped)", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
