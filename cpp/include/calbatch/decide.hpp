// The rollout's decision rule: a model's class scores (pore, CBD, AM, void) per voxel -> phase
// codes, bit-identical to calbatch._reference.decide (numpy). Every float operation is the one
// numpy does, in the same order, in float32: the per-voxel total ((s0 + s1) + s2) + s3, clamped to
// float32(1e-30), then the probabilities s2 / total and s1 / total. The build compiles this with
// -ffp-contract=off and without -ffast-math (CMakeLists.txt), so nothing is fused or reordered.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "calbatch/census.hpp"  // kParallelVoxels

#ifdef __FAST_MATH__
#error "calbatch/decide.hpp must match numpy bit for bit: build without -ffast-math"
#endif

namespace calbatch {

namespace decide_detail {

constexpr uint8_t kPore = 0, kCbd = 1, kAm = 2, kVoid = 4;
constexpr uint8_t kClassCode[4] = {0, 1, 2, 4};

// A float's place in numpy's sort order as an unsigned key: keys compare as the floats do, -0 and
// +0 share one key, and every NaN takes the largest key (np.partition puts NaNs last). Branch-free.
inline uint32_t order_key(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, sizeof bits);
    bits = f == 0.0f ? 0u : bits;  // -0 -> +0
    const uint32_t key = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return f != f ? 0xFFFFFFFFu : key;
}

inline float from_order_key(uint32_t key) {
    const uint32_t bits = (key & 0x80000000u) ? (key & 0x7FFFFFFFu) : ~key;
    float f;
    std::memcpy(&f, &bits, sizeof f);
    return f;
}

// np.argmax over 4 scores: the first maximum, or the first NaN. Branch-free (random scores would
// mispredict every other comparison).
inline int argmax4(const float* s) {
    const float s0 = s[0], s1 = s[1], s2 = s[2], s3 = s[3];
    float best = s0;
    int at = 0;
    at = s1 > best ? 1 : at;
    best = s1 > best ? s1 : best;
    at = s2 > best ? 2 : at;
    best = s2 > best ? s2 : best;
    at = s3 > best ? 3 : at;
    const int first_nan = s0 != s0 ? 0 : s1 != s1 ? 1 : s2 != s2 ? 2 : s3 != s3 ? 3 : -1;
    return first_nan >= 0 ? first_nan : at;
}

// The k-th largest of p (numpy's np.partition(p, n - k)[n - k]) as (value, how many voxels of
// that value to take after every voxel strictly above it), 0 < k <= n. Radix select on the order
// keys: a histogram of the keys' top 12 bits finds the bin holding the k-th, its keys are gathered
// (branch-free), a histogram of their next 10 bits narrows it again, nth_element finds the key.
// Histograms are four interleaved copies, so a run of equal keys makes four independent chains of
// increments, not one.
struct Threshold {
    float value;
    int64_t ties;  // voxels equal to value to take, lowest index first
};

constexpr int kHistCopies = 4;

// Histogram of (keys[i] >> shift) & (bins - 1) into h (kHistCopies x bins, summed into the first),
// then the bin holding the r-th largest: returns it, adds to `above` the keys in the bins above.
template <typename Key>
inline uint32_t radix_bin(int64_t n, Key key_of, int shift, uint32_t bins, int64_t r, int64_t& above,
                          std::vector<uint32_t>& hist) {
    hist.assign(kHistCopies * bins, 0);
    uint32_t* h = hist.data();
    const uint32_t mask = bins - 1;
    const int64_t n4 = n - n % kHistCopies;
    for (int64_t i = 0; i < n4; i += kHistCopies)
        for (int c = 0; c < kHistCopies; ++c) h[c * bins + ((key_of(i + c) >> shift) & mask)]++;
    for (int64_t i = n4; i < n; ++i) h[(key_of(i) >> shift) & mask]++;
    for (uint32_t b = 0; b < bins; ++b)
        for (int c = 1; c < kHistCopies; ++c) h[b] += h[c * bins + b];
    uint32_t bin = mask;
    for (; above + h[bin] < r; --bin) above += h[bin];
    return bin;
}

inline Threshold kth_largest(const float* p, int64_t n, int64_t k, std::vector<uint32_t>& hist,
                             std::vector<uint32_t>& cand) {
    constexpr int kShift1 = 20, kShift2 = 10;
    int64_t above = 0;  // keys above the bins chosen so far
    const uint32_t bin1 = radix_bin(n, [p](int64_t i) { return order_key(p[i]); }, kShift1, 1u << 12, k, above, hist);
    const int64_t nan_count = hist[(1u << 12) - 1];  // only NaNs have keys in the top bin (+inf's is 0xFF800000)
    cand.resize(hist[bin1] + 1);  // + 1: the branch-free gather writes one past the last key it keeps
    uint32_t* c = cand.data();
    int64_t m = 0;
    for (int64_t j = 0; j < n; ++j) {
        const uint32_t key = order_key(p[j]);
        c[m] = key;
        m += (key >> kShift1) == bin1;
    }
    const uint32_t bin2 = radix_bin(m, [c](int64_t i) { return c[i]; }, kShift2, 1u << 10, k, above, hist);
    const uint32_t prefix = (bin1 << 10) | bin2;
    int64_t m2 = 0;
    for (int64_t j = 0; j < m; ++j) {  // in place: m2 <= j
        const uint32_t key = c[j];
        c[m2] = key;
        m2 += (key >> kShift2) == prefix;
    }
    const int64_t r = k - above;  // the r-th largest of the m2 keys left, 1 <= r <= m2
    std::nth_element(c, c + (r - 1), c + m2, [](uint32_t x, uint32_t y) { return x > y; });
    const uint32_t key = c[r - 1];
    if (key == 0xFFFFFFFFu) return {std::nanf(""), 0};  // NaN: numpy takes nothing (> and == NaN are false)
    for (int64_t j = 0; j < r - 1; ++j) above += c[j] > key;  // the keys nth_element put before it
    // numpy takes every p > value (NaNs are not), then ties up to k.
    return {from_order_key(key), k - (above - nan_count)};
}

// code[i] = phase for the k largest p[i] (numpy's _top_k: every p above the threshold, then the
// lowest-index voxels equal to it until k), whatever code[i] held before.
inline void take_top_k(const float* p, int64_t n, int64_t k, uint8_t* code, uint8_t phase,
                       std::vector<uint32_t>& hist, std::vector<uint32_t>& cand) {
    k = k < 0 ? 0 : (k > n ? n : k);
    if (k == 0) return;
    const Threshold t = kth_largest(p, n, k, hist, cand);
    const float thr = t.value;
    for (int64_t i = 0; i < n; ++i) code[i] = p[i] > thr ? phase : code[i];  // vectorized, branch-free
    int64_t ties = t.ties;
    for (int64_t i = 0; i < n && ties > 0; ++i) {  // the lowest-index ties
        const bool tie = p[i] == thr;
        code[i] = tie ? phase : code[i];
        ties -= tie;
    }
}

// The highest of the first `slices` slices holding AM or CBD, -1 if none.
inline int64_t top_solid(const uint8_t* code, int64_t slices, int64_t plane) {
    for (int64_t z = slices - 1; z >= 0; --z) {
        const uint8_t* s = code + z * plane;
        uint8_t any = 0;
        for (int64_t i = 0; i < plane; ++i) any |= static_cast<uint8_t>(s[i] == kAm || s[i] == kCbd);
        if (any) return z;
    }
    return -1;
}

// The voxelizer's void rule over codes (nz, plane) whose solids lie in the first `slices` slices:
// above the highest slice holding AM or CBD void, elsewhere every non-solid voxel pore.
inline void void_rule(uint8_t* out, int64_t nz, int64_t plane, int64_t slices) {
    const int64_t top = top_solid(out, slices, plane);
    for (int64_t i = 0; i < (top + 1) * plane; ++i) {
        const uint8_t c = out[i];
        out[i] = (c == kAm) | (c == kCbd) ? c : kPore;
    }
    std::memset(out + (top + 1) * plane, kVoid, static_cast<size_t>((nz - top - 1) * plane));
}

}  // namespace decide_detail

// Scratch space of decide, kept between calls (a rollout decides every step).
struct DecideScratch {
    std::vector<float> p_am, p_cbd;
    std::vector<uint32_t> hist, cand;
};

// Codes (nz, ny, nx) into `out` from class scores (nz, ny, nx, 4) float32. Slices from first_void
// up are void. With top_k false the rule is argmax; else the n_am voxels most probably AM are AM,
// then the n_cbd most probably CBD among the rest CBD (ties by voxel index), every other pore.
// Then the voxelizer's void rule: above the highest slice holding AM or CBD void, elsewhere every
// non-solid voxel pore.
inline void decide(const float* scores, int64_t nz, int64_t ny, int64_t nx, int64_t first_void, bool top_k,
                   int64_t n_am, int64_t n_cbd, uint8_t* out, DecideScratch& scratch) {
    using namespace decide_detail;
    const int64_t plane = ny * nx;
    const int64_t fv = first_void < 0 ? 0 : (first_void > nz ? nz : first_void);
    const int64_t n = fv * plane;
    if (!top_k) {
#pragma omp parallel for schedule(static) if (n >= kParallelVoxels)
        for (int64_t i = 0; i < n; ++i) out[i] = kClassCode[argmax4(scores + 4 * i)];
    } else {
        scratch.p_am.resize(n);
        scratch.p_cbd.resize(n);
        float* pa = scratch.p_am.data();
        float* pc = scratch.p_cbd.data();
        const float eps = static_cast<float>(1e-30);  // np.float32(1e-30): the double, rounded to float
#pragma omp parallel for schedule(static) if (n >= kParallelVoxels)
        for (int64_t i = 0; i < n; ++i) {
            const float* s = scores + 4 * i;
            float total = s[0] + s[1];
            total = total + s[2];
            total = total + s[3];
            if (total < eps) total = eps;  // np.maximum: a NaN total stays NaN
            pa[i] = s[2] / total;
            pc[i] = s[1] / total;
            out[i] = kPore;
        }
        take_top_k(pa, n, n_am, out, kAm, scratch.hist, scratch.cand);
        for (int64_t i = 0; i < n; ++i) pc[i] = out[i] == kAm ? -1.0f : pc[i];  // AM first, then CBD among the rest
        take_top_k(pc, n, n_cbd, out, kCbd, scratch.hist, scratch.cand);  // written after AM, as numpy: a voxel in both ends CBD
    }
    void_rule(out, nz, plane, fv);
}

}  // namespace calbatch
