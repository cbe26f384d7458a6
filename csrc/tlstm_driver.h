// The step-at-a-time TLSTM forward and backward drivers: CUDA's, and on the
// CPU the private _tlstm_*_stepwise ops that test them (the CPU op itself
// runs its own fused chains, csrc/cpu/tlstm_cpu.cpp; the argument checks
// and layouts here are shared). The big products (input projection, weight
// gradients, input gradient) are single at:: GEMMs over all pixels, one per
// pair of sweeps (the pair that walks the same axis, rows in walking order).
// The time loops over the steps are the backend's (Backend::forward_sweeps /
// backward_sweeps): StepwiseSweeps below does one GEMM per step per sweep,
// then one fused gate kernel.
//
// Weight layout (sweeps 0 down, 1 up, 2 right, 3 left; gates i, f, g, o):
//   w_x  (4, 4K, C)     1x1 input projection per sweep
//   b_x  (4, 4K)        its bias (forget-gate block starts at 1 in TLSTM)
//   w_h  (4, 4K, K, 3)  width-3 recurrent conv along the row (conv1d weight;
//                       tap 0 reads index n-1, tap 1 n, tap 2 n+1 of the
//                       previous step's state, in increasing image index)
//   peep (4, 3, K)      peepholes p_i, p_f, p_o
#pragma once

#include <ATen/ATen.h>

#include <tuple>
#include <vector>

#include "op_checks.h"
#include "tlstm_step.h"

namespace her2kit {

inline int64_t tlstm_check(const char* op, const at::Tensor& x, const at::Tensor& w_x,
                           const at::Tensor& b_x, const at::Tensor& w_h,
                           const at::Tensor& peep) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (B, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, op,
              ": x must have no empty dimension, got shape ", x.sizes());
  check_float(op, "x", x);
  TORCH_CHECK(w_h.dim() == 4, op, ": w_h must be 4-D (4, 4K, K, 3), got shape ", w_h.sizes());
  const int64_t K = w_h.size(2);
  TORCH_CHECK(K > 0, op, ": hidden size K (w_h.size(2)) must be positive");
  const int64_t C = x.size(1);
  check_shape(op, "w_x", w_x, {4, 4 * K, C}, "(4, 4K, C)");
  check_shape(op, "b_x", b_x, {4, 4 * K}, "(4, 4K)");
  check_shape(op, "w_h", w_h, {4, 4 * K, K, 3}, "(4, 4K, K, 3)");
  check_shape(op, "peep", peep, {4, 3, K}, "(4, 3, K)");
  check_same(op, "w_x", w_x, x);
  check_same(op, "b_x", b_x, x);
  check_same(op, "w_h", w_h, x);
  check_same(op, "peep", peep, x);
  return K;
}

// The backward op's arguments: the forward's checks plus the saved tensors'
// shapes. Returns K.
inline int64_t tlstm_backward_check(const char* op, const at::Tensor& grad_hidden,
                                    const at::Tensor& x, const at::Tensor& w_x,
                                    const at::Tensor& w_h, const at::Tensor& peep,
                                    const at::Tensor& gates, const at::Tensor& cells,
                                    const at::Tensor& hist) {
  TORCH_CHECK(w_h.dim() == 4, op, ": w_h must be 4-D (4, 4K, K, 3), got shape ", w_h.sizes());
  const int64_t K = w_h.size(2);
  const at::Tensor b_dummy = at::empty({4, 4 * K}, x.options());
  tlstm_check(op, x, w_x, b_dummy, w_h, peep);
  const int64_t B = x.size(0), H = x.size(2), W = x.size(3);
  const int64_t P = B * H * W;
  check_shape(op, "grad_hidden", grad_hidden, {B, 4 * K, H, W}, "(B, 4K, H, W)");
  check_shape(op, "gates", gates, {2, P, 8 * K}, "(2, B*H*W, 8K)");
  check_shape(op, "cells", cells, {2, P, 2 * K}, "(2, B*H*W, 2K)");
  check_shape(op, "hist", hist, {4, P, 3 * K}, "(4, B*H*W, 3K)");
  check_same(op, "grad_hidden", grad_hidden, x);
  check_same(op, "gates", gates, x);
  check_same(op, "cells", cells, x);
  check_same(op, "hist", hist, x);
  return K;
}

// Sweeps that walk the same number of steps over rows of the same length are
// run together: all four when H == W, else (down, up) and (right, left).
inline std::vector<TlstmGeom> tlstm_groups(int64_t B, int64_t H, int64_t W, int64_t K) {
  std::vector<TlstmGeom> out;
  if (H == W) {
    out.push_back({B, H, W, K, 0, 4, H, W, 0});
  } else {
    out.push_back({B, H, W, K, 0, 2, H, W, 0});
    out.push_back({B, H, W, K, 2, 2, W, H, 0});
  }
  return out;
}

// (4, 4K, K, 3) -> (4, 3K, 4K): row j*K + k, column o holds w_h[s, o, k, j].
inline at::Tensor tlstm_rec_matrix(const at::Tensor& w_h, int64_t K) {
  return w_h.permute({0, 3, 2, 1}).reshape({4, 3 * K, 4 * K}).contiguous();
}

// Peephole gradients from the pre-activation gradients (dgates, gates'
// layout): p_i and p_f see c_{t-1} (the neighbour one step back along the
// walk), p_o sees c_t. In each half the walk is dim 0 of (L, B, N, ...).
inline at::Tensor tlstm_peep_grad(const at::Tensor& dgates, const at::Tensor& cells, int64_t B,
                                  int64_t H, int64_t W, int64_t K) {
  at::Tensor dpeep = at::zeros({4, 3, K}, dgates.options());
  for (int half = 0; half < 2; ++half) {
    const int64_t L = half == 0 ? H : W, N = half == 0 ? W : H;
    const auto dg6 = dgates.select(0, half).view({L, B, N, 2, 4, K});
    const auto c5 = cells.select(0, half).view({L, B, N, 2, K});
    for (int j = 0; j < 2; ++j) {
      const int s = 2 * half + j;
      if (L > 1) {
        const int64_t cur0 = j == 0 ? 1 : 0, prev0 = j == 0 ? 0 : 1;
        const auto dgs = dg6.select(3, j).narrow(0, cur0, L - 1);
        const auto cprev = c5.select(3, j).narrow(0, prev0, L - 1);
        for (int gi = 0; gi < 2; ++gi) {
          dpeep[s][gi].copy_((dgs.select(3, gi) * cprev).sum({0, 1, 2}));
        }
      }
      dpeep[s][2].copy_((dg6.select(3, j).select(3, 3) * c5.select(3, j)).sum({0, 1, 2}));
    }
  }
  return dpeep;
}

// Rows [pos*B*N + r0, +rows) of sweep s's block (`width` columns per sweep)
// in a (2, P, 2*width) halves buffer (gates, dgates).
inline at::Tensor tlstm_block(const at::Tensor& buf, int s, int64_t first, int64_t rows,
                              int64_t width) {
  return buf.select(0, s >> 1).narrow(0, first, rows).narrow(1, (s & 1) * width, width);
}

// A backend whose step kernel runs all rows of the sweeps of one group at
// once (CUDA): per step, one GEMM per sweep for the recurrent term, then one
// step-kernel launch for the group. Kernel::fwd(a) / bwd(a).
template <class Kernel>
struct StepwiseSweeps {
  template <typename T>
  static void forward_sweeps(TlstmFwdStep<T> a, const at::Tensor& /*gates*/,
                             const at::Tensor& hist, const at::Tensor& whm) {
    const TlstmGeom all = a.g;
    for (TlstmGeom g : tlstm_groups(all.B, all.H, all.W, all.K)) {
      const int64_t BN = g.B * g.N;
      at::Tensor rec = at::empty({g.ns, BN, 4 * g.K}, hist.options());
      for (int i = 0; i < g.ns; ++i) {
        hist.select(0, g.s0 + i).narrow(0, g.pos(g.s0 + i, 0) * BN, BN).zero_();
      }
      for (int64_t t = 0; t < g.L; ++t) {
        g.t = t;
        for (int i = 0; t > 0 && i < g.ns; ++i) {
          const int s = g.s0 + i;
          at::Tensor out = rec.select(0, i);
          at::mm_out(out, hist.select(0, s).narrow(0, g.pos(s, t) * BN, BN), whm.select(0, s));
        }
        a.g = g;
        a.rec = t > 0 ? rec.data_ptr<T>() : nullptr;
        a.rec_stride = BN * 4 * g.K;
        Kernel::fwd(a);
      }
    }
  }

  template <typename T>
  static at::Tensor backward_sweeps(TlstmBwdStep<T> a, const at::Tensor& dgates,
                                    const at::Tensor& whmT) {
    const TlstmGeom all = a.g;
    for (TlstmGeom g : tlstm_groups(all.B, all.H, all.W, all.K)) {
      const int64_t BN = g.B * g.N;
      at::Tensor dcell = at::zeros({g.ns, BN, g.K}, dgates.options());
      at::Tensor dhist = at::empty({g.ns, BN, 3 * g.K}, dgates.options());
      for (int64_t t = g.L - 1; t >= 0; --t) {
        g.t = t;
        a.g = g;
        a.dhist = t + 1 < g.L ? dhist.data_ptr<T>() : nullptr;
        a.dhist_stride = BN * 3 * g.K;
        a.dcell = dcell.data_ptr<T>();
        a.dcell_stride = BN * g.K;
        a.dpeep = nullptr;
        Kernel::bwd(a);
        for (int i = 0; t > 0 && i < g.ns; ++i) {
          const int s = g.s0 + i;
          at::Tensor out = dhist.select(0, i);
          at::mm_out(out, tlstm_block(dgates, s, g.pos(s, t) * BN, BN, 4 * g.K), whmT.select(0, s));
        }
      }
    }
    return at::Tensor();  // the driver computes the peephole gradients
  }
};

// x (B, C, H, W) as rows of the two halves, in walking order: (H, B, W, C)
// and (W, B, H, C).
inline at::Tensor tlstm_rows_of(const at::Tensor& x, int half) {
  const int64_t P = x.size(0) * x.size(2) * x.size(3);
  return (half == 0 ? x.permute({2, 0, 3, 1}) : x.permute({3, 0, 2, 1})).reshape({P, x.size(1)});
}

// Returns the hidden maps (B, 4K, H, W) and what backward needs: gates
// (2, P, 8K), cells (2, P, 2K), hist (4, P, 3K) (see tlstm_step.h).
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_forward_impl(
    const at::Tensor& x, const at::Tensor& w_x, const at::Tensor& b_x, const at::Tensor& w_h,
    const at::Tensor& peep) {
  const char* op = "her2kit::tlstm_forward";
  const int64_t K = tlstm_check(op, x, w_x, b_x, w_h, peep);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = B * H * W;
  // The input projection: one GEMM over all pixels per pair of sweeps, each
  // pair's rows in the order its steps walk them.
  at::Tensor gates = at::empty({2, P, 8 * K}, x.options());
  for (int half = 0; half < 2; ++half) {
    at::Tensor out_half = gates.select(0, half);
    at::addmm_out(out_half, b_x.narrow(0, 2 * half, 2).reshape({8 * K}),
                  tlstm_rows_of(x, half), w_x.narrow(0, 2 * half, 2).reshape({8 * K, C}).t());
  }
  at::Tensor cells = at::empty({2, P, 2 * K}, x.options());
  at::Tensor hidden = at::empty({2, P, 2 * K}, x.options());
  at::Tensor hist = at::empty({4, P, 3 * K}, x.options());
  const at::Tensor whm = tlstm_rec_matrix(w_h, K);
  const at::Tensor pc = peep.contiguous();

  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tlstm_forward", [&] {
    TlstmFwdStep<scalar_t> a{};
    a.g = TlstmGeom{B, H, W, K, 0, 4, H, W, 0};
    a.gates = gates.data_ptr<scalar_t>();
    a.cells = cells.data_ptr<scalar_t>();
    a.hidden = hidden.data_ptr<scalar_t>();
    a.hist = hist.data_ptr<scalar_t>();
    a.peep = pc.data_ptr<scalar_t>();
    Backend::template forward_sweeps<scalar_t>(a, gates, hist, whm);
  });
  at::Tensor out = at::empty({B, 4 * K, H, W}, x.options());
  out.narrow(1, 0, 2 * K).copy_(hidden.select(0, 0).view({H, B, W, 2 * K}).permute({1, 3, 0, 2}));
  out.narrow(1, 2 * K, 2 * K)
      .copy_(hidden.select(0, 1).view({W, B, H, 2 * K}).permute({1, 3, 2, 0}));
  return {out, gates, cells, hist};
}

// Returns dx (B, C, H, W), dw_x, db_x, dw_h, dpeep in the weight layouts.
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_backward_impl(
    const at::Tensor& grad_hidden, const at::Tensor& x, const at::Tensor& w_x,
    const at::Tensor& w_h, const at::Tensor& peep, const at::Tensor& gates,
    const at::Tensor& cells, const at::Tensor& hist) {
  const char* op = "her2kit::tlstm_backward";
  const int64_t K = tlstm_backward_check(op, grad_hidden, x, w_x, w_h, peep, gates, cells, hist);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = B * H * W;

  // The output's gradient in the halves' layout (2, P, 2K).
  at::Tensor dh = at::empty({2, P, 2 * K}, x.options());
  dh.select(0, 0).view({H, B, W, 2 * K}).copy_(grad_hidden.narrow(1, 0, 2 * K).permute({2, 0, 3, 1}));
  dh.select(0, 1)
      .view({W, B, H, 2 * K})
      .copy_(grad_hidden.narrow(1, 2 * K, 2 * K).permute({3, 0, 2, 1}));
  const at::Tensor gc = gates.contiguous(), cc = cells.contiguous(), hc = hist.contiguous();
  const at::Tensor pc = peep.contiguous();
  const at::Tensor whmT = tlstm_rec_matrix(w_h, K).transpose(1, 2).contiguous();  // (4, 4K, 3K)
  at::Tensor dg_pix = at::empty({2, P, 8 * K}, x.options());

  at::Tensor dpeep;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tlstm_backward", [&] {
    TlstmBwdStep<scalar_t> a{};
    a.g = TlstmGeom{B, H, W, K, 0, 4, H, W, 0};
    a.gates = gc.data_ptr<scalar_t>();
    a.cells = cc.data_ptr<scalar_t>();
    a.dhidden = dh.data_ptr<scalar_t>();
    a.dgates = dg_pix.data_ptr<scalar_t>();
    a.peep = pc.data_ptr<scalar_t>();
    dpeep = Backend::template backward_sweeps<scalar_t>(a, dg_pix, whmT);
  });
  if (!dpeep.defined()) dpeep = tlstm_peep_grad(dg_pix, cc, B, H, W, K);

  // Weight and input gradients: one GEMM each over all pixels (and steps),
  // per pair of sweeps for the input side.
  at::Tensor dwhm = at::empty({4, 3 * K, 4 * K}, x.options());
  for (int s = 0; s < 4; ++s) {
    at::Tensor out = dwhm.select(0, s);
    at::mm_out(out, hc.select(0, s).t(), tlstm_block(dg_pix, s, 0, P, 4 * K));
  }
  at::Tensor dw_h = dwhm.view({4, 3, K, 4 * K}).permute({0, 3, 2, 1}).contiguous();
  at::Tensor dw_x = at::empty({4, 4 * K, C}, x.options());
  at::Tensor dx = at::empty({B, C, H, W}, x.options());
  for (int half = 0; half < 2; ++half) {
    const at::Tensor dg = dg_pix.select(0, half);
    at::Tensor dw_half = dw_x.narrow(0, 2 * half, 2).view({8 * K, C});
    at::mm_out(dw_half, dg.t(), tlstm_rows_of(x, half));
    const at::Tensor dxr = at::mm(dg, w_x.narrow(0, 2 * half, 2).reshape({8 * K, C}));
    if (half == 0) {
      dx.copy_(dxr.view({H, B, W, C}).permute({1, 3, 0, 2}));
    } else {
      dx.add_(dxr.view({W, B, H, C}).permute({1, 3, 2, 0}));
    }
  }
  at::Tensor db = dg_pix.sum(1).view({4, 4 * K});
  return {dx, dw_x, db, dw_h, dpeep};
}

}  // namespace her2kit
