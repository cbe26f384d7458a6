// Per-label sums over a 2-D label image, as cell finding's numpy code forms
// them with np.bincount over the labelled pixels in raster order: the same
// float64 additions in the same order (this file is built with
// -ffp-contract=off), so centroids and second moments come out bit for bit
// equal, in one pass over the image instead of a pixel list and one
// bincount per sum.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace her2kit {
namespace {

using Vec = py::array_t<double>;

template <typename T>
void check_shape(const py::array_t<T, py::array::c_style>& labels, int64_t size) {
  if (labels.ndim() != 2) throw std::invalid_argument("labels must be 2-D");
  if (size < 1) throw std::invalid_argument("size must be >= 1");
}

// a label outside [0, size) (checked in the same pass: no write out of bounds)
template <typename T>
inline bool outside(T v, int64_t size) {
  return static_cast<uint64_t>(static_cast<int64_t>(v)) >= static_cast<uint64_t>(size);
}

constexpr const char* kOutside = "labels must lie in [0, size)";

// (count, sum of rows, sum of columns) per label 0..size-1 of the nonzero pixels
template <typename T>
py::tuple label_moments(py::array_t<T, py::array::c_style> labels, int64_t size) {
  check_shape(labels, size);
  const int64_t H = labels.shape(0), W = labels.shape(1);
  Vec count(size), sy(size), sx(size);
  double *c = count.mutable_data(), *y_ = sy.mutable_data(), *x_ = sx.mutable_data();
  const T* l = labels.data();
  bool bad = false;
  {
    py::gil_scoped_release release;
    std::fill(c, c + size, 0.0);
    std::fill(y_, y_ + size, 0.0);
    std::fill(x_, x_ + size, 0.0);
    for (int64_t y = 0; y < H; ++y) {
      const T* row = l + y * W;
      for (int64_t x = 0; x < W; ++x) {
        const T v = row[x];
        if (v == 0) continue;
        if (outside(v, size)) { bad = true; break; }
        c[v] += 1.0;
        y_[v] += static_cast<double>(y);
        x_[v] += static_cast<double>(x);
      }
      if (bad) break;
    }
  }
  if (bad) throw std::invalid_argument(kOutside);
  return py::make_tuple(count, sy, sx);
}

// Per label: sum of dx*dx, dy*dy, dy*dx (dy = row - cy[label], dx = column -
// cx[label]) and of values, over the nonzero pixels in raster order.
template <typename T>
py::tuple label_spread(py::array_t<T, py::array::c_style> labels, int64_t size,
                       py::array_t<double, py::array::c_style | py::array::forcecast> cy,
                       py::array_t<double, py::array::c_style | py::array::forcecast> cx,
                       py::array_t<float, py::array::c_style | py::array::forcecast> values) {
  check_shape(labels, size);
  const int64_t H = labels.shape(0), W = labels.shape(1);
  if (cy.ndim() != 1 || cx.ndim() != 1 || cy.shape(0) < size || cx.shape(0) < size) {
    throw std::invalid_argument("cy and cx must hold one value per label");
  }
  if (values.ndim() != 2 || values.shape(0) != H || values.shape(1) != W) {
    throw std::invalid_argument("values must have the labels' shape");
  }
  Vec sxx(size), syy(size), sxy(size), sv(size);
  double *a = sxx.mutable_data(), *b = syy.mutable_data(), *c = sxy.mutable_data(),
         *d = sv.mutable_data();
  const double *my = cy.data(), *mx = cx.data();
  const float* val = values.data();
  const T* l = labels.data();
  bool bad = false;
  {
    py::gil_scoped_release release;
    for (double* p : {a, b, c, d}) std::fill(p, p + size, 0.0);
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        const T v = l[y * W + x];
        if (v == 0) continue;
        if (outside(v, size)) { bad = true; break; }
        const double dy = static_cast<double>(y) - my[v];
        const double dx = static_cast<double>(x) - mx[v];
        a[v] += dx * dx;
        b[v] += dy * dy;
        c[v] += dy * dx;
        d[v] += static_cast<double>(val[y * W + x]);
      }
      if (bad) break;
    }
  }
  if (bad) throw std::invalid_argument(kOutside);
  return py::make_tuple(sxx, syy, sxy, sv);
}

// table[labels] for an integer label image and a 1-D table, as numpy's
// fancy indexing gives it, without its first step: a copy of the labels as
// int64 (twice the memory traffic of the gather itself on int32 labels).
template <typename L, typename V>
py::array_t<V> label_lookup(py::array_t<V, py::array::c_style> table,
                            py::array_t<L, py::array::c_style> labels) {
  if (table.ndim() != 1) throw std::invalid_argument("table must be 1-D");
  const int64_t size = table.shape(0);
  std::vector<py::ssize_t> shape(labels.shape(), labels.shape() + labels.ndim());
  py::array_t<V> out(shape);
  const L* l = labels.data();
  const V* t = table.data();
  V* o = out.mutable_data();
  const int64_t n = labels.size();
  bool bad = false;
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i) {
      const L v = l[i];
      if (outside(v, size)) { bad = true; break; }
      o[i] = t[v];
    }
  }
  if (bad) throw py::index_error("labels must lie in [0, len(table))");
  return out;
}

}  // namespace

void register_label_stats(py::module_& m) {
  const char* lookup_doc = "table[labels] for a 1-D table and an int32/uint32 label image (numpy's values).";
  m.def("label_lookup", &label_lookup<int32_t, bool>, py::arg("table"), py::arg("labels"), lookup_doc);
  m.def("label_lookup", &label_lookup<uint32_t, bool>, py::arg("table"), py::arg("labels"), lookup_doc);
  m.def("label_lookup", &label_lookup<int32_t, int32_t>, py::arg("table"), py::arg("labels"), lookup_doc);
  m.def("label_lookup", &label_lookup<uint32_t, int32_t>, py::arg("table"), py::arg("labels"), lookup_doc);
  m.def("label_lookup", &label_lookup<int32_t, uint32_t>, py::arg("table"), py::arg("labels"), lookup_doc);
  m.def("label_lookup", &label_lookup<uint32_t, uint32_t>, py::arg("table"), py::arg("labels"), lookup_doc);
  const char* moments_doc =
      "(count, sum of rows, sum of columns) per label 0..size-1 over the nonzero pixels, "
      "float64 (np.bincount's sums over the labelled pixels in raster order).";
  m.def("label_moments", &label_moments<int32_t>, py::arg("labels"), py::arg("size"), moments_doc);
  m.def("label_moments", &label_moments<uint32_t>, py::arg("labels"), py::arg("size"), moments_doc);
  m.def("label_moments", &label_moments<int64_t>, py::arg("labels"), py::arg("size"), moments_doc);
  const char* spread_doc =
      "Per label 0..size-1: sums of dx*dx, dy*dy, dy*dx about (cy, cx) and of values over "
      "the nonzero pixels, float64, in raster order (np.bincount's sums, bit for bit).";
  m.def("label_spread", &label_spread<int32_t>, py::arg("labels"), py::arg("size"), py::arg("cy"),
        py::arg("cx"), py::arg("values"), spread_doc);
  m.def("label_spread", &label_spread<uint32_t>, py::arg("labels"), py::arg("size"), py::arg("cy"),
        py::arg("cx"), py::arg("values"), spread_doc);
  m.def("label_spread", &label_spread<int64_t>, py::arg("labels"), py::arg("size"), py::arg("cy"),
        py::arg("cx"), py::arg("values"), spread_doc);
}

}  // namespace her2kit
