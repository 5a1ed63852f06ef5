// RoIPool forward (max and argmax per bin) and backward on the GPU.
// NumPy twin: minimask/roi_pool.py (roi_pool_bins, roi_pool_forward, roi_pool_backward).
//
// One CUDA thread per output element: the flat index over (K, C, PH, PW) is unpacked into
// (n, c, ph, pw), with grid-stride loops. scalar_t is float or double (-Dscalar_t=...).
// Only features that kernels/cuda_cpu.h also provides are used.

#ifndef scalar_t
#define scalar_t float
#endif

// C's round(): halves away from zero (written out so the NumPy twin can use the same formula).
__device__ int round_half_away(scalar_t v) {
  return v < 0 ? -(int)floor(-v + (scalar_t)0.5) : (int)floor(v + (scalar_t)0.5);
}

extern "C" __global__ void roi_pool_forward(const scalar_t* input, const scalar_t* rois, scalar_t* output,
                                            int* argmax, long long n_out, int channels, int height, int width,
                                            int pooled_height, int pooled_width, scalar_t spatial_scale) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < n_out;
       index += (long long)blockDim.x * gridDim.x) {
    // unpack the flat index of output (K, C, PH, PW) into (n, c, ph, pw)
    int pw = (int)(index % pooled_width);
    int ph = (int)((index / pooled_width) % pooled_height);
    int c = (int)((index / pooled_width / pooled_height) % channels);
    long long n = index / pooled_width / pooled_height / channels;

    const scalar_t* roi = rois + n * 5;
    int batch = (int)roi[0];
    // quantisation 1: the box snaps to whole map pixels, both end pixels included
    int start_w = round_half_away(roi[1] * spatial_scale);
    int start_h = round_half_away(roi[2] * spatial_scale);
    int end_w = round_half_away(roi[3] * spatial_scale);
    int end_h = round_half_away(roi[4] * spatial_scale);
    int roi_w = max(end_w - start_w + 1, 1);
    int roi_h = max(end_h - start_h + 1, 1);
    scalar_t bin_h = (scalar_t)roi_h / (scalar_t)pooled_height;
    scalar_t bin_w = (scalar_t)roi_w / (scalar_t)pooled_width;
    // quantisation 2: a bin covers the whole pixels it touches, [floor(p * bin), ceil((p+1) * bin))
    int hstart = min(max((int)floor(ph * bin_h) + start_h, 0), height);
    int hend = min(max((int)ceil((ph + 1) * bin_h) + start_h, 0), height);
    int wstart = min(max((int)floor(pw * bin_w) + start_w, 0), width);
    int wend = min(max((int)ceil((pw + 1) * bin_w) + start_w, 0), width);

    const scalar_t* plane = input + ((long long)batch * channels + c) * height * width;
    scalar_t best = 0;  // an empty bin gives 0 and argmax -1
    int best_index = -1;
    for (int h = hstart; h < hend; h++) {  // rows, then columns: the first maximum wins ties
      for (int w = wstart; w < wend; w++) {
        scalar_t v = plane[h * width + w];
        if (best_index < 0 || v > best) {
          best = v;
          best_index = h * width + w;
        }
      }
    }
    output[index] = best;
    argmax[index] = best_index;
  }
}

extern "C" __global__ void roi_pool_backward(const scalar_t* grad_output, const int* argmax, const scalar_t* rois,
                                             scalar_t* grad_input, long long n_out, int channels, int height,
                                             int width, int pooled_height, int pooled_width) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < n_out;
       index += (long long)blockDim.x * gridDim.x) {
    // unpack the flat index of grad_output (K, C, PH, PW) into (n, c): ph, pw are not needed
    int c = (int)((index / pooled_width / pooled_height) % channels);
    long long n = index / pooled_width / pooled_height / channels;
    // forward was: out[n, c, ph, pw] = input[batch, c, argmax]; overlapping bins and boxes may
    // pick the same pixel, hence atomicAdd
    int a = argmax[index];
    if (a < 0) continue;
    int batch = (int)rois[n * 5];
    atomicAdd(grad_input + ((long long)batch * channels + c) * height * width + a, grad_output[index]);
  }
}
