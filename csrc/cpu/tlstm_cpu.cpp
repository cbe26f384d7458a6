// TLSTM on the CPU and the TORCH_LIBRARY_IMPL(her2kit, CPU) registration.
// The ops run as independent chains (one sweep over a run of images), each
// with its own time loop: per step one or two small GEMMs on blocks kept in
// cache and the fused gate loops of cpu/tlstm_rows.h. The step-at-a-time
// driver of tlstm_driver.h (CUDA's) is registered too, as private ops, so it
// is tested on CPU-only machines.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/ThreadLocalState.h>
#include <torch/library.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <type_traits>
#include <vector>

#include "tlstm_driver.h"
// After the torch headers: tlstm_rows.h changes optimisation options.
#include "cpu/tlstm_rows.h"

namespace her2kit {
namespace {

using cpu_rows::bwd_chain_any;
using cpu_rows::bwd_rows_any;
using cpu_rows::ChainBwd;
using cpu_rows::ChainFwd;
using cpu_rows::fwd_chain_any;
using cpu_rows::fwd_rows_any;

// A chain is one sweep over a run of images: independent of every other
// chain through all its steps, so each thread takes whole chains (pulled
// from a shared counter) and runs their time loops without any barrier; the
// GEMMs of a step cover all rows of the chain.
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

// ---------------------------------------------------------------------------
// A small cache of the op's large buffers (activations kept for backward and
// scratch). Fresh multi-megabyte allocations are mmap'ed by malloc and so
// page-faulted in (and zeroed by the kernel) on every call, which cost more
// than a tenth of the op's time; blocks handed back here are reused by the
// next call that asks for the same size. At most HER2KIT_TLSTM_CACHE_MB
// (default 256; 0 disables the cache) stay cached; the rest are freed.
class BufferCache {
 public:
  static BufferCache& get() {
    static BufferCache* cache = new BufferCache();  // never destroyed: tensors may outlive exit
    return *cache;
  }

  at::Tensor empty(at::IntArrayRef sizes, const at::TensorOptions& options) {
    int64_t numel = 1;
    for (int64_t n : sizes) numel *= n;
    const size_t bytes = static_cast<size_t>(numel) * options.dtype().itemsize();
    if (cap_ == 0 || bytes < kMinBytes) return at::empty(sizes, options);
    void* p = take(bytes);
    if (p == nullptr) {
      p = std::aligned_alloc(64, (bytes + 63) / 64 * 64);
      TORCH_CHECK(p != nullptr, "her2kit: out of memory allocating ", bytes, " bytes");
    }
    return at::from_blob(
        p, sizes, [bytes](void* q) { BufferCache::get().give(q, bytes); }, options);
  }

 private:
  static constexpr size_t kMinBytes = 1 << 20;

  BufferCache() {
    const char* env = std::getenv("HER2KIT_TLSTM_CACHE_MB");
    const long mb = env != nullptr ? std::atol(env) : 256;
    cap_ = mb > 0 ? static_cast<size_t>(mb) << 20 : 0;
  }

  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(bytes);
    if (it == free_.end()) return nullptr;
    void* p = it->second;
    free_.erase(it);
    cached_ -= bytes;
    return p;
  }

  void give(void* p, size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + bytes <= cap_) {
        free_.emplace(bytes, p);
        cached_ += bytes;
        return;
      }
    }
    std::free(p);
  }

  std::mutex mu_;
  std::multimap<size_t, void*> free_;
  size_t cached_ = 0;
  size_t cap_ = 0;
};

// ---------------------------------------------------------------------------
// GEMMs on raw row-major blocks. With a BLAS in libtorch (MKL on x86 builds,
// which exports the Fortran sgemm_), call it directly: the per-step
// products are small and ATen's per-call overhead (views, dispatch) would
// weigh. Weak symbols: without them, fall back to at::mm on views.
extern "C" {
void sgemm_(const char* ta, const char* tb, const int* m, const int* n, const int* k,
            const float* alpha, const float* a, const int* lda, const float* b, const int* ldb,
            const float* beta, float* c, const int* ldc) __attribute__((weak));
}

template <typename T>
at::Tensor view_rm(const T* p, bool trans, int64_t rows, int64_t cols, int64_t ld) {
  // The row-major block stored as (rows, cols), optionally transposed.
  at::Tensor v = at::from_blob(const_cast<T*>(p), {rows, cols}, {ld, 1},
                               at::TensorOptions().dtype(c10::CppTypeToScalarType<T>::value));
  return trans ? v.t() : v;
}

// C (M, N; ldc) = beta * C + op(L) (M, Kd) @ op(R) (Kd, N), all row-major; op
// transposes a block stored as (Kd, M) resp. (N, Kd). beta is 0 or 1.
// float64 (the checking path: gradcheck, tests) and float32 without a BLAS
// symbol go through ATen on views.
template <typename T>
void gemm_rm(bool tl, bool tr, int64_t M, int64_t N, int64_t Kd, const T* L, int64_t ldl,
             const T* R, int64_t ldr, T beta, T* C, int64_t ldc) {
  if constexpr (std::is_same_v<T, float>) {
    if (sgemm_ != nullptr) {
      // Column-major BLAS computes C^T = op(R)^T op(L)^T.
      const int m = static_cast<int>(N), n = static_cast<int>(M), k = static_cast<int>(Kd);
      const int lda = static_cast<int>(ldr), ldb = static_cast<int>(ldl), ldcc = static_cast<int>(ldc);
      const float one = 1.0f;
      sgemm_(tr ? "T" : "N", tl ? "T" : "N", &m, &n, &k, &one, R, &lda, L, &ldb, &beta, C, &ldcc);
      return;
    }
  }
  at::Tensor c = view_rm<T>(C, false, M, N, ldc);
  const at::Tensor l = view_rm(L, tl, tl ? Kd : M, tl ? M : Kd, ldl);
  const at::Tensor r = view_rm(R, tr, tr ? N : Kd, tr ? Kd : N, ldr);
  if (beta == T(0)) {
    c.copy_(at::mm(l, r));
  } else {
    c.addmm_(l, r);
  }
}

// dst[c * ldd + r] = src[r * lds + c] for r < R, c < Cn, in cache tiles.
template <typename T>
void transpose_scalar(const T* __restrict src, int64_t lds, int64_t R, int64_t Cn,
                      T* __restrict dst, int64_t ldd) {
  constexpr int64_t kTile = 8;
  for (int64_t r0 = 0; r0 < R; r0 += kTile) {
    const int64_t r1 = std::min(R, r0 + kTile);
    for (int64_t c0 = 0; c0 < Cn; c0 += kTile) {
      const int64_t c1 = std::min(Cn, c0 + kTile);
      for (int64_t c = c0; c < c1; ++c) {
        T* __restrict d = dst + c * ldd;
        for (int64_t r = r0; r < r1; ++r) d[r] = src[r * lds + c];
      }
    }
  }
}

#if defined(__x86_64__)
// The same for float, 8 x 8 blocks in AVX registers (edges scalar).
__attribute__((target("avx2"))) void transpose_avx2(const float* __restrict src, int64_t lds,
                                                    int64_t R, int64_t Cn,
                                                    float* __restrict dst, int64_t ldd) {
  const int64_t R8 = R - R % 8, C8 = Cn - Cn % 8;
  for (int64_t r0 = 0; r0 < R8; r0 += 8) {
    for (int64_t c0 = 0; c0 < C8; c0 += 8) {
      const float* s = src + r0 * lds + c0;
      const __m256 r_0 = _mm256_loadu_ps(s), r_1 = _mm256_loadu_ps(s + lds);
      const __m256 r_2 = _mm256_loadu_ps(s + 2 * lds), r_3 = _mm256_loadu_ps(s + 3 * lds);
      const __m256 r_4 = _mm256_loadu_ps(s + 4 * lds), r_5 = _mm256_loadu_ps(s + 5 * lds);
      const __m256 r_6 = _mm256_loadu_ps(s + 6 * lds), r_7 = _mm256_loadu_ps(s + 7 * lds);
      const __m256 t0 = _mm256_unpacklo_ps(r_0, r_1), t1 = _mm256_unpackhi_ps(r_0, r_1);
      const __m256 t2 = _mm256_unpacklo_ps(r_2, r_3), t3 = _mm256_unpackhi_ps(r_2, r_3);
      const __m256 t4 = _mm256_unpacklo_ps(r_4, r_5), t5 = _mm256_unpackhi_ps(r_4, r_5);
      const __m256 t6 = _mm256_unpacklo_ps(r_6, r_7), t7 = _mm256_unpackhi_ps(r_6, r_7);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = dst + c0 * ldd + r0;
      _mm256_storeu_ps(d, _mm256_permute2f128_ps(u0, u4, 0x20));
      _mm256_storeu_ps(d + ldd, _mm256_permute2f128_ps(u1, u5, 0x20));
      _mm256_storeu_ps(d + 2 * ldd, _mm256_permute2f128_ps(u2, u6, 0x20));
      _mm256_storeu_ps(d + 3 * ldd, _mm256_permute2f128_ps(u3, u7, 0x20));
      _mm256_storeu_ps(d + 4 * ldd, _mm256_permute2f128_ps(u0, u4, 0x31));
      _mm256_storeu_ps(d + 5 * ldd, _mm256_permute2f128_ps(u1, u5, 0x31));
      _mm256_storeu_ps(d + 6 * ldd, _mm256_permute2f128_ps(u2, u6, 0x31));
      _mm256_storeu_ps(d + 7 * ldd, _mm256_permute2f128_ps(u3, u7, 0x31));
    }
  }
  if (C8 < Cn) transpose_scalar(src + C8, lds, R8, Cn - C8, dst + C8 * ldd, ldd);
  if (R8 < R) transpose_scalar(src + R8 * lds, lds, R - R8, Cn, dst + R8, ldd);
}
#endif

template <typename T>
void transpose_block(const T* src, int64_t lds, int64_t R, int64_t Cn, T* dst, int64_t ldd) {
  transpose_scalar(src, lds, R, Cn, dst, ldd);
}
template <>
void transpose_block<float>(const float* src, int64_t lds, int64_t R, int64_t Cn, float* dst,
                            int64_t ldd) {
#if defined(__x86_64__)
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) {
    transpose_avx2(src, lds, R, Cn, dst, ldd);
    return;
  }
#endif
  transpose_scalar(src, lds, R, Cn, dst, ldd);
}

// The layout changes between NCHW and the halves' walking order, done per
// image row (b, y) in parallel. Rows of half 0 for (y, b) are contiguous;
// rows of half 1 for (b, y) are one per column x, B*H rows apart.
//   x (B, C, H, W) -> xr (2, P, C)
template <typename T>
void nchw_to_rows(const T* x, int64_t B, int64_t C, int64_t H, int64_t W, T* xr) {
  const int64_t HW = H * W, P = B * HW;
  at::parallel_for(0, B * H, 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, y = i % H;
      const T* src = x + (b * C * H + y) * W;
      transpose_block(src, HW, C, W, xr + (y * B + b) * W * C, C);
      transpose_block(src, HW, C, W, xr + P * C + (b * H + y) * C, B * H * C);
    }
  });
}

//   rows (2, P, D) -> out (B, 2D, H, W): half 0 gives channels [0, D), half 1 [D, 2D)
template <typename T>
void rows_to_nchw(const T* rows, int64_t B, int64_t D, int64_t H, int64_t W, T* out) {
  const int64_t HW = H * W, P = B * HW;
  at::parallel_for(0, B * H, 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, y = i % H;
      T* dst = out + (b * 2 * D * H + y) * W;
      transpose_block(rows + (y * B + b) * W * D, D, W, D, dst, HW);
      transpose_block(rows + P * D + (b * H + y) * D, B * H * D, W, D, dst + D * HW, HW);
    }
  });
}

//   g (B, 2D, H, W) -> rows (2, P, D), the inverse of rows_to_nchw
template <typename T>
void nchw_to_halves(const T* g, int64_t B, int64_t D, int64_t H, int64_t W, T* rows) {
  const int64_t HW = H * W, P = B * HW;
  at::parallel_for(0, B * H, 4, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, y = i % H;
      const T* src = g + (b * 2 * D * H + y) * W;
      transpose_block(src, HW, D, W, rows + (y * B + b) * W * D, D);
      transpose_block(src + D * HW, HW, D, W, rows + P * D + (b * H + y) * D, B * H * D);
    }
  });
}

//   dxr (4, P, C), one per sweep -> dx (B, C, H, W), their sum in sweep order
template <typename T>
void sweeps_to_nchw_sum(const T* dxr, int64_t B, int64_t C, int64_t H, int64_t W, T* dx) {
  const int64_t HW = H * W, P = B * HW;
  at::parallel_for(0, B * H, 4, [&](int64_t i0, int64_t i1) {
    std::vector<T> acc(W * C);
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / H, y = i % H;
      const T* d0 = dxr + (y * B + b) * W * C;
      const T* d1 = d0 + P * C;
      const T* d2 = dxr + 2 * P * C + (b * H + y) * C;
      const T* d3 = d2 + P * C;
      for (int64_t w = 0; w < W; ++w) {
        T* __restrict a = acc.data() + w * C;
        const T* __restrict s0 = d0 + w * C;
        const T* __restrict s1 = d1 + w * C;
        const T* __restrict s2 = d2 + w * B * H * C;
        const T* __restrict s3 = d3 + w * B * H * C;
        for (int64_t c = 0; c < C; ++c) a[c] = ((s0[c] + s1[c]) + s2[c]) + s3[c];
      }
      transpose_block(acc.data(), C, W, C, dx + (b * C * H + y) * W, HW);
    }
  });
}

// Asks for `rows` rows of `width` elements, `ld` apart, to be brought into
// cache ahead of use (the next step's blocks, while this step computes).
template <typename T>
inline void prefetch_rows(const T* p, int64_t rows, int64_t ld, int64_t width, bool write) {
  constexpr int64_t kLine = 64 / sizeof(T);
  for (int64_t r = 0; r < rows; ++r) {
    const T* q = p + r * ld;
    for (int64_t j = 0; j < width; j += kLine) {
      if (write) {
        __builtin_prefetch(q + j, 1, 3);
      } else {
        __builtin_prefetch(q + j, 0, 3);
      }
    }
  }
}

// The CPU forward: per chain and step, one GEMM computes the step's
// pre-activations from [x | h_{t-1} at n-1, n, n+1] (the chain's own block,
// in cache) times [W_x^T; W_h] into a small block of the chain; the fused
// gate loop activates them, writes the gates, states and the next step's
// recurrent input. wf (4, C+3K, 4K) holds [W_x^T; W_h] per sweep.
template <typename T>
void forward_chains(const TlstmGeom& G, int64_t C, const T* xr, const T* wf, const T* bx,
                    const T* peep, T* gates, T* cells, T* hidden, T* hist) {
  const int64_t K = G.K, P = G.B * G.H * G.W, D = C + 3 * K;
  run_chains(make_chains(G), [&](const Chain& ch) {
    const int s = ch.s, half = s >> 1, side = s & 1;
    const int64_t rows = (ch.b1 - ch.b0) * ch.N, r0 = ch.b0 * ch.N, BN = G.B * ch.N;
    const TlstmGeom g{G.B, G.H, G.W, K, s, 1, ch.L, ch.N, 0};
    T* gh = gates + half * P * 8 * K + side * 4 * K;
    T* ch_c = cells + half * P * 2 * K + side * K;
    T* ch_h = hidden + half * P * 2 * K + side * K;
    T* hs = hist + s * P * 3 * K;
    const T* xh = xr + half * P * C;
    const T* wfs = wf + s * D * 4 * K;
    std::vector<T> scratch(rows * (D + 4 * K) + K);
    T* acat = scratch.data();         // (rows, C + 3K): [x | recurrent input]
    T* pre = acat + rows * D;         // (rows, 4K)
    std::memset(hs + (g.pos(s, 0) * BN + r0) * 3 * K, 0, rows * 3 * K * sizeof(T));
    ChainFwd<T> a{};
    a.rows = rows;
    a.N = ch.N;
    a.K = K;
    a.pre = pre;
    a.gld = 8 * K;
    a.sld = 2 * K;
    a.bias = bx + s * 4 * K;
    a.peep = peep + s * 3 * K;
    a.hld = D;
    a.zeros = pre + rows * 4 * K;     // (K,) zeros
    for (int64_t t = 0; t < ch.L; ++t) {
      const int64_t first = g.pos(s, t) * BN + r0;
      if (t + 1 < ch.L) {  // the next step's blocks
        const int64_t nx = g.pos(s, t + 1) * BN + r0;
        prefetch_rows(gh + nx * 8 * K, rows, 8 * K, 4 * K, true);
        prefetch_rows(xh + nx * C, 1, 0, rows * C, false);
      }
      const T* xs = xh + first * C;
      for (int64_t r = 0; r < rows; ++r) std::memcpy(acat + r * D, xs + r * C, C * sizeof(T));
      gemm_rm<T>(false, false, rows, 4 * K, t > 0 ? D : C, acat, D, wfs, 4 * K, T(0), pre, 4 * K);
      a.g = gh + first * 8 * K;
      a.cprev = t > 0 ? ch_c + (g.pos(s, t - 1) * BN + r0) * 2 * K : nullptr;
      a.c = ch_c + first * 2 * K;
      a.h = ch_h + first * 2 * K;
      a.hist_next = t + 1 < ch.L ? acat + C : nullptr;
      fwd_chain_any(a);
      if (t + 1 < ch.L) {  // kept for the backward's W_h gradient
        T* hn = hs + (g.pos(s, t + 1) * BN + r0) * 3 * K;
        for (int64_t r = 0; r < rows; ++r) {
          std::memcpy(hn + r * 3 * K, acat + r * D + C, 3 * K * sizeof(T));
        }
      }
    }
  });
}

// The CPU backward: per chain, backwards in time, the fused gate-gradient
// loop writes the step's dgates into a small block of the chain's own; two
// GEMMs then use it while it is in cache: dG [W_x | W_h^T] (the input
// gradient of the step's pixels, one buffer per sweep, and the recurrent
// input gradient for step t-1), and [x | h_{t-1} ...]^T dG, the chain's
// [W_x^T; W_h] gradient. wb (4, 4K, C+3K) holds [W_x | W_h^T] per sweep.
// Weight, bias and peephole gradients are accumulated per chain and summed
// in chain order: bit-identical run to run, whichever thread ran which chain.
template <typename T>
void backward_chains(const TlstmGeom& G, int64_t C, const std::vector<Chain>& chains,
                     const T* xr, const T* wb, const T* peep, const T* gates, const T* cells,
                     const T* hist, const T* dh, T* dxr, T* parts, int64_t part_len) {
  const int64_t K = G.K, P = G.B * G.H * G.W, D = C + 3 * K;
  run_chains(chains, [&](const Chain& ch) {
    const int s = ch.s, half = s >> 1, side = s & 1;
    const int64_t rows = (ch.b1 - ch.b0) * ch.N, r0 = ch.b0 * ch.N, BN = G.B * ch.N;
    const TlstmGeom g{G.B, G.H, G.W, K, s, 1, ch.L, ch.N, 0};
    const T* gh = gates + half * P * 8 * K + side * 4 * K;
    const T* ch_c = cells + half * P * 2 * K + side * K;
    const T* ch_dh = dh + half * P * 2 * K + side * K;
    const T* hs = hist + s * P * 3 * K;
    const T* xh = xr + half * P * C;
    T* dxs = dxr + s * P * C;
    const T* wbs = wb + s * 4 * K * D;
    T* dwcat = parts + (&ch - chains.data()) * part_len;  // (C + 3K, 4K)
    std::vector<T> scratch(rows * (5 * K + 2 * D) + 10 * K, T(0));
    T* dcell = scratch.data();        // (rows, K), zero: no gradient after the last step
    T* dg = dcell + rows * K;         // (rows, 4K)
    T* o = dg + rows * 4 * K;         // (rows, C + 3K): [dx | dhist] of the step
    T* acat = o + rows * D;           // (rows, C + 3K): [x | recurrent input]
    ChainBwd<T> a{};
    a.rows = rows;
    a.N = ch.N;
    a.K = K;
    a.gld = 8 * K;
    a.sld = 2 * K;
    a.dld = D;
    a.dcell = dcell;
    a.dg = dg;
    a.peep = peep + s * 3 * K;
    a.zeros = acat + rows * D;        // (3K,) zeros
    // The step's peephole and bias gradients (3K + 4K), summed over its rows,
    // then added to the chain's: two-level sums keep float32 rounding small.
    T* step_sums = acat + rows * D + 3 * K;
    a.dpeep = step_sums;
    a.db = step_sums + 3 * K;
    T* chain_sums = dwcat + D * 4 * K;  // dpeep (3K), db (4K)
    for (int64_t t = ch.L - 1; t >= 0; --t) {
      const int64_t first = g.pos(s, t) * BN + r0;
      if (t > 0) {  // what the previous step will read
        const int64_t pv = g.pos(s, t - 1) * BN + r0;
        prefetch_rows(gh + pv * 8 * K, rows, 8 * K, 4 * K, false);
        prefetch_rows(ch_dh + pv * 2 * K, rows, 2 * K, K, false);
        prefetch_rows(hs + pv * 3 * K, 1, 0, rows * 3 * K, false);
      }
      a.g = gh + first * 8 * K;
      a.c = ch_c + first * 2 * K;
      a.cprev = t > 0 ? ch_c + (g.pos(s, t - 1) * BN + r0) * 2 * K : nullptr;
      a.dhout = ch_dh + first * 2 * K;
      a.dhist = t + 1 < ch.L ? o + C : nullptr;
      std::fill(step_sums, step_sums + 7 * K, T(0));
      bwd_chain_any(a);
      for (int64_t j = 0; j < 7 * K; ++j) chain_sums[j] += step_sums[j];
      // Step 0 read zeros as its recurrent input: only the x columns count.
      const int64_t Dt = t > 0 ? D : C;
      const T* xs = xh + first * C;
      const T* hrow = hs + first * 3 * K;
      for (int64_t r = 0; r < rows; ++r) {
        std::memcpy(acat + r * D, xs + r * C, C * sizeof(T));
        if (t > 0) std::memcpy(acat + r * D + C, hrow + r * 3 * K, 3 * K * sizeof(T));
      }
      gemm_rm<T>(true, false, Dt, 4 * K, rows, acat, D, dg, 4 * K, T(1), dwcat, 4 * K);
      gemm_rm<T>(false, false, rows, Dt, 4 * K, dg, 4 * K, wbs, D, T(0), o, D);
      T* dxo = dxs + first * C;
      for (int64_t r = 0; r < rows; ++r) std::memcpy(dxo + r * C, o + r * D, C * sizeof(T));
    }
  });
}

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
  const char* op = "her2kit::tlstm_forward";
  check_cpu(op, x);
  const int64_t K = tlstm_check(op, x, w_x, b_x, w_h, peep);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = B * H * W;
  const at::Tensor xc = x.contiguous(), wx = w_x.contiguous(), bx = b_x.contiguous();
  const at::Tensor pc = peep.contiguous(), whm = tlstm_rec_matrix(w_h, K);
  BufferCache& cache = BufferCache::get();
  const at::Tensor wf = at::cat({wx.transpose(1, 2), whm}, 1).contiguous();  // (4, C+3K, 4K)
  at::Tensor xr = cache.empty({2, P, C}, x.options());
  at::Tensor gates = cache.empty({2, P, 8 * K}, x.options());
  at::Tensor cells = cache.empty({2, P, 2 * K}, x.options());
  at::Tensor hidden = cache.empty({2, P, 2 * K}, x.options());
  at::Tensor hist = cache.empty({4, P, 3 * K}, x.options());
  at::Tensor out = at::empty({B, 4 * K, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tlstm_forward", [&] {
    using T = scalar_t;
    nchw_to_rows<T>(xc.data_ptr<T>(), B, C, H, W, xr.data_ptr<T>());
    forward_chains<T>(TlstmGeom{B, H, W, K, 0, 4, H, W, 0}, C, xr.data_ptr<T>(),
                      wf.data_ptr<T>(), bx.data_ptr<T>(), pc.data_ptr<T>(), gates.data_ptr<T>(),
                      cells.data_ptr<T>(), hidden.data_ptr<T>(), hist.data_ptr<T>());
    rows_to_nchw<T>(hidden.data_ptr<T>(), B, 2 * K, H, W, out.data_ptr<T>());
  });
  return {out, gates, cells, hist};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> tlstm_backward_cpu(
    const at::Tensor& grad_hidden, const at::Tensor& x, const at::Tensor& w_x,
    const at::Tensor& w_h, const at::Tensor& peep, const at::Tensor& gates,
    const at::Tensor& cells, const at::Tensor& hist) {
  const char* op = "her2kit::tlstm_backward";
  check_cpu(op, x);
  const int64_t K = tlstm_backward_check(op, grad_hidden, x, w_x, w_h, peep, gates, cells, hist);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t P = B * H * W;
  const at::Tensor xc = x.contiguous(), wx = w_x.contiguous(), pc = peep.contiguous();
  const at::Tensor gc = gates.contiguous(), cc = cells.contiguous(), hc = hist.contiguous();
  const at::Tensor gh = grad_hidden.contiguous(), whm = tlstm_rec_matrix(w_h, K);
  const TlstmGeom G{B, H, W, K, 0, 4, H, W, 0};
  const auto chains = make_chains(G);
  const int64_t nch = static_cast<int64_t>(chains.size());
  BufferCache& cache = BufferCache::get();
  const at::Tensor wb = at::cat({wx, whm.transpose(1, 2)}, 2).contiguous();  // (4, 4K, C+3K)
  // Per chain: the gradient of [W_x^T; W_h] (C+3K x 4K), dpeep (3K), db (4K).
  const int64_t D = C + 3 * K;
  const int64_t part_len = D * 4 * K + 3 * K + 4 * K;
  at::Tensor parts = at::zeros({nch, part_len}, x.options());
  at::Tensor xr = cache.empty({2, P, C}, x.options());
  at::Tensor dh = cache.empty({2, P, 2 * K}, x.options());
  at::Tensor dxr = cache.empty({4, P, C}, x.options());
  at::Tensor dx = at::empty({B, C, H, W}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "tlstm_backward", [&] {
    using T = scalar_t;
    nchw_to_rows<T>(xc.data_ptr<T>(), B, C, H, W, xr.data_ptr<T>());
    nchw_to_halves<T>(gh.data_ptr<T>(), B, 2 * K, H, W, dh.data_ptr<T>());
    backward_chains<T>(G, C, chains, xr.data_ptr<T>(), wb.data_ptr<T>(), pc.data_ptr<T>(),
                       gc.data_ptr<T>(), cc.data_ptr<T>(), hc.data_ptr<T>(), dh.data_ptr<T>(),
                       dxr.data_ptr<T>(), parts.data_ptr<T>(), part_len);
    sweeps_to_nchw_sum<T>(dxr.data_ptr<T>(), B, C, H, W, dx.data_ptr<T>());
  });
  // The chains' parts, summed per sweep in chain order.
  at::Tensor sums = at::zeros({4, part_len}, x.options());
  for (int64_t i = 0; i < nch; ++i) sums[chains[i].s] += parts[i];
  const at::Tensor dwcat = sums.narrow(1, 0, D * 4 * K).view({4, D, 4 * K});
  at::Tensor dw_x = dwcat.narrow(1, 0, C).transpose(1, 2);
  at::Tensor dw_h = dwcat.narrow(1, C, 3 * K).reshape({4, 3, K, 4 * K}).permute({0, 3, 2, 1});
  at::Tensor dpeep = sums.narrow(1, D * 4 * K, 3 * K).reshape({4, 3, K});
  at::Tensor db = sums.narrow(1, D * 4 * K + 3 * K, 4 * K).reshape({4, 4 * K});
  return {dx, dw_x.contiguous(), db.contiguous(), dw_h.contiguous(), dpeep.contiguous()};
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
