"""Core layers: elementwise ops, linear, pooling, frozen batch norm, group norm, upsampling, reshapes.

Each op is a pair `name_forward(*arrays, **settings) -> (out, cache)` /
`name_backward(dout, cache) -> grads` plus one line `name = tape.op(name_forward, name_backward)`.
Positional arguments are arrays that may receive a gradient; keywords are settings.

Shapes:  images and feature maps (N, C, H, W); vectors (..., features)
Weights: as torch: linear weight (out, in); norm weight/bias (C,)
Caches:  kept minimal (relu: its output; frozen BN: the per-channel scale; add: two shapes)
Backend: xp = get_array_module(x) everywhere, so the same code runs on NumPy and CuPy
Chapter: nbs/02_layers_and_losses.ipynb
"""

from __future__ import annotations

import math

import numpy as np

from . import init, tape
from .backend import get_array_module, scatter_add
from .module import Module, Parameter
from .utils import pair

# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def _is_array(a):
    return hasattr(a, "shape") and hasattr(a, "dtype")


def _meta(a):
    """(shape, dtype) of an array input, or None for a Python scalar (which gets no gradient)."""
    return (tuple(a.shape), a.dtype) if _is_array(a) else None


def _unbroadcast(g, shape):
    """Sum `g` down to `shape`: the adjoint of NumPy broadcasting `shape` -> g.shape."""
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))                 # leading axes that were added
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)                 # axes of size 1 that were stretched
    return g.reshape(shape)


def _grad_for(g, meta):
    """Gradient for one broadcast input, in that input's dtype (None for a Python scalar)."""
    if meta is None:
        return None
    shape, dtype = meta
    return _unbroadcast(g, shape).astype(dtype, copy=False)


def _check_ndim(name, x, ndims):
    if x.ndim not in ndims:
        want = " or ".join(f"{d}-D" for d in ndims)
        raise ValueError(f"{name}: expected a {want} input, got shape {tuple(x.shape)}")


def _check_positive_finite(name, what, v):
    if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v > 0):
        raise ValueError(f"{name}: {what} must be a positive finite number, got {v!r}")


def _per_channel(v, ndim):
    """(C,) -> (1, C, 1, ..., 1) so it broadcasts along axis 1 of an ndim-D array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


# ------------------------------------------------------------------------------------------------
# elementwise arithmetic and reductions
# ------------------------------------------------------------------------------------------------


def add_forward(a, b):
    """a + b with NumPy broadcasting; either may be a Python scalar (which gets no gradient)."""
    xp = get_array_module(a, b)
    return xp.asarray(a + b), (_meta(a), _meta(b))


def add_backward(dout, cache):
    meta_a, meta_b = cache
    # forward was: out = a + b (broadcast) -> each input gets dout summed over its broadcast axes
    return _grad_for(dout, meta_a), _grad_for(dout, meta_b)


add = tape.op(add_forward, add_backward)


def mul_forward(a, b):
    """a * b with broadcasting; b (or a) may be a Python scalar. Caches only what backward needs."""
    # d/da needs b, d/db needs a; a Python scalar needs no gradient, so its partner is not kept
    keep_a = a if _is_array(b) else None
    xp = get_array_module(a, b)
    return xp.asarray(a * b), (keep_a, b, _meta(a), _meta(b))


def mul_backward(dout, cache):
    a, b, meta_a, meta_b = cache
    # forward was: out = a * b -> da = dout * b, db = dout * a (then undo the broadcasting)
    ga = _grad_for(dout * b, meta_a) if meta_a is not None else None
    gb = _grad_for(dout * a, meta_b) if meta_b is not None else None
    return ga, gb


mul = tape.op(mul_forward, mul_backward)


def sum_all_forward(x):
    """Sum of every element -> array of shape ()."""
    xp = get_array_module(x)
    return xp.asarray(xp.sum(x)), (tuple(x.shape), x.dtype)


def sum_all_backward(dout, cache):
    shape, dtype = cache
    xp = get_array_module(dout)
    # forward was: out = sum(x) -> every element gets dout (a fresh writable array, not a view)
    return xp.broadcast_to(dout.astype(dtype, copy=False), shape).copy()


sum_all = tape.op(sum_all_forward, sum_all_backward)


def mean_all_forward(x):
    """Mean of every element -> array of shape ()."""
    xp = get_array_module(x)
    if x.size == 0:
        raise ValueError(f"mean_all: empty input of shape {tuple(x.shape)}")
    return xp.asarray(xp.mean(x)), (tuple(x.shape), x.dtype)


def mean_all_backward(dout, cache):
    shape, dtype = cache
    xp = get_array_module(dout)
    # forward was: out = sum(x) / size
    g = dout.astype(dtype, copy=False) / math.prod(shape)
    return xp.broadcast_to(g, shape).copy()


mean_all = tape.op(mean_all_forward, mean_all_backward)


# ------------------------------------------------------------------------------------------------
# linear, relu, sigmoid, softmax
# ------------------------------------------------------------------------------------------------


def linear_forward(x, weight, bias=None):
    """y = x @ weight^T + bias, as torch.nn.functional.linear. x (..., in), weight (out, in), bias (out,)."""
    if weight.ndim != 2 or x.ndim < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(
            f"linear: input {tuple(x.shape)} does not match weight {tuple(weight.shape)} (need x (..., in), "
            "weight (out, in))"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ValueError(f"linear: bias {tuple(bias.shape)} does not match weight {tuple(weight.shape)}")
    y = x @ weight.T                                        # (..., out)
    if bias is not None:
        y += bias
    return y, (x, weight, bias is not None)


def linear_backward(dout, cache):
    x, weight, has_bias = cache
    n_in, n_out = weight.shape[1], weight.shape[0]
    # forward was: y = x @ W^T + b
    dx = dout @ weight                                      # (..., in)
    g2 = dout.reshape(-1, n_out)                            # (M, out)
    dw = g2.T @ x.reshape(-1, n_in)                         # (out, in)
    db = g2.sum(axis=0) if has_bias else None               # (out,)
    return dx, dw, db


linear = tape.op(linear_forward, linear_backward)


def relu_forward(x):
    """max(x, 0). Caches its output (shared with whoever keeps it next), not a copy of x."""
    xp = get_array_module(x)
    out = xp.maximum(x, 0)
    return out, out


def relu_backward(dout, out):
    # forward was: out = max(x, 0) -> gradient passes where out > 0 (x > 0), zero elsewhere
    # (a multiply by the mask, not xp.where, which NumPy runs slowly on unpredictable masks)
    return dout * (out > 0)


relu = tape.op(relu_forward, relu_backward)


def sigmoid_forward(x):
    """1 / (1 + exp(-x)), computed without overflow for large |x|. Caches its output."""
    xp = get_array_module(x)
    e = xp.exp(-xp.abs(x))                                  # in (0, 1], never overflows
    neg = x < 0
    # x >= 0: 1 / (1 + e^-x);  x < 0: e^x / (1 + e^x); blended with the mask (branch-free)
    out = (1 + neg * (e - 1)) / (1 + e)
    return out, out


def sigmoid_backward(dout, out):
    # forward was: s = sigmoid(x) -> ds/dx = s (1 - s)
    return dout * out * (1 - out)


sigmoid = tape.op(sigmoid_forward, sigmoid_backward)


def softmax_forward(x, dim=-1):
    """exp(x) / sum(exp(x)) along `dim` (max subtracted first). Caches its output."""
    xp = get_array_module(x)
    z = x - xp.max(x, axis=dim, keepdims=True)
    e = xp.exp(z)
    out = e / xp.sum(e, axis=dim, keepdims=True)
    return out, (out, dim)


def softmax_backward(dout, cache):
    out, dim = cache
    xp = get_array_module(dout)
    # forward was: y_i = exp(x_i) / sum_j exp(x_j) -> dx = y * (dout - sum_j dout_j y_j)
    return out * (dout - xp.sum(dout * out, axis=dim, keepdims=True))


softmax = tape.op(softmax_forward, softmax_backward)


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
    _check_ndim("max_pool2d", x, (4,))
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


# ------------------------------------------------------------------------------------------------
# normalisation
# ------------------------------------------------------------------------------------------------


def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, eps=1e-5):
    """torchvision's FrozenBatchNorm2d: y = x * scale + shift, per channel (axis 1).

    scale = weight / sqrt(running_var + eps), shift = bias - running_mean * scale.
    x (N, C, ...) ; the four statistics (C,) are buffers: only x gets a gradient.
    """
    if x.ndim < 2:
        raise ValueError(f"frozen_batch_norm: expected (N, C, ...) input, got shape {tuple(x.shape)}")
    C = x.shape[1]
    for name, v in (("weight", weight), ("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var)):
        if tuple(v.shape) != (C,):
            raise ValueError(f"frozen_batch_norm: {name} {tuple(v.shape)} does not match input {tuple(x.shape)}")
    _check_positive_finite("frozen_batch_norm", "eps", eps)
    xp = get_array_module(x)
    scale = weight * (1 / xp.sqrt(running_var + eps))       # (C,)
    shift = bias - running_mean * scale                     # (C,)
    scale = _per_channel(scale, x.ndim)                     # (1, C, 1, 1)
    out = x * scale
    out += _per_channel(shift, x.ndim)
    return out, scale


def frozen_batch_norm_backward(dout, scale):
    # forward was: y = x * scale + shift -> dx = dout * scale (statistics are frozen buffers)
    return (dout * scale).astype(dout.dtype, copy=False)


frozen_batch_norm = tape.op(frozen_batch_norm_forward, frozen_batch_norm_backward)


def group_norm_forward(x, weight=None, bias=None, num_groups=32, eps=1e-5):
    """Group normalisation (Wu & He 2018), torch semantics (biased variance over each group).

    x (N, C, ...) -> same shape; weight, bias (C,) or None (no affine).
    NOTE the argument order differs from torch.nn.functional.group_norm(x, num_groups, weight, bias):
    here the differentiable arrays are positional and `num_groups`, `eps` are keyword settings.
    """
    if x.ndim < 2:
        raise ValueError(f"group_norm: expected (N, C, ...) input, got shape {tuple(x.shape)}")
    N, C = x.shape[0], x.shape[1]
    G = num_groups
    if not isinstance(G, (int, np.integer)) or G < 1 or C % G != 0:
        raise ValueError(f"group_norm: num_groups={G!r} must be a positive divisor of the {C} channels "
                         f"of input {tuple(x.shape)}")
    for name, v in (("weight", weight), ("bias", bias)):
        if v is not None and tuple(v.shape) != (C,):
            raise ValueError(f"group_norm: {name} {tuple(v.shape)} does not match input {tuple(x.shape)}")
    _check_positive_finite("group_norm", "eps", eps)
    xp = get_array_module(x)
    xg = x.reshape(N, G, -1)                                # (N, G, C/G * S)
    mean = xg.mean(axis=2, keepdims=True)                   # (N, G, 1)
    xc = xg - mean
    var = (xc * xc).mean(axis=2, keepdims=True)             # biased, as torch
    rstd = 1 / xp.sqrt(var + eps)                           # (N, G, 1)
    xc *= rstd                                              # x_hat, (N, G, C/G * S)
    out = xc.reshape(x.shape)
    if weight is not None:
        out *= _per_channel(weight, x.ndim)
    if bias is not None:
        out += _per_channel(bias, x.ndim)
    # like torch: keep x (held by its producer anyway), mean and rstd; x_hat is recomputed
    return out, (x, mean, rstd, weight, bias is not None, G)


def group_norm_backward(dout, cache):
    x, mean, rstd, weight, has_bias, G = cache
    N = x.shape[0]
    reduce_axes = (0,) + tuple(range(2, x.ndim))            # all but the channel axis
    xhat = ((x.reshape(N, G, -1) - mean) * rstd)            # (N, G, M)
    # forward was: y = x_hat * w + b
    db = dout.sum(axis=reduce_axes) if has_bias else None   # (C,)
    dw = (dout * xhat.reshape(x.shape)).sum(axis=reduce_axes) if weight is not None else None
    dxhat = dout * _per_channel(weight, x.ndim) if weight is not None else dout
    dxhat = dxhat.reshape(N, G, -1)                         # (N, G, M)
    # x_hat = (x - mean) * rstd over each group of M elements:
    #   dx = rstd * (dxhat - mean(dxhat) - x_hat * mean(dxhat * x_hat))
    dx = dxhat - dxhat.mean(axis=2, keepdims=True)
    dx -= xhat * (dxhat * xhat).mean(axis=2, keepdims=True)
    dx *= rstd
    return dx.reshape(x.shape).astype(x.dtype, copy=False), dw, db


group_norm = tape.op(group_norm_forward, group_norm_backward)


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
    _check_ndim("interpolate", x, (4,))
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
            _check_positive_finite("interpolate", "scale_factor", s)
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


# ------------------------------------------------------------------------------------------------
# shape ops
# ------------------------------------------------------------------------------------------------


def concatenate_forward(*arrays, axis=0):
    """Join arrays along `axis`; each input gets the matching slice of the gradient."""
    if not arrays:
        raise ValueError("concatenate: needs at least one array")
    xp = get_array_module(*arrays)
    first = arrays[0]
    ax = axis % first.ndim if first.ndim else 0
    for a in arrays[1:]:
        if a.ndim != first.ndim or tuple(np.delete(a.shape, ax)) != tuple(np.delete(first.shape, ax)):
            raise ValueError(
                f"concatenate: shapes {[tuple(b.shape) for b in arrays]} differ outside axis {axis}"
            )
    sizes = [a.shape[ax] for a in arrays]
    return xp.concatenate(arrays, axis=ax), (sizes, ax)


def concatenate_backward(dout, cache):
    sizes, ax = cache
    grads, start = [], 0
    for n in sizes:
        # forward was: out = [a_0 | a_1 | ...] along ax -> a_k gets its slice back
        index = (slice(None),) * ax + (slice(start, start + n),)
        grads.append(dout[index])
        start += n
    return tuple(grads)


concatenate = tape.op(concatenate_forward, concatenate_backward)


def reshape_forward(x, shape):
    """x.reshape(shape); `shape` is a setting (a tuple, -1 allowed)."""
    try:
        return x.reshape(shape), tuple(x.shape)
    except ValueError:
        raise ValueError(f"reshape: cannot reshape {tuple(x.shape)} to {shape}") from None


def reshape_backward(dout, x_shape):
    return dout.reshape(x_shape)


reshape = tape.op(reshape_forward, reshape_backward)


def flatten_forward(x, start_dim=1):
    """Merge the axes from `start_dim` on, as torch.flatten(x, start_dim): (N, C, H, W) -> (N, C*H*W)."""
    if x.ndim == 0:
        return x.reshape(1), tuple(x.shape)
    sd = start_dim % x.ndim
    merged = math.prod(x.shape[sd:])            # not -1: zero RoIs (0, C, 7, 7) must give (0, C*49)
    return x.reshape(tuple(x.shape[:sd]) + (merged,)), tuple(x.shape)


def flatten_backward(dout, x_shape):
    return dout.reshape(x_shape)


flatten = tape.op(flatten_forward, flatten_backward)


def transpose_forward(x, axes):
    """Permute the axes, as np.transpose(x, axes) (torch: x.permute(*axes))."""
    axes = tuple(int(a) for a in axes)
    if sorted(a % x.ndim for a in axes) != list(range(x.ndim)):
        raise ValueError(f"transpose: axes {axes} are not a permutation of the {x.ndim} axes of {tuple(x.shape)}")
    xp = get_array_module(x)
    return xp.transpose(x, axes), axes


def transpose_backward(dout, axes):
    xp = get_array_module(dout)
    # forward was: out = transpose(x, axes) -> apply the inverse permutation
    return xp.transpose(dout, tuple(np.argsort([a % dout.ndim for a in axes])))


transpose = tape.op(transpose_forward, transpose_backward)


def gather_rows_forward(x, index):
    """x[index] along axis 0 for an integer array `index` (a setting; repeats allowed)."""
    xp = get_array_module(x)
    index = xp.asarray(index)
    if index.dtype.kind not in "iu":
        raise ValueError(f"gather_rows: index must be an integer array, got {index.dtype}")
    if x.ndim == 0:
        raise ValueError("gather_rows: x must have at least one axis")
    index = xp.where(index < 0, index + x.shape[0], index)  # so the backward scatter sees only n >= 0
    return x[index], (index, tuple(x.shape), x.dtype)


def gather_rows_backward(dout, cache):
    index, x_shape, dtype = cache
    xp = get_array_module(dout)
    dx = xp.zeros(x_shape, dtype=dout.dtype)
    # forward was: out = x[index] -> scatter back; repeated rows accumulate
    scatter_add(dx, index, dout)
    return dx.astype(dtype, copy=False)


gather_rows = tape.op(gather_rows_forward, gather_rows_backward)


# ------------------------------------------------------------------------------------------------
# modules (torch.nn names, torchvision state-dict keys)
# ------------------------------------------------------------------------------------------------


class Linear(Module):
    """y = x W^T + b. Parameters `weight` (out, in), `bias` (out,); torch's default init."""

    def __init__(self, in_features, out_features, bias=True, rng=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(init.torch_default_weight((out_features, in_features), rng=rng))
        self.bias = Parameter(init.torch_default_bias(out_features, in_features, rng=rng)) if bias else None

    def forward(self, x):
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class ReLU(Module):
    def forward(self, x):
        return relu(x)


class MaxPool2d(Module):
    """Max pooling, torch semantics (see `max_pool2d`)."""

    def __init__(self, kernel_size, stride=None, padding=0):
        super().__init__()
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return max_pool2d(x, kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class FrozenBatchNorm2d(Module):
    """Batch norm with fixed statistics and affine, as torchvision.ops.misc.FrozenBatchNorm2d.

    Buffers (not trained): `weight` (1), `bias` (0), `running_mean` (0), `running_var` (1), each (C,).
    """

    def __init__(self, num_features, eps=1e-5):
        super().__init__()
        self.num_features, self.eps = num_features, eps
        self.register_buffer("weight", init.ones((num_features,)))
        self.register_buffer("bias", init.zeros((num_features,)))
        self.register_buffer("running_mean", init.zeros((num_features,)))
        self.register_buffer("running_var", init.ones((num_features,)))

    def forward(self, x):
        return frozen_batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}"


class GroupNorm(Module):
    """Group norm, torch.nn.GroupNorm(num_groups, num_channels): Parameters `weight` (1), `bias` (0)."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"GroupNorm: num_groups={num_groups} does not divide num_channels={num_channels}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, eps
        self.weight = Parameter(init.ones((num_channels,))) if affine else None
        self.bias = Parameter(init.zeros((num_channels,))) if affine else None

    def forward(self, x):
        return group_norm(x, self.weight, self.bias, num_groups=self.num_groups, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}"


class Flatten(Module):
    def __init__(self, start_dim=1):
        super().__init__()
        self.start_dim = start_dim

    def forward(self, x):
        return flatten(x, start_dim=self.start_dim)
