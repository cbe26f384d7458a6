// The TLSTM forward and backward drivers, shared by the CPU and CUDA
// backends. The big products (input projection, weight gradients, input
// gradient) are single at:: GEMMs over all pixels and all four sweeps. The
// time loops over the steps are the backend's (Backend::forward_sweeps /
// backward_sweeps): the CPU runs independent (sweep, batch) chains on each
// thread with a GEMM per step per chain; CUDA uses StepwiseSweeps below (one
// batched GEMM per step over the sweeps, then one fused gate kernel).
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

// Peephole gradients from the pre-activation gradients: p_i and p_f see
// c_{t-1} (the neighbour one step back along the sweep), p_o sees c_t.
inline at::Tensor tlstm_peep_grad(const at::Tensor& dg_pix, const at::Tensor& cells, int64_t B,
                                  int64_t H, int64_t W, int64_t K) {
  const auto dg6 = dg_pix.view({B, H, W, 4, 4, K});
  const auto c5 = cells.view({B, H, W, 4, K});
  at::Tensor dpeep = at::zeros({4, 3, K}, dg_pix.options());
  for (int s = 0; s < 4; ++s) {
    const int dim = s < 2 ? 1 : 2;  // the sweep axis in (B, H, W, ...)
    const int64_t len = dim == 1 ? H : W;
    if (len > 1) {
      const int64_t cur0 = (s % 2 == 0) ? 1 : 0, prev0 = (s % 2 == 0) ? 0 : 1;
      const auto dgs = dg6.select(3, s).narrow(dim, cur0, len - 1);
      const auto cprev = c5.select(3, s).narrow(dim, prev0, len - 1);
      for (int gi = 0; gi < 2; ++gi) {
        dpeep[s][gi].copy_((dgs.select(3, gi) * cprev).sum({0, 1, 2}));
      }
    }
    dpeep[s][2].copy_((dg6.select(3, s).select(3, 3) * c5.select(3, s)).sum({0, 1, 2}));
  }
  return dpeep;
}

// A backend whose step kernel runs all rows of the sweeps of one group at
// once (CUDA): the recurrent GEMM of a step is one batched GEMM over the
// group's sweeps, then one step-kernel launch. Kernel::fwd(a) / bwd(a).
template <class Kernel>
struct StepwiseSweeps {
  template <typename T>
  static void forward_sweeps(TlstmFwdStep<T> a, const at::Tensor& hist, const at::Tensor& whm) {
    const TlstmGeom all = a.g;
    for (TlstmGeom g : tlstm_groups(all.B, all.H, all.W, all.K)) {
      const int64_t BN = g.B * g.N;
      hist.narrow(0, g.s0, g.ns).narrow(1, 0, BN).zero_();
      at::Tensor rec = at::empty({g.ns, BN, 4 * g.K}, hist.options());
      const at::Tensor wg = whm.narrow(0, g.s0, g.ns);
      for (int64_t t = 0; t < g.L; ++t) {
        g.t = t;
        if (t > 0) at::bmm_out(rec, hist.narrow(0, g.s0, g.ns).narrow(1, t * BN, BN), wg);
        a.g = g;
        a.rec = t > 0 ? rec.data_ptr<T>() : nullptr;
        a.rec_stride = BN * 4 * g.K;
        Kernel::fwd(a);
      }
    }
  }

  template <typename T>
  static at::Tensor backward_sweeps(TlstmBwdStep<T> a, const at::Tensor& dg_step,
                                    const at::Tensor& whmT) {
    const TlstmGeom all = a.g;
    for (TlstmGeom g : tlstm_groups(all.B, all.H, all.W, all.K)) {
      const int64_t BN = g.B * g.N;
      at::Tensor dcell = at::zeros({g.ns, BN, g.K}, dg_step.options());
      at::Tensor dhist = at::empty({g.ns, BN, 3 * g.K}, dg_step.options());
      const at::Tensor wg = whmT.narrow(0, g.s0, g.ns);
      for (int64_t t = g.L - 1; t >= 0; --t) {
        g.t = t;
        a.g = g;
        a.dhist = t + 1 < g.L ? dhist.data_ptr<T>() : nullptr;
        a.dhist_stride = BN * 3 * g.K;
        a.dcell = dcell.data_ptr<T>();
        a.dcell_stride = BN * g.K;
        a.dpeep = nullptr;
        Kernel::bwd(a);
        if (t > 0) at::bmm_out(dhist, dg_step.narrow(0, g.s0, g.ns).narrow(1, t * BN, BN), wg);
      }
    }
    return at::Tensor();  // the driver computes the peephole gradients
  }
};

// Returns hidden (B, H, W, 4K) channels-last, and what backward needs:
// gates (P, 16K), cells (P, 4K), hist (4, P, 3K).
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_forward_impl(
    const at::Tensor& x, const at::Tensor& w_x, const at::Tensor& b_x, const at::Tensor& w_h,
    const at::Tensor& peep) {
  const char* op = "her2kit::tlstm_forward";
  const int64_t K = tlstm_check(op, x, w_x, b_x, w_h, peep);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = B * H * W;
  const auto xc = x.permute({0, 2, 3, 1}).reshape({P, C});
  // One GEMM for the input projection of all pixels and all four sweeps.
  at::Tensor gates = at::addmm(b_x.reshape({16 * K}), xc, w_x.reshape({16 * K, C}).t());
  at::Tensor cells = at::empty({P, 4 * K}, x.options());
  at::Tensor hidden = at::empty({B, H, W, 4 * K}, x.options());
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
    Backend::template forward_sweeps<scalar_t>(a, hist, whm);
  });
  return {hidden, gates, cells, hist};
}

// Returns dx (B, C, H, W), dw_x, db_x, dw_h, dpeep in the weight layouts.
template <class Backend>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_backward_impl(
    const at::Tensor& grad_hidden, const at::Tensor& x, const at::Tensor& w_x,
    const at::Tensor& w_h, const at::Tensor& peep, const at::Tensor& gates,
    const at::Tensor& cells, const at::Tensor& hist) {
  const char* op = "her2kit::tlstm_backward";
  TORCH_CHECK(w_h.dim() == 4, op, ": w_h must be 4-D (4, 4K, K, 3), got shape ", w_h.sizes());
  const int64_t K = w_h.size(2);
  const at::Tensor b_dummy = at::empty({4, 4 * K}, x.options());
  tlstm_check(op, x, w_x, b_dummy, w_h, peep);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = B * H * W;
  check_shape(op, "grad_hidden", grad_hidden, {B, H, W, 4 * K}, "(B, H, W, 4K)");
  check_shape(op, "gates", gates, {P, 16 * K}, "(B*H*W, 16K)");
  check_shape(op, "cells", cells, {P, 4 * K}, "(B*H*W, 4K)");
  check_shape(op, "hist", hist, {4, P, 3 * K}, "(4, B*H*W, 3K)");
  check_same(op, "grad_hidden", grad_hidden, x);
  check_same(op, "gates", gates, x);
  check_same(op, "cells", cells, x);
  check_same(op, "hist", hist, x);

  const at::Tensor dh = grad_hidden.contiguous();
  const at::Tensor gc = gates.contiguous(), cc = cells.contiguous(), hc = hist.contiguous();
  const at::Tensor pc = peep.contiguous();
  const at::Tensor whmT = tlstm_rec_matrix(w_h, K).transpose(1, 2).contiguous();  // (4, 4K, 3K)
  at::Tensor dg_pix = at::empty({P, 16 * K}, x.options());
  at::Tensor dg_step = at::empty({4, P, 4 * K}, x.options());

  at::Tensor dpeep;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tlstm_backward", [&] {
    TlstmBwdStep<scalar_t> a{};
    a.g = TlstmGeom{B, H, W, K, 0, 4, H, W, 0};
    a.gates = gc.data_ptr<scalar_t>();
    a.cells = cc.data_ptr<scalar_t>();
    a.dhidden = dh.data_ptr<scalar_t>();
    a.dgates_pix = dg_pix.data_ptr<scalar_t>();
    a.dgates_step = dg_step.data_ptr<scalar_t>();
    a.peep = pc.data_ptr<scalar_t>();
    dpeep = Backend::template backward_sweeps<scalar_t>(a, dg_step, whmT);
  });
  if (!dpeep.defined()) dpeep = tlstm_peep_grad(dg_pix, cc, B, H, W, K);

  // Weight gradients: one GEMM each over all pixels (and steps).
  const at::Tensor dwhm = at::bmm(hc.transpose(1, 2), dg_step);  // (4, 3K, 4K)
  at::Tensor dw_h = dwhm.view({4, 3, K, 4 * K}).permute({0, 3, 2, 1}).contiguous();
  const auto xc = x.permute({0, 2, 3, 1}).reshape({P, C});
  at::Tensor dw_x = at::mm(dg_pix.t(), xc).view({4, 4 * K, C});
  at::Tensor db = dg_pix.sum(0).view({4, 4 * K});
  at::Tensor dx = at::mm(dg_pix, w_x.reshape({16 * K, C}))
                      .view({B, H, W, C})
                      .permute({0, 3, 1, 2})
                      .contiguous();

  return {dx, dw_x, db, dw_h, dpeep};
}

}  // namespace her2kit
