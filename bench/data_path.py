"""Images per second of each input path, beside the training step they feed.

    python bench/data_path.py                 # about 1-2 minutes on 2 CPU cores; more on a GPU machine
    python bench/data_path.py --images 512    # a larger generated set

On a set it generates (photograph-like JPEGs of ImageNet's typical size, 500x375 at quality 90: smooth
multi-scale colour fields, shapes with sharp edges, sensor-like noise), it measures:
  - ``train.prepare``: the paper's 256x256 preparation, on every core;
  - the CPU loader (``--loader cpu``), one process = one core: PIL decode + ``Preprocess.train`` (resize,
    random crop, flip, PCA colour noise, mean, scale) on the full-size JPEGs and on the prepared ones, and
    the decode alone;
  - the GPU loader (``--loader gpu``), with a CUDA GPU: batched ``decode_jpeg(device="cuda")`` + the
    ``kernels.augment`` kernel at batch 256, on prepared and on full-size JPEGs (resized on the GPU); the
    kernel alone, its effective bandwidth (uint8 in, float32/bfloat16 out) against the device's copy
    bandwidth; without a GPU it says so in one line;
  - the training step of the network it feeds (the paper's AlexNet, fused ops; batch 128 on a GPU, 16 on
    the CPU), so that it is plain which one limits training;
  - the kernel's static cost read from its sm_90a SASS (bench/tools/sass_cost.py's machinery, no GPU needed):
    thread-instructions per minimal byte, registers, spills.
Results: bench/results/data_path_<device>_<date>.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from multiprocessing import get_context
from pathlib import Path

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0") and "triton" not in sys.modules:
    os.environ.pop("TRITON_INTERPRET")  # the SASS check needs real JITFunctions (set before triton loads)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw, ImageFilter  # noqa: E402

import kernels  # noqa: E402
from bench.common import copy_bandwidth_gbs, device_slug, env_info, time_gpu  # noqa: E402
from train import data, gpu_loader, prepare  # noqa: E402

SIZE, CROP = 256, 227


# ------------------------------------------------------------------------------------- the image set

def photo_like(seed: int, w: int = 500, h: int = 375) -> Image.Image:
    """A photograph-like image: a 1/f-like colour field (9 octaves of bicubic-upsampled noise, channels
    correlated as in photographs), a few flat shapes with sharp edges, a slight blur and sensor noise."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float32)
    for k in range(9):
        field = rng.normal(0, 1, (2 + 2**k, 2 + int(2**k * w / h), 3)).astype(np.float32)
        field[..., 1:] = field[..., :1] * 0.8 + field[..., 1:] * 0.4
        img += np.stack([np.asarray(Image.fromarray(field[..., c], mode="F").resize((w, h), Image.BICUBIC))
                         for c in range(3)], -1) * (45.0 / 1.2**k)
    img += rng.uniform(60, 190, 3)
    pil = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(3, 8))):
        x0, y0, rx, ry = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(10, w / 3), rng.uniform(10, h / 3)
        colour = tuple(int(v) for v in rng.uniform(0, 255, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0 - rx, y0 - ry, x0 + rx, y0 + ry], fill=colour)
        else:
            draw.polygon([(float(x0 + rng.uniform(-rx, rx)), float(y0 + rng.uniform(-ry, ry)))
                          for _ in range(int(rng.integers(3, 7)))], fill=colour)
    arr = np.asarray(pil.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float32)
    arr += rng.normal(0, 8, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write(jobs):
    for path, seed in jobs:
        photo_like(seed).save(path, quality=90)


def make_set(root: str, n: int, classes: int = 4, processes: int = 2) -> None:
    """An ImageFolder tree of ``n`` training images (and a few validation ones) under ``root``."""
    jobs = []
    for split, count in (("train", n), ("val", classes)):
        for c in range(classes):
            os.makedirs(os.path.join(root, split, f"n{c:08d}"))
        jobs += [(os.path.join(root, split, f"n{i % classes:08d}", f"{split}_{i:05d}.JPEG"),
                  i + (0 if split == "train" else 10**6)) for i in range(count)]
    with get_context("fork").Pool(processes) as pool:
        pool.map(_write, [jobs[i::processes] for i in range(processes)])


# ------------------------------------------------------------------------------------- measurements

def per_core(fn, items: list, min_seconds: float) -> dict:
    """fn(item) over the items, repeated until ``min_seconds``, in this one process: images/s."""
    fn(items[0])
    done, t0 = 0, time.perf_counter()
    while True:
        for item in items:
            fn(item)
        done += len(items)
        seconds = time.perf_counter() - t0
        if seconds >= min_seconds:
            return dict(images=done, seconds=round(seconds, 3), images_per_s=round(done / seconds, 1))


def cpu_paths(full: list[str], prepared: list[str], pre: data.Preprocess, min_seconds: float) -> dict:
    g = torch.Generator()
    train = lambda path: pre.train(data.load_image(path), g.manual_seed(0))
    return {
        "pil_train_full_size": per_core(train, full, min_seconds),
        "pil_train_prepared": per_core(train, prepared, min_seconds),
        "pil_decode_full_size": per_core(data.load_image, full, min_seconds / 2),
        "pil_decode_prepared": per_core(data.load_image, prepared, min_seconds / 2),
    }


def train_step(device: torch.device, batch: int, steps: int, precision: str) -> dict:
    """Images/s of the paper's AlexNet training step (fused ops, SGD) on random input."""
    from alexnet.model import AlexNet, AlexNetConfig
    torch.manual_seed(0)
    model = AlexNet(AlexNetConfig(), ops="fused").to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, 3, CROP, CROP, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
           else torch.autocast(device.type, enabled=False))

    def step():
        with amp:
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return dict(batch=batch, steps=steps, precision=precision, seconds=round(seconds, 3),
                images_per_s=round(batch * steps / seconds, 1))


def gpu_paths(prepared: list[str], full: list[str], pre: data.Preprocess, batch: int) -> dict:
    """Decode + augmentation on the GPU (bytes already in host memory, as the workers hand them over)."""
    device = torch.device("cuda")
    out = {}
    for name, files in (("prepared", prepared), ("full_size", full)):
        blobs = [torch.from_numpy(np.fromfile(p, np.uint8)) for p in files]
        blobs = (blobs * (batch // len(blobs) + 1))[:batch]
        labels = torch.zeros(batch, dtype=torch.long)
        paths, seeds = ["?"] * batch, list(range(batch))
        for dtype in (torch.float32, torch.bfloat16):
            batcher = gpu_loader.GpuBatches([], pre.train, device, dtype)

            def run(batcher=batcher, blobs=blobs, labels=labels, paths=paths, seeds=seeds):
                return batcher.batch(blobs, labels, paths, seeds)

            for _ in range(3):
                run()
            torch.cuda.synchronize()
            reps, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < 2.0:
                run()
                reps += 1
            torch.cuda.synchronize()
            s = time.perf_counter() - t0
            out[f"decode_augment_{name}_{str(dtype)[6:]}"] = dict(
                batch=batch, batches=reps, seconds=round(s, 3), images_per_s=round(reps * batch / s, 1))
    # the kernel alone, against the copy bandwidth
    images = torch.randint(0, 256, (batch, 3, SIZE, SIZE), dtype=torch.uint8, device=device)
    params, shift = gpu_loader.view_params(pre, "train", list(range(batch)))
    params, shift = params.to(device), shift.to(device)
    copy = copy_bandwidth_gbs(device)
    out["copy_bandwidth_gbs"] = round(copy["gbs"], 1)
    for dtype in (torch.float32, torch.bfloat16):
        ms = time_gpu(lambda dtype=dtype: kernels.augment(images, params, shift, CROP, 255.0, dtype))
        nbytes = batch * 3 * CROP * CROP * (1 + dtype.itemsize)
        gbs = nbytes / (ms[0] * 1e-3) / 1e9
        out[f"kernel_{str(dtype)[6:]}"] = dict(ms=[round(v, 4) for v in ms], minimal_bytes=nbytes,
                                               gbs=round(gbs, 1), of_copy=round(gbs / copy["gbs"], 3),
                                               images_per_s=round(batch / (ms[0] * 1e-3), 1))
    return out


def sass_cost(batch: int) -> list[dict] | str:
    """The kernel's static cost for sm_90a (no GPU needed): compiled as the JIT would, read from SASS."""
    try:
        from bench.tools import sass_cost as sc
    except Exception as e:  # noqa: BLE001 - optional part of the report
        return f"not measured: {type(e).__name__}: {e}"
    from kernels._common import recording
    rows = []
    for dtype in (torch.float32, torch.bfloat16):
        for cl in (False, True):
            images = torch.empty((batch, 3, SIZE, SIZE), dtype=torch.uint8)
            params, shift = torch.zeros(batch, 4, dtype=torch.int32), torch.zeros(batch, 3)
            launches = []
            with recording(launches.append):
                kernels.augment(images, params, shift, CROP, 255.0, dtype, cl)
            [launch] = launches
            try:
                compiled = sc.compile_launch(launch, 90)
            except Exception as e:  # noqa: BLE001
                return f"not measured: {type(e).__name__}: {str(e)[:200]}"
            a = sc.analyse_launch(launch, compiled)
            instructions = a["thread_instructions_per_program"] * launch.grid[0]
            nbytes = batch * 3 * CROP * CROP * (1 + dtype.itemsize)
            rows.append(dict(dtype=str(dtype)[6:], layout="channels_last" if cl else "nchw",
                             registers=compiled["registers"], spill_bytes=compiled["spill_bytes"],
                             instructions_per_byte=round(instructions / nbytes, 2),
                             instructions_per_element=round(instructions / (batch * 3 * CROP * CROP), 1),
                             loads=a["loads_per_program"], stores=a["stores_per_program"]))
    return rows


# ------------------------------------------------------------------------------------------- report

def markdown(r: dict) -> str:
    e, c = r["env"], r["cpu"]
    lines = [f"# Data path: images/s ({e['device']}, {e['datetime_utc']})", "",
             f"Commit {e['git_commit']}, torch {e['torch']}, torchvision {r['torchvision']}, Pillow "
             f"{r['pillow']}; load average at start {r['load_average_start']}, at end "
             f"{r['load_average_end']} "
             f"({os.cpu_count()} cores). Set: {r['set']['train_images']} generated photograph-like JPEGs, "
             f"{r['set']['size']}, quality 90, mean {r['set']['mean_kb']} KB.", "",
             "| path | images/s | note |", "|---|---:|---|",
             f"| train.prepare (256x256, quality 90) | {r['prepare']['images_per_s']} | all "
             f"{r['prepare']['workers']} processes together |"]
    names = {"pil_train_full_size": "CPU loader, full-size JPEGs (decode + resize + crop/flip/PCA)",
             "pil_train_prepared": "CPU loader, prepared 256x256 JPEGs",
             "pil_decode_full_size": "PIL decode alone, full-size", "pil_decode_prepared":
             "PIL decode alone, prepared"}
    for k, v in c.items():
        lines.append(f"| {names[k]} | {v['images_per_s']} | per core (one process) |")
    ratio = c["pil_train_prepared"]["images_per_s"] / c["pil_train_full_size"]["images_per_s"]
    g = r["gpu"]
    if isinstance(g, str):
        lines.append(f"| GPU loader (decode_jpeg on the GPU + kernels.augment) | - | {g} |")
    else:
        for k, v in g.items():
            if k.startswith("decode_augment"):
                lines.append(f"| GPU {k.replace('_', ' ')} | {v['images_per_s']} | batch {v['batch']} |")
        for k in ("kernel_float32", "kernel_bfloat16"):
            v = g[k]
            lines.append(f"| the augment kernel alone, {k[7:]} out | {v['images_per_s']} | {v['gbs']} GB/s = "
                         f"{100 * v['of_copy']:.0f}% of copy ({g['copy_bandwidth_gbs']} GB/s) |")
    t = r["train_step"]
    lines.append(f"| training step, paper's AlexNet, fused ops | {t['images_per_s']} | batch {t['batch']}, "
                 f"{t['precision']}, {r['env']['device']} |")
    lines += ["", f"Prepared data against full-size JPEGs, CPU loader per core: **{ratio:.2f}x** "
                  "(target 2.5x).", ""]
    if isinstance(r["sass"], list):
        lines += ["Static cost of `kernels.augment` (sm_90a SASS, batch 256, 256x256 -> 227x227, CHW uint8 "
                  "in; budget 6 thread-instructions per minimal byte):", "",
                  "| out | layout | registers | spills | instr/element | instr/byte |",
                  "|---|---|---:|---:|---:|---:|"]
        for s in r["sass"]:
            lines.append(f"| {s['dtype']} | {s['layout']} | {s['registers']} | {s['spill_bytes']} | "
                         f"{s['instructions_per_element']} | {s['instructions_per_byte']} |")
    else:
        lines.append(f"Static cost: {r['sass']}")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=96, help="generated training images (96)")
    p.add_argument("--seconds", type=float, default=4.0, help="minimum seconds per CPU measurement (4)")
    p.add_argument("--batch", type=int, default=256, help="GPU batch (256)")
    p.add_argument("--no-sass", action="store_true", help="skip the static cost (SASS) of the kernel")
    p.add_argument("--out", default=str(REPO / "bench" / "results"), help="results folder")
    args = p.parse_args(argv)
    import PIL
    import torchvision
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    load_start = [round(v, 2) for v in os.getloadavg()]
    env = env_info(device)
    torch.set_num_threads(1)
    tmp = tempfile.mkdtemp(prefix="data_path_")
    try:
        src, dst = os.path.join(tmp, "src"), os.path.join(tmp, "prepared")
        t0 = time.perf_counter()
        make_set(src, args.images, processes=os.cpu_count() or 1)
        _, full, _ = data.scan_image_folders(src)
        full = [f for f, _ in full]
        print(f"generated {len(full)} images in {time.perf_counter() - t0:.1f}s", flush=True)
        workers = os.cpu_count() or 1
        t0 = time.perf_counter()
        manifest = prepare.prepare(src, dst, workers=workers, progress=False, log=lambda m: None)
        seconds = time.perf_counter() - t0
        n_all = manifest["counts"]["train"] + manifest["counts"]["val"]
        _, prep, _ = data.scan_image_folders(dst)
        prep = [f for f, _ in prep]
        pre = data.Preprocess(SIZE, CROP, tuple(manifest["statistics"]["mean"]), data.IMAGENET_EIGVAL,
                              data.IMAGENET_EIGVEC, 0.1, 255.0)
        result = dict(env=env, torchvision=torchvision.__version__, pillow=PIL.__version__,
                      load_average_start=load_start,
                      set=dict(train_images=len(full), size="500x375",
                               mean_kb=round(np.mean([os.path.getsize(f) for f in full]) / 1e3, 1)),
                      prepare=dict(images=n_all, workers=workers, seconds=round(seconds, 2),
                                   images_per_s=round(n_all / seconds, 1)))
        print(f"train.prepare: {result['prepare']['images_per_s']} images/s on {workers} processes",
              flush=True)
        result["cpu"] = cpu_paths(full, prep, pre, args.seconds)
        for k, v in result["cpu"].items():
            print(f"{k}: {v['images_per_s']} images/s per core", flush=True)
        if device.type == "cuda":
            result["gpu"] = gpu_paths(prep, full, pre, args.batch)
            result["train_step"] = train_step(device, 128, 10, "bf16")
        else:
            result["gpu"] = "needs a CUDA GPU (none here): not measured"
            print("GPU loader: needs a CUDA GPU (none here): not measured", flush=True)
            torch.set_num_threads(os.cpu_count() or 1)
            result["train_step"] = train_step(device, 16, 2, "fp32")
        print(f"training step: {result['train_step']['images_per_s']} images/s", flush=True)
        result["sass"] = "skipped (--no-sass)" if args.no_sass else sass_cost(args.batch)
        result["load_average_end"] = [round(v, 2) for v in os.getloadavg()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"data_path_{device_slug(device)}_{env['date']}")
    with open(stem + ".json", "w") as f:
        json.dump(result, f, indent=1, default=str)
    text = markdown(result)
    with open(stem + ".md", "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
