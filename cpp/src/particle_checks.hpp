// What the particle bindings share: array types, a vector handed to numpy, and the checks of one
// case's spheres (the kernels trust their inputs; NaN or a reach past half the box is refused here).
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "calbatch/neighbours.hpp"

namespace calbatch_bindings {

namespace py = pybind11;

using F64Array = py::array_t<double, py::array::c_style | py::array::forcecast>;
using U8Array = py::array_t<uint8_t, py::array::c_style | py::array::forcecast>;

template <typename T>
inline py::array_t<T> to_numpy(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
    py::array_t<T> a(shape);
    std::copy(v.begin(), v.end(), a.mutable_data());
    return a;
}

inline int64_t checked_case(const F64Array& x, const py::object& radii, double lx, double ly, double cutoff,
                            const std::string& name) {
    if (x.ndim() != 2 || x.shape(1) != 3) throw std::invalid_argument(name + ": centres must have shape (n, 3)");
    const int64_t n = x.shape(0);
    const double* r = nullptr;
    F64Array ra;
    if (!radii.is_none()) {
        ra = radii.cast<F64Array>();
        if (ra.ndim() != 1 || ra.shape(0) != n) throw std::invalid_argument(name + ": radii must have one entry per centre");
        r = ra.data();
    }
    // A NaN would give a cell index past the table: refuse it here, whoever made the arrays.
    for (int64_t k = 0; k < 3 * n; ++k)
        if (!std::isfinite(x.data()[k]))
            throw std::invalid_argument(name + ": particle " + std::to_string(k / 3) + " has a non-finite position");
    for (int64_t i = 0; r && i < n; ++i)
        if (!(r[i] > 0 && std::isfinite(r[i])))
            throw std::invalid_argument(name + ": particle " + std::to_string(i) + " has radius " + std::to_string(r[i]));
    if (!(lx > 0 && ly > 0)) throw std::invalid_argument(name + ": the box must be positive");
    if (!(cutoff >= 0)) throw std::invalid_argument(name + ": the cutoff must be >= 0");
    const double reach = calbatch::pair_reach(r, n, cutoff);
    if (!(reach < 0.5 * std::min(lx, ly)))
        throw std::invalid_argument(name + ": the pair reach " + std::to_string(reach) +
                                    " must stay below half the box (" + std::to_string(0.5 * std::min(lx, ly)) + ")");
    return n;
}

}  // namespace calbatch_bindings
