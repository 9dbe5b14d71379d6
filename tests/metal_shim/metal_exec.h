// Host execution of MSL kernels for tests (tests/metal/emulator.rs): with WICK_METAL_EXEC defined,
// metal_stdlib plus this header turn a kernel into C++ that runs one threadgroup at a time, one
// host thread per Metal thread, threadgroup_barrier a real barrier over the threadgroup.
//
// What it models: integer and float arithmetic (half stored as IEEE binary16, computed in
// float), threadgroup memory (the driver makes kernel-scope threadgroup arrays `static`, shared
// by the threadgroup's threads; threadgroups run one after another), and SIMD-group matrices,
// which every lane holds whole: a load reads the full 8 x 8 tile, multiply-accumulate computes
// it in float, a store writes it (every lane the same values).
// SIMD-group functions (simd_sum, simd_shuffle_xor, ...) exchange values through memory with
// a barrier over the SIMD group's lanes, so every lane of the group must call them together
// (a call in lane-divergent code hangs; the test driver times out). Reductions add in lane
// order.
// What it does not model: Metal's rounding and fast-math (exp and friends are the host's),
// atomics, inactive lanes, out-of-bounds behaviour, and scheduling (a race the GPU would
// expose may pass here).

#ifndef WICK_METAL_EXEC_H
#define WICK_METAL_EXEC_H

namespace wick_exec {
// Waits for every thread of the running threadgroup (defined by the driver).
void barrier();
// Waits for every lane of the calling thread's SIMD group (defined by the driver).
void simd_barrier();
// The calling thread's lane, SIMD group and its lane count (set by the driver).
inline thread_local unsigned lane = 0, simdgroup = 0, simd_lanes = 32;
// The values of one collective call, [SIMD group][lane].
inline unsigned char exchange[32][32][64];

// Every lane's `v` (lanes of this SIMD group), into `all`.
template <class T> void gather(T v, T (&all)[32]) {
    static_assert(sizeof(T) <= 64, "value too large for the exchange");
    __builtin_memcpy(exchange[simdgroup][lane], &v, sizeof(T));
    simd_barrier();
    for (unsigned l = 0; l < simd_lanes; l++) {
        __builtin_memcpy(&all[l], exchange[simdgroup][l], sizeof(T));
    }
    simd_barrier();
}

template <class T> struct lanes {
    static constexpr int n = 1;
    static T& at(T& v, int) { return v; }
};
template <class T, int N> struct lanes<metal::vec<T, N>> {
    static constexpr int n = N;
    static T& at(metal::vec<T, N>& v, int i) { return v.e[i]; }
};
template <class V, class F> V map1(V a, F f) {
    for (int i = 0; i < lanes<V>::n; i++) lanes<V>::at(a, i) = f(lanes<V>::at(a, i));
    return a;
}
template <class V, class F> V map2(V a, V b, F f) {
    for (int i = 0; i < lanes<V>::n; i++)
        lanes<V>::at(a, i) = f(lanes<V>::at(a, i), lanes<V>::at(b, i));
    return a;
}
template <class V, class F> V map3(V a, V b, V c, F f) {
    for (int i = 0; i < lanes<V>::n; i++)
        lanes<V>::at(a, i) = f(lanes<V>::at(a, i), lanes<V>::at(b, i), lanes<V>::at(c, i));
    return a;
}
}  // namespace wick_exec

namespace metal {

void threadgroup_barrier(mem_flags) { wick_exec::barrier(); }
void simdgroup_barrier(mem_flags) { wick_exec::simd_barrier(); }

// The SIMD-group functions over gathered values.
#define WICK_EXEC_REDUCE(NAME, INIT, STEP)                                                     \
    template <class T> typename simd_value<T>::type NAME(T v) {                                \
        T all[32];                                                                             \
        wick_exec::gather(v, all);                                                             \
        T acc = INIT;                                                                          \
        for (unsigned l = 1; l < wick_exec::simd_lanes; l++) acc = T(STEP);                    \
        return acc;                                                                            \
    }
WICK_EXEC_REDUCE(simd_sum, all[0], acc + all[l])
WICK_EXEC_REDUCE(simd_product, all[0], acc * all[l])
WICK_EXEC_REDUCE(simd_max, all[0], max(acc, all[l]))
WICK_EXEC_REDUCE(simd_min, all[0], min(acc, all[l]))
WICK_EXEC_REDUCE(simd_and, all[0], acc & all[l])
WICK_EXEC_REDUCE(simd_or, all[0], acc | all[l])
WICK_EXEC_REDUCE(simd_xor, all[0], acc ^ all[l])

template <class T> typename simd_value<T>::type simd_prefix_inclusive_sum(T v) {
    T all[32];
    wick_exec::gather(v, all);
    T acc = all[0];
    for (unsigned l = 1; l <= wick_exec::lane; l++) acc = T(acc + all[l]);
    return acc;
}
template <class T> typename simd_value<T>::type simd_prefix_exclusive_sum(T v) {
    T all[32];
    wick_exec::gather(v, all);
    T acc = T(0);
    for (unsigned l = 0; l < wick_exec::lane; l++) acc = T(acc + all[l]);
    return acc;
}
template <class T> typename simd_value<T>::type simd_broadcast_first(T v) {
    T all[32];
    wick_exec::gather(v, all);
    return all[0];
}
template <class T> typename simd_value<T>::type quad_sum(T v) {
    T all[32];
    wick_exec::gather(v, all);
    unsigned q = wick_exec::lane & ~3u;
    return T(T(all[q] + all[q + 1]) + T(all[q + 2] + all[q + 3]));
}

// Shuffles: the value of lane `FROM` (an expression of `lane` and the argument `a`), or the
// caller's own when that lane is outside the SIMD group.
#define WICK_EXEC_SHUFFLE(NAME, FROM)                                                          \
    template <class T> typename simd_value<T>::type NAME(T v, ushort a) {                      \
        T all[32];                                                                             \
        wick_exec::gather(v, all);                                                             \
        unsigned lane = wick_exec::lane;                                                       \
        unsigned from = FROM;                                                                  \
        return from < wick_exec::simd_lanes ? all[from] : v;                                   \
    }
WICK_EXEC_SHUFFLE(simd_shuffle, a)
WICK_EXEC_SHUFFLE(simd_broadcast, a)
WICK_EXEC_SHUFFLE(simd_shuffle_xor, lane ^ a)
WICK_EXEC_SHUFFLE(simd_shuffle_down, lane + a)
WICK_EXEC_SHUFFLE(simd_shuffle_up, lane >= a ? lane - a : 64u)
WICK_EXEC_SHUFFLE(quad_shuffle_xor, lane ^ (a & 3u))
WICK_EXEC_SHUFFLE(quad_broadcast, (lane & ~3u) + (a & 3u))

bool simd_is_first() { return wick_exec::lane == 0; }
bool simd_all(bool b) {
    bool all[32];
    wick_exec::gather(b, all);
    for (unsigned l = 0; l < wick_exec::simd_lanes; l++)
        if (!all[l]) return false;
    return true;
}
bool simd_any(bool b) {
    bool all[32];
    wick_exec::gather(b, all);
    for (unsigned l = 0; l < wick_exec::simd_lanes; l++)
        if (all[l]) return true;
    return false;
}

// Definitions of the float functions the shim declares (the common ones; extend as needed).
#define WICK_EXEC_F(T, S, B)                                                                   \
    T abs(T a) { return wick_exec::map1(a, [](float x) { return __builtin_fabsf(x); }); }     \
    T fabs(T a) { return abs(a); }                                                             \
    T exp(T a) { return wick_exec::map1(a, [](float x) { return __builtin_expf(x); }); }      \
    T exp2(T a) { return wick_exec::map1(a, [](float x) { return __builtin_exp2f(x); }); }    \
    T log(T a) { return wick_exec::map1(a, [](float x) { return __builtin_logf(x); }); }      \
    T log2(T a) { return wick_exec::map1(a, [](float x) { return __builtin_log2f(x); }); }    \
    T sqrt(T a) { return wick_exec::map1(a, [](float x) { return __builtin_sqrtf(x); }); }    \
    T rsqrt(T a) {                                                                             \
        return wick_exec::map1(a, [](float x) { return 1.0f / __builtin_sqrtf(x); });         \
    }                                                                                          \
    T floor(T a) { return wick_exec::map1(a, [](float x) { return __builtin_floorf(x); }); }  \
    T ceil(T a) { return wick_exec::map1(a, [](float x) { return __builtin_ceilf(x); }); }    \
    T tanh(T a) { return wick_exec::map1(a, [](float x) { return __builtin_tanhf(x); }); }    \
    T max(T a, T b) {                                                                          \
        return wick_exec::map2(a, b, [](float x, float y) { return __builtin_fmaxf(x, y); }); \
    }                                                                                          \
    T min(T a, T b) {                                                                          \
        return wick_exec::map2(a, b, [](float x, float y) { return __builtin_fminf(x, y); }); \
    }                                                                                          \
    T fmax(T a, T b) { return max(a, b); }                                                     \
    T fmin(T a, T b) { return min(a, b); }                                                     \
    T fma(T a, T b, T c) {                                                                     \
        return wick_exec::map3(                                                                \
            a, b, c, [](float x, float y, float z) { return __builtin_fmaf(x, y, z); });      \
    }                                                                                          \
    T clamp(T a, T lo, T hi) { return min(max(a, lo), hi); }
WICK_FLOAT_TYPES(WICK_EXEC_F)

#define WICK_EXEC_FV(T, S, B)                                                                  \
    S dot(T a, T b) {                                                                          \
        float s = 0.0f;                                                                        \
        for (int i = 0; i < wick_exec::lanes<T>::n; i++)                                       \
            s += float(wick_exec::lanes<T>::at(a, i)) * float(wick_exec::lanes<T>::at(b, i));  \
        return S(s);                                                                           \
    }
WICK_FLOAT_VECTORS(WICK_EXEC_FV)

#define WICK_EXEC_I(T, S, B)                                                                   \
    T max(T a, T b) { return wick_exec::map2(a, b, [](S x, S y) { return x > y ? x : y; }); } \
    T min(T a, T b) { return wick_exec::map2(a, b, [](S x, S y) { return x < y ? x : y; }); } \
    T clamp(T a, T lo, T hi) { return min(max(a, lo), hi); }
WICK_INT_TYPES(WICK_EXEC_I)

template <class T, int Cols, int Rows>
simdgroup_matrix<T, Cols, Rows> make_filled_simdgroup_matrix(const T value) {
    simdgroup_matrix<T, Cols, Rows> d;
    for (int r = 0; r < Rows; r++)
        for (int c = 0; c < Cols; c++) d.m[r][c] = value;
    return d;
}

// matrix_origin is (column, row) of the first element; transposed, element (r, c) of the
// matrix is element (c, r) of memory.
template <class T, int Cols, int Rows>
void simdgroup_load(simdgroup_matrix<T, Cols, Rows>& d, const T* src, ulong elements_per_row,
                    ulong2 matrix_origin, bool transpose_matrix) {
    for (int r = 0; r < Rows; r++)
        for (int c = 0; c < Cols; c++) {
            ulong row = transpose_matrix ? c : r;
            ulong col = transpose_matrix ? r : c;
            d.m[r][c] = src[(matrix_origin.y + row) * elements_per_row + matrix_origin.x + col];
        }
}

template <class T, int Cols, int Rows>
void simdgroup_store(const simdgroup_matrix<T, Cols, Rows>& a, T* dst, ulong elements_per_row,
                     ulong2 matrix_origin, bool transpose_matrix) {
    for (int r = 0; r < Rows; r++)
        for (int c = 0; c < Cols; c++) {
            ulong row = transpose_matrix ? c : r;
            ulong col = transpose_matrix ? r : c;
            dst[(matrix_origin.y + row) * elements_per_row + matrix_origin.x + col] = a.m[r][c];
        }
}

template <class TD, class TA, class TB, class TC, int K, int L, int M>
void simdgroup_multiply_accumulate(simdgroup_matrix<TD, L, M>& d,
                                   const simdgroup_matrix<TA, K, M>& a,
                                   const simdgroup_matrix<TB, L, K>& b,
                                   const simdgroup_matrix<TC, L, M>& c) {
    float r[M][L];
    for (int i = 0; i < M; i++)
        for (int j = 0; j < L; j++) {
            float s = float(c.m[i][j]);
            for (int k = 0; k < K; k++) s += float(a.m[i][k]) * float(b.m[k][j]);
            r[i][j] = s;
        }
    for (int i = 0; i < M; i++)
        for (int j = 0; j < L; j++) d.m[i][j] = TD(r[i][j]);
}

template <class TD, class TA, class TB, int K, int L, int M>
void simdgroup_multiply(simdgroup_matrix<TD, L, M>& d, const simdgroup_matrix<TA, K, M>& a,
                        const simdgroup_matrix<TB, L, K>& b) {
    simdgroup_multiply_accumulate(d, a, b, make_filled_simdgroup_matrix<TD, L, M>(TD(0.0f)));
}

}  // namespace metal

// Built-in input values, from the thread's coordinates, in the parameter's declared type.
namespace wick_exec {
template <class T> T builtin(uint3 v);
template <> inline uint builtin<uint>(uint3 v) { return v.x; }
template <> inline ushort builtin<ushort>(uint3 v) { return ushort(v.x); }
template <> inline uint2 builtin<uint2>(uint3 v) { return uint2(v.x, v.y); }
template <> inline uint3 builtin<uint3>(uint3 v) { return v; }
template <> inline ushort2 builtin<ushort2>(uint3 v) { return ushort2(v.x, v.y); }
template <> inline ushort3 builtin<ushort3>(uint3 v) { return ushort3(v.x, v.y, v.z); }
}  // namespace wick_exec

#endif
