// Rows of the finite-volume Fick matrix of a voxel region, as CSR arrays PETSc adopts without a copy.
// 7-point stencil on a unit voxel grid [z][y][x]; the face between two unknowns conducts with the
// harmonic mean of their diffusivities; periodic in x and y; Dirichlet faces half a voxel outside
// slice 0 and slice nz-1 conduct 2 D.
#pragma once
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace calbatch {

// An uninitialised array filled front to back: the output is written exactly once, so zeroing it
// first would be a wasted pass over tens of MB.
template <typename T>
struct Buffer {
    std::unique_ptr<T[]> data;
    int64_t size = 0;
    explicit Buffer(int64_t capacity) : data(new T[capacity > 0 ? capacity : 1]) {}
    void push(T value) { data[size++] = value; }
};

// A CSR block: row pointers, column numbers (sorted within each row), values.
template <typename Index>
struct Csr {
    Buffer<Index> indptr, columns;
    Buffer<double> values;
    Csr(int64_t rows, int64_t capacity) : indptr(rows + 1), columns(capacity), values(capacity) { indptr.push(0); }
    void end_row() { indptr.push(static_cast<Index>(columns.size)); }
};

// The rows of one rank's slab split as PETSc's MPIAIJ stores them: `own` holds the columns of the
// slab's own unknowns, numbered from the slab's first unknown; `other` the columns in the slices
// just below and above the slab (other ranks'), in global numbers.
template <typename Index>
struct FickRows {
    Csr<Index> own, other;
    Buffer<double> bottom_g, top_g;  // per row: conductance to the face below slice 0 / above the top
};

// phases and active: [nz][ny][nx]; active is nonzero where a voxel is an unknown (it must then have
// diffusivity[phase] > 0). Unknowns are numbered in C order: offsets[z] is the global number of the
// first unknown of slice z (offsets has nz + 1 entries). Builds the rows of slices [z0, z1).
template <typename Index>
FickRows<Index> fick_rows(const uint8_t* phases, const uint8_t* active, const double* diffusivity,
                          const int64_t* offsets, int64_t nz, int64_t ny, int64_t nx, int64_t z0, int64_t z1) {
    const int64_t plane = ny * nx;
    const int64_t rows = offsets[z1] - offsets[z0];
    const int64_t edge = (z0 > 0 ? offsets[z0] - offsets[z0 - 1] : 0) + (z1 < nz ? offsets[z1 + 1] - offsets[z1] : 0);
    FickRows<Index> out{Csr<Index>(rows, 7 * rows), Csr<Index>(rows, edge), Buffer<double>(rows), Buffer<double>(rows)};
    const Index first = static_cast<Index>(offsets[z0]);

    // Diffusivity and number (-1: no unknown) of slices z-1, z, z+1: a window rolled up z, so the
    // memory besides the output is three slices whatever the volume. Own slices are numbered from
    // `first`, the slices outside the slab globally.
    struct Slice {
        std::vector<double> d;
        std::vector<Index> number;
    };
    Slice below{std::vector<double>(plane), std::vector<Index>(plane)}, own = below, above = below;
    auto load = [&](int64_t z, Slice& s) {
        if (z < 0 || z >= nz) {
            std::fill(s.d.begin(), s.d.end(), 0.0);
            std::fill(s.number.begin(), s.number.end(), Index(-1));
            return;
        }
        Index next = static_cast<Index>(offsets[z]) - (z >= z0 && z < z1 ? first : 0);
        const uint8_t* p = phases + z * plane;
        const uint8_t* a = active + z * plane;
        for (int64_t i = 0; i < plane; ++i) {
            s.d[i] = a[i] ? diffusivity[p[i]] : 0.0;
            s.number[i] = a[i] ? next : Index(-1);
            next += a[i] != 0;
        }
    };
    load(z0 - 1, below);
    load(z0, own);

    for (int64_t z = z0; z < z1; ++z) {
        load(z + 1, above);
        const bool below_is_other = z == z0, above_is_other = z == z1 - 1;
        for (int64_t y = 0; y < ny; ++y) {
            const int64_t y_prev = (y == 0 ? ny - 1 : y - 1) * nx, y_next = (y == ny - 1 ? 0 : y + 1) * nx;
            for (int64_t x = 0; x < nx; ++x) {
                const int64_t i = y * nx + x;
                if (own.number[i] < 0) continue;
                const double d = own.d[i];
                const double bottom = z == 0 ? 2.0 * d : 0.0, top = z == nz - 1 ? 2.0 * d : 0.0;
                double diagonal = bottom + top;
                Index cols[8], other_cols[2];
                double vals[8], other_vals[2];
                int n = 0, n_other = 0;
                // Branch-free: every neighbour is written, and kept (n advances) only if it is an
                // unknown; g is 0 otherwise, since d_nb = 0 there.
                auto couple = [&](double d_nb, Index column, Index* c, double* v, int& k) {
                    const double g = 2.0 * d * d_nb / (d + d_nb);
                    diagonal += g;
                    c[k] = column;
                    v[k] = -g;
                    k += d_nb > 0.0;
                };
                auto couple_z = [&](const Slice& s, bool is_other) {
                    if (is_other)
                        couple(s.d[i], s.number[i], other_cols, other_vals, n_other);
                    else
                        couple(s.d[i], s.number[i], cols, vals, n);
                };
                const int64_t x_prev = x == 0 ? nx - 1 : x - 1, x_next = x == nx - 1 ? 0 : x + 1;
                couple_z(below, below_is_other);  // in this order the columns come sorted except at
                couple(own.d[y_prev + x], own.number[y_prev + x], cols, vals, n);  // the periodic wrap
                couple(own.d[y * nx + x_prev], own.number[y * nx + x_prev], cols, vals, n);
                const int self = n++;
                couple(own.d[y * nx + x_next], own.number[y * nx + x_next], cols, vals, n);
                couple(own.d[y_next + x], own.number[y_next + x], cols, vals, n);
                couple_z(above, above_is_other);
                cols[self] = own.number[i];
                vals[self] = diagonal;
                // Sort and add up repeats: with one or two voxels across, periodic neighbours
                // coincide with each other or with the voxel itself.
                for (int a = 1; a < n; ++a)
                    for (int b = a; b > 0 && cols[b - 1] > cols[b]; --b) {
                        std::swap(cols[b - 1], cols[b]);
                        std::swap(vals[b - 1], vals[b]);
                    }
                for (int a = 0; a < n; ++a) {
                    if (a > 0 && cols[a] == cols[a - 1]) {
                        out.own.values.data[out.own.values.size - 1] += vals[a];
                    } else {
                        out.own.columns.push(cols[a]);
                        out.own.values.push(vals[a]);
                    }
                }
                for (int a = 0; a < n_other; ++a) {  // below, then above: already sorted
                    out.other.columns.push(other_cols[a]);
                    out.other.values.push(other_vals[a]);
                }
                out.own.end_row();
                out.other.end_row();
                out.bottom_g.push(bottom);
                out.top_g.push(top);
            }
        }
        std::swap(below, own);
        std::swap(own, above);
    }
    return out;
}

}  // namespace calbatch
