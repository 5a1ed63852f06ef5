"""Chapter 14 (appendix) solutions: Winograd's input transform of one tile, the shifted-view conv."""

import numpy as np

B_T = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=np.float64)      # Lavin & Gray's B^T for F(2x2, 3x3)


def winograd_input_transform(d):
    return B_T @ d @ B_T.T                              # (4, 4): rows by B^T, then columns by B


def shifted_conv_channel(x, w, padding):
    kh, kw = w.shape
    xpad = np.pad(x, padding)                           # (Hp, Wp)
    Hp, Wp = xpad.shape
    Ho, Wo = Hp - kh + 1, Wp - kw + 1
    flat = np.concatenate([xpad.ravel(), np.zeros(kw)])  # room for the last taps to run past the end
    acc = np.zeros(Ho * Wp)
    for i in range(kh):
        for j in range(kw):
            off = i * Wp + j                            # the same offset for every output pixel
            acc += w[i, j] * flat[off:off + Ho * Wp]    # a view of the padded input, no copy
    return acc.reshape(Ho, Wp)[:, :Wo]                  # drop the wrap-around columns
