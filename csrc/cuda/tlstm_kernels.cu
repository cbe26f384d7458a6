// TLSTM gate step kernels for CUDA: one thread per (row, hidden channel) of
// the sweeps in a step. The recurrent GEMM of the step runs before (the
// driver's batched GEMM). No torch headers: compiled by plain nvcc.
#include <cuda_runtime.h>

#include <cstdint>

#include "tlstm_step.h"

namespace her2kit {
namespace {

// The activations lstm_cell_fwd / lstm_cell_bwd (tlstm_step.h) use on the GPU.
struct CudaAct {
  static __host__ __device__ __forceinline__ float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }
  static __host__ __device__ __forceinline__ double sigm(double x) { return 1.0 / (1.0 + exp(-x)); }
  static __host__ __device__ __forceinline__ float tanh(float x) { return tanhf(x); }
  static __host__ __device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
};

template <typename T>
__global__ void tlstm_fwd_kernel(TlstmFwdStep<T> a) {
  const TlstmGeom& g = a.g;
  const int64_t K = g.K, BN = g.B * g.N, P = g.B * g.H * g.W;
  const int64_t total = g.ns * BN * K;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = e % K, row = e / K;
    const int sl = (int)(row / BN);
    const int s = g.s0 + sl;
    const int64_t bn = row % BN, b = bn / g.N, n = bn % g.N;
    const int64_t q = g.row(s, g.t, b, n);
    T* gt = a.gates + g.gate_at(s, q);
    const T* pe = a.peep + s * 3 * K;
    T ri = 0, rf = 0, rg = 0, ro = 0, cprev = 0;
    if (g.t > 0) {
      if (a.rec != nullptr) {
        const T* r = a.rec + sl * a.rec_stride + bn * 4 * K;
        ri = r[k];
        rf = r[K + k];
        rg = r[2 * K + k];
        ro = r[3 * K + k];
      }
      cprev = a.cells[g.state_at(s, g.row(s, g.t - 1, b, n)) + k];
    }
    T i, f, gg, o, c, h;
    lstm_cell_fwd<CudaAct>(gt[k] + ri, gt[K + k] + rf, gt[2 * K + k] + rg, gt[3 * K + k] + ro,
                           cprev, pe[k], pe[K + k], pe[2 * K + k], i, f, gg, o, c, h);
    gt[k] = i;
    gt[K + k] = f;
    gt[2 * K + k] = gg;
    gt[3 * K + k] = o;
    a.cells[g.state_at(s, q) + k] = c;
    a.hidden[g.state_at(s, q) + k] = h;
    if (g.t + 1 < g.L) {
      // Row m of the next step's recurrent input holds h[m-1], h[m], h[m+1].
      T* hb = a.hist + s * P * 3 * K + g.row(s, g.t + 1, b, 0) * 3 * K;
      hb[n * 3 * K + K + k] = h;
      if (n + 1 < g.N) hb[(n + 1) * 3 * K + k] = h;
      if (n > 0) hb[(n - 1) * 3 * K + 2 * K + k] = h;
      if (n == 0) hb[k] = T(0);
      if (n + 1 == g.N) hb[n * 3 * K + 2 * K + k] = T(0);
    }
  }
}

template <typename T>
__global__ void tlstm_bwd_kernel(TlstmBwdStep<T> a) {
  const TlstmGeom& g = a.g;
  const int64_t K = g.K, BN = g.B * g.N;
  const int64_t total = g.ns * BN * K;
  for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total;
       e += (int64_t)gridDim.x * blockDim.x) {
    const int64_t k = e % K, row = e / K;
    const int sl = (int)(row / BN);
    const int s = g.s0 + sl;
    const int64_t bn = row % BN, b = bn / g.N, n = bn % g.N;
    const int64_t q = g.row(s, g.t, b, n);
    const T* gt = a.gates + g.gate_at(s, q);
    const T* pe = a.peep + s * 3 * K;
    const T i = gt[k], f = gt[K + k], gg = gt[2 * K + k], o = gt[3 * K + k];
    const T c = a.cells[g.state_at(s, q) + k];
    const T cprev = g.t > 0 ? a.cells[g.state_at(s, g.row(s, g.t - 1, b, n)) + k] : T(0);
    // dL/dh_t: the output's gradient plus what step t+1 read of h_t.
    T dh = a.dhidden[g.state_at(s, q) + k];
    if (a.dhist != nullptr) {
      const T* dr = a.dhist + sl * a.dhist_stride + bn * 3 * K;
      dh += dr[K + k];
      if (n + 1 < g.N) dh += dr[3 * K + k];
      if (n > 0) dh += dr[-3 * K + 2 * K + k];
    }
    T* dcp = a.dcell + sl * a.dcell_stride + bn * K + k;
    T* dgp = a.dgates + g.gate_at(s, q);
    lstm_cell_bwd<CudaAct>(i, f, gg, o, c, cprev, pe[k], pe[K + k], pe[2 * K + k], dh, *dcp,
                           dgp[k], dgp[K + k], dgp[2 * K + k], dgp[3 * K + k]);
  }
}

int blocks_for(int64_t total, int threads) {
  int64_t b = (total + threads - 1) / threads;
  if (b > 65535) b = 65535;  // grid-stride loops cover the rest
  return b < 1 ? 1 : (int)b;
}

template <typename T>
int launch_fwd(const TlstmFwdStep<T>& a, void* stream) {
  const int64_t total = a.g.ns * a.g.B * a.g.N * a.g.K;
  tlstm_fwd_kernel<T><<<blocks_for(total, 256), 256, 0, (cudaStream_t)stream>>>(a);
  return (int)cudaGetLastError();
}

template <typename T>
int launch_bwd(const TlstmBwdStep<T>& a, void* stream) {
  const int64_t total = a.g.ns * a.g.B * a.g.N * a.g.K;
  tlstm_bwd_kernel<T><<<blocks_for(total, 256), 256, 0, (cudaStream_t)stream>>>(a);
  return (int)cudaGetLastError();
}

}  // namespace

int tlstm_fwd_step_cuda(const TlstmFwdStep<float>& a, void* stream) { return launch_fwd(a, stream); }
int tlstm_fwd_step_cuda(const TlstmFwdStep<double>& a, void* stream) { return launch_fwd(a, stream); }
int tlstm_bwd_step_cuda(const TlstmBwdStep<float>& a, void* stream) { return launch_bwd(a, stream); }
int tlstm_bwd_step_cuda(const TlstmBwdStep<double>& a, void* stream) { return launch_bwd(a, stream); }

}  // namespace her2kit
