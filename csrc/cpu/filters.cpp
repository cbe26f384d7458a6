// Two image filters of cell finding, bit for bit those of scipy.ndimage:
//
// - gaussian: scipy.ndimage.gaussian_filter of a 2-D float32 image in
//   "reflect" mode. scipy walks every line through a float64 buffer, one
//   pixel at a time; here each pass runs across whole rows, so the compiler
//   vectorises it (AVX-512 / AVX2 clones, picked at load time). Per pixel
//   the arithmetic is scipy's own: float64 sums in the same order, the
//   intermediate rounded to float32 between the two passes, and no fused
//   multiply-adds (this file is built with -ffp-contract=off).
// - label: scipy.ndimage.label of a 2-D mask, 4- or 8-connected, int32 ids
//   numbered in raster order of each component's first pixel, by runs of
//   pixels and union-find.
// - within: the pixels at most sqrt(k) from a True pixel of a mask (the
//   dilation by a digital disk; distance_transform_edt(~mask) <= sqrt(k)):
//   capped column distances, then per row one vectorised compare per column
//   offset of the disk.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "cpu/vector_clones.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace her2kit {
namespace {

// scipy's "reflect" extension (d c b a | a b c d | d c b a) of index i into [0, n).
int64_t reflect_index(int64_t i, int64_t n) {
  const int64_t period = 2 * n;
  int64_t m = i % period;
  if (m < 0) m += period;
  return m < n ? m : period - 1 - m;
}

// out[x] = in0[x] * w[0] + sum over j = r..1 of (lo_j[x] + hi_j[x]) * w[j],
// accumulated in that order (scipy's loop over the symmetric kernel).
HER2KIT_VECTOR_CLONES
void columns_pass(const float* const* lo, const float* const* hi, const float* in0,
                  const double* w, int64_t r, int64_t n, double* acc, float* out) {
  for (int64_t x = 0; x < n; ++x) acc[x] = static_cast<double>(in0[x]) * w[0];
  for (int64_t j = r; j >= 1; --j) {
    const float* a = lo[j];
    const float* b = hi[j];
    const double wj = w[j];
    for (int64_t x = 0; x < n; ++x) {
      acc[x] += (static_cast<double>(a[x]) + static_cast<double>(b[x])) * wj;
    }
  }
  for (int64_t x = 0; x < n; ++x) out[x] = static_cast<float>(acc[x]);
}

// One row along x: line holds the row reflected by r on both sides, as float64.
HER2KIT_VECTOR_CLONES
void row_pass(const double* line, const double* w, int64_t r, int64_t n, double* acc,
              float* out) {
  const double* c = line + r;
  for (int64_t x = 0; x < n; ++x) acc[x] = c[x] * w[0];
  for (int64_t j = r; j >= 1; --j) {
    const double wj = w[j];
    for (int64_t x = 0; x < n; ++x) acc[x] += (c[x - j] + c[x + j]) * wj;
  }
  for (int64_t x = 0; x < n; ++x) out[x] = static_cast<float>(acc[x]);
}

void gaussian_2d(const float* in, int64_t H, int64_t W, const double* w, int64_t r, float* out) {
  // pass 1, along y: rows of the result, in column blocks that stay in cache
  constexpr int64_t kBlock = 512;
  std::vector<const float*> lo(static_cast<size_t>(r) + 1), hi(static_cast<size_t>(r) + 1);
  std::vector<double> acc(static_cast<size_t>(std::max<int64_t>(W, kBlock)));
  std::vector<float> tmp(static_cast<size_t>(H * W));
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x0 = 0; x0 < W; x0 += kBlock) {
      const int64_t n = std::min(kBlock, W - x0);
      for (int64_t j = 1; j <= r; ++j) {
        lo[j] = in + reflect_index(y - j, H) * W + x0;
        hi[j] = in + reflect_index(y + j, H) * W + x0;
      }
      columns_pass(lo.data(), hi.data(), in + y * W + x0, w, r, n, acc.data(),
                   tmp.data() + y * W + x0);
    }
  }
  // pass 2, along x, on the float32 result of pass 1 (as scipy stores it)
  std::vector<double> line(static_cast<size_t>(W + 2 * r));
  for (int64_t y = 0; y < H; ++y) {
    const float* row = tmp.data() + y * W;
    double* l = line.data() + r;
    for (int64_t x = 0; x < W; ++x) l[x] = static_cast<double>(row[x]);
    for (int64_t j = 1; j <= r; ++j) {
      l[-j] = static_cast<double>(row[reflect_index(-j, W)]);
      l[W - 1 + j] = static_cast<double>(row[reflect_index(W - 1 + j, W)]);
    }
    row_pass(line.data(), w, r, W, acc.data(), out + y * W);
  }
}

py::array_t<float> gaussian(py::array_t<float, py::array::c_style | py::array::forcecast> image,
                            py::array_t<double, py::array::c_style | py::array::forcecast> weights) {
  if (image.ndim() != 2) throw std::invalid_argument("gaussian: image must be 2-D");
  if (weights.ndim() != 1 || weights.shape(0) % 2 != 1) {
    throw std::invalid_argument("gaussian: weights must be 1-D of odd length");
  }
  const int64_t H = image.shape(0), W = image.shape(1);
  const int64_t r = weights.shape(0) / 2;
  // the kernel's centre and one side (w[j] for offsets +-j); symmetric kernels only
  const double* wk = weights.data();
  std::vector<double> w(static_cast<size_t>(r) + 1);
  for (int64_t j = 0; j <= r; ++j) {
    if (wk[r + j] != wk[r - j]) throw std::invalid_argument("gaussian: weights must be symmetric");
    w[static_cast<size_t>(j)] = wk[r + j];
  }
  py::array_t<float> out({H, W});
  if (H == 0 || W == 0) return out;
  const float* in = image.data();
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    gaussian_2d(in, H, W, w.data(), r, o);
  }
  return out;
}

int32_t find_root(std::vector<int32_t>& parent, int32_t a) {
  while (parent[a] != a) {
    parent[a] = parent[parent[a]];
    a = parent[a];
  }
  return a;
}

// the smaller root wins, so a component's root is its first run in raster order
void unite(std::vector<int32_t>& parent, int32_t a, int32_t b) {
  a = find_root(parent, a);
  b = find_root(parent, b);
  if (a < b) parent[b] = a;
  else if (b < a) parent[a] = b;
}

struct Run {
  int64_t start, stop;  // columns [start, stop)
  int32_t id;           // provisional, then final
};

int32_t label_2d(const uint8_t* m, int64_t H, int64_t W, bool diagonal, int32_t* out) {
  std::vector<Run> runs;
  std::vector<int64_t> row_first(static_cast<size_t>(H) + 1);
  std::vector<int32_t> parent;
  for (int64_t y = 0; y < H; ++y) {
    row_first[y] = static_cast<int64_t>(runs.size());
    const uint8_t* row = m + y * W;
    int64_t x = 0;
    while (x < W) {
      while (x < W && !row[x]) ++x;
      if (x == W) break;
      const int64_t s = x;
      while (x < W && row[x]) ++x;
      const int32_t id = static_cast<int32_t>(parent.size());
      if (parent.size() >= static_cast<size_t>(INT32_MAX)) {
        throw std::overflow_error("label: too many runs for int32 labels");
      }
      parent.push_back(id);
      runs.push_back({s, x, id});
    }
  }
  row_first[H] = static_cast<int64_t>(runs.size());
  // join each run to the runs of the row above that touch it
  const int64_t reach = diagonal ? 1 : 0;
  for (int64_t y = 1; y < H; ++y) {
    int64_t a = row_first[y - 1];
    const int64_t a_end = row_first[y];
    for (int64_t b = row_first[y]; b < row_first[y + 1]; ++b) {
      const Run& rb = runs[b];
      while (a < a_end && runs[a].stop + reach <= rb.start) ++a;
      for (int64_t k = a; k < a_end && runs[k].start < rb.stop + reach; ++k) {
        unite(parent, runs[k].id, rb.id);
      }
    }
  }
  // final ids 1..n in raster order of each component's first run
  std::vector<int32_t> final_id(parent.size(), 0);
  int32_t n = 0;
  for (size_t i = 0; i < parent.size(); ++i) {
    const int32_t root = find_root(parent, static_cast<int32_t>(i));
    if (root == static_cast<int32_t>(i)) final_id[i] = ++n;
    else final_id[i] = final_id[root];
  }
  std::fill(out, out + H * W, 0);
  for (int64_t y = 0; y < H; ++y) {
    int32_t* row = out + y * W;
    for (int64_t b = row_first[y]; b < row_first[y + 1]; ++b) {
      std::fill(row + runs[b].start, row + runs[b].stop, final_id[runs[b].id]);
    }
  }
  return n;
}

py::tuple label(py::array_t<bool, py::array::c_style | py::array::forcecast> mask, int connectivity) {
  if (mask.ndim() != 2) throw std::invalid_argument("label: mask must be 2-D");
  if (connectivity != 1 && connectivity != 2) {
    throw std::invalid_argument("label: connectivity must be 1 (4-connected) or 2 (8-connected)");
  }
  const int64_t H = mask.shape(0), W = mask.shape(1);
  py::array_t<int32_t> out({H, W});
  const uint8_t* m = reinterpret_cast<const uint8_t*>(mask.data());
  int32_t* o = out.mutable_data();
  int32_t n = 0;
  {
    py::gil_scoped_release release;
    n = label_2d(m, H, W, connectivity == 2, o);
  }
  return py::make_tuple(out, n);
}

// out[x] |= (g2[x + dx] <= t) over the columns where x + dx is inside the row
HER2KIT_VECTOR_CLONES
void or_within(const uint16_t* g2, int64_t n, int64_t dx, int64_t t, uint8_t* out) {
  const int64_t lo = std::max<int64_t>(0, -dx), hi = std::min<int64_t>(n, n - dx);
  const uint16_t tt = static_cast<uint16_t>(t);
  const uint16_t* g = g2 + dx;
  for (int64_t x = lo; x < hi; ++x) out[x] |= static_cast<uint8_t>(g[x] <= tt);
}

// A pixel is within iff some column offset dx has dx^2 + g(x + dx)^2 <= k,
// g being the distance to the nearest True pixel in that column.
void within_2d(const uint8_t* m, int64_t H, int64_t W, int64_t k, uint8_t* out) {
  int64_t r = 0;
  while ((r + 1) * (r + 1) <= k) ++r;
  const uint8_t cap = static_cast<uint8_t>(r + 1);  // any farther column is out of reach
  std::vector<uint8_t> g(static_cast<size_t>(H * W));
  for (int64_t x = 0; x < W; ++x) g[x] = m[x] ? 0 : cap;
  for (int64_t y = 1; y < H; ++y) {
    const uint8_t* above = g.data() + (y - 1) * W;
    uint8_t* row = g.data() + y * W;
    const uint8_t* mr = m + y * W;
    for (int64_t x = 0; x < W; ++x) {
      const uint8_t up = above[x] < cap ? static_cast<uint8_t>(above[x] + 1) : cap;
      row[x] = mr[x] ? 0 : up;
    }
  }
  for (int64_t y = H - 2; y >= 0; --y) {
    const uint8_t* below = g.data() + (y + 1) * W;
    uint8_t* row = g.data() + y * W;
    for (int64_t x = 0; x < W; ++x) {
      const uint8_t down = below[x] < cap ? static_cast<uint8_t>(below[x] + 1) : cap;
      row[x] = std::min(row[x], down);
    }
  }
  std::vector<uint16_t> g2(static_cast<size_t>(W));
  for (int64_t y = 0; y < H; ++y) {
    const uint8_t* row = g.data() + y * W;
    for (int64_t x = 0; x < W; ++x) g2[x] = static_cast<uint16_t>(row[x] * row[x]);
    uint8_t* o = out + y * W;
    std::fill(o, o + W, 0);
    for (int64_t dx = -r; dx <= r; ++dx) or_within(g2.data(), W, dx, k - dx * dx, o);
  }
}

py::array_t<bool> within(py::array_t<bool, py::array::c_style | py::array::forcecast> mask,
                         int64_t max_sq) {
  if (mask.ndim() != 2) throw std::invalid_argument("within: mask must be 2-D");
  if (max_sq < 0 || max_sq > 250 * 250) throw std::invalid_argument("within: max_sq must be in [0, 62500]");
  const int64_t H = mask.shape(0), W = mask.shape(1);
  py::array_t<bool> out({H, W});
  const uint8_t* m = reinterpret_cast<const uint8_t*>(mask.data());
  uint8_t* o = reinterpret_cast<uint8_t*>(out.mutable_data());
  if (H == 0 || W == 0) return out;
  {
    py::gil_scoped_release release;
    within_2d(m, H, W, max_sq, o);
  }
  return out;
}

}  // namespace

void register_filters(py::module_& m) {
  m.def("gaussian", &gaussian, py::arg("image"), py::arg("weights"),
        "scipy.ndimage.gaussian_filter of a 2-D float32 image in 'reflect' mode, given "
        "the 1-D symmetric kernel (the same float32 result, bit for bit).");
  m.def("label", &label, py::arg("mask"), py::arg("connectivity") = 1,
        "scipy.ndimage.label of a 2-D mask (connectivity 1: 4-connected, 2: 8-connected): "
        "(int32 labels numbered in raster order, count).");
  m.def("within", &within, py::arg("mask"), py::arg("max_sq"),
        "Pixels whose squared Euclidean distance to a True pixel of the 2-D mask is at "
        "most max_sq (0..62500): the dilation by the digital disk dy^2 + dx^2 <= max_sq.");
}

}  // namespace her2kit
