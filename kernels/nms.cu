// Non-maximum suppression, the bitmask kernel: which boxes does each box suppress?
// NumPy twin: minimask/nms.py (nms; the IoU arithmetic of minimask/boxes.py box_iou).
// Host side: minimask/kernels.py nms_cuda sorts the boxes by score before the launch and
// reduces the bitmask afterwards (a box is kept unless a kept box above it has its bit set).
//
// The boxes are cut into blocks of 64 (the bits of one unsigned long long). CUDA block
// (col_block, row_block) compares the 64 boxes of row_block with the 64 of col_block: it first
// copies the column boxes into shared memory (each thread one box), waits, then each thread takes
// one row box and writes one output element, the 64-bit word
//     mask[row, col_block] = bits j such that IoU(row, col_block * 64 + j) > threshold, j after row.
// Grid-stride loops over both block indices let any grid size cover all pairs of blocks.
// scalar_t is float or double (-Dscalar_t=...); compile with --fmad=false so that the IoU is
// rounded exactly as NumPy rounds it. Only features that kernels/cuda_cpu.h provides are used.

#ifndef scalar_t
#define scalar_t float
#endif

#define BOXES_PER_BLOCK 64  // bits in an unsigned long long; also the block size

// IoU(a, b) > threshold with box_iou's arithmetic: a zero union gives IoU 0.
__device__ bool iou_above(const scalar_t* a, const scalar_t* b, scalar_t threshold) {
  scalar_t w = max(min(a[2], b[2]) - max(a[0], b[0]), (scalar_t)0);
  scalar_t h = max(min(a[3], b[3]) - max(a[1], b[1]), (scalar_t)0);
  scalar_t inter = w * h;
  scalar_t area_a = (a[2] - a[0]) * (a[3] - a[1]);
  scalar_t area_b = (b[2] - b[0]) * (b[3] - b[1]);
  scalar_t uni = area_a + area_b - inter;
  scalar_t iou = uni > 0 ? inter / uni : (scalar_t)0;
  return iou > threshold;
}

extern "C" __global__ void nms_mask(const scalar_t* boxes, unsigned long long* mask, int n_boxes,
                                    scalar_t iou_threshold) {
  const int col_blocks = (n_boxes + BOXES_PER_BLOCK - 1) / BOXES_PER_BLOCK;
  __shared__ scalar_t block_boxes[BOXES_PER_BLOCK * 4];
  for (int row_block = blockIdx.y; row_block < col_blocks; row_block += gridDim.y) {
    for (int col_block = blockIdx.x; col_block < col_blocks; col_block += gridDim.x) {
      const int row_size = min(n_boxes - row_block * BOXES_PER_BLOCK, BOXES_PER_BLOCK);
      const int col_size = min(n_boxes - col_block * BOXES_PER_BLOCK, BOXES_PER_BLOCK);
      // stage the column boxes in shared memory: read once from global memory, used 64 times
      if ((int)threadIdx.x < col_size) {
        for (int k = 0; k < 4; k++)
          block_boxes[threadIdx.x * 4 + k] = boxes[(col_block * BOXES_PER_BLOCK + threadIdx.x) * 4 + k];
      }
      __syncthreads();
      if ((int)threadIdx.x < row_size) {
        // one output element: the word of row box `row` for this column block
        const int row = row_block * BOXES_PER_BLOCK + threadIdx.x;
        const scalar_t* row_box = boxes + row * 4;
        unsigned long long bits = 0;
        // only boxes ranked below `row` can be suppressed by it
        int start = (row_block == col_block) ? (int)threadIdx.x + 1 : 0;
        if (col_block >= row_block) {
          for (int j = start; j < col_size; j++)
            if (iou_above(row_box, block_boxes + j * 4, iou_threshold)) bits |= 1ULL << j;
        }
        mask[(long long)row * col_blocks + col_block] = bits;
      }
      __syncthreads();  // the next column block overwrites block_boxes
    }
  }
}
