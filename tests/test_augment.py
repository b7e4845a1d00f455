"""Tests of the GPU input path: ``kernels.augment`` (under the interpreter without a GPU) and
``train.gpu_loader`` against the CPU transform of ``train.data.Preprocess``, on tiny images (18x18 decoded
images, 13x13 crops, 4 rows per program: several programs per image and a partial last one)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import kernels
from train import data, gpu_loader
from train.data import Preprocess

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")

R, C = 18, 13          # decoded side, crop side ((R - C) / 2 = 2.5: the centre crop's rounding matters)
ROWS = 4               # rows per program in the kernel tests: 4 programs per crop, the last one partial
SEEDS = [11, 12, 13, 14, 15]


def pre(scale=255.0, pca_std=0.1, mean=data.IMAGENET_MEAN) -> Preprocess:
    return Preprocess(R, C, mean, data.IMAGENET_EIGVAL, data.IMAGENET_EIGVEC, pca_std, scale)


def images(n=3, h=R, w=R, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, h, w), dtype=torch.uint8, generator=g)


def pil(img: torch.Tensor) -> Image.Image:
    return Image.fromarray(img.permute(1, 2, 0).numpy())


def assert_close(actual, expected, atol, what):
    diff = (actual.float() - expected.float()).abs()
    worst = diff.flatten().argmax().item()
    assert diff.max() <= atol, (f"{what}: max |diff| {diff.max():.3g} > {atol:g} at flat index {worst}: "
                                f"{actual.flatten()[worst].item()} vs {expected.flatten()[worst].item()}")


def gpu_path(p: Preprocess, x: torch.Tensor, mode: str, seeds, **kw) -> torch.Tensor:
    params, shift = gpu_loader.view_params(p, mode, seeds)
    return kernels.augment(x, params, shift, p.crop, p.input_scale, rows_per_program=ROWS, **kw)


def test_train_crops_flips_and_colour_equal_the_cpu_transform():
    x = images()
    seeds = SEEDS[:3]
    flips = [pre().train_params(torch.Generator().manual_seed(s))[2] for s in seeds]
    assert True in flips and False in flips          # both branches are exercised
    # crop and flip exactly: with no mean, colour noise or scale the output is the pixel itself
    plain = pre(scale=255.0, pca_std=0.0, mean=(0.0, 0.0, 0.0))
    got = gpu_path(plain, x, "train", seeds)
    want = torch.stack([plain.train(pil(x[i]), torch.Generator().manual_seed(s))
                        for i, s in enumerate(seeds)])
    assert got.shape == (3, 3, C, C)
    assert torch.equal(got, got.round()) and torch.equal(got, want.round())
    # the full transform, colour within float32 rounding of values up to ~255
    for layout in ("chw", "hwc"):
        p = pre()
        src = x if layout == "chw" else x.permute(0, 2, 3, 1).contiguous()
        got = gpu_path(p, src, "train", seeds, layout=layout)
        want = torch.stack([p.train(pil(x[i]), torch.Generator().manual_seed(s))
                            for i, s in enumerate(seeds)])
        assert_close(got, want, 1e-4, f"train, {layout} input")
        with kernels.triton_disabled():            # the plain-PyTorch path: the same arithmetic
            assert_close(gpu_path(p, src, "train", seeds, layout=layout), got, 1e-5, "torch path")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_output_dtypes_and_channels_last(dtype):
    x, p = images(n=2, seed=1), pre(scale=4.0)
    ref = gpu_path(p, x, "train", SEEDS[:2])
    got = gpu_path(p, x, "train", SEEDS[:2], dtype=dtype, channels_last=True)
    assert got.dtype == dtype and got.is_contiguous(memory_format=torch.channels_last)
    ulp = 2.0 ** -7 if dtype == torch.bfloat16 else 2.0 ** -10
    assert_close(got, ref, ulp * ref.abs().max().item(), f"{dtype} channels_last")


@pytest.mark.parametrize("mode", ["centre", "ten_crop"])
def test_centre_and_ten_crops_equal_the_cpu_transforms(mode):
    x, p = images(n=2, seed=2), pre()
    got = gpu_path(p, x, mode, SEEDS[:2])
    cpu = getattr(p, mode)
    want = torch.stack([cpu(pil(x[i])) for i in range(2)])
    assert_close(got.view(want.shape), want, 1e-4, mode)


def test_bad_arguments_raise():
    x, (params, shift) = images(n=1), gpu_loader.view_params(pre(), "centre", [0])
    with pytest.raises(TypeError, match="uint8"):
        kernels.augment(x.float(), params, shift, C, 1.0)
    with pytest.raises(ValueError, match="does not fit"):
        kernels.augment(x, params, shift, R + 1, 1.0)
    with pytest.raises(TypeError, match="dtype"):
        kernels.augment(x, params, shift, C, 1.0, dtype=torch.float64)
    with pytest.raises(ValueError, match="3 channels"):
        kernels.augment(x, params, shift, C, 1.0, layout="hwc")


def write_jpegs(root) -> list[tuple[str, int]]:
    """Six decoded-size JPEGs, one larger non-square one (resized on the device) and one corrupt file."""
    samples = []
    for i in range(6):
        path = os.path.join(root, f"{i}.jpg")
        pil(images(n=1, seed=10 + i)[0]).save(path, quality=90)
        samples.append((path, i % 3))
    big = os.path.join(root, "big.jpg")
    Image.fromarray(np.asarray(pil(images(n=1, h=24, w=31, seed=20)[0]))).save(big, quality=90)
    bad = os.path.join(root, "bad.jpg")
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 truncated")
    return samples + [(big, 1), (bad, 2)]


def test_gpu_loader_batches_equal_the_cpu_loaders(tmp_path):
    """The CPU loader (PIL) and the GPU loader (decoding on the CPU here) over the same shuffled epoch:
    the same batches, labels and unreadable file; the one image that needs a resize within the two
    resizes' difference (torchvision's tensor resize against PIL's)."""
    samples = write_jpegs(tmp_path)
    p = pre()
    for transform, batch_size in ((p.train, 4), (p.ten_crop, 8)):
        shuffle = transform.__name__ == "train"
        order = data.EpochSampler(len(samples), 3, 1, shuffle).indices
        cpu = torch.utils.data.DataLoader(data.Images(samples, transform), batch_size=batch_size,
                                          sampler=data.EpochSampler(len(samples), 3, 1, shuffle),
                                          collate_fn=data.collate)
        files = torch.utils.data.DataLoader(gpu_loader.JpegFiles(samples), batch_size=batch_size,
                                            sampler=data.EpochSampler(len(samples), 3, 1, shuffle),
                                            collate_fn=gpu_loader.collate_files)
        gpu = gpu_loader.GpuBatches(files, transform, torch.device("cpu"))
        assert len(gpu) == len(cpu)
        bads = []
        for b, ((xc, yc, badc), (xg, yg, badg)) in enumerate(zip(cpu, gpu, strict=True)):
            assert badg == badc and torch.equal(yg, yc) and xg.shape == xc.shape
            bads += badg
            names = [os.path.basename(samples[k][0]) for k in order[b * batch_size:(b + 1) * batch_size]]
            names = [n for n in names if n != "bad.jpg"]
            for i, name in enumerate(names):
                if name == "big.jpg":
                    assert (xg[i] - xc[i]).abs().mean() < 2.0, "device resize far from PIL's"
                else:
                    assert_close(xg[i], xc[i], 1e-4, f"{transform.__name__} {name}")
        assert bads == [samples[-1][0]]


def test_unprepared_image_is_resized_on_the_device_close_to_pil(tmp_path):
    path = tmp_path / "big.jpg"
    pil(images(n=1, h=40, w=57, seed=5)[0]).save(path, quality=95)
    data_ = torch.from_numpy(np.fromfile(path, np.uint8))
    [img] = gpu_loader.decode([data_], [str(path)], torch.device("cpu"))
    ours = gpu_loader.square(img, R).float()
    pils = torch.from_numpy(np.array(pre()._square(data.load_image(str(path))))).permute(2, 0, 1).float()
    assert ours.shape == pils.shape == (3, R, R)
    assert (ours - pils).abs().mean() < 2.0, "device resize far from PIL's"


def test_train_run_with_the_gpu_loader_prints_the_cpu_loaders_losses(tmp_path, capfd):
    """``train.run --loader gpu`` on the CPU (torchvision decoding, the kernel under the interpreter) and
    ``--loader cpu`` (PIL): the same batches, so the same losses step by step."""
    from train import run
    root, _ = data.make_builtin_dataset(str(tmp_path / "cache"), size=76, train_per_class=4, val_per_class=1,
                                        processes=1)
    losses = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for loader in ("cpu", "gpu"):
            rc = run.main(["--data", root, "--resize", "76", "--image-size", "67", "--width", "0.125",
                           "--batch-size", "8", "--workers", "0", "--ops", "eager", "--no-progress",
                           "--log-every", "1", "--max-steps", "2", "--loader", loader,
                           "--out", str(tmp_path / loader)])
            out, err = capfd.readouterr()
            assert rc == 0, err
            losses[loader] = [float(v) for v in re.findall(r"^step \d+ .* loss ([\d.]+)$", out, re.M)]
    finally:
        torch.set_num_threads(threads)
    assert len(losses["cpu"]) == 2
    np.testing.assert_allclose(losses["gpu"], losses["cpu"], rtol=0, atol=2e-6)
