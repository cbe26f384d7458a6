// Exact Euclidean distance transform of a 2-D mask: for every True pixel the
// distance to the nearest False pixel of the image (what
// scipy.ndimage.distance_transform_edt(mask) returns), as float32.
//
// Why not scipy's: it computes the nearest feature's coordinates on the way
// (two int arrays the size of the image) and was a tenth of a block's cell
// finding. This is Felzenszwalb & Huttenlocher's separable algorithm: exact
// squared distances per column, then the lower envelope of parabolas per
// row, integer arithmetic throughout, GIL released.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

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

py::array distance_transform(py::array_t<bool, py::array::c_style | py::array::forcecast> mask,
                             bool squared) {
  if (mask.ndim() != 2) throw std::invalid_argument("distance_transform: mask must be 2-D");
  const int64_t H = mask.shape(0), W = mask.shape(1);
  const uint8_t* m = reinterpret_cast<const uint8_t*>(mask.data());
  py::array_t<int64_t> d2({H, W});
  int64_t* d = d2.mutable_data();
  {
    py::gil_scoped_release release;
    squared_distances(m, H, W, d);
  }
  if (squared) return std::move(d2);
  py::array_t<float> out({H, W});
  float* o = out.mutable_data();
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < H * W; ++i) {
      o[i] = d[i] < 0 ? std::numeric_limits<float>::infinity()
                      : static_cast<float>(std::sqrt(static_cast<double>(d[i])));
    }
  }
  return std::move(out);
}

}  // namespace

void register_distance_transform(py::module_& m) {
  m.def("distance_transform", &distance_transform, py::arg("mask"), py::arg("squared") = false,
        "Exact Euclidean distance of every True pixel of a 2-D mask to the nearest "
        "False one, float32 (scipy.ndimage.distance_transform_edt; inf without any False); "
        "squared=True: the squared distance in whole pixels, int64 (-1 without any False).");
}

}  // namespace her2kit
