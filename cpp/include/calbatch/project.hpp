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

// Every sphere between the collector (z = 0) and the press (press_z <= 0: none), x and y wrapped.
inline void project_walls(double* x, const double* radii, int64_t n, double lx, double ly, double press_z) {
    for (int64_t i = 0; i < n; ++i) {
        double& z = x[3 * i + 2];
        if (press_z > 0) z = std::min(z, press_z - radii[i]);
        z = std::max(z, radii[i]);  // the collector wins where a sphere is taller than the gap
        x[3 * i] -= lx * std::floor(x[3 * i] / lx);
        x[3 * i + 1] -= ly * std::floor(x[3 * i + 1] / ly);
    }
}

// In place on x (n, 3). The heavier sphere (volume ~ r^3) moves less; each particle moves by the
// mean of its pushes (Jacobi averaging, stable however many contacts it has), or with `average`
// false by their sum (one sweep that takes every pair back to its tolerance, as a contact force
// would). press_z <= 0: no press. `measure` false: the excess left is not measured (a pair search
// less; a rollout step does not read it).
inline Projected project_overlaps(double* x, const double* radii, const uint8_t* phases, int64_t n, double lx,
                                  double ly, double press_z, const double* tol, int iterations, bool average = true,
                                  bool measure = true) {
    std::vector<double> push(3 * n), excess;
    std::vector<int32_t> count(n);
    Pairs pairs;
    auto walls = [&] { project_walls(x, radii, n, lx, ly, press_z); };
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
    if (!measure) return {};
    neighbour_pairs(x, radii, n, lx, ly, 0.0, pairs);
    return overlap_excess(radii, phases, tol, pairs, excess);
}

// One sweep pulling every bond (pairs i, j that touched before the step) whose overlap fell below its hold
// overlap, and whose spheres are no further apart than pull_off, back to it: the lighter sphere
// moves more, each by the mean of its pulls, the i sides summed before the j sides (as numpy's
// add.at does); then the walls.
inline void hold_bonds(double* x, const double* radii, const uint8_t* phases, int64_t n, double lx, double ly,
                       double press_z, const std::vector<int64_t>& bonds, const double* hold, double pull_off) {
    const size_t m = bonds.size() / 2;
    std::vector<double> pull(3 * m, 0.0), shift(3 * n, 0.0);
    std::vector<double> si(m, 0.0), sj(m, 0.0);
    std::vector<int32_t> count(n, 0);
    std::vector<char> held(m, 0);
    for (size_t q = 0; q < m; ++q) {
        const int64_t i = bonds[2 * q], j = bonds[2 * q + 1];
        const double d[3] = {wrap_delta(x[3 * j] - x[3 * i], lx), wrap_delta(x[3 * j + 1] - x[3 * i + 1], ly),
                             x[3 * j + 2] - x[3 * i + 2]};
        const double dist = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
        const double overlap = radii[i] + radii[j] - dist, target = hold[phases[i] * kPhaseTable + phases[j]];
        if (!(dist > 0) || overlap >= target || -overlap > pull_off) continue;
        const double wi = 1 / (radii[i] * radii[i] * radii[i]), wj = 1 / (radii[j] * radii[j] * radii[j]);
        si[q] = (target - overlap) * wi / (wi + wj), sj[q] = (target - overlap) * wj / (wi + wj);
        for (int a = 0; a < 3; ++a) pull[3 * q + a] = d[a] / dist;
        held[q] = 1, ++count[i], ++count[j];
    }
    for (size_t q = 0; q < m; ++q)  // i moves towards j
        if (held[q])
            for (int a = 0; a < 3; ++a) shift[3 * bonds[2 * q] + a] += pull[3 * q + a] * si[q];
    for (size_t q = 0; q < m; ++q)  // j towards i
        if (held[q])
            for (int a = 0; a < 3; ++a) shift[3 * bonds[2 * q + 1] + a] -= pull[3 * q + a] * sj[q];
    for (int64_t i = 0; i < n; ++i)
        if (count[i])
            for (int a = 0; a < 3; ++a) x[3 * i + a] += shift[3 * i + a] / count[i];
    project_walls(x, radii, n, lx, ly, press_z);
}

}  // namespace calbatch
