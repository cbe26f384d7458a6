// TLSTM on the CPU: the fused gate step kernels (forward and backward) and
// the TORCH_LIBRARY_IMPL(her2kit, CPU) registration. The time loop and the
// GEMMs live in tlstm_driver.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <atomic>
#include <cstring>
#include <vector>

#include "tlstm_driver.h"

namespace her2kit {
namespace {

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
    const int64_t p = g.pixel(s, g.t, b, n);
    T* __restrict gt = a.gates + p * 16 * K + s * 4 * K;
    T* __restrict c = a.cells + p * 4 * K + s * K;
    T* __restrict h = a.hidden + p * 4 * K + s * K;
    const T* __restrict pi = a.peep + s * 3 * K;
    const T* __restrict pf = pi + K;
    const T* __restrict po = pi + 2 * K;
    if (g.t == 0) {
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
      const T* __restrict r = a.rec + sl * a.rec_stride + bn * 4 * K;
      const T* __restrict cp = a.cells + g.pixel(s, g.t - 1, b, n) * 4 * K + s * K;
      for (int64_t k = 0; k < K; ++k) {
        const T i = sigm(gt[k] + r[k] + pi[k] * cp[k]);
        const T f = sigm(gt[K + k] + r[K + k] + pf[k] * cp[k]);
        const T gg = tanh_(gt[2 * K + k] + r[2 * K + k]);
        const T cn = f * cp[k] + i * gg;
        const T o = sigm(gt[3 * K + k] + r[3 * K + k] + po[k] * cn);
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
      T* hb = a.hist + s * P * 3 * K + ((g.t + 1) * g.B + b) * g.N * 3 * K;
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
  const int64_t K = g.K, BN = g.B * g.N, P = g.B * g.H * g.W;
  std::vector<T> dh(K);
  T* __restrict dhp = dh.data();
  for (int64_t row = begin; row < end; ++row) {
    const int sl = static_cast<int>(row / BN);
    const int s = g.s0 + sl;
    const int64_t bn = row % BN, b = bn / g.N, n = bn % g.N;
    const int64_t p = g.pixel(s, g.t, b, n);
    const T* __restrict gt = a.gates + p * 16 * K + s * 4 * K;
    const T* __restrict c = a.cells + p * 4 * K + s * K;
    const T* __restrict dhid = a.dhidden + p * 4 * K + s * K;
    const T* __restrict cp = g.t > 0 ? a.cells + g.pixel(s, g.t - 1, b, n) * 4 * K + s * K : nullptr;
    T* __restrict dc = a.dcell + sl * a.dcell_stride + bn * K;
    T* __restrict dgp = a.dgates_pix + p * 16 * K + s * 4 * K;
    T* __restrict dgs = a.dgates_step + s * P * 4 * K + (g.t * BN + bn) * 4 * K;
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
    for (int64_t k = 0; k < K; ++k) {
      const T i = gt[k], f = gt[K + k], gg = gt[2 * K + k], o = gt[3 * K + k];
      const T cn = c[k];
      const T cprev = cp != nullptr ? cp[k] : T(0);
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
      dgs[k] = dai;
      dgs[K + k] = daf;
      dgs[2 * K + k] = dag;
      dgs[3 * K + k] = dao;
    }
    if (dpi != nullptr) {
      T* __restrict dpf = dpi + K;
      T* __restrict dpo = dpi + 2 * K;
      for (int64_t k = 0; k < K; ++k) {
        const T cprev = cp != nullptr ? cp[k] : T(0);
        dpi[k] += dgp[k] * cprev;
        dpf[k] += dgp[K + k] * cprev;
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

// A chain is one sweep over a run of images: independent of every other
// chain through all its steps, so each thread takes whole chains (pulled
// from a shared counter) and runs their time loops without any barrier; the
// recurrent GEMM of a step covers all rows of the chain.
struct Chain {
  int s;
  int64_t b0, b1, L, N;
};

std::vector<Chain> make_chains(const TlstmGeom& g) {
  std::vector<Chain> out;
  for (int s = 0; s < 4; ++s) {
    const int64_t L = s < 2 ? g.H : g.W, N = s < 2 ? g.W : g.H;
    // About 128 rows per chain: big enough for an efficient GEMM, small
    // enough to balance the threads.
    const int64_t per = std::max<int64_t>(1, std::min<int64_t>(g.B, (128 + N - 1) / N));
    const int64_t nchunks = (g.B + per - 1) / per;
    for (int64_t c = 0; c < nchunks; ++c) {
      const int64_t b0 = c * g.B / nchunks, b1 = (c + 1) * g.B / nchunks;
      if (b1 > b0) out.push_back({s, b0, b1, L, N});
    }
  }
  return out;
}

template <typename F>
void run_chains(const std::vector<Chain>& chains, F&& body) {
  std::atomic<size_t> next{0};
  const int64_t nt = std::min<int64_t>(at::get_num_threads(), chains.size());
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    for (size_t i = next++; i < chains.size(); i = next++) body(chains[i]);
  });
}

struct CpuBackend {
  template <typename T>
  static void forward_sweeps(TlstmFwdStep<T> a0, const at::Tensor& hist, const at::Tensor& whm) {
    const TlstmGeom G = a0.g;
    const int64_t K = G.K;
    run_chains(make_chains(G), [&](const Chain& ch) {
      const int64_t rows = (ch.b1 - ch.b0) * ch.N, r0 = ch.b0 * ch.N;
      at::Tensor rec = at::empty({G.B * ch.N, 4 * K}, hist.options());
      const at::Tensor hs = hist.select(0, ch.s), ws = whm.select(0, ch.s);
      hs.narrow(0, r0, rows).zero_();
      at::Tensor rec_rows = rec.narrow(0, r0, rows);
      TlstmFwdStep<T> a = a0;
      a.g = TlstmGeom{G.B, G.H, G.W, K, ch.s, 1, ch.L, ch.N, 0};
      a.rec_stride = 0;
      for (int64_t t = 0; t < ch.L; ++t) {
        a.g.t = t;
        if (t > 0) at::mm_out(rec_rows, hs.narrow(0, t * G.B * ch.N + r0, rows), ws);
        a.rec = t > 0 ? rec.data_ptr<T>() : nullptr;
        fwd_rows_any(a, r0, r0 + rows);
      }
    });
  }

  template <typename T>
  static at::Tensor backward_sweeps(TlstmBwdStep<T> a0, const at::Tensor& dg_step,
                                    const at::Tensor& whmT) {
    const TlstmGeom G = a0.g;
    const int64_t K = G.K;
    const auto chains = make_chains(G);
    // Peephole gradients per chain, summed in chain order: deterministic
    // whichever thread ran which chain.
    at::Tensor dpeep_parts = at::zeros({static_cast<int64_t>(chains.size()), 3, K},
                                       dg_step.options());
    run_chains(chains, [&](const Chain& ch) {
      const int64_t rows = (ch.b1 - ch.b0) * ch.N, r0 = ch.b0 * ch.N;
      at::Tensor dcell = at::zeros({G.B * ch.N, K}, dg_step.options());
      at::Tensor dhist = at::empty({G.B * ch.N, 3 * K}, dg_step.options());
      const at::Tensor ds = dg_step.select(0, ch.s), ws = whmT.select(0, ch.s);
      at::Tensor dhist_rows = dhist.narrow(0, r0, rows);
      TlstmBwdStep<T> a = a0;
      a.g = TlstmGeom{G.B, G.H, G.W, K, ch.s, 1, ch.L, ch.N, 0};
      a.dcell = dcell.data_ptr<T>();
      a.dcell_stride = 0;
      a.dhist_stride = 0;
      a.dpeep = dpeep_parts.data_ptr<T>() + (&ch - chains.data()) * 3 * K;
      for (int64_t t = ch.L - 1; t >= 0; --t) {
        a.g.t = t;
        a.dhist = t + 1 < ch.L ? dhist.data_ptr<T>() : nullptr;
        bwd_rows_any(a, r0, r0 + rows);
        if (t > 0) at::mm_out(dhist_rows, ds.narrow(0, t * G.B * ch.N + r0, rows), ws);
      }
    });
    at::Tensor dpeep = at::zeros({4, 3, K}, dg_step.options());
    for (size_t i = 0; i < chains.size(); ++i) dpeep[chains[i].s] += dpeep_parts[i];
    return dpeep;
  }
};

void check_cpu(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), op, ": expected CPU tensors, got ", x.device());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_forward_cpu(
    const at::Tensor& x, const at::Tensor& w_x, const at::Tensor& b_x, const at::Tensor& w_h,
    const at::Tensor& peep) {
  check_cpu("her2kit::tlstm_forward", x);
  return tlstm_forward_impl<CpuBackend>(x, w_x, b_x, w_h, peep);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_backward_cpu(
    const at::Tensor& grad_hidden, const at::Tensor& x, const at::Tensor& w_x,
    const at::Tensor& w_h, const at::Tensor& peep, const at::Tensor& gates,
    const at::Tensor& cells, const at::Tensor& hist) {
  check_cpu("her2kit::tlstm_backward", x);
  return tlstm_backward_impl<CpuBackend>(grad_hidden, x, w_x, w_h, peep, gates, cells, hist);
}

}  // namespace

TORCH_LIBRARY_IMPL(her2kit, CPU, m) {
  m.impl("tlstm_forward", &tlstm_forward_cpu);
  m.impl("tlstm_backward", &tlstm_backward_cpu);
}

}  // namespace her2kit
