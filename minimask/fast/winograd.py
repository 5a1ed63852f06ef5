"""Winograd F(2x2, 3x3): a stride-1 3x3 convolution with 2.25x fewer multiplications than the direct one.

Shapes:  x (N, C, H, W), weight (O, C, 3, 3), out (N, O, Ho, Wo), stride 1, dilation 1, any padding >= 0.
Idea:    cut the output into 2x2 tiles; tile (i, j) needs the 4x4 input patch d at rows 2i.., cols 2j..
         of the zero-padded input. For ONE channel pair the 2x2 result is (Lavin & Gray 2016)
             y = A^T [ (G g G^T) * (B^T d B) ] A        (* = elementwise, 16 products instead of 36)
         with the constant matrices below. Summing over input channels, the 16 positions (a, b) of the
         4x4 "Winograd domain" are 16 independent matrix products:
             U[ab] = (G g G^T)[ab]   (O, C)      the weights, transformed once per call
             V[ab] = (B^T d B)[ab]   (C, T)      every tile's input patch, T = N * tiles per image
             M[ab] = U[ab] @ V[ab]   (O, T)      16 GEMMs: 16 * O * C * T multiply-adds
         and y = A^T M A per tile. Direct convolution costs 36 * O * C * T for the same outputs.
Layout:  the tiles overlap by 2 (stride 2), so the padded input is first split into its four parity
         planes (even/odd rows x even/odd columns), each (th + 1, tw + 1) per image and channel: the 4
         taps of a tile along an axis are then planes even[i], odd[i], even[i + 1], odd[i + 1]. Every
         image row of tiles carries ONE extra "junk" tile (tw + 1 per row, T = n * th * (tw + 1)), so a
         tap is the whole flat plane shifted by one element: each transform pass is a long contiguous
         addition (4x faster in NumPy than short rows of tw). The junk tiles are computed and dropped.
Backward: the three stages in reverse, each by its adjoint (`winograd_backward`):
             dM = A dY A^T per tile                          (output_transform_adjoint; junk tiles 0)
             dV[ab] = U[ab]^T @ dM[ab]  ->  dX = B dV B^T, overlapping patches added   (input_transform_adjoint)
             dU[ab] = dM[ab] @ V[ab]^T  ->  dW = G^T dU G                              (weight_transform_adjoint)
         dM is shared by dX and dW: 3 transforms and 2 GEMMs for the whole backward.
Accuracy: the transforms only add, subtract and halve; float32 results differ from the direct conv
         by rounding of a few ulps of the sum (tested against the nested-loop reference).
Chapter: nbs/14_appendix_engines.ipynb (the reference: conv.py, nbs/01_convolution.ipynb)
"""

from __future__ import annotations

from ..backend import get_array_module
from .conv_paths import image_chunks
from .host import split_map

# the constants of F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # input transform, 4x4
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))  # weight transform, 4x3
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))  # output transform, 2x4


def tiles(out_hw):
    """Number of 2x2 output tiles per axis: (ceil(Ho / 2), ceil(Wo / 2)); the layout adds a junk column."""
    return (out_hw[0] + 1) // 2, (out_hw[1] + 1) // 2


# --- the 1-D transforms, applied along one axis of stacked arrays (d[k] is tap k of every tile) ---------
def _input_1d(d, out):
    """out[0..3] = B^T d: (d0 - d2, d1 + d2, d2 - d1, d1 - d3)."""
    xp = get_array_module(out[0])
    xp.subtract(d[0], d[2], out=out[0])
    xp.add(d[1], d[2], out=out[1])
    xp.subtract(d[2], d[1], out=out[2])
    xp.subtract(d[1], d[3], out=out[3])


def _output_1d(m, out):
    """out[0..1] = A^T m: (m0 + m1 + m2, m1 - m2 - m3)."""
    xp = get_array_module(out[0])
    xp.add(m[0], m[1], out=out[0])
    out[0] += m[2]
    xp.subtract(m[1], m[2], out=out[1])
    out[1] -= m[3]


def _output_1d_adjoint(y, out):
    """out[0..3] = A y, the adjoint of `_output_1d`: (y0, y0 + y1, y0 - y1, -y1)."""
    xp = get_array_module(out[0])
    xp.copyto(out[0], y[0])
    xp.add(y[0], y[1], out=out[1])
    xp.subtract(y[0], y[1], out=out[2])
    xp.negative(y[1], out=out[3])


# --- the weight transform ------------------------------------------------------------------------------
def _kron_G(xp, dtype):
    """(16, 9) matrix of g -> G g G^T on flattened 3x3 kernels: entry (4a + b, 3i + j) = G[a][i] G[b][j]."""
    g = xp.asarray(G, dtype=dtype)
    return xp.kron(g, g)


def weight_transform(weight):
    """U = G g G^T for every (o, c): weight (O, C, 3, 3) -> U (16, O, C), row ab = 4a + b (one GEMM)."""
    xp = get_array_module(weight)
    O, C = weight.shape[:2]
    return xp.matmul(_kron_G(xp, weight.dtype), weight.reshape(O * C, 9).T).reshape(16, O, C)


def weight_transform_adjoint(dU):
    """dW = G^T dU G for every (o, c): dU (16, O, C) -> dW (O, C, 3, 3), the adjoint of `weight_transform`."""
    xp = get_array_module(dU)
    O, C = dU.shape[1:]
    return xp.matmul(dU.reshape(16, O * C).T, _kron_G(xp, dU.dtype)).reshape(O, C, 3, 3)


# --- the input transform -------------------------------------------------------------------------------
def parity_planes(x, padding, tile_hw):
    """x (n, C, H, W) zero-padded and split by row/column parity: (2, 2, C, n, th + 1, tw + 1).

    planes[r, s, c, m, i, j] = xpad[m, c, 2i + r, 2j + s], xpad being x with `padding` zeros in front
    and enough behind to make (2 th + 2, 2 tw + 2): every tile's 4x4 patch lies inside.
    """
    xp = get_array_module(x)
    n, C, H, W = x.shape
    th, tw = tile_hw
    planes = xp.zeros((2, 2, C, n, th + 1, tw + 1), dtype=x.dtype)
    for r, s, ys, xs, iis, js in _plane_slices(H, W, padding):
        planes[r, s, :, :, iis, js] = x[:, :, ys, xs].transpose(1, 0, 2, 3)
    return planes


def input_transform(x, padding, tile_hw):
    """V = B^T d B for every 4x4 input patch d: x (n, C, H, W) -> V (16, C, n * th * (tw + 1)), row ab = 4a + b.

    Tile (m, i, j) is column (m * th + i) * (tw + 1) + j; j = tw is the junk tile (see the module header).
    Channels are independent: they are split over the CPU's threads (fast.host.split_map).
    """
    xp = get_array_module(x)
    n, C = x.shape[:2]
    th, tw = tile_hw
    V = xp.empty((4, 4, C, n * th * (tw + 1)), dtype=x.dtype)
    split_map(lambda c0, c1: _input_transform(x[:, c0:c1], padding, tile_hw, V[:, :, c0:c1]), C, xp)
    return V.reshape(16, C, -1)


def _input_transform(x, padding, tile_hw, V):
    """`input_transform` of some channels, written into V (4, 4, c, T)."""
    xp = get_array_module(x)
    n, C = x.shape[:2]
    th, tw = tile_hw
    planes = parity_planes(x, padding, tile_hw)  # (2 rows, 2 cols, c, n, th + 1, tw + 1)
    L = C * n * th * (tw + 1)
    rows = xp.empty((4, 2, L + 1), dtype=x.dtype)  # B^T d along rows: (a, column parity, flat)
    rows[:, :, L] = 0  # one element past the end: the last junk tile's last tap reads it
    _input_1d(_taps_rows(planes, th), [rows[a, :, :L].reshape(2, C, n, th, tw + 1) for a in range(4)])
    V = V.reshape(4, 4, L)  # (B^T d) B: (a, b, flat), a view
    _input_1d((rows[:, 0, :L], rows[:, 1, :L], rows[:, 0, 1:], rows[:, 1, 1:]), [V[:, b] for b in range(4)])


def _taps_rows(planes, th):
    """The 4 row taps of every tile: padded rows 2i, 2i+1, 2i+2, 2i+3 = even[i], odd[i], even[i+1], odd[i+1]."""
    even, odd = planes[0], planes[1]  # (2 column parities, C, n, th + 1, tw + 1)
    return even[..., :th, :], odd[..., :th, :], even[..., 1:, :], odd[..., 1:, :]


def input_transform_adjoint(dV, x_shape, padding):
    """dX = B dV B^T per tile, the patches added where they overlap: the adjoint of `input_transform`.

    dV (16, C, n * th * (tw + 1)) with zero junk tiles -> dx (n, C, H, W) for x of `x_shape`; the
    gradient that lands on the zero padding is dropped.
    """
    xp = get_array_module(dV)
    n, C, H, W = x_shape
    tile_hw = tiles((H + 2 * padding[0] - 2, W + 2 * padding[1] - 2))
    dx = xp.empty(x_shape, dtype=dV.dtype)
    split_map(lambda c0, c1: _input_transform_adjoint(dV[:, c0:c1], padding, tile_hw, dx[:, c0:c1]), C, xp)
    return dx


def _input_transform_adjoint(dV, padding, tile_hw, dx):
    xp = get_array_module(dV)
    n, C = dx.shape[:2]
    th, tw = tile_hw
    L = C * n * th * (tw + 1)
    dV = dV.reshape(4, 4, L)  # a view: channels c0:c1 of every (a, b)
    drows = xp.empty((4, 2, L), dtype=dV.dtype)  # along columns, back onto the rows' flat layout
    _taps_adjoint([dV[:, b] for b in range(4)], drows[:, 0], drows[:, 1], axis=-1)
    drows = drows.reshape(4, 2, C, n, th, tw + 1)
    dplanes = xp.empty((2, 2, C, n, th + 1, tw + 1), dtype=dV.dtype)  # along rows, onto the planes
    _taps_adjoint(drows, dplanes[0], dplanes[1], axis=-2)
    _read_planes(dplanes, padding, dx)


def _taps_adjoint(v, even, odd, axis):
    """Adjoint of `_input_1d` on the taps of `_taps`/`_taps_rows`: B v, each tap added back where it
    was read. even[i] = t0[i] + t2[i - 1], odd[i] = t1[i] + t3[i - 1] along `axis`, with
    t = (v0, v1 - v2 + v3, v1 + v2 - v0, -v3); even/odd have one more entry than v along `axis`
    (the flat layout: the same length, the last tap's spill-over being a junk tile's, which is 0)."""
    xp = get_array_module(even)
    n = v[0].shape[axis]

    def cut(a, start, stop):
        index = [slice(None)] * a.ndim
        index[axis] = slice(start, stop)
        return a[tuple(index)]

    t = xp.add(v[1], v[2])
    t -= v[0]  # t2
    xp.add(cut(v[0], 1, n), cut(t, 0, n - 1), out=cut(even, 1, n))
    xp.copyto(cut(even, 0, 1), cut(v[0], 0, 1))
    if even.shape[axis] > n:
        xp.copyto(cut(even, n, n + 1), cut(t, n - 1, n))
    xp.subtract(v[1], v[2], out=t)
    t += v[3]  # t1
    xp.subtract(cut(t, 1, n), cut(v[3], 0, n - 1), out=cut(odd, 1, n))
    xp.copyto(cut(odd, 0, 1), cut(t, 0, 1))
    if odd.shape[axis] > n:
        xp.negative(cut(v[3], n - 1, n), out=cut(odd, n, n + 1))


def _plane_slices(H, W, padding):
    """For each parity (r, s): (rows of x, columns of x, rows of the plane, columns of the plane) it holds."""
    (ph, pw), out = padding, []
    for r in range(2):
        y0 = (r - ph) % 2  # the first input row that lands on padded rows of parity r
        i0, ny = (y0 + ph) // 2, len(range(y0, H, 2))
        for s in range(2):
            x0 = (s - pw) % 2
            j0, nx = (x0 + pw) // 2, len(range(x0, W, 2))
            out.append((r, s, slice(y0, None, 2), slice(x0, None, 2), slice(i0, i0 + ny), slice(j0, j0 + nx)))
    return out


def _read_planes(planes, padding, x):
    """Inverse of `parity_planes`: write the pixels of x (n, C, H, W) back from the planes."""
    for r, s, ys, xs, iis, js in _plane_slices(x.shape[2], x.shape[3], padding):
        x[:, :, ys, xs] = planes[r, s, :, :, iis, js].transpose(1, 0, 2, 3)


# --- the output transform and its adjoint ----------------------------------------------------------------
def output_transform(M, out):
    """y = A^T m A for every tile: M (16, O, n * th * (tw + 1)) -> written into out (n, O, Ho, Wo)."""
    xp = get_array_module(M)
    split_map(lambda o0, o1: _output_transform(M[:, o0:o1], out[:, o0:o1]), out.shape[1], xp)
    return out


def _output_transform(M, out):
    xp = get_array_module(M)
    n, O, Ho, Wo = out.shape
    th, tw = tiles((Ho, Wo))
    m = M.reshape(4, 4, -1)  # a view: M holds channels o0:o1 of every (a, b), each contiguous
    half = xp.empty((2, 4, m.shape[-1]), dtype=M.dtype)
    _output_1d(m, half)  # along rows
    y = xp.empty((2, 2, m.shape[-1]), dtype=M.dtype)
    _output_1d([half[:, b] for b in range(4)], [y[:, s] for s in range(2)])  # along columns
    y = y.reshape(2, 2, O, n, th, tw + 1)
    for r in range(2):  # y[r, s] holds the output pixels (2i + r, 2j + s)
        for s in range(2):
            dst = out[:, :, r::2, s::2]
            dst[...] = y[r, s, :, :, :dst.shape[2], :dst.shape[3]].transpose(1, 0, 2, 3)


def output_transform_adjoint(dout):
    """dM = A dY A^T per tile, the adjoint of `output_transform`: (n, O, Ho, Wo) -> (16, O, n * th * (tw + 1))."""
    xp = get_array_module(dout)
    n, O, Ho, Wo = dout.shape
    th, tw = tiles((Ho, Wo))
    dM = xp.empty((4, 4, O, n * th * (tw + 1)), dtype=dout.dtype)
    split_map(lambda o0, o1: _output_transform_adjoint(dout[:, o0:o1], dM[:, :, o0:o1]), O, xp)
    return dM.reshape(16, O, -1)


def _output_transform_adjoint(dout, dM):
    xp = get_array_module(dout)
    n, O, Ho, Wo = dout.shape
    th, tw = tiles((Ho, Wo))
    y = xp.zeros((2, 2, O, n, th, tw + 1), dtype=dout.dtype)  # junk tiles and odd sizes' extra pixels: 0
    for r in range(2):
        for s in range(2):
            src = dout[:, :, r::2, s::2]
            y[r, s, :, :, :src.shape[2], :src.shape[3]] = src.transpose(1, 0, 2, 3)
    y = y.reshape(2, 2, -1)
    half = xp.empty((2, 4, y.shape[-1]), dtype=dout.dtype)
    _output_1d_adjoint([y[:, s] for s in range(2)], [half[:, b] for b in range(4)])  # along columns
    _output_1d_adjoint(half, dM.reshape(4, 4, -1))  # along rows


# --- the convolution and its gradients -------------------------------------------------------------------
def _bytes_per_image(C, O, tile_hw, itemsize):
    return 16 * (C + O) * tile_hw[0] * (tile_hw[1] + 1) * itemsize  # V and M of one image


def winograd_conv(x, weight, padding, keep=None):
    """Stride-1, dilation-1 3x3 conv2d: x (N, C, H, W), weight (O, C, 3, 3) -> (N, O, Ho, Wo).

    out = A^T [U @ V] A: 16 GEMMs (O, C) @ (C, T) per chunk of images (V and M stay under the budget).
    keep: a list that receives each chunk's V, for `winograd_backward` (saves it one transform).
    """
    xp = get_array_module(x, weight)
    N, C, H, W = x.shape
    O = weight.shape[0]
    out_hw = (H + 2 * padding[0] - 2, W + 2 * padding[1] - 2)
    tile_hw = tiles(out_hw)
    U = weight_transform(weight)
    out = xp.empty((N, O) + out_hw, dtype=x.dtype)
    for n0, n1 in image_chunks(N, _bytes_per_image(C, O, tile_hw, x.dtype.itemsize)):
        V = input_transform(x[n0:n1], padding, tile_hw)
        output_transform(xp.matmul(U, V), out[n0:n1])  # (16, O, C) @ (16, C, T)
        if keep is not None:
            keep.append(V)
    return out


def winograd_backward(dout, weight, padding, x_shape, x=None, kept=None):
    """(dX or None, dW or None) of `winograd_conv`: each stage by its adjoint, dM shared by both.

    dout (N, O, Ho, Wo); dX (x_shape) when weight (O, C, 3, 3) is given, dW when x is given
    (its V: the forward's `keep` list when given, else recomputed).
    """
    xp = get_array_module(dout, weight)
    N, C, H, W = x_shape
    O = dout.shape[1]
    tile_hw = tiles(dout.shape[2:])
    U = weight_transform(weight) if weight is not None else None
    dx = xp.empty(x_shape, dtype=dout.dtype) if weight is not None else None
    dU = None
    chunks = list(image_chunks(N, _bytes_per_image(C, O, tile_hw, dout.dtype.itemsize)))
    if kept and [V.shape[2] for V in kept] != [(n1 - n0) * tile_hw[0] * (tile_hw[1] + 1) for n0, n1 in chunks]:
        kept = None  # chunked differently from the forward (the budget changed): recompute
    for k, (n0, n1) in enumerate(chunks):
        dM = output_transform_adjoint(dout[n0:n1])  # (16, O, T)
        if x is not None:
            V = kept[k] if kept else input_transform(x[n0:n1], padding, tile_hw)
            part = xp.matmul(dM, V.transpose(0, 2, 1))  # (16, O, C)
            dU = part if dU is None else dU + part
        if U is not None:
            dx[n0:n1] = input_transform_adjoint(xp.matmul(U.transpose(0, 2, 1), dM), (n1 - n0, C, H, W), padding)
    return dx, (weight_transform_adjoint(dU) if x is not None else None)
