"""Pictures: instances drawn on images, loss curves, predictions on validation images.

Images are float32 (3, H, W) in [0, 1] or uint8 (H, W, 3); boxes (N, 4) x1 y1 x2 y2 in pixels;
masks (N, H, W) or (N, 1, H, W), probabilities or binary (drawn where > 0.5).
Chapter: nbs/12_training_on_shapes.ipynb
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt  # with no display, matplotlib falls back to its Agg backend
import numpy as np

from .backend import module_of, to_device, to_host
from .tape import no_grad

COLOURS = plt.get_cmap("tab20").colors


def as_hwc(image):
    image = to_host(image)
    if image.ndim == 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    if image.dtype != np.uint8:
        image = np.clip(image * 255.0, 0, 255).astype(np.uint8)
    return image


def draw_instances(ax, image, boxes=(), labels=None, scores=None, masks=None, class_names=None, alpha=0.45):
    """Draw boxes, class names (and scores) and translucent masks on `ax`."""
    img = as_hwc(image).astype(np.float32) / 255.0
    boxes = to_host(np.asarray(boxes) if not hasattr(boxes, "shape") else boxes).reshape(-1, 4)
    if masks is not None and len(boxes):
        m = to_host(masks)
        m = m[:, 0] if m.ndim == 4 else m
        for i in range(len(m)):
            colour = np.array(COLOURS[i % len(COLOURS)])
            sel = m[i] > 0.5
            img[sel] = (1 - alpha) * img[sel] + alpha * colour
    ax.imshow(img)
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        colour = COLOURS[i % len(COLOURS)]
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour, linewidth=1.5))
        text = []
        if labels is not None:
            lab = int(to_host(labels)[i])
            text.append(class_names[lab] if class_names is not None and lab < len(class_names) else str(lab))
        if scores is not None:
            text.append(f"{float(to_host(scores)[i]):.2f}")
        if text:
            ax.text(x1, y1, " ".join(text), fontsize=7, color="white", va="bottom",
                    bbox=dict(facecolor=colour, alpha=0.8, pad=1, edgecolor="none"))
    ax.set_axis_off()
    return ax


def plot_losses(metrics_jsonl, out_png):
    """Each loss (and the total) against the iteration, from a run's metrics.jsonl (None: nothing logged yet)."""
    if not Path(metrics_jsonl).exists():  # a run stopped (time limit) before its first logged iteration
        return None
    rows = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    if not rows:
        return None
    its = [r["iteration"] for r in rows]
    names = [k for k in rows[0] if k.startswith("loss")]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in names:
        ax.plot(its, [r[name] for r in rows], label=name, lw=2 if name == "loss" else 1)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_predictions(model, dataset, out_png, class_names=None, num_images=6, score_thresh=0.5):
    """Ground truth (top row) and predictions above `score_thresh` (bottom row) on the first images."""
    model.eval()
    n = min(num_images, len(dataset))
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.4), squeeze=False)
    with no_grad():
        for i in range(n):
            image, target = dataset[i]
            det = model([to_device(image, module_of(model))])[0]   # upload; results back for drawing
            keep = to_host(det["scores"]) >= score_thresh
            draw_instances(axes[0, i], image, target["boxes"], target["labels"], None, target["masks"], class_names)
            draw_instances(axes[1, i], image, to_host(det["boxes"])[keep], to_host(det["labels"])[keep],
                           to_host(det["scores"])[keep], to_host(det["masks"])[keep], class_names)
    axes[0, 0].set_title("ground truth", fontsize=9, loc="left")
    axes[1, 0].set_title(f"predictions (score >= {score_thresh})", fontsize=9, loc="left")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
