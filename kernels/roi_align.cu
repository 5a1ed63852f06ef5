// RoIAlign forward and backward on the GPU.
// NumPy twin: minimask/roi_align.py (roi_align_geometry, sample_points, bilinear_taps /
// bilinear_interpolate, roi_align_forward, roi_align_backward). Read them side by side.
//
// One CUDA thread per output element: the flat index over (K, C, PH, PW) is unpacked into
// (n, c, ph, pw), and a grid-stride loop lets any grid size cover every element.
// scalar_t is float or double, chosen by the compiler option -Dscalar_t=... (extern "C" kernels,
// which CuPy's RawKernel and the CPU emulation both find by name, cannot be templates).
// Only features that kernels/cuda_cpu.h also provides are used, so g++ compiles this same file.

#ifndef scalar_t
#define scalar_t float
#endif

// The value of one (H, W) plane at the real point (y, x): a weighted mean of its 4 neighbours.
//   v = hy*hx*v(y_low, x_low) + hy*lx*v(y_low, x_high) + ly*hx*v(y_high, x_low) + ly*lx*v(y_high, x_high)
__device__ scalar_t bilinear_interpolate(const scalar_t* plane, int height, int width, scalar_t y, scalar_t x) {
  // a sample more than one pixel outside the map contributes zero
  if (y < -1.0 || y > height || x < -1.0 || x > width) return 0;
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  int y_low = (int)y;
  int x_low = (int)x;
  int y_high, x_high;
  if (y_low >= height - 1) {  // on or past the last row: read that row only
    y_high = y_low = height - 1;
    y = (scalar_t)y_low;
  } else {
    y_high = y_low + 1;
  }
  if (x_low >= width - 1) {
    x_high = x_low = width - 1;
    x = (scalar_t)x_low;
  } else {
    x_high = x_low + 1;
  }
  scalar_t ly = y - y_low, lx = x - x_low;
  scalar_t hy = 1 - ly, hx = 1 - lx;
  return hy * hx * plane[y_low * width + x_low] + hy * lx * plane[y_low * width + x_high] +
         ly * hx * plane[y_high * width + x_low] + ly * lx * plane[y_high * width + x_high];
}

// The same four weights and pixel indices, for the backward's scatter. False: no contribution.
__device__ bool bilinear_interpolate_gradient(int height, int width, scalar_t y, scalar_t x,
                                              scalar_t* w1, scalar_t* w2, scalar_t* w3, scalar_t* w4,
                                              int* x_low, int* x_high, int* y_low, int* y_high) {
  if (y < -1.0 || y > height || x < -1.0 || x > width) return false;
  if (y <= 0) y = 0;
  if (x <= 0) x = 0;
  *y_low = (int)y;
  *x_low = (int)x;
  if (*y_low >= height - 1) {
    *y_high = *y_low = height - 1;
    y = (scalar_t)*y_low;
  } else {
    *y_high = *y_low + 1;
  }
  if (*x_low >= width - 1) {
    *x_high = *x_low = width - 1;
    x = (scalar_t)*x_low;
  } else {
    *x_high = *x_low + 1;
  }
  scalar_t ly = y - *y_low, lx = x - *x_low;
  scalar_t hy = 1 - ly, hx = 1 - lx;
  *w1 = hy * hx;
  *w2 = hy * lx;
  *w3 = ly * hx;
  *w4 = ly * lx;
  return true;
}

// Box geometry on the map (roi_align_geometry in the twin).
struct RoiGeometry {
  int batch;
  scalar_t start_y, start_x, bin_h, bin_w;
  int grid_h, grid_w;
};

__device__ RoiGeometry roi_geometry(const scalar_t* roi, int pooled_height, int pooled_width,
                                    scalar_t spatial_scale, int sampling_ratio, int aligned) {
  RoiGeometry g;
  g.batch = (int)roi[0];
  // aligned: a map pixel i covers [i, i+1) and its value sits at its centre i + 0.5; shifting the
  // box by -0.5 makes a sample at box coordinate u read the pixel centred at u. Without the shift
  // every box is sampled half a pixel down-right of where it is (torchvision's legacy default).
  scalar_t offset = aligned ? (scalar_t)0.5 : (scalar_t)0.0;
  g.start_x = roi[1] * spatial_scale - offset;
  g.start_y = roi[2] * spatial_scale - offset;
  scalar_t end_x = roi[3] * spatial_scale - offset;
  scalar_t end_y = roi[4] * spatial_scale - offset;
  scalar_t roi_w = end_x - g.start_x;
  scalar_t roi_h = end_y - g.start_y;
  if (!aligned) {  // legacy: force malformed boxes to 1x1
    roi_w = max(roi_w, (scalar_t)1);
    roi_h = max(roi_h, (scalar_t)1);
  }
  g.bin_h = roi_h / (scalar_t)pooled_height;
  g.bin_w = roi_w / (scalar_t)pooled_width;
  // samples per bin and axis; adaptive (about one per map pixel) when sampling_ratio <= 0
  g.grid_h = sampling_ratio > 0 ? sampling_ratio : max((int)ceil(roi_h / (scalar_t)pooled_height), 0);
  g.grid_w = sampling_ratio > 0 ? sampling_ratio : max((int)ceil(roi_w / (scalar_t)pooled_width), 0);
  return g;
}

extern "C" __global__ void roi_align_forward(const scalar_t* input, const scalar_t* rois, scalar_t* output,
                                             long long n_out, int channels, int height, int width,
                                             int pooled_height, int pooled_width, scalar_t spatial_scale,
                                             int sampling_ratio, int aligned) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < n_out;
       index += (long long)blockDim.x * gridDim.x) {
    // unpack the flat index of output (K, C, PH, PW) into (n, c, ph, pw)
    int pw = (int)(index % pooled_width);
    int ph = (int)((index / pooled_width) % pooled_height);
    int c = (int)((index / pooled_width / pooled_height) % channels);
    long long n = index / pooled_width / pooled_height / channels;

    RoiGeometry g = roi_geometry(rois + n * 5, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned);
    const scalar_t* plane = input + ((long long)g.batch * channels + c) * height * width;

    scalar_t sum = 0;
    for (int iy = 0; iy < g.grid_h; iy++) {
      // sample iy of bin ph sits at the centre of sub-bin iy: start + ph*bin + (iy + 1/2) * bin / grid
      scalar_t y = g.start_y + ph * g.bin_h + (iy + (scalar_t)0.5) * g.bin_h / (scalar_t)g.grid_h;
      for (int ix = 0; ix < g.grid_w; ix++) {
        scalar_t x = g.start_x + pw * g.bin_w + (ix + (scalar_t)0.5) * g.bin_w / (scalar_t)g.grid_w;
        sum += bilinear_interpolate(plane, height, width, y, x);
      }
    }
    scalar_t count = (scalar_t)max(g.grid_h * g.grid_w, 1);
    output[index] = sum / count;
  }
}

extern "C" __global__ void roi_align_backward(const scalar_t* grad_output, const scalar_t* rois,
                                              scalar_t* grad_input, long long n_out, int channels, int height,
                                              int width, int pooled_height, int pooled_width,
                                              scalar_t spatial_scale, int sampling_ratio, int aligned) {
  for (long long index = blockIdx.x * (long long)blockDim.x + threadIdx.x; index < n_out;
       index += (long long)blockDim.x * gridDim.x) {
    // unpack the flat index of grad_output (K, C, PH, PW) into (n, c, ph, pw)
    int pw = (int)(index % pooled_width);
    int ph = (int)((index / pooled_width) % pooled_height);
    int c = (int)((index / pooled_width / pooled_height) % channels);
    long long n = index / pooled_width / pooled_height / channels;

    RoiGeometry g = roi_geometry(rois + n * 5, pooled_height, pooled_width, spatial_scale, sampling_ratio, aligned);
    scalar_t* grad_plane = grad_input + ((long long)g.batch * channels + c) * height * width;
    // forward was: out = (1 / count) * sum over samples of (w1 v1 + w2 v2 + w3 v3 + w4 v4),
    // so pixel v_i receives grad_out * w_i / count from every sample; other threads (bins of
    // this and other boxes) may add to the same pixel at the same time, hence atomicAdd.
    scalar_t count = (scalar_t)max(g.grid_h * g.grid_w, 1);
    scalar_t grad = grad_output[index] / count;
    for (int iy = 0; iy < g.grid_h; iy++) {
      scalar_t y = g.start_y + ph * g.bin_h + (iy + (scalar_t)0.5) * g.bin_h / (scalar_t)g.grid_h;
      for (int ix = 0; ix < g.grid_w; ix++) {
        scalar_t x = g.start_x + pw * g.bin_w + (ix + (scalar_t)0.5) * g.bin_w / (scalar_t)g.grid_w;
        scalar_t w1, w2, w3, w4;
        int x_low, x_high, y_low, y_high;
        if (!bilinear_interpolate_gradient(height, width, y, x, &w1, &w2, &w3, &w4, &x_low, &x_high, &y_low,
                                           &y_high))
          continue;
        atomicAdd(grad_plane + y_low * width + x_low, grad * w1);
        atomicAdd(grad_plane + y_low * width + x_high, grad * w2);
        atomicAdd(grad_plane + y_high * width + x_low, grad * w3);
        atomicAdd(grad_plane + y_high * width + x_high, grad * w4);
      }
    }
  }
}
