// Spatial pyramid pooling on raw pointers: bin bounds and the argmax rule
// shared by the CPU kernels and the CUDA kernels (no torch headers here).
//
// x is (planes, H, W) contiguous; the output and the int64 argmax (a flat
// index y*W + x into the plane) are (planes, S) with S = sum of n^2 over the
// levels, level by level, row-major within a level. Bin i of n along a side
// of length H covers [floor(i*H/n), ceil((i+1)*H/n)), as PyTorch's adaptive
// pooling does.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace her2kit {

H2K_HD int64_t bin_start(int64_t i, int64_t n, int64_t size) { return (i * size) / n; }
H2K_HD int64_t bin_end(int64_t i, int64_t n, int64_t size) {
  return ((i + 1) * size + n - 1) / n;
}

// Does (v, i) beat the current best (bv, bi)? PyTorch's scan keeps the first
// maximum in row-major order and lets a NaN win (the last NaN seen); this
// order-free form gives the same answer whichever order bins are merged in.
template <typename T>
H2K_HD bool spp_better(T v, int64_t i, T bv, int64_t bi) {
  const bool vn = v != v, bn = bv != bv;
  if (vn) return !bn || i > bi;
  if (bn) return false;
  return v > bv || (v == bv && i < bi);
}

// Levels passed to the CUDA kernels by value.
struct SppLevels {
  static constexpr int kMax = 16;
  int count;
  int64_t n[kMax];
  int64_t offset[kMax];
};

// The CUDA launchers (csrc/cuda/spp_kernels.cu); `stream` is a cudaStream_t;
// they return a cudaError_t (0: success). Backward adds into `gin`, which
// the caller zeroes.
int spp_forward_cuda(const float* x, float* out, int64_t* idx, int64_t planes, int64_t H,
                     int64_t W, const SppLevels& levels, int64_t S, void* stream);
int spp_forward_cuda(const double* x, double* out, int64_t* idx, int64_t planes, int64_t H,
                     int64_t W, const SppLevels& levels, int64_t S, void* stream);
int spp_backward_cuda(const float* grad, const int64_t* idx, float* gin, int64_t planes,
                      int64_t HW, int64_t S, void* stream);
int spp_backward_cuda(const double* grad, const int64_t* idx, double* gin, int64_t planes,
                      int64_t HW, int64_t S, void* stream);

}  // namespace her2kit
