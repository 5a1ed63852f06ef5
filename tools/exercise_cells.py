"""Write (or refresh) the "Exercises" section at the end of each chapter from one table.

    python tools/exercise_cells.py            # every chapter
    python tools/exercise_cells.py 07 10      # some chapters

The section is the cells from the one whose source starts with "## Exercises" to the end of the
notebook; it is replaced as a whole, so this is safe to rerun. Each exercise is a markdown cell (the
task) and a code cell: the stub, raising NotImplementedError, and the checker call, which reports
"not attempted" until the stub is filled in (the chapter still runs top to bottom).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"

INTRO = """## Exercises

Write each function in the cell under its task and run the cell: `exercises.check` runs it on a few test
inputs and says **correct**, **wrong** (naming the mistake when it recognises one: a sign error, a missing
half-pixel offset, an off-by-one, a transposed index, ...) or **not attempted** (the stub still raises
`NotImplementedError`). Backwards are gradient-checked in float64 with `minimask.gradcheck`; forwards are
compared with the package's own function. Reference solutions: `nbs/solutions/ch{NN}.py` — try first."""

# (exercise id, markdown task, stub code); the stub's last line is the checker call
EXERCISES = {
    "00.1": ("""### Exercise 00.1 — sigmoid's backward

`layers.sigmoid_forward(x)` returns `s = sigmoid(x)` and caches `s` itself. Write the backward: given
`dout = dL/ds` and the cache `s`, return `dL/dx`. (Differentiate $\\sigma(x) = 1/(1+e^{-x})$ and write the
result in terms of $\\sigma$.)""",
             '''def sigmoid_backward(dout, cache):
    s = cache                      # the forward's output, sigmoid(x)
    raise NotImplementedError      # return dL/dx, same shape as dout


exercises.check("00.1", sigmoid_backward)'''),
    "00.2": ("""### Exercise 00.2 — scatter-add with repeated indices

Return a copy of `target` with `values[k]` added at position (or row) `idx[k]` for every k — when an index
repeats, every occurrence adds. This is what the backward of a gather needs (section 1).""",
             '''def scatter_add(target, idx, values):
    raise NotImplementedError      # a new array; repeated indices must all add up


exercises.check("00.2", scatter_add)'''),
    "00.3": ("""### Exercise 00.3 — a broadcast product's backward

`y = a * b` with `a` of shape `(N, C)` and `b` of shape `(C,)`, broadcast over the rows; the cache is `(a, b)`.
Return `(da, db)`, each of its input's shape. Where does the gradient of a broadcast input go?""",
             '''def broadcast_mul_backward(dout, cache):
    a, b = cache                   # a (N, C), b (C,)
    raise NotImplementedError      # return da (N, C), db (C,)


exercises.check("00.3", broadcast_mul_backward)'''),
    "01.1": ("""### Exercise 01.1 — the output size

The length of a convolution's output along one axis, for an input of `size` pixels, a kernel of
`kernel_size` taps, `stride`, `padding` (added at both ends) and `dilation` (taps `dilation` pixels
apart).""",
             '''def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    raise NotImplementedError      # an int


exercises.check("01.1", conv_output_size)'''),
    "01.2": ("""### Exercise 01.2 — conv2d as im2col + one matmul

`x (N, C, H, W)`, `w (O, C, kh, kw)`, no bias, square `stride` and `padding` → `(N, O, Hout, Wout)`. Use
`mconv.im2col` (section 2) and one matrix product.""",
             '''def conv2d_im2col(x, w, stride, padding):
    raise NotImplementedError      # (N, O, Hout, Wout)


exercises.check("01.2", conv2d_im2col)'''),
    "01.3": ("""### Exercise 01.3 — the weight gradient

Given the input `x (N, C, H, W)` and the output gradient `dout (N, O, Hout, Wout)` of a convolution with
weight shape `w_shape = (O, C, kh, kw)`, return `dW` (section 3: `dW = dY @ cols^T`). The same weight is
used by every image of the batch.""",
             '''def conv2d_weight_grad(x, dout, w_shape, stride, padding):
    raise NotImplementedError      # (O, C, kh, kw)


exercises.check("01.3", conv2d_weight_grad)'''),
    "02.1": ("""### Exercise 02.1 — smooth L1's backward

`exercises.basics.smooth_l1_forward(input, target, beta)` returns the elementwise loss of `d = input - target`
and caches `(d, beta)`. Return `(dinput, dtarget)`. The checker gradient-checks it with `minimask.gradcheck`
for three values of beta.""",
             '''def smooth_l1_backward(dout, cache):
    d, beta = cache                # d = input - target, elementwise
    raise NotImplementedError      # return dinput, dtarget


exercises.check("02.1", smooth_l1_backward)'''),
    "02.2": ("""### Exercise 02.2 — group norm by hand

Normalise `x (N, C, H, W)` by the mean and (biased) variance of each (image, group); `num_groups` groups of
`C / num_groups` consecutive channels; no affine. Compare with `naive_group_norm` of section 1 — but
without looking.""",
             '''def group_norm_naive(x, num_groups, eps=1e-5):
    raise NotImplementedError      # same shape as x


exercises.check("02.2", group_norm_naive)'''),
    "02.3": ("""### Exercise 02.3 — binary cross-entropy's backward

The elementwise loss $\\ell(x, t) = \\max(x, 0) - x t + \\log(1 + e^{-|x|})$ caches `(x, t)`. Return
`(dx, dt)` (both inputs are differentiable: soft targets are allowed).""",
             '''def bce_backward(dout, cache):
    x, t = cache
    raise NotImplementedError      # return dx, dt


exercises.check("02.3", bce_backward)'''),
    "03.1": ("""### Exercise 03.1 — pyramid shapes

An image resized to `(h, w)` is padded (bottom, right) to multiples of 32, then goes through the ResNet and
the FPN. Return `((H, W), [(h2, w2), (h3, w3), (h4, w4), (h5, w5), (h6, w6)])`: the padded size and the
sizes of P2..P6.""",
             '''def pyramid_shapes(h, w):
    raise NotImplementedError      # ((H, W), [five (height, width) pairs for P2..P6])


exercises.check("03.1", pyramid_shapes)'''),
    "03.2": ("""### Exercise 03.2 — receptive field

For a stack of layers given as `[(kernel, stride), ...]` (first layer first), return the theoretical
receptive field of one output pixel in input pixels (section 3 measured it with a backward pass). The stem
`[(7, 2), (3, 2)]` gives 11.""",
             '''def receptive_field(layers):
    raise NotImplementedError      # an int


exercises.check("03.2", receptive_field)'''),
    "03.3": ("""### Exercise 03.3 — a bottleneck's parameters

Count the parameters of `Bottleneck(inplanes, planes, stride)` as `_make_layer` builds it — with its
`downsample` shortcut whenever the stride or the width changes — for `norm` `"frozen_bn"` or
`"group_norm"`. Then check a few against `num_parameters()` yourself.""",
             '''def bottleneck_num_parameters(inplanes, planes, stride, norm):
    raise NotImplementedError      # an int


exercises.check("03.3", bottleneck_num_parameters)'''),
    "04.1": ("""### Exercise 04.1 — IoU

Pairwise IoU of `boxes1 (N, 4)` and `boxes2 (M, 4)` as `x1, y1, x2, y2` (width `x2 - x1`) → `(N, M)`,
vectorised (no Python loop over boxes).""",
             '''def box_iou(boxes1, boxes2):
    raise NotImplementedError      # (N, M)


exercises.check("04.1", box_iou)'''),
    "04.2": ("""### Exercise 04.2 — the box encoder

Return the targets `(dx, dy, dw, dh)` (N, 4) that move each of `proposals` onto its `reference_boxes`,
multiplied by `weights = (wx, wy, ww, wh)` — torchvision's `encode_boxes(reference_boxes, proposals,
weights)`.""",
             '''def encode_boxes(reference_boxes, proposals, weights):
    raise NotImplementedError      # (N, 4)


exercises.check("04.2", encode_boxes)'''),
    "04.3": ("""### Exercise 04.3 — change the anchor ratios

Build the anchors of one level yourself — `sizes`, `aspect_ratios` (height / width), a `grid_size (H, W)` of
cells `stride` pixels apart, as `AnchorGenerator` does — and return the best IoU between `box` and any of
them. Then try ratios `(0.25, 4.0)` on the dog of section 3: does its best IoU improve?""",
             '''def best_anchor_iou(box, sizes, aspect_ratios, stride, grid_size):
    raise NotImplementedError      # a float


exercises.check("04.3", best_anchor_iou)'''),
    "05.1": ("""### Exercise 05.1 — anchor labels

From the IoU matrix `(G, R)` return the RPN's labels `(R,)` as floats: 1 (positive: best IoU ≥
`fg_iou_thresh`), 0 (negative: < `bg_iou_thresh`), −1 (ignored), with the low-quality matches of rule (i).""",
             '''def anchor_labels(iou, fg_iou_thresh, bg_iou_thresh):
    raise NotImplementedError      # (R,) in {1., 0., -1.}


exercises.check("05.1", anchor_labels)'''),
    "05.2": ("""### Exercise 05.2 — the RPN box loss

`pred` and `target` deltas `(S, 4)` and `labels (S,)` in {1, 0} for the S sampled anchors: return the box
loss as `rpn_losses` computes it (smooth L1 with `beta`, and its normalisation).""",
             '''def rpn_box_loss(pred, target, labels, beta):
    raise NotImplementedError      # a float


exercises.check("05.2", rpn_box_loss)'''),
    "05.3": ("""### Exercise 05.3 — how many of each?

With `num_pos` positive and `num_neg` negative anchors available, how many of each does the sampler take for
`batch_size_per_image` and `positive_fraction`? Return `(n_pos, n_neg)`.""",
             '''def sample_counts(num_pos, num_neg, batch_size_per_image, positive_fraction):
    raise NotImplementedError      # (int, int)


exercises.check("05.3", sample_counts)'''),
    "06.1": ("""### Exercise 06.1 — greedy NMS

The textbook loop: `(N, 4)` boxes, `(N,)` scores → the kept indices, by decreasing score (ties: lower index
first), dropping a box when a kept box above it has IoU **>** `iou_threshold`.""",
             '''def greedy_nms(boxes, scores, iou_threshold):
    raise NotImplementedError      # (K,) int


exercises.check("06.1", greedy_nms)'''),
    "06.2": ("""### Exercise 06.2 — class-wise NMS

Boxes only suppress boxes of their own class (`labels (N,)`); return the kept indices by decreasing score,
as `batched_nms`. One plain NMS call is enough if you move the boxes first (section 3's trick).""",
             '''def class_wise_nms(boxes, scores, labels, iou_threshold):
    raise NotImplementedError      # (K,) int


exercises.check("06.2", class_wise_nms)'''),
    "07.1": ("""### Exercise 07.1 — predict RoIAlign by hand

The 5×5 map `arange(25).reshape(5, 5)` (value `5 y + x`), one `box = (x1, y1, x2, y2)`, output 2×2,
`aligned=False`, `sampling_ratio=2`, `spatial_scale=1`. Work the numbers out on paper and return them as a
2×2 array — without calling `roi_align`. (Hint: what is the mean of bilinear samples of a linear map?)""",
             '''def roi_align_5x5(box):
    raise NotImplementedError      # (2, 2) array


exercises.check("07.1", roi_align_5x5)'''),
    "07.2": ("""### Exercise 07.2 — where RoIAlign samples

Along one axis: a box from `x1` to `x2` image pixels, `pooled` bins, `grid` samples per bin, `aligned`,
`spatial_scale` → the `(pooled, grid)` sample coordinates on the feature map (section 3's formulas).""",
             '''def sample_coords(x1, x2, pooled, grid, aligned, spatial_scale):
    raise NotImplementedError      # (pooled, grid)


exercises.check("07.2", sample_coords)'''),
    "07.3": ("""### Exercise 07.3 — bilinear interpolation

Sample an `(H, W)` map at points `y`, `x` (1-D arrays) as RoIAlign does: zero for a point outside
`[-1, H] x [-1, W]`, clamped to the border inside that margin.""",
             '''def bilinear(feature, y, x):
    raise NotImplementedError      # same shape as y


exercises.check("07.3", bilinear)'''),
    "08.1": ("""### Exercise 08.1 — unpack a thread's index

A RoI kernel's thread handles element `index` of a C-ordered `(K, C, PH, PW)` output. Return
`(n, c, ph, pw)` with `%` and `//` only (`index` may be an array).""",
             '''def unravel_output_index(index, K, C, PH, PW):
    raise NotImplementedError      # (n, c, ph, pw)


exercises.check("08.1", unravel_output_index)'''),
    "08.2": ("""### Exercise 08.2 — the grid-stride loop

Which output elements does global thread `thread` handle, with `n` elements, `threads_per_block` threads
per block and `blocks` blocks? Return them as an array, in loop order.""",
             '''def grid_stride_indices(thread, n, threads_per_block, blocks):
    raise NotImplementedError      # 1-D int array


exercises.check("08.2", grid_stride_indices)'''),
    "08.3": ("""### Exercise 08.3 — one word of the NMS bitmask

Boxes sorted by score; `iou (n, n)`. Return `mask[row, col_block]` of `kernels/nms.cu` as a Python int: bit
`j` set when box `col_block * 64 + j` exists, comes after `row`, and has IoU > `threshold` with it.""",
             '''def nms_mask_word(iou, row, col_block, threshold):
    raise NotImplementedError      # an int < 2**64


exercises.check("08.3", nms_mask_word)'''),
    "09.1": ("""### Exercise 09.1 — the per-class delta gather

`box_regression (R, 4K)` holds 4 deltas per class, class-major; `labels (R,)`. Return each RoI's own
class's deltas, `(R, 4)`.""",
             '''def deltas_for_class(box_regression, labels):
    raise NotImplementedError      # (R, 4)


exercises.check("09.1", deltas_for_class)'''),
    "09.2": ("""### Exercise 09.2 — the box head's regression loss

With `box_regression (R, 4K)`, `labels (R,)` (0 = background) and `regression_targets (R, 4)`, return the
box loss of `fastrcnn_loss` (smooth L1 with `beta`, its normalisation) as a float.""",
             '''def fastrcnn_box_loss(box_regression, labels, regression_targets, beta):
    raise NotImplementedError      # a float


exercises.check("09.2", fastrcnn_box_loss)'''),
    "09.3": ("""### Exercise 09.3 — softmax cross-entropy's backward

The mean cross-entropy of `logits (N, K)` against int `labels (N,)` caches `(logits, labels)`; `dout` is a
scalar. Return `dlogits (N, K)`.""",
             '''def cross_entropy_backward(dout, cache):
    logits, labels = cache
    raise NotImplementedError      # (N, K)


exercises.check("09.3", cross_entropy_backward)'''),
    "10.1": ("""### Exercise 10.1 — the per-class mask gather

`mask_logits (P, K, M, M)`, `labels (P,)`: return each RoI's own class's logit map, `(P, M, M)`, in one
indexing expression.""",
             '''def mask_logits_for_class(mask_logits, labels):
    raise NotImplementedError      # (P, M, M)


exercises.check("10.1", mask_logits_for_class)'''),
    "10.2": ("""### Exercise 10.2 — the mask loss

`mask_logits (P, K, M, M)`, `labels (P,)`, `mask_targets (P, M, M)` in {0, 1}: return `maskrcnn_loss` as a
float, with plain NumPy (a numerically stable sigmoid cross-entropy).""",
             '''def mask_loss(mask_logits, labels, mask_targets):
    raise NotImplementedError      # a float


exercises.check("10.2", mask_loss)'''),
    "10.3": ("""### Exercise 10.3 — where a mask is pasted

For one detection `box`, an `M x M` mask and `padding`, return the integer pixel box `(x1, y1, x2, y2)`
that `paste_masks_in_image` pastes the padded map into (section 4).""",
             '''def paste_box(box, M, padding):
    raise NotImplementedError      # four ints


exercises.check("10.3", paste_box)'''),
    "11.1": ("""### Exercise 11.1 — the resized size

The transform scales an `(h, w)` image so that its short side is `min_size`, unless its long side would
then exceed `max_size`. Return `(new_h, new_w)` as torchvision computes them.""",
             '''def resized_size(h, w, min_size, max_size):
    raise NotImplementedError      # (int, int)


exercises.check("11.1", resized_size)'''),
    "11.2": ("""### Exercise 11.2 — which level a box reads

Return the FPN level (2..5, int array) that `MultiScaleRoIAlign` reads for each of `boxes (K, 4)`:
$k = \\lfloor 4 + \\log_2(\\sqrt{wh} / 224) \\rfloor$ (FPN paper, Eq. 1; plus 1e-6 as torchvision), clamped.""",
             '''def fpn_level(boxes):
    raise NotImplementedError      # (K,) int


exercises.check("11.2", fpn_level)'''),
    "11.3": ("""### Exercise 11.3 — batching images

Zero-pad a list of `(3, h, w)` images into one `(N, 3, H, W)` batch whose `H` and `W` are multiples of
32, as the transform's `batch_images`.""",
             '''def batch_images(images):
    raise NotImplementedError      # (N, 3, H, W)


exercises.check("11.3", batch_images)'''),
    "12.1": ("""### Exercise 12.1 — the learning rate at an iteration

Linear warmup from `warmup_factor * base_lr` over `warmup_iters` iterations, then × `gamma` at each
milestone reached (the schedule of chapter 02). Return the learning rate at `iteration` (0-based).""",
             '''def lr_at(iteration, base_lr, milestones, gamma, warmup_iters, warmup_factor):
    raise NotImplementedError      # a float


exercises.check("12.1", lr_at)'''),
    "12.2": ("""### Exercise 12.2 — one SGD step

`torch.optim.SGD` with momentum and weight decay (dampening 0, no Nesterov): from `param`, `grad`, the
momentum buffer `buf` (`None` on the first step), `lr`, `momentum` and `weight_decay`, return
`(new_param, new_buf)`.""",
             '''def sgd_step(param, grad, buf, lr, momentum, weight_decay):
    raise NotImplementedError      # (new param, new buf)


exercises.check("12.2", sgd_step)'''),
    "12.3": ("""### Exercise 12.3 — gradient clipping

Rescale a list of gradient arrays so that their global L2 norm is at most `max_norm` (factor
`min(1, max_norm / (total + 1e-6))`). Return `(clipped list, total norm before clipping)`.""",
             '''def clip_grad_norm(grads, max_norm):
    raise NotImplementedError      # (list of arrays, float)


exercises.check("12.3", clip_grad_norm)'''),
    "13.1": ("""### Exercise 13.1 — COCO's boxes

COCO stores `bbox` as `[x, y, width, height]`. Convert `(N, 4)` of them to `x1, y1, x2, y2`.""",
             '''def xywh_to_xyxy(boxes):
    raise NotImplementedError      # (N, 4)


exercises.check("13.1", xywh_to_xyxy)'''),
    "13.2": ("""### Exercise 13.2 — mask IoU, crowds included

Binary masks: detections `dt (D, H, W)`, ground truths `gt (G, H, W)`, `iscrowd (G,)`. Return the `(D, G)`
IoU matrix exactly as `pycocotools.mask.iou` computes it — including what it does for a crowd region.""",
             '''def mask_iou(dt, gt, iscrowd):
    raise NotImplementedError      # (D, G)


exercises.check("13.2", mask_iou)'''),
    "13.3": ("""### Exercise 13.3 — AP by hand

Given the precision-recall table of one category (rows: detections by decreasing score; `recall` and
`precision` after each one), return the AP exactly as COCOeval computes it: the precision envelope sampled
at the 101 recalls 0, 0.01, ..., 1.""",
             '''def coco_ap(recall, precision):
    raise NotImplementedError      # a float


exercises.check("13.3", coco_ap)'''),
    "14.1": ("""### Exercise 14.1 — Winograd's input transform of one tile

Return `V = B^T d B` for one 4×4 input tile `d` (section 1). Write `B^T` out yourself from Lavin & Gray's
F(2x2, 3x3) (or read it off `winograd.B_T`), then check one entry by hand: `V[0, 0] = d[0, 0] - d[0, 2]
- d[2, 0] + d[2, 2]`.""",
             '''def winograd_input_transform(d):
    raise NotImplementedError      # (4, 4)


exercises.check("14.1", winograd_input_transform)'''),
    "14.2": ("""### Exercise 14.2 — the shifted-view conv of one channel pair

One input channel `x (H, W)`, one kernel `w (kh, kw)`, stride 1, `padding` zeros on every side →
`(Hout, Wout)`, as `conv2d` computes it. Flatten the padded input and add `kh*kw` shifted slices of it,
each times one weight (section 2); no `im2col`.""",
             '''def shifted_conv_channel(x, w, padding):
    raise NotImplementedError      # (Hout, Wout)


exercises.check("14.2", shifted_conv_channel)'''),
    "15.1": ("""### Exercise 15.1 — RoIWarp's bins

RoIWarp (Table 2c) snaps the box to whole map cells exactly as RoIPool does — each corner times `spatial_scale`,
rounded half *away from zero* (C's `round`), both end cells included — and then cuts the snapped box into
`pooled` **equal** bins. Along one axis, for a box from `x1` to `x2` image pixels, return the `pooled + 1` bin
edges in map cells (cell `i` covers `[i, i + 1)`). Try `x1 = 40, x2 = 100` at stride 16 by hand first.""",
             '''def roi_warp_bin_edges(x1, x2, pooled, spatial_scale):
    raise NotImplementedError      # (pooled + 1,) array


exercises.check("15.1", roi_warp_bin_edges)'''),
    "15.2": ("""### Exercise 15.2 — the multinomial mask loss (Table 2b)

`mask_logits (P, K, M, M)` with channel 0 for background, `labels (P,)` in `1..K-1`, `mask_targets (P, M, M)` in
`[0, 1]`. Every pixel is one K-way classification: its target class is the RoI's label where the target is
`>= 0.5`, background (0) elsewhere. Return the mean over all `P * M * M` pixels of `-log softmax(logits)[target]`
(section 3) — a plain NumPy number, no tape.""",
             '''def softmax_mask_loss(mask_logits, labels, mask_targets):
    raise NotImplementedError      # a float


exercises.check("15.2", softmax_mask_loss)'''),
    "15.3": ("""### Exercise 15.3 — the verdict of one direction

The benchmark's criterion (section 5): the paper says arm A beats arm B. Given A's values over the seeds
(`better`) and B's (`worse`), return `"REPRODUCED"` when the difference of the means exceeds **both** arms' seed
ranges (max − min), `"REVERSED"` when B's lead does, and `"INCONCLUSIVE"` otherwise.""",
             '''def direction_verdict(better, worse):
    raise NotImplementedError      # "REPRODUCED" | "REVERSED" | "INCONCLUSIVE"


exercises.check("15.3", direction_verdict)'''),
    "15.4": ("""### Exercise 15.4 — one bin, average or max (Table 2c)

RoIAlign with `aligned=True`, `spatial_scale = 1` and `grid × grid` samples per bin, on a `feature (C, H, W)`:
return bin `(p, q)` of the `pooled × pooled` output for `box = (x1, y1, x2, y2)`, as a `(C,)` array — the mean of
the bin's bilinear samples for `aggregation="avg"`, their maximum for `"max"`. You may use
`minimask.roi_align.bilinear_interpolate(feature, y, x)` (chapter 07).""",
             '''def roi_align_bin(feature, box, p, q, pooled, grid, aggregation):
    raise NotImplementedError      # (C,)


exercises.check("15.4", roi_align_bin)'''),
    "16.1": ("""### Exercise 16.1 — a rank's share of the global batch

`mpiexec -n size` ranks split each global batch: rank `rank` reads a **contiguous** share of the list `items`.
Shares differ by at most one item, the later ranks take the extra ones, and the shares in rank order are `items`
again (what `DataLoader` does with `rank=` and `world_size=`). Return rank `rank`'s share as a list.""",
             '''def rank_share(items, rank, size):
    raise NotImplementedError      # a list


exercises.check("16.1", rank_share)'''),
    "16.2": ("""### Exercise 16.2 — the global loss from the ranks' means

Each rank computed a loss as a mean over its own `counts[r]` terms (sampled anchors, RoIs, mask pixels):
`means[r]` (a rank with no image this step has mean 0 and count 0). Return the mean over all the terms of the
global batch — what one process computes on the union batch — as a float. Why is averaging the ranks' means
not it?""",
             '''def global_mean(means, counts):
    raise NotImplementedError      # a float


exercises.check("16.2", global_mean)'''),
    "16.3": ("""### Exercise 16.3 — the gradient buckets

Parameters in order, their gradients' sizes `nbytes` and dtypes (e.g. `"f4"`, `"f8"`), and a cap in bytes:
cut them into buckets as `distributed.buckets` does — a new bucket starts when the next gradient would take the
bucket past the cap or has another dtype (a bucket is one flat array); a gradient larger than the cap is a
bucket alone. Return how many parameters each bucket holds.""",
             '''def bucket_lengths(nbytes, dtypes, cap):
    raise NotImplementedError      # a list of ints


exercises.check("16.3", bucket_lengths)'''),
}


def section(chapter):
    import nbformat

    ids = sorted(k for k in EXERCISES if int(k[:2]) == chapter)
    cells = [nbformat.v4.new_markdown_cell(INTRO.replace("{NN}", f"{chapter:02d}")),
             nbformat.v4.new_code_cell("import numpy as np\n\nfrom minimask import exercises")]
    for k in ids:
        md, code = EXERCISES[k]
        cells += [nbformat.v4.new_markdown_cell(md), nbformat.v4.new_code_cell(code)]
    return cells


def refresh(path):
    import nbformat

    nb = nbformat.read(path, as_version=4)
    start = next((i for i, c in enumerate(nb.cells) if c.cell_type == "markdown"
                  and c.source.lstrip().startswith("## Exercises")), len(nb.cells))
    new = section(int(path.name[:2]))
    for i, c in enumerate(new):
        c["id"] = f"exercises-{i:02d}"             # stable ids: rerunning changes nothing
    nb.cells = nb.cells[:start] + new
    nbformat.write(nb, path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    paths = sorted(NBS.glob("[0-9][0-9]_*.ipynb"))
    if argv:
        paths = [p for p in paths if p.name[:2] in {a.zfill(2) for a in argv}]
    for p in paths:
        refresh(p)
        print("exercises written:", p.name)


if __name__ == "__main__":
    main()
