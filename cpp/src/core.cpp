// pybind11 bindings of calbatch's hot loops. Arrays come in without copies (C-contiguous, exact
// dtype; the Python wrappers make sure of it) and the GIL is released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <vector>
#include <stdexcept>

#include "calbatch/census.hpp"
#include "calbatch/decide.hpp"
#include "calbatch/fick.hpp"
#include "calbatch/voxelize.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

void bind_rollout(py::module_& m);     // rollout_bindings.cpp
void bind_particles(py::module_& m);  // particles_bindings.cpp
void bind_particle_step(py::module_& m);  // particle_step_bindings.cpp
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

static U8Array decide(const py::array_t<float, py::array::c_style>& scores, int64_t first_void,
                      const py::object& counts, py::object out_obj) {
    if (scores.ndim() != 4 || scores.shape(3) != 4) throw std::invalid_argument("scores must have shape (nz, ny, nx, 4)");
    const int64_t nz = scores.shape(0), ny = scores.shape(1), nx = scores.shape(2);
    if (nz * ny * nx >= (int64_t(1) << 32)) throw std::invalid_argument("scores: at most 2^32 - 1 voxels");
    const bool top_k = !counts.is_none();
    int64_t n_am = 0, n_cbd = 0;
    if (top_k) {
        auto c = counts.cast<py::tuple>();
        if (c.size() != 2) throw std::invalid_argument("counts must be (n_am, n_cbd) or None");
        n_am = c[0].cast<int64_t>(), n_cbd = c[1].cast<int64_t>();
    }
    U8Array out;
    if (out_obj.is_none()) {
        out = U8Array({nz, ny, nx});
    } else {
        // In place: the caller's own buffer, exactly uint8, C-contiguous and writeable (never a copy).
        if (!py::isinstance<py::array>(out_obj))
            throw std::invalid_argument("out must be a writeable C-contiguous uint8 array of shape (nz, ny, nx)");
        auto a = py::reinterpret_borrow<py::array>(out_obj);
        if (a.dtype().kind() != 'u' || a.itemsize() != 1 ||
            !(a.flags() & py::array::c_style) || !a.writeable() || a.ndim() != 3 || a.shape(0) != nz ||
            a.shape(1) != ny || a.shape(2) != nx)
            throw std::invalid_argument("out must be a writeable C-contiguous uint8 array of shape (nz, ny, nx)");
        out = py::reinterpret_borrow<U8Array>(out_obj);
    }
    thread_local calbatch::DecideScratch scratch;  // kept between calls: a rollout decides every step
    uint8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release release;
        calbatch::decide(scores.data(), nz, ny, nx, first_void, top_k, n_am, n_cbd, dst, scratch);
    }
    return out;
}

// Hands a buffer to numpy without a copy: the array owns it through a capsule.
template <typename T>
static py::array_t<T> to_numpy(calbatch::Buffer<T>&& buffer) {
    T* data = buffer.data.release();
    py::capsule free_when_done(data, [](void* p) { delete[] static_cast<T*>(p); });
    return py::array_t<T>(buffer.size, data, free_when_done);
}

template <typename Index>
static py::tuple to_numpy(calbatch::Csr<Index>&& csr) {
    return py::make_tuple(to_numpy(std::move(csr.indptr)), to_numpy(std::move(csr.columns)),
                          to_numpy(std::move(csr.values)));
}

template <typename Index>
static py::tuple fick_rows_as(const U8Array& phases, const U8Array& active, const F64Array& diffusivity,
                              const py::array_t<int64_t, py::array::c_style>& offsets, int64_t z0, int64_t z1) {
    auto rows = [&] {
        py::gil_scoped_release release;
        return calbatch::fick_rows<Index>(phases.data(), active.data(), diffusivity.data(), offsets.data(),
                                          phases.shape(0), phases.shape(1), phases.shape(2), z0, z1);
    }();
    return py::make_tuple(to_numpy(std::move(rows.own)), to_numpy(std::move(rows.other)),
                          to_numpy(std::move(rows.bottom_g)), to_numpy(std::move(rows.top_g)));
}

static py::tuple fick_rows(const U8Array& phases, const U8Array& active, const F64Array& diffusivity,
                           const py::array_t<int64_t, py::array::c_style>& offsets, int64_t z0, int64_t z1,
                           bool index64) {
    require_3d(phases, "phases");
    if (active.ndim() != 3 || !std::equal(phases.shape(), phases.shape() + 3, active.shape()))
        throw std::invalid_argument("active must have the shape of phases");
    if (diffusivity.size() != 256) throw std::invalid_argument("diffusivity must have 256 entries (one per code)");
    if (offsets.size() != phases.shape(0) + 1) throw std::invalid_argument("offsets must have nz + 1 entries");
    if (!(0 <= z0 && z0 <= z1 && z1 <= phases.shape(0))) throw std::invalid_argument("need 0 <= z0 <= z1 <= nz");
    return index64 ? fick_rows_as<int64_t>(phases, active, diffusivity, offsets, z0, z1)
                   : fick_rows_as<int32_t>(phases, active, diffusivity, offsets, z0, z1);
}

static int max_threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "calbatch C++ core: voxel census, error sums, sphere voxelization, Fick matrix rows, the rollout's decision rule and its batched step, neighbour pairs, sphere decomposition, overlap projection and the learned particle step";
    m.def("census", &census, py::arg("volume"), py::arg("periodic_xy") = true,
          "One pass over a [z][y][x] uint8 volume: (histogram[256], faces[8][8], top_solid_slice).");
    m.def("error_sums", &error_sums, py::arg("truth"), py::arg("pred"),
          "(n, sum sq. error, sum abs. error, sum truth, sum truth^2) over two equal-size volumes.");
    m.def("voxelize_spheres", &voxelize_spheres, py::arg("centers"), py::arg("radii"), py::arg("phases"),
          py::arg("lx"), py::arg("ly"), py::arg("z0"), py::arg("voxel_size"), py::arg("shape"),
          "Voxelize spheres (periodic in x, y) into a new [z][y][x] volume: (volume, top_solid_slice).");
    m.def("fick_rows", &fick_rows, py::arg("phases"), py::arg("active"), py::arg("diffusivity"), py::arg("offsets"),
          py::arg("z0"), py::arg("z1"), py::arg("index64"),
          "Fick matrix rows of the unknowns in slices [z0, z1) of a [z][y][x] region, split as PETSc's MPIAIJ:"
          " ((indptr, columns, values) of the slab's own columns numbered from its first unknown,"
          " (indptr, columns, values) of the other ranks' columns numbered globally, bottom_g, top_g);"
          " indices int64 if index64 else int32.");
    m.def("decide", &decide, py::arg("scores"), py::arg("first_void"), py::arg("counts") = py::none(),
          py::arg("out") = py::none(),
          "The rollout's decision rule: codes (nz, ny, nx) uint8 from class scores (nz, ny, nx, 4) float32;"
          " argmax when counts is None, else the (n_am, n_cbd) voxels most probably AM, then CBD (ties by"
          " index); slices from first_void up void; then the void rule. Written into out when given.");
    m.def("max_threads", &max_threads, "OpenMP threads the kernels use.");
    bind_rollout(m);
    bind_particles(m);
    bind_particle_step(m);
}
