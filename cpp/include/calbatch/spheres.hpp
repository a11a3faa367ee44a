// Sphere decomposition of a voxel electrode (periodic in x and y): per solid phase, an exact
// Euclidean distance transform, its local maxima as candidate balls, each refined off the grid and
// taken largest first while it covers enough new voxels (a greedy cover), then balls for what is left.
// A ball must not paint what its phase would change: AM balls stay in the AM, CBD balls in the
// solid (the AM paints over CBD), but for a refined ball's few voxels traded for a closer fit.
// Distances are in voxels; the caller scales to um.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <limits>
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
    std::vector<double> centres;  // (k, 3) in voxels, x y z; voxel i's centre is at i + 0.5
    std::vector<double> radii;    // in voxels: a ball paints the voxel centres within its radius
    std::vector<uint8_t> phases;
};

// Offsets (dz, dy, dx) within a reach, nearest first: the voxel-centred ball of squared radius r2
// (painting the offsets < r2) is a prefix of the list.
struct Offsets {
    std::vector<std::array<int32_t, 3>> o;
    std::vector<int64_t> d2;
    explicit Offsets(int64_t reach2) {
        const int32_t r = (int32_t)std::ceil(std::sqrt((double)reach2));
        for (int32_t a = -r; a <= r; ++a)
            for (int32_t b = -r; b <= r; ++b)
                for (int32_t c = -r; c <= r; ++c)
                    if (a * a + b * b + c * c < reach2) o.push_back({a, b, c});
        std::stable_sort(o.begin(), o.end(), [](const auto& p, const auto& q) {
            return p[0] * p[0] + p[1] * p[1] + p[2] * p[2] < q[0] * q[0] + q[1] * q[1] + q[2] * q[2];
        });
        for (const auto& p : o) d2.push_back(p[0] * p[0] + p[1] * p[1] + p[2] * p[2]);
    }
    size_t prefix(int64_t r2) const { return std::lower_bound(d2.begin(), d2.end(), r2) - d2.begin(); }
};

struct CoverSettings {  // set by the caller (calbatch.electrode.particles)
    double min_gain;  // a ball is taken if it paints this fraction of its phase's voxels anew
    int64_t min_r2;   // no ball of squared radius (voxels^2) below this
    double penalty;   // a refined ball scores its phase's voxels minus this many per foreign voxel
    double grow;      // and may grow up to this many voxels beyond the distance transform
};

// Decomposes the voxels equal to `phase`. fit[i]: the largest r2 a ball centred at voxel i has
// without painting a foreign voxel (0 outside the phase); foreign(j): a voxel the phase must not
// paint (it would change its code). Each candidate (a maximum of fit, largest first) is refined
// off the voxel grid, since a voxel-centred ball misses part of a sphere's surface shell: its centre
// moves by 1/4, then 1/8, 1/16 and 1/32 voxel (coordinate ascent, within half a voxel), its radius
// by 1/32, to maximize its phase's voxels painted minus cfg.penalty per foreign one. Voxels still
// uncovered then get their own voxel-centred ball, which paints nothing foreign.
template <typename Foreign>
inline void decompose_phase(const uint8_t* vol, int64_t nz, int64_t ny, int64_t nx, uint8_t phase,
                            const std::vector<int64_t>& fit, Foreign foreign, const CoverSettings& cfg,
                            SphereSet& out) {
    const int64_t plane = ny * nx, nvox = nz * plane;
    int64_t fit_max = 0;
    for (int64_t i = 0; i < nvox; ++i)
        if (vol[i] == phase) fit_max = std::max(fit_max, fit[i]);
    if (fit_max == 0) return;
    std::vector<uint8_t> covered(nvox, 0);
    auto index = [&](int64_t z, int64_t y, int64_t x) { return (z * ny + (y % ny + ny) % ny) * nx + (x % nx + nx) % nx; };
    auto add = [&](double cx, double cy, double cz, double r) {
        out.centres.insert(out.centres.end(), {cx, cy, cz});
        out.radii.push_back(r);
        out.phases.push_back(phase);
    };

    // A candidate's neighbourhood: offsets from its voxel and weights (+1 own phase, -penalty
    // foreign; beyond the grid in z nothing is known: a cropped electrode may go on there).
    struct Near { double dx, dy, dz, w; };
    std::vector<Near> near;
    std::vector<double> bins;
    constexpr double kStep = 0.25, kBin = 1.0 / 32;
    auto refine = [&](int64_t i, double& bx, double& by, double& bz, double& br) {
        const int64_t z = i / plane, y = (i / nx) % ny, x = i % nx;
        const double r0 = std::sqrt((double)fit[i]), rmin = std::max(0.5, r0 - 1.0), rmax = r0 + cfg.grow;
        // The centre moves less than kReach: voxels nearer than rmin - kReach are always painted
        // (their weight sums to `inner`), those beyond rmax + kReach never.
        constexpr double kReach = 0.87;
        const int64_t h = (int64_t)std::ceil(rmax + kReach);
        const double in2 = std::max(0.0, rmin - kReach) * std::max(0.0, rmin - kReach), out2 = (rmax + kReach) * (rmax + kReach);
        double inner = 0;
        near.clear();
        for (int64_t a = -h; a <= h; ++a)
            for (int64_t b = -h; b <= h; ++b)
                for (int64_t c = -h; c <= h; ++c) {
                    const double d2 = double(a * a + b * b + c * c);
                    if (d2 > out2) continue;
                    if (z + a < 0 || z + a >= nz) continue;
                    const int64_t j = index(z + a, y + b, x + c);
                    const double w = foreign(j) ? -cfg.penalty : vol[j] == phase ? 1.0 : 0.0;
                    if (w == 0) continue;
                    if (d2 < in2) inner += w;
                    else near.push_back({(double)c, (double)b, (double)a, w});
                }
        const int nb = (int)std::ceil((rmax - rmin) / kBin) + 1;
        // The best radius for a centre offset (ox, oy, oz): bin k holds the voxels painted once r >= rmin + k kBin.
        auto score = [&](double ox, double oy, double oz, double& r) {
            bins.assign(nb, 0.0);
            bins[0] = inner;
            for (const auto& v : near) {
                const double d = std::sqrt((v.dx - ox) * (v.dx - ox) + (v.dy - oy) * (v.dy - oy) + (v.dz - oz) * (v.dz - oz));
                if (d <= rmax) bins[d <= rmin ? 0 : std::min(nb - 1, (int)std::ceil((d - rmin) / kBin))] += v.w;
            }
            double sum = 0, best = -1e300;
            for (int k = 0; k < nb; ++k) {
                sum += bins[k];
                if (sum > best) best = sum, r = rmin + k * kBin;
            }
            return best;
        };
        double o[3] = {0, 0, 0}, r = r0;
        double best = score(0, 0, 0, r);
        for (double stride : {kStep, kStep / 2, kStep / 4, kStep / 8})
        for (bool moved = true; moved;) {
            moved = false;
            double step[3] = {0, 0, 0}, rs = r, top = best;
            for (int axis = 0; axis < 3; ++axis)
                for (double sgn : {-1.0, 1.0}) {
                    double t[3] = {o[0], o[1], o[2]};
                    t[axis] += sgn * stride;
                    if (std::abs(t[axis]) > 0.5 + 1e-9) continue;
                    double rt;
                    const double sc = score(t[0], t[1], t[2], rt);
                    if (sc > top) top = sc, rs = rt, step[0] = t[0] - o[0], step[1] = t[1] - o[1], step[2] = t[2] - o[2], moved = true;
                }
            if (moved) best = top, r = rs, o[0] += step[0], o[1] += step[1], o[2] += step[2];
        }
        bx = x + 0.5 + o[0], by = y + 0.5 + o[1], bz = z + 0.5 + o[2], br = r;
        // The refined ball's own voxels: taken if enough of them are new.
        int64_t fresh = 0, mine = 0;
        const int64_t hr = (int64_t)std::ceil(r + kReach);
        for (int pass = 0; pass < 2; ++pass) {
            for (int64_t a = -hr; a <= hr; ++a) {
                if (z + a < 0 || z + a >= nz) continue;
                for (int64_t b = -hr; b <= hr; ++b)
                    for (int64_t c = -hr; c <= hr; ++c) {
                        if ((c - o[0]) * (c - o[0]) + (b - o[1]) * (b - o[1]) + (a - o[2]) * (a - o[2]) > r * r) continue;
                        const int64_t j = index(z + a, y + b, x + c);
                        if (vol[j] != phase) continue;
                        if (pass == 0) ++mine, fresh += !covered[j];
                        else covered[j] = 1;
                    }
            }
            if (pass == 0 && (fresh == 0 || fresh < cfg.min_gain * (double)mine)) return false;
        }
        return true;
    };

    // Candidates: the phase's voxels whose fit is a maximum among their 26 same-phase neighbours.
    std::vector<int64_t> cand;
    for (int64_t i = 0; i < nvox; ++i) {
        if (vol[i] != phase || fit[i] < cfg.min_r2) continue;
        const int64_t z = i / plane, y = (i / nx) % ny, x = i % nx;
        bool peak = true;
        for (int dz = -1; dz <= 1 && peak; ++dz)
            for (int dy = -1; dy <= 1 && peak; ++dy)
                for (int dx = -1; dx <= 1; ++dx) {
                    if (z + dz < 0 || z + dz >= nz) continue;
                    const int64_t j = index(z + dz, y + dy, x + dx);
                    if (vol[j] == phase && fit[j] > fit[i]) { peak = false; break; }
                }
        if (peak) cand.push_back(i);
    }
    auto larger_first = [&](int64_t a, int64_t b) { return fit[a] != fit[b] ? fit[a] > fit[b] : a < b; };
    std::sort(cand.begin(), cand.end(), larger_first);
    const Offsets offs(fit_max + 1);
    auto visit = [&](int64_t i, size_t k, int64_t& j) {
        const int64_t z = i / plane + offs.o[k][0];
        if (z < 0 || z >= nz) return false;
        j = index(z, (i / nx) % ny + offs.o[k][1], i % nx + offs.o[k][2]);
        return true;
    };
    // (new voxels, own voxels) of the voxel-centred ball at i of squared radius r2
    auto gain = [&](int64_t i, int64_t r2) {
        int64_t fresh = 0, mine = 0, j;
        for (size_t k = 0, n = offs.prefix(r2); k < n; ++k)
            if (visit(i, k, j) && vol[j] == phase) ++mine, fresh += !covered[j];
        return std::pair<int64_t, int64_t>(fresh, mine);
    };
    for (int64_t i : cand) {
        if (covered[i]) continue;  // a larger ball already paints this maximum
        const auto [fresh, mine] = gain(i, fit[i]);
        if (fresh < cfg.min_gain * (double)mine) continue;  // refining would not make it pay
        double cx, cy, cz, r;
        if (refine(i, cx, cy, cz, r)) add(cx, cy, cz, r);
    }

    // What is left: each uncovered voxel, largest fit first, gets its own voxel-centred ball if that
    // paints enough anew (slivers beside a taken ball stay unpainted).
    std::vector<int64_t> left;
    for (int64_t i = 0; i < nvox; ++i)
        if (vol[i] == phase && !covered[i]) left.push_back(i);
    std::sort(left.begin(), left.end(), larger_first);
    for (int64_t u : left) {
        if (covered[u] || fit[u] < cfg.min_r2) continue;
        const auto [fresh, mine] = gain(u, fit[u]);
        if (fresh < cfg.min_gain * (double)mine) continue;
        int64_t j;
        for (size_t k = 0, n = offs.prefix(fit[u]); k < n; ++k)
            if (visit(u, k, j) && vol[j] == phase) covered[j] = 1;
        // The ball paints the integer offsets below r2; half a voxel^2 less keeps float rounding off the edge.
        add(u % nx + 0.5, (u / nx) % ny + 0.5, u / plane + 0.5, std::sqrt(fit[u] - 0.5));
    }
}

// The whole electrode: AM (code 2) balls fit inside the AM; CBD (code 1) balls inside the solid,
// no larger than the largest ball that fits inside the CBD alone (so they do not grow deep into the AM).
inline SphereSet decompose(const uint8_t* vol, int64_t nz, int64_t ny, int64_t nx, const CoverSettings& cfg) {
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
    decompose_phase(vol, nz, ny, nx, 2, fit_of(edt(fg, nz, ny, nx), 2, no_cap), [&](int64_t j) { return vol[j] != 2; },
                    cfg, out);

    for (int64_t i = 0; i < nvox; ++i) fg[i] = vol[i] == 1;
    const auto own = edt(fg, nz, ny, nx);
    int64_t cap = 0;
    for (int64_t i = 0; i < nvox; ++i)
        if (vol[i] == 1) cap = std::max(cap, (int64_t)own[i]);
    for (int64_t i = 0; i < nvox; ++i) fg[i] = vol[i] == 1 || vol[i] == 2;
    decompose_phase(vol, nz, ny, nx, 1, fit_of(edt(fg, nz, ny, nx), 1, cap),
                    [&](int64_t j) { return vol[j] == 0 || vol[j] == 4; }, cfg, out);
    return out;
}

}  // namespace calbatch
