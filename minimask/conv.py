"""Convolution as matrix multiplication: im2col / col2im, conv2d and conv_transpose2d, and their modules.

Shapes:  x (N, C, H, W); conv2d weight (O, C, kh, kw); conv_transpose2d weight (C_in, C_out, kh, kw),
         both as torch. Output size per axis: Hout = (H + 2p - d (k - 1) - 1) // s + 1 (torch's formula).
Columns: im2col(x) is (N, C*kh*kw, Hout*Wout), rows ordered (c, i, j) like weight.reshape(O, -1), so
             conv2d:   out = W (O, K) @ im2col(x) (K, L)          (K = C*kh*kw, L = Hout*Wout)
             backward: dW  = sum_n dY[n] (O, L) @ im2col(x)[n]^T   dX = col2im(W^T @ dY)
         and col2im is the adjoint of im2col (overlapping patches add).
Adjoint: conv_transpose2d(x, w) is the input-gradient of conv2d with weight w, and vice versa.
Engine:  `fast.pick_conv` may return a plan of faster GEMM paths (Winograd, shifted views, chunked
         channels-first im2col, 1x1 matmuls: minimask/fast/conv.py), chosen once per call and kept in
         the cache so the backward follows it. `fast.disable()` or MINIMASK_REFERENCE=1: always the code
         below. On CuPy arrays every non-1x1 conv is this reference, im2col + one GEMM (DEVICE_PATH).
Chapter: nbs/01_convolution.ipynb
"""

from __future__ import annotations

from . import fast, init, tape
from .backend import get_array_module, is_cupy_array
from .fast import conv as conv_engine
from .module import Module, Parameter
from .utils import pair as _pair

DEVICE_PATH = "im2col"  # what every non-1x1 conv on CuPy arrays runs: this file's im2col + one GEMM


# --- settings and shapes ---------------------------------------------------------------------------
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


# --- im2col / col2im --------------------------------------------------------------------------------
def _patch_views(xpad, kernel, stride, dilation, out_hw):
    """Yield (i, j, view): for kernel tap (i, j), the (N, C, Hout, Wout) pixels it reads in padded xpad."""
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, (slice(None), slice(None), slice(i * dh, i * dh + sh * (Ho - 1) + 1, sh),
                         slice(j * dw, j * dw + sw * (Wo - 1) + 1, sw))


def im2col(x, kernel_size, stride=1, padding=0, dilation=1):
    """Patch matrix: x (N, C, H, W) -> (N, C*kh*kw, Hout*Wout), column l = the patch under output pixel l.

    Rows are ordered (c, i, j), matching weight.reshape(O, C*kh*kw); same layout as torch's `unfold`.
    Chapter: nbs/01_convolution.ipynb
    """
    k, s, p, d = _pair(kernel_size, "kernel_size", 1), *_settings(stride, padding, dilation)
    if x.ndim != 4:
        raise ValueError(f"im2col: input must be (N, C, H, W), got shape {tuple(x.shape)}")
    N, C, H, W = x.shape
    Ho, Wo = _output_hw(x.shape, (None, C) + k, k, s, p, d)
    xp = get_array_module(x)
    xpad = xp.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype=x.dtype)
    xpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W] = x
    cols = xp.empty((N, C, k[0], k[1], Ho, Wo), dtype=x.dtype)
    for i, j, tap in _patch_views(xpad, k, s, d, (Ho, Wo)):
        cols[:, :, i, j] = xpad[tap]               # every output pixel's (i, j) neighbour, all at once
    return cols.reshape(N, C * k[0] * k[1], Ho * Wo)


def col2im(cols, x_shape, kernel_size, stride=1, padding=0, dilation=1):
    """Adjoint of im2col: (N, C*kh*kw, Hout*Wout) -> (N, C, H, W), overlapping patches summed.

    col2im(ones) counts how many patches cover each input pixel.
    Chapter: nbs/01_convolution.ipynb
    """
    k, s, p, d = _pair(kernel_size, "kernel_size", 1), *_settings(stride, padding, dilation)
    N, C, H, W = x_shape
    Ho, Wo = _output_hw(x_shape, (None, C) + k, k, s, p, d)
    if tuple(cols.shape) != (N, C * k[0] * k[1], Ho * Wo):
        raise ValueError(f"col2im: columns {tuple(cols.shape)} do not fit input {tuple(x_shape)}, kernel {k}")
    xp = get_array_module(cols)
    cols = cols.reshape(N, C, k[0], k[1], Ho, Wo)
    dxpad = xp.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype=cols.dtype)
    for i, j, tap in _patch_views(dxpad, k, s, d, (Ho, Wo)):
        dxpad[tap] += cols[:, :, i, j]             # patches overlap when stride < kernel: add, never assign
    return dxpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


def _settings(stride, padding, dilation):
    return _pair(stride, "stride", 1), _pair(padding, "padding", 0), _pair(dilation, "dilation", 1)


def _common_dtype(xp, *arrays):
    return xp.result_type(*[a.dtype for a in arrays if a is not None])


# --- the reference products: one GEMM each --------------------------------------------------------------
def _conv_gemm(x, weight, s, p, d):
    """out (N, O, Hout, Wout) = W (O, K) @ im2col(x) (N, K, L)."""
    O, C, kh, kw = weight.shape
    Ho, Wo = _output_hw(x.shape, weight.shape, (kh, kw), s, p, d)
    cols = im2col(x, (kh, kw), s, p, d)                              # (N, C*kh*kw, Ho*Wo)
    out = weight.reshape(O, C * kh * kw) @ cols                       # (O, K) @ (N, K, L) -> (N, O, L)
    return out.reshape(x.shape[0], O, Ho, Wo)


def _input_grad_gemm(dout, weight, x_shape, s, p, d):
    """dX = col2im(W^T (K, O) @ dY (N, O, L)); dY may be short of the conv's output (output_padding)."""
    xp = get_array_module(dout, weight)
    O, C, kh, kw = weight.shape
    N, Ho, Wo = x_shape[0], *_output_hw(x_shape, weight.shape, (kh, kw), s, p, d)
    if dout.shape[2:] != (Ho, Wo):                                  # rows the conv makes but dY lacks
        full = xp.zeros((N, O, Ho, Wo), dtype=dout.dtype)
        full[:, :, :dout.shape[2], :dout.shape[3]] = dout
        dout = full
    cols = weight.reshape(O, C * kh * kw).T @ dout.reshape(N, O, Ho * Wo)   # (K, O) @ (N, O, L)
    return col2im(cols, x_shape, (kh, kw), s, p, d)


def _weight_grad_gemm(x, dout, w_shape, s, p, d):
    """dW (O, K) = sum over images of dY[n] (O, L) @ im2col(x)[n]^T (L, K)."""
    O, C, kh, kw = w_shape
    cols = im2col(x, (kh, kw), s, p, d)                              # (N, K, L)
    Ho, Wo = dout.shape[2:]
    cols = cols.reshape(x.shape[0], -1, *_output_hw(x.shape, w_shape, (kh, kw), s, p, d))[:, :, :Ho, :Wo]
    dy = dout.reshape(dout.shape[0], O, Ho * Wo)
    return (dy @ cols.reshape(x.shape[0], -1, Ho * Wo).transpose(0, 2, 1)).sum(axis=0).reshape(w_shape)


# --- conv2d ------------------------------------------------------------------------------------------
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
    out_hw = _output_hw(x.shape, weight.shape, weight.shape[2:], s, p, d)
    plan = fast.pick_conv(x.shape, weight.shape, s, p, d, on_device=is_cupy_array(x))  # None: the reference
    kept = []  # the Winograd engine keeps its transformed input V here, for the weight gradient
    if plan is not None:
        out = conv_engine.forward(plan.forward, x, weight, s, p, d, out_hw, kept if plan.keep_v else None)
    else:
        out = _conv_gemm(x, weight, s, p, d)                          # W @ im2col(x)
    if bias is not None:
        out += bias.astype(dtype, copy=False)[:, None, None]
    return out, (x, weight, bias is not None, s, p, d, plan, kept)


def conv2d_backward(dout, cache, needs_input_grad=(True, True, True)):
    """(dx, dweight, dbias): dW = dY @ cols^T, dX = col2im(W^T @ dY), db = sum of dY over N, H, W.

    Gradients the tape says nobody uses (`needs_input_grad`) are skipped: the first conv's dX
    (the image) and the dW of frozen layers cost as much as the forward.
    """
    x, weight, has_bias, s, p, d, plan, kept = cache
    dout = dout.astype(x.dtype, copy=False)
    need_dx, need_dw = needs_input_grad[0], needs_input_grad[1]
    if plan is not None:  # the engine's plan, chosen in the forward
        dx, dw = conv_engine.backward(plan, dout, x, weight, s, p, d, kept, need_dx, need_dw)
    else:
        # forward was out = W @ im2col(x)
        dx = _input_grad_gemm(dout, weight, x.shape, s, p, d) if need_dx else None
        dw = _weight_grad_gemm(x, dout, weight.shape, s, p, d) if need_dw else None
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
    # the conv2d whose input gradient this is: input out_shape, weight (C_in, C_out, kh, kw), dY = x
    plan = fast.pick_conv(out_shape, weight.shape, s, p, d, out_hw=(H, W), on_device=is_cupy_array(x))
    if plan is not None:
        out = conv_engine.input_grad(plan.dx, x, weight, out_shape, s, p, d)
    else:
        out = _input_grad_gemm(x, weight, out_shape, s, p, d)         # col2im(W^T @ x)
    if bias is not None:
        out = out + bias.astype(dtype, copy=False)[:, None, None]
    return out, (x, weight, bias is not None, s, p, d, plan)


def conv_transpose2d_backward(dout, cache):
    """(dx, dweight, dbias): dx = conv2d(dout, weight), dW = conv2d's weight-gradient with roles swapped."""
    x, weight, has_bias, s, p, d, plan = cache
    dout = dout.astype(x.dtype, copy=False)
    H, W = x.shape[2:]
    # forward was out = conv2d_input_grad(dY=x, W) for a conv2d whose input is `out`
    if plan is not None:
        full_hw = _output_hw(dout.shape, weight.shape, weight.shape[2:], s, p, d)
        dx = conv_engine.forward(plan.forward, dout, weight, s, p, d, full_hw)[:, :, :H, :W]
        dw = conv_engine.weight_grad(plan.dw, dout, x, weight.shape, s, p, d)
    else:
        dx = _conv_gemm(dout, weight, s, p, d)[:, :, :H, :W]          # output_padding rows drop out
        dw = _weight_grad_gemm(dout, x, weight.shape, s, p, d)
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
