"""The conv2d engine: a plan of GEMM paths chosen once per call, and the code of each path.

Shapes:  x (N, C, H, W), weight (O, C, kh, kw), dY = dout (N, O, Ho, Wo)
Paths:   "1x1"      a matmul per image on x as it is (stride 2: a strided slice first), no copies.
         "winograd" 3x3 stride 1 with many channels: Winograd F(2x2, 3x3), 16 GEMMs on transformed 4x4
                    tiles, 2.25x fewer multiplications (winograd.py; its own dX and dW).
         "shifted"  stride 1, k > 1: the batch stacked into one tall zero-padded grid, each kernel tap a
                    shifted view of it (conv_paths.py); the grid's padding rows/columns are dropped.
         "im2col"   channels-first columns for a whole chunk of images and ONE matmul (conv_paths.py).
Plan:    `plan` picks the path of each of the three products of one conv (forward, input gradient,
         weight gradient) from the shapes, once, reading the tuning constants below; conv2d keeps the
         plan in its cache and the backward follows it. The input gradient of a stride-1 conv is
         itself a stride-1 conv (dY with the flipped kernel), so it gets a path of its own.
Device:  on CuPy arrays only 1x1 convs use the engine; every other conv is the reference, im2col and
         one GEMM (conv.DEVICE_PATH): the cost model below was measured on OpenBLAS.
Chapter: nbs/14_appendix_engines.ipynb (the reference: conv.py, nbs/01_convolution.ipynb)
"""

from __future__ import annotations

from dataclasses import dataclass

from ..backend import get_array_module
from . import conv_paths, winograd
from .conv_paths import pad_or_crop

FORCE_PATH = None  # None: choose per call; "winograd" (3x3 stride 1), "shifted" (stride 1) or "im2col" (all) force one
WINOGRAD_MIN_CHANNELS = 128  # Winograd when both channel counts reach this (see `choose_path`)...
WINOGRAD_MIN_PIXELS = 64 * 64  # ...or both reach 64 and the output map has this many pixels
WINOGRAD_KEEP_V = True  # keep Winograd's transformed input (4x x) for dW: one transform fewer, more memory
SHIFT_MAX_WASTE = 0.5  # never take the shifted path when more than this fraction of its outputs is dropped
IM2COL_COPY_COST = 16.0  # im2col's copy costs about IM2COL_COPY_COST / O of its matmul (measured, see below)


@dataclass(frozen=True)
class ConvPlan:
    """The path of each product of one conv: forward, input gradient (dx), weight gradient (dw).

    dx is "winograd", "1x1", "im2col" or "flip:<path>" (a stride-1 conv of dY with the flipped kernel,
    on <path>); keep_v: the Winograd forward keeps its transformed input for dw.
    """
    forward: str
    dx: str
    dw: str
    keep_v: bool = False


def choose_path(x_shape, n_out, kernel, stride, padding, dilation):
    """"1x1", "winograd", "shifted" or "im2col" for conv2d of x_shape with n_out output channels.

    FORCE_PATH overrides where the forced path applies. Winograd (3x3, stride 1, dilation 1) does 4/9 of
    the direct multiplications but adds transforms whose cost per pixel grows with C + O while the
    saving grows with C * O: measured (benchmarks/conv.py) it wins with >= 128 channels on every map
    size, with 64 channels only on big maps (64x64 and up). Otherwise:

    Cost model, in units of the conv's own matmul: the shifted path computes 1 / (1 - waste) of it
    (waste = the dropped share of its grid, conv_paths.shifted_waste); im2col computes exactly it plus a
    copy of kh*kw times the input, which costs about IM2COL_COPY_COST / n_out of it (one copied element
    against 2 * n_out multiply-adds per column; measured on OpenBLAS: 100 RoIs x 256 ch x 14x14 -> im2col,
    64 ch or 32x32 maps -> shifted). The cheaper one wins.
    """
    H, W = x_shape[2:]
    stride1 = stride == (1, 1)
    winograd_ok = kernel == (3, 3) and stride1 and dilation == (1, 1) and min(padding) >= 0
    forced_applies = {"im2col": True, "shifted": stride1, "winograd": winograd_ok}
    if forced_applies.get(FORCE_PATH, False):
        return FORCE_PATH
    if kernel == (1, 1):
        return "1x1"
    if not stride1:
        return "im2col"
    if winograd_ok and FORCE_PATH is None:
        channels, pixels = min(x_shape[1], n_out), (H + 2 * padding[0] - 2) * (W + 2 * padding[1] - 2)
        if channels >= WINOGRAD_MIN_CHANNELS or (channels >= 64 and pixels >= WINOGRAD_MIN_PIXELS):
            return "winograd"
    waste = conv_paths.shifted_waste(H, W, kernel, padding, dilation)
    shifted_extra = waste / (1 - waste) if waste < SHIFT_MAX_WASTE else float("inf")
    return "shifted" if shifted_extra < IM2COL_COPY_COST / n_out else "im2col"


def _flip_padding(kernel, padding, dilation):
    return tuple(dilation[a] * (kernel[a] - 1) - padding[a] for a in (0, 1))


def plan(x_shape, w_shape, stride, padding, dilation, out_hw=None, on_device=False):
    """The ConvPlan of a conv2d of x_shape (N, C, H, W) with weight w_shape (O, C, kh, kw), or None.

    out_hw: the output size dY will have (default: the conv's own; conv_transpose2d's output_padding
    makes the conv2d whose adjoint it is read fewer rows). None means: use the reference (im2col + one
    GEMM) — on the device for every kernel but 1x1.
    """
    N, C, H, W = x_shape
    O, _, kh, kw = w_shape
    kernel = (kh, kw)
    forward = choose_path(x_shape, O, kernel, stride, padding, dilation)
    if on_device and forward != "1x1":
        return None
    full_hw = tuple((x_shape[2 + a] + 2 * padding[a] - dilation[a] * (kernel[a] - 1) - 1) // stride[a] + 1
                    for a in (0, 1))
    out_hw = full_hw if out_hw is None else tuple(out_hw)
    Ho, Wo = out_hw
    exact = Ho + dilation[0] * (kh - 1) == H + 2 * padding[0] and Wo + dilation[1] * (kw - 1) == W + 2 * padding[1]
    if exact and forward == "winograd":
        dx = "winograd"
    elif stride == (1, 1) and exact:
        fp = _flip_padding(kernel, padding, dilation)
        cropped = (N, O) + tuple(out_hw[a] - 2 * max(0, -fp[a]) for a in (0, 1))
        dx = "flip:" + choose_path(cropped, C, kernel, (1, 1), tuple(max(0, v) for v in fp), dilation)
    elif kernel == (1, 1) and forward == "1x1":
        dx = "1x1"
    else:
        dx = "im2col"
    if forward == "1x1":
        dw = "1x1"
    elif forward == "winograd" and out_hw == full_hw:
        dw = "winograd"
    elif forward in ("shifted", "winograd"):
        dw = "shifted"
    else:
        dw = "im2col"
    return ConvPlan(forward, dx, dw, keep_v=forward == "winograd" and WINOGRAD_KEEP_V)


# --- the products, each on the path its plan names --------------------------------------------------
def forward(path, x, weight, stride, padding, dilation, out_hw, keep=None):
    """conv2d without bias on `path`; `keep` (a list) receives Winograd's transformed input V."""
    if path == "1x1":
        return pointwise_conv(x, weight, stride, padding, out_hw)
    if path == "winograd":
        return winograd.winograd_conv(x, weight, padding, keep=keep)
    if path == "shifted":
        return conv_paths.shifted_conv(x, weight, padding, dilation)
    return conv_paths.im2col_conv(x, weight, stride, padding, dilation, out_hw)


def input_grad(path, dout, weight, x_shape, stride, padding, dilation):
    """dX of conv2d on `path`, dout (N, O, Ho, Wo) -> (N, C, H, W). Also conv_transpose2d's forward."""
    xp = get_array_module(dout, weight)
    N, C, H, W = x_shape
    O, _, kh, kw = weight.shape
    Ho, Wo = dout.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    if path == "winograd":
        return winograd.winograd_backward(dout, weight, padding, x_shape)[0]
    if path.startswith("flip:"):
        # stride 1: dX is the full correlation of dY with the flipped, transposed kernel, itself a conv
        flipped = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, O, kh, kw)
        dy, fp = conv_paths.crop_negative_padding(dout, _flip_padding((kh, kw), padding, dilation))
        return forward(path[5:], dy, flipped, (1, 1), fp, dilation, (H, W))
    if path == "1x1":
        # 1x1: dX[n] = W^T (C, O) @ dY[n] (O, L), written onto the pixels the forward read
        g = xp.matmul(weight.reshape(O, C).T, dout.reshape(N, O, Ho * Wo)).reshape(N, C, Ho, Wo)
        dxpad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dout.dtype)
        dxpad[:, :, :sh * (Ho - 1) + 1:sh, :sw * (Wo - 1) + 1:sw] = g
        return dxpad[:, :, ph:ph + H, pw:pw + W]
    return conv_paths.im2col_input_grad(dout, weight, x_shape, stride, padding, dilation)


def weight_grad(path, x, dout, w_shape, stride, padding, dilation, kept=None):
    """dW of conv2d on `path`: x (N, C, H, W), dout (N, O, Ho, Wo) -> (O, C, kh, kw)."""
    if path == "1x1":
        return pointwise_weight_grad(x, dout, stride, padding)
    if path == "winograd":
        return winograd.winograd_backward(dout, None, padding, x.shape, x, kept)[1]
    if path == "shifted":
        return conv_paths.shifted_weight_grad(x, dout, tuple(w_shape[2:]), padding, dilation)
    return conv_paths.im2col_weight_grad(x, dout, w_shape, stride, padding, dilation)


def backward(plan_, dout, x, weight, stride, padding, dilation, kept, need_dx, need_dw):
    """(dx, dw) of conv2d as the plan says; the Winograd path computes both from one transform of dY."""
    if plan_.forward == "winograd" and plan_.dx == "winograd" and plan_.dw == "winograd":
        return winograd.winograd_backward(dout, weight if need_dx else None, padding, x.shape,
                                          x if need_dw else None, kept)
    dx = input_grad(plan_.dx, dout, weight, x.shape, stride, padding, dilation) if need_dx else None
    dw = weight_grad(plan_.dw, x, dout, weight.shape, stride, padding, dilation, kept) if need_dw else None
    return dx, dw


# --- 1x1 convolutions: per-image matmuls on x as it is ---------------------------------------------------
def _pointwise_pixels(x, stride, padding, out_hw):
    """The input pixels a 1x1 conv reads, (N, C, Ho, Wo): pad (or crop), keep every stride-th row/column."""
    xs = pad_or_crop(x, *padding) if max(padding) != 0 else x
    return xs[:, :, :stride[0] * (out_hw[0] - 1) + 1:stride[0], :stride[1] * (out_hw[1] - 1) + 1:stride[1]]


def pointwise_conv(x, weight, stride, padding, out_hw):
    """out[n] = W (O, C) @ x[n] (C, Ho*Wo): one matmul per image, no copy of x when stride and padding are trivial."""
    xp = get_array_module(x, weight)
    N, C = x.shape[:2]
    O = weight.shape[0]
    xs = _pointwise_pixels(x, stride, padding, out_hw)
    out = xp.matmul(weight.reshape(O, C), xs.reshape(N, C, -1))  # (O, C) @ (N, C, L) -> (N, O, L)
    return out.reshape((N, O) + tuple(out_hw))


def pointwise_weight_grad(x, dout, stride, padding):
    """dW (O, C) = sum over images of dY[n] (O, L) @ x[n]^T (L, C), accumulated in place (no (N, O, C) stack)."""
    xp = get_array_module(x, dout)
    N, O = dout.shape[:2]
    C = x.shape[1]
    xs = _pointwise_pixels(x, stride, padding, dout.shape[2:]).reshape(N, C, -1)
    dy = dout.reshape(N, O, -1)
    dW = xp.matmul(dy[0], xs[0].T)
    tmp = xp.empty_like(dW)
    for n in range(1, N):
        xp.matmul(dy[n], xs[n].T, out=tmp)
        dW += tmp
    return dW.reshape(O, C, 1, 1)
