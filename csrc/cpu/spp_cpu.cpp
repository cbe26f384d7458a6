// Spatial pyramid pooling on the CPU. Each (b, c) plane is read once for all
// levels: the finest level scans the plane, a coarser level n whose size
// divides an already computed level m is merged from m's bins (level-n bin i
// is exactly the union of level-m bins i*m/n .. (i+1)*m/n - 1 under the
// adaptive bounds), and any other level scans the plane while it is still
// in cache.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "op_checks.h"
#include "spp_kernels.h"

namespace her2kit {
namespace {

struct LevelPlan {
  int64_t n, offset;
  int src;  // index of the level to merge from, or -1 to scan the plane
};

// Levels in decreasing size; `src` is the position (in the returned order)
// of the smallest finer level that the level's size divides, or -1.
std::vector<LevelPlan> plan_levels(at::IntArrayRef levels) {
  const int nl = static_cast<int>(levels.size());
  std::vector<int64_t> offsets(nl);
  int64_t off = 0;
  for (int l = 0; l < nl; ++l) {
    offsets[l] = off;
    off += levels[l] * levels[l];
  }
  std::vector<int> order(nl);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return levels[a] > levels[b]; });
  std::vector<LevelPlan> res;
  for (int l : order) {
    LevelPlan p{levels[l], offsets[l], -1};
    for (int d = 0; d < static_cast<int>(res.size()); ++d) {
      if (res[d].n % p.n == 0 && (p.src < 0 || res[d].n < res[p.src].n)) p.src = d;
    }
    res.push_back(p);
  }
  return res;
}

template <typename T>
void spp_plane(const T* xp, T* op, int64_t* ip, int64_t H, int64_t W,
               const std::vector<LevelPlan>& plan) {
  for (const LevelPlan& p : plan) {
    const int64_t n = p.n;
    if (p.src < 0) {
      for (int64_t i = 0; i < n; ++i) {
        const int64_t y0 = bin_start(i, n, H), y1 = bin_end(i, n, H);
        for (int64_t j = 0; j < n; ++j) {
          const int64_t x0 = bin_start(j, n, W), x1 = bin_end(j, n, W);
          T best = -std::numeric_limits<T>::infinity();
          int64_t bi = y0 * W + x0;
          for (int64_t y = y0; y < y1; ++y) {
            const T* row = xp + y * W;
            for (int64_t x = x0; x < x1; ++x) {
              const T v = row[x];
              if (v > best || std::isnan(v)) {
                best = v;
                bi = y * W + x;
              }
            }
          }
          op[p.offset + i * n + j] = best;
          ip[p.offset + i * n + j] = bi;
        }
      }
    } else {
      const LevelPlan& s = plan[p.src];
      const int64_t r = s.n / n;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t j = 0; j < n; ++j) {
          int64_t k0 = s.offset + (i * r) * s.n + j * r;
          T best = op[k0];
          int64_t bi = ip[k0];
          for (int64_t a = 0; a < r; ++a) {
            for (int64_t c = 0; c < r; ++c) {
              const int64_t k = s.offset + (i * r + a) * s.n + j * r + c;
              if (spp_better(op[k], ip[k], best, bi)) {
                best = op[k];
                bi = ip[k];
              }
            }
          }
          op[p.offset + i * n + j] = best;
          ip[p.offset + i * n + j] = bi;
        }
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> spp_forward_cpu(const at::Tensor& x, at::IntArrayRef levels) {
  const char* op = "her2kit::spp_forward";
  const int64_t S = spp_check(op, x, levels);
  TORCH_CHECK(x.device().is_cpu(), op, ": expected a CPU tensor, got ", x.device());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const at::Tensor xc = x.contiguous();
  at::Tensor out = at::empty({B, C, S}, x.options());
  at::Tensor idx = at::empty({B, C, S}, x.options().dtype(at::kLong));
  const auto plan = plan_levels(levels);
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "spp_forward", [&] {
    const scalar_t* xp = xc.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    int64_t* ix = idx.data_ptr<int64_t>();
    at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        spp_plane<scalar_t>(xp + q * H * W, o + q * S, ix + q * S, H, W, plan);
      }
    });
  });
  return {out, idx};
}

at::Tensor spp_backward_cpu(const at::Tensor& grad, const at::Tensor& indices, int64_t H,
                            int64_t W) {
  const char* op = "her2kit::spp_backward";
  spp_backward_check(op, grad, indices, H, W);
  TORCH_CHECK(grad.device().is_cpu(), op, ": expected a CPU tensor, got ", grad.device());
  const int64_t B = grad.size(0), C = grad.size(1), S = grad.size(2), HW = H * W;
  const at::Tensor g = grad.contiguous(), ix = indices.contiguous();
  at::Tensor gin = at::zeros({B, C, H, W}, grad.options());
  AT_DISPATCH_FLOATING_TYPES(grad.scalar_type(), "spp_backward", [&] {
    const scalar_t* gp = g.data_ptr<scalar_t>();
    const int64_t* ip = ix.data_ptr<int64_t>();
    scalar_t* out = gin.data_ptr<scalar_t>();
    at::parallel_for(0, B * C, 16, [&](int64_t begin, int64_t end) {
      for (int64_t q = begin; q < end; ++q) {
        for (int64_t s = 0; s < S; ++s) {
          const int64_t k = ip[q * S + s];
          TORCH_CHECK(k >= 0 && k < HW, op, ": argmax index ", k, " outside the ", H, " x ", W,
                      " plane");
          out[q * HW + k] += gp[q * S + s];
        }
      }
    });
  });
  return gin;
}

}  // namespace

TORCH_LIBRARY_IMPL(her2kit, CPU, m) {
  m.impl("spp_forward", &spp_forward_cpu);
  m.impl("spp_backward", &spp_backward_cpu);
}

}  // namespace her2kit
