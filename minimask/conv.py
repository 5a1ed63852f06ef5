"""Convolution as matrix multiplication: im2col / col2im, conv2d and conv_transpose2d, and their modules.

Shapes:  x (N, C, H, W); conv2d weight (O, C, kh, kw); conv_transpose2d weight (C_in, C_out, kh, kw),
         both as torch. Output size per axis: Hout = (H + 2p - d (k - 1) - 1) // s + 1 (torch's formula).
Columns: im2col(x) is (N, C*kh*kw, Hout*Wout), rows ordered (c, i, j) like weight.reshape(O, -1), so
         conv2d = weight.reshape(O, -1) @ im2col(x), and col2im is its adjoint (overlapping patches add).
Paths:   1x1 convs: a matmul on a reshape (stride 2: a strided slice first), no columns at all.
         stride 1, k > 1: "shifted views": on the zero-padded input flattened to (C, Hp*Wp), kernel tap
         (i, j) reads the contiguous range starting at i*dh*Wp + j*dw, a strided 2-D view BLAS reads in
         place; the output is computed on the padded-width grid (Hout, Wp) and the extra columns dropped.
         everything else (strided k > 1): im2col + ONE matmul per chunk of images (or output rows),
         chunks sized so the column buffer stays under COL_BUDGET_BYTES.
Memory:  the forward cache keeps only x and weight; backward recomputes what it needs.
Adjoint: conv_transpose2d(x, w) is the input-gradient of conv2d with weight w, and vice versa.
Chapter: nbs/01_convolution.ipynb
"""

from __future__ import annotations

from . import init, tape
from .backend import get_array_module
from .module import Module, Parameter

COL_BUDGET_BYTES = 1 << 30  # largest im2col buffer built at once; bigger batches go in chunks
SHIFT_BLOCK_BYTES = 8 << 20  # shifted-view path: output columns are accumulated in blocks of this size
SHIFT_MAX_WASTE = 0.1  # shifted-view path only while (Wp - Wout) / Wout stays below this


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


def _pad_or_crop(x, ph, pw):
    """Zero-pad the last two axes by (ph, pw) on each side; a negative amount crops instead."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    ch, cw = max(0, -ph), max(0, -pw)
    out[:, :, max(0, ph):max(0, ph) + H - 2 * ch, max(0, pw):max(0, pw) + W - 2 * cw] = (
        x[:, :, ch:H - ch, cw:W - cw]
    )
    return out


# --- im2col / col2im ---------------------------------------------------------------------------------
def _im2col_padded(xpad, kernel, stride, dilation, out_hw):
    """Columns of an already padded input: (N, C, Hp, Wp) -> (N, C*kh*kw, Hout*Wout).

    One strided-slice copy per kernel tap (i, j): cols[:, :, i, j] = xpad[:, :, i*dh :: sh, j*dw :: sw].
    """
    xp = get_array_module(xpad)
    N, C = xpad.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    cols = xp.empty((N, C, kh, kw, Ho, Wo), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            r, c = i * dh, j * dw
            cols[:, :, i, j] = xpad[:, :, r:r + sh * (Ho - 1) + 1:sh, c:c + sw * (Wo - 1) + 1:sw]
    return cols.reshape(N, C * kh * kw, Ho * Wo)


def _col2im_padded_add(cols, dxpad, kernel, stride, dilation, out_hw):
    """Adjoint of `_im2col_padded`: add each tap's columns back into the padded gradient, in place."""
    N, C = dxpad.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    for i in range(kh):  # taps overlap when stride < dilated kernel: they must add, never assign
        for j in range(kw):
            r, c = i * dh, j * dw
            dxpad[:, :, r:r + sh * (Ho - 1) + 1:sh, c:c + sw * (Wo - 1) + 1:sw] += cols[:, :, i, j]
    return dxpad


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
    return _im2col_padded(_pad_or_crop(x, *p), k, s, d, out_hw)


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
    dxpad = xp.zeros((N, C, H + 2 * p[0], W + 2 * p[1]), dtype=cols.dtype)
    _col2im_padded_add(cols, dxpad, k, s, d, out_hw)
    return dxpad[:, :, p[0]:p[0] + H, p[1]:p[1] + W]


def _chunks(N, out_hw, col_rows, itemsize):
    """Yield (n0, n1, r0, r1): images [n0, n1) and output rows [r0, r1) whose columns fit the budget."""
    Ho, Wo = out_hw
    row_bytes = col_rows * Wo * itemsize  # one output row of one image
    per_image = row_bytes * Ho
    if per_image <= COL_BUDGET_BYTES:
        nb = max(1, COL_BUDGET_BYTES // max(per_image, 1))
        for n0 in range(0, N, nb):
            yield n0, min(N, n0 + nb), 0, Ho
    else:  # one image is too big: split its output rows
        rb = max(1, COL_BUDGET_BYTES // row_bytes)
        for n in range(N):
            for r0 in range(0, Ho, rb):
                yield n, n + 1, r0, min(Ho, r0 + rb)


def _row_slice(r0, r1, s, d, k):
    """Padded-input rows read by output rows [r0, r1)."""
    return slice(r0 * s, (r1 - 1) * s + d * (k - 1) + 1)


# --- the shifted-view path (stride 1) --------------------------------------------------------------
def _padded_grid(xp, C, Hp, Wp, dtype):
    """A zero (C, Hp + 1, Wp) buffer: the extra row lets the last taps' views run past Hp*Wp."""
    return xp.zeros((C, Hp + 1, Wp), dtype=dtype)


def _shifted_conv(x, weight, padding, dilation):
    """Stride-1 conv2d without im2col. x (N, C, H, W), weight (O, C, kh, kw); padding may be negative (crop).

    out[:, r*Wp + c] = sum over taps (i, j) of weight[:, :, i, j] @ flat[:, (r + i dh) * Wp + c + j dw]:
    each tap is one matmul on a view of the flattened padded input; columns c >= Wout are dropped.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    (ph, pw), (dh, dw) = padding, dilation
    Hp, Wp = H + 2 * ph, W + 2 * pw
    Ho, Wo = Hp - dh * (kh - 1), Wp - dw * (kw - 1)
    L = Ho * Wp  # outputs on the padded-width grid
    taps = xp.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(kh * kw, O, C)
    offsets = [i * dh * Wp + j * dw for i in range(kh) for j in range(kw)]
    grid = _padded_grid(xp, C, Hp, Wp, x.dtype)  # borders stay zero; the interior is rewritten per image
    flat = grid.reshape(C, (Hp + 1) * Wp)
    ch, cw = max(0, -ph), max(0, -pw)
    block = max(Wp, min(L, SHIFT_BLOCK_BYTES // (O * x.dtype.itemsize)))
    acc = xp.empty((O, L), dtype=x.dtype)
    tmp = xp.empty((O, min(block, L)), dtype=x.dtype)
    out = xp.empty((N, O, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        grid[:, max(0, ph):max(0, ph) + H - 2 * ch, max(0, pw):max(0, pw) + W - 2 * cw] = (
            x[n, :, ch:H - ch, cw:W - cw]
        )
        for l0 in range(0, L, block):
            l1 = min(L, l0 + block)
            a, t = acc[:, l0:l1], tmp[:, :l1 - l0]
            xp.matmul(taps[0], flat[:, offsets[0] + l0:offsets[0] + l1], out=a)
            for tap in range(1, kh * kw):  # (O, C) @ (C, l1 - l0), a view with leading dimension (Hp+1)*Wp
                xp.matmul(taps[tap], flat[:, offsets[tap] + l0:offsets[tap] + l1], out=t)
                a += t
        out[n] = acc.reshape(O, Ho, Wp)[:, :, :Wo]
    return out


def _shifted_weight_grad(x, dout, kernel, padding, dilation):
    """Stride-1 weight gradient without im2col, one matmul per kernel row i.

    Z stacks kw shifted copies of the flattened padded input: Z[(c, j), :] = flat[c, j*dw:]. Then the
    K index (c, j) has one stride, and row i of the kernel is the view Z[:, i*dh*Wp : i*dh*Wp + L]:
    dW[:, :, i, :] = sum_n dY_n (O, L) @ view^T (L, C*kw). kw copies of the input instead of kh*kw.
    """
    xp = get_array_module(x)
    N, C, H, W = x.shape
    O, Ho, Wo = dout.shape[1:]
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    Hp, Wp = H + 2 * ph, W + 2 * pw
    L = Ho * Wp
    Lz = (Hp + 1) * Wp - dw * (kw - 1)
    grid = _padded_grid(xp, C, Hp, Wp, x.dtype)
    flat = grid.reshape(C, (Hp + 1) * Wp)
    Z = xp.empty((C, kw, Lz), dtype=x.dtype)
    Z2 = Z.reshape(C * kw, Lz)
    dy = xp.zeros((O, Ho, Wp), dtype=x.dtype)  # padded-width grid; the extra columns must stay zero
    dyf = dy.reshape(O, L)
    dW = xp.zeros((kh, O, C * kw), dtype=x.dtype)
    t = xp.empty((O, C * kw), dtype=x.dtype)
    for n in range(N):
        grid[:, ph:ph + H, pw:pw + W] = x[n]
        dy[:, :, :Wo] = dout[n]
        for j in range(kw):
            Z[:, j] = flat[:, j * dw:j * dw + Lz]
        for i in range(kh):
            xp.matmul(dyf, Z2[:, i * dh * Wp:i * dh * Wp + L].T, out=t)  # (O, L) @ (L, C*kw)
            dW[i] += t
    return dW.reshape(kh, O, C, kw).transpose(1, 2, 0, 3)


def _use_shifted(W, kernel, stride, padding, dilation):
    """Stride-1 k>1 convs take the shifted-view path unless its wasted columns exceed SHIFT_MAX_WASTE."""
    if stride != (1, 1) or kernel == (1, 1):
        return False
    wasted = dilation[1] * (kernel[1] - 1)  # Wp - Wout
    return wasted <= SHIFT_MAX_WASTE * (W + 2 * padding[1] - wasted)


# --- conv2d ------------------------------------------------------------------------------------------
def _conv2d_core(x, weight, stride, padding, dilation):
    """conv2d without bias or checks: picks the 1x1, shifted-view or im2col path."""
    xp = get_array_module(x, weight)
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho, Wo = _output_hw(x.shape, weight.shape, (kh, kw), stride, padding, dilation)
    if kh == kw == 1:  # 1x1: a strided slice (stride > 1), then one matmul per image
        xs = _pad_or_crop(x, *padding) if max(padding) > 0 else x
        xs = xs[:, :, :stride[0] * (Ho - 1) + 1:stride[0], :stride[1] * (Wo - 1) + 1:stride[1]]
        out = xp.matmul(weight.reshape(O, C), xs.reshape(N, C, Ho * Wo))  # (O, C) @ (N, C, L)
        return out.reshape(N, O, Ho, Wo)
    if _use_shifted(W, (kh, kw), stride, padding, dilation):
        return _shifted_conv(x, weight, padding, dilation)
    xpad = _pad_or_crop(x, *padding)
    w2 = weight.reshape(O, C * kh * kw)
    out = xp.empty((N, O, Ho, Wo), dtype=x.dtype)
    for n0, n1, r0, r1 in _chunks(N, (Ho, Wo), C * kh * kw, x.dtype.itemsize):
        rows = _row_slice(r0, r1, stride[0], dilation[0], kh)
        cols = _im2col_padded(xpad[n0:n1, :, rows], (kh, kw), stride, dilation, (r1 - r0, Wo))
        out[n0:n1, :, r0:r1] = xp.matmul(w2, cols).reshape(n1 - n0, O, r1 - r0, Wo)  # ONE matmul per chunk
    return out


def _conv2d_input_grad(dout, weight, x_shape, stride, padding, dilation):
    """dX of conv2d: col2im(W^T @ dY). Also the forward of conv_transpose2d. dout (N, O, Ho, Wo)."""
    xp = get_array_module(dout, weight)
    N, C, H, W = x_shape
    O, _, kh, kw = weight.shape
    Ho, Wo = dout.shape[2:]
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    exact = Ho + dh * (kh - 1) == H + 2 * ph and Wo + dw * (kw - 1) == W + 2 * pw  # no output_padding
    if exact and _use_shifted(W, (kh, kw), stride, padding, dilation):
        # stride 1: dX is the full correlation of dY with the flipped, transposed kernel
        flipped = weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)  # (C, O, kh, kw)
        return _shifted_conv(dout, flipped, (dh * (kh - 1) - ph, dw * (kw - 1) - pw), dilation)
    dxpad = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dout.dtype)
    Hp, Wp = dxpad.shape[2:]
    if (kh, kw) == (sh, sw) and (dh, dw) == (1, 1) and Hp == kh * Ho and Wp == kw * Wo:
        # non-overlapping patches (e.g. the mask head's 2x2 stride-2 deconv): one matmul + a transpose
        cols = xp.matmul(weight.reshape(O, C * kh * kw).T, dout.reshape(N, O, Ho * Wo))  # (N, C*kh*kw, L)
        dxpad[:] = cols.reshape(N, C, kh, kw, Ho, Wo).transpose(0, 1, 4, 2, 5, 3).reshape(N, C, Hp, Wp)
    elif (kh, kw) == (1, 1):
        g = xp.matmul(weight.reshape(O, C).T, dout.reshape(N, O, Ho * Wo)).reshape(N, C, Ho, Wo)
        dxpad[:, :, :sh * (Ho - 1) + 1:sh, :sw * (Wo - 1) + 1:sw] = g
    else:
        w2t = weight.reshape(O, C * kh * kw).T
        for n0, n1, r0, r1 in _chunks(N, (Ho, Wo), C * kh * kw, dout.dtype.itemsize):
            cols = xp.matmul(w2t, dout[n0:n1, :, r0:r1].reshape(n1 - n0, O, (r1 - r0) * Wo))
            rows = _row_slice(r0, r1, sh, dh, kh)
            _col2im_padded_add(cols, dxpad[n0:n1, :, rows], (kh, kw), stride, dilation, (r1 - r0, Wo))
    return dxpad[:, :, ph:ph + H, pw:pw + W]


def _conv2d_weight_grad(x, dout, w_shape, stride, padding, dilation):
    """dW of conv2d: sum over images of dY (O, L) @ cols^T (L, C*kh*kw), cols recomputed."""
    xp = get_array_module(x, dout)
    N, C, H, W = x.shape
    O, _, kh, kw = w_shape
    Ho, Wo = dout.shape[2:]
    if kh == kw == 1:
        xs = _pad_or_crop(x, *padding) if max(padding) > 0 else x
        xs = xs[:, :, :stride[0] * (Ho - 1) + 1:stride[0], :stride[1] * (Wo - 1) + 1:stride[1]]
        dW = xp.matmul(dout.reshape(N, O, Ho * Wo), xs.reshape(N, C, Ho * Wo).transpose(0, 2, 1)).sum(axis=0)
        return dW.reshape(O, C, 1, 1)
    if _use_shifted(W, (kh, kw), stride, padding, dilation):
        return _shifted_weight_grad(x, dout, (kh, kw), padding, dilation)
    xpad = _pad_or_crop(x, *padding)
    dW = xp.zeros((O, C * kh * kw), dtype=x.dtype)
    for n0, n1, r0, r1 in _chunks(N, (Ho, Wo), C * kh * kw, x.dtype.itemsize):
        rows = _row_slice(r0, r1, stride[0], dilation[0], kh)
        cols = _im2col_padded(xpad[n0:n1, :, rows], (kh, kw), stride, dilation, (r1 - r0, Wo))
        dy = dout[n0:n1, :, r0:r1].reshape(n1 - n0, O, (r1 - r0) * Wo)
        dW += xp.matmul(dy, cols.transpose(0, 2, 1)).sum(axis=0)  # (O, L) @ (L, C*kh*kw) per image
    return dW.reshape(O, C, kh, kw)


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
    out = _conv2d_core(x, weight, s, p, d)
    if bias is not None:
        out += bias.astype(dtype, copy=False)[:, None, None]
    return out, (x, weight, bias is not None, s, p, d)


def conv2d_backward(dout, cache, needs_input_grad=(True, True, True)):
    """(dx, dweight, dbias): dW = dY @ cols^T, dX = col2im(W^T @ dY), db = sum of dY over N, H, W.

    Gradients the tape says nobody uses (`needs_input_grad`) are skipped: the first conv's dX
    (the image) and the dW of frozen layers cost as much as the forward.
    """
    x, weight, has_bias, s, p, d = cache
    dout = dout.astype(x.dtype, copy=False)
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
