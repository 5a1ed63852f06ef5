"""Draw "the Mask R-CNN figure": every box labelled with its chapter and its package file.

    python tools/draw_architecture.py [OUT.png]      (default: docs/architecture.png)

The chapters and the README refer to this figure; the documentation site's landing page shows it.
Pure matplotlib, so it is redrawn identically anywhere (no network, no fonts beyond matplotlib's).
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# (x, y) centre, width, height, title, chapter line, files line, colour
BOXES = {
    "image": ((1.05, 5.0), 1.9, 1.3, "image", "ch 11 transform", "transform.py", "#f1f3f4"),
    "backbone": ((3.3, 5.0), 2.0, 1.7, "backbone\nResNet C2..C5", "ch 01-03", "conv.py, layers.py,\nresnet.py",
                 "#e8f0fe"),
    "fpn": ((5.5, 5.0), 1.8, 1.7, "FPN\nP2..P6", "ch 03", "fpn.py", "#e8f0fe"),
    "rpn": ((8.0, 7.3), 2.3, 1.9, "RPN\nanchors, objectness,\nproposals + NMS", "ch 04-06",
            "anchors.py, boxes.py,\nmatching.py, rpn.py, nms.py", "#fce8e6"),
    "roialign": ((8.0, 3.1), 2.5, 1.9, "RoIAlign\n(vs RoIPool)", "ch 07-08",
                 "roi_align.py, roi_pool.py,\npoolers.py, kernels.py\n+ kernels/*.cu", "#fef7e0"),
    "boxhead": ((11.0, 4.6), 2.2, 1.5, "box head\nclass + box deltas", "ch 09", "box_head.py", "#e6f4ea"),
    "maskhead": ((11.0, 1.9), 2.2, 1.5, "mask head\n28x28 per-class masks", "ch 10", "mask_head.py", "#e6f4ea"),
    "out": ((13.5, 3.3), 2.0, 2.2, "detections\nboxes, labels,\nscores, masks", "ch 11-13",
            "model.py, evaluate.py,\nviz.py", "#f1f3f4"),
}

ARROWS = [("image", "backbone", ""), ("backbone", "fpn", ""), ("fpn", "rpn", "P2..P6"), ("fpn", "roialign", "P2..P5"),
          ("rpn", "roialign", "proposals\n(no gradient)"), ("roialign", "boxhead", "7x7"),
          ("roialign", "maskhead", "14x14"), ("boxhead", "out", ""), ("maskhead", "out", "")]


def _edge(name, toward):
    (x, y), w, h = BOXES[name][:3]
    (tx, ty) = BOXES[toward][0]
    dx, dy = tx - x, ty - y
    if abs(dx) * h >= abs(dy) * w:            # leave through the left/right side
        return x + (w / 2 + 0.05) * (1 if dx > 0 else -1), y + dy * (w / 2) / max(abs(dx), 1e-9) * 0.5
    return x + dx * (h / 2) / max(abs(dy), 1e-9) * 0.5, y + (h / 2 + 0.05) * (1 if dy > 0 else -1)


def draw(out_path):
    fig, ax = plt.subplots(figsize=(14.5, 7.2))
    ax.set_xlim(0, 14.6)
    ax.set_ylim(-2.0, 8.6)
    ax.axis("off")
    for (x, y), w, h, title, chapter, files, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0.06", fc=colour,
                                    ec="#5f6368", lw=1.4))
        ax.text(x, y + h / 2 - 0.12, title, ha="center", va="top", fontsize=10.5, fontweight="bold")
        ax.text(x, y - h / 2 + 0.12, f"{chapter}\n{files}", ha="center", va="bottom", fontsize=8.2,
                family="monospace", color="#3c4043")
    for a, b, label in ARROWS:
        p, q = _edge(a, b), _edge(b, a)
        ax.add_patch(FancyArrowPatch(p, q, arrowstyle="-|>", mutation_scale=16, lw=1.6, color="#202124"))
        if label:
            ax.text(p[0] + 0.4 * (q[0] - p[0]) + 0.1, p[1] + 0.4 * (q[1] - p[1]) + 0.1, label, fontsize=8.5,
                    color="#1a73e8", ha="left", va="bottom")
    # the foundations every box is built from, and the training / evaluation loop around the model
    ax.add_patch(FancyBboxPatch((0.3, -1.8), 13.9, 0.95, boxstyle="round,pad=0.05", fc="#f8f9fa", ec="#9aa0a6"))
    ax.text(7.25, -1.33, "ch 00-02, the foundations every box is built from:\nbackend.py (NumPy / CuPy), tape.py + "
            "module.py (forward/backward pairs), gradcheck.py, conv.py (engines: fast/, ch 14),\n"
            "layers.py, losses.py, optim.py, init.py", ha="center", va="center", fontsize=8.3, family="monospace")
    around = ("ch 12-13 around the model: train.py, checkpoint.py, rundir.py, errors.py, shapes.py, data.py,\n"
              "coco_check.py, paths.py, evaluate.py, predict.py, config.py, weights.py; ch 08: testing/fake_cuda.py")
    ax.text(7.25, -0.45, around, ha="center", va="center", fontsize=8.3, family="monospace", color="#3c4043")
    ax.set_title("Mask R-CNN in minimask: each box with its chapter (nbs/NN_*.ipynb) and its files (minimask/*.py)",
                 fontsize=12)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_path, dpi=110)
    plt.close(fig)
    return out_path


if __name__ == "__main__":
    print(draw(sys.argv[1] if len(sys.argv) > 1 else ROOT / "docs" / "architecture.png"))
