// One stain's optical density per pixel from uint8 RGB by three table
// look-ups (her2kit.preprocess.stain.HedDeconvolver.channel): the same
// float32 additions in the same order as its numpy code, in one pass over
// the pixels instead of three gathers and two additions over chunks.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <vector>

namespace py = pybind11;

namespace her2kit {
namespace {

// rgb (..., 3) uint8; luts (3, 256) float32: channel c's value -> its share
// of the stain. Returns (...,) float32: lut[0][r] + lut[1][g] + lut[2][b],
// and where ``clip``, values below 0 set to 0 (as np.maximum(x, 0.0)).
py::array_t<float> stain_channel(py::array_t<uint8_t, py::array::c_style> rgb,
                                 py::array_t<float, py::array::c_style | py::array::forcecast> luts,
                                 bool clip) {
  if (rgb.ndim() < 1 || rgb.shape(rgb.ndim() - 1) != 3)
    throw std::invalid_argument("stain_channel: rgb must be (..., 3)");
  if (luts.ndim() != 2 || luts.shape(0) != 3 || luts.shape(1) != 256)
    throw std::invalid_argument("stain_channel: luts must be (3, 256)");
  std::vector<py::ssize_t> shape(rgb.shape(), rgb.shape() + rgb.ndim() - 1);
  py::array_t<float> out(shape);
  const uint8_t* p = rgb.data();
  const float* l0 = luts.data();
  const float* l1 = l0 + 256;
  const float* l2 = l1 + 256;
  float* o = out.mutable_data();
  const int64_t n = rgb.size() / 3;
  {
    py::gil_scoped_release release;
    for (int64_t i = 0; i < n; ++i, p += 3) {
      float v = l0[p[0]] + l1[p[1]];
      v += l2[p[2]];
      o[i] = (clip && v < 0.0f) ? 0.0f : v;
    }
  }
  return out;
}

}  // namespace

void register_stain(py::module_& m) {
  m.def("stain_channel", &stain_channel, py::arg("rgb"), py::arg("luts"), py::arg("clip"),
        "One stain's optical density (float32, the rgb's shape without its last axis) by "
        "three table look-ups, values below 0 set to 0 where clip.");
}

}  // namespace her2kit
