// Voxel census: phase counts, phase-pair contact faces and the top solid slice of a volume.
// Volumes are C-ordered uint8 arrays indexed [z][y][x]; z is the thickness (press) axis.
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace calbatch {

constexpr int kCodes = 8;

// Volumes below this many voxels run on one thread: a pass over the paper's 76x76x125 grid takes
// well under a millisecond, less than one scheduler time slice, so a second OpenMP thread that the
// OS has parked (other MPI ranks, a DEM job) would cost more at the barrier than it saves.
constexpr int64_t kParallelVoxels = int64_t(1) << 22;  // contact faces are reported in a kCodes x kCodes table

// Each valid phase code maps to one bit (pore 0 -> 8, CBD 1 -> 1, AM 2 -> 2, void 4 -> 4), so the
// OR of two different neighbours is a two-bit mask naming the pair. This keeps the inner loops free
// of branches and table look-ups, which lets the compiler vectorize them.
inline uint8_t phase_bit(uint8_t v) { return static_cast<uint8_t>(v | ((v == 0) << 3)); }

constexpr int kPairs = 6;
constexpr uint8_t kPairMask[kPairs] = {8 | 1, 8 | 2, 1 | 2, 8 | 4, 1 | 4, 2 | 4};
constexpr int kPairA[kPairs] = {0, 0, 1, 0, 1, 2};
constexpr int kPairB[kPairs] = {1, 2, 2, 4, 4, 4};
constexpr int kPhases = 4;
constexpr uint8_t kPhaseCode[kPhases] = {0, 1, 2, 4};

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CALBATCH_SIMD_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define CALBATCH_SIMD_CLONES
#endif

// Adds to pairs[k] the number of positions i where {p[i], q[i]} is pair k.
CALBATCH_SIMD_CLONES
inline void count_pairs(const uint8_t* p, const uint8_t* q, int64_t n, int64_t* pairs) {
    constexpr int64_t kChunk = 224;  // <= 255 so byte-wide lane counters cannot overflow
    uint8_t both[kChunk];
    for (int64_t start = 0; start < n; start += kChunk) {
        const int64_t len = start + kChunk < n ? kChunk : n - start;
        for (int64_t i = 0; i < len; ++i) both[i] = phase_bit(p[start + i]) | phase_bit(q[start + i]);
        for (int k = 0; k < kPairs; ++k) {
            const uint8_t mask = kPairMask[k];
            uint8_t count = 0;
            for (int64_t i = 0; i < len; ++i) count += both[i] == mask;
            pairs[k] += count;
        }
    }
}

// Adds to counts[k] the number of voxels holding phase kPhaseCode[k].
CALBATCH_SIMD_CLONES
inline void count_phases(const uint8_t* v, int64_t n, int64_t* counts) {
    constexpr int64_t kChunk = 224;
    for (int64_t start = 0; start < n; start += kChunk) {
        const int64_t len = start + kChunk < n ? kChunk : n - start;
        for (int k = 0; k < kPhases; ++k) {
            const uint8_t code = kPhaseCode[k];
            uint8_t count = 0;
            for (int64_t i = 0; i < len; ++i) count += v[start + i] == code;
            counts[k] += count;
        }
    }
}

struct Census {
    std::array<int64_t, 256> histogram{};          // voxels per byte value
    std::array<int64_t, kCodes * kCodes> faces{};  // faces[a*kCodes+b] = faces[b*kCodes+a], a != b
    int64_t top_solid = -1;                        // highest z holding CBD (1) or AM (2); -1 if none
};

// Faces are counted between each voxel and its +x, +y, +z neighbour; x and y wrap when periodic,
// z never wraps (current collector below, void above). Pair counts assume codes in {0, 1, 2, 4};
// the histogram is exact for any byte value so callers can validate with it.
inline Census census(const uint8_t* vol, int64_t nz, int64_t ny, int64_t nx, bool periodic_xy) {
    const int64_t plane = ny * nx;
    int64_t pairs[kPairs] = {0}, phases[kPhases] = {0}, top = -1;
#pragma omp parallel if (nz * plane >= kParallelVoxels)
    {
        int64_t my_pairs[kPairs] = {0}, my_phases[kPhases] = {0};
        std::vector<uint8_t> wrap_left(ny), wrap_right(ny);
#pragma omp for schedule(static) reduction(max : top)
        for (int64_t z = 0; z < nz; ++z) {
            const uint8_t* s = vol + z * plane;
            int64_t slice_phases[kPhases] = {0};
            count_phases(s, plane, slice_phases);
            if (slice_phases[1] + slice_phases[2] > 0 && z > top) top = z;
            for (int k = 0; k < kPhases; ++k) my_phases[k] += slice_phases[k];
            // +x: the flat slice against itself shifted by one; the pairs this makes across row
            // ends (x = nx-1 with the next row's x = 0) are removed, the periodic wrap pairs added.
            count_pairs(s, s + 1, plane - 1, my_pairs);
            int64_t seam[kPairs] = {0};
            for (int64_t y = 0; y + 1 < ny; ++y) {
                wrap_left[y] = s[y * nx + nx - 1];
                wrap_right[y] = s[(y + 1) * nx];
            }
            count_pairs(wrap_left.data(), wrap_right.data(), ny - 1, seam);
            for (int k = 0; k < kPairs; ++k) my_pairs[k] -= seam[k];
            if (periodic_xy) {
                for (int64_t y = 0; y < ny; ++y) {
                    wrap_left[y] = s[y * nx + nx - 1];
                    wrap_right[y] = s[y * nx];
                }
                count_pairs(wrap_left.data(), wrap_right.data(), ny, my_pairs);
            }
            // +y: rows against the next rows; the last row against the first when periodic.
            count_pairs(s, s + nx, plane - nx, my_pairs);
            if (periodic_xy) count_pairs(s + plane - nx, s, nx, my_pairs);
            // +z: the slice against the one above.
            if (z + 1 < nz) count_pairs(s, s + plane, plane, my_pairs);
        }
#pragma omp critical
        {
            for (int k = 0; k < kPairs; ++k) pairs[k] += my_pairs[k];
            for (int k = 0; k < kPhases; ++k) phases[k] += my_phases[k];
        }
    }
    Census c;
    c.top_solid = top;
    for (int k = 0; k < kPairs; ++k)
        c.faces[kPairA[k] * kCodes + kPairB[k]] = c.faces[kPairB[k] * kCodes + kPairA[k]] = pairs[k];
    int64_t known = 0;
    for (int k = 0; k < kPhases; ++k) known += c.histogram[kPhaseCode[k]] = phases[k];
    if (known != nz * plane) {  // unknown codes present: an exact histogram for the caller's error
        c.histogram.fill(0);
        for (int64_t i = 0; i < nz * plane; ++i) c.histogram[vol[i]]++;
    }
    return c;
}

// Sums needed for MSE, MAE and R^2 (paper eq. 3) of a prediction against a ground truth.
struct ErrorSums {
    int64_t n = 0, sse = 0, sae = 0, sum_truth = 0, sum_truth_sq = 0;
};

CALBATCH_SIMD_CLONES
inline ErrorSums error_sums(const uint8_t* truth, const uint8_t* pred, int64_t n) {
    constexpr int64_t kChunk = 1 << 16;  // 32-bit lane sums cannot overflow within a chunk
    const int64_t chunks = (n + kChunk - 1) / kChunk;
    int64_t sse = 0, sae = 0, st = 0, st2 = 0;
#pragma omp parallel for reduction(+ : sse, sae, st, st2) schedule(static) if (n >= kParallelVoxels)
    for (int64_t c = 0; c < chunks; ++c) {
        const int64_t start = c * kChunk, end = start + kChunk < n ? start + kChunk : n;
        int32_t e2 = 0, e1 = 0, g1 = 0, g2 = 0;
        for (int64_t i = start; i < end; ++i) {
            const int32_t g = truth[i], d = g - pred[i];
            e2 += d * d;
            e1 += d < 0 ? -d : d;
            g1 += g;
            g2 += g * g;
        }
        sse += e2, sae += e1, st += g1, st2 += g2;
    }
    return {n, sse, sae, st, st2};
}

}  // namespace calbatch
