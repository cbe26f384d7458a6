// One time step of the four TLSTM sweeps: the fused gate maths, on raw
// pointers. No torch headers here: this is shared by the C++ CPU kernels
// and the CUDA kernels (csrc/cuda/*.cu), which nvcc compiles without torch.
//
// Layouts (row-major, P = B*H*W). Each pair of sweeps that walks the same
// axis shares a "half" laid out in walking order: half 0 (down, up) as
// (H, B, W), half 1 (right, left) as (W, B, H). Row q = (pos*B + b)*N + n,
// where pos is the coordinate along the walk (t for down/right, L-1-t for
// up/left): the rows of one step of all images are contiguous.
//   gates  (2, P, 8K)  sweep s owns columns [4K*(s%2), +4K) of half s/2, in
//                      the order i, f, g, o. Forward reads the input
//                      projection W_x x + b there and overwrites it with the
//                      activated gates; backward's dgates has this layout too.
//   cells  (2, P, 2K)  c of sweep s in columns [K*(s%2), +K) of half s/2
//   hidden (2, P, 2K)  h, the same way
//   hist   (4, P, 3K)  per sweep, rows as above: row q holds the recurrent
//                      conv's input at that position, i.e. the previous
//                      step's h at n-1, n, n+1 (zero outside the row, zero
//                      at the first step).
//   rec    (ns, B*N, 4K) optional, per sweep: hist @ Wh for the step (CUDA);
//                      null when the caller already added it into gates (CPU).
// Sweeps: 0 down (pos = y), 1 up, 2 right (pos = x), 3 left. Vertical
// sweeps walk L = H steps over rows of N = W pixels, horizontal sweeps
// L = W steps over columns of N = H pixels.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace her2kit {

struct TlstmGeom {
  int64_t B, H, W, K;
  int s0, ns;  // the sweeps handled together: s0 .. s0+ns-1 (same L, N)
  int64_t L, N;
  int64_t t;  // the step

  // Coordinate along the walk of step `step` of sweep s.
  H2K_HD int64_t pos(int s, int64_t step) const {
    return (s % 2 == 0) ? step : (s < 2 ? H : W) - 1 - step;
  }
  // Row, within the half of sweep s (and in hist), of row n of image b at
  // step `step`.
  H2K_HD int64_t row(int s, int64_t step, int64_t b, int64_t n) const {
    return (pos(s, step) * B + b) * (s < 2 ? W : H) + n;
  }
  // Offsets (in elements) of that row's gate block (4K wide) and state
  // block (K wide) in the gates / cells / hidden buffers.
  H2K_HD int64_t gate_at(int s, int64_t r) const {
    return ((s >> 1) * B * H * W + r) * 8 * K + (s & 1) * 4 * K;
  }
  H2K_HD int64_t state_at(int s, int64_t r) const {
    return ((s >> 1) * B * H * W + r) * 2 * K + (s & 1) * K;
  }
};

// The peephole LSTM cell of one channel: the one copy of the gate maths,
// used by the CPU row and chain kernels and by the CUDA kernels. `Act`
// supplies sigm and tanh (the CPU's vectorisable ones, CUDA's).
// Forward: pre-activations a_i..a_o (input projection, bias and recurrent
// term summed), c_{t-1} (0 at the first step) and the peepholes -> the
// activated gates, c_t and h_t.
template <typename Act, typename T>
H2K_HD void lstm_cell_fwd(T ai, T af, T ag, T ao, T cprev, T pi, T pf, T po,
                          T& i, T& f, T& g, T& o, T& c, T& h) {
  i = Act::sigm(ai + pi * cprev);
  f = Act::sigm(af + pf * cprev);
  g = Act::tanh(ag);
  c = f * cprev + i * g;
  o = Act::sigm(ao + po * c);
  h = o * Act::tanh(c);
}

// Backward through lstm_cell_fwd: the activated gates, c_t, c_{t-1}, the
// peepholes and dh = dL/dh_t (from every use of h_t); dc comes in as
// dL/dc_t from step t+1 and leaves as dL/dc_{t-1}. Out: the gradients of
// the pre-activations.
template <typename Act, typename T>
H2K_HD void lstm_cell_bwd(T i, T f, T g, T o, T c, T cprev, T pi, T pf, T po, T dh, T& dc,
                          T& dai, T& daf, T& dag, T& dao) {
  const T tc = Act::tanh(c);
  dao = dh * tc * o * (T(1) - o);
  const T dcc = dc + dh * o * (T(1) - tc * tc) + dao * po;
  dai = dcc * g * i * (T(1) - i);
  dag = dcc * i * (T(1) - g * g);
  daf = dcc * cprev * f * (T(1) - f);
  dc = dcc * f + dai * pi + daf * pf;
}

template <typename T>
struct TlstmFwdStep {
  TlstmGeom g;
  T* gates;        // (2, P, 8K) in: W_x x + b; out: activated gates
  T* cells;        // (2, P, 2K)
  T* hidden;       // (2, P, 2K)
  T* hist;         // (4, P, 3K); step t+1's rows are written
  const T* rec;    // (ns, B*N, 4K) rows of sweep s0+i at i*rec_stride, or null
  int64_t rec_stride;
  const T* peep;   // (4, 3, K): p_i, p_f, p_o per sweep
};

template <typename T>
struct TlstmBwdStep {
  TlstmGeom g;
  const T* gates;   // (2, P, 8K) activated gates saved by forward
  const T* cells;   // (2, P, 2K)
  const T* dhidden; // (2, P, 2K) gradient of the output
  const T* dhist;   // (ns, B*N, 3K) dG_{t+1} @ Wh^T per sweep, null at t = L-1
  int64_t dhist_stride;
  T* dcell;         // (ns, B*N, K) in: dL/dc_t from step t+1; out: dL/dc_{t-1}
  int64_t dcell_stride;
  T* dgates;        // (2, P, 8K) dL/d(pre-activation), the gates' layout
  const T* peep;    // (4, 3, K)
  T* dpeep;         // optional (3, K) accumulator for this sweep's peephole
                    // gradients (CPU); null: the driver computes them
};

// The CUDA launchers (csrc/cuda/tlstm_kernels.cu): one step of the rows of
// sweeps s0 .. s0+ns-1, one thread per (row, channel). `stream` is a
// cudaStream_t; they return a cudaError_t (0: success), which
// cuda_error_string (csrc/cuda/spp_kernels.cu) names.
int tlstm_fwd_step_cuda(const TlstmFwdStep<float>& a, void* stream);
int tlstm_fwd_step_cuda(const TlstmFwdStep<double>& a, void* stream);
int tlstm_bwd_step_cuda(const TlstmBwdStep<float>& a, void* stream);
int tlstm_bwd_step_cuda(const TlstmBwdStep<double>& a, void* stream);
const char* cuda_error_string(int code);

}  // namespace her2kit
