"""Train AlexNet with the paper's recipe (Krizhevsky, Sutskever & Hinton, 2012).

    python -m train.run                        # built-in dataset, small preset, ~2 minutes on 2 CPU cores
    python -m train.run --gpus 2               # the same, the two towers in two processes (CPU: over gloo)
    python -m train.run --data /imagenet       # ImageFolder tree with train/ and val/: the paper's network
    python -m train.run --data /imagenet --gpus 2 --precision bf16      # the paper's two-GPU setup
    torchrun --nproc-per-node 8 -m train.run --data /imagenet --gpus 2  # 4 data-parallel x 2 towers
    python -m train.run --resume runs/20261125-201500                   # continue exactly where it stopped
    python -m train.run --evaluate runs/20261125-201500/best.pt         # centre-crop and 10-crop error

With no --data, the run uses a built-in 10-class dataset of shapes and textures (disc, square, triangle,
ring, cross, star, stripes, checker, dots, crescent) drawn at random places, sizes, angles and colours on
random gradients with clutter, generated once as JPEG files (500 train + 50 val per class) under
$ALEXNET_DATA_CACHE or ~/.cache/alexnet-triton, and read through the same ImageFolder code as ImageNet.
Its preset scales the network down so that it learns in about two minutes on 2 CPU cores: 112x112 images,
99x99 crops, every layer at a quarter of the paper's width, Kaiming initialisation (the paper's N(0, 0.01)
stays at chance loss at this size). Everything else is the paper's: the layers, ReLU + LRN, overlapping
pooling, dropout, the tower split, SGD with momentum and weight decay, crops, flips, PCA colour noise and
10-crop testing. With --data the defaults are the paper's: 256 -> 227 crops, full width, N(0, 0.01)
weights with biases 1 in conv2/4/5 and fc6/7, batch 128, 90 epochs (a GPU run has not been timed yet; on
ImageNet the JPEG decoding, --workers, is likely to set the pace).

Every flag's default is the paper's value unless the help says otherwise.
"""

from __future__ import annotations

if __name__ == "__main__":   # a signal while torch loads (seconds): exit quietly, with the signal's code
    import os as _os
    import signal as _signal

    for _s in (_signal.SIGINT, _signal.SIGTERM):
        if _signal.getsignal(_s) is not _signal.SIG_IGN:
            _signal.signal(_s, lambda signum, frame: _os._exit(128 + signum))

import argparse  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from alexnet.launch import LaunchError, LaunchInterrupted  # noqa: E402
from alexnet.model import AlexNet, AlexNetConfig  # noqa: E402
from alexnet.parallel import init_distributed, launch, parallelize  # noqa: E402
from train import checkpoint, progress, report  # noqa: E402
from train.data import (  # noqa: E402
    IMAGENET_EIGVAL,
    IMAGENET_EIGVEC,
    IMAGENET_MEAN,
    DataError,
    EpochSampler,
    Images,
    Preprocess,
    collate,
    default_cache_dir,
    limit_samples,
    make_builtin_dataset,
    scan_image_folders,
    train_statistics,
)
from train.engine import (  # noqa: E402
    BadImage,
    Diverged,
    DropOnPlateau,
    PaperSGD,
    StopFlag,
    all_sum,
    evaluate,
    train_one_epoch,
)

# Defaults that depend on the data: the built-in preset, and the paper's network for --data.
PRESETS = {
    "builtin": dict(image_size=99, resize=112, width=0.25, init="kaiming", epochs=9, batch_size=32, lr=0.01,
                    input_scale=4.0, patience=2, workers=1),
    "paper": dict(image_size=227, resize=256, width=1.0, init="paper", epochs=90, batch_size=128, lr=0.01,
                  input_scale=255.0, patience=3, workers=min(8, os.cpu_count() or 1)),
}
# Defaults for everything else: the paper's values.
DEFAULTS = dict(
    data=None, cache_dir=None, out=None, resume=None, evaluate=None,
    gpus=1, ops="fused", precision="fp32", seed=0,
    momentum=0.9, weight_decay=5e-4, lr_drops=3, optimizer="paper", dropout=0.5,
    mean="imagenet", pca="imagenet", pca_std=0.1, ten_crop="final",
    max_steps=None, max_steps_per_epoch=None, train_limit=None, val_limit=None,
    skip_bad_images=False, log_every=0, progress=True, compile=False, channels_last=False,
    lr_on_resume=None,   # --lr given with --resume: the learning rate from the resumed step on
)


class Parser(argparse.ArgumentParser):
    def error(self, message):   # one line, exit code 2, like every other bad input
        print(f"train.run: error: {message}", file=sys.stderr)
        sys.exit(2)


def parse_args(argv=None) -> dict:
    """The flags the user gave, and only those (argparse.SUPPRESS): presets and checkpoints fill the rest."""
    b, q = PRESETS["builtin"], PRESETS["paper"]
    p = Parser(prog="python -m train.run", description=__doc__.split("\n\n")[0],
               argument_default=argparse.SUPPRESS, formatter_class=argparse.RawDescriptionHelpFormatter,
               epilog=f"built-in preset (no --data): {preset_text(b)}\n"
                      f"with --data (the paper): {preset_text(q)}"
                      "\n\n" + __doc__.split("\n\n", 1)[1])
    g = p.add_argument_group("data")
    g.add_argument("--data", help="ImageFolder tree with train/<class>/ and val/<class>/ (default: the "
                                  "built-in set)")
    g.add_argument("--cache-dir", help="where the built-in set is generated (default: $ALEXNET_DATA_CACHE "
                                       "or ~/.cache/alexnet-triton)")
    g.add_argument("--resize", type=int, help=f"shorter side, then central square crop ({q['resize']}; "
                                              f"built-in {b['resize']})")
    g.add_argument("--image-size", type=int, help=f"random training crop and test crop, the network's input "
                                                  f"({q['image_size']}; built-in {b['image_size']})")
    g.add_argument("--mean", choices=["imagenet", "train"],
                   help="per-channel mean to subtract: ImageNet's, or from 500 training images (imagenet)")
    g.add_argument("--pca", choices=["imagenet", "train", "none"],
                   help="eigenvalues and eigenvectors of the PCA colour noise (imagenet)")
    g.add_argument("--pca-std", type=float, help="sigma of the PCA colour noise (0.1)")
    g.add_argument("--input-scale", type=float, help="input = (pixel - mean) * scale, pixels on [0, 1] "
                                                     f"({q['input_scale']:g}: raw pixel values, the paper's; "
                                                     f"built-in {b['input_scale']:g})")
    g.add_argument("--train-limit", type=int, help="use only this many training images (a fixed subset)")
    g.add_argument("--val-limit", type=int, help="use only this many validation images (a fixed subset)")
    g.add_argument("--workers", type=int, help=f"DataLoader worker processes per process ({q['workers']}; "
                                               f"built-in {b['workers']})")
    g.add_argument("--skip-bad-images", action="store_true",
                   help="skip unreadable or corrupt images (each one logged) instead of stopping")
    g.add_argument("--loader", choices=["gpu", "cpu"],
                   help="gpu: workers only read file bytes, the device decodes them (nvJPEG on CUDA) and "
                        "one Triton kernel crops, flips, adds the colour noise and normalises "
                        "(train/gpu_loader.py); cpu: PIL in the workers. The same batches (default: gpu on "
                        "CUDA, else cpu)")
    g = p.add_argument_group("model")
    g.add_argument("--width", type=float, help=f"multiplies every layer's channels and units "
                                               f"({q['width']}; built-in {b['width']})")
    g.add_argument("--init", choices=["paper", "kaiming"],
                   help="paper: N(0, 0.01) weights, biases 1 in conv2/4/5 and fc6/7, else 0; kaiming: "
                        f"Kaiming-normal weights, zero biases ({q['init']}; built-in {b['init']})")
    g.add_argument("--dropout", type=float, help="dropout probability in fc6 and fc7 (0.5)")
    g.add_argument("--ops", choices=["fused", "eager"], help="the fused Triton kernels, or PyTorch's own ops "
                                                             "(fused; on CPU tensors both are PyTorch's)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--epochs", type=int, help=f"number of epochs ({q['epochs']}; built-in {b['epochs']})")
    g.add_argument("--batch-size", type=int, help=f"images per step and data rank ({q['batch_size']}; "
                                                  f"built-in {b['batch_size']})")
    g.add_argument("--lr", type=float, help=f"initial learning rate ({q['lr']}; built-in {b['lr']}); with "
                                            "--resume, the learning rate from there on")
    g.add_argument("--momentum", type=float, help="SGD momentum (0.9)")
    g.add_argument("--weight-decay", type=float, help="weight decay (5e-4)")
    g.add_argument("--optimizer", choices=["paper", "torch"],
                   help="paper: v = 0.9 v - wd lr w - lr g, w += v; torch: torch.optim.SGD, which differs "
                        "only when the learning rate drops (paper)")
    g.add_argument("--patience", type=int, help=f"epochs without a better val top-1 error before the lr is "
                                                f"divided by 10 ({q['patience']}; built-in {b['patience']})")
    g.add_argument("--lr-drops", type=int, help="divide the lr at most this many times (3)")
    g.add_argument("--max-steps", type=int, help="stop after this many steps in all, saving a checkpoint")
    g.add_argument("--max-steps-per-epoch", type=int, help="cut every epoch short after this many steps")
    g.add_argument("--seed", type=int, help="fixes initialisation, data order, augmentation and dropout (0)")
    g = p.add_argument_group("devices")
    g.add_argument("--gpus", type=int, choices=[1, 2], help="2: the two towers on two devices, one process "
                                                            "each; without CUDA, two CPU processes (1)")
    g.add_argument("--precision", choices=["fp32", "bf16", "fp16"], help="autocast on CUDA (fp32)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (Inductor), with either "
                                                          "--ops; the first steps compile (off)")
    g.add_argument("--channels-last", action="store_true",
                   help="weights, and so activations, in channels_last memory format (off)")
    g = p.add_argument_group("run")
    g.add_argument("--out", help="run folder (default: runs/<timestamp>, or the resumed run's folder)")
    g.add_argument("--resume", help="checkpoint or run folder to continue exactly from")
    g.add_argument("--evaluate", help="checkpoint or run folder: report its top-1/top-5 error, and exit")
    g.add_argument("--ten-crop", choices=["final", "every", "off"],
                   help="when to also measure the 10-crop error: after the last epoch, every epoch, never "
                        "(final)")
    g.add_argument("--log-every", type=int, help="also print the loss every N steps (0: per epoch only)")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="no progress bar (without a terminal: no progress lines)")
    return vars(p.parse_args(argv))


def preset_text(p: dict) -> str:
    return (f"{p['resize']}x{p['resize']} images, {p['image_size']}x{p['image_size']} crops, "
            f"width {p['width']}, {p['init']} init, batch {p['batch_size']}, lr {p['lr']}, "
            f"{p['epochs']} epochs, lr patience {p['patience']}, input scale {p['input_scale']:g}")


def resolve_config(given: dict) -> tuple[dict, dict | None]:
    """The run's config: preset, then the resumed/evaluated checkpoint's config, then the flags given."""
    ckpt = None
    for key in ("resume", "evaluate"):
        if given.get(key):
            path = checkpoint.resolve(given[key])
            if not os.path.isfile(path):
                raise DataError(f"no checkpoint at {given[key]}")
            ckpt = checkpoint.check(checkpoint.load(path), path)
    given = dict(given)
    if ckpt is not None:
        cfg = dict(ckpt["config"])
        for key in ("resume", "evaluate", "out", "max_steps", "lr_on_resume"):   # this run's own
            cfg[key] = DEFAULTS[key]
        for key in ("width", "image_size"):     # the checkpoint's network
            flag = f"--{key.replace('_', '-')}"
            if key in given and given[key] != cfg[key]:
                raise DataError(f"{flag} {given[key]:g} differs from the checkpoint's {cfg[key]:g}: its "
                                f"network can't change (leave {flag} out)")
        if given.get("resume") and "lr" in given:   # the saved lr schedule goes on from the given rate
            given["lr_on_resume"] = given.pop("lr")
            _check(given["lr_on_resume"] > 0, "--lr must be positive", given["lr_on_resume"])
    else:
        cfg = DEFAULTS | PRESETS["paper" if given.get("data") else "builtin"]
    cfg |= given
    for key in ("batch_size", "lr", "epochs", "image_size", "resize", "width", "input_scale"):
        _check(cfg[key] is not None and cfg[key] > 0, f"--{key.replace('_', '-')} must be positive", cfg[key])
    for key in ("train_limit", "val_limit", "max_steps", "max_steps_per_epoch"):
        _check(cfg[key] is None or cfg[key] > 0, f"--{key.replace('_', '-')} must be positive", cfg[key])
    for key in ("weight_decay", "pca_std", "workers", "log_every", "lr_drops"):
        _check(cfg[key] >= 0, f"--{key.replace('_', '-')} must not be negative", cfg[key])
    _check(cfg["patience"] >= 1, "--patience must be at least 1", cfg["patience"])
    _check(0 <= cfg["momentum"] < 1, "--momentum must be in [0, 1)", cfg["momentum"])
    if cfg["image_size"] > cfg["resize"]:
        raise DataError(f"--image-size {cfg['image_size']} is larger than --resize {cfg['resize']}")
    _check(0 <= cfg["dropout"] < 1, "--dropout must be in [0, 1)", cfg["dropout"])
    try:        # the network's own limits: the smallest input, at least one channel per layer
        AlexNetConfig(num_classes=2, image_size=cfg["image_size"], width=cfg["width"], dropout=cfg["dropout"],
                      init=cfg["init"])
    except ValueError as e:
        raise DataError(f"--image-size {cfg['image_size']} / --width {cfg['width']:g}: {e}") from None
    under_torchrun = "WORLD_SIZE" in os.environ
    if torch.cuda.is_available() and not under_torchrun and cfg["gpus"] > torch.cuda.device_count():
        raise DataError(f"--gpus {cfg['gpus']} but only {torch.cuda.device_count()} CUDA device(s) available")
    if cfg["precision"] != "fp32" and not torch.cuda.is_available():
        raise DataError(f"--precision {cfg['precision']} needs a CUDA GPU (autocast on GPU); on CPU use fp32")
    return cfg, ckpt


def _check(ok: bool, message: str, value) -> None:
    """Flags: ``ok`` must hold and a number must be finite (nan and inf pass no comparison test alone)."""
    if not ok or (isinstance(value, float) and not math.isfinite(value)):
        raise DataError(f"{message}, got {value}")


def preset_line(cfg: dict) -> str:
    if cfg["data"]:
        what = f"data {cfg['data']}"
    else:
        what = ("built-in shapes dataset (10 classes) with a preset scaled down from the paper's 227x227, "
                "width 1.0, N(0, 0.01)-init network (that init stays at chance at this size)")
    return (f"{what}: {preset_text(cfg)}, ops {cfg['ops']}, {cfg['gpus']} device(s), {cfg['precision']}, "
            f"seed {cfg['seed']}" + ", torch.compile" * bool(cfg.get("compile"))
            + ", channels_last" * bool(cfg.get("channels_last")))


def prepare_data(cfg: dict, log) -> tuple[list, list, list]:
    """Generate the built-in set if needed, check the folders, and list (classes, train, val) samples."""
    if not cfg["data"]:
        t0 = time.perf_counter()
        root, made = make_builtin_dataset(cfg["cache_dir"] or default_cache_dir())
        if made:
            log(f"generated the built-in dataset in {root} ({time.perf_counter() - t0:.1f}s)")
        cfg["data_root"] = root
    else:
        cfg["data_root"] = os.path.abspath(cfg["data"])
    classes, train, val = scan_image_folders(cfg["data_root"])
    return classes, limit_samples(train, cfg["train_limit"]), limit_samples(val, cfg["val_limit"])


def make_loader(samples, transform, cfg, ctx, epoch: int, shuffle: bool, batch_size: int, skip: int = 0):
    sampler = EpochSampler(len(samples), cfg["seed"], epoch, shuffle, ctx.dp_rank, ctx.dp_size, skip)
    gpu = (cfg.get("loader") or ("gpu" if ctx.device.type == "cuda" else "cpu")) == "gpu"
    if gpu:   # the workers read bytes; decoding and augmentation run on the device
        from train import gpu_loader
    loader = torch.utils.data.DataLoader(
        gpu_loader.JpegFiles(samples) if gpu else Images(samples, transform), batch_size=batch_size,
        sampler=sampler, num_workers=cfg["workers"], collate_fn=gpu_loader.collate_files if gpu else collate,
        pin_memory=ctx.device.type == "cuda", worker_init_fn=_ignore_sigint,
        # fork, also inside the launcher's spawned ranks: a worker starts in milliseconds, not seconds
        multiprocessing_context="fork" if cfg["workers"] and "fork" in mp.get_all_start_methods() else None)
    return gpu_loader.GpuBatches(loader, transform, ctx.device) if gpu else loader


def _ignore_sigint(worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # Ctrl-C is for the trainer, which stops at a step boundary


def worker(cfg: dict, classes: list, train_samples: list, val_samples: list) -> str:
    """One process's run: everything from building the model to the final summary. Returns its status."""
    ctx = init_distributed(tp_size=cfg["gpus"])
    if ctx.device.type == "cpu" and ctx.world_size > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world_size))
    log = progress.write if ctx.is_main else (lambda msg: None)   # above the bar, or a flushed line
    run_dir = cfg["out"]

    # data: the paper's preprocessing, with the mean and PCA from ImageNet or from the training set
    mean, eigval, eigvec = IMAGENET_MEAN, IMAGENET_EIGVAL, IMAGENET_EIGVEC
    if cfg["mean"] == "train" or cfg["pca"] == "train":
        t_mean, t_eigval, t_eigvec = train_statistics(cfg["data_root"], train_samples, cfg["resize"])
        mean = t_mean if cfg["mean"] == "train" else mean
        eigval, eigvec = (t_eigval, t_eigvec) if cfg["pca"] == "train" else (eigval, eigvec)
    pre = Preprocess(cfg["resize"], cfg["image_size"], tuple(mean), tuple(eigval), tuple(eigvec),
                     0.0 if cfg["pca"] == "none" else cfg["pca_std"], cfg["input_scale"])
    per_rank = math.ceil(len(train_samples) / ctx.dp_size)
    epoch_steps = math.ceil(per_rank / cfg["batch_size"])
    if cfg["max_steps_per_epoch"]:
        epoch_steps = min(epoch_steps, cfg["max_steps_per_epoch"])

    # model: the same seed gives the same initial weights on every rank and device count
    torch.manual_seed(cfg["seed"])
    model_cfg = AlexNetConfig(num_classes=len(classes), image_size=cfg["image_size"], width=cfg["width"],
                              dropout=cfg["dropout"], init=cfg["init"])
    model = AlexNet(model_cfg, ops=cfg["ops"]).to(ctx.device)
    if cfg.get("channels_last"):  # the convolutions' outputs follow their weights' layout
        model = model.to(memory_format=torch.channels_last)
    module = parallelize(model, ctx)
    if cfg.get("compile"):
        module.compile()  # in place: the state dict keeps its keys, checkpoints load either way
    opt_cls = PaperSGD if cfg["optimizer"] == "paper" else torch.optim.SGD
    optimizer = opt_cls(module.parameters(), lr=cfg["lr"], momentum=cfg["momentum"],
                        weight_decay=cfg["weight_decay"])
    scheduler = DropOnPlateau(optimizer, cfg["patience"], cfg["lr_drops"])
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=cfg["precision"] == "fp16")
    state = dict(epoch=0, step=0, global_step=0, loss_sum=0.0, images=0, seconds=0.0, skipped=[])
    history: list[dict] = []
    ckpt = None
    if cfg["resume"] or cfg["evaluate"]:
        ckpt = checkpoint.load(cfg["resume"] or cfg["evaluate"])
        if ckpt["classes"] != classes:
            raise DataError(f"the checkpoint's classes ({len(ckpt['classes'])}) differ from the data's "
                            f"({len(classes)})")
        try:
            checkpoint.restore(ckpt, module, optimizer, scheduler, scaler, ctx)
        except (RuntimeError, ValueError, KeyError) as e:
            raise DataError(f"the checkpoint does not fit this model: {str(e).splitlines()[0]}") from None
        state, history = dict(ckpt["state"]), list(ckpt["history"])
        if cfg["lr_on_resume"] is not None:
            log(f"learning rate {optimizer.param_groups[0]['lr']:g} -> {cfg['lr_on_resume']:g} (--lr)")
            for group in optimizer.param_groups:
                group["lr"] = cfg["lr_on_resume"]

    if cfg["evaluate"]:
        loader = make_loader(val_samples, pre.ten_crop, cfg, ctx, 0, False, max(1, cfg["batch_size"] // 5))
        try:
            res = evaluate(module, loader, ctx, cfg, True, state["skipped"], log)
        except BadImage as e:
            raise DataError(f"unreadable image: {e.path} (pass --skip-bad-images to skip such files)") \
                from None
        log(f"evaluated {cfg['evaluate']} on {res['val_images']} images of {cfg['data_root']}/val: "
            + report.errors_text(res))
        return "done", 0

    last, best = os.path.join(run_dir, "last.pt"), os.path.join(run_dir, "best.pt")
    if ctx.is_main:   # (the folder is locked for this process: _claim)
        resume_file = checkpoint.resolve(cfg["resume"]) if cfg["resume"] else None
        if resume_file and _at_best_epoch(state, history) and not _holds(best, state):
            report.copy_atomic(resume_file, best)   # a kill between saving last.pt and best.pt: redo best.pt
        report.write_config(run_dir, cfg)
        report.write_metrics(run_dir, history)  # a resumed run drops rows written after its checkpoint
    save = lambda path: checkpoint.save(path, module, optimizer, scheduler, scaler, state, history, cfg, ctx,
                                        classes)
    if ckpt is not None:
        log(f"resumed from {cfg['resume']} at epoch {state['epoch'] + 1}, step {state['step']}/{epoch_steps}")
    log(f"training on {len(train_samples)} images, validating on {len(val_samples)} ({len(classes)} "
        f"classes), {epoch_steps} steps per epoch, run folder {run_dir}")

    status, t_start = "done", time.perf_counter()
    with StopFlag() as stop:
        while state["epoch"] < cfg["epochs"]:
            t_epoch, seconds_before = time.perf_counter(), state["seconds"]   # (a resumed epoch ran before)
            lr = optimizer.param_groups[0]["lr"]
            loader = make_loader(train_samples, pre.train, cfg, ctx, state["epoch"], True, cfg["batch_size"],
                                 skip=state["step"] * cfg["batch_size"])
            try:
                status = train_one_epoch(module, loader, optimizer, scaler, state, cfg, ctx, stop,
                                         epoch_steps, log)
            except BadImage as e:
                raise _bad_image(e, save, last, ctx, run_dir) from None
            except Diverged as e:
                raise _diverged(e, last) from None
            if status != "done":
                break
            # evaluate: the centre crop every epoch, the 10 crops (5x the time) when asked
            final = state["epoch"] + 1 == cfg["epochs"]
            ten = cfg["ten_crop"] == "every" or (cfg["ten_crop"] == "final" and final)
            if ten:
                val_loader = make_loader(val_samples, pre.ten_crop, cfg, ctx, 0, False,
                                         max(1, cfg["batch_size"] // 5))
            else:
                val_loader = make_loader(val_samples, pre.centre, cfg, ctx, 0, False, cfg["batch_size"])
            try:
                res = evaluate(module, val_loader, ctx, cfg, ten, state["skipped"], log, stop)
            except BadImage as e:   # the epoch's training is kept: a resume evaluates it again
                raise _bad_image(e, save, last, ctx, run_dir) from None
            if res is None:         # stopped during the evaluation: the same
                status = "stopped"
                break
            train_sums = all_sum([state["loss_sum"], state["images"]], ctx)
            row = dict(epoch=state["epoch"] + 1, train_loss=train_sums[0] / max(train_sums[1], 1),
                       val_top1_error=res["val_top1_error"], val_top5_error=res["val_top5_error"],
                       val_top1_error_10crop=res.get("val_top1_error_10crop"),
                       val_top5_error_10crop=res.get("val_top5_error_10crop"),
                       lr=lr, images_per_sec=train_sums[1] / ctx.tp_size / max(state["seconds"], 1e-9),
                       seconds=seconds_before + time.perf_counter() - t_epoch, step=state["global_step"])
            history.append(row)
            log(report.epoch_line(row))
            is_best = res["val_top1_error"] <= min(r["val_top1_error"] for r in history)
            if scheduler.step(res["val_top1_error"]):
                log(f"val top-1 error stopped improving: learning rate divided by 10, now "
                    f"{optimizer.param_groups[0]['lr']:.0e}")
            state.update(epoch=state["epoch"] + 1, step=0, loss_sum=0.0, images=0, seconds=0.0)
            try:
                save(last)
            except Diverged as e:
                raise _diverged(e, last) from None
            if ctx.is_main:   # (a kill before best.pt is replaced: the resume replaces it, see above)
                if is_best:
                    report.copy_atomic(last, best)
                report.write_metrics(run_dir, history)
                report.plot(run_dir, history)
            if stop.agreed(ctx):
                status = "stopped"
                break
        if status in ("stopped", "max_steps") and state["step"] > 0:
            save(last)
    if status == "stopped":
        log(f"interrupted: checkpoint saved at epoch {state['epoch'] + 1}, step {state['step']}; "
            f"continue with: python -m train.run --resume {run_dir}")
    elif status == "max_steps":
        log(f"stopped after --max-steps {cfg['max_steps']}: checkpoint {last}")
    if state["skipped"]:
        log(f"skipped {len(state['skipped'])} unreadable image(s)")
    if history and status == "done":
        log(report.summary_line(history, time.perf_counter() - t_start, run_dir))
    return status, 128 + stop.signum if status == "stopped" else 0


def _at_best_epoch(state: dict, history: list) -> bool:
    """Whether the weights of this state are those of the run's best epoch so far (what best.pt holds)."""
    return (state["step"] == 0 and bool(history) and history[-1]["epoch"] == state["epoch"]
            and history[-1]["val_top1_error"] <= min(r["val_top1_error"] for r in history))


def _holds(path: str, state: dict) -> bool:
    """Whether the checkpoint at ``path`` was saved at this state's step."""
    try:
        saved = checkpoint.load(path)["state"]   # (memory-mapped: the weights are not read)
        return (saved["epoch"], saved["step"], saved["global_step"]) == \
            (state["epoch"], state["step"], state["global_step"])
    except (DataError, LookupError, TypeError):  # missing, truncated, refused, not a checkpoint: not the one
        return False


def _bad_image(e: BadImage, save, last: str, ctx, run_dir: str) -> DataError:
    """Save what the run has (with data parallelism another rank may be elsewhere: keep the last save)."""
    kept = ""
    if ctx.dp_size == 1:
        save(last)
        kept = f"; --resume {run_dir} continues from before it"
    return DataError(f"unreadable image: {e.path} (pass --skip-bad-images to skip such files{kept})")


def _diverged(e: Diverged, last: str) -> DataError:
    kept = (f"{last} holds the last finite state" if os.path.exists(last) else "no checkpoint was saved")
    return DataError(f"{e}; {kept} (a lower --lr may help; nothing non-finite was saved)")


def _new_run(cfg: dict) -> bool:
    """Whether this run starts a run folder (rather than continuing the one its checkpoint is in)."""
    if not cfg["resume"]:
        return True
    folder = os.path.dirname(checkpoint.resolve(cfg["resume"]))
    return os.path.realpath(folder) != os.path.realpath(cfg["out"])


def _claim(cfg: dict) -> int | None:
    """Lock the run folder for this process if it writes it (the main process of a training run)."""
    if cfg["evaluate"] or os.environ.get("RANK", "0") != "0":
        return None
    return report.claim(cfg["out"], new=_new_run(cfg))


def _spawned(cfg: dict, classes: list, train_samples: list, val_samples: list) -> tuple[str, int]:
    """Entry of each launched process: its result or its DataError goes back to the launcher."""
    # tqdm's default lock is a named semaphore: a rank ended by a signal would leave it for the launcher's
    # resource tracker to report (lines after ours); only rank 0 writes, a thread lock is enough
    tqdm.set_lock(threading.RLock())
    _claim(cfg)     # held until this process ends
    return worker(cfg, classes, train_samples, val_samples)


def main(argv=None) -> int:
    try:
        given = parse_args(argv)
    except SystemExit as e:    # --help, or a flag argparse rejected (one line, exit code 2)
        return e.code
    show = print if os.environ.get("RANK", "0") == "0" else (lambda *a, **k: None)   # torchrun: rank 0 talks
    old = _signals_interrupt()
    try:
        cfg, ckpt = resolve_config(given)
        show(preset_line(cfg), flush=True)
        classes, train_samples, val_samples = prepare_data(cfg, show)
        if cfg["evaluate"] is None:
            cfg["out"] = cfg["out"] or (os.path.dirname(checkpoint.resolve(cfg["resume"])) if cfg["resume"]
                                        else new_run_dir())
            report.check_out(cfg["out"], new=_new_run(cfg))
        under_torchrun = "WORLD_SIZE" in os.environ
        if cfg["gpus"] == 1 or under_torchrun:
            lock = _claim(cfg)
            try:
                status, code = worker(cfg, classes, train_samples, val_samples)
            finally:
                if lock is not None:
                    os.close(lock)
        else:
            status, code = launch_towers(cfg, classes, train_samples, val_samples)
    except DataError as e:
        show(f"train.run: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:   # before training started, or a second Ctrl-C: nothing more to save
        show("train.run: interrupted", file=sys.stderr)
        return 128 + getattr(e, "signum", signal.SIGINT)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    return code


class Interrupted(KeyboardInterrupt):
    """SIGTERM outside the training loop: handled like Ctrl-C, with its own exit code (143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


def _signals_interrupt() -> dict:
    """Ctrl-C raises KeyboardInterrupt and SIGTERM ``Interrupted`` (the training loop catches both to stop
    at a step boundary and save). Returns the handlers to restore."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, _raise_interrupted)}
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        old[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
    return old


def launch_towers(cfg, classes, train_samples, val_samples) -> tuple[str, int]:
    """--gpus 2 outside torchrun: one process per tower, with the project's launcher. Ctrl-C and SIGTERM
    to this process reach the ranks as one SIGTERM (they stop at a step boundary and save); a second
    Ctrl-C ends them at once."""
    if not torch.cuda.is_available():
        print("no CUDA GPU: --gpus 2 runs the two towers as two CPU processes over gloo", flush=True)
    try:
        results = launch(_spawned, 2, args=(cfg, classes, train_samples, val_samples))
    except LaunchError as e:
        for f in e.failures:
            if isinstance(f.exception, DataError):   # a bad input a rank found: one line, as in one process
                raise DataError(str(f.exception)) from None
        raise          # anything else: the launcher's report with the failing rank's traceback
    except LaunchInterrupted as e:
        if e.results[0] is None:   # interrupted before the ranks could stop cleanly
            raise
        return e.results[0][0], 128 + e.signum
    return results[0]


def new_run_dir() -> str:
    base = os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    path, i = base, 1
    while os.path.exists(path):
        path, i = f"{base}-{i}", i + 1
    return path


if __name__ == "__main__":
    sys.exit(main())
