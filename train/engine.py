"""The training and evaluation loops, and the paper's SGD update.

Both loops work on one process's share: the batches of this data-parallel rank (both ranks of a tower
pair see the same batch), with the model already parallelized from outside. Counts are summed over
the processes at the end of each loop.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from train import progress
from train.data import DataError


class PaperSGD(torch.optim.Optimizer):
    """SGD with momentum and weight decay exactly as written in the paper (section 5):

        v <- momentum * v - weight_decay * lr * w - lr * grad
        w <- w + v

    ``torch.optim.SGD`` keeps v' = -v / lr instead, which is the same trajectory while the learning rate
    is constant; when the learning rate drops, torch's update shrinks the accumulated velocity at once,
    the paper's lets it decay over the next steps.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, m, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(m).add_(p, alpha=-wd * lr).add_(p.grad, alpha=-lr)
                p.add_(v)


def velocity_key(optimizer: torch.optim.Optimizer) -> str:
    return "velocity" if isinstance(optimizer, PaperSGD) else "momentum_buffer"


class StopFlag:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop after the current step; a second Ctrl-C stops now.
    With several processes, all of them agree on the step to stop at (an all-reduce per step).
    ``signum`` is the first signal received. A signal that arrives ignored (SIGINT in a launched rank:
    the launcher owns Ctrl-C and forwards it as SIGTERM) stays ignored."""

    def __init__(self):
        self.requested = False
        self.signum: int | None = None
        self._old = {}

    def _handler(self, signum, frame):
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = self.signum or signum
        self.requested = True

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            if signal.getsignal(s) is not signal.SIG_IGN:
                self._old[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)

    def agreed(self, ctx) -> bool:
        return any_rank([self.requested], ctx)[0]


def any_rank(flags: list[bool], ctx) -> list[bool]:
    """Each flag or'ed over all processes (one all-reduce)."""
    if ctx.world_size == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def autocast(ctx, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(ctx.device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def all_sum(values: list[float], ctx) -> list[float]:
    if ctx.world_size == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device if ctx.backend == "nccl" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


class Diverged(DataError):
    """A non-finite loss or non-finite weights: the run stops and saves nothing from then on."""


class BadImage(Exception):
    def __init__(self, path):
        super().__init__(path)
        self.path = path


def check_bad(bad: list[str], skip: bool, skipped: list[str], show) -> None:
    for path in bad:
        if not skip:
            raise BadImage(path)
        skipped.append(path)
        show(f"skipped unreadable image: {path}")


def train_one_epoch(module, loader, optimizer, scaler, state: dict, cfg: dict, ctx, stop: StopFlag,
                    epoch_steps: int, log) -> str:
    """Train until the epoch's ``epoch_steps`` are done, ``cfg['max_steps']`` is reached or a stop is asked.

    ``state`` carries the position (``step`` in the epoch, ``global_step``) and the epoch's running sums,
    and is updated after every step, so a checkpoint taken at any point resumes exactly.
    Returns "done", "max_steps" or "stopped".
    """
    if state["step"] >= epoch_steps:    # resumed after the epoch's last step (before its evaluation)
        return "done"
    module.train()
    bar = progress.bar(epoch_steps, f"epoch {state['epoch'] + 1}/{cfg['epochs']}", unit="step",
                       initial=state["step"], enabled=ctx.is_main and cfg["progress"], leave=False)
    t_last = time.perf_counter()
    status = "done"
    try:
        for x, y, bad in loader:
            check_bad(bad, cfg["skip_bad_images"], state["skipped"], log if ctx.is_main else lambda s: None)
            if x is None:               # every image of the batch was skipped: count the step, keep the data
                state["step"] += 1      # position right for a resume
                state["global_step"] += 1
                continue
            # Dropout and every other random draw in the step come from (seed, step): exact on resume.
            torch.manual_seed(cfg["seed"] * 1_000_003 + state["global_step"])
            x, y = x.to(ctx.device, non_blocking=True), y.to(ctx.device, non_blocking=True)
            with autocast(ctx, cfg["precision"]):
                loss = F.cross_entropy(module(x), y)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()

            loss_value = loss.item()
            # every process agrees on stopping and on divergence at the same step (one all-reduce)
            stop_now, diverged = any_rank([stop.requested, not math.isfinite(loss_value)], ctx)
            if diverged:
                raise Diverged(f"the loss is {loss_value if not math.isfinite(loss_value) else 'not finite'} "
                               f"at step {state['global_step'] + 1} (epoch {state['epoch'] + 1}, step "
                               f"{state['step'] + 1}/{epoch_steps}): training diverged")
            now = time.perf_counter()
            state["step"] += 1
            state["global_step"] += 1
            state["loss_sum"] += loss_value * len(y)
            state["images"] += len(y)
            state["seconds"] += now - t_last
            t_last = now
            if ctx.is_main:
                # the postfix before the update, so that a progress line (train/progress.py) shows this step's
                bar.set_postfix(loss=f"{loss_value:.4f}",
                                img_s=f"{state['images'] * ctx.dp_size / max(state['seconds'], 1e-9):.0f}")
                bar.update(1)
                if cfg["log_every"] and state["global_step"] % cfg["log_every"] == 0:
                    log(f"step {state['global_step']} (epoch {state['epoch'] + 1}, "
                        f"{state['step']}/{epoch_steps}) loss {loss_value:.6f}")
            if cfg["max_steps"] and state["global_step"] >= cfg["max_steps"]:
                status = "max_steps"
                break
            if state["step"] >= epoch_steps:
                break
            if stop_now:
                status = "stopped"
                break
    finally:
        bar.close()
    return status


@torch.no_grad()
def evaluate(module, loader, ctx, cfg, ten_crop: bool, skipped: list[str], log,
             stop: StopFlag | None = None) -> dict | None:
    """Top-1 / top-5 error. With ``ten_crop`` the loader gives (N, 10, 3, S, S): the softmax is averaged
    over the 10 crops, and crop 4 (the centre) also gives the centre-crop error. Returns None when
    ``stop`` was raised during the evaluation (checked per batch, without data parallelism: data ranks
    may hold different numbers of validation batches)."""
    module.eval()
    counts = [0.0] * 5   # images, centre top-1 correct, centre top-5 correct, 10-crop top-1, 10-crop top-5
    for x, y, bad in loader:
        if stop is not None and ctx.dp_size == 1 and stop.agreed(ctx):
            return None
        check_bad(bad, cfg["skip_bad_images"], skipped, log if ctx.is_main else lambda s: None)
        if x is None:
            continue
        x, y = x.to(ctx.device), y.to(ctx.device)
        n = len(y)
        with autocast(ctx, cfg["precision"]):
            logits = module(x.flatten(0, 1) if ten_crop else x).float()
        if ten_crop:
            logits = logits.view(n, 10, -1)
            probs = logits.softmax(-1).mean(1)
            counts[3] += _correct(probs, y, 1)
            counts[4] += _correct(probs, y, 5)
            logits = logits[:, 4]
        counts[0] += n
        counts[1] += _correct(logits, y, 1)
        counts[2] += _correct(logits, y, 5)
    counts = all_sum(counts, ctx)
    n = counts[0] / ctx.tp_size  # both ranks of a tower pair counted the same images
    counts = [c / ctx.tp_size for c in counts]
    if n == 0:
        raise DataError("no readable validation images")
    out = {"val_top1_error": 1 - counts[1] / n, "val_top5_error": 1 - counts[2] / n, "val_images": int(n)}
    if ten_crop:
        out |= {"val_top1_error_10crop": 1 - counts[3] / n, "val_top5_error_10crop": 1 - counts[4] / n}
    return out


def _correct(scores: torch.Tensor, y: torch.Tensor, k: int) -> float:
    k = min(k, scores.shape[-1])
    return (scores.topk(k, -1).indices == y[:, None]).any(-1).sum().item()


class DropOnPlateau:
    """Divide the learning rate by ``factor`` when the validation error has not improved for ``patience``
    epochs, at most ``max_drops`` times (the paper: by 10 when the error stopped improving, 3 times)."""

    def __init__(self, optimizer, patience: int, max_drops: int, factor: float = 10.0):
        self.optimizer, self.patience, self.max_drops, self.factor = optimizer, patience, max_drops, factor
        self.best, self.bad_epochs, self.drops = float("inf"), 0, 0

    def step(self, error: float) -> bool:
        """Record one epoch's validation error; return whether the learning rate was dropped."""
        if error < self.best:
            self.best, self.bad_epochs = error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs < self.patience or self.drops >= self.max_drops:
            return False
        for group in self.optimizer.param_groups:
            group["lr"] /= self.factor
        self.drops, self.bad_epochs = self.drops + 1, 0
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "drops": self.drops,
                "lrs": [g["lr"] for g in self.optimizer.param_groups]}

    def load_state_dict(self, sd: dict) -> None:
        self.best, self.bad_epochs, self.drops = sd["best"], sd["bad_epochs"], sd["drops"]
        for group, lr in zip(self.optimizer.param_groups, sd["lrs"]):
            group["lr"] = lr
