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
Backward: dX is the same conv of dY with the flipped, transposed kernel, whose transform is U's own
         with rows/columns 0 and 3 swapped (`winograd_input_grad`);
         dW = G^T (sum over tiles of dM[ab] @ V[ab]^T) G with dM = A dY A^T per tile (junk tiles 0).
Accuracy: the transforms only add, subtract and halve; float32 results differ from the direct conv
         by rounding of a few ulps of the sum (tested against the nested-loop reference).
Chapter: nbs/01_convolution.ipynb
"""

from __future__ import annotations

from .backend import get_array_module, split_map
from .conv_paths import image_chunks

# the constants of F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016)
B_T = ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1))  # input transform, 4x4
G = ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1))  # weight transform, 4x3
A_T = ((1, 1, 1, 0), (0, 1, -1, -1))  # output transform, 2x4
FLIP = (3, 1, 2, 0)  # G with its columns reversed is G with rows 0 and 3 swapped


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
    (th, tw), (ph, pw) = tile_hw, padding
    planes = xp.zeros((2, 2, C, n, th + 1, tw + 1), dtype=x.dtype)
    for r in range(2):
        y0 = (r - ph) % 2  # the first input row that lands on padded rows of parity r
        i0, ny = (y0 + ph) // 2, len(range(y0, H, 2))
        for s in range(2):
            x0 = (s - pw) % 2
            j0, nx = (x0 + pw) // 2, len(range(x0, W, 2))
            planes[r, s, :, :, i0:i0 + ny, j0:j0 + nx] = x[:, :, y0::2, x0::2].transpose(1, 0, 2, 3)
    return planes


def input_transform(x, padding, tile_hw, order=(0, 1, 2, 3)):
    """V = B^T d B for every 4x4 input patch d: x (n, C, H, W) -> V (16, C, n * th * (tw + 1)).

    V[4 order[a] + order[b]] holds position (a, b) of the Winograd domain (`order` = FLIP for dX).
    Tile (m, i, j) is column (m * th + i) * (tw + 1) + j; j = tw is the junk tile (see the module header).
    Channels are independent: they are split over the CPU's threads (backend.split_map).
    """
    xp = get_array_module(x)
    n, C = x.shape[:2]
    th, tw = tile_hw
    V = xp.empty((4, 4, C, n * th * (tw + 1)), dtype=x.dtype)
    split_map(lambda c0, c1: _input_transform(x[:, c0:c1], padding, tile_hw, V[:, :, c0:c1], order), C, xp)
    return V.reshape(16, C, -1)


def _input_transform(x, padding, tile_hw, V, order):
    """`input_transform` of some channels, written into V (4, 4, c, T)."""
    xp = get_array_module(x)
    n, C = x.shape[:2]
    th, tw = tile_hw
    planes = parity_planes(x, padding, tile_hw)  # (2 rows, 2 cols, c, n, th + 1, tw + 1)
    L = C * n * th * (tw + 1)
    rows = xp.empty((4, 2, L + 1), dtype=x.dtype)  # B^T d along rows: (a, column parity, flat)
    rows[:, :, L] = 0  # one element past the end: the last junk tile's last tap reads it
    _input_1d(_taps_rows(planes, th), [rows[order[a], :, :L].reshape(2, C, n, th, tw + 1) for a in range(4)])
    V = V.reshape(4, 4, L)  # (B^T d) B: (a, b, flat), a view
    _input_1d((rows[:, 0, :L], rows[:, 1, :L], rows[:, 0, 1:], rows[:, 1, 1:]), [V[:, order[b]] for b in range(4)])


def _taps_rows(planes, th):
    """The 4 row taps of every tile: padded rows 2i, 2i+1, 2i+2, 2i+3 = even[i], odd[i], even[i+1], odd[i+1]."""
    even, odd = planes[0], planes[1]  # (2 column parities, C, n, th + 1, tw + 1)
    return even[..., :th, :], odd[..., :th, :], even[..., 1:, :], odd[..., 1:, :]


# --- the output transform and its adjoint ----------------------------------------------------------------
def output_transform(M, out, order=(0, 1, 2, 3)):
    """y = A^T m A for every tile: M (16, O, n * th * (tw + 1)) -> written into out (n, O, Ho, Wo).

    Position (a, b) of the Winograd domain is read from M[4 order[a] + order[b]] (see `input_transform`).
    """
    xp = get_array_module(M)
    split_map(lambda o0, o1: _output_transform(M[:, o0:o1], out[:, o0:o1], order), out.shape[1], xp)
    return out


def _output_transform(M, out, order):
    xp = get_array_module(M)
    n, O, Ho, Wo = out.shape
    th, tw = tiles((Ho, Wo))
    m = M.reshape(4, 4, -1)  # a view: M holds channels o0:o1 of every (a, b), each contiguous
    half = xp.empty((2, 4, m.shape[-1]), dtype=M.dtype)
    _output_1d([m[order[a]] for a in range(4)], half)  # along rows
    y = xp.empty((2, 2, m.shape[-1]), dtype=M.dtype)
    _output_1d([half[:, order[b]] for b in range(4)], [y[:, s] for s in range(2)])  # along columns
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


def _conv_with(U, x, padding, n_out, order=(0, 1, 2, 3)):
    """A^T [U @ V] A for transformed weights U (16, O, C) (or a transposed view), per chunk of images."""
    xp = get_array_module(x)
    N, C, H, W = x.shape
    out_hw = (H + 2 * padding[0] - 2, W + 2 * padding[1] - 2)
    tile_hw = tiles(out_hw)
    out = xp.empty((N, n_out) + out_hw, dtype=x.dtype)
    for n0, n1 in image_chunks(N, _bytes_per_image(C, n_out, tile_hw, x.dtype.itemsize)):
        V = input_transform(x[n0:n1], padding, tile_hw, order)
        output_transform(xp.matmul(U, V), out[n0:n1], order)  # (16, O, C) @ (16, C, T)
    return out


def winograd_conv(x, weight, padding):
    """Stride-1, dilation-1 3x3 conv2d: x (N, C, H, W), weight (O, C, 3, 3) -> (N, O, Ho, Wo).

    out = A^T [U @ V] A: 16 GEMMs (O, C) @ (C, T) per chunk of images (V and M stay under the budget).
    """
    return _conv_with(weight_transform(weight), x, padding, weight.shape[0])


def winograd_input_grad(dout, weight, padding):
    """dX (N, C, H, W) of `winograd_conv` for dY (N, O, Ho, Wo): the conv of dY, padded by 2 - p, with the
    flipped, transposed kernel. Its transform is U's own: reversing a kernel axis swaps rows 0 and 3 of
    G, so U_flip[ab] = U[FLIP[a] FLIP[b]]^T (C, O). Rather than permute U, V is stored in FLIP order
    and the output transform reads M in it: U[ab]^T @ V[FLIP[a] FLIP[b]] is U_flip's product."""
    U = weight_transform(weight)
    return _conv_with(U.transpose(0, 2, 1), dout, (2 - padding[0], 2 - padding[1]), weight.shape[1], FLIP)


def winograd_weight_grad(x, dout, padding):
    """dW (O, C, 3, 3) of `winograd_conv`: G^T [sum over chunks of dM @ V^T] G, dM = A dY A^T per tile."""
    xp = get_array_module(x, dout)
    N, C = x.shape[:2]
    O, Ho, Wo = dout.shape[1:]
    tile_hw = tiles((Ho, Wo))
    dU = None
    for n0, n1 in image_chunks(N, _bytes_per_image(C, O, tile_hw, x.dtype.itemsize)):
        V = input_transform(x[n0:n1], padding, tile_hw)
        dM = output_transform_adjoint(dout[n0:n1])
        part = xp.matmul(dM, V.transpose(0, 2, 1))  # (16, O, T) @ (16, T, C)
        dU = part if dU is None else dU + part
    return weight_transform_adjoint(dU)
