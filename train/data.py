"""Data: the built-in shapes dataset, ImageFolder trees, and the paper's preprocessing.

Everything random here is drawn from a generator seeded per sample from (seed, epoch, index), never
from the global RNG, so data order and augmentation do not depend on the number of DataLoader
workers and a resumed run sees exactly the images an uninterrupted one would.

Preprocessing (Krizhevsky et al. 2012, section 2 and 4.1), in pixel values of [0, 1]:
  train: resize the shorter side to ``resize``, central ``resize`` x ``resize`` crop, random
         ``crop`` x ``crop`` crop, horizontal flip with probability 1/2, PCA colour noise
         (add eigvec @ (alpha * eigval), alpha ~ N(0, sigma) per image), subtract the per-channel
         mean, multiply by ``input_scale`` (255 gives the paper's raw pixel scale).
  eval:  resize, central ``resize`` crop, then the central ``crop`` crop, or the paper's 10 crops
         (4 corners and centre, and their mirror images) whose softmax outputs are averaged.
The paper subtracts a per-pixel mean image; we subtract a per-channel mean (ImageNet's, or estimated
from the training set), as most reimplementations do.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import signal
import socket
from dataclasses import dataclass
from multiprocessing import get_context

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, ImageDraw
from torchvision.datasets.folder import IMG_EXTENSIONS, pil_loader

from alexnet.launch import pid_alive

# ImageNet's RGB statistics on [0, 1] pixels, as widely used (DESIGN.md, "The paper's recipe").
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = ((-0.5675, 0.7192, 0.4009),
                   (-0.5808, -0.0045, -0.8140),
                   (-0.5836, -0.6948, 0.4203))


class DataError(Exception):
    """A problem with the user's data: reported as one line, exit code 2."""


# ----------------------------------------------------------------------------------------------------------
# The built-in dataset: 10 classes of shapes and textures, drawn with numpy + PIL, saved as JPEG.

BUILTIN_CLASSES = ("disc", "square", "triangle", "ring", "cross", "star", "stripes", "checker", "dots",
                   "crescent")
BUILTIN_VERSION = 1  # bump when the drawing code changes: the cache folder name includes it


def default_cache_dir() -> str:
    """$ALEXNET_DATA_CACHE, else ~/.cache/alexnet-triton."""
    return os.environ.get("ALEXNET_DATA_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                                "alexnet-triton")


def _random_colour(rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """A random RGB colour, at least some distance from ``avoid`` so the object stays visible."""
    while True:
        c = rng.uniform(0, 255, 3)
        if avoid is None or np.abs(c - avoid).sum() > 150:
            return c


def _polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    m = Image.new("L", (size, size), 0)
    ImageDraw.Draw(m).polygon([tuple(p) for p in points], fill=1)
    return np.asarray(m, dtype=bool)


def _shape_mask(cls: str, size: int, rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The boolean mask of one object of class ``cls``, at a random place, size and angle."""
    r = rng.uniform(0.26, 0.38) * size                      # radius of the object's bounding circle
    cx, cy = rng.uniform(r, size - r, 2)                    # inside the frame
    theta = rng.uniform(0, 2 * math.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * math.cos(theta) + dy * math.sin(theta)         # object coordinates (rotated)
    v = -dx * math.sin(theta) + dy * math.cos(theta)
    d2 = dx * dx + dy * dy

    def regular(n, radii):
        k = np.arange(n * len(radii))
        rad = np.array(radii)[k % len(radii)]
        a = theta + 2 * math.pi * k / (n * len(radii))
        return np.stack([cx + rad * np.cos(a), cy + rad * np.sin(a)], 1)

    if cls == "disc":
        return d2 <= r * r
    if cls == "square":
        return (np.abs(u) <= r * 0.75) & (np.abs(v) <= r * 0.75)
    if cls == "triangle":
        return _polygon_mask(size, regular(3, [r]))
    if cls == "ring":
        w = rng.uniform(0.2, 0.4) * r
        return (d2 <= r * r) & (d2 >= (r - w) ** 2)
    if cls == "cross":
        w = rng.uniform(0.22, 0.32) * r
        return ((np.abs(u) <= r) & (np.abs(v) <= w)) | ((np.abs(v) <= r) & (np.abs(u) <= w))
    if cls == "star":
        return _polygon_mask(size, regular(5, [r, r * 0.4]))
    if cls == "crescent":
        off = rng.uniform(0.35, 0.55) * r
        return (d2 <= r * r) & ((u - off) ** 2 + v * v > (r * 0.85) ** 2)
    patch = d2 <= r * r if rng.random() < 0.5 else (np.abs(u) <= r * 0.8) & (np.abs(v) <= r * 0.8)
    period = rng.uniform(0.3, 0.42) * r
    if cls == "stripes":
        return patch & (np.floor(u / period) % 2 == 0)
    if cls == "checker":
        return patch & ((np.floor(u / period) + np.floor(v / period)) % 2 == 0)
    if cls == "dots":
        fu, fv = (u / period) % 2 - 1, (v / period) % 2 - 1
        return patch & (fu * fu + fv * fv <= 0.5)
    raise ValueError(cls)


def draw_image(cls_index: int, size: int, seed: int) -> Image.Image:
    """One image of class ``cls_index``: a coloured object on a random gradient with clutter and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    # background: a linear gradient between two random colours, in a random direction
    c0, c1 = _random_colour(rng).astype(np.float32), _random_colour(rng).astype(np.float32)
    a = rng.uniform(0, 2 * math.pi)
    t = ((xx * math.cos(a) + yy * math.sin(a)) * (0.5 / size) + 0.5)[..., None]
    img = c0 + (c1 - c0) * t                                # (size, size, 3) float32
    bg_mean = (c0 + c1) / 2
    # clutter: small blobs and thin lines in random colours
    for _ in range(rng.integers(1, 4)):
        col = _random_colour(rng)
        if rng.random() < 0.5:
            rx, ry = rng.uniform(2, max(2.5, 0.04 * size), 2)
            x0, y0 = rng.uniform(0, size, 2)
            img[((xx - x0) / rx) ** 2 + ((yy - y0) / ry) ** 2 <= 1] = col
        else:
            p = rng.uniform(0, size, 4)
            line = Image.new("L", (size, size), 0)
            ImageDraw.Draw(line).line(list(p), fill=1, width=int(rng.integers(1, 3)))
            img[np.asarray(line, dtype=bool)] = col
    # the object
    fg = _random_colour(rng, avoid=bg_mean)
    img[_shape_mask(BUILTIN_CLASSES[cls_index], size, rng, yy, xx)] = fg
    img += rng.standard_normal(img.shape, dtype=np.float32) * 6
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _write_images(jobs: list[tuple[str, int, int, int]], parent: int | None = None) -> None:
    for path, cls_index, size, seed in jobs:
        if parent is not None and os.getppid() != parent:   # the generating process died: end too
            os._exit(1)
        draw_image(cls_index, size, seed).save(path, quality=90)


def _pool_worker_init() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the parent, which removes the folder


def _remove_stale_tmp(cache_dir: str) -> None:
    """Temporary folders of generations on this machine whose process no longer runs (killed -9)."""
    host = socket.gethostname()
    for entry in os.listdir(cache_dir):
        m = re.fullmatch(r"shapes-.+\.tmp-(.+)-(\d+)", entry)
        if m and m[1] == host and not pid_alive(int(m[2])):
            shutil.rmtree(os.path.join(cache_dir, entry), ignore_errors=True)


def make_builtin_dataset(cache_dir: str, size: int = 112, train_per_class: int = 500,
                         val_per_class: int = 50, processes: int = 2) -> tuple[str, bool]:
    """Generate the built-in dataset once under ``cache_dir``; return (its folder, whether it was made now).

    The folder name holds every generation parameter, and the tree is written to a temporary folder that
    is renamed when complete, so an interrupted generation is never mistaken for a finished one. An
    interrupted generation removes its temporary folder; one killed outright (SIGKILL) leaves it, and
    the next generation removes it.
    """
    name = f"shapes-v{BUILTIN_VERSION}-{size}px-{train_per_class}x{val_per_class}"
    root = os.path.join(cache_dir, name)
    if os.path.isdir(root):
        return root, False
    os.makedirs(cache_dir, exist_ok=True)
    _remove_stale_tmp(cache_dir)
    tmp = f"{root}.tmp-{socket.gethostname()}-{os.getpid()}"
    jobs = []
    for split, per_class in (("train", train_per_class), ("val", val_per_class)):
        for ci, cname in enumerate(BUILTIN_CLASSES):
            os.makedirs(os.path.join(tmp, split, cname))
            for i in range(per_class):
                digest = hashlib.sha256(f"{split}/{cname}/{i}".encode()).digest()
                jobs.append((os.path.join(tmp, split, cname, f"{i:05d}.jpg"), ci, size,
                             int.from_bytes(digest[:8], "little")))
    try:
        if processes > 1:
            with get_context("fork").Pool(processes, initializer=_pool_worker_init) as pool:
                pool.starmap(_write_images, [(jobs[i::processes], os.getpid()) for i in range(processes)])
        else:
            _write_images(jobs)
        try:
            os.rename(tmp, root)
        except OSError:                # another process finished the same folder first
            if not os.path.isdir(root):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root, True


# ----------------------------------------------------------------------------------------------------------
# ImageFolder trees: train/<class>/*.jpg and val/<class>/*.jpg, checked before anything runs.

def _entries(folder: str, keep) -> list[str]:
    """The names in ``folder`` for which ``keep(entry)`` holds; an unreadable folder or entry (no
    permission, a symlink loop) is a ``DataError`` naming it."""
    names, path = [], folder
    try:
        with os.scandir(folder) as it:
            for e in it:
                path = e.path
                if keep(e):
                    names.append(e.name)
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    return sorted(names)


def _scan_split(split_dir: str, what: str) -> tuple[list[str], list[tuple[str, int]]]:
    if not os.path.isdir(split_dir):
        raise DataError(f"missing {what} folder: {split_dir}")
    classes = _entries(split_dir, lambda e: e.is_dir())
    if not classes:
        raise DataError(f"no class folders in {split_dir}")
    samples = []
    for ci, cname in enumerate(classes):
        cdir = os.path.join(split_dir, cname)
        files = _entries(cdir, lambda e: e.name.lower().endswith(IMG_EXTENSIONS) and e.is_file())
        if not files:
            raise DataError(f"class folder with no images: {cdir}")
        samples += [(os.path.join(cdir, f), ci) for f in files]
    return classes, samples


def scan_image_folders(root: str) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Check an ImageFolder tree and list it: (class names, train samples, val samples)."""
    if not os.path.isdir(root):
        raise DataError(f"data folder not found: {root}")
    train_classes, train = _scan_split(os.path.join(root, "train"), "train/")
    val_classes, val = _scan_split(os.path.join(root, "val"), "val/")
    if train_classes != val_classes:
        only_t = sorted(set(train_classes) - set(val_classes))
        only_v = sorted(set(val_classes) - set(train_classes))
        raise DataError(f"train/ and val/ have different classes (only in train: {only_t[:5]}, "
                        f"only in val: {only_v[:5]})")
    return train_classes, train, val


def limit_samples(samples: list, limit: int | None) -> list:
    """A fixed subset of ``limit`` samples (the same for every seed), in their original order."""
    if not limit or limit >= len(samples):
        return samples
    keep = np.random.default_rng(0).permutation(len(samples))[:limit]
    return [samples[i] for i in sorted(keep)]


# ----------------------------------------------------------------------------------------------------------
# Transforms. Each takes (PIL image, torch.Generator) and returns a tensor.

@dataclass
class Preprocess:
    resize: int                 # shorter side, then central resize x resize crop
    crop: int                   # network input size
    mean: tuple                 # per-channel mean on [0, 1] pixels
    eigval: tuple               # PCA of the RGB pixels on [0, 1]
    eigvec: tuple               # rows are eigenvectors
    pca_std: float = 0.1        # sigma of the PCA colour noise; 0 turns it off
    input_scale: float = 1.0    # multiplies (pixel - mean); 255 gives the paper's raw pixel scale

    def _square(self, img: Image.Image) -> Image.Image:
        if img.size == (self.resize, self.resize):   # prepared data (train.prepare): nothing to do
            return img
        img = TF.resize(img, self.resize)
        return TF.center_crop(img, [self.resize, self.resize])

    def _finish(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean).view(3, 1, 1)
        return (x - mean) * self.input_scale

    def train_params(self, g: torch.Generator) -> tuple[int, int, bool, torch.Tensor]:
        """A sample's random draws, in order: (top, left, flip, the PCA colour shift (3,)). The GPU loader
        (train/gpu_loader.py) draws them here too, so both loaders give the same batch."""
        top, left = torch.randint(0, self.resize - self.crop + 1, (2,), generator=g).tolist()
        flip = bool(torch.rand((), generator=g) < 0.5)
        alpha = torch.randn(3, generator=g) * self.pca_std
        rgb = torch.tensor(self.eigvec).T @ (alpha * torch.tensor(self.eigval))   # eigvec rows are vectors
        return top, left, flip, rgb

    def train(self, img: Image.Image, g: torch.Generator) -> torch.Tensor:
        img = self._square(img)
        top, left, flip, rgb = self.train_params(g)
        x = TF.to_tensor(TF.crop(img, top, left, self.crop, self.crop))
        if flip:
            x = x.flip(-1)
        return self._finish(x + rgb.view(3, 1, 1))

    def centre(self, img: Image.Image, g: torch.Generator | None = None) -> torch.Tensor:
        return self._finish(TF.to_tensor(TF.center_crop(self._square(img), [self.crop, self.crop])))

    def ten_crop(self, img: Image.Image, g: torch.Generator | None = None) -> torch.Tensor:
        """(10, 3, crop, crop): 4 corners, centre, then the same five mirrored (the paper's test crops)."""
        crops = TF.ten_crop(self._square(img), [self.crop, self.crop])
        return torch.stack([self._finish(TF.to_tensor(c)) for c in crops])


def image_statistics(samples: list[tuple[str, int]], resize: int, max_images: int = 500) -> tuple:
    """Per-channel mean and RGB PCA (eigval, eigvec rows) of up to ``max_images`` training images."""
    pick = limit_samples(samples, max_images)
    pixels = []
    for path, _ in pick:
        try:
            img = load_image(path)
        except Exception:  # noqa: BLE001  (unreadable: training names or skips it later)
            continue
        img = TF.center_crop(TF.resize(img, resize), [resize, resize])
        x = TF.to_tensor(img).flatten(1)
        pixels.append(x[:, torch.randperm(x.shape[1], generator=torch.Generator().manual_seed(0))[:2000]])
    p = torch.cat(pixels, 1).double()
    mean = p.mean(1)
    eigval, eigvec = torch.linalg.eigh(torch.cov(p))
    order = eigval.argsort(descending=True)
    rows = tuple(map(tuple, eigvec[:, order].T.tolist()))      # eigenvectors as rows, largest first
    return tuple(mean.tolist()), tuple(eigval[order].tolist()), rows


MANIFEST = "manifest.json"   # written by train.prepare into the folder it prepares


def train_statistics(root: str, samples: list[tuple[str, int]], resize: int) -> tuple:
    """``image_statistics``, read from ``root``'s train.prepare manifest when it was prepared at ``resize``
    (the mean and PCA of every prepared training image); else computed from up to 500 training images."""
    try:
        with open(os.path.join(root, MANIFEST)) as f:
            manifest = json.load(f)
        if manifest["complete"] and manifest["settings"]["size"] == resize:
            st = manifest["statistics"]
            return tuple(st["mean"]), tuple(st["eigval"]), tuple(map(tuple, st["eigvec"]))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return image_statistics(samples, resize)


def load_image(path: str) -> Image.Image:
    return pil_loader(path)


# ----------------------------------------------------------------------------------------------------------
# Datasets and sampling.

class Images(torch.utils.data.Dataset):
    """Indexed by (sample index, sample seed). A sample that cannot be read or decoded (a corrupt or
    truncated file, a decompression bomb, a symlink loop) comes back as (None, label, path), so the
    training loop can name the file or skip it."""

    def __init__(self, samples: list[tuple[str, int]], transform):
        self.samples, self.transform = samples, transform

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.samples[index]
        try:
            img = load_image(path)
        except Exception:  # noqa: BLE001  (PIL raises many kinds: OSError, DecompressionBombError, ...)
            return None, label, path
        return self.transform(img, torch.Generator().manual_seed(seed)), label, path


def collate(batch):
    """Stack the readable samples; return (images, labels, paths of unreadable samples)."""
    good = [b for b in batch if b[0] is not None]
    bad = [b[2] for b in batch if b[0] is None]
    if not good:
        return None, None, bad
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), bad


def sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch) * 10_000_019 + index


class EpochSampler(torch.utils.data.Sampler):
    """The epoch's shuffled order (from seed and epoch), this data-parallel rank's share of it, starting
    ``skip`` samples in (a resumed epoch). Yields (index, sample seed). For training, like
    DistributedSampler, it pads the order by repeating its start so every rank gets as many samples;
    for evaluation (``shuffle=False``) it does not, so no image is counted twice."""

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool, rank: int = 0, world: int = 1,
                 skip: int = 0):
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
            order = order.repeat(math.ceil(world / n) + 1)[:math.ceil(n / world) * world]
        else:
            order = torch.arange(n)
        self.indices = order[rank::world].tolist()[skip:]
        self.seed, self.epoch = seed, epoch

    def __len__(self):
        return len(self.indices)

    def __iter__(self):
        return iter((i, sample_seed(self.seed, self.epoch, i)) for i in self.indices)
