// Outlines of labelled objects as polygons on the pixel-corner grid.
//
// For each requested label: the outer boundary of its largest 4-connected
// piece (ties: the piece met first in raster order), traced along pixel
// edges with the object on the right, starting at the top-left corner of the
// piece's first pixel in raster order and heading east. Only corners (where
// the boundary turns) are vertices, so the ring is lossless and as short as
// it can be; its shoelace area is the piece's pixel count plus its holes.
// Where the piece touches itself only at a corner (diagonal neighbours) the
// trace turns away, as 4-connectivity says they are not joined.
//
// With ``midpoints`` the ring goes through the midpoints of the boundary's
// pixel edges instead (the 0.5 iso-line of marching squares on the piece's
// mask: corners cut diagonally), keeping only the points where its direction
// changes; coordinates are then doubled, to stay integers.
//
// Why native: cells.geojson needs two rings per cell, thousands of cells per
// block; skimage's find_contours per cell crop (marching squares, contour
// assembly in Python) took longer than finding the cells.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace py = pybind11;

namespace her2kit {
namespace {

struct Box {
  int64_t y0, x0, y1, x1;  // inclusive-exclusive
};

template <typename T>
void trace(const T* lab, int64_t H, int64_t W, T id, const Box& b, std::vector<uint8_t>& seen,
           std::vector<int64_t>& stack, std::vector<int32_t>& out) {
  const int64_t bh = b.y1 - b.y0, bw = b.x1 - b.x0;
  seen.assign(static_cast<size_t>(bh * bw), 0);
  int64_t best_size = 0, best_start = -1;
  for (int64_t y = b.y0; y < b.y1; ++y) {
    for (int64_t x = b.x0; x < b.x1; ++x) {
      const int64_t local = (y - b.y0) * bw + (x - b.x0);
      if (lab[y * W + x] != id || seen[local]) continue;
      // a new piece: its first raster pixel is (y, x); count it by a flood
      int64_t size = 0;
      seen[local] = 1;
      stack.clear();
      stack.push_back(local);
      while (!stack.empty()) {
        const int64_t p = stack.back();
        stack.pop_back();
        ++size;
        const int64_t py = p / bw, px = p % bw;
        const int64_t ny[4] = {py - 1, py, py, py + 1}, nx[4] = {px, px - 1, px + 1, px};
        for (int k = 0; k < 4; ++k) {
          if (ny[k] < 0 || ny[k] >= bh || nx[k] < 0 || nx[k] >= bw) continue;
          const int64_t q = ny[k] * bw + nx[k];
          if (seen[q] || lab[(ny[k] + b.y0) * W + nx[k] + b.x0] != id) continue;
          seen[q] = 1;
          stack.push_back(q);
        }
      }
      if (size > best_size) {
        best_size = size;
        best_start = y * W + x;
      }
    }
  }
  if (best_start < 0) return;
  auto in = [&](int64_t y, int64_t x) {
    return y >= 0 && y < H && x >= 0 && x < W && lab[y * W + x] == id;
  };
  // directions east, south, west, north as (dy, dx) steps of the corner
  const int64_t sy[4] = {0, 1, 0, -1}, sx[4] = {1, 0, -1, 0};
  const int64_t y0 = best_start / W, x0 = best_start % W;
  out.push_back(static_cast<int32_t>(y0));
  out.push_back(static_cast<int32_t>(x0));
  int d = 0;
  int64_t vy = y0, vx = x0 + 1;
  while (vy != y0 || vx != x0) {
    // the two pixels ahead of corner (vy, vx): on the right (inside side) and left
    bool right, left;
    switch (d) {
      case 0: right = in(vy, vx); left = in(vy - 1, vx); break;          // east
      case 1: right = in(vy, vx - 1); left = in(vy, vx); break;          // south
      case 2: right = in(vy - 1, vx - 1); left = in(vy, vx - 1); break;  // west
      default: right = in(vy - 1, vx); left = in(vy - 1, vx - 1); break; // north
    }
    int turn = !right ? 1 : (left ? 3 : 0);
    if (turn != 0) {
      out.push_back(static_cast<int32_t>(vy));
      out.push_back(static_cast<int32_t>(vx));
      d = (d + turn) % 4;
    }
    vy += sy[d];
    vx += sx[d];
  }
}

// The corner ring (y, x, y, x, ...) -> the ring of its edges' midpoints, in
// doubled coordinates, without the points that continue a straight line.
void to_midpoints(const std::vector<int32_t>& c, std::vector<int32_t>& out) {
  const size_t K = c.size() / 2;
  std::vector<int32_t> p;
  p.reserve(4 * K);
  for (size_t k = 0; k < K; ++k) {
    const int32_t y0 = c[2 * k], x0 = c[2 * k + 1];
    const int32_t y1 = c[2 * ((k + 1) % K)], x1 = c[2 * ((k + 1) % K) + 1];
    const int32_t dy = (y1 > y0) - (y1 < y0), dx = (x1 > x0) - (x1 < x0);
    const int32_t len = std::abs(y1 - y0) + std::abs(x1 - x0);
    p.push_back(2 * y0 + dy);  // the run's first edge midpoint
    p.push_back(2 * x0 + dx);
    if (len >= 2) {  // and its last
      p.push_back(2 * y1 - dy);
      p.push_back(2 * x1 - dx);
    }
  }
  const size_t n = p.size() / 2;
  auto sgn = [](int32_t v) { return (v > 0) - (v < 0); };
  for (size_t i = 0; i < n; ++i) {
    const size_t a = (i + n - 1) % n, b = (i + 1) % n;
    const int32_t iy = sgn(p[2 * i] - p[2 * a]), ix = sgn(p[2 * i + 1] - p[2 * a + 1]);
    const int32_t oy = sgn(p[2 * b] - p[2 * i]), ox = sgn(p[2 * b + 1] - p[2 * i + 1]);
    if (iy == oy && ix == ox) continue;  // straight on through this point
    out.push_back(p[2 * i]);
    out.push_back(p[2 * i + 1]);
  }
}

template <typename T>
std::tuple<py::array_t<int32_t>, py::array_t<int64_t>> outlines(
    py::array_t<T, py::array::c_style> labels,
    py::array_t<int64_t, py::array::c_style | py::array::forcecast> ids, bool midpoints) {
  if (labels.ndim() != 2) throw std::invalid_argument("outlines: labels must be 2-D");
  const int64_t H = labels.shape(0), W = labels.shape(1), n = ids.size();
  if (H >= (int64_t{1} << 30) || W >= (int64_t{1} << 30))
    throw std::invalid_argument("outlines: image too large for int32 corners");
  const T* lab = labels.data();
  const int64_t* want = ids.data();
  std::vector<int32_t> coords;
  std::vector<int64_t> starts(static_cast<size_t>(n) + 1, 0);
  {
    py::gil_scoped_release release;
    // bounding boxes of the requested labels, in one pass
    std::unordered_map<int64_t, size_t> slot;
    slot.reserve(static_cast<size_t>(n) * 2);
    for (int64_t i = 0; i < n; ++i) slot.emplace(want[i], slot.size());
    std::vector<Box> box(slot.size(), Box{H, W, -1, -1});
    int64_t last = 0;
    size_t last_slot = 0;
    bool last_found = false;
    for (int64_t y = 0; y < H; ++y) {
      for (int64_t x = 0; x < W; ++x) {
        const int64_t v = static_cast<int64_t>(lab[y * W + x]);
        if (v == 0) continue;
        if (!(last_found && v == last)) {  // runs of one label: one lookup
          auto it = slot.find(v);
          last = v;
          last_found = it != slot.end();
          if (!last_found) continue;
          last_slot = it->second;
        }
        Box& b = box[last_slot];
        if (y < b.y0) b.y0 = y;
        if (x < b.x0) b.x0 = x;
        if (y + 1 > b.y1) b.y1 = y + 1;
        if (x + 1 > b.x1) b.x1 = x + 1;
      }
      last_found = false;
    }
    std::vector<uint8_t> seen;
    std::vector<int64_t> stack;
    std::vector<int32_t> ring;
    for (int64_t i = 0; i < n; ++i) {
      const Box& b = box[slot.at(want[i])];
      if (want[i] != 0 && b.y1 > b.y0) {
        if (midpoints) {
          ring.clear();
          trace<T>(lab, H, W, static_cast<T>(want[i]), b, seen, stack, ring);
          to_midpoints(ring, coords);
        } else {
          trace<T>(lab, H, W, static_cast<T>(want[i]), b, seen, stack, coords);
        }
      }
      starts[static_cast<size_t>(i) + 1] = static_cast<int64_t>(coords.size() / 2);
    }
  }
  py::array_t<int32_t> out({static_cast<py::ssize_t>(coords.size() / 2), py::ssize_t{2}});
  std::copy(coords.begin(), coords.end(), out.mutable_data());
  py::array_t<int64_t> st(static_cast<py::ssize_t>(starts.size()));
  std::copy(starts.begin(), starts.end(), st.mutable_data());
  return {out, st};
}

}  // namespace

void register_outline(py::module_& m) {
  const char* doc =
      "Outer outlines of labelled pieces on the pixel-corner grid: for each id, the corners "
      "(y, x) of the boundary of its largest 4-connected piece, clockwise on screen from the "
      "top-left corner of its first raster pixel. Returns (corners int32 (M, 2), starts int64 "
      "(n + 1)): id i's ring is corners[starts[i]:starts[i+1]] (empty if absent). With midpoints, "
      "the ring of the boundary edges' midpoints (corners cut, straight runs merged), in doubled "
      "coordinates. GIL released.";
  m.def("outlines", &outlines<int32_t>, py::arg("labels"), py::arg("ids"), py::arg("midpoints") = false, doc);
  m.def("outlines", &outlines<uint32_t>, py::arg("labels"), py::arg("ids"), py::arg("midpoints") = false, doc);
  m.def("outlines", &outlines<int64_t>, py::arg("labels"), py::arg("ids"), py::arg("midpoints") = false, doc);
}

}  // namespace her2kit
