// A cheap physical projection of a sphere packing: Jacobi iterations that push apart every pair
// overlapping by more than its tolerance (per pair of phases), then hard walls at the collector
// (z = 0) and the press, periodic in x and y. Deterministic: every sweep reads the positions of the
// previous one and sums each particle's pushes in pair order.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "calbatch/neighbours.hpp"

namespace calbatch {

constexpr int kPhaseTable = 3;  // tolerance[a][b] for phase codes a, b in {0, 1, 2} (1 CBD, 2 AM)

struct Projected {
    double max_excess = 0;  // the largest overlap above its tolerance left after the last sweep
    int64_t over = 0;       // pairs still above their tolerance
};

// Overlap above tolerance of every pair in `pairs`, written into `excess` (<= 0: none).
inline Projected overlap_excess(const double* radii, const uint8_t* phases, const double* tol, const Pairs& pairs,
                                std::vector<double>& excess) {
    Projected p;
    const size_t m = pairs.ij.size() / 2;
    excess.resize(m);
    for (size_t q = 0; q < m; ++q) {
        const int64_t i = pairs.ij[2 * q], j = pairs.ij[2 * q + 1];
        const double* d = &pairs.delta[3 * q];
        const double dist = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
        excess[q] = radii[i] + radii[j] - dist - tol[phases[i] * kPhaseTable + phases[j]];
        if (excess[q] > 0) ++p.over, p.max_excess = std::max(p.max_excess, excess[q]);
    }
    return p;
}

// In place on x (n, 3). The heavier sphere (volume ~ r^3) moves less; each particle moves by the
// mean of its pushes (Jacobi averaging, stable however many contacts it has), or with `average`
// false by their sum (one sweep that takes every pair back to its tolerance, as a contact force
// would). press_z <= 0: no press.
inline Projected project_overlaps(double* x, const double* radii, const uint8_t* phases, int64_t n, double lx,
                                  double ly, double press_z, const double* tol, int iterations, bool average = true) {
    std::vector<double> push(3 * n), excess;
    std::vector<int32_t> count(n);
    Pairs pairs;
    auto walls = [&] {
        for (int64_t i = 0; i < n; ++i) {
            double& z = x[3 * i + 2];
            if (press_z > 0) z = std::min(z, press_z - radii[i]);
            z = std::max(z, radii[i]);  // the collector wins where a sphere is taller than the gap
            x[3 * i] -= lx * std::floor(x[3 * i] / lx);
            x[3 * i + 1] -= ly * std::floor(x[3 * i + 1] / ly);
        }
    };
    walls();
    for (int it = 0; it < iterations; ++it) {
        neighbour_pairs(x, radii, n, lx, ly, 0.0, pairs);
        const Projected p = overlap_excess(radii, phases, tol, pairs, excess);
        if (p.over == 0) break;
        std::fill(push.begin(), push.end(), 0.0);
        std::fill(count.begin(), count.end(), 0);
        for (size_t q = 0; q < excess.size(); ++q) {
            if (excess[q] <= 0) continue;
            const int64_t i = pairs.ij[2 * q], j = pairs.ij[2 * q + 1];
            const double* d = &pairs.delta[3 * q];
            const double dist = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
            // Coincident centres: push apart along z, the one axis the walls bound.
            const double u[3] = {dist > 0 ? d[0] / dist : 0, dist > 0 ? d[1] / dist : 0, dist > 0 ? d[2] / dist : 1};
            const double wi = 1 / (radii[i] * radii[i] * radii[i]), wj = 1 / (radii[j] * radii[j] * radii[j]);
            const double si = excess[q] * wi / (wi + wj), sj = excess[q] * wj / (wi + wj);
            for (int a = 0; a < 3; ++a) push[3 * i + a] -= si * u[a], push[3 * j + a] += sj * u[a];
            ++count[i], ++count[j];
        }
        for (int64_t i = 0; i < n; ++i)
            if (count[i])
                for (int a = 0; a < 3; ++a) x[3 * i + a] += average ? push[3 * i + a] / count[i] : push[3 * i + a];
        walls();
    }
    neighbour_pairs(x, radii, n, lx, ly, 0.0, pairs);
    return overlap_excess(radii, phases, tol, pairs, excess);
}

}  // namespace calbatch
