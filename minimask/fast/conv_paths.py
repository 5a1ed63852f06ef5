"""The GEMM paths behind conv2d: how a whole batch of convolutions becomes a few large matrix products.

Shapes:  x (N, C, H, W), weight (O, C, kh, kw), dY = dout (N, O, Ho, Wo), K = C*kh*kw
Layout:  the paths put the batch INSIDE the matrix columns, channels first: an activation is viewed
         as (C, N*H*W) ("channels-first"), so ONE GEMM covers every image,
             out (O, N*L) = W (O, K) @ cols (K, N*L)      dW (O, K) = dY (O, N*L) @ cols^T (N*L, K),
         instead of N small products (and, for dW, N products summed afterwards).
Paths:   shifted  stride 1, k > 1: the N zero-padded images are stacked into ONE tall grid whose zero
                  rows/columns are shared by neighbours (the right padding of a row is the left padding
                  of the next; see `tall_layout`). Flattened to (C, rows*P), kernel tap (i, j) is a
                  shifted view, so the conv is a sum of per-tap GEMMs on views, no copies; outputs are
                  computed on the whole grid and those outside the images dropped (`shifted_waste`).
         im2col   columns (K, N*Ho*Wo) built from a padded channels-first input, ONE GEMM per chunk
                  of images (or of output rows) under COL_BUDGET_BYTES; any stride, any size.
         (1x1 convs need neither: conv.py multiplies per image on x as it is. conv._choose_path picks.)
Chapter: nbs/14_appendix_engines.ipynb (the reference: conv.py, nbs/01_convolution.ipynb)
"""

from __future__ import annotations

from ..backend import get_array_module

COL_BUDGET_BYTES = 1 << 30  # largest im2col / shifted-grid buffer built at once; bigger batches go in chunks
SHIFT_BLOCK_BYTES = 4 << 20  # shifted path: output columns are accumulated in blocks of this size


# --- layouts ----------------------------------------------------------------------------------------
def channels_first(x):
    """(N, C, H, W) -> (C, N, H, W), contiguous (a copy unless N == 1)."""
    xp = get_array_module(x)
    return xp.ascontiguousarray(x.transpose(1, 0, 2, 3))


def batch_first(y):
    """(O, N, H, W) -> (N, O, H, W), contiguous: the inverse of `channels_first`."""
    xp = get_array_module(y)
    return xp.ascontiguousarray(y.transpose(1, 0, 2, 3))


def pad_or_crop(x, ph, pw):
    """Zero-pad the last two axes by (ph, pw) on each side; a negative amount crops instead."""
    xp = get_array_module(x)
    x, (ph, pw) = crop_negative_padding(x, (ph, pw))
    N, C, H, W = x.shape
    out = xp.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + H, pw:pw + W] = x
    return out


def crop_negative_padding(x, padding):
    """A negative padding crops: return (x cropped by it, the padding clipped at 0)."""
    (ph, pw), H, W = padding, x.shape[2], x.shape[3]
    ch, cw = max(0, -ph), max(0, -pw)
    return x[:, :, ch:H - ch, cw:W - cw], (max(0, ph), max(0, pw))


def image_chunks(N, per_image_bytes):
    """Yield (n0, n1): runs of images whose buffers together stay under COL_BUDGET_BYTES (>= 1 image)."""
    nb = max(1, COL_BUDGET_BYTES // max(per_image_bytes, 1))
    for n0 in range(0, N, nb):
        yield n0, min(N, n0 + nb)


# --- the shifted path (stride 1) ----------------------------------------------------------------------
def tall_layout(H, W, kernel, padding, dilation):
    """Pitches of the tall grid for (H, W) images: (P, Hs, Ho, Wo, slots_after, offsets).

    The grid is (C, 1 + n + slots_after, Hs, P): one slot of Hs rows per image, an empty slot in front
    and `slots_after` empty ones behind. Pixel (r, c) of image m sits at [:, 1 + m, ph + r, c]; all
    else is zero.
      P  = row pitch >= W + pw: the pw zero columns after a row also pad the next row's left side
      Hs = rows per slot >= H + ph: the zero rows between two images pad both (ph below, ph above)
    Output (y, x) of image m is computed at flat position q = (m*Hs + y)*P + x, and tap (i, j) reads
    flat[q + offsets[i*kw + j]] with offsets = (Hs + i*dh)*P + j*dw - pw (the front slot keeps them
    >= 0, the slots behind hold the last taps' overrun). Outputs with y >= Ho or x >= Wo get dropped.
    """
    (kh, kw), (ph, pw), (dh, dw) = kernel, padding, dilation
    Ho, Wo = H + 2 * ph - dh * (kh - 1), W + 2 * pw - dw * (kw - 1)
    P, Hs = max(W + pw, Wo), max(H + ph, Ho)
    slots_after = 1 + dh * (kh - 1) // Hs  # the taps read up to dh*(kh-1) + 1 rows past the last slot
    offsets = [(Hs + i * dh) * P + j * dw - pw for i in range(kh) for j in range(kw)]
    return P, Hs, Ho, Wo, slots_after, offsets


def shifted_waste(H, W, kernel, padding, dilation):
    """Fraction of the tall grid's computed outputs that are dropped: 1 - Ho*Wo / (Hs*P)."""
    P, Hs, Ho, Wo = tall_layout(H, W, kernel, padding, dilation)[:4]
    return 1 - Ho * Wo / (Hs * P)


def _tall_grid(x, layout, ph):
    """x (n, C, H, W) -> the zero tall grid flattened to (C, slots*Hs*P), images written in place."""
    xp = get_array_module(x)
    n, C, H, W = x.shape
    P, Hs, _, _, slots_after, _ = layout
    grid = xp.zeros((C, 1 + n + slots_after, Hs, P), dtype=x.dtype)
    grid[:, 1:1 + n, ph:ph + H, :W] = x.transpose(1, 0, 2, 3)
    return grid.reshape(C, -1)


def shifted_conv(x, weight, padding, dilation):
    """Stride-1 conv2d of a whole batch on the tall grid. x (N, C, H, W), weight (O, C, kh, kw).

    out[:, q] = sum over taps t = (i, j) of weight[:, :, i, j] (O, C) @ flat[:, q + offsets[t]] (C, .),
    one GEMM per tap on a view (leading dimension rows*P), accumulated in cache-sized column blocks.
    A negative padding (from the input-gradient of a conv with padding > dilation*(k-1)) crops first.
    """
    xp = get_array_module(x, weight)
    x, padding = crop_negative_padding(x, padding)
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    layout = tall_layout(H, W, (kh, kw), padding, dilation)
    P, Hs, Ho, Wo, _, offsets = layout
    taps = xp.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(kh * kw, O, C)
    out = xp.empty((N, O, Ho, Wo), dtype=x.dtype)
    per_image = (C + O) * Hs * P * x.dtype.itemsize
    for n0, n1 in image_chunks(N, per_image):
        flat = _tall_grid(x[n0:n1], layout, padding[0])
        L = (n1 - n0) * Hs * P
        acc = xp.empty((O, L), dtype=x.dtype)
        block = max(P, SHIFT_BLOCK_BYTES // (O * x.dtype.itemsize))
        tmp = xp.empty((O, min(block, L)), dtype=x.dtype)
        for l0 in range(0, L, block):
            l1 = min(L, l0 + block)
            a, t = acc[:, l0:l1], tmp[:, :l1 - l0]
            xp.matmul(taps[0], flat[:, offsets[0] + l0:offsets[0] + l1], out=a)
            for k in range(1, kh * kw):  # (O, C) @ (C, l1 - l0): a view, no copy
                xp.matmul(taps[k], flat[:, offsets[k] + l0:offsets[k] + l1], out=t)
                a += t
        out[n0:n1] = acc.reshape(O, n1 - n0, Hs, P)[:, :, :Ho, :Wo].transpose(1, 0, 2, 3)
    return out


def shifted_weight_grad(x, dout, kernel, padding, dilation):
    """Stride-1 weight gradient on the tall grid: dW[:, :, i, j] = dY (O, L) @ flat[:, offset + l]^T (L, C).

    dY is written onto the grid's output positions (zeros at the dropped ones), so each tap is ONE
    GEMM over all images' pixels at once; nothing is summed over images afterwards.
    """
    xp = get_array_module(x, dout)
    N, C, H, W = x.shape
    O, Ho, Wo = dout.shape[1:]  # may be fewer rows/columns than the conv makes (conv_transpose2d's output_padding)
    kh, kw = kernel
    layout = tall_layout(H, W, kernel, padding, dilation)
    P, Hs, _, _, _, offsets = layout
    dW = xp.zeros((kh * kw, O, C), dtype=x.dtype)
    tmp = xp.empty((O, C), dtype=x.dtype)
    per_image = (C + O) * Hs * P * x.dtype.itemsize
    for n0, n1 in image_chunks(N, per_image):
        flat = _tall_grid(x[n0:n1], layout, padding[0])
        L = (n1 - n0) * Hs * P
        dy = xp.zeros((O, n1 - n0, Hs, P), dtype=x.dtype)  # the dropped positions must stay zero
        dy[:, :, :Ho, :Wo] = dout[n0:n1].transpose(1, 0, 2, 3)
        dy = dy.reshape(O, L)
        for k in range(kh * kw):
            if n0 == 0:
                xp.matmul(dy, flat[:, offsets[k]:offsets[k] + L].T, out=dW[k])
            else:  # later chunks add
                xp.matmul(dy, flat[:, offsets[k]:offsets[k] + L].T, out=tmp)
                dW[k] += tmp
    return dW.reshape(kh, kw, O, C).transpose(2, 3, 0, 1)


# --- the im2col path ------------------------------------------------------------------------------------
def _tap_slice(start, stride, count):
    return slice(start, start + stride * (count - 1) + 1, stride)


def im2col_cf(xpad, kernel, stride, dilation, out_hw):
    """Columns of a padded channels-first input: (C, n, Hp, Wp) -> (C*kh*kw, n*Ho*Wo).

    cols[(c, i, j), (m, y, x)] = xpad[c, m, y*sh + i*dh, x*sw + j*dw]: one strided copy per tap.
    Rows are ordered (c, i, j) like weight.reshape(O, -1). A 1x1 stride-1 kernel needs no copy.
    """
    xp = get_array_module(xpad)
    C, n = xpad.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    if (kh, kw) == (1, 1) and (sh, sw) == (1, 1) and xpad.shape[2:] == (Ho, Wo):
        return xpad.reshape(C, n * Ho * Wo)
    cols = xp.empty((C, kh, kw, n, Ho, Wo), dtype=xpad.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xpad[:, :, _tap_slice(i * dh, sh, Ho), _tap_slice(j * dw, sw, Wo)]
    return cols.reshape(C * kh * kw, n * Ho * Wo)


def col2im_cf_add(cols, dxpad, kernel, stride, dilation, out_hw):
    """Adjoint of `im2col_cf`: add (C*kh*kw, n*Ho*Wo) back into the padded gradient (C, n, Hp, Wp)."""
    C, n = dxpad.shape[:2]
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    cols = cols.reshape(C, kh, kw, n, Ho, Wo)
    for i in range(kh):  # taps overlap when stride < dilated kernel: they must add, never assign
        for j in range(kw):
            dxpad[:, :, _tap_slice(i * dh, sh, Ho), _tap_slice(j * dw, sw, Wo)] += cols[:, i, j]
    return dxpad


def padded_channels_first(x, padding):
    """(N, C, H, W) -> zero-padded (C, N, H + 2ph, W + 2pw); a negative padding crops."""
    xp = get_array_module(x)
    x, (ph, pw) = crop_negative_padding(x, padding)
    N, C, H, W = x.shape
    out = xp.zeros((C, N, H + 2 * ph, W + 2 * pw), dtype=x.dtype)
    out[:, :, ph:ph + H, pw:pw + W] = x.transpose(1, 0, 2, 3)
    return out


def col_chunks(N, out_hw, col_rows, itemsize):
    """Yield (n0, n1, r0, r1): images [n0, n1) and output rows [r0, r1) whose columns fit the budget."""
    Ho, Wo = out_hw
    row_bytes = col_rows * Wo * itemsize  # one output row of one image
    if row_bytes * Ho <= COL_BUDGET_BYTES:
        for n0, n1 in image_chunks(N, row_bytes * Ho):
            yield n0, n1, 0, Ho
    else:  # one image is too big: split its output rows
        rb = max(1, COL_BUDGET_BYTES // row_bytes)
        for n in range(N):
            for r0 in range(0, Ho, rb):
                yield n, n + 1, r0, min(Ho, r0 + rb)


def _row_slice(r0, r1, s, d, k):
    """Padded-input rows read by output rows [r0, r1)."""
    return slice(r0 * s, (r1 - 1) * s + d * (k - 1) + 1)


def im2col_conv(x, weight, stride, padding, dilation, out_hw):
    """conv2d as out (O, n*L) = W (O, K) @ im2col (K, n*L), ONE GEMM per chunk of images."""
    xp = get_array_module(x, weight)
    N = x.shape[0]
    O, C, kh, kw = weight.shape
    Ho, Wo = out_hw
    xpad = padded_channels_first(x, padding)  # (C, N, Hp, Wp)
    w2 = weight.reshape(O, C * kh * kw)
    out = xp.empty((O, N, Ho, Wo), dtype=x.dtype)
    for n0, n1, r0, r1 in col_chunks(N, out_hw, C * kh * kw, x.dtype.itemsize):
        rows = _row_slice(r0, r1, stride[0], dilation[0], kh)
        cols = im2col_cf(xpad[:, n0:n1, rows], (kh, kw), stride, dilation, (r1 - r0, Wo))
        out[:, n0:n1, r0:r1] = xp.matmul(w2, cols).reshape(O, n1 - n0, r1 - r0, Wo)
    return batch_first(out)


def im2col_input_grad(dout, weight, x_shape, stride, padding, dilation):
    """dX = col2im(W^T (K, O) @ dY (O, n*L)), one GEMM per chunk; dout (N, O, Ho, Wo) -> (N, C, H, W)."""
    xp = get_array_module(dout, weight)
    N, C, H, W = x_shape
    O, _, kh, kw = weight.shape
    Ho, Wo = dout.shape[2:]
    (sh, sw), (ph, pw) = stride, padding
    Hp, Wp = H + 2 * ph, W + 2 * pw
    dy = channels_first(dout)  # (O, N, Ho, Wo)
    w2t = weight.reshape(O, C * kh * kw).T
    if (kh, kw) == (sh, sw) and dilation == (1, 1) and (Hp, Wp) == (kh * Ho, kw * Wo):
        # non-overlapping patches (the mask head's 2x2 stride-2 deconv): one GEMM and a transpose,
        # cols[(c, i, j), (n, y, x)] lands on dX[n, c, y*kh + i, x*kw + j]
        cols = xp.matmul(w2t, dy.reshape(O, N * Ho * Wo)).reshape(C, kh, kw, N, Ho, Wo)
        dxpad = xp.ascontiguousarray(cols.transpose(3, 0, 4, 1, 5, 2)).reshape(N, C, Hp, Wp)
        return dxpad[:, :, ph:ph + H, pw:pw + W]
    dxpad = xp.zeros((C, N, Hp, Wp), dtype=dout.dtype)
    for n0, n1, r0, r1 in col_chunks(N, (Ho, Wo), C * kh * kw, dout.dtype.itemsize):
        cols = xp.matmul(w2t, dy[:, n0:n1, r0:r1].reshape(O, -1))  # (K, n*rows*Wo)
        rows = _row_slice(r0, r1, sh, dilation[0], kh)
        col2im_cf_add(cols, dxpad[:, n0:n1, rows], (kh, kw), stride, dilation, (r1 - r0, Wo))
    return batch_first(dxpad[:, :, ph:ph + H, pw:pw + W])


def im2col_weight_grad(x, dout, w_shape, stride, padding, dilation):
    """dW (O, K) = sum over chunks of dY (O, n*L) @ cols^T (n*L, K): ONE GEMM per chunk of images."""
    xp = get_array_module(x, dout)
    N = x.shape[0]
    O, C, kh, kw = w_shape
    Ho, Wo = dout.shape[2:]
    xpad = padded_channels_first(x, padding)
    dy = channels_first(dout)  # (O, N, Ho, Wo)
    dW = xp.zeros((O, C * kh * kw), dtype=x.dtype)
    for n0, n1, r0, r1 in col_chunks(N, (Ho, Wo), C * kh * kw, x.dtype.itemsize):
        rows = _row_slice(r0, r1, stride[0], dilation[0], kh)
        cols = im2col_cf(xpad[:, n0:n1, rows], (kh, kw), stride, dilation, (r1 - r0, Wo))
        dW += xp.matmul(dy[:, n0:n1, r0:r1].reshape(O, -1), cols.T)  # (O, n*L) @ (n*L, K)
    return dW.reshape(O, C, kh, kw)
