"""Convolution as matrix multiplication: im2col / col2im, conv2d and conv_transpose2d, and their modules.

Shapes:  x (N, C, H, W); conv2d weight (O, C, kh, kw); conv_transpose2d weight (C_in, C_out, kh, kw),
         both as torch. Output size per axis: Hout = (H + 2p - d (k - 1) - 1) // s + 1 (torch's formula).
Columns: im2col(x) is (N, C*kh*kw, Hout*Wout), rows ordered (c, i, j) like weight.reshape(O, -1), so
         conv2d = weight.reshape(O, -1) @ im2col(x), and col2im is its adjoint (overlapping patches add).
Paths:   (the GEMM code lives in conv_paths.py; `_choose_path` picks one per call, FORCE_PATH overrides)
         "1x1"      a matmul per image on x as it is (stride 2: a strided slice first), no copies.
         "winograd" 3x3 stride 1 with many channels: Winograd F(2x2, 3x3), 16 GEMMs on transformed 4x4
                    tiles, 2.25x fewer multiplications (winograd.py; its own dX and dW).
         "shifted"  stride 1, k > 1: the batch stacked into one tall zero-padded grid, each kernel tap a
                    shifted view of it (no copies); the grid's padding rows/columns are computed and dropped.
         "im2col"   columns (C*kh*kw, N*Hout*Wout) for a whole chunk of images and ONE matmul; always
                    correct, and the choice for strided kernels and for small maps where the shifted
                    path would waste too much (see `_choose_path`).
         The input gradient of a stride-1 conv is itself a stride-1 conv (of dY with the flipped kernel),
         so it takes the same two paths; otherwise it is col2im(W^T @ dY).
Memory:  the forward cache keeps x and weight and backward recomputes what it needs (columns, grids),
         except on the Winograd path, which keeps its transformed input V (~4x x; WINOGRAD_KEEP_V).
Adjoint: conv_transpose2d(x, w) is the input-gradient of conv2d with weight w, and vice versa.
Chapter: nbs/01_convolution.ipynb
"""

from __future__ import annotations

import numpy as np

from . import conv_paths, init, tape, winograd
from .backend import get_array_module, is_cupy_array
from .conv_paths import col2im_cf_add, im2col_cf, pad_or_crop
from .module import Module, Parameter

FORCE_PATH = None  # None: choose per call; "winograd" (3x3 stride 1), "shifted" (stride 1) or "im2col" (all) force one
WINOGRAD_MIN_CHANNELS = 128  # Winograd when both channel counts reach this (see `_choose_path`)...
WINOGRAD_MIN_PIXELS = 64 * 64  # ...or both reach 64 and the output map has this many pixels
WINOGRAD_KEEP_V = True  # keep Winograd's transformed input (4x x) for dW: one transform fewer, more memory
SHIFT_MAX_WASTE = 0.5  # never take the shifted path when more than this fraction of its outputs is dropped
DEVICE_PATH = "im2col"  # the path of every non-1x1 conv on CuPy arrays (see `_choose_path`)
IM2COL_COPY_COST = 16.0  # im2col's copy costs about IM2COL_COPY_COST / O of its matmul (measured, see below)


# --- settings and shapes ---------------------------------------------------------------------------
def _pair(v, name, minimum):
    """int or pair -> (int, int), each >= minimum."""
    t = (v, v) if isinstance(v, int) or not hasattr(v, "__len__") else tuple(v)
    if len(t) != 2:
        raise ValueError(f"{name} must be an int or a pair, got {v!r}")
    t = (int(t[0]), int(t[1]))
    if min(t) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v!r}")
    return t


def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    """Output length along one axis: (size + 2p - d (k - 1) - 1) // s + 1, as torch."""
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def _output_hw(x_shape, w_shape, kernel, stride, padding, dilation):
    hw = tuple(conv_output_size(x_shape[2 + a], kernel[a], stride[a], padding[a], dilation[a])
               for a in (0, 1))
    if min(hw) < 1:
        raise ValueError(
            f"conv2d: input {tuple(x_shape)} with weight {tuple(w_shape)}, stride {stride}, "
            f"padding {padding}, dilation {dilation} gives output size {hw}: must be at least 1x1"
        )
    return hw


def _check_conv_inputs(x, weight, bias, what, channel_axis):
    """ndim, channel and bias checks shared by conv2d and conv_transpose2d."""
    if x.ndim != 4:
        raise ValueError(f"{what}: input must be (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.ndim != 4:
        raise ValueError(f"{what}: weight must be 4-D, got shape {tuple(weight.shape)}")
    if x.shape[1] != weight.shape[channel_axis]:
        raise ValueError(
            f"{what}: input has {x.shape[1]} channels (shape {tuple(x.shape)}) but weight "
            f"{tuple(weight.shape)} expects {weight.shape[channel_axis]}"
        )
    n_out = weight.shape[1 - channel_axis]
    if bias is not None and tuple(bias.shape) != (n_out,):
        raise ValueError(f"{what}: bias must have shape ({n_out},), got {tuple(bias.shape)}")


# --- im2col / col2im (the public, per-image layout; the paths use the channels-first one) -----------------
def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Patch matrix: x (N, C, H, W) -> (N, C*kh*kw, Hout*Wout), column l = the patch under output pixel l.

    Rows are ordered (c, i, j), matching weight.reshape(O, C*kh*kw); same layout as torch's `unfold`.
    Chapter: nbs/01_convolution.ipynb
    """
    k, s = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
    p, d = _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    if x.ndim != 4:
        raise ValueError(f"im2col: input must be (N, C, H, W), got shape {tuple(x.shape)}")
    out_hw = _output_hw(x.shape, (None, x.shape[1]) + k, k, s, p, d)
    xp = get_array_module(x)
    cols = im2col_cf(conv_paths.padded_channels_first(x, p), k, s, d, out_hw)  # (C*kh*kw, N*L)
    return xp.ascontiguousarray(cols.reshape(cols.shape[0], x.shape[0], -1).transpose(1, 0, 2))


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Adjoint of im2col: (N, C*kh*kw, Hout*Wout) -> (N, C, H, W), overlapping patches summed.

    col2im(ones) counts how many patches cover each input pixel.
    Chapter: nbs/01_convolution.ipynb
    """
    k, s = _pair(kernel_size, "kernel_size", 1), _pair(stride, "stride", 1)
    p, d = _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)
    N, C, H, W = x_shape
    out_hw = _output_hw(x_shape, (None, C) + k, k, s, p, d)
    if tuple(cols.shape) != (N, C * k[0] * k[1], out_hw[0] * out_hw[1]):
        raise ValueError(f"col2im: columns {tuple(cols.shape)} do not fit input {tuple(x_shape)}, kernel {k}")
    xp = get_array_module(cols)
    dxpad = xp.zeros((C, N, H + 2 * p[0], W + 2 * p[1]), dtype=cols.dtype)
    col2im_cf_add(cols.transpose(1, 0, 2), dxpad, k, s, d, out_hw)  # channels-first (C*kh*kw, N, L)
    return conv_paths.batch_first(dxpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W])


# --- choosing a path -------------------------------------------------------------------------------------
def _choose_path(x_shape, n_out, kernel, stride, padding, dilation, on_device=False):
    """"1x1", "winograd", "shifted" or "im2col" for conv2d of x_shape with n_out output channels.

    On a GPU (on_device: CuPy arrays) the choice is DEVICE_PATH for every kernel but 1x1: the cost model
    below was measured on OpenBLAS, and im2col + one cuBLAS GEMM is the simple, known-good GPU form
    until the Winograd path is measured on a GPU (benchmarks/gpu.py).

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
    if on_device:
        return DEVICE_PATH
    if not stride1:
        return "im2col"
    if winograd_ok and FORCE_PATH is None:
        channels, pixels = min(x_shape[1], n_out), (H + 2 * padding[0] - 2) * (W + 2 * padding[1] - 2)
        if channels >= WINOGRAD_MIN_CHANNELS or (channels >= 64 and pixels >= WINOGRAD_MIN_PIXELS):
            return "winograd"
    waste = conv_paths.shifted_waste(H, W, kernel, padding, dilation)
    shifted_extra = waste / (1 - waste) if waste < SHIFT_MAX_WASTE else float("inf")
    return "shifted" if shifted_extra < IM2COL_COPY_COST / n_out else "im2col"


def _stride1_conv(x, weight, padding, dilation, keep=None):
    """A stride-1 conv2d on the path `_choose_path` picks (padding may be negative: it crops)."""
    x, padding = conv_paths.crop_negative_padding(x, padding)
    O, _, kh, kw = weight.shape
    path = _choose_path(x.shape, O, (kh, kw), (1, 1), padding, dilation, is_cupy_array(x))
    out_hw = _output_hw(x.shape, weight.shape, (kh, kw), (1, 1), padding, dilation)
    if path == "1x1":
        return _pointwise_conv(x, weight, (1, 1), padding, out_hw)
    if path == "winograd":
        return winograd.winograd_conv(x, weight, padding, keep=keep)
    if path == "shifted":
        return conv_paths.shifted_conv(x, weight, padding, dilation)
    return conv_paths.im2col_conv(x, weight, (1, 1), padding, dilation, out_hw)


# --- 1x1 convolutions: per-image matmuls on x as it is ---------------------------------------------------
def _pointwise_pixels(x, stride, padding, out_hw):
    """The input pixels a 1x1 conv reads, (N, C, Ho, Wo): pad (or crop), keep every stride-th row/column."""
    xs = pad_or_crop(x, *padding) if max(padding) != 0 else x
    return xs[:, :, :stride[0] * (out_hw[0] - 1) + 1:stride[0], :stride[1] * (out_hw[1] - 1) + 1:stride[1]]


def _pointwise_conv(x, weight, stride, padding, out_hw):
    """out[n] = W (O, C) @ x[n] (C, Ho*Wo): one matmul per image, no copy of x when stride and padding are trivial."""
    xp = get_array_module(x, weight)
    N, C = x.shape[:2]
    O = weight.shape[0]
    xs = _pointwise_pixels(x, stride, padding, out_hw)
    out = xp.matmul(weight.reshape(O, C), xs.reshape(N, C, -1))  # (O, C) @ (N, C, L) -> (N, O, L)
    return out.reshape((N, O) + tuple(out_hw))


def _pointwise_weight_grad(x, dout, stride, padding):
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


# --- conv2d ------------------------------------------------------------------------------------------
def _conv2d_core(x, weight, stride, padding, dilation, keep=None):
    """conv2d without bias or checks, on the path `_choose_path` picks; `keep` receives Winograd's V."""
    O, _, kh, kw = weight.shape
    out_hw = _output_hw(x.shape, weight.shape, (kh, kw), stride, padding, dilation)
    if stride == (1, 1):
        return _stride1_conv(x, weight, padding, dilation, keep)
    if _choose_path(x.shape, O, (kh, kw), stride, padding, dilation, is_cupy_array(x)) == "1x1":
        return _pointwise_conv(x, weight, stride, padding, out_hw)
    return conv_paths.im2col_conv(x, weight, stride, padding, dilation, out_hw)


def _conv2d_input_grad(dout, weight, x_shape, stride, padding, dilation):
    """dX of conv2d, dout (N, O, Ho, Wo) -> (N, C, H, W). Also the forward of conv_transpose2d.

    Stride 1: a stride-1 conv of dY with the flipped kernel (either path). 1x1: W^T @ dY per image.
    Otherwise col2im(W^T @ dY) on the im2col path.
    """
    xp = get_array_module(dout, weight)
    N, C, H, W = x_shape
    O, _, kh, kw = weight.shape
    Ho, Wo = dout.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    exact = Ho + dh * (kh - 1) == H + 2 * ph and Wo + dw * (kw - 1) == W + 2 * pw  # no output_padding
    if exact and _choose_path(x_shape, O, (kh, kw), stride, padding, dilation, xp is not np) == "winograd":
        return winograd.winograd_backward(dout, weight, padding, x_shape)[0]
    if stride == (1, 1) and exact:
        # stride 1: dX is the full correlation of dY with the flipped, transposed kernel, itself a conv
        flipped = xp.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))  # (C, O, kh, kw)
        return _stride1_conv(dout, flipped, (dh * (kh - 1) - ph, dw * (kw - 1) - pw), dilation)
    if (kh, kw) == (1, 1) and _choose_path(x_shape, O, (1, 1), stride, padding, dilation, xp is not np) == "1x1":
        # 1x1: dX[n] = W^T (C, O) @ dY[n] (O, L), written onto the pixels the forward read
        g = xp.matmul(weight.reshape(O, C).T, dout.reshape(N, O, Ho * Wo)).reshape(N, C, Ho, Wo)
        dxpad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dout.dtype)
        dxpad[:, :, :sh * (Ho - 1) + 1:sh, :sw * (Wo - 1) + 1:sw] = g
        return dxpad[:, :, ph:ph + H, pw:pw + W]
    return conv_paths.im2col_input_grad(dout, weight, x_shape, stride, padding, dilation)


def _conv2d_weight_grad(x, dout, w_shape, stride, padding, dilation):
    """dW of conv2d: dY (O, N*L) @ cols^T (N*L, C*kh*kw), on the path the forward took."""
    O, _, kh, kw = w_shape
    path = _choose_path(x.shape, O, (kh, kw), stride, padding, dilation, is_cupy_array(x))
    if path == "1x1":
        return _pointwise_weight_grad(x, dout, stride, padding)
    exact = dout.shape[2:] == _output_hw(x.shape, w_shape, (kh, kw), stride, padding, dilation)
    if path == "winograd" and exact:  # (not exact: conv_transpose2d's output_padding cut dY short)
        return winograd.winograd_backward(dout, None, padding, x.shape, x)[1]
    if path in ("shifted", "winograd"):
        return conv_paths.shifted_weight_grad(x, dout, (kh, kw), padding, dilation)
    return conv_paths.im2col_weight_grad(x, dout, w_shape, stride, padding, dilation)


def _settings(stride, padding, dilation):
    return _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)


def _common_dtype(xp, *arrays):
    return xp.result_type(*[a.dtype for a in arrays if a is not None])


def conv2d_forward(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """2-D cross-correlation as torch.nn.functional.conv2d (no groups).

    x (N, C, H, W), weight (O, C, kh, kw), bias (O,) or None -> out (N, O, Hout, Wout), cache.
    Chapter: nbs/01_convolution.ipynb
    """
    xp = get_array_module(x, weight)
    _check_conv_inputs(x, weight, bias, "conv2d", channel_axis=1)
    s, p, d = _settings(stride, padding, dilation)
    dtype = _common_dtype(xp, x, weight, bias)
    x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
    kept = []  # the Winograd path keeps its transformed input V here, for the weight gradient
    out = _conv2d_core(x, weight, s, p, d, keep=kept if WINOGRAD_KEEP_V else None)
    if bias is not None:
        out += bias.astype(dtype, copy=False)[:, None, None]
    return out, (x, weight, bias is not None, s, p, d, kept)


def conv2d_backward(dout, cache, needs_input_grad=(True, True, True)):
    """(dx, dweight, dbias): dW = dY @ cols^T, dX = col2im(W^T @ dY), db = sum of dY over N, H, W.

    Gradients the tape says nobody uses (`needs_input_grad`) are skipped: the first conv's dX
    (the image) and the dW of frozen layers cost as much as the forward.
    """
    x, weight, has_bias, s, p, d, kept = cache
    dout = dout.astype(x.dtype, copy=False)
    if _choose_path(x.shape, weight.shape[0], weight.shape[2:], s, p, d, is_cupy_array(x)) == "winograd":
        # dX and dW together: both start from the same transform of dY
        dx, dw = winograd.winograd_backward(dout, weight if needs_input_grad[0] else None, p, x.shape,
                                            x if needs_input_grad[1] else None, kept)
    else:
        dx = _conv2d_input_grad(dout, weight, x.shape, s, p, d) if needs_input_grad[0] else None
        dw = _conv2d_weight_grad(x, dout, weight.shape, s, p, d) if needs_input_grad[1] else None
    db = dout.sum(axis=(0, 2, 3)) if has_bias and needs_input_grad[2] else None
    return dx, dw, db


conv2d = tape.op(conv2d_forward, conv2d_backward)


# --- conv_transpose2d ---------------------------------------------------------------------------------
def conv_transpose2d_output_size(size, kernel_size, stride=1, padding=0, output_padding=0, dilation=1):
    """(size - 1) s - 2p + d (k - 1) + output_padding + 1, as torch."""
    return (size - 1) * stride - 2 * padding + dilation * (kernel_size - 1) + output_padding + 1


def conv_transpose2d_forward(x, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution as torch.nn.functional.conv_transpose2d (no groups).

    x (N, C_in, H, W), weight (C_in, C_out, kh, kw), bias (C_out,) -> (N, C_out, Hout, Wout), cache.
    It is the input-gradient of conv2d(·, weight) taken at dY = x, so the two are adjoint in x.
    Chapter: nbs/01_convolution.ipynb
    """
    xp = get_array_module(x, weight)
    _check_conv_inputs(x, weight, bias, "conv_transpose2d", channel_axis=0)
    s, p, d = _settings(stride, padding, dilation)
    op = _pair(output_padding, "output_padding", 0)
    if op[0] >= max(s[0], d[0]) or op[1] >= max(s[1], d[1]):
        raise ValueError(f"conv_transpose2d: output_padding {op} must be < stride {s} or dilation {d}")
    N, _, H, W = x.shape
    _, C_out, kh, kw = weight.shape
    out_hw = tuple(conv_transpose2d_output_size((H, W)[a], (kh, kw)[a], s[a], p[a], op[a], d[a])
                   for a in (0, 1))
    if min(out_hw) < 1:
        raise ValueError(
            f"conv_transpose2d: input {tuple(x.shape)} with weight {tuple(weight.shape)}, stride {s}, "
            f"padding {p}, output_padding {op}, dilation {d} gives output size {out_hw}: must be at least 1x1"
        )
    dtype = _common_dtype(xp, x, weight, bias)
    x, weight = x.astype(dtype, copy=False), weight.astype(dtype, copy=False)
    out_shape = (N, C_out) + out_hw
    out = _conv2d_input_grad(x, weight, out_shape, s, p, d)
    if bias is not None:
        out = out + bias.astype(dtype, copy=False)[:, None, None]
    return out, (x, weight, bias is not None, s, p, d)


def conv_transpose2d_backward(dout, cache):
    """(dx, dweight, dbias): dx = conv2d(dout, weight), dW = conv2d's weight-gradient with roles swapped."""
    x, weight, has_bias, s, p, d = cache
    dout = dout.astype(x.dtype, copy=False)
    # forward was out = conv2d_input_grad(dY=x, W) for a conv2d whose input is `out`
    dx = _conv2d_core(dout, weight, s, p, d)[:, :, :x.shape[2], :x.shape[3]]  # output_padding rows drop out
    dw = _conv2d_weight_grad(dout, x, weight.shape, s, p, d)
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


conv_transpose2d = tape.op(conv_transpose2d_forward, conv_transpose2d_backward)


# --- modules ------------------------------------------------------------------------------------------
class Conv2d(Module):
    """torch.nn.Conv2d without groups: parameters `weight` (O, C, kh, kw) and `bias` (O,) or None.

    Default init as torch: kaiming_uniform(a=sqrt(5)) weight, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) bias.
    Chapter: nbs/01_convolution.ipynb
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 rng=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride, self.padding, self.dilation = _settings(stride, padding, dilation)
        shape = (self.out_channels, self.in_channels) + self.kernel_size
        self.weight = Parameter(init.torch_default_weight(shape, rng=rng))
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        self.bias = Parameter(init.torch_default_bias(self.out_channels, fan_in, rng=rng)) if bias else None

    def forward(self, x):
        return conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                      dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"bias={self.bias is not None}")


class ConvTranspose2d(Module):
    """torch.nn.ConvTranspose2d without groups: `weight` (C_in, C_out, kh, kw) and `bias` (C_out,) or None.

    Default init as torch (fan_in computed from weight.shape[1] * kh * kw, as torch does).
    Chapter: nbs/01_convolution.ipynb
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0,
                 bias=True, dilation=1, rng=None):
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair(kernel_size, "kernel_size", 1)
        self.stride, self.padding, self.dilation = _settings(stride, padding, dilation)
        self.output_padding = _pair(output_padding, "output_padding", 0)
        shape = (self.in_channels, self.out_channels) + self.kernel_size
        self.weight = Parameter(init.torch_default_weight(shape, rng=rng))
        fan_in = init.fans(shape)[0]
        self.bias = Parameter(init.torch_default_bias(self.out_channels, fan_in, rng=rng)) if bias else None

    def forward(self, x):
        return conv_transpose2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                output_padding=self.output_padding, dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, "
                f"output_padding={self.output_padding}, bias={self.bias is not None}")
