// Argument checks shared by the CPU and CUDA entry points: every message
// names the op and the argument so a wrong dtype, device or shape reads as
// one clear RuntimeError in Python.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

namespace her2kit {

inline void check_float(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
              " must be float32 or float64, got ", t.scalar_type());
}

inline void check_same(const char* op, const char* name, const at::Tensor& t,
                       const at::Tensor& ref) {
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
              t.scalar_type(), " but x has dtype ", ref.scalar_type());
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but x is on ", ref.device());
}

inline void check_shape(const char* op, const char* name, const at::Tensor& t,
                        const std::vector<int64_t>& want, const char* layout) {
  TORCH_CHECK(t.sizes().vec() == want, op, ": ", name, " must have shape ", layout, " = ",
              at::IntArrayRef(want), ", got ", t.sizes());
}

}  // namespace her2kit

namespace her2kit {

// SPP: x (B, C, H, W) float, levels >= 1; returns S = sum of n^2.
inline int64_t spp_check(const char* op, const at::Tensor& x, at::IntArrayRef levels) {
  TORCH_CHECK(x.dim() == 4, op, ": x must be 4-D (B, C, H, W), got shape ", x.sizes());
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0 && x.size(2) > 0 && x.size(3) > 0, op,
              ": x must have no empty dimension, got shape ", x.sizes());
  check_float(op, "x", x);
  TORCH_CHECK(!levels.empty(), op, ": levels must not be empty");
  int64_t S = 0;
  for (int64_t n : levels) {
    // n^2 bins per level: a larger n is a mistake, and n^2 could overflow
    TORCH_CHECK(n >= 1 && n <= 4096, op, ": every level must be 1..4096, got ", levels);
    S += n * n;
  }
  return S;
}

inline void spp_backward_check(const char* op, const at::Tensor& grad,
                               const at::Tensor& indices, int64_t H, int64_t W) {
  TORCH_CHECK(grad.dim() == 3, op, ": grad must be 3-D (B, C, S), got shape ", grad.sizes());
  check_float(op, "grad", grad);
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ",
              indices.scalar_type());
  TORCH_CHECK(indices.sizes() == grad.sizes(), op, ": indices shape ", indices.sizes(),
              " differs from grad shape ", grad.sizes());
  TORCH_CHECK(indices.device() == grad.device(), op, ": indices on ", indices.device(),
              " but grad on ", grad.device());
  TORCH_CHECK(H > 0 && W > 0, op, ": height and width must be positive, got ", H, " x ", W);
}

}  // namespace her2kit
