"""Anchors: a few reference boxes per feature-map cell, at every cell of every FPN level.

Shapes:  cell anchors (A, 4) per level; grid anchors (H * W * A, 4) per level, rows in (H, W, A)
         order: row (y * W + x) * A + a is anchor a of the cell at column x, row y; all levels
         concatenated -> (R, 4), R = sum over levels of H * W * A
Boxes:   x1 y1 x2 y2 in input-image pixels; the cell anchors are centred on (0, 0) and shifted to
         (x * stride_w, y * stride_h): the centres sit on the stride grid (torchvision's convention)
Sizes:   one size per level, 32, 64, 128, 256, 512 px for P2..P6, aspect ratios h / w in (0.5, 1, 2)
Chapter: nbs/04_boxes_and_anchors.ipynb    Paper: Faster R-CNN Sec. 3.1.1; FPN Sec. 4.1
"""

from __future__ import annotations

import numpy as np

from .backend import DEFAULT_DTYPE

DEFAULT_SIZES = ((32,), (64,), (128,), (256,), (512,))  # one tuple per level, P2..P6
DEFAULT_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * len(DEFAULT_SIZES)  # height / width


def generate_anchors(scales, aspect_ratios, dtype=DEFAULT_DTYPE):
    """Cell anchors (A, 4), A = len(aspect_ratios) * len(scales), centred on (0, 0).

    An anchor of scale s and ratio r = h / w has h = s * sqrt(r), w = s / sqrt(r), so its area is
    s^2 whatever r is. Rows run ratio-major (all scales of the first ratio, then the next ...),
    and coordinates are rounded to whole pixels, both as torchvision does.
    Chapter: nbs/04_boxes_and_anchors.ipynb
    """
    scales = np.asarray(scales, dtype=np.float64)
    ratios = np.asarray(aspect_ratios, dtype=np.float64)
    if np.any(scales <= 0) or np.any(ratios <= 0):
        raise ValueError(f"scales {scales.tolist()} and aspect ratios {ratios.tolist()} must be positive")
    h_ratios = np.sqrt(ratios)
    w_ratios = 1.0 / h_ratios
    ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)  # (A,)
    base = np.stack([-ws, -hs, ws, hs], axis=1) / 2  # (A, 4)
    return np.round(base).astype(dtype)  # round half to even, like torch.round


def grid_anchors(cell_anchors, grid_size, stride, xp=np):
    """Shift (A, 4) cell anchors to every cell of an (H, W) grid -> (H * W * A, 4), (H, W, A) order.

    grid_size: (H, W) of the feature map; stride: (stride_h, stride_w) in pixels.
    Chapter: nbs/04_boxes_and_anchors.ipynb
    """
    (gh, gw), (sh, sw) = grid_size, stride
    cell = xp.asarray(cell_anchors)
    shifts_x = xp.arange(gw, dtype=cell.dtype) * cell.dtype.type(sw)  # (W,)
    shifts_y = xp.arange(gh, dtype=cell.dtype) * cell.dtype.type(sh)  # (H,)
    shift_y, shift_x = xp.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each
    shifts = xp.stack([shift_x, shift_y, shift_x, shift_y], axis=-1)  # (H, W, 4)
    return (shifts[:, :, None, :] + cell[None, None, :, :]).reshape(-1, 4)  # (H*W*A, 4)


class AnchorGenerator:
    """torchvision's `AnchorGenerator(sizes, aspect_ratios)`: cell anchors per level, then grids.

    `anchors = gen(image_size, grid_sizes)` returns the (R, 4) anchors shared by every image of a
    batch padded to `image_size` = (H_img, W_img); level l has stride H_img // H_l (integer division,
    as torchvision). Chapter: nbs/04_boxes_and_anchors.ipynb
    """

    def __init__(self, sizes=DEFAULT_SIZES, aspect_ratios=DEFAULT_ASPECT_RATIOS, dtype=DEFAULT_DTYPE):
        if len(sizes) != len(aspect_ratios):
            raise ValueError(f"{len(sizes)} levels of sizes but {len(aspect_ratios)} levels of aspect ratios")
        self.sizes = tuple(tuple(s) for s in sizes)
        self.aspect_ratios = tuple(tuple(r) for r in aspect_ratios)
        self.cell_anchors = [generate_anchors(s, r, dtype) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def num_anchors_per_location(self):
        """A per level (the head predicts A objectness logits and 4A deltas per cell)."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)]

    def strides(self, image_size, grid_sizes):
        return [(image_size[0] // gh, image_size[1] // gw) for gh, gw in grid_sizes]

    def grid_anchors_per_level(self, image_size, grid_sizes, xp=np):
        """List of (H_l * W_l * A, 4) anchors, one per level."""
        if len(grid_sizes) != len(self.cell_anchors):
            raise ValueError(f"{len(grid_sizes)} feature maps for {len(self.cell_anchors)} anchor levels")
        strides = self.strides(image_size, grid_sizes)
        return [grid_anchors(c, g, s, xp) for c, g, s in zip(self.cell_anchors, grid_sizes, strides, strict=True)]

    def __call__(self, image_size, grid_sizes, xp=np):
        """(R, 4) anchors for a batch padded to `image_size` with feature maps of `grid_sizes`."""
        return xp.concatenate(self.grid_anchors_per_level(image_size, grid_sizes, xp), axis=0)
