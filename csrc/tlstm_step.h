// One time step of the four TLSTM sweeps: the fused gate maths, on raw
// pointers. No torch headers here: this is shared by the C++ CPU kernels
// and the CUDA kernels (csrc/cuda/*.cu), which nvcc compiles without torch.
//
// Layouts (all row-major, P = B*H*W pixels, pixel p = (b*H + y)*W + x):
//   gates  (P, 16K)  sweep s owns columns [4K*s, 4K*s + 4K) in the order
//                    i, f, g, o. Forward reads the input projection W_x x + b
//                    there and overwrites it with the activated gates.
//   cells  (P, 4K)   c of sweep s in columns [K*s, K*s + K)
//   hidden (P, 4K)   h of sweep s in columns [K*s, K*s + K)
//   hist   (4, P, 3K) per sweep, step-major rows r = (t*B + b)*N + n: the
//                    recurrent conv's input for step t, i.e. h_{t-1} at
//                    n-1, n, n+1 (zero outside the row, zero at t = 0).
//   rec    (4, B*N, 4K) per sweep: hist_t @ Wh, the recurrent pre-activation.
// Sweeps: 0 down (t = y), 1 up (t = H-1-y), 2 right (t = x), 3 left
// (t = W-1-x). Vertical sweeps walk L = H steps over rows of N = W pixels,
// horizontal sweeps L = W steps over columns of N = H pixels.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define H2K_HD __host__ __device__ __forceinline__
#else
#define H2K_HD inline
#endif

namespace her2kit {

struct TlstmGeom {
  int64_t B, H, W, K;
  int s0, ns;  // the sweeps handled together: s0 .. s0+ns-1 (same L, N)
  int64_t L, N;
  int64_t t;  // the step

  // Pixel index of row n of image b at step t of sweep s.
  H2K_HD int64_t pixel(int s, int64_t step, int64_t b, int64_t n) const {
    int64_t y, x;
    switch (s) {
      case 0: y = step; x = n; break;
      case 1: y = H - 1 - step; x = n; break;
      case 2: y = n; x = step; break;
      default: y = n; x = W - 1 - step; break;
    }
    return (b * H + y) * W + x;
  }
};

template <typename T>
struct TlstmFwdStep {
  TlstmGeom g;
  T* gates;        // (P, 16K) in: W_x x + b; out: activated gates
  T* cells;        // (P, 4K)
  T* hidden;       // (P, 4K)
  T* hist;         // (4, P, 3K); step t+1's rows are written
  const T* rec;    // (4, B*N_max, 4K) rows of sweep s at s*rec_stride; null at t = 0
  int64_t rec_stride;
  const T* peep;   // (4, 3, K): p_i, p_f, p_o per sweep
};

template <typename T>
struct TlstmBwdStep {
  TlstmGeom g;
  const T* gates;   // (P, 16K) activated gates saved by forward
  const T* cells;   // (P, 4K)
  const T* dhidden; // (P, 4K) gradient of the output
  const T* dhist;   // (4, B*N_max, 4K) dG_{t+1} @ Wh^T per sweep (3K wide), null at t = L-1
  int64_t dhist_stride;
  T* dcell;         // (4, B*N_max, K) in: dL/dc_t from step t+1; out: dL/dc_{t-1}
  int64_t dcell_stride;
  T* dgates_pix;    // (P, 16K) dL/d(pre-activation), pixel layout
  T* dgates_step;   // (4, P, 4K) the same, step-major (rows as hist)
  const T* peep;    // (4, 3, K)
  T* dpeep;         // optional (3, K) accumulator for this sweep's peephole
                    // gradients (CPU); null: the driver computes them
};

// The CUDA launchers (csrc/cuda/tlstm_kernels.cu). `stream` is a cudaStream_t.
void tlstm_fwd_step_cuda(const TlstmFwdStep<float>& a, void* stream);
void tlstm_fwd_step_cuda(const TlstmFwdStep<double>& a, void* stream);
void tlstm_bwd_step_cuda(const TlstmBwdStep<float>& a, void* stream);
void tlstm_bwd_step_cuda(const TlstmBwdStep<double>& a, void* stream);

}  // namespace her2kit
