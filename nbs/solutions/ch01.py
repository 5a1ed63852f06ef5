"""Chapter 01 solutions: output size, conv2d as im2col + matmul, the weight gradient."""

from minimask import conv


def conv_output_size(size, kernel_size, stride=1, padding=0, dilation=1):
    return (size + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def conv2d_im2col(x, w, stride, padding):
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    cols = conv.im2col(x, (kh, kw), stride=stride, padding=padding)      # (N, C*kh*kw, Ho*Wo)
    return (w.reshape(O, -1) @ cols).reshape(N, O, Ho, Wo)


def conv2d_weight_grad(x, dout, w_shape, stride, padding):
    O, C, kh, kw = w_shape
    N = x.shape[0]
    cols = conv.im2col(x, (kh, kw), stride=stride, padding=padding)      # (N, C*kh*kw, L)
    dY = dout.reshape(N, O, -1)                                            # (N, O, L)
    return (dY @ cols.transpose(0, 2, 1)).sum(axis=0).reshape(w_shape)    # sum over the batch
