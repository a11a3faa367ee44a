// pybind11 bindings of calbatch's hot loops. Arrays come in without copies (C-contiguous, exact
// dtype; the Python wrappers make sure of it) and the GIL is released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "calbatch/census.hpp"
#include "calbatch/voxelize.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using U8Array = py::array_t<uint8_t, py::array::c_style>;
using F64Array = py::array_t<double, py::array::c_style>;

static void require_3d(const py::array& a, const char* name) {
    if (a.ndim() != 3) throw std::invalid_argument(std::string(name) + " must be a 3-D array");
}

static py::tuple census(const U8Array& vol, bool periodic_xy) {
    require_3d(vol, "volume");
    const auto nz = vol.shape(0), ny = vol.shape(1), nx = vol.shape(2);
    calbatch::Census c;
    {
        py::gil_scoped_release release;
        c = calbatch::census(vol.data(), nz, ny, nx, periodic_xy);
    }
    py::array_t<int64_t> hist(256);
    std::copy(c.histogram.begin(), c.histogram.end(), hist.mutable_data());
    py::array_t<int64_t> faces({calbatch::kCodes, calbatch::kCodes});
    std::copy(c.faces.begin(), c.faces.end(), faces.mutable_data());
    return py::make_tuple(hist, faces, c.top_solid);
}

static py::tuple error_sums(const U8Array& truth, const U8Array& pred) {
    if (truth.size() != pred.size()) throw std::invalid_argument("volumes differ in size");
    calbatch::ErrorSums s;
    {
        py::gil_scoped_release release;
        s = calbatch::error_sums(truth.data(), pred.data(), truth.size());
    }
    return py::make_tuple(s.n, s.sse, s.sae, s.sum_truth, s.sum_truth_sq);
}

static py::tuple voxelize_spheres(const F64Array& centers, const F64Array& radii, const U8Array& phases,
                                  double lx, double ly, double z0, double voxel_size, py::tuple shape) {
    const int64_t n = radii.size();
    if (centers.ndim() != 2 || centers.shape(0) != n || centers.shape(1) != 3)
        throw std::invalid_argument("centers must have shape (n, 3)");
    if (phases.size() != n) throw std::invalid_argument("phases must have one entry per sphere");
    if (shape.size() != 3) throw std::invalid_argument("shape must be (nz, ny, nx)");
    const int64_t nz = shape[0].cast<int64_t>(), ny = shape[1].cast<int64_t>(), nx = shape[2].cast<int64_t>();
    U8Array out({nz, ny, nx});
    int64_t top;
    {
        py::gil_scoped_release release;
        top = calbatch::voxelize_spheres(centers.data(), radii.data(), phases.data(), n, lx, ly, z0,
                                         voxel_size, out.mutable_data(), nz, ny, nx);
    }
    return py::make_tuple(out, top);
}

static int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "calbatch C++ core: voxel census, error sums and sphere voxelization";
    m.def("census", &census, py::arg("volume"), py::arg("periodic_xy") = true,
          "One pass over a [z][y][x] uint8 volume: (histogram[256], faces[8][8], top_solid_slice).");
    m.def("error_sums", &error_sums, py::arg("truth"), py::arg("pred"),
          "(n, sum sq. error, sum abs. error, sum truth, sum truth^2) over two equal-size volumes.");
    m.def("voxelize_spheres", &voxelize_spheres, py::arg("centers"), py::arg("radii"), py::arg("phases"),
          py::arg("lx"), py::arg("ly"), py::arg("z0"), py::arg("voxel_size"), py::arg("shape"),
          "Voxelize spheres (periodic in x, y) into a new [z][y][x] volume: (volume, top_solid_slice).");
    m.def("max_threads", &max_threads, "OpenMP threads the kernels use.");
}
