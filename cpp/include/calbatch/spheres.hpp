// Sphere decomposition of a voxel electrode (periodic in x and y): per solid phase, an exact
// Euclidean distance transform, its local maxima as candidate balls taken largest first while they
// cover enough new voxels (a greedy cover), then the largest ball over each voxel still uncovered.
// Balls stay inside what the voxelizer will paint as their phase: AM balls inside the AM, CBD balls
// inside the solid (the AM paints over CBD), so re-voxelizing them never adds solid where there was
// none. Distances are in voxels; the caller scales to um.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <utility>
#include <vector>

namespace calbatch {

// Squared distance transform of one line (Felzenszwalb & Huttenlocher 2012): d[q] = min_p f[p] + (q-p)^2.
inline void edt_line(const double* f, int64_t n, double* d, std::vector<int64_t>& v, std::vector<double>& zb) {
    const double inf = std::numeric_limits<double>::infinity();
    v.assign(n, 0), zb.assign(n + 1, 0);
    int64_t k = -1;
    for (int64_t q = 0; q < n; ++q) {
        if (f[q] == inf) continue;
        while (k >= 0) {
            const double s = ((f[q] + q * q) - (f[v[k]] + v[k] * v[k])) / (2.0 * (q - v[k]));
            if (s > zb[k]) break;
            --k;
        }
        ++k, v[k] = q, zb[k] = k == 0 ? -inf : ((f[q] + q * q) - (f[v[k - 1]] + v[k - 1] * v[k - 1])) / (2.0 * (q - v[k - 1]));
        zb[k + 1] = inf;
    }
    if (k < 0) {
        std::fill(d, d + n, inf);
        return;
    }
    int64_t j = 0;
    for (int64_t q = 0; q < n; ++q) {
        while (zb[j + 1] < q) ++j;
        d[q] = (q - v[j]) * double(q - v[j]) + f[v[j]];
    }
}

// Squared distance (voxels^2) from every voxel to the nearest voxel outside `fg`; beyond z = -1 and
// z = nz lies background (the collector and the void), x and y wrap (three periods per line).
inline std::vector<double> edt(const std::vector<uint8_t>& fg, int64_t nz, int64_t ny, int64_t nx) {
    std::vector<double> d(nz * ny * nx);
    for (int64_t i = 0; i < ny * nx; ++i) {  // along z: a two-way scan
        double run = 0;
        for (int64_t z = 0; z < nz; ++z) d[z * ny * nx + i] = run = fg[z * ny * nx + i] ? run + 1 : 0;
        run = 0;
        for (int64_t z = nz - 1; z >= 0; --z) {
            run = fg[z * ny * nx + i] ? run + 1 : 0;
            d[z * ny * nx + i] = std::min(d[z * ny * nx + i], run);
            d[z * ny * nx + i] *= d[z * ny * nx + i];
        }
    }
    auto periodic = [&](int64_t lines, int64_t len, auto at) {
        std::vector<double> f(3 * len), out(3 * len), zb;
        std::vector<int64_t> v;
        for (int64_t l = 0; l < lines; ++l) {
            for (int64_t q = 0; q < len; ++q) f[q] = f[q + len] = f[q + 2 * len] = at(l, q);
            edt_line(f.data(), 3 * len, out.data(), v, zb);
            for (int64_t q = 0; q < len; ++q) at(l, q) = out[q + len];
        }
    };
    periodic(nz * nx, ny, [&](int64_t l, int64_t q) -> double& { return d[((l / nx) * ny + q) * nx + l % nx]; });
    periodic(nz * ny, nx, [&](int64_t l, int64_t q) -> double& { return d[l * nx + q]; });
    return d;
}

struct SphereSet {
    std::vector<double> centres;  // (k, 3) voxel units, x y z, voxel centres at (i + .5)
    std::vector<double> r2;       // squared radius of each ball in voxels^2: it paints offsets < r2
    std::vector<uint8_t> phases;
};

// Offsets (dz, dy, dx) with dz^2 + dy^2 + dx^2 < r2, cached per r2.
class Balls {
   public:
    const std::vector<std::array<int32_t, 3>>& of(int64_t r2) {
        auto it = cache_.find(r2);
        if (it != cache_.end()) return it->second;
        std::vector<std::array<int32_t, 3>> offs;
        const int32_t r = (int32_t)std::ceil(std::sqrt((double)r2));
        for (int32_t a = -r; a <= r; ++a)
            for (int32_t b = -r; b <= r; ++b)
                for (int32_t c = -r; c <= r; ++c)
                    if (a * a + b * b + c * c < r2) offs.push_back({a, b, c});
        return cache_.emplace(r2, std::move(offs)).first->second;
    }

   private:
    std::map<int64_t, std::vector<std::array<int32_t, 3>>> cache_;
};

// Decomposes the voxels equal to `phase`. fit[i]: the largest r2 a ball centred at voxel i may
// have (0 outside the phase); covered: the phase's voxels painted so far (updated).
// min_gain: a candidate ball is taken if it paints at least this fraction of its phase's voxels anew;
// min_r2: no ball smaller than this.
inline void decompose_phase(const uint8_t* vol, int64_t nz, int64_t ny, int64_t nx, uint8_t phase,
                            const std::vector<int64_t>& fit, double min_gain, int64_t min_r2, SphereSet& out) {
    const int64_t plane = ny * nx, nvox = nz * plane;
    std::vector<uint8_t> covered(nvox, 0);
    Balls balls;
    auto at = [&](int64_t z, int64_t y, int64_t x) { return (z * ny + (y + ny) % ny) * nx + (x + nx) % nx; };
    // Paints (or, with paint false, counts) the phase's uncovered voxels in the ball at voxel i;
    // returns (new voxels, the phase's voxels in the ball).
    auto sweep = [&](int64_t i, int64_t r2, bool paint) {
        const int64_t z = i / plane, y = (i / nx) % ny, x = i % nx;
        int64_t fresh = 0, mine = 0;
        for (const auto& o : balls.of(r2)) {
            const int64_t zz = z + o[0];
            if (zz < 0 || zz >= nz) continue;
            const int64_t j = at(zz, y + o[1], x + o[2]);
            if (vol[j] != phase) continue;
            ++mine;
            if (covered[j]) continue;
            ++fresh;
            if (paint) covered[j] = 1;
        }
        return std::pair<int64_t, int64_t>(fresh, mine);
    };
    auto take = [&](int64_t i, int64_t r2) {
        sweep(i, r2, true);
        const int64_t z = i / plane, y = (i / nx) % ny, x = i % nx;
        out.centres.insert(out.centres.end(), {x + 0.5, y + 0.5, z + 0.5});
        out.r2.push_back((double)r2);
        out.phases.push_back(phase);
    };

    // Candidates: the phase's voxels whose fit is a maximum among their 26 same-phase neighbours.
    std::vector<int64_t> cand;
    for (int64_t i = 0; i < nvox; ++i) {
        if (vol[i] != phase || fit[i] < min_r2) continue;
        const int64_t z = i / plane, y = (i / nx) % ny, x = i % nx;
        bool peak = true;
        for (int dz = -1; dz <= 1 && peak; ++dz)
            for (int dy = -1; dy <= 1 && peak; ++dy)
                for (int dx = -1; dx <= 1; ++dx) {
                    if (z + dz < 0 || z + dz >= nz) continue;
                    const int64_t j = at(z + dz, y + dy, x + dx);
                    if (vol[j] == phase && fit[j] > fit[i]) { peak = false; break; }
                }
        if (peak) cand.push_back(i);
    }
    auto larger_first = [&](int64_t a, int64_t b) { return fit[a] != fit[b] ? fit[a] > fit[b] : a < b; };
    std::sort(cand.begin(), cand.end(), larger_first);
    for (int64_t i : cand) {
        const auto [fresh, mine] = sweep(i, fit[i], false);
        if (fresh > 0 && fresh >= min_gain * (double)mine) take(i, fit[i]);
    }

    // What is left: each uncovered voxel, largest fit first, gets the largest ball that covers it.
    int64_t reach2 = 0;
    for (int64_t i = 0; i < nvox; ++i)
        if (vol[i] == phase) reach2 = std::max(reach2, fit[i]);
    std::vector<int64_t> left;
    for (int64_t i = 0; i < nvox; ++i)
        if (vol[i] == phase && !covered[i]) left.push_back(i);
    std::sort(left.begin(), left.end(), larger_first);
    const auto& around = balls.of(reach2);
    for (int64_t u : left) {
        if (covered[u]) continue;
        const int64_t z = u / plane, y = (u / nx) % ny, x = u % nx;
        int64_t best = -1;
        for (const auto& o : around) {
            const int64_t zz = z + o[0];
            if (zz < 0 || zz >= nz) continue;
            const int64_t j = at(zz, y + o[1], x + o[2]);
            const int64_t d2 = (int64_t)o[0] * o[0] + (int64_t)o[1] * o[1] + (int64_t)o[2] * o[2];
            if (fit[j] > d2 && fit[j] >= min_r2 && (best < 0 || larger_first(j, best))) best = j;
        }
        if (best >= 0) take(best, fit[best]);
    }
}

// The whole electrode: AM (code 2) balls fit inside the AM; CBD (code 1) balls inside the solid,
// no larger than the largest ball that fits inside the CBD alone (so they do not grow deep into the AM).
inline SphereSet decompose(const uint8_t* vol, int64_t nz, int64_t ny, int64_t nx, double min_gain, int64_t min_r2) {
    const int64_t nvox = nz * ny * nx;
    SphereSet out;
    std::vector<uint8_t> fg(nvox);
    auto fit_of = [&](const std::vector<double>& d2, uint8_t phase, int64_t cap) {
        std::vector<int64_t> fit(nvox, 0);
        for (int64_t i = 0; i < nvox; ++i)
            if (vol[i] == phase) fit[i] = std::min<int64_t>(cap, (int64_t)d2[i]);
        return fit;
    };
    const int64_t no_cap = std::numeric_limits<int64_t>::max();

    for (int64_t i = 0; i < nvox; ++i) fg[i] = vol[i] == 2;
    decompose_phase(vol, nz, ny, nx, 2, fit_of(edt(fg, nz, ny, nx), 2, no_cap), min_gain, min_r2, out);

    for (int64_t i = 0; i < nvox; ++i) fg[i] = vol[i] == 1;
    const auto own = edt(fg, nz, ny, nx);
    int64_t cap = 0;
    for (int64_t i = 0; i < nvox; ++i)
        if (vol[i] == 1) cap = std::max(cap, (int64_t)own[i]);
    for (int64_t i = 0; i < nvox; ++i) fg[i] = vol[i] == 1 || vol[i] == 2;
    decompose_phase(vol, nz, ny, nx, 1, fit_of(edt(fg, nz, ny, nx), 1, cap), min_gain, min_r2, out);
    return out;
}

}  // namespace calbatch
