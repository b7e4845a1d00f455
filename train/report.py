"""What a run leaves behind besides checkpoints: metrics.jsonl, the curves as a PNG, and the log lines."""

from __future__ import annotations

import json
import os


def write_metrics(run_dir: str, history: list[dict]) -> None:
    """Rewrite metrics.jsonl (one JSON object per epoch) from the full history, atomically."""
    path = os.path.join(run_dir, "metrics.jsonl")
    with open(f"{path}.tmp", "w") as f:
        for row in history:
            f.write(json.dumps(row) + "\n")
    os.replace(f"{path}.tmp", path)


def write_config(run_dir: str, cfg: dict) -> None:
    path = os.path.join(run_dir, "config.json")
    with open(f"{path}.tmp", "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
    os.replace(f"{path}.tmp", path)


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
    path = os.path.join(run_dir, "curves.png")
    fig.savefig(f"{path}.tmp.png", dpi=100)
    plt.close(fig)
    os.replace(f"{path}.tmp.png", path)


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
