"""Checkpoints: one file that resumes a run exactly, on any number of devices.

A checkpoint holds the one-device AlexNet state dict (``full_state_dict``), the optimizer's velocity in
the same one-device layout, the learning-rate schedule, the position in the data (epoch, step in the
epoch, global step and the epoch's running sums), the metrics so far and the resolved config. No RNG
state is needed: data order, augmentation and dropout are all drawn from generators seeded by
(seed, epoch, index) and (seed, global step), see train/data.py and train/engine.py.

Files are written to a temporary name, synced, and moved into place with ``os.replace``, so a kill during
a save leaves the previous checkpoint whole; a failed write (a full disk) removes its temporary file and
raises ``DataError`` naming the cause. A model or velocity with a non-finite value is never saved
(``Diverged``).

A checkpoint is data, never code: it holds only tensors, numbers, strings, booleans, None, lists and dicts
(the config and history as plain types), and ``load`` reads it with ``torch.load(weights_only=True)``,
whose unpickler builds nothing else. A ``.pt`` that it refuses (a pickle that would call a function, such as
someone else's file with code in it) raises ``DataError`` naming the file and what it refers to, before
anything in it is run. The format has held only these types since its first version: no conversion is
needed for earlier checkpoints of this project, and none is offered for other programs' files.
"""

from __future__ import annotations

import os
import pickle
import re

import torch

from alexnet.parallel import full_state_dict, load_full_state_dict
from train import report
from train.data import DataError
from train.engine import Diverged, velocity_key

# What a checkpoint of train.run holds (a plain state dict, or another program's file, holds other keys).
KEYS = ("model", "velocity", "scheduler", "scaler", "state", "history", "config", "classes")


def resolve(path: str) -> str:
    """A checkpoint file, or a run folder (its ``last.pt``)."""
    return os.path.join(path, "last.pt") if os.path.isdir(path) else path


def _velocity_state_dict(module, optimizer, ctx) -> dict:
    """The optimizer's velocity in the one-device layout: swap each parameter's data for its velocity
    (zeros before the first step), gather like the weights, swap back. Collective: every rank calls it."""
    key = velocity_key(optimizer)
    params = list(module.parameters())
    saved = [p.data for p in params]
    try:
        for p in params:
            v = optimizer.state.get(p, {}).get(key)
            p.data = v if v is not None else torch.zeros_like(p)
        return full_state_dict(module, ctx)
    finally:
        for p, d in zip(params, saved):
            p.data = d


def _load_velocity(module, optimizer, velocity: dict, ctx) -> None:
    """Scatter one-device velocities onto this rank's parameters (call before loading the weights)."""
    key = velocity_key(optimizer)
    load_full_state_dict(module, velocity, ctx)
    for p in module.parameters():
        optimizer.state[p][key] = p.detach().clone()


def save(path: str, module, optimizer, scheduler, scaler, state: dict, history: list, cfg: dict, ctx,
         classes: list[str]) -> None:
    """Collective (every rank calls it); the main process writes ``path`` atomically."""
    model_sd = full_state_dict(module, ctx)
    velocity_sd = _velocity_state_dict(module, optimizer, ctx)
    for what, sd in (("weights", model_sd), ("momentum velocities", velocity_sd)):
        bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:   # every rank sees the same full tensors: they all raise
            raise Diverged(f"the {what} hold non-finite values ({bad[0]}) after step {state['global_step']}: "
                           f"training diverged")
    if not ctx.is_main:
        return
    ckpt = {
        "model": {k: v.cpu() for k, v in model_sd.items()},
        "velocity": {k: v.cpu() for k, v in velocity_sd.items()},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "state": {k: v for k, v in state.items()},
        "history": history,
        "config": cfg,
        "classes": classes,
    }
    report.write_atomic(path, lambda f: torch.save(ckpt, f))


def load(path: str):
    """The checkpoint at ``path`` (a file or a run folder), read as data only; else ``DataError``."""
    path = resolve(path)
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except pickle.UnpicklingError as e:   # weights_only refused it: it names a function or a class to build
        raise DataError(f"{path} is not loaded: {_refused_because(str(e))}, which a checkpoint of train.run "
                        f"never holds (read as data only: nothing in it was run)") from None
    except Exception as e:  # noqa: BLE001  (a missing, truncated or foreign file: torch raises many kinds)
        raise DataError(f"cannot read checkpoint {path}: {type(e).__name__}") from None


def _refused_because(message: str) -> str:
    """What torch's weights_only unpickler refused, from its (long, multi-line) message."""
    m = re.search(r"GLOBAL ([\w.]+)", message)
    if m:
        return f"it refers to {m[1]}"
    return "it holds objects other than tensors, numbers, strings, lists and dicts"


def check(ckpt, path: str) -> dict:
    """``ckpt`` if it is a checkpoint of train.run, else ``DataError``."""
    missing = [k for k in KEYS if k not in ckpt] if isinstance(ckpt, dict) else list(KEYS)
    if missing:
        what = "a plain state dict" if isinstance(ckpt, dict) and all(
            isinstance(v, torch.Tensor) for v in ckpt.values()) else "not a checkpoint of train.run"
        raise DataError(f"{path} is {what} (it has no {missing[0]!r}): --resume and --evaluate take the "
                        f"last.pt or best.pt of a run folder")
    return ckpt


def restore(ckpt: dict, module, optimizer, scheduler, scaler, ctx) -> None:
    _load_velocity(module, optimizer, ckpt["velocity"], ctx)
    load_full_state_dict(module, ckpt["model"], ctx)
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
