"""Max pooling (the ResNet stem's 3x3/2 and FPN's P6), nearest-neighbour upsampling (FPN's top-down path),
and bilinear resizing of images and masks (the input transform, mask pasting).

Shapes:  x (N, C, H, W) -> (N, C, Hout, Wout); output sizes as torch (floor mode)
Chapter: nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from . import tape
from .backend import get_array_module
from .module import Module
from .utils import check_ndim, check_positive_finite, pair

# ------------------------------------------------------------------------------------------------
# max pooling
# ------------------------------------------------------------------------------------------------


def _pool_geometry(x, kernel_size, stride, padding):
    kh, kw = pair(kernel_size, "max_pool2d: kernel_size")
    sh, sw = pair(kernel_size if stride is None else stride, "max_pool2d: stride")
    ph, pw = pair(padding, "max_pool2d: padding")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"max_pool2d: kernel {kh, kw} and stride {sh, sw} must be >= 1, padding >= 0")
    if 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"max_pool2d: padding {ph, pw} must be at most half the kernel {kh, kw} (as torch)")
    H, W = x.shape[2], x.shape[3]
    oh = (H + 2 * ph - kh) // sh + 1                        # floor mode, as torch's default
    ow = (W + 2 * pw - kw) // sw + 1
    if oh < 1 or ow < 1:
        raise ValueError(
            f"max_pool2d: input {tuple(x.shape)} too small for kernel {kh, kw} with padding {ph, pw}"
        )
    return kh, kw, sh, sw, ph, pw, oh, ow


def max_pool2d_forward(x, kernel_size, stride=None, padding=0):
    """Max over kh*kw windows, torch semantics: -inf padding, floor mode, stride defaults to kernel.

    x (N, C, H, W) float -> (N, C, OH, OW) with OH = floor((H + 2p - kh) / s) + 1.
    Caches the argmax tap (0..kh*kw-1, first max in row-major order on ties, as torch) per output.
    """
    check_ndim("max_pool2d", x, (4,))
    if x.dtype.kind != "f":
        raise ValueError(f"max_pool2d: needs a floating input (for -inf padding), got {x.dtype}")
    xp = get_array_module(x)
    kh, kw, sh, sw, ph, pw, oh, ow = _pool_geometry(x, kernel_size, stride, padding)
    xpad = x
    if ph or pw:
        xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    arg_dtype = np.uint8 if kh * kw <= 256 else np.int32
    # The max over a kh x kw window is a max over kw columns, then over kh rows (separable; strided
    # slices are slow, so this halves the work on them). Ties go to the first max in row-major
    # order, as torch: the first row holding the window max, and within it the first column. The
    # maxima use xp.maximum (NaN propagates, as torch); then each arg is found by comparing every
    # tap with the max, last tap first, so that the earliest equal tap is written last.
    # (`arg += (new - arg) * eq` is a branch-free `where`: NumPy's where is slow on random masks.)
    cols = [xpad[:, :, :, j : j + sw * (ow - 1) + 1 : sw] for j in range(kw)]         # (N, C, Hp, OW)
    row_max = cols[0].copy()
    for v in cols[1:]:
        xp.maximum(row_max, v, out=row_max)
    col_arg = xp.zeros(row_max.shape, dtype=arg_dtype)                                # (N, C, Hp, OW)
    eq = xp.empty(row_max.shape, dtype=bool)
    for j in reversed(range(kw)):
        xp.equal(cols[j], row_max, out=eq)
        step = xp.subtract(arg_dtype(j), col_arg)           # modular for uint8: arg + step == j
        step *= eq
        col_arg += step
    rows = [slice(i, i + sh * (oh - 1) + 1, sh) for i in range(kh)]
    out = row_max[:, :, rows[0]].copy()                                                # (N, C, OH, OW)
    for r in rows[1:]:
        xp.maximum(out, row_max[:, :, r], out=out)
    arg = xp.zeros(out.shape, dtype=arg_dtype)                                         # tap i * kw + j
    eq = xp.empty(out.shape, dtype=bool)
    for i in reversed(range(kh)):
        xp.equal(row_max[:, :, rows[i]], out, out=eq)
        step = col_arg[:, :, rows[i]] + arg_dtype(i * kw)
        step -= arg
        step *= eq
        arg += step
    return out, (arg, tuple(x.shape), (kh, kw, sh, sw, ph, pw))


def max_pool2d_backward(dout, cache):
    arg, x_shape, (kh, kw, sh, sw, ph, pw) = cache
    xp = get_array_module(dout)
    N, C, H, W = x_shape
    oh, ow = dout.shape[2], dout.shape[3]
    dx = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dout.dtype)
    # forward was: out = xpad[tap window at argmax] -> route dout to that tap; windows of different
    # taps overlap, so add tap by tap (within one tap the strided slice has no repeated pixels)
    for t in range(kh * kw):
        i, j = divmod(t, kw)
        dx[:, :, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw] += dout * (arg == t)
    return dx[:, :, ph : ph + H, pw : pw + W]


max_pool2d = tape.op(max_pool2d_forward, max_pool2d_backward)


class MaxPool2d(Module):
    """Max pooling, torch semantics (see `max_pool2d`)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return max_pool2d(x, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


# ------------------------------------------------------------------------------------------------
# nearest-neighbour upsampling
# ------------------------------------------------------------------------------------------------


def _nearest_index(n_in, n_out, scale_factor=None):
    """Source index per output index, as torch's 'nearest': floor(dst * scale) in float32, clamped.

    scale = 1 / scale_factor when a scale factor was given, else n_in / n_out (torch does the same).
    Host-side (NumPy) int64 array of shape (n_out,).
    """
    scale = np.float32(1.0 / scale_factor) if scale_factor is not None else np.float32(n_in) / np.float32(n_out)
    idx = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(idx, n_in - 1)


def interpolate_forward(x, scale_factor=None, size=None):
    """Nearest-neighbour resize of x (N, C, H, W), torch's mode='nearest'.

    Give exactly one of `size` (int or (OH, OW)) or `scale_factor` (number or pair); with a scale
    factor OH = floor(H * scale_factor). Source row of output row d: floor(d * H / OH) (float32).
    """
    check_ndim("interpolate", x, (4,))
    if (size is None) == (scale_factor is None):
        raise ValueError("interpolate: give exactly one of size or scale_factor")
    xp = get_array_module(x)
    N, C, H, W = x.shape
    if size is not None:
        oh, ow = pair(size, "interpolate: size")
        sf = (None, None)
    else:
        sf = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor, scale_factor)
        for s in sf:
            check_positive_finite("interpolate", "scale_factor", s)
        oh, ow = math.floor(H * float(sf[0])), math.floor(W * float(sf[1]))
    if oh < 1 or ow < 1 or H < 1 or W < 1:
        raise ValueError(f"interpolate: input {tuple(x.shape)} to output size {(oh, ow)} is empty")
    iy = _nearest_index(H, oh, sf[0])                       # (OH,) host
    ix = _nearest_index(W, ow, sf[1])                       # (OW,) host
    ry, rx = oh // H, ow // W
    if oh == ry * H and ow == rx * W and (iy == np.arange(oh) // ry).all() and (ix == np.arange(ow) // rx).all():
        # integer factors: repeat each pixel in an ry x rx block (copy, so out never aliases x)
        if ry == rx == 1:
            return x.copy(), (tuple(x.shape), (1, 1), None, None)
        out = xp.broadcast_to(x[:, :, :, None, :, None], (N, C, H, ry, W, rx)).reshape(N, C, oh, ow)
        return out, (tuple(x.shape), (ry, rx), None, None)
    out = x[:, :, xp.asarray(iy)[:, None], xp.asarray(ix)[None, :]]   # (N, C, OH, OW)
    return out, (tuple(x.shape), None, iy, ix)


def _sum_into_sources(g, idx, n_in, axis):
    """Adjoint of `take(x, idx, axis)` for a non-decreasing idx: sum g's slices into n_in sources.

    idx is sorted, so the outputs fed by source s are the run first[s] .. first[s] + count[s] - 1;
    we add the k-th member of every run at once, for k = 0 .. max count - 1 (a few iterations).
    """
    xp = get_array_module(g)
    count = np.bincount(idx, minlength=n_in)                # (n_in,) host
    first = np.cumsum(count) - count
    shape = [1] * g.ndim
    shape[axis] = n_in
    out = None
    for k in range(int(count.max())):
        rows = np.minimum(first + k, g.shape[axis] - 1)
        term = xp.take(g, xp.asarray(rows), axis=axis)
        full = k < count                                    # (n_in,) host: which runs have a k-th member
        if not full.all():
            term = term * xp.asarray(full.reshape(shape), dtype=g.dtype)
        out = term if out is None else out + term
    return out


def interpolate_backward(dout, cache):
    x_shape, factors, iy, ix = cache
    N, C, H, W = x_shape
    # forward was: out[..., d, e] = x[..., iy[d], ix[e]] -> each source sums the outputs that copied it
    if factors is not None:
        # integer factors: add the ry rows, then the rx columns, of every block (slices of a
        # reshape; much faster in NumPy than .sum over the two scattered block axes)
        ry, rx = factors
        g = dout.reshape(N, C, H, ry, W * rx)
        rows = g[:, :, :, 0].copy()
        for i in range(1, ry):
            rows += g[:, :, :, i]                           # (N, C, H, W * rx)
        g = rows.reshape(N, C, H, W, rx)
        out = g[..., 0].copy()
        for j in range(1, rx):
            out += g[..., j]                                # (N, C, H, W)
        return out
    g = _sum_into_sources(dout, iy, H, axis=2)              # (N, C, H, OW)
    return _sum_into_sources(g, ix, W, axis=3)              # (N, C, H, W)


interpolate = tape.op(interpolate_forward, interpolate_backward)


# --- bilinear resizing of images and masks (no gradient: the transform and mask pasting) -----------
def _linear_weights(n_in, n_out):
    """Source indices (i0, i1) and weights (l0, l1), each (n_out,), of torch's align_corners=False
    linear interpolation, on the host, as torch computes them for float input: src = max(scale *
    (dst + 0.5) - 0.5, 0) rounded once to float32 (a fused multiply-add) with scale = n_in / n_out; i0 = floor(src);
    i1 = i0 + 1 except at the last row; l1 = src - i0, l0 = 1 - l1."""
    scale = np.float32(n_in) / np.float32(n_out)
    # torch's compiled kernel fuses the multiply-add (one rounding): exact in float64, then rounded
    src = (np.float64(scale) * (np.arange(n_out, dtype=np.float64) + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    l1 = np.clip(src - i0.astype(np.float32), np.float32(0), np.float32(1))
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, np.float32(1) - l1, l1


def resize_bilinear(x, size):
    """Resize the last two axes of x (..., H, W) to `size` = (OH, OW), as torch's
    `F.interpolate(x, size, mode="bilinear", align_corners=False)` (no antialiasing).

    out = l0h (l0w x[h0, w0] + l1w x[h0, w1]) + l1h (l0w x[h1, w0] + l1w x[h1, w1]), in x's dtype.
    Chapter: nbs/11_mask_rcnn.ipynb
    """
    if x.ndim < 2:
        raise ValueError(f"resize_bilinear: expected (..., H, W), got shape {tuple(x.shape)}")
    oh, ow = int(size[0]), int(size[1])
    H, W = x.shape[-2], x.shape[-1]
    if oh < 1 or ow < 1 or H < 1 or W < 1:
        raise ValueError(f"resize_bilinear: cannot resize {tuple(x.shape)} to {(oh, ow)}")
    xp = get_array_module(x)
    dt = x.dtype
    h0, h1, lh0, lh1 = (xp.asarray(a) for a in _linear_weights(H, oh))
    w0, w1, lw0, lw1 = (xp.asarray(a) for a in _linear_weights(W, ow))
    lh0, lh1 = lh0.astype(dt)[:, None], lh1.astype(dt)[:, None]        # (OH, 1)
    lw0, lw1 = lw0.astype(dt), lw1.astype(dt)                          # (OW,)
    top, bottom = x[..., h0, :], x[..., h1, :]                          # (..., OH, W)
    return lh0 * (lw0 * top[..., w0] + lw1 * top[..., w1]) + lh1 * (lw0 * bottom[..., w0] + lw1 * bottom[..., w1])
