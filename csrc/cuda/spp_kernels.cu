// Spatial pyramid pooling for CUDA. Forward: one launch for all levels, one
// thread per (plane, bin), scanning its bin. Backward: one thread per plane
// adds the plane's bin gradients into its argmax pixels in a fixed order
// (bins overlap, so two bins may share a pixel: no atomics, deterministic).
// No torch headers: compiled by plain nvcc.
#include <cuda_runtime.h>

#include <cstdint>

#include "spp_kernels.h"

namespace her2kit {
namespace {

template <typename T>
__global__ void spp_fwd_kernel(const T* __restrict__ x, T* __restrict__ out,
                               int64_t* __restrict__ idx, int64_t planes, int64_t H, int64_t W,
                               SppLevels lv, int64_t S) {
  const int64_t total = planes * S;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t q = e / S, j = e % S;
    int l = 0;
    while (l + 1 < lv.count && j >= lv.offset[l + 1]) ++l;
    const int64_t n = lv.n[l], bin = j - lv.offset[l];
    const int64_t bi = bin / n, bj = bin % n;
    const int64_t y0 = bin_start(bi, n, H), y1 = bin_end(bi, n, H);
    const int64_t x0 = bin_start(bj, n, W), x1 = bin_end(bj, n, W);
    const T* xp = x + q * H * W;
    T best = xp[y0 * W + x0];
    int64_t arg = y0 * W + x0;
    for (int64_t y = y0; y < y1; ++y) {
      for (int64_t xx = x0; xx < x1; ++xx) {
        const T v = xp[y * W + xx];
        // Scan order: the first maximum wins, a NaN always wins.
        if (v > best || v != v) {
          best = v;
          arg = y * W + xx;
        }
      }
    }
    out[e] = best;
    idx[e] = arg;
  }
}

template <typename T>
__global__ void spp_bwd_kernel(const T* __restrict__ grad, const int64_t* __restrict__ idx,
                               T* __restrict__ gin, int64_t planes, int64_t HW, int64_t S) {
  for (int64_t q = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; q < planes;
       q += (int64_t)gridDim.x * blockDim.x) {
    for (int64_t j = 0; j < S; ++j) {
      const int64_t k = idx[q * S + j];
      if (k >= 0 && k < HW) gin[q * HW + k] += grad[q * S + j];
    }
  }
}

int blocks_for(int64_t total, int threads) {
  int64_t b = (total + threads - 1) / threads;
  if (b > 65535) b = 65535;
  return b < 1 ? 1 : (int)b;
}

template <typename T>
int launch_fwd(const T* x, T* out, int64_t* idx, int64_t planes, int64_t H, int64_t W,
               const SppLevels& lv, int64_t S, void* stream) {
  spp_fwd_kernel<T><<<blocks_for(planes * S, 256), 256, 0, (cudaStream_t)stream>>>(
      x, out, idx, planes, H, W, lv, S);
  return (int)cudaGetLastError();
}

template <typename T>
int launch_bwd(const T* grad, const int64_t* idx, T* gin, int64_t planes, int64_t HW, int64_t S,
               void* stream) {
  spp_bwd_kernel<T><<<blocks_for(planes, 128), 128, 0, (cudaStream_t)stream>>>(grad, idx, gin,
                                                                               planes, HW, S);
  return (int)cudaGetLastError();
}

}  // namespace

int spp_forward_cuda(const float* x, float* out, int64_t* idx, int64_t planes, int64_t H,
                     int64_t W, const SppLevels& levels, int64_t S, void* stream) {
  return launch_fwd(x, out, idx, planes, H, W, levels, S, stream);
}
int spp_forward_cuda(const double* x, double* out, int64_t* idx, int64_t planes, int64_t H,
                     int64_t W, const SppLevels& levels, int64_t S, void* stream) {
  return launch_fwd(x, out, idx, planes, H, W, levels, S, stream);
}
int spp_backward_cuda(const float* grad, const int64_t* idx, float* gin, int64_t planes,
                      int64_t HW, int64_t S, void* stream) {
  return launch_bwd(grad, idx, gin, planes, HW, S, stream);
}
int spp_backward_cuda(const double* grad, const int64_t* idx, double* gin, int64_t planes,
                      int64_t HW, int64_t S, void* stream) {
  return launch_bwd(grad, idx, gin, planes, HW, S, stream);
}

const char* cuda_error_string(int code) { return cudaGetErrorString((cudaError_t)code); }

}  // namespace her2kit
