// Neighbour pairs of spheres by cell lists, periodic in x and y (z is bounded by the collector and
// the press, so not periodic). A pair (i < j) is kept when its centre distance is below
// r_i + r_j + cutoff (with radii) or below cutoff (without); its displacement is the minimum image
// of x_j - x_i. The reach must stay below half the box in x and y, so that image is the only one.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace calbatch {

struct Pairs {
    std::vector<int64_t> ij;     // (m, 2)
    std::vector<double> delta;   // (m, 3): x_j - x_i, minimum image in x and y
};

// The minimum image of a difference of two coordinates wrapped into [0, length).
inline double wrap_delta(double d, double length) {
    return d > 0.5 * length ? d - length : d < -0.5 * length ? d + length : d;
}

// The largest distance at which two spheres can pair.
inline double pair_reach(const double* radii, int64_t n, double cutoff) {
    if (!radii) return cutoff;
    double rmax = 0;
    for (int64_t i = 0; i < n; ++i) rmax = std::max(rmax, radii[i]);
    return 2 * rmax + cutoff;
}

// Each pair is found from its larger sphere (ties: the lower index), which searches up to
// 2 r_i + cutoff: the many small CBD spheres look at few cells, the AM at many. Cells are a third
// of the largest reach.
constexpr int kCellsPerReach = 3;

// The cells [c - k, c + k] along an axis of `cells` cells: wrapped where periodic (each cell once),
// clipped where not.
inline void cell_span(int64_t c, int64_t k, int64_t cells, bool periodic, std::vector<int64_t>& out) {
    out.clear();
    if (periodic && 2 * k + 1 >= cells) {
        for (int64_t q = 0; q < cells; ++q) out.push_back(q);
        return;
    }
    for (int64_t q = c - k; q <= c + k; ++q) {
        if (periodic) out.push_back((q + cells) % cells);
        else if (q >= 0 && q < cells) out.push_back(q);
    }
}

// The pairs of one case into `out` (cleared), sorted by (i, j). Buffers are kept between calls
// (per thread): a rollout asks every step, and fresh pages cost more than the search.
inline void neighbour_pairs(const double* x, const double* radii, int64_t n, double lx, double ly,
                            double cutoff, Pairs& out) {
    out.ij.clear(), out.delta.clear();
    if (n < 2) return;
    const double reach = pair_reach(radii, n, cutoff);
    const double edge = reach / (radii ? kCellsPerReach : 1);
    double zmin = x[2], zmax = x[2];
    for (int64_t i = 1; i < n; ++i) zmin = std::min(zmin, x[3 * i + 2]), zmax = std::max(zmax, x[3 * i + 2]);
    const int64_t ncx = std::max<int64_t>(1, (int64_t)std::floor(lx / edge));
    const int64_t ncy = std::max<int64_t>(1, (int64_t)std::floor(ly / edge));
    const int64_t ncz = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t)std::floor((zmax - zmin) / edge) + 1));
    const double sx = lx / ncx, sy = ly / ncy, sz = edge;

    // Counting sort of the particles by cell, on copies wrapped into the box in x and y.
    const int64_t ncell = ncx * ncy * ncz;
    std::vector<int64_t> cell_of(n), start(ncell + 1, 0), members(n);
    std::vector<double> w(x, x + 3 * n);
    for (int64_t i = 0; i < n; ++i) {
        double& px = w[3 * i];
        double& py = w[3 * i + 1];
        px -= lx * std::floor(px / lx), py -= ly * std::floor(py / ly);
        if (px >= lx) px = 0;  // a tiny negative coordinate wraps to lx itself
        if (py >= ly) py = 0;
        const int64_t cx = std::min(ncx - 1, (int64_t)(px / sx)), cy = std::min(ncy - 1, (int64_t)(py / sy));
        const int64_t cz = std::min(ncz - 1, (int64_t)((w[3 * i + 2] - zmin) / sz));
        cell_of[i] = (cz * ncy + cy) * ncx + cx;
        ++start[cell_of[i] + 1];
    }
    for (int64_t c = 0; c < ncell; ++c) start[c + 1] += start[c];
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t i = 0; i < n; ++i) members[fill[cell_of[i]]++] = i;
    }

    std::vector<int64_t> span_x, span_y, span_z;
    thread_local Pairs found;
    std::vector<int64_t>& ij = found.ij;
    std::vector<double>& delta = found.delta;
    ij.clear(), delta.clear();
    for (int64_t i = 0; i < n; ++i) {
        const int64_t c = cell_of[i], cx = c % ncx, cy = (c / ncx) % ncy, cz = c / (ncx * ncy);
        const double own = radii ? 2 * radii[i] + cutoff : reach;  // no partner it owns lies farther
        cell_span(cx, (int64_t)std::ceil(own / sx), ncx, true, span_x);
        cell_span(cy, (int64_t)std::ceil(own / sy), ncy, true, span_y);
        cell_span(cz, (int64_t)std::ceil(own / sz), ncz, false, span_z);
        for (int64_t z : span_z)
            for (int64_t y : span_y)
                for (int64_t xc : span_x) {
                    const int64_t cell = (z * ncy + y) * ncx + xc;
                    for (int64_t k = start[cell]; k < start[cell + 1]; ++k) {
                        const int64_t j = members[k];
                        const bool mine = radii ? radii[j] < radii[i] || (radii[j] == radii[i] && j > i) : j > i;
                        if (!mine) continue;
                        const double dx = wrap_delta(w[3 * j] - w[3 * i], lx);
                        const double dy = wrap_delta(w[3 * j + 1] - w[3 * i + 1], ly);
                        const double dz = w[3 * j + 2] - w[3 * i + 2];
                        const double r = radii ? radii[i] + radii[j] + cutoff : reach;
                        if (dx * dx + dy * dy + dz * dz >= r * r) continue;
                        const double sign = i < j ? 1.0 : -1.0;  // stored as (lower, higher), x_higher - x_lower
                        ij.push_back(std::min(i, j)), ij.push_back(std::max(i, j));
                        delta.push_back(sign * dx), delta.push_back(sign * dy), delta.push_back(sign * dz);
                    }
                }
    }
    // Sorted by (i, j), so the result does not depend on the cell layout.
    const size_t m = ij.size() / 2;
    thread_local std::vector<size_t> order;
    order.resize(m);
    for (size_t q = 0; q < m; ++q) order[q] = q;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
        return ij[2 * a] != ij[2 * b] ? ij[2 * a] < ij[2 * b] : ij[2 * a + 1] < ij[2 * b + 1];
    });
    out.ij.resize(2 * m), out.delta.resize(3 * m);
    for (size_t p = 0; p < m; ++p) {
        const size_t q = order[p];
        out.ij[2 * p] = ij[2 * q], out.ij[2 * p + 1] = ij[2 * q + 1];
        for (int a = 0; a < 3; ++a) out.delta[3 * p + a] = delta[3 * q + a];
    }
}

}  // namespace calbatch
