// Sphere voxelization onto a regular grid, periodic in x and y.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "calbatch/census.hpp"  // kParallelVoxels

namespace calbatch {

constexpr uint8_t kUncovered = 255;
constexpr uint8_t kPore = 0, kVoid = 4;

// A voxel takes the phase of a sphere covering its centre; where spheres of different phases
// overlap the larger code wins (AM = 2 over CBD = 1). Voxel (z, y, x) has its centre at
// ((x + .5) v, (y + .5) v, z0 + (z + .5) v). Spheres are replicated at +-lx, +-ly so particles
// crossing the periodic boundary appear on both sides. Uncovered voxels at or below the top solid
// slice become pore, those above it void. Returns the top solid slice (-1 if none).
inline int64_t voxelize_spheres(const double* centers, const double* radii, const uint8_t* phases,
                                int64_t n, double lx, double ly, double z0, double v, uint8_t* out,
                                int64_t nz, int64_t ny, int64_t nx) {
    const int64_t plane = ny * nx;
    std::fill(out, out + nz * plane, kUncovered);

    // Bucket spheres by the slices they can touch, so each thread owns whole slices (no races).
    std::vector<std::vector<int64_t>> by_slice(nz);
    for (int64_t s = 0; s < n; ++s) {
        const double zc = centers[3 * s + 2] - z0, r = radii[s];
        const int64_t k0 = std::max<int64_t>(0, (int64_t)std::floor((zc - r) / v - 0.5));
        const int64_t k1 = std::min<int64_t>(nz - 1, (int64_t)std::ceil((zc + r) / v - 0.5));
        for (int64_t k = k0; k <= k1; ++k) by_slice[k].push_back(s);
    }

    int64_t top = -1;
#pragma omp parallel for schedule(dynamic, 1) reduction(max : top) if (nz * plane >= kParallelVoxels)
    for (int64_t k = 0; k < nz; ++k) {
        uint8_t* slice = out + k * plane;
        const double zk = z0 + (k + 0.5) * v;
        bool solid = false;
        for (int64_t s : by_slice[k]) {
            const double dz = zk - centers[3 * s + 2];
            const double rr = radii[s] * radii[s] - dz * dz;
            if (rr < 0) continue;
            const double rc = std::sqrt(rr);
            const uint8_t ph = phases[s];
            for (int iy = -1; iy <= 1; ++iy) {
                const double cy = centers[3 * s + 1] + iy * ly;
                const int64_t y0 = std::max<int64_t>(0, (int64_t)std::ceil((cy - rc) / v - 0.5));
                const int64_t y1 = std::min<int64_t>(ny - 1, (int64_t)std::floor((cy + rc) / v - 0.5));
                for (int64_t y = y0; y <= y1; ++y) {
                    const double dy = (y + 0.5) * v - cy;
                    const double rxx = rr - dy * dy;
                    if (rxx < 0) continue;
                    const double rx = std::sqrt(rxx);
                    uint8_t* row = slice + y * nx;
                    for (int ix = -1; ix <= 1; ++ix) {
                        const double cx = centers[3 * s] + ix * lx;
                        const int64_t x0 = std::max<int64_t>(0, (int64_t)std::ceil((cx - rx) / v - 0.5));
                        const int64_t x1 = std::min<int64_t>(nx - 1, (int64_t)std::floor((cx + rx) / v - 0.5));
                        for (int64_t x = x0; x <= x1; ++x) {
                            uint8_t& cell = row[x];
                            cell = (cell == kUncovered) ? ph : std::max(cell, ph);
                            solid = true;
                        }
                    }
                }
            }
        }
        if (solid && k > top) top = k;
    }

#pragma omp parallel for schedule(static) if (nz * plane >= kParallelVoxels)
    for (int64_t k = 0; k < nz; ++k) {
        uint8_t* slice = out + k * plane;
        const uint8_t fill = k <= top ? kPore : kVoid;
        for (int64_t i = 0; i < plane; ++i)
            if (slice[i] == kUncovered) slice[i] = fill;
    }
    return top;
}

}  // namespace calbatch
