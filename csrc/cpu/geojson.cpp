// GeoJSON text of outline rings, for cells.geojson. A 2048^2 block has ~6000
// rings of ~50 points; as Python lists of [x, y] for json.dumps they cost
// about as much as finding the block's cells. Here each ring becomes its
// JSON text directly, with the arithmetic of her2kit.scoring.exports._rings
// (x = offset + vertex * scale, rounded to 2 decimals as np.round does; this
// file is built with -ffp-contract=off) and the number format of Python's
// json (repr of a float: the shortest digits that round-trip, ".0" on whole
// numbers), so the text is byte for byte what json.dumps gives.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <charconv>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;

namespace her2kit {
namespace {

// repr(float) for 1e-4 <= |v| < 1e16 and 0 (Python's fixed-notation range)
void append_number(std::string& s, double v) {
  const double a = std::fabs(v);
  if (!(a == 0.0 || (a >= 1e-4 && a < 1e16))) {
    throw std::invalid_argument("json_rings: coordinate out of the fixed-notation range");
  }
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed);
  bool dot = false;
  for (const char* p = buf; p < r.ptr; ++p) dot |= *p == '.';
  s.append(buf, r.ptr);
  if (!dot) s += ".0";
}

inline double round2(double v) { return std::nearbyint(v * 100.0) / 100.0; }

py::list json_rings(py::array_t<int32_t, py::array::c_style | py::array::forcecast> vertices,
                    py::array_t<int64_t, py::array::c_style | py::array::forcecast> starts,
                    double divisor, double scale_y, double scale_x, double offset_y,
                    double offset_x) {
  if (vertices.ndim() != 2 || vertices.shape(1) != 2) {
    throw std::invalid_argument("json_rings: vertices must be (M, 2)");
  }
  if (starts.ndim() != 1 || starts.shape(0) < 1) throw std::invalid_argument("json_rings: bad starts");
  const int64_t n = starts.shape(0) - 1, m = vertices.shape(0);
  const int32_t* v = vertices.data();
  const int64_t* st = starts.data();
  for (int64_t k = 0; k <= n; ++k) {
    if (st[k] < 0 || st[k] > m || (k > 0 && st[k] < st[k - 1])) {
      throw std::invalid_argument("json_rings: starts must rise within the vertices");
    }
  }
  std::vector<std::string> texts(static_cast<size_t>(n));
  std::vector<bool> present(static_cast<size_t>(n), false);
  {
    py::gil_scoped_release release;
    for (int64_t k = 0; k < n; ++k) {
      const int64_t a = st[k], b = st[k + 1];
      if (b - a < 3) continue;
      std::string& s = texts[static_cast<size_t>(k)];
      s.reserve(static_cast<size_t>(b - a + 1) * 18 + 2);
      s += '[';
      for (int64_t i = a; i <= b; ++i) {
        const int64_t j = i < b ? i : a;  // closed: the first point again
        const double y = static_cast<double>(v[2 * j]) / divisor;
        const double x = static_cast<double>(v[2 * j + 1]) / divisor;
        const double sx = x * scale_x, sy = y * scale_y;
        s += '[';
        append_number(s, round2(offset_x + sx));
        s += ',';
        append_number(s, round2(offset_y + sy));
        s += ']';
        if (i < b) s += ',';
      }
      s += ']';
      present[static_cast<size_t>(k)] = true;
    }
  }
  py::list out(n);
  for (int64_t k = 0; k < n; ++k) {
    if (present[static_cast<size_t>(k)]) out[k] = py::str(texts[static_cast<size_t>(k)]);
    else out[k] = py::none();
  }
  return out;
}

}  // namespace

void register_geojson(py::module_& m) {
  m.def("json_rings", &json_rings, py::arg("vertices"), py::arg("starts"), py::arg("divisor"),
        py::arg("scale_y"), py::arg("scale_x"), py::arg("offset_y"), py::arg("offset_x"),
        "JSON text '[[x,y],...,[x0,y0]]' of each ring (None under 3 points) of outlines(): "
        "vertices (y, x) / divisor * scale + offset, rounded to 2 decimals, json.dumps's digits.");
}

}  // namespace her2kit
