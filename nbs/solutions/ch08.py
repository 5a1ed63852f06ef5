"""Chapter 08 solutions: the kernels' index arithmetic."""

import numpy as np


def unravel_output_index(index, K, C, PH, PW):
    pw = index % PW                    # the last axis varies fastest in C order
    ph = (index // PW) % PH
    c = (index // PW // PH) % C
    n = index // PW // PH // C
    return n, c, ph, pw


def grid_stride_indices(thread, n, threads_per_block, blocks):
    # for (index = blockIdx.x * blockDim.x + threadIdx.x; index < n; index += blockDim.x * gridDim.x)
    return np.arange(thread, n, threads_per_block * blocks)


def nms_mask_word(iou, row, col_block, threshold):
    word = 0
    for j in range(64):
        col = col_block * 64 + j
        if col < iou.shape[1] and col > row and iou[row, col] > threshold:
            word |= 1 << j             # bit j: box col_block * 64 + j is suppressed by `row`
    return word
