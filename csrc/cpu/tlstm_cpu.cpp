// TLSTM on the CPU: the fused gate step kernels (forward and backward) and
// the TORCH_LIBRARY_IMPL(her2kit, CPU) registration. The time loop and the
// GEMMs live in tlstm_driver.h.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <vector>

#include "tlstm_driver.h"
// After the torch headers: tlstm_rows.h changes optimisation options.
#include "cpu/tlstm_rows.h"

namespace her2kit {
namespace {

using cpu_rows::bwd_rows_any;
using cpu_rows::fwd_rows_any;

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
  // Tensor ops run inside the workers: give them the caller's thread-local
  // state (inference mode, grad mode), which OpenMP threads do not inherit.
  const at::ThreadLocalState caller_state;
  at::parallel_for(0, nt, 1, [&](int64_t, int64_t) {
    at::ThreadLocalStateGuard guard(caller_state);
    for (size_t i = next++; i < chains.size(); i = next++) body(chains[i]);
  });
}

struct CpuBackend {
  template <typename T>
  static void forward_sweeps(TlstmFwdStep<T> a0, const at::Tensor& gates, const at::Tensor& hist,
                             const at::Tensor& whm) {
    const TlstmGeom G = a0.g;
    const int64_t K = G.K;
    run_chains(make_chains(G), [&](const Chain& ch) {
      const int64_t rows = (ch.b1 - ch.b0) * ch.N, r0 = ch.b0 * ch.N, BN = G.B * ch.N;
      TlstmFwdStep<T> a = a0;
      a.g = TlstmGeom{G.B, G.H, G.W, K, ch.s, 1, ch.L, ch.N, 0};
      a.rec = nullptr;  // the GEMM below adds the recurrent term into the gates
      const at::Tensor hs = hist.select(0, ch.s), ws = whm.select(0, ch.s);
      hs.narrow(0, a.g.pos(ch.s, 0) * BN + r0, rows).zero_();
      for (int64_t t = 0; t < ch.L; ++t) {
        a.g.t = t;
        const int64_t first = a.g.pos(ch.s, t) * BN + r0;
        if (t > 0) {
          at::Tensor gblock = tlstm_block(gates, ch.s, first, rows, 4 * K);
          gblock.addmm_(hs.narrow(0, first, rows), ws);
        }
        fwd_rows_any(a, r0, r0 + rows);
      }
    });
  }

  template <typename T>
  static at::Tensor backward_sweeps(TlstmBwdStep<T> a0, const at::Tensor& dgates,
                                    const at::Tensor& whmT) {
    const TlstmGeom G = a0.g;
    const int64_t K = G.K;
    const auto chains = make_chains(G);
    // Peephole gradients per chain, summed in chain order: deterministic
    // whichever thread ran which chain.
    at::Tensor dpeep_parts = at::zeros({static_cast<int64_t>(chains.size()), 3, K},
                                       dgates.options());
    run_chains(chains, [&](const Chain& ch) {
      const int64_t rows = (ch.b1 - ch.b0) * ch.N, r0 = ch.b0 * ch.N, BN = G.B * ch.N;
      at::Tensor dcell = at::zeros({BN, K}, dgates.options());
      at::Tensor dhist = at::empty({BN, 3 * K}, dgates.options());
      at::Tensor dhist_rows = dhist.narrow(0, r0, rows);
      const at::Tensor ws = whmT.select(0, ch.s);
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
        if (t > 0) {
          const int64_t first = a.g.pos(ch.s, t) * BN + r0;
          at::mm_out(dhist_rows, tlstm_block(dgates, ch.s, first, rows, 4 * K), ws);
        }
      }
    });
    at::Tensor dpeep = at::zeros({4, 3, K}, dgates.options());
    for (size_t i = 0; i < chains.size(); ++i) dpeep[chains[i].s] += dpeep_parts[i];
    return dpeep;
  }
};

// The step-at-a-time driver that CUDA uses, run with the CPU row kernels:
// registered as private ops so the CPU tests cover that driver too.
struct CpuStepKernel {
  template <typename T>
  static void fwd(const TlstmFwdStep<T>& a) {
    at::parallel_for(0, a.g.ns * a.g.B * a.g.N, 8,
                     [&](int64_t begin, int64_t end) { fwd_rows_any(a, begin, end); });
  }
  template <typename T>
  static void bwd(const TlstmBwdStep<T>& a) {
    at::parallel_for(0, a.g.ns * a.g.B * a.g.N, 8,
                     [&](int64_t begin, int64_t end) { bwd_rows_any(a, begin, end); });
  }
};
using CpuStepwise = StepwiseSweeps<CpuStepKernel>;

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

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_forward_stepwise(
    const at::Tensor& x, const at::Tensor& w_x, const at::Tensor& b_x, const at::Tensor& w_h,
    const at::Tensor& peep) {
  check_cpu("her2kit::_tlstm_forward_stepwise", x);
  return tlstm_forward_impl<CpuStepwise>(x, w_x, b_x, w_h, peep);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_backward_stepwise(
    const at::Tensor& grad_hidden, const at::Tensor& x, const at::Tensor& w_x,
    const at::Tensor& w_h, const at::Tensor& peep, const at::Tensor& gates,
    const at::Tensor& cells, const at::Tensor& hist) {
  check_cpu("her2kit::_tlstm_backward_stepwise", x);
  return tlstm_backward_impl<CpuStepwise>(grad_hidden, x, w_x, w_h, peep, gates, cells, hist);
}

}  // namespace

TORCH_LIBRARY_IMPL(her2kit, CPU, m) {
  m.impl("tlstm_forward", &tlstm_forward_cpu);
  m.impl("tlstm_backward", &tlstm_backward_cpu);
  m.impl("_tlstm_forward_stepwise", &tlstm_forward_stepwise);
  m.impl("_tlstm_backward_stepwise", &tlstm_backward_stepwise);
}

}  // namespace her2kit
