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

inline double wrap_delta(double d, double length) { return d - length * std::nearbyint(d / length); }

// The largest distance at which two spheres can pair.
inline double pair_reach(const double* radii, int64_t n, double cutoff) {
    if (!radii) return cutoff;
    double rmax = 0;
    for (int64_t i = 0; i < n; ++i) rmax = std::max(rmax, radii[i]);
    return 2 * rmax + cutoff;
}

// Cell offsets along one axis: -1, 0, +1, folded (and deduplicated) where the axis has < 3 cells.
inline std::vector<int64_t> cell_offsets(int64_t cells, bool periodic) {
    if (periodic && cells < 3) {
        std::vector<int64_t> all(cells);
        for (int64_t c = 0; c < cells; ++c) all[c] = c;  // every cell, once (as absolute shifts)
        return all;
    }
    return {-1, 0, 1};
}

// Appends the pairs of one case to `out`, indices shifted by `first` (the case's first particle in
// a batch). Pairs come sorted by (i, j), so the result does not depend on the cell layout.
inline void neighbour_pairs(const double* x, const double* radii, int64_t n, double lx, double ly,
                            double cutoff, int64_t first, Pairs& out) {
    if (n < 2) return;
    const double reach = pair_reach(radii, n, cutoff);
    const double reach2 = reach * reach;
    double zmin = x[2], zmax = x[2];
    for (int64_t i = 1; i < n; ++i) zmin = std::min(zmin, x[3 * i + 2]), zmax = std::max(zmax, x[3 * i + 2]);
    const int64_t ncx = std::max<int64_t>(1, (int64_t)std::floor(lx / reach));
    const int64_t ncy = std::max<int64_t>(1, (int64_t)std::floor(ly / reach));
    const int64_t ncz = std::max<int64_t>(1, std::min<int64_t>(n, (int64_t)std::floor((zmax - zmin) / reach) + 1));
    const double sx = lx / ncx, sy = ly / ncy, sz = reach;

    // Counting sort of the particles by cell (x, y wrapped into the box).
    const int64_t ncell = ncx * ncy * ncz;
    std::vector<int64_t> cell_of(n), start(ncell + 1, 0), members(n);
    for (int64_t i = 0; i < n; ++i) {
        const double px = x[3 * i] - lx * std::floor(x[3 * i] / lx), py = x[3 * i + 1] - ly * std::floor(x[3 * i + 1] / ly);
        const int64_t cx = std::min(ncx - 1, (int64_t)(px / sx)), cy = std::min(ncy - 1, (int64_t)(py / sy));
        const int64_t cz = std::min(ncz - 1, (int64_t)((x[3 * i + 2] - zmin) / sz));
        cell_of[i] = (cz * ncy + cy) * ncx + cx;
        ++start[cell_of[i] + 1];
    }
    for (int64_t c = 0; c < ncell; ++c) start[c + 1] += start[c];
    {
        std::vector<int64_t> fill(start.begin(), start.end() - 1);
        for (int64_t i = 0; i < n; ++i) members[fill[cell_of[i]]++] = i;
    }

    const bool fold_x = ncx < 3, fold_y = ncy < 3;
    const auto offx = cell_offsets(ncx, true), offy = cell_offsets(ncy, true), offz = cell_offsets(ncz, false);
    std::vector<std::pair<int64_t, int64_t>> found;  // (j, pair slot) of the current i, sorted by j
    for (int64_t i = 0; i < n; ++i) {
        const int64_t c = cell_of[i], cx = c % ncx, cy = (c / ncx) % ncy, cz = c / (ncx * ncy);
        const size_t before = out.ij.size() / 2;
        for (int64_t oz : offz) {
            const int64_t z = cz + oz;
            if (z < 0 || z >= ncz) continue;
            for (int64_t oy : offy) {
                const int64_t y = fold_y ? oy : (cy + oy + ncy) % ncy;
                for (int64_t ox : offx) {
                    const int64_t xc = fold_x ? ox : (cx + ox + ncx) % ncx;
                    const int64_t cell = (z * ncy + y) * ncx + xc;
                    for (int64_t k = start[cell]; k < start[cell + 1]; ++k) {
                        const int64_t j = members[k];
                        if (j <= i) continue;
                        const double dx = wrap_delta(x[3 * j] - x[3 * i], lx);
                        const double dy = wrap_delta(x[3 * j + 1] - x[3 * i + 1], ly);
                        const double dz = x[3 * j + 2] - x[3 * i + 2];
                        const double d2 = dx * dx + dy * dy + dz * dz;
                        if (radii) {
                            const double r = radii[i] + radii[j] + cutoff;
                            if (d2 >= r * r) continue;
                        } else if (d2 >= reach2) {
                            continue;
                        }
                        out.ij.push_back(first + i), out.ij.push_back(first + j);
                        out.delta.push_back(dx), out.delta.push_back(dy), out.delta.push_back(dz);
                    }
                }
            }
        }
        // Sort this particle's pairs by j (cells are visited in layout order).
        const size_t after = out.ij.size() / 2;
        if (after - before > 1) {
            found.clear();
            for (size_t p = before; p < after; ++p) found.emplace_back(out.ij[2 * p + 1], (int64_t)p);
            std::sort(found.begin(), found.end());
            std::vector<double> d(3 * (after - before));
            for (size_t q = 0; q < found.size(); ++q)
                for (int a = 0; a < 3; ++a) d[3 * q + a] = out.delta[3 * found[q].second + a];
            for (size_t q = 0; q < found.size(); ++q) {
                out.ij[2 * (before + q) + 1] = found[q].first;
                for (int a = 0; a < 3; ++a) out.delta[3 * (before + q) + a] = d[3 * q + a];
            }
        }
    }
}

}  // namespace calbatch
