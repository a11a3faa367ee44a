// The rollout loop's per-step work for one case of a batch, in place: the network's input window
// (the 3 past frames, channels last) and the next frame from the network's output. The batch
// loop and the bindings are in cpp/src/rollout_bindings.cpp; Python keeps only the network call.
//
// A case's frames live in a buffer of `slots` frames, frame k in slot k % slots: slots = 3 is a
// ring of the last three (all a free rollout needs), slots = the frame count the whole series.
#pragma once
#include <cmath>
#include <cstdint>

#include "calbatch/decide.hpp"

namespace calbatch {

// How the core decides a next frame: argmax; the AM and CBD counts of the previous frame; counts
// the caller gives; the nearest code of a regressed output.
enum class NextFrameRule { Argmax, Conserve, Counts, Nearest };

struct RolloutCase {
    uint8_t* frames;     // slots x nvox codes
    int64_t slots;
    int64_t t;           // current frame: the step predicts frame t + 1
    int64_t first_void;  // slices of frame t + 1 from here up lie above the press
    int64_t n_am, n_cbd; // rule Counts: the counts the caller gives
};

inline uint8_t* frame_slot(const RolloutCase& c, int64_t k, int64_t nvox) { return c.frames + (k % c.slots) * nvox; }

// The network input (nvox, 3) of the step t -> t + 1: frames t-2, t-1, t (oldest first, indices
// below 0 are frame 0), as calbatch.dataset.past_indices.
inline void assemble_window(const RolloutCase& c, int64_t nvox, uint8_t* out) {
    const uint8_t* a = frame_slot(c, c.t >= 2 ? c.t - 2 : 0, nvox);
    const uint8_t* b = frame_slot(c, c.t >= 1 ? c.t - 1 : 0, nvox);
    const uint8_t* d = frame_slot(c, c.t, nvox);
    for (int64_t i = 0; i < nvox; ++i) {
        out[3 * i] = a[i];
        out[3 * i + 1] = b[i];
        out[3 * i + 2] = d[i];
    }
}

namespace rollout_detail {

// np.argmin over |o - code| for the codes 0, 1, 2, 4 in float32: the first minimum, or the first
// NaN (a NaN o makes all four NaN: index 0).
inline int nearest_code_index(float o) {
    const float d0 = std::fabs(o - 0.0f), d1 = std::fabs(o - 1.0f), d2 = std::fabs(o - 2.0f), d3 = std::fabs(o - 4.0f);
    if (o != o) return 0;
    int at = 0;
    float best = d0;
    if (d1 < best) at = 1, best = d1;
    if (d2 < best) at = 2, best = d2;
    if (d3 < best) at = 3;
    return at;
}

}  // namespace rollout_detail

// Frame t + 1 of a case from its network output, written into its slot: class scores (nvox, 4)
// by decide (rules Argmax, Conserve: the AM and CBD counts of frame t, Counts: the case's
// counts), or regressed codes (nvox) by the nearest code then the void rule (paper models), as
// calbatch.surrogate.rules.decide.
inline void advance(const float* output, const RolloutCase& c, int64_t nz, int64_t ny, int64_t nx,
                    NextFrameRule rule, DecideScratch& scratch) {
    const int64_t nvox = nz * ny * nx;
    uint8_t* next = frame_slot(c, c.t + 1, nvox);
    if (rule == NextFrameRule::Nearest) {
        for (int64_t i = 0; i < nvox; ++i)
            next[i] = decide_detail::kClassCode[rollout_detail::nearest_code_index(output[i])];
        decide_detail::void_rule(next, nz, ny * nx, nz);
        return;
    }
    int64_t n_am = c.n_am, n_cbd = c.n_cbd;
    if (rule == NextFrameRule::Conserve) {
        const uint8_t* previous = frame_slot(c, c.t, nvox);
        n_am = n_cbd = 0;
        for (int64_t i = 0; i < nvox; ++i) {
            n_am += previous[i] == decide_detail::kAm;
            n_cbd += previous[i] == decide_detail::kCbd;
        }
    }
    decide(output, nz, ny, nx, c.first_void, rule != NextFrameRule::Argmax, n_am, n_cbd, next, scratch);
}

}  // namespace calbatch
