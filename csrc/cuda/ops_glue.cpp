// CUDA glue: unpacks tensors, picks the current stream and device, calls the
// raw-pointer launchers of csrc/cuda/*.cu and registers the CUDA kernels.
// Compiled only in a CUDA build of torch (see CMakeLists.txt).
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "op_checks.h"
#include "spp_kernels.h"
#include "tlstm_driver.h"

namespace her2kit {
namespace {

void* stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

void check_launch(const char* op, int rc) {
  TORCH_CHECK(rc == 0, op, ": CUDA kernel launch failed: ", cuda_error_string(rc));
}

void check_cuda(const char* op, const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), op, ": expected CUDA tensors, got ", x.device());
}

struct CudaStepKernel {
  template <typename T>
  static void fwd(const TlstmFwdStep<T>& a) {
    check_launch("her2kit::tlstm_forward", tlstm_fwd_step_cuda(a, stream()));
  }
  template <typename T>
  static void bwd(const TlstmBwdStep<T>& a) {
    check_launch("her2kit::tlstm_backward", tlstm_bwd_step_cuda(a, stream()));
  }
};

using CudaBackend = StepwiseSweeps<CudaStepKernel>;

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_forward_cuda(
    const at::Tensor& x, const at::Tensor& w_x, const at::Tensor& b_x, const at::Tensor& w_h,
    const at::Tensor& peep) {
  check_cuda("her2kit::tlstm_forward", x);
  const c10::cuda::CUDAGuard guard(x.device());
  return tlstm_forward_impl<CudaBackend>(x, w_x, b_x, w_h, peep);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_backward_cuda(
    const at::Tensor& grad_hidden, const at::Tensor& x, const at::Tensor& w_x,
    const at::Tensor& w_h, const at::Tensor& peep, const at::Tensor& gates,
    const at::Tensor& cells, const at::Tensor& hist) {
  check_cuda("her2kit::tlstm_backward", x);
  const c10::cuda::CUDAGuard guard(x.device());
  return tlstm_backward_impl<CudaBackend>(grad_hidden, x, w_x, w_h, peep, gates, cells, hist);
}

std::tuple<at::Tensor, at::Tensor> spp_forward_cuda_op(const at::Tensor& x,
                                                       at::IntArrayRef levels) {
  const char* op = "her2kit::spp_forward";
  const int64_t S = spp_check(op, x, levels);
  check_cuda(op, x);
  TORCH_CHECK(static_cast<int64_t>(levels.size()) <= SppLevels::kMax, op, ": at most ",
              SppLevels::kMax, " levels on CUDA, got ", levels.size());
  const c10::cuda::CUDAGuard guard(x.device());
  SppLevels lv{};
  lv.count = static_cast<int>(levels.size());
  int64_t off = 0;
  for (int l = 0; l < lv.count; ++l) {
    lv.n[l] = levels[l];
    lv.offset[l] = off;
    off += levels[l] * levels[l];
  }
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty({B, C, S}, x.options());
  at::Tensor idx = at::empty({B, C, S}, x.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spp_forward_cuda", [&] {
    check_launch(op, spp_forward_cuda(xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                      idx.data_ptr<int64_t>(), B * C, H, W, lv, S, stream()));
  });
  return {out, idx};
}

at::Tensor spp_backward_cuda_op(const at::Tensor& grad, const at::Tensor& indices, int64_t H,
                                int64_t W) {
  const char* op = "her2kit::spp_backward";
  spp_backward_check(op, grad, indices, H, W);
  check_cuda(op, grad);
  const c10::cuda::CUDAGuard guard(grad.device());
  const int64_t B = grad.size(0), C = grad.size(1), S = grad.size(2);
  const at::Tensor g = grad.contiguous(), ix = indices.contiguous();
  at::Tensor gin = at::zeros({B, C, H, W}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "spp_backward_cuda", [&] {
    check_launch(op, spp_backward_cuda(g.data_ptr<scalar_t>(), ix.data_ptr<int64_t>(),
                                       gin.data_ptr<scalar_t>(), B * C, H * W, S, stream()));
  });
  return gin;
}

}  // namespace

TORCH_LIBRARY_IMPL(her2kit, CUDA, m) {
  m.impl("tlstm_forward", &tlstm_forward_cuda);
  m.impl("tlstm_backward", &tlstm_backward_cuda);
  m.impl("spp_forward", &spp_forward_cuda_op);
  m.impl("spp_backward", &spp_backward_cuda_op);
}

}  // namespace her2kit
