// The CPU TLSTM gate step kernels (forward and backward rows), on raw
// pointers: no torch headers, so they can also be built and timed alone.
// Included once, by tlstm_cpu.cpp.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tlstm_step.h"

// Lets GCC if-convert the clamps in exp_poly, so the gate loops vectorise
// (comparisons that might trap otherwise block it). Our kernels never rely on
// floating-point exception flags.
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")

namespace her2kit {
namespace cpu_rows {

#define H2K_ALWAYS_INLINE __attribute__((always_inline)) inline

// exp for float as a branch-free polynomial (Cephes expf, ~1 ulp) so that the
// gate loops vectorise; std::exp calls would keep them scalar.
H2K_ALWAYS_INLINE float exp_poly(float x) {
  x = x < -87.0f ? -87.0f : x;
  x = x > 88.0f ? 88.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to integer
  float n = (x * 1.44269504088896341f + magic) - magic;
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &e, sizeof scale);
  return p * scale;
}

H2K_ALWAYS_INLINE float sigm(float x) { return 1.0f / (1.0f + exp_poly(-x)); }
H2K_ALWAYS_INLINE double sigm(double x) { return 1.0 / (1.0 + std::exp(-x)); }
H2K_ALWAYS_INLINE float tanh_(float x) { return 2.0f / (1.0f + exp_poly(-2.0f * x)) - 1.0f; }
H2K_ALWAYS_INLINE double tanh_(double x) { return std::tanh(x); }

template <typename T>
H2K_ALWAYS_INLINE void fwd_rows(const TlstmFwdStep<T>& a, int64_t begin, int64_t end) {
  const TlstmGeom& g = a.g;
  const int64_t K = g.K, BN = g.B * g.N, P = g.B * g.H * g.W;
  for (int64_t row = begin; row < end; ++row) {
    const int sl = static_cast<int>(row / BN);
    const int s = g.s0 + sl;
    const int64_t bn = row % BN, b = bn / g.N, n = bn % g.N;
    const int64_t q = g.row(s, g.t, b, n);
    T* __restrict gt = a.gates + g.gate_at(s, q);
    T* __restrict c = a.cells + g.state_at(s, q);
    T* __restrict h = a.hidden + g.state_at(s, q);
    const T* __restrict pi = a.peep + s * 3 * K;
    const T* __restrict pf = pi + K;
    const T* __restrict po = pi + 2 * K;
    if (g.t == 0) {
      #pragma GCC ivdep  // rows, gates and states never overlap
      for (int64_t k = 0; k < K; ++k) {
        const T i = sigm(gt[k]);
        const T f = sigm(gt[K + k]);
        const T gg = tanh_(gt[2 * K + k]);
        const T cn = i * gg;
        const T o = sigm(gt[3 * K + k] + po[k] * cn);
        gt[k] = i;
        gt[K + k] = f;
        gt[2 * K + k] = gg;
        gt[3 * K + k] = o;
        c[k] = cn;
        h[k] = o * tanh_(cn);
      }
    } else {
      // The recurrent term: already added into the gates by the step's GEMM
      // (the CPU chains), or given separately in `rec` (the stepwise driver).
      if (a.rec != nullptr) {
        const T* __restrict r = a.rec + sl * a.rec_stride + bn * 4 * K;
#pragma GCC ivdep
        for (int64_t j = 0; j < 4 * K; ++j) gt[j] += r[j];
      }
      const T* __restrict cp = a.cells + g.state_at(s, g.row(s, g.t - 1, b, n));
      #pragma GCC ivdep  // rows, gates and states never overlap
      for (int64_t k = 0; k < K; ++k) {
        const T i = sigm(gt[k] + pi[k] * cp[k]);
        const T f = sigm(gt[K + k] + pf[k] * cp[k]);
        const T gg = tanh_(gt[2 * K + k]);
        const T cn = f * cp[k] + i * gg;
        const T o = sigm(gt[3 * K + k] + po[k] * cn);
        gt[k] = i;
        gt[K + k] = f;
        gt[2 * K + k] = gg;
        gt[3 * K + k] = o;
        c[k] = cn;
        h[k] = o * tanh_(cn);
      }
    }
    if (g.t + 1 < g.L) {
      // Scatter h_t into the next step's recurrent input: row m holds
      // h[m-1], h[m], h[m+1]; outside the row it is zero.
      T* hb = a.hist + s * P * 3 * K + g.row(s, g.t + 1, b, 0) * 3 * K;
      std::memcpy(hb + n * 3 * K + K, h, K * sizeof(T));
      if (n + 1 < g.N) std::memcpy(hb + (n + 1) * 3 * K, h, K * sizeof(T));
      if (n > 0) std::memcpy(hb + (n - 1) * 3 * K + 2 * K, h, K * sizeof(T));
      if (n == 0) std::memset(hb, 0, K * sizeof(T));
      if (n + 1 == g.N) std::memset(hb + n * 3 * K + 2 * K, 0, K * sizeof(T));
    }
  }
}

template <typename T>
H2K_ALWAYS_INLINE void bwd_rows(const TlstmBwdStep<T>& a, int64_t begin, int64_t end) {
  const TlstmGeom& g = a.g;
  const int64_t K = g.K, BN = g.B * g.N;
  std::vector<T> dh(K), zeros(K, T(0));
  T* __restrict dhp = dh.data();
  for (int64_t row = begin; row < end; ++row) {
    const int sl = static_cast<int>(row / BN);
    const int s = g.s0 + sl;
    const int64_t bn = row % BN, b = bn / g.N, n = bn % g.N;
    const int64_t q = g.row(s, g.t, b, n);
    const T* __restrict gt = a.gates + g.gate_at(s, q);
    const T* __restrict c = a.cells + g.state_at(s, q);
    const T* __restrict dhid = a.dhidden + g.state_at(s, q);
    const T* __restrict cp =
        g.t > 0 ? a.cells + g.state_at(s, g.row(s, g.t - 1, b, n)) : zeros.data();
    T* __restrict dc = a.dcell + sl * a.dcell_stride + bn * K;
    T* __restrict dgp = a.dgates + g.gate_at(s, q);
    const T* __restrict pi = a.peep + s * 3 * K;
    const T* __restrict pf = pi + K;
    const T* __restrict po = pi + 2 * K;
    T* __restrict dpi = a.dpeep;
    // dL/dh_t: the output gradient plus what step t+1 read of h_t through its
    // width-3 recurrent conv (row m of dhist is the gradient of h[m-1], h[m], h[m+1]).
    std::memcpy(dhp, dhid, K * sizeof(T));
    if (a.dhist != nullptr) {
      const T* dr = a.dhist + sl * a.dhist_stride + bn * 3 * K;
      for (int64_t k = 0; k < K; ++k) dhp[k] += dr[K + k];
      if (n + 1 < g.N) {
        const T* d1 = dr + 3 * K;
        for (int64_t k = 0; k < K; ++k) dhp[k] += d1[k];
      }
      if (n > 0) {
        const T* d0 = dr - 3 * K + 2 * K;
        for (int64_t k = 0; k < K; ++k) dhp[k] += d0[k];
      }
    }
    #pragma GCC ivdep  // rows, gates and states never overlap
    for (int64_t k = 0; k < K; ++k) {
      const T i = gt[k], f = gt[K + k], gg = gt[2 * K + k], o = gt[3 * K + k];
      const T cn = c[k];
      const T cprev = cp[k];
      const T tc = tanh_(cn);
      const T dho = dhp[k];
      const T dao = dho * tc * o * (T(1) - o);
      const T dcc = dc[k] + dho * o * (T(1) - tc * tc) + dao * po[k];
      const T dai = dcc * gg * i * (T(1) - i);
      const T dag = dcc * i * (T(1) - gg * gg);
      const T daf = dcc * cprev * f * (T(1) - f);
      dc[k] = dcc * f + dai * pi[k] + daf * pf[k];
      dgp[k] = dai;
      dgp[K + k] = daf;
      dgp[2 * K + k] = dag;
      dgp[3 * K + k] = dao;
    }
    if (dpi != nullptr) {
      T* __restrict dpf = dpi + K;
      T* __restrict dpo = dpi + 2 * K;
      #pragma GCC ivdep  // rows, gates and states never overlap
      for (int64_t k = 0; k < K; ++k) {
        dpi[k] += dgp[k] * cp[k];
        dpf[k] += dgp[K + k] * cp[k];
        dpo[k] += dgp[3 * K + k] * c[k];
      }
    }
  }
}

// Vectorised clones for float (the host picks the widest at load time).
__attribute__((target_clones("avx512f", "avx2", "default"))) void fwd_rows_f32(
    const TlstmFwdStep<float>& a, int64_t begin, int64_t end) {
  fwd_rows<float>(a, begin, end);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void bwd_rows_f32(
    const TlstmBwdStep<float>& a, int64_t begin, int64_t end) {
  bwd_rows<float>(a, begin, end);
}
void fwd_rows_any(const TlstmFwdStep<float>& a, int64_t b, int64_t e) { fwd_rows_f32(a, b, e); }
void fwd_rows_any(const TlstmFwdStep<double>& a, int64_t b, int64_t e) { fwd_rows<double>(a, b, e); }
void bwd_rows_any(const TlstmBwdStep<float>& a, int64_t b, int64_t e) { bwd_rows_f32(a, b, e); }
void bwd_rows_any(const TlstmBwdStep<double>& a, int64_t b, int64_t e) { bwd_rows<double>(a, b, e); }

}  // namespace cpu_rows
}  // namespace her2kit

#pragma GCC pop_options
