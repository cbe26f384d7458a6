// The her2kit op schemas. Kernels: csrc/cpu (CPU), csrc/cuda (CUDA); autograd
// and fake (meta) kernels are registered from Python (her2kit/ops/native.py).
#include <torch/library.h>

TORCH_LIBRARY(her2kit, m) {
  // TLSTM, all four sweeps. Returns hidden (B, H, W, 4K) channels-last and
  // the saved gates (B*H*W, 16K), cells (B*H*W, 4K), hist (4, B*H*W, 3K).
  m.def("tlstm_forward(Tensor x, Tensor w_x, Tensor b_x, Tensor w_h, Tensor peep)"
        " -> (Tensor, Tensor, Tensor, Tensor)");
  // Returns dx, dw_x, db_x, dw_h, dpeep.
  m.def("tlstm_backward(Tensor grad_hidden, Tensor x, Tensor w_x, Tensor w_h, Tensor peep,"
        " Tensor gates, Tensor cells, Tensor hist) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // SPP: (B, C, S) maxima and int64 argmax (flat index into the H x W plane).
  m.def("spp_forward(Tensor x, int[] levels) -> (Tensor, Tensor)");
  m.def("spp_backward(Tensor grad, Tensor indices, SymInt height, SymInt width) -> Tensor");
}
