// Exact Euclidean distance transform of a 2-D mask: for every True pixel the
// distance to the nearest False pixel of the image (what
// scipy.ndimage.distance_transform_edt(mask) returns), as float32.
//
// Why not scipy's: it computes the nearest feature's coordinates on the way
// (two int arrays the size of the image) and was a tenth of a block's cell
// finding. This is Felzenszwalb & Huttenlocher's separable algorithm: exact
// squared distances per column, then the lower envelope of parabolas per
// row, integer arithmetic throughout, GIL released. The float transform
// first tries each row as a vectorised minimum over nearby column offsets
// (see distances_by_rows) and uses the envelope only where that cannot be exact.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "cpu/vector_clones.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace her2kit {
namespace {

constexpr int64_t kFar = std::numeric_limits<int64_t>::max() / 4;

// d[x] = min over v of (x - v)^2 + f[v], f[v] >= kFar meaning "no site".
void envelope_1d(const int64_t* f, int64_t n, int64_t* d, std::vector<int64_t>& v,
                 std::vector<double>& z) {
  int64_t k = -1;
  for (int64_t q = 0; q < n; ++q) {
    if (f[q] >= kFar) continue;
    const double fq = static_cast<double>(f[q]) + static_cast<double>(q) * q;
    double s = -std::numeric_limits<double>::infinity();
    while (k >= 0) {
      const int64_t p = v[k];
      const double fp = static_cast<double>(f[p]) + static_cast<double>(p) * p;
      s = (fq - fp) / (2.0 * static_cast<double>(q - p));
      if (s > z[k]) break;
      --k;
    }
    ++k;
    v[k] = q;
    z[k] = k == 0 ? -std::numeric_limits<double>::infinity() : s;
  }
  if (k < 0) {
    for (int64_t x = 0; x < n; ++x) d[x] = kFar;
    return;
  }
  int64_t j = 0;
  for (int64_t x = 0; x < n; ++x) {
    while (j < k && z[j + 1] < static_cast<double>(x)) ++j;
    const int64_t p = v[j];
    d[x] = (x - p) * (x - p) + f[p];
  }
}

// Squared distances (int64, -1 where no False pixel exists) into d2.
void squared_distances(const uint8_t* m, int64_t H, int64_t W, int64_t* d2) {
  {
    // columns: squared distance to the nearest background pixel above or below
    std::vector<int64_t> g(static_cast<size_t>(H * W));
    std::vector<int64_t> up(static_cast<size_t>(W), -1);
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        if (!m[y * W + x]) up[x] = y;
        g[y * W + x] = up[x] < 0 ? kFar : (y - up[x]);
      }
    }
    std::vector<int64_t> down(static_cast<size_t>(W), -1);
    for (int64_t y = H - 1; y >= 0; --y) {
      for (int64_t x = 0; x < W; ++x) {
        if (!m[y * W + x]) down[x] = y;
        int64_t& c = g[y * W + x];
        if (down[x] >= 0 && down[x] - y < c) c = down[x] - y;
        c = c >= kFar ? kFar : c * c;
      }
    }
    // rows: lower envelope of the column distances
    std::vector<int64_t> v(static_cast<size_t>(W));
    std::vector<double> z(static_cast<size_t>(W) + 1);
    for (int64_t y = 0; y < H; ++y) {
      int64_t* d = d2 + y * W;
      envelope_1d(g.data() + y * W, W, d, v, z);
      for (int64_t x = 0; x < W; ++x) {
        if (d[x] >= kFar) d[x] = -1;
      }
    }
  }
}

// The float transform row by row. Cell finding measures nuclei, whose
// pixels lie within a few pixels of the background, so a row is first done
// as the minimum over the column offsets |dx| <= kNear of dx^2 + g(x + dx)^2
// (g: the distance to the background within the column, capped): exact
// wherever that minimum is <= kNear^2, and vectorised. A row with a farther
// pixel is done again by the envelope.
constexpr int64_t kNear = 16;

HER2KIT_VECTOR_CLONES
void min_with_offset(const uint16_t* g2, int64_t n, int64_t dx, uint16_t* best) {
  const int64_t lo = std::max<int64_t>(0, -dx), hi = std::min<int64_t>(n, n - dx);
  const uint16_t add = static_cast<uint16_t>(dx * dx);
  const uint16_t* g = g2 + dx;
  for (int64_t x = lo; x < hi; ++x) {
    const uint16_t v = static_cast<uint16_t>(g[x] + add);
    best[x] = v < best[x] ? v : best[x];
  }
}

HER2KIT_VECTOR_CLONES
void sqrt_row(const uint16_t* d2, int64_t n, float* out) {
  for (int64_t x = 0; x < n; ++x) out[x] = static_cast<float>(std::sqrt(static_cast<double>(d2[x])));
}

void distances_by_rows(const uint8_t* m, int64_t H, int64_t W, float* out) {
  if (H == 0 || W == 0) return;
  constexpr int32_t kNone = std::numeric_limits<int32_t>::max();
  // columns: distance to the nearest background pixel above or below (kNone: none)
  std::vector<int32_t> g(static_cast<size_t>(H * W));
  std::vector<int64_t> last(static_cast<size_t>(W), -1);
  for (int64_t y = 0; y < H; ++y) {
    for (int64_t x = 0; x < W; ++x) {
      if (!m[y * W + x]) last[x] = y;
      g[y * W + x] = last[x] < 0 ? kNone : static_cast<int32_t>(y - last[x]);
    }
  }
  std::fill(last.begin(), last.end(), -1);
  for (int64_t y = H - 1; y >= 0; --y) {
    for (int64_t x = 0; x < W; ++x) {
      if (!m[y * W + x]) last[x] = y;
      int32_t& c = g[y * W + x];
      if (last[x] >= 0 && last[x] - y < c) c = static_cast<int32_t>(last[x] - y);
    }
  }
  const int64_t cap = kNear + 1;
  std::vector<uint16_t> g2(static_cast<size_t>(W)), best(static_cast<size_t>(W));
  std::vector<int64_t> f(static_cast<size_t>(W)), d(static_cast<size_t>(W)), v(static_cast<size_t>(W));
  std::vector<double> z(static_cast<size_t>(W) + 1);
  for (int64_t y = 0; y < H; ++y) {
    const int32_t* gr = g.data() + y * W;
    for (int64_t x = 0; x < W; ++x) {
      const int64_t c = std::min<int64_t>(gr[x], cap);
      g2[x] = static_cast<uint16_t>(c * c);
    }
    std::copy(g2.begin(), g2.end(), best.begin());
    for (int64_t dx = 1; dx <= kNear; ++dx) {
      min_with_offset(g2.data(), W, dx, best.data());
      min_with_offset(g2.data(), W, -dx, best.data());
    }
    const uint16_t far = *std::max_element(best.begin(), best.end());
    float* o = out + y * W;
    if (far <= kNear * kNear) {
      sqrt_row(best.data(), W, o);
      continue;
    }
    for (int64_t x = 0; x < W; ++x) {
      f[x] = gr[x] == kNone ? kFar : static_cast<int64_t>(gr[x]) * gr[x];
    }
    envelope_1d(f.data(), W, d.data(), v, z);
    for (int64_t x = 0; x < W; ++x) {
      o[x] = d[x] >= kFar ? std::numeric_limits<float>::infinity()
                          : static_cast<float>(std::sqrt(static_cast<double>(d[x])));
    }
  }
}

py::array distance_transform(py::array_t<bool, py::array::c_style | py::array::forcecast> mask,
                             bool squared) {
  if (mask.ndim() != 2) throw std::invalid_argument("distance_transform: mask must be 2-D");
  const int64_t H = mask.shape(0), W = mask.shape(1);
  const uint8_t* m = reinterpret_cast<const uint8_t*>(mask.data());
  if (!squared) {
    py::array_t<float> out({H, W});
    float* o = out.mutable_data();
    py::gil_scoped_release release;
    distances_by_rows(m, H, W, o);
    return std::move(out);
  }
  py::array_t<int64_t> d2({H, W});
  int64_t* d = d2.mutable_data();
  {
    py::gil_scoped_release release;
    squared_distances(m, H, W, d);
  }
  return std::move(d2);
}

}  // namespace

void register_distance_transform(py::module_& m) {
  m.def("distance_transform", &distance_transform, py::arg("mask"), py::arg("squared") = false,
        "Exact Euclidean distance of every True pixel of a 2-D mask to the nearest "
        "False one, float32 (scipy.ndimage.distance_transform_edt; inf without any False); "
        "squared=True: the squared distance in whole pixels, int64 (-1 without any False).");
}

}  // namespace her2kit
