// The learned particle step's hot loop, one case at a time (the bindings run a batch's cases in
// parallel): what the network reads of a case (its spheres as nodes, its pairs within the cutoff as
// edges, both ways) and the press's affine prior, and after the network the next positions (the
// residual capped, the collector and the press as walls, the overlap projection). Every constant
// comes from the caller; the arithmetic is numpy's, operation by operation, in double and rounded
// to float once, so the features and positions equal calbatch.surrogate.particle_step's reference.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "calbatch/neighbours.hpp"
#include "calbatch/project.hpp"

namespace calbatch {

constexpr int kEdgeFeatures = 9;  // dx, dy, dz, d, overlap, r_sender, r_receiver, AM sender, AM receiver

struct FeatureSettings {
    double cutoff;                   // a pair is an edge while its gap is below this (um)
    double z_scale, length_scale;    // z / z_scale; lengths (radii, offsets) / length_scale
    double overlap_scale;            // overlap r_i + r_j - d / overlap_scale
    double gap_low, gap_high;        // the press and collector gaps clipped to [gap_low, gap_high]
    double cd_scale, prior_scale;    // cd / cd_scale, prior dz / prior_scale
    double top_share;                // the bed's top: the highest sphere top below which all but this share lie
    double stored_scale;             // the bed's AM-AM overlap per sphere / stored_scale
    int stages, press_stage;         // one-hot stage columns; the stage in which the press squeezes
    uint8_t am, cbd;                 // phase codes
    int node_features() const { return 12 + stages; }
};

// One case of a step: its spheres, periodic box, press (previous, now, next), next stage and CD.
struct StepCase {
    const double* x;
    const double* radii;
    const uint8_t* phases;
    int64_t n;
    double lx, ly;
    double press_prev, press_now, press_next;
    int stage;
    double cd;
};

// Node rows (n, node_features) and the prior (n, 3) of a case; its pairs (m, both ways: the m pairs
// i -> j, then the m pairs j -> i) as edge rows (2m, kEdgeFeatures), senders and receivers numbered
// from `first`.
inline void step_features(const StepCase& c, const FeatureSettings& s, const Pairs& pairs, int32_t first, float* node,
                          float* edge, int32_t* snd, int32_t* rcv, double* prior) {
    const int64_t n = c.n;
    // the k-th highest sphere top: a few spheres standing proud of the bed do not start the squeeze early
    std::vector<double> tops(n);
    for (int64_t i = 0; i < n; ++i) tops[i] = c.x[3 * i + 2] + c.radii[i];
    const int64_t k = std::max<int64_t>(1, int64_t(double(n) * s.top_share));
    std::nth_element(tops.begin(), tops.begin() + (k - 1), tops.end(), std::greater<double>());
    const double top = tops[k - 1];
    const bool squeezed = c.stage == s.press_stage && c.press_next < top;
    const double squeeze = c.press_next / std::min(c.press_now, top) - 1.0;
    const double move = c.press_next - c.press_now, last_move = c.press_now - c.press_prev;
    const double cd = c.cd / s.cd_scale, below_press = c.press_now - top;
    // what the bed holds under the press: its AM-AM overlap per sphere, summed pair by pair in order
    // (numpy's cumsum), which sets how far it springs back when the press lets go
    const size_t m = pairs.ij.size() / 2;
    double stored = 0.0;
    for (size_t q = 0; q < m; ++q) {
        const int64_t a = pairs.ij[2 * q], b = pairs.ij[2 * q + 1];
        if (c.phases[a] != s.am || c.phases[b] != s.am) continue;
        const double d0 = pairs.delta[3 * q], d1 = pairs.delta[3 * q + 1], d2 = pairs.delta[3 * q + 2];
        const double overlap = c.radii[a] + c.radii[b] - std::sqrt(d0 * d0 + d1 * d1 + d2 * d2);
        if (overlap > 0.0) stored = stored + overlap;
    }
    stored = stored / double(n) / s.stored_scale;
    const int width = s.node_features();
    auto clip = [&](double v) { return std::min(std::max(v, s.gap_low), s.gap_high); };
    for (int64_t i = 0; i < n; ++i) {
        const double z = c.x[3 * i + 2], r = c.radii[i];
        const double pz = squeezed ? z * squeeze : 0.0;
        prior[3 * i] = prior[3 * i + 1] = 0.0, prior[3 * i + 2] = pz;
        float* row = node + i * width;
        int k = 0;
        row[k++] = float(z / s.z_scale);
        row[k++] = float(clip(c.press_now - z - r));
        row[k++] = float(clip(z - r));
        row[k++] = float(r / s.length_scale);
        row[k++] = c.phases[i] == s.am ? 1.0f : 0.0f;
        row[k++] = c.phases[i] == s.cbd ? 1.0f : 0.0f;
        row[k++] = float(move);
        row[k++] = float(last_move);
        for (int st = 0; st < s.stages; ++st) row[k++] = st == c.stage ? 1.0f : 0.0f;
        row[k++] = float(cd);
        row[k++] = float(pz / s.prior_scale);
        row[k++] = float(below_press);
        row[k++] = float(stored);
    }
    for (size_t q = 0; q < m; ++q) {
        for (int way = 0; way < 2; ++way) {  // x_receiver - x_sender: delta forwards, -delta backwards
            const size_t e = way * m + q;
            const int64_t a = pairs.ij[2 * q + way], b = pairs.ij[2 * q + 1 - way];
            const double sign = way ? -1.0 : 1.0;
            const double d0 = sign * pairs.delta[3 * q], d1 = sign * pairs.delta[3 * q + 1],
                         d2 = sign * pairs.delta[3 * q + 2];
            const double d = std::sqrt(d0 * d0 + d1 * d1 + d2 * d2);
            float* row = edge + e * kEdgeFeatures;
            row[0] = float(d0 / s.length_scale), row[1] = float(d1 / s.length_scale), row[2] = float(d2 / s.length_scale);
            row[3] = float(d / s.length_scale);
            row[4] = float((c.radii[a] + c.radii[b] - d) / s.overlap_scale);
            row[5] = float(c.radii[a] / s.length_scale), row[6] = float(c.radii[b] / s.length_scale);
            row[7] = c.phases[a] == s.am ? 1.0f : 0.0f, row[8] = c.phases[b] == s.am ? 1.0f : 0.0f;
            snd[e] = first + int32_t(a), rcv[e] = first + int32_t(b);
        }
    }
}

struct AdvanceSettings {
    double max_residual;                // a sphere's residual is capped at this length (um)
    double collector_wall, press_wall;  // how far a sphere may overlap the collector and the press (um)
    const double* tolerance;            // per pair of phases (kPhaseTable^2), or null: no projection
    int iterations;                     // projection sweeps
    const double* settle;               // per pair of phases, or null: the settling sweep's overlaps
    const double* hold;                 // per pair of phases, or null: the overlaps bonds are held at
    double pull_off;                    // how far apart a bond's spheres may come and still be held (um)
};

// In place on x (n, 3): x + prior + the capped residual, z between the walls, then the projection
// (its walls the collector and the press + press_wall), then one settling sweep taking every pair
// back to its `settle` overlap, pushes summed, then one sweep holding the pairs that touched before
// the step (`contacts`: m pairs i, j numbered from `first`, as the step's features found them) at
// their `hold` overlap. Returns false if a position is not finite.
inline bool step_advance(double* x, const double* radii, const uint8_t* phases, int64_t n, double lx, double ly,
                         double press_next, const double* prior, const double* residual, const AdvanceSettings& s,
                         const int32_t* contacts = nullptr, size_t m = 0, int32_t first = 0) {
    std::vector<int64_t> bonds;
    for (size_t q = 0; s.hold && q < m; ++q) {
        const int64_t i = contacts[2 * q] - first, j = contacts[2 * q + 1] - first;
        if (std::isfinite(s.hold[phases[i] * kPhaseTable + phases[j]])) bonds.push_back(i), bonds.push_back(j);
    }
    for (int64_t i = 0; i < n; ++i) {
        const double* u = residual + 3 * i;
        const double size = std::sqrt(u[0] * u[0] + u[1] * u[1] + u[2] * u[2]);
        const double f = size > s.max_residual ? s.max_residual / size : 1.0;  // numpy: min(1, cap / size)
        for (int a = 0; a < 3; ++a) x[3 * i + a] = x[3 * i + a] + prior[3 * i + a] + u[a] * f;
        const double lo = radii[i] - s.collector_wall, hi = press_next - radii[i] + s.press_wall;
        x[3 * i + 2] = std::min(std::max(x[3 * i + 2], lo), hi);
    }
    for (int64_t k = 0; k < 3 * n; ++k)
        if (!std::isfinite(x[k])) return false;
    if (s.tolerance)
        project_overlaps(x, radii, phases, n, lx, ly, press_next + s.press_wall, s.tolerance, s.iterations, true, false);
    if (s.settle) project_overlaps(x, radii, phases, n, lx, ly, press_next + s.press_wall, s.settle, 1, false, false);
    if (s.hold) hold_bonds(x, radii, phases, n, lx, ly, press_next + s.press_wall, bonds, s.hold, s.pull_off);
    return true;
}

}  // namespace calbatch
