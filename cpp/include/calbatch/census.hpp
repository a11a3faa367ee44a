// Voxel census: phase histogram, phase-pair contact faces and the top solid slice in one pass.
// Volumes are C-ordered uint8 arrays indexed [z][y][x]; z is the thickness (press) axis.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace calbatch {

constexpr int kCodes = 8;  // phase codes 0..7 fit a small table; validated volumes hold {0,1,2,4}

struct Census {
    std::array<int64_t, 256> histogram{};                 // voxels per byte value
    std::array<int64_t, kCodes * kCodes> faces{};         // faces[a*kCodes+b], a != b, symmetric
    int64_t top_solid = -1;                               // highest z holding CBD (1) or AM (2); -1 if none
};

inline bool is_solid(uint8_t v) { return v == 1 || v == 2; }

// Faces are counted between each voxel and its +x, +y, +z neighbour; x and y wrap when periodic,
// z never wraps (current collector below, void above).
inline Census census(const uint8_t* vol, int64_t nz, int64_t ny, int64_t nx, bool periodic_xy) {
    Census total;
    const int64_t plane = ny * nx;
#pragma omp parallel
    {
        Census local;
#pragma omp for schedule(static)
        for (int64_t z = 0; z < nz; ++z) {
            const uint8_t* slice = vol + z * plane;
            const uint8_t* above = (z + 1 < nz) ? slice + plane : nullptr;
            bool has_solid = false;
            for (int64_t y = 0; y < ny; ++y) {
                const uint8_t* row = slice + y * nx;
                const int64_t yn = y + 1 < ny ? y + 1 : (periodic_xy ? 0 : -1);
                const uint8_t* next_row = yn >= 0 ? slice + yn * nx : nullptr;
                for (int64_t x = 0; x < nx; ++x) {
                    const uint8_t v = row[x];
                    local.histogram[v]++;
                    has_solid |= is_solid(v);
                    const int a = v & (kCodes - 1);
                    if (x + 1 < nx || periodic_xy) {
                        const uint8_t w = row[x + 1 < nx ? x + 1 : 0];
                        if (w != v) local.faces[a * kCodes + (w & (kCodes - 1))]++;
                    }
                    if (next_row) {
                        const uint8_t w = next_row[x];
                        if (w != v) local.faces[a * kCodes + (w & (kCodes - 1))]++;
                    }
                    if (above) {
                        const uint8_t w = above[y * nx + x];
                        if (w != v) local.faces[a * kCodes + (w & (kCodes - 1))]++;
                    }
                }
            }
            if (has_solid && z > local.top_solid) local.top_solid = z;
        }
#pragma omp critical
        {
            for (int i = 0; i < 256; ++i) total.histogram[i] += local.histogram[i];
            for (int i = 0; i < kCodes * kCodes; ++i) total.faces[i] += local.faces[i];
            if (local.top_solid > total.top_solid) total.top_solid = local.top_solid;
        }
    }
    // Fold the directed counts into a symmetric table.
    for (int a = 0; a < kCodes; ++a)
        for (int b = a + 1; b < kCodes; ++b) {
            const int64_t s = total.faces[a * kCodes + b] + total.faces[b * kCodes + a];
            total.faces[a * kCodes + b] = total.faces[b * kCodes + a] = s;
        }
    return total;
}

// Sums needed for MSE, MAE and R^2 (paper eq. 3) of a prediction against a ground truth.
struct ErrorSums {
    int64_t n = 0, sse = 0, sae = 0, sum_truth = 0, sum_truth_sq = 0;
};

inline ErrorSums error_sums(const uint8_t* truth, const uint8_t* pred, int64_t n) {
    int64_t sse = 0, sae = 0, st = 0, st2 = 0;
#pragma omp parallel for reduction(+ : sse, sae, st, st2) schedule(static)
    for (int64_t i = 0; i < n; ++i) {
        const int64_t g = truth[i], p = pred[i], d = g - p;
        sse += d * d;
        sae += d < 0 ? -d : d;
        st += g;
        st2 += g * g;
    }
    return {n, sse, sae, st, st2};
}

}  // namespace calbatch
