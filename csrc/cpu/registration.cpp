// The her2kit op schemas. Kernels: csrc/cpu (CPU), csrc/cuda (CUDA); autograd
// and fake (meta) kernels are registered from Python (her2kit/ops/native.py).
#include <torch/library.h>

TORCH_LIBRARY(her2kit, m) {
  // TLSTM, all four sweeps (weight layout: csrc/tlstm_driver.h). Returns the
  // hidden maps (B, 4K, H, W) and, for backward, gates (2, B*H*W, 8K),
  // cells (2, B*H*W, 2K) and hist (4, B*H*W, 3K) (csrc/tlstm_step.h).
  m.def("tlstm_forward(Tensor x, Tensor w_x, Tensor b_x, Tensor w_h, Tensor peep)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  // Returns dx, dw_x, db_x, dw_h, dpeep.
  m.def("tlstm_backward(Tensor grad_hidden, Tensor x, Tensor w_x, Tensor w_h, Tensor peep,"
        " Tensor gates, Tensor cells, Tensor hist) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // Private: the same two ops through the step-at-a-time driver that CUDA
  // uses (CPU kernels), so that driver is tested on machines without a GPU.
  m.def("_tlstm_forward_stepwise(Tensor x, Tensor w_x, Tensor b_x, Tensor w_h, Tensor peep)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("_tlstm_backward_stepwise(Tensor grad_hidden, Tensor x, Tensor w_x, Tensor w_h,"
        " Tensor peep, Tensor gates, Tensor cells, Tensor hist)"
        " -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // SPP: (B, C, S) maxima and int64 argmax (flat index into the H x W plane).
  m.def("spp_forward(Tensor x, int[] levels) -> (Tensor, Tensor)");
  m.def("spp_backward(Tensor grad, Tensor indices, SymInt height, SymInt width) -> Tensor");
}
