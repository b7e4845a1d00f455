"""The GPU input path (``train.run --loader gpu``): workers read bytes, the GPU decodes and augments.

DataLoader workers only read each file's bytes (``JpegFiles``); the batch is decoded on the training device
with ``torchvision.io.decode_jpeg(list, device=...)`` (batched nvJPEG on CUDA), images that are not
``resize`` x ``resize`` (unprepared data) are resized there (torchvision's antialiased bilinear resize of
the shorter side, then the central crop: the CPU path's arithmetic on the GPU, not bit for bit PIL's), and
one Triton kernel (``kernels.augment``) crops, flips, adds the PCA colour noise, subtracts the mean, scales
and casts. Each sample's crop corner, flip and colour noise are drawn on the host by
``Preprocess.train_params`` from the sample's seed, exactly as the CPU transform draws them, so both
loaders give the same batch: crops and flips exactly, values within float rounding (JPEG decoding by
torchvision and by PIL agree for baseline JPEGs with libjpeg-turbo; resized images differ by the resize).

A file that no decoder reads is named (``bad``), as the CPU loader names it; the training loop stops on it
or skips it (``--skip-bad-images``). Decoding falls back per image: the batched device decode, then that
image alone on the device, then torchvision's CPU decoders (CMYK JPEGs, a PNG named .JPEG), then PIL.

On a CPU device the same code runs with CPU decoding, and the kernel runs under ``TRITON_INTERPRET=1``
(else its plain-PyTorch path): this is how the tests check the whole path against the CPU transform.
"""

from __future__ import annotations

import numpy as np
import torch
import torchvision.transforms.functional as TF
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

import kernels
from train.data import Preprocess, load_image

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class JpegFiles(torch.utils.data.Dataset):
    """Indexed by (sample index, sample seed), like ``train.data.Images``; returns (the file's bytes as a
    uint8 tensor, or None if it cannot be read; label; path; seed)."""

    def __init__(self, samples: list[tuple[str, int]]):
        self.samples = samples

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, item):
        index, seed = item
        path, label = self.samples[index]
        try:
            with open(path, "rb") as f:
                data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
        except OSError:
            data = None
        return data, label, path, seed


def collate_files(batch):
    """(list of byte tensors or None, labels, paths, seeds): decoding happens on the device."""
    return ([b[0] for b in batch], torch.tensor([b[1] for b in batch]), [b[2] for b in batch],
            [b[3] for b in batch])


def _decode_one(data: torch.Tensor | None, path: str, device: torch.device) -> torch.Tensor | None:
    """One image as (3, H, W) uint8 on ``device``, or None: the device, then the CPU decoders, then PIL."""
    if data is None or data.numel() == 0:
        return None
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except (RuntimeError, ValueError):
        pass
    try:
        return decode_image(data, mode=ImageReadMode.RGB).to(device)
    except (RuntimeError, ValueError):
        pass
    try:
        img = np.array(load_image(path))
    except Exception:  # noqa: BLE001  (PIL raises many kinds: OSError, DecompressionBombError, ...)
        return None
    return torch.from_numpy(img).permute(2, 0, 1).contiguous().to(device)


def decode(datas: list, paths: list[str], device: torch.device) -> list[torch.Tensor | None]:
    """Decode a batch on ``device``: one batched call when every file decodes, else image by image."""
    if all(d is not None and d.numel() > 0 for d in datas):
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except (RuntimeError, ValueError):
            pass
    return [_decode_one(d, p, device) for d, p in zip(datas, paths)]


def square(img: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) uint8 -> (3, size, size): shorter side to ``size``, central crop (Preprocess._square)."""
    if img.shape[1] == size and img.shape[2] == size:
        return img
    img = TF.resize(img, size, antialias=True)
    return TF.center_crop(img, [size, size])


def view_params(pre: Preprocess, mode: str, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The crops of each image (``mode``: "train", "centre" or "ten_crop"; 1, 1 or 10 per image) as
    ``kernels.augment``'s (params (M, 4) int32: image, top, left, flip; shift (M, 3) float32)."""
    r, c = pre.resize, pre.crop
    mean = torch.tensor(pre.mean, dtype=torch.float32)
    rows, rgbs = [], []
    if mode == "train":
        for i, seed in enumerate(seeds):
            top, left, flip, rgb = pre.train_params(torch.Generator().manual_seed(seed))
            rows.append((i, top, left, int(flip)))
            rgbs.append(rgb.float())
    else:
        ct, cl = int(round((r - c) / 2.0)), int(round((r - c) / 2.0))   # TF.center_crop's corner
        if mode == "centre":
            views = [(ct, cl, 0)]
        elif mode == "ten_crop":
            # TF.ten_crop: five_crop (top-left, top-right, bottom-left, bottom-right, centre) of the image,
            # then five_crop of its mirror image, whose crops are the mirrors of top-right, top-left,
            # bottom-right, bottom-left and the centre crop of the mirror (at column r - c - cl)
            corners = [(0, 0), (0, r - c), (r - c, 0), (r - c, r - c), (ct, cl)]
            mirrored = [(0, r - c), (0, 0), (r - c, r - c), (r - c, 0), (ct, r - c - cl)]
            views = [(t, le, 0) for t, le in corners] + [(t, le, 1) for t, le in mirrored]
        else:
            raise ValueError(f"unknown transform {mode!r}")
        for i in range(len(seeds)):
            rows += [(i, t, le, f) for t, le, f in views]
            rgbs += [torch.zeros(3)] * len(views)
    params = torch.tensor(rows, dtype=torch.int32).view(-1, 4)
    shift = ((torch.stack(rgbs) - mean) * pre.input_scale) if rgbs else torch.zeros(0, 3)
    return params, shift.float()


class GpuBatches:
    """Wraps a DataLoader of ``JpegFiles`` batches; yields (images on ``device``, labels, bad paths) like
    the CPU loader. ``transform`` is a Preprocess's bound ``train``, ``centre`` or ``ten_crop``: the
    same crops as that CPU transform (ten_crop gives (N, 10, 3, crop, crop))."""

    def __init__(self, loader, transform, device: torch.device, dtype: torch.dtype = torch.float32,
                 channels_last: bool = False):
        self.loader, self.device, self.dtype, self.channels_last = loader, device, dtype, channels_last
        self.pre: Preprocess = transform.__self__
        self.mode = transform.__name__
        if not isinstance(self.pre, Preprocess) or self.mode not in ("train", "centre", "ten_crop"):
            raise ValueError(f"GpuBatches: {transform} is not a Preprocess transform")

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            yield self.batch(*batch)

    def batch(self, datas: list, labels: torch.Tensor, paths: list[str], seeds: list[int]):
        images = decode(datas, paths, self.device)
        good = [i for i, img in enumerate(images) if img is not None]
        bad = [paths[i] for i, img in enumerate(images) if img is None]
        if not good:
            return None, None, bad
        stack = torch.stack([square(images[i], self.pre.resize) for i in good])    # (N, 3, R, R) uint8
        params, shift = view_params(self.pre, self.mode, [seeds[i] for i in good])
        x = kernels.augment(stack, params.to(self.device, non_blocking=True),
                            shift.to(self.device, non_blocking=True), self.pre.crop, self.pre.input_scale,
                            self.dtype, self.channels_last)
        if self.mode == "ten_crop":
            x = x.view(len(good), 10, *x.shape[1:])
        return x, labels[good], bad
