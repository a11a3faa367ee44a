// pybind11 bindings of the rollout loop's batch work (calbatch/rollout.hpp): per step, the window
// of every case of a batch, and every case's next frame written into its own frames buffer. The
// buffers are the callers' (never copied); the GIL is released while the kernels run, and the
// cases of a batch run in parallel.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>
#include <vector>

#include "calbatch/rollout.hpp"

namespace py = pybind11;
using I64Array = py::array_t<int64_t, py::array::c_style | py::array::forcecast>;

namespace {

struct Batch {
    std::vector<calbatch::RolloutCase> cases;
    int64_t nz = 0, ny = 0, nx = 0;
    int64_t nvox() const { return nz * ny * nx; }
};

// Every frames buffer: writeable C-contiguous uint8 (slots, nz, ny, nx), one grid for the batch;
// t[b] >= 0 and t[b] + 1 < slots unless the buffer is a ring of 3.
Batch gather(const py::list& frames, const I64Array& t) {
    Batch batch;
    const auto n = static_cast<int64_t>(frames.size());
    if (n == 0) throw std::invalid_argument("frames: an empty batch");
    if (t.ndim() != 1 || t.shape(0) != n) throw std::invalid_argument("t must hold one frame index per case");
    for (int64_t b = 0; b < n; ++b) {
        py::object item = frames[static_cast<size_t>(b)];
        if (!py::isinstance<py::array>(item))
            throw std::invalid_argument("frames[" + std::to_string(b) + "] must be a uint8 array (slots, nz, ny, nx)");
        auto a = py::reinterpret_borrow<py::array>(item);
        if (a.dtype().kind() != 'u' || a.itemsize() != 1 || !(a.flags() & py::array::c_style) || !a.writeable() ||
            a.ndim() != 4 || a.shape(0) < 3)
            throw std::invalid_argument("frames[" + std::to_string(b) +
                                        "] must be a writeable C-contiguous uint8 array (slots >= 3, nz, ny, nx)");
        if (b == 0) {
            batch.nz = a.shape(1), batch.ny = a.shape(2), batch.nx = a.shape(3);
        } else if (a.shape(1) != batch.nz || a.shape(2) != batch.ny || a.shape(3) != batch.nx) {
            throw std::invalid_argument("frames: every case of a batch must have one grid");
        }
        const int64_t slots = a.shape(0), tb = t.at(b);
        if (tb < 0 || (slots != 3 && tb + 1 >= slots))
            throw std::invalid_argument("t[" + std::to_string(b) + "] = " + std::to_string(tb) +
                                        " has no next frame in a buffer of " + std::to_string(slots) + " frames");
        batch.cases.push_back({static_cast<uint8_t*>(a.mutable_data()), slots, tb, 0, 0, 0});
    }
    return batch;
}

void require_batch_array(const py::array& a, const Batch& batch, int64_t channels, const char* what) {
    const auto n = static_cast<int64_t>(batch.cases.size());
    const bool ok = a.ndim() == (channels ? 5 : 4) && a.shape(0) >= n && a.shape(1) == batch.nz &&
                    a.shape(2) == batch.ny && a.shape(3) == batch.nx && (!channels || a.shape(4) == channels);
    if (!ok) {
        const std::string grid = std::to_string(batch.nz) + ", " + std::to_string(batch.ny) + ", " + std::to_string(batch.nx);
        throw std::invalid_argument(std::string(what) + " must have shape (>= " + std::to_string(n) + ", " + grid +
                                    (channels ? ", " + std::to_string(channels) : std::string()) + ")");
    }
}

void rollout_window(const py::list& frames, const I64Array& t, py::array_t<uint8_t, py::array::c_style> out) {
    Batch batch = gather(frames, t);
    require_batch_array(out, batch, 3, "out");
    uint8_t* dst = out.mutable_data();
    const int64_t n = static_cast<int64_t>(batch.cases.size()), nvox = batch.nvox();
    py::gil_scoped_release release;
#pragma omp parallel for schedule(static) if (n > 1)
    for (int64_t b = 0; b < n; ++b) calbatch::assemble_window(batch.cases[b], nvox, dst + b * nvox * 3);
}

void rollout_advance(const py::array_t<float, py::array::c_style>& output, const py::list& frames, const I64Array& t,
                     const I64Array& first_void, calbatch::NextFrameRule rule, const py::object& counts) {
    Batch batch = gather(frames, t);
    const auto n = static_cast<int64_t>(batch.cases.size());
    const bool scores = rule != calbatch::NextFrameRule::Nearest;
    require_batch_array(output, batch, scores ? 4 : 0, scores ? "output (class scores)" : "output (codes)");
    if (first_void.ndim() != 1 || first_void.shape(0) != n)
        throw std::invalid_argument("first_void must hold one slice index per case");
    if (rule == calbatch::NextFrameRule::Counts) {
        if (counts.is_none()) throw std::invalid_argument("decision counts needs counts (n_am, n_cbd) per case");
        auto c = counts.cast<I64Array>();
        if (c.ndim() != 2 || c.shape(0) != n || c.shape(1) != 2)
            throw std::invalid_argument("counts must have shape (cases, 2)");
        for (int64_t b = 0; b < n; ++b) batch.cases[b].n_am = c.at(b, 0), batch.cases[b].n_cbd = c.at(b, 1);
    }
    for (int64_t b = 0; b < n; ++b) batch.cases[b].first_void = first_void.at(b);
    const int64_t nvox = batch.nvox(), stride = scores ? 4 * nvox : nvox;
    if (nvox >= (int64_t(1) << 32)) throw std::invalid_argument("output: at most 2^32 - 1 voxels per case");
    const float* src = output.data();
    py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1)
    for (int64_t b = 0; b < n; ++b) {
        thread_local calbatch::DecideScratch scratch;  // kept between steps, one per thread
        calbatch::advance(src + b * stride, batch.cases[b], batch.nz, batch.ny, batch.nx, rule, scratch);
    }
}

}  // namespace

void bind_rollout(py::module_& m) {
    py::enum_<calbatch::NextFrameRule>(m, "Decision", "How rollout_advance decides a next frame.")
        .value("argmax", calbatch::NextFrameRule::Argmax)
        .value("conserve", calbatch::NextFrameRule::Conserve)
        .value("counts", calbatch::NextFrameRule::Counts)
        .value("nearest", calbatch::NextFrameRule::Nearest);
    m.def("rollout_window", &rollout_window, py::arg("frames"), py::arg("t"), py::arg("out").noconvert(),
          "The network input of one rollout step for a batch: out[b] (nz, ny, nx, 3) uint8 = frames t-2, t-1, t"
          " (oldest first, indices below 0 are frame 0) of case b, whose frames (slots, nz, ny, nx) hold frame k"
          " in slot k % slots.");
    m.def("rollout_advance", &rollout_advance, py::arg("output"), py::arg("frames"), py::arg("t"),
          py::arg("first_void"), py::arg("rule"), py::arg("counts") = py::none(),
          "Frame t+1 of every case of a batch, written into slot (t+1) % slots of its frames: from class scores"
          " (B, nz, ny, nx, 4) by the Decision (argmax, conserve: frame t's AM and CBD counts, counts: the"
          " counts (B, 2) given), slices from first_void up void; or from regressed codes (B, nz, ny, nx) by the"
          " nearest code (Decision.nearest). Then the void rule.");
}
