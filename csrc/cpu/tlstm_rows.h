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

// The activations lstm_cell_fwd / lstm_cell_bwd (tlstm_step.h) use on the CPU.
struct CpuAct {
  template <typename T>
  static H2K_ALWAYS_INLINE T sigm(T x) { return cpu_rows::sigm(x); }
  template <typename T>
  static H2K_ALWAYS_INLINE T tanh(T x) { return tanh_(x); }
};

template <typename T>
H2K_ALWAYS_INLINE void fwd_rows(const TlstmFwdStep<T>& a, int64_t begin, int64_t end) {
  const TlstmGeom& g = a.g;
  const int64_t K = g.K, BN = g.B * g.N, P = g.B * g.H * g.W;
  const std::vector<T> zeros(K, T(0));  // c_{-1}
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
    // The recurrent term: already added into the gates by the step's GEMM
    // (the CPU chains), or given separately in `rec` (the stepwise driver).
    if (g.t > 0 && a.rec != nullptr) {
      const T* __restrict r = a.rec + sl * a.rec_stride + bn * 4 * K;
#pragma GCC ivdep
      for (int64_t j = 0; j < 4 * K; ++j) gt[j] += r[j];
    }
    const T* __restrict cp =
        g.t > 0 ? a.cells + g.state_at(s, g.row(s, g.t - 1, b, n)) : zeros.data();
    #pragma GCC ivdep  // rows, gates and states never overlap
    for (int64_t k = 0; k < K; ++k) {
      lstm_cell_fwd<CpuAct>(gt[k], gt[K + k], gt[2 * K + k], gt[3 * K + k], cp[k], pi[k], pf[k],
                            po[k], gt[k], gt[K + k], gt[2 * K + k], gt[3 * K + k], c[k], h[k]);
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
      lstm_cell_bwd<CpuAct>(gt[k], gt[K + k], gt[2 * K + k], gt[3 * K + k], c[k], cp[k], pi[k],
                            pf[k], po[k], dhp[k], dc[k], dgp[k], dgp[K + k], dgp[2 * K + k],
                            dgp[3 * K + k]);
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

// ---------------------------------------------------------------------------
// The chain kernels (CpuBackend in tlstm_cpu.cpp): one step of one chain, i.e.
// `rows` consecutive rows (whole image rows of N pixels, images b0..b1) of one
// sweep. Row strides are passed in, so the step's rows are addressed without
// any index arithmetic per row; the scratch blocks (dgates, dhist, dcell) are
// the chain's own, contiguous.

template <typename T>
struct ChainFwd {
  int64_t rows, N, K;
  const T* pre;       // (rows, 4K) W_x x + W_h h of the step (no bias)
  T* g;               // out: the activated gates i, f, g, o, row stride gld
  int64_t gld;
  const T* bias;      // (4K,) b_x of the sweep
  const T* cprev;     // c_{t-1} (row stride sld), null at the first step
  T* c;               // c_t
  T* h;               // h_t
  int64_t sld;
  const T* peep;      // (3K,) p_i, p_f, p_o
  T* hist_next;       // next step's recurrent input (rows, 3K; row stride hld), or null
  int64_t hld;
  const T* zeros;     // (K,) zeros, read as c_{t-1} at the first step
};

template <typename T>
struct ChainBwd {
  int64_t rows, N, K;
  const T* g;         // activated gates, row stride gld
  int64_t gld;
  const T* c;         // c_t, row stride sld
  const T* cprev;     // c_{t-1}, null at the first step
  const T* dhout;     // dL/dh_t from the output, row stride sld
  int64_t sld;
  const T* dhist;     // (rows, 3K; row stride dld): dG_{t+1} W_h^T of the chain, null
  int64_t dld;        //   at the last step
  T* dcell;           // (rows, K) in: dL/dc_t from step t+1, out: dL/dc_{t-1}
  T* dg;              // (rows, 4K) out: dL/d(pre-activation)
  const T* peep;      // (3K,)
  T* dpeep;           // (3K,) accumulated
  T* db;              // (4K,) accumulated
  const T* zeros;     // (3K,) zeros, read in place of absent terms
};

template <typename T, int KC>
H2K_ALWAYS_INLINE void fwd_chain(const ChainFwd<T>& a) {
  const int64_t K = KC > 0 ? KC : a.K;
  const T* __restrict pi = a.peep;
  const T* __restrict pf = pi + K;
  const T* __restrict po = pi + 2 * K;
  const T* __restrict bi = a.bias;
  const T* __restrict bf = bi + K;
  const T* __restrict bg = bi + 2 * K;
  const T* __restrict bo = bi + 3 * K;
  for (int64_t r = 0, n = 0; r < a.rows; ++r, n = (n + 1 == a.N) ? 0 : n + 1) {
    const T* __restrict gi = a.pre + r * 4 * K;
    T* __restrict gt = a.g + r * a.gld;
    T* __restrict c = a.c + r * a.sld;
    T* __restrict h = a.h + r * a.sld;
    const T* __restrict cp = a.cprev != nullptr ? a.cprev + r * a.sld : a.zeros;
#pragma GCC ivdep
    for (int64_t k = 0; k < K; ++k) {
      lstm_cell_fwd<CpuAct>(gi[k] + bi[k], gi[K + k] + bf[k], gi[2 * K + k] + bg[k],
                            gi[3 * K + k] + bo[k], cp[k], pi[k], pf[k], po[k], gt[k], gt[K + k],
                            gt[2 * K + k], gt[3 * K + k], c[k], h[k]);
    }
    if (a.hist_next != nullptr) {
      // Row m of the next step's input holds h[m-1], h[m], h[m+1] (zero
      // outside the image row).
      T* __restrict hb = a.hist_next + r * a.hld;
#pragma GCC ivdep
      for (int64_t k = 0; k < K; ++k) hb[K + k] = h[k];
      if (n + 1 < a.N) {
        T* __restrict hn = hb + a.hld;
#pragma GCC ivdep
        for (int64_t k = 0; k < K; ++k) hn[k] = h[k];
      } else {
#pragma GCC ivdep
        for (int64_t k = 0; k < K; ++k) hb[2 * K + k] = T(0);
      }
      if (n > 0) {
        T* __restrict hp = hb - a.hld + 2 * K;
#pragma GCC ivdep
        for (int64_t k = 0; k < K; ++k) hp[k] = h[k];
      } else {
#pragma GCC ivdep
        for (int64_t k = 0; k < K; ++k) hb[k] = T(0);
      }
    }
  }
}

template <typename T, int KC>
H2K_ALWAYS_INLINE void bwd_chain(const ChainBwd<T>& a) {
  const int64_t K = KC > 0 ? KC : a.K;
  const T* __restrict pi = a.peep;
  const T* __restrict pf = pi + K;
  const T* __restrict po = pi + 2 * K;
  T* __restrict dpi = a.dpeep;
  T* __restrict dpf = dpi + K;
  T* __restrict dpo = dpi + 2 * K;
  T* __restrict dbi = a.db;
  T* __restrict dbf = dbi + K;
  T* __restrict dbg = dbi + 2 * K;
  T* __restrict dbo = dbi + 3 * K;
  for (int64_t r = 0, n = 0; r < a.rows; ++r, n = (n + 1 == a.N) ? 0 : n + 1) {
    const T* __restrict gt = a.g + r * a.gld;
    const T* __restrict c = a.c + r * a.sld;
    const T* __restrict dho = a.dhout + r * a.sld;
    T* __restrict dc = a.dcell + r * K;
    T* __restrict dgp = a.dg + r * 4 * K;
    // dL/dh_t: the output gradient plus what step t+1 read of h_t through its
    // width-3 recurrent conv (row m of dhist is the gradient of h[m-1], h[m], h[m+1]).
    // Absent terms read a.zeros (3K zeros), so the loop has no branches.
    const T* __restrict dr = a.dhist != nullptr ? a.dhist + r * a.dld : a.zeros;
    const T* __restrict dnext = a.dhist != nullptr && n + 1 < a.N ? dr + a.dld : a.zeros;
    const T* __restrict dprev = a.dhist != nullptr && n > 0 ? dr - a.dld + 2 * K : a.zeros;
    const T* __restrict cp = a.cprev != nullptr ? a.cprev + r * a.sld : a.zeros;
#pragma GCC ivdep
    for (int64_t k = 0; k < K; ++k) {
      const T dh = dho[k] + dr[K + k] + dnext[k] + dprev[k];
      const T cn = c[k], cprev = cp[k];
      T dai, daf, dag, dao;
      lstm_cell_bwd<CpuAct>(gt[k], gt[K + k], gt[2 * K + k], gt[3 * K + k], cn, cprev, pi[k],
                            pf[k], po[k], dh, dc[k], dai, daf, dag, dao);
      dgp[k] = dai;
      dgp[K + k] = daf;
      dgp[2 * K + k] = dag;
      dgp[3 * K + k] = dao;
      dpi[k] += dai * cprev;
      dpf[k] += daf * cprev;
      dpo[k] += dao * cn;
      dbi[k] += dai;
      dbf[k] += daf;
      dbg[k] += dag;
      dbo[k] += dao;
    }
  }
}

// K is a compile-time constant for the common hidden sizes (fully unrolled
// loops, no remainder); any other K runs the generic loop.
template <typename T, template <typename, int> class Run, typename A>
H2K_ALWAYS_INLINE void by_k(const A& a) {
  switch (a.K) {
    case 16: Run<T, 16>::go(a); break;
    case 32: Run<T, 32>::go(a); break;
    case 64: Run<T, 64>::go(a); break;
    case 128: Run<T, 128>::go(a); break;
    default: Run<T, 0>::go(a); break;
  }
}
template <typename T, int KC>
struct FwdChainRun {
  static H2K_ALWAYS_INLINE void go(const ChainFwd<T>& a) { fwd_chain<T, KC>(a); }
};
template <typename T, int KC>
struct BwdChainRun {
  static H2K_ALWAYS_INLINE void go(const ChainBwd<T>& a) { bwd_chain<T, KC>(a); }
};

__attribute__((target_clones("avx512f", "avx2", "default"))) void fwd_chain_f32(
    const ChainFwd<float>& a) {
  by_k<float, FwdChainRun>(a);
}
__attribute__((target_clones("avx512f", "avx2", "default"))) void bwd_chain_f32(
    const ChainBwd<float>& a) {
  by_k<float, BwdChainRun>(a);
}
void fwd_chain_any(const ChainFwd<float>& a) { fwd_chain_f32(a); }
void fwd_chain_any(const ChainFwd<double>& a) { fwd_chain<double, 0>(a); }
void bwd_chain_any(const ChainBwd<float>& a) { bwd_chain_f32(a); }
void bwd_chain_any(const ChainBwd<double>& a) { bwd_chain<double, 0>(a); }

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
