"""Chapter 03 solutions: pyramid shapes, receptive field, a bottleneck's parameter count."""

import math


def pyramid_shapes(h, w):
    H, W = 32 * math.ceil(h / 32), 32 * math.ceil(w / 32)       # pad up to multiples of 32
    levels = [(H // 2 ** k, W // 2 ** k) for k in range(2, 6)]   # P2..P5: exact halvings
    h5, w5 = levels[-1]
    levels.append((math.ceil(h5 / 2), math.ceil(w5 / 2)))       # P6: every other pixel of P5, from 0
    return (H, W), levels


def receptive_field(layers):
    r, jump = 1, 1                    # one output pixel of an empty stack sees one input pixel
    for k, s in layers:
        r += (k - 1) * jump           # k taps, `jump` input pixels apart
        jump *= s                     # the layers after this one step over s times as many pixels
    return r


def bottleneck_num_parameters(inplanes, planes, stride, norm):
    out = 4 * planes
    n = inplanes * planes + planes * planes * 9 + planes * out       # conv1 1x1, conv2 3x3, conv3 1x1
    norm_channels = planes + planes + out
    if stride != 1 or inplanes != out:                                # the downsample shortcut
        n += inplanes * out
        norm_channels += out
    if norm == "group_norm":                                          # weight and bias per channel
        n += 2 * norm_channels
    return n                                                          # frozen BN: buffers only
