"""Exercises of the appendix (chapter 14, the speed engines): Winograd's input transform of one tile,
and a stride-1 convolution of one channel pair computed on shifted views of the padded input.

Chapter: nbs/14_appendix_engines.ipynb
"""

from __future__ import annotations

import numpy as np

from .. import conv, fast
from ..fast import winograd
from ._core import check_forward, exercise

_B_T = np.array(winograd.B_T, dtype=np.float64)  # (4, 4): the package's input transform


def _rng(seed):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------
# 14.1: B^T d B
# ------------------------------------------------------------------------------------------------


def _input_transform_ref(d):
    return _B_T @ d @ _B_T.T


@exercise("14.1", "winograd_input_transform",
          "Winograd F(2x2, 3x3): the input transform V = B^T d B of one 4x4 tile d")
def check_winograd_input_transform(fn):
    probes = [(_rng(140).standard_normal((4, 4)),), (np.arange(16.0).reshape(4, 4),),
              (_rng(141).integers(-3, 4, (4, 4)).astype(np.float64),)]
    mistakes = [
        ("the transform transposed (B d B^T): B_T as written in the package is B^T, so V = B_T @ d @ B_T.T",
         lambda d: _B_T.T @ d @ _B_T),
        ("only the rows transformed (B^T d): the tile needs B on the right too, V = B^T d B",
         lambda d: _B_T @ d),
        ("only the columns transformed (d B): the tile needs B^T on the left too, V = B^T d B",
         lambda d: d @ _B_T.T),
        ("the tile transposed (B^T d^T B): d[i, j] is row i, column j of the padded input",
         lambda d: _B_T @ d.T @ _B_T.T),
    ]
    return check_forward("14.1", fn, _input_transform_ref, probes, mistakes)


# ------------------------------------------------------------------------------------------------
# 14.2: the shifted-view conv of one channel pair
# ------------------------------------------------------------------------------------------------


def _one_pair_ref(x, w, padding):
    """conv2d of one (H, W) channel with one (kh, kw) kernel, stride 1: the package's reference."""
    with fast.reference():
        out, _ = conv.conv2d_forward(x[None, None], w[None, None], None, stride=1, padding=padding)
    return out[0, 0]


def _wrapped(x, w, padding):
    """The shifted-view result before the wrap-around columns are dropped: (Ho, Wp)."""
    kh, kw = w.shape
    xpad = np.pad(x, padding)
    Hp, Wp = xpad.shape
    Ho = Hp - kh + 1
    flat = np.concatenate([xpad.ravel(), np.zeros(kw)])
    acc = np.zeros(Ho * Wp)
    for i in range(kh):
        for j in range(kw):
            acc += w[i, j] * flat[i * Wp + j:i * Wp + j + Ho * Wp]
    return acc.reshape(Ho, Wp)


@exercise("14.2", "shifted_conv_channel",
          "stride-1 conv2d of one channel pair, x (H, W), w (kh, kw), padding -> (Ho, Wo), on shifted views")
def check_shifted_conv_channel(fn):
    probes = [(_rng(142).standard_normal((5, 6)), _rng(143).standard_normal((3, 3)), 1),
              (_rng(144).standard_normal((7, 4)), _rng(145).standard_normal((3, 2)), 0),
              (_rng(146).standard_normal((6, 6)), _rng(147).standard_normal((5, 5)), 2)]
    mistakes = [
        ("a flipped kernel: conv2d (as torch's) is a cross-correlation, tap (i, j) reads offset i*Wp + j",
         lambda x, w, p: _one_pair_ref(x, w[::-1, ::-1].copy(), p)),
        ("the wrap-around columns kept: the output is computed on a grid Wp wide, drop its last Wp - Wout "
         "columns", _wrapped),
        ("the padding forgotten: pad the input by `padding` zeros on every side before flattening it",
         lambda x, w, p: _one_pair_ref(x, w, 0)),
    ]
    return check_forward("14.2", fn, _one_pair_ref, probes, mistakes)
