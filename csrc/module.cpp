// her2kit._C: the Python module that carries the native ops.
// The ops themselves are registered with TORCH_LIBRARY in csrc/cpu and
// csrc/cuda; importing this module is what loads those registrations. It
// also carries the watershed, distance transform and reconstruction of cell
// finding, its Gaussian filter, labelling and per-label sums, the stains'
// look-ups, and the outline tracer of the cell polygons with their GeoJSON text.
#include <pybind11/pybind11.h>

namespace her2kit {
void register_watershed(pybind11::module_& m);          // csrc/cpu/watershed.cpp
void register_distance_transform(pybind11::module_& m);  // csrc/cpu/edt.cpp
void register_reconstruction(pybind11::module_& m);      // csrc/cpu/reconstruct.cpp
void register_outline(pybind11::module_& m);             // csrc/cpu/outline.cpp
void register_filters(pybind11::module_& m);             // csrc/cpu/filters.cpp
void register_label_stats(pybind11::module_& m);         // csrc/cpu/label_stats.cpp
void register_geojson(pybind11::module_& m);             // csrc/cpu/geojson.cpp
void register_stain(pybind11::module_& m);               // csrc/cpu/stain.cpp
}

namespace {
bool cuda_built() {
#ifdef HER2KIT_WITH_CUDA
  return true;
#else
  return false;
#endif
}
}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "her2kit native ops (TLSTM, SPP); see torch.ops.her2kit";
  m.def("cuda_built", &cuda_built, "True when the CUDA kernels were compiled in");
  her2kit::register_watershed(m);
  her2kit::register_distance_transform(m);
  her2kit::register_reconstruction(m);
  her2kit::register_outline(m);
  her2kit::register_filters(m);
  her2kit::register_label_stats(m);
  her2kit::register_geojson(m);
  her2kit::register_stain(m);
}
