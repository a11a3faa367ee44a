// pybind11 bindings of the learned particle step (calbatch/particle_step.hpp), batched: one call
// before the network (every case's neighbour pairs, node and edge features and prior, joined into
// one graph) and one after it (every case's next positions and, optionally, its voxel frame written
// into the caller's buffer). Cases run in parallel; the GIL is released while the kernels run.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "calbatch/particle_step.hpp"
#include "calbatch/voxelize.hpp"
#include "particle_checks.hpp"

namespace py = pybind11;

namespace {

using namespace calbatch_bindings;

// One case's pairs and its edge rows, senders and receivers (the batch's numbering).
struct CaseEdges {
    calbatch::Pairs pairs;
    std::vector<float> edge;
    std::vector<int32_t> snd, rcv;
};

// A batch's spheres, checked (the pair reach below half the box), their arrays held.
struct Spheres {
    std::vector<F64Array> x, r;
    std::vector<U8Array> ph;
    std::vector<int64_t> n, first;  // first[b]: case b's first particle in the joined arrays; first[nb]: all
    const double* box = nullptr;
    int64_t size() const { return static_cast<int64_t>(n.size()); }
};

Spheres gather(const py::list& centres, const py::list& radii, const py::list& phases, const F64Array& boxes,
               double cutoff, uint8_t max_phase) {
    Spheres s;
    const auto nb = static_cast<int64_t>(centres.size());
    if (nb == 0) throw std::invalid_argument("an empty batch");
    if (py::len(radii) != static_cast<size_t>(nb) || py::len(phases) != static_cast<size_t>(nb))
        throw std::invalid_argument("radii and phases must hold one array per case");
    if (boxes.ndim() != 2 || boxes.shape(0) != nb || boxes.shape(1) != 2)
        throw std::invalid_argument("boxes must have shape (cases, 2)");
    s.box = boxes.data();
    s.first.push_back(0);
    for (int64_t b = 0; b < nb; ++b) {
        const auto k = static_cast<size_t>(b);
        const std::string name = "case " + std::to_string(b);
        s.x.push_back(centres[k].cast<F64Array>());
        s.n.push_back(checked_case(s.x[b], radii[k], s.box[2 * b], s.box[2 * b + 1], cutoff, name));
        if (s.n[b] == 0) throw std::invalid_argument(name + ": no particles");
        s.r.push_back(radii[k].cast<F64Array>());
        s.ph.push_back(phases[k].cast<U8Array>());
        if (s.ph[b].ndim() != 1 || s.ph[b].shape(0) != s.n[b])
            throw std::invalid_argument(name + ": phases must have one entry per centre");
        for (int64_t i = 0; i < s.n[b]; ++i)
            if (s.ph[b].data()[i] > max_phase)
                throw std::invalid_argument(name + ": particle " + std::to_string(i) + " has unknown phase " +
                                            std::to_string(s.ph[b].data()[i]));
        s.first.push_back(s.first[b] + s.n[b]);
    }
    if (s.first[nb] >= (int64_t(1) << 31)) throw std::invalid_argument("more than 2^31 - 1 particles in a batch");
    return s;
}

py::tuple features(const py::list& centres, const py::list& radii, const py::list& phases, const F64Array& boxes,
                   const F64Array& press, const py::array_t<int64_t, py::array::c_style | py::array::forcecast>& stage,
                   const F64Array& cd, double cutoff, double z_scale, double length_scale, double overlap_scale,
                   double gap_low, double gap_high, double cd_scale, double prior_scale, double top_share, double stored_scale,
                   int stages, int press_stage, uint8_t am, uint8_t cbd) {
    if (!(top_share >= 0.0 && top_share < 1.0)) throw std::invalid_argument("top_share must be in [0, 1)");
    const calbatch::FeatureSettings set{cutoff,      z_scale,   length_scale, overlap_scale, gap_low,
                                        gap_high,    cd_scale,  prior_scale,  top_share,     stored_scale,
                                        stages,      press_stage, am,         cbd};
    const Spheres s = gather(centres, radii, phases, boxes, cutoff, std::max(am, cbd));
    const int64_t nb = s.size();
    if (press.ndim() != 2 || press.shape(0) != nb || press.shape(1) != 3 || stage.ndim() != 1 || stage.shape(0) != nb ||
        cd.ndim() != 1 || cd.shape(0) != nb)
        throw std::invalid_argument("press must have shape (cases, 3) (previous, now, next), stage and cd (cases,)");
    if (stages < 1 || press_stage < 0 || press_stage >= stages)
        throw std::invalid_argument("stages must be positive and press_stage one of them");
    for (int64_t b = 0; b < nb; ++b)
        if (stage.data()[b] < 0 || stage.data()[b] >= stages)
            throw std::invalid_argument("case " + std::to_string(b) + ": stage " + std::to_string(stage.data()[b]) +
                                        " out of range");
    std::vector<calbatch::StepCase> cases(nb);
    for (int64_t b = 0; b < nb; ++b) {
        const double* p = press.data() + 3 * b;
        cases[b] = {s.x[b].data(), s.r[b].data(), s.ph[b].data(), s.n[b], s.box[2 * b], s.box[2 * b + 1],
                    p[0],          p[1],          p[2],           int(stage.data()[b]), cd.data()[b]};
    }
    // Each case's pairs and edge rows in its own buffers (kept between calls: a rollout asks every
    // step), its node rows and prior straight into the joined arrays; the edges are joined after.
    thread_local std::vector<CaseEdges> found;
    found.resize(std::max<size_t>(found.size(), nb));
    CaseEdges* slots = found.data();  // the OpenMP threads must see this thread's buffers, not their own
    const int64_t n_all = s.first[nb], width = set.node_features();
    py::array_t<float> node({n_all, width});
    py::array_t<double> prior({n_all, int64_t(3)});
    float* pn = node.mutable_data();
    double* pp = prior.mutable_data();
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (nb > 1)
        for (int64_t b = 0; b < nb; ++b) {
            CaseEdges& c = slots[b];
            calbatch::neighbour_pairs(cases[b].x, cases[b].radii, cases[b].n, cases[b].lx, cases[b].ly, cutoff, c.pairs);
            const size_t e = c.pairs.ij.size();  // every pair both ways
            c.edge.resize(e * calbatch::kEdgeFeatures), c.snd.resize(e), c.rcv.resize(e);
            calbatch::step_features(cases[b], set, c.pairs, int32_t(s.first[b]), pn + s.first[b] * width, c.edge.data(),
                                    c.snd.data(), c.rcv.data(), pp + 3 * s.first[b]);
        }
    }
    int64_t e_all = 0;
    for (int64_t b = 0; b < nb; ++b) e_all += int64_t(slots[b].snd.size());
    py::array_t<float> edge({e_all, int64_t(calbatch::kEdgeFeatures)});
    py::array_t<int32_t> snd(e_all), rcv(e_all);
    float* pe = edge.mutable_data();
    int32_t *ps = snd.mutable_data(), *pr = rcv.mutable_data();
    for (int64_t b = 0; b < nb; ++b) {
        pe = std::copy(slots[b].edge.begin(), slots[b].edge.end(), pe);
        ps = std::copy(slots[b].snd.begin(), slots[b].snd.end(), ps);
        pr = std::copy(slots[b].rcv.begin(), slots[b].rcv.end(), pr);
    }
    return py::make_tuple(node, edge, snd, rcv, prior);
}

// Every case's next positions (new arrays); each voxel frame into out[b] when out is given.
py::list advance(const py::list& centres, const py::list& radii, const py::list& phases, const F64Array& boxes,
                 const F64Array& prior, const F64Array& residual, const F64Array& press_next, double max_residual,
                 double collector_wall, const F64Array& press_wall, const py::object& tolerance, int iterations,
                 const py::object& settle, const py::object& hold, double pull_off, const py::object& contacts,
                 const F64Array& voxel_size, const py::object& out) {
    const Spheres s = gather(centres, radii, phases, boxes, 0.0, calbatch::kPhaseTable - 1);
    const int64_t nb = s.size(), n_all = s.first[nb];
    for (const F64Array* a : {&prior, &residual})
        if (a->ndim() != 2 || a->shape(0) != n_all || a->shape(1) != 3)
            throw std::invalid_argument("prior and residual must have shape (" + std::to_string(n_all) +
                                        ", 3): every particle of the batch");
    if (press_next.ndim() != 1 || press_next.shape(0) != nb || voxel_size.ndim() != 1 || voxel_size.shape(0) != nb ||
        press_wall.ndim() != 1 || press_wall.shape(0) != nb)
        throw std::invalid_argument("press_next, press_wall and voxel_size must have one entry per case");
    F64Array table;
    constexpr int64_t kTable = calbatch::kPhaseTable * calbatch::kPhaseTable;
    if (!tolerance.is_none()) {
        table = tolerance.cast<F64Array>();
        if (table.ndim() != 3 || table.shape(0) != nb || table.shape(1) != calbatch::kPhaseTable ||
            table.shape(2) != calbatch::kPhaseTable)
            throw std::invalid_argument("tolerance must have shape (cases, 3, 3), indexed by phase code");
    }
    // a per-case table (cases, 3, 3) by phase code; a case whose entries are all +inf has none
    auto per_case = [nb](const py::object& arg, const char* name, F64Array& keep) -> std::vector<const double*> {
        std::vector<const double*> own(nb, nullptr);
        if (arg.is_none()) return own;
        keep = arg.cast<F64Array>();
        if (keep.ndim() != 3 || keep.shape(0) != nb || keep.shape(1) != calbatch::kPhaseTable ||
            keep.shape(2) != calbatch::kPhaseTable)
            throw std::invalid_argument(std::string(name) + " must have shape (cases, 3, 3), indexed by phase code");
        for (int64_t b = 0; b < nb; ++b) {
            const double* t = keep.data() + kTable * b;
            if (std::any_of(t, t + kTable, [](double v) { return std::isfinite(v); })) own[b] = t;
        }
        return own;
    };
    F64Array settled, held;
    const std::vector<const double*> settles = per_case(settle, "settle", settled), holds = per_case(hold, "hold", held);
    // the pairs in contact before the step (joined, the features' numbering), split by case: a hold's bonds
    std::vector<int64_t> from(nb + 1, 0);
    py::array_t<int32_t, py::array::c_style | py::array::forcecast> touching;
    if (!contacts.is_none()) {
        touching = contacts.cast<py::array_t<int32_t, py::array::c_style | py::array::forcecast>>();
        if (touching.ndim() != 2 || touching.shape(1) != 2) throw std::invalid_argument("contacts must have shape (m, 2)");
        const int32_t* c = touching.data();
        const int64_t m = touching.shape(0);
        int64_t b = 0;
        for (int64_t q = 0; q < m; ++q) {
            while (b < nb && c[2 * q] >= s.first[b + 1]) from[++b] = q;
            if (b == nb || c[2 * q] < s.first[b] || c[2 * q + 1] < s.first[b] || c[2 * q + 1] >= s.first[b + 1])
                throw std::invalid_argument("contacts must pair the spheres of one case, the cases in batch order");
        }
        while (b < nb) from[++b] = m;
    }
    for (int64_t b = 0; b < nb; ++b)
        if (holds[b] && contacts.is_none())
            throw std::invalid_argument("case " + std::to_string(b) + ": a hold needs the contacts before the step");
    const int32_t* touch = contacts.is_none() ? nullptr : touching.data();
    std::vector<uint8_t*> frames(nb, nullptr);
    std::vector<int64_t> shape(3 * nb, 0);
    if (!out.is_none()) {
        const auto list = out.cast<py::list>();
        if (static_cast<int64_t>(list.size()) != nb) throw std::invalid_argument("out must hold one frame per case");
        for (int64_t b = 0; b < nb; ++b) {
            py::object item = list[static_cast<size_t>(b)];
            const std::string bad = "out[" + std::to_string(b) + "] must be a writeable C-contiguous uint8 array (nz, ny, nx)";
            if (!py::isinstance<py::array>(item)) throw std::invalid_argument(bad);
            auto a = py::reinterpret_borrow<py::array>(item);
            if (a.dtype().kind() != 'u' || a.itemsize() != 1 || !(a.flags() & py::array::c_style) || !a.writeable() ||
                a.ndim() != 3)
                throw std::invalid_argument(bad);
            frames[b] = static_cast<uint8_t*>(a.mutable_data());
            for (int d = 0; d < 3; ++d) shape[3 * b + d] = a.shape(d);
        }
    }
    std::vector<F64Array> next;
    for (int64_t b = 0; b < nb; ++b) {
        next.push_back(F64Array({s.n[b], int64_t(3)}));
        std::copy(s.x[b].data(), s.x[b].data() + 3 * s.n[b], next[b].mutable_data());
    }
    std::vector<double*> dst(nb);
    for (int64_t b = 0; b < nb; ++b) dst[b] = next[b].mutable_data();
    std::vector<char> finite(nb, 1);
    {
        py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (nb > 1)
        for (int64_t b = 0; b < nb; ++b) {
            const int64_t i0 = s.first[b];
            const double lx = s.box[2 * b], ly = s.box[2 * b + 1];
            const calbatch::AdvanceSettings set{max_residual, collector_wall, press_wall.data()[b],
                                                tolerance.is_none() ? nullptr : table.data() + kTable * b, iterations,
                                                settles[b], holds[b], pull_off};
            finite[b] = calbatch::step_advance(dst[b], s.r[b].data(), s.ph[b].data(), s.n[b], lx, ly, press_next.data()[b],
                                               prior.data() + 3 * i0, residual.data() + 3 * i0, set,
                                               touch ? touch + 2 * from[b] : nullptr, size_t(from[b + 1] - from[b]),
                                               int32_t(i0));
            if (finite[b] && frames[b])
                calbatch::voxelize_spheres(dst[b], s.r[b].data(), s.ph[b].data(), s.n[b], lx, ly, 0.0,
                                           voxel_size.data()[b], frames[b], shape[3 * b], shape[3 * b + 1],
                                           shape[3 * b + 2]);
        }
    }
    for (int64_t b = 0; b < nb; ++b)
        if (!finite[b])
            throw std::invalid_argument("case " + std::to_string(b) + ": a position is not finite after the step"
                                        " (the network's residual)");
    py::list result;
    for (auto& a : next) result.append(a);
    return result;
}

}  // namespace

void bind_particle_step(py::module_& m) {
    m.def("particle_step_features", &features, py::arg("centres"), py::arg("radii"), py::arg("phases"),
          py::arg("boxes"), py::arg("press"), py::arg("stage"), py::arg("cd"), py::kw_only(), py::arg("cutoff"),
          py::arg("z_scale"), py::arg("length_scale"), py::arg("overlap_scale"), py::arg("gap_low"),
          py::arg("gap_high"), py::arg("cd_scale"), py::arg("prior_scale"), py::arg("top_share"), py::arg("stored_scale"),
          py::arg("stages"),
          py::arg("press_stage"), py::arg("am"), py::arg("cbd"),
          "The network's inputs for a batch (cases in parallel), joined: node features (N, 12 + stages) float32,"
          " edge features (E, 9) float32 (each case's pairs within the cutoff i -> j, then j -> i), senders and"
          " receivers (E,) int32 numbered across the batch, the press's affine prior (N, 3) um.");
    m.def("particle_step_advance", &advance, py::arg("centres"), py::arg("radii"), py::arg("phases"),
          py::arg("boxes"), py::arg("prior"), py::arg("residual"), py::arg("press_next"), py::kw_only(),
          py::arg("max_residual"), py::arg("collector_wall"), py::arg("press_wall"), py::arg("tolerance"),
          py::arg("iterations"), py::arg("settle") = py::none(), py::arg("hold") = py::none(),
          py::arg("pull_off") = 0.0, py::arg("contacts") = py::none(), py::arg("voxel_size"), py::arg("out") = py::none(),
          "Every case's next positions (cases in parallel): x + prior + the residual capped at max_residual, z"
          " clipped to [r - collector_wall, press_next - r + press_wall] (per case), then (tolerance (cases, 3, 3)"
          " not None) the overlap projection with the press at press_next + press_wall, then (settle (cases, 3, 3)"
          " not None; a case's all +inf: none) one sweep taking every pair back to its settle overlap, pushes"
          " summed, then (hold likewise) one sweep pulling the pairs that touched before the step (contacts (m, 2)"
          " int32: the features' pairs in contact, numbered across the batch) and have come less than pull_off"
          " apart back to their hold overlap; each voxel frame written into out[b].");
}
