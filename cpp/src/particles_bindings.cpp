// pybind11 bindings of the particle state's hot loops: neighbour pairs (one case, or a batch whose
// cases run in parallel), the sphere decomposition of a voxel electrode and the overlap projection.
// The Python wrappers (calbatch.electrode.particles) check the inputs; the GIL is released while
// the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "calbatch/neighbours.hpp"
#include "calbatch/project.hpp"
#include "calbatch/spheres.hpp"
#include "particle_checks.hpp"

namespace py = pybind11;

namespace {

using namespace calbatch_bindings;

// Pairs of a batch's cases into numpy arrays, case b's indices shifted by first[b].
py::tuple pairs_to_numpy(const calbatch::Pairs* cases, int64_t nb, const int64_t* first) {
    py::ssize_t m = 0;
    for (int64_t b = 0; b < nb; ++b) m += static_cast<py::ssize_t>(cases[b].ij.size() / 2);
    py::array_t<int64_t> ij({m, py::ssize_t(2)});
    py::array_t<double> delta({m, py::ssize_t(3)});
    int64_t* pi = ij.mutable_data();
    double* pd = delta.mutable_data();
    for (int64_t b = 0; b < nb; ++b) {
        for (int64_t k : cases[b].ij) *pi++ = first[b] + k;
        pd = std::copy(cases[b].delta.begin(), cases[b].delta.end(), pd);
    }
    return py::make_tuple(ij, delta);
}

py::tuple neighbour_pairs(const F64Array& x, const py::object& radii, double lx, double ly, double cutoff) {
    const int64_t n = checked_case(x, radii, lx, ly, cutoff, "neighbour_pairs");
    F64Array ra = radii.is_none() ? F64Array() : radii.cast<F64Array>();
    const double* r = radii.is_none() ? nullptr : ra.data();
    thread_local calbatch::Pairs found;  // kept between calls, like the kernel's buffers
    {
        py::gil_scoped_release release;
        calbatch::neighbour_pairs(x.data(), r, n, lx, ly, cutoff, found);
    }
    const int64_t zero = 0;
    return pairs_to_numpy(&found, 1, &zero);
}

// A batch: case b's particles are numbered from the sum of the earlier cases' counts.
py::tuple neighbour_pairs_batch(const py::list& centres, const py::object& radii, const F64Array& boxes, double cutoff) {
    const auto nb = static_cast<int64_t>(centres.size());
    if (boxes.ndim() != 2 || boxes.shape(0) != nb || boxes.shape(1) != 2)
        throw std::invalid_argument("neighbour_pairs_batch: boxes must have shape (cases, 2)");
    if (!radii.is_none() && py::len(radii) != static_cast<size_t>(nb))
        throw std::invalid_argument("neighbour_pairs_batch: radii must hold one array per case");
    std::vector<F64Array> xs, rs;
    std::vector<int64_t> n(nb), first(nb + 1, 0);
    const double* box = boxes.data();
    for (int64_t b = 0; b < nb; ++b) {
        xs.push_back(centres[static_cast<size_t>(b)].cast<F64Array>());
        py::object rb = py::none();
        if (!radii.is_none()) rb = radii.cast<py::list>()[static_cast<size_t>(b)];
        n[b] = checked_case(xs[b], rb, box[2 * b], box[2 * b + 1], cutoff, "case " + std::to_string(b));
        rs.push_back(rb.is_none() ? F64Array() : rb.cast<F64Array>());
        first[b + 1] = first[b] + n[b];
    }
    thread_local std::vector<calbatch::Pairs> found;  // kept between calls
    found.resize(std::max<size_t>(found.size(), nb));
    calbatch::Pairs* slots = found.data();  // the OpenMP threads must see this thread's buffers, not their own
    const bool with_radii = !radii.is_none();
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t b = 0; b < nb; ++b)
            calbatch::neighbour_pairs(xs[b].data(), with_radii ? rs[b].data() : nullptr, n[b], box[2 * b],
                                      box[2 * b + 1], cutoff, slots[b]);
    }
    std::vector<int64_t> counts(nb);
    for (int64_t b = 0; b < nb; ++b) counts[b] = static_cast<int64_t>(found[b].ij.size() / 2);
    auto out = pairs_to_numpy(slots, nb, first.data());
    return py::make_tuple(out[0], out[1], to_numpy(counts, {nb}));
}

py::tuple sphere_decomposition(const U8Array& volume, double min_gain, int64_t min_r2, double penalty, double grow) {
    if (volume.ndim() != 3) throw std::invalid_argument("volume must be a 3-D array");
    calbatch::SphereSet s;
    {
        py::gil_scoped_release release;
        s = calbatch::decompose(volume.data(), volume.shape(0), volume.shape(1), volume.shape(2),
                                calbatch::CoverSettings{min_gain, min_r2, penalty, grow});
    }
    const auto k = static_cast<py::ssize_t>(s.radii.size());
    return py::make_tuple(to_numpy(s.centres, {k, 3}), to_numpy(s.radii, {k}), to_numpy(s.phases, {k}));
}

// The projection of every case of a batch (in parallel): (new centres per case, largest excess per case).
py::tuple project_overlaps(const py::list& centres, const py::list& radii, const py::list& phases,
                           const F64Array& boxes, const F64Array& press_z, const F64Array& tolerance, int iterations,
                           bool average) {
    const auto nb = static_cast<int64_t>(centres.size());
    if (py::len(radii) != static_cast<size_t>(nb) || py::len(phases) != static_cast<size_t>(nb))
        throw std::invalid_argument("radii and phases must hold one array per case");
    if (boxes.ndim() != 2 || boxes.shape(0) != nb || boxes.shape(1) != 2 || press_z.ndim() != 1 || press_z.shape(0) != nb)
        throw std::invalid_argument("boxes must have shape (cases, 2) and press_z (cases,)");
    if (tolerance.ndim() != 2 || tolerance.shape(0) != calbatch::kPhaseTable || tolerance.shape(1) != calbatch::kPhaseTable)
        throw std::invalid_argument("tolerance must have shape (3, 3), indexed by phase code");
    const double* box = boxes.data();
    std::vector<F64Array> rs, outs;
    std::vector<U8Array> ps;
    std::vector<int64_t> n(nb);
    for (int64_t b = 0; b < nb; ++b) {
        const auto k = static_cast<size_t>(b);
        const auto x = centres[k].cast<F64Array>();
        n[b] = checked_case(x, radii[k], box[2 * b], box[2 * b + 1], 0.0, "case " + std::to_string(b));
        rs.push_back(radii[k].cast<F64Array>());
        ps.push_back(phases[k].cast<U8Array>());
        if (ps[b].ndim() != 1 || ps[b].shape(0) != n[b])
            throw std::invalid_argument("case " + std::to_string(b) + ": phases must have one entry per centre");
        for (int64_t i = 0; i < n[b]; ++i)
            if (ps[b].data()[i] >= calbatch::kPhaseTable)
                throw std::invalid_argument("case " + std::to_string(b) + ": phases must be 1 (CBD) or 2 (AM)");
        outs.push_back(F64Array({n[b], int64_t(3)}));
        std::copy(x.data(), x.data() + 3 * n[b], outs[b].mutable_data());
    }
    std::vector<double*> dst(nb);
    for (int64_t b = 0; b < nb; ++b) dst[b] = outs[b].mutable_data();
    std::vector<double> excess(nb);
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1)
        for (int64_t b = 0; b < nb; ++b)
            excess[b] = calbatch::project_overlaps(dst[b], rs[b].data(), ps[b].data(), n[b], box[2 * b], box[2 * b + 1],
                                                   press_z.data()[b], tolerance.data(), iterations, average)
                            .max_excess;
    }
    py::list out;
    for (auto& o : outs) out.append(o);
    return py::make_tuple(out, to_numpy(excess, {nb}));
}

}  // namespace

void bind_particles(py::module_& m) {
    m.def("neighbour_pairs", &neighbour_pairs, py::arg("centres"), py::arg("radii"), py::arg("lx"), py::arg("ly"),
          py::arg("cutoff"),
          "Pairs (i < j) by cell lists, periodic in x and y: centre distance < r_i + r_j + cutoff (radii given) or"
          " < cutoff (radii None); (ij (m, 2) int64, delta (m, 3) = x_j - x_i, minimum image), sorted by (i, j).");
    m.def("neighbour_pairs_batch", &neighbour_pairs_batch, py::arg("centres"), py::arg("radii"), py::arg("boxes"),
          py::arg("cutoff"),
          "neighbour_pairs over a list of cases (in parallel), particles numbered across the batch:"
          " (ij, delta, pairs per case).");
    m.def("sphere_decomposition", &sphere_decomposition, py::arg("volume"), py::arg("min_gain"), py::arg("min_r2"),
          py::arg("penalty"), py::arg("grow"),
          "Spheres whose voxelization paints a [z][y][x] electrode's AM and CBD: (centres (k, 3), radii (k,),"
          " both in voxels, phases (k,)); a ball is taken if it paints min_gain of its phase's voxels anew, none"
          " below squared radius min_r2; candidates are refined off the grid to maximize their phase's voxels"
          " minus penalty per foreign voxel, growing up to `grow` voxels beyond the distance transform.");
    m.def("project_overlaps", &project_overlaps, py::arg("centres"), py::arg("radii"), py::arg("phases"),
          py::arg("boxes"), py::arg("press_z"), py::arg("tolerance"), py::arg("iterations"), py::arg("average") = true,
          "Per case of a batch (in parallel), Jacobi sweeps pushing apart overlaps above"
          " tolerance[phase_i][phase_j] (each sphere by the mean of its pushes; average false: their sum), walls at"
          " z = 0 and press_z[b] (<= 0: none), x and y wrapped: (new centres per case, largest excess left per case).");
}
