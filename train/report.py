"""What a run leaves behind: the run folder (its lock), metrics.jsonl, config.json, the curves as a PNG,
atomic file writes (also for checkpoints), and the log lines.

A run folder belongs to one run at a time: the process that writes it holds an exclusive ``flock`` on
its ``.lock`` file (released by the kernel however the process ends), and on taking it removes the
temporary files (``*.tmp``) that a killed run left. JSON files are strict JSON: a non-finite number is
written as null.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os

from train.data import DataError

LOCK = ".lock"
# A folder holding only these (metrics.jsonl empty) holds no results: a new run may use it.
EMPTY_RUN_FILES = (LOCK, "config.json", "metrics.jsonl")


class _Writer:
    """A file for ``torch.save`` whose writes are complete or raise: torch reports a failed write of a
    Python file as "unexpected pos", losing the OSError (ENOSPC, EFBIG, EIO), which this keeps."""

    def __init__(self, fd: int):
        self.fd, self.error = fd, None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as e:
            self.error = e
            raise
        return len(data)

    def flush(self) -> None:
        pass


def write_atomic(path: str, write) -> None:
    """``write(file)`` into ``path``.tmp, fsync, rename over ``path``. On any failure or interruption the
    temporary file is removed and ``path`` is untouched; a failed write raises ``DataError``."""
    tmp = f"{path}.tmp"
    writer = None
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            writer = _Writer(fd)
            write(writer)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        error = writer.error if writer is not None and writer.error is not None else e
        if isinstance(error, OSError):
            raise DataError(f"cannot write {path}: {error.strerror or error} (the previous "
                            f"{os.path.basename(path)}, if any, is unchanged)") from None
        raise


def copy_atomic(src: str, path: str) -> None:
    """``path`` becomes a copy of ``src``, as ``write_atomic`` writes (a copy, not a hard link: a later
    in-place write to one file must not change the other)."""
    def copy(f):
        with open(src, "rb") as s:
            while chunk := s.read(1 << 24):
                f.write(chunk)
    write_atomic(path, copy)


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _write_text(path: str, text: str) -> None:
    write_atomic(path, lambda f: f.write(text.encode()))


def write_metrics(run_dir: str, history: list[dict]) -> None:
    """Rewrite metrics.jsonl (one JSON object per epoch) from the full history, atomically."""
    _write_text(os.path.join(run_dir, "metrics.jsonl"),
                "".join(json.dumps(_json_safe(row), allow_nan=False) + "\n" for row in history))


def write_config(run_dir: str, cfg: dict) -> None:
    _write_text(os.path.join(run_dir, "config.json"),
                json.dumps(_json_safe(cfg), indent=2, sort_keys=True, allow_nan=False))


def holds_results(run_dir: str) -> list[str]:
    """The files in ``run_dir`` that a new run would overwrite or mix with (temporary files excepted)."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in sorted(os.listdir(run_dir)):
        if ".tmp" in name or name in (LOCK, "config.json"):
            continue
        if name == "metrics.jsonl" and os.path.getsize(os.path.join(run_dir, name)) == 0:
            continue
        found.append(name)
    return found


def check_out(out: str, new: bool) -> None:
    """A one-line ``DataError`` if ``out`` can't be this run's folder: a file, or for a new run a folder
    that holds another run's results."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise DataError(f"--out {out} is a file, not a folder")
    found = holds_results(out) if new else []
    if "last.pt" in found:
        raise DataError(f"{out} already holds a run: continue it with --resume {out} or choose another --out")
    if found:
        raise DataError(f"{out} is not empty (it holds {', '.join(found[:3])}): choose another --out")


def claim(run_dir: str, new: bool) -> int:
    """Create ``run_dir`` if needed and lock it for this process; return the lock's file descriptor (keep
    it open for the run). Raises ``DataError`` if another run holds it, or (``new``) if it holds results."""
    try:
        os.makedirs(run_dir, exist_ok=True)
        fd = os.open(os.path.join(run_dir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise DataError(f"cannot create the run folder {run_dir}: {e.strerror or e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        owner = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise DataError(f"{run_dir} is in use by another run (process {owner or '?'}): wait for it to end, "
                        f"or choose another --out") from None
    try:
        check_out(run_dir, new)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        for name in os.listdir(run_dir):     # what a killed run was writing: never a finished file
            path = os.path.join(run_dir, name)
            if ".tmp" in name and os.path.isfile(path):
                os.remove(path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def plot(run_dir: str, history: list[dict]) -> None:
    """curves.png: training loss, and validation top-1 / top-5 error (centre crop; 10-crop where measured)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [r["train_loss"] for r in history], marker="o")
    ax1.set(xlabel="epoch", ylabel="training loss (cross-entropy)", title="training loss")
    ax2.plot(epochs, [r["val_top1_error"] for r in history], marker="o", label="top-1 (centre crop)")
    ax2.plot(epochs, [r["val_top5_error"] for r in history], marker="o", label="top-5 (centre crop)")
    ten = [(r["epoch"], r["val_top1_error_10crop"], r["val_top5_error_10crop"]) for r in history
           if r.get("val_top1_error_10crop") is not None]
    if ten:
        ax2.plot([t[0] for t in ten], [t[1] for t in ten], "s", label="top-1 (10 crops)")
        ax2.plot([t[0] for t in ten], [t[2] for t in ten], "s", label="top-5 (10 crops)")
    ax2.set(xlabel="epoch", ylabel="validation error", title="validation error", ylim=(0, 1))
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        write_atomic(os.path.join(run_dir, "curves.png"), lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)


def epoch_line(row: dict) -> str:
    line = (f"epoch {row['epoch']:3d} | train loss {row['train_loss']:.4f} | val top-1 err "
            f"{row['val_top1_error']:.2%} top-5 err {row['val_top5_error']:.2%}")
    if row.get("val_top1_error_10crop") is not None:
        line += (f" | 10-crop top-1 {row['val_top1_error_10crop']:.2%} "
                 f"top-5 {row['val_top5_error_10crop']:.2%}")
    return line + f" | lr {row['lr']:.0e} | {row['images_per_sec']:.0f} img/s | {row['seconds']:.1f}s"


def errors_text(res: dict) -> str:
    text = (f"centre crop top-1 error {res['val_top1_error']:.2%}, top-5 error {res['val_top5_error']:.2%}")
    if res.get("val_top1_error_10crop") is not None:
        text += (f"; 10 crops top-1 error {res['val_top1_error_10crop']:.2%}, "
                 f"top-5 error {res['val_top5_error_10crop']:.2%}")
    return text


def summary_line(history: list[dict], seconds: float, run_dir: str) -> str:
    last = history[-1]
    best = min(history, key=lambda r: r["val_top1_error"])
    ten = last.get("val_top1_error_10crop")
    accuracy = f"accuracy {1 - last['val_top1_error']:.2%}"
    if ten is not None:
        accuracy += f" (10 crops {1 - ten:.2%})"
    return (f"done: {last['epoch']} epochs in {seconds:.0f}s | final val top-1 {accuracy} | "
            f"{errors_text(last)} | best top-1 error {best['val_top1_error']:.2%} at epoch {best['epoch']} | "
            f"run folder {run_dir}")
