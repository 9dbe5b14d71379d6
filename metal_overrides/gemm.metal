// Prefill GEMM on Apple GPUs with SIMD-group matrices: the native variant of wgsl/gemm.wgsl.
//   out[r * out_stride + out_offset + j] (+)= sum_k x[r][k] * W[j][k] (+ bias[j])
// for r < m activation rows (x: f32 [m][k]) and j < n weight rows (W: the repacked GPU planes of
// src/quant/mod.rs).
//
// Host contract (fixed geometry: passthrough MSL gets no specialisation):
//   threadgroup = 128 threads (4 SIMD groups of 32), [[max_total_threads_per_threadgroup(128)]];
//   grid = [ceil(n / 64), ceil(m / 64), 1] threadgroups; threadgroup (X, Y) owns weight rows
//   64X .. 64X+64 (output columns) and activation rows 64Y .. 64Y+64;
//   k is a multiple of 32 for the block formats and of 4 for f16 (WeightFormat::k_multiple);
//   every index fits in 32 bits (gemm.rs checks m*k, n*k and the output length).
// Bindings (gemm::spec, same order as the WGSL): 0 GemmParams (uniform), 1 qs, 2 scales, 3 x,
// then bias (the *_bias entries only), then out. Entries: gemm_<fmt> and gemm_<fmt>_bias for fmt
// in q4_0, q4_1, q8_0, f16.
//
// Design: each k step of BK = 32 stages a 64 x 32 tile of x (converted to half) and of W
// (dequantised to half) in threadgroup memory, rows padded to LD = 40 halves (80 bytes) so that
// the 8 x 8 fragment loads of neighbouring rows start on different banks. SIMD group s owns the
// 32 x 32 output sub-tile at rows 32*(s/2), columns 32*(s%2): 4 x 4 simdgroup_float8x8
// accumulators, fed per 8-wide k slice by 4 x-fragments and 4 W-fragments (simdgroup_half8x8;
// a W fragment is loaded transposed, as the tile holds W[j][k] and the product needs k x j).
// Rows past m or n stage as zeros, so the products stay finite and the edges need no masking
// until the store. Accumulation is f32; the operands are rounded to half (11-bit significand),
// so results differ from the f32 WGSL kernel by about 2^-11 relative per product.
// The epilogue goes through threadgroup memory (the same 16 KiB, after a barrier): each SIMD
// group stores its accumulators as a 32 x 32 f32 block and writes it out row by row, lane = column,
// with the bias, accumulate and bounds checks of the WGSL kernel.
#include <metal_stdlib>
using namespace metal;

// The WGSL `Params` / gemm::GemmParams.
struct GemmParams {
    uint m;
    uint n;
    uint k;
    uint out_stride;
    uint out_offset;
    // 1: out += result (residual add); 0: out = result.
    uint accumulate;
    uint pad0;
    uint pad1;
};

constexpr constant uint BM = 64;        // activation rows per threadgroup
constexpr constant uint BN = 64;        // weight rows (output columns) per threadgroup
constexpr constant uint BK = 32;        // k per step: one block of the 32-element formats
constexpr constant uint LD = BK + 8;    // padded row length of the staged tiles, in halves
constexpr constant uint THREADS = 128;  // 4 SIMD groups
constexpr constant uint SG_TILE = 32;   // output rows and columns per SIMD group
// 16 KiB: the two half tiles (2 x 64 x 40 x 2 B = 10 KiB) or the f32 output blocks
// (4 x 32 x 32 x 4 B), one after the other.
constexpr constant uint SHMEM_FLOATS = 4 * SG_TILE * SG_TILE;

constexpr constant int FMT_Q4_0 = 0;
constexpr constant int FMT_Q4_1 = 1;
constexpr constant int FMT_Q8_0 = 2;
constexpr constant int FMT_F16 = 3;

// The activations: 64 rows x 32 k as 512 float4 loads, 4 a thread, rounded to half.
inline void stage_x(constant GemmParams& p, device const float4* x, threadgroup half* xs,
                    uint row0, uint k0, uint tid) {
    for (uint i = tid; i < BM * (BK / 4); i += THREADS) {
        uint r = i / (BK / 4);
        uint q = i % (BK / 4);
        uint row = row0 + r;
        float4 v = float4(0.0f);
        if (row < p.m && k0 + 4 * q < p.k) {
            v = x[(row * p.k + k0) / 4 + q];
        }
        *(threadgroup half4*)(xs + r * LD + 4 * q) = half4(v);
    }
}

// Q4_0: block b = wrow * (k / 32) + k0 / 32; qs word `part` (4 a block) byte e holds element
// 4*part + e in its low nibble and 4*part + 16 + e in its high one; d is the f16 at half index b
// of the scales plane (two a word, block 2i in the low half). x = d * (q - 8).
inline void stage_w_q4_0(constant GemmParams& p, device const uint* qs,
                         device const uint* scales, threadgroup half* ws, uint col0, uint k0,
                         uint tid) {
    for (uint i = tid; i < BN * 4; i += THREADS) {
        uint c = i / 4;
        uint part = i % 4;
        uint wrow = col0 + c;
        half4 lo = half4(0.0h);
        half4 hi = half4(0.0h);
        if (wrow < p.n) {
            uint b = wrow * (p.k / 32) + k0 / 32;
            uint4 w = uint4(qs[b * 4 + part]);
            float d = float(((device const half*)scales)[b]);
            float4 ql = float4((w >> uint4(0, 8, 16, 24)) & 0xFu);
            float4 qh = float4((w >> uint4(4, 12, 20, 28)) & 0xFu);
            lo = half4(d * (ql - 8.0f));
            hi = half4(d * (qh - 8.0f));
        }
        *(threadgroup half4*)(ws + c * LD + 4 * part) = lo;
        *(threadgroup half4*)(ws + c * LD + 16 + 4 * part) = hi;
    }
}

// Q4_1: as Q4_0 with one scales word per block, d in the low half and m in the high one.
// x = d * q + m.
inline void stage_w_q4_1(constant GemmParams& p, device const uint* qs,
                         device const uint* scales, threadgroup half* ws, uint col0, uint k0,
                         uint tid) {
    for (uint i = tid; i < BN * 4; i += THREADS) {
        uint c = i / 4;
        uint part = i % 4;
        uint wrow = col0 + c;
        half4 lo = half4(0.0h);
        half4 hi = half4(0.0h);
        if (wrow < p.n) {
            uint b = wrow * (p.k / 32) + k0 / 32;
            uint4 w = uint4(qs[b * 4 + part]);
            float2 dm = float2(as_type<half2>(scales[b]));
            float4 ql = float4((w >> uint4(0, 8, 16, 24)) & 0xFu);
            float4 qh = float4((w >> uint4(4, 12, 20, 28)) & 0xFu);
            lo = half4(fma(float4(dm.x), ql, float4(dm.y)));
            hi = half4(fma(float4(dm.x), qh, float4(dm.y)));
        }
        *(threadgroup half4*)(ws + c * LD + 4 * part) = lo;
        *(threadgroup half4*)(ws + c * LD + 16 + 4 * part) = hi;
    }
}

// Q8_0: 8 qs words a block, word `part` holding the signed bytes of elements 4*part .. +4;
// d as Q4_0. x = d * q.
inline void stage_w_q8_0(constant GemmParams& p, device const uint* qs,
                         device const uint* scales, threadgroup half* ws, uint col0, uint k0,
                         uint tid) {
    for (uint i = tid; i < BN * 8; i += THREADS) {
        uint c = i / 8;
        uint part = i % 8;
        uint wrow = col0 + c;
        half4 v = half4(0.0h);
        if (wrow < p.n) {
            uint b = wrow * (p.k / 32) + k0 / 32;
            char4 q = as_type<char4>(qs[b * 8 + part]);
            float d = float(((device const half*)scales)[b]);
            v = half4(d * float4(q));
        }
        *(threadgroup half4*)(ws + c * LD + 4 * part) = v;
    }
}

// F16: element e of weight row j is half j * k + e of qs; k is a multiple of 4, so each half4 is
// whole and 8-byte aligned, and wholly inside or outside the row.
inline void stage_w_f16(constant GemmParams& p, device const uint* qs, threadgroup half* ws,
                        uint col0, uint k0, uint tid) {
    for (uint i = tid; i < BN * (BK / 4); i += THREADS) {
        uint c = i / (BK / 4);
        uint q = i % (BK / 4);
        uint wrow = col0 + c;
        half4 v = half4(0.0h);
        if (wrow < p.n && k0 + 4 * q < p.k) {
            v = ((device const half4*)qs)[(wrow * p.k + k0) / 4 + q];
        }
        *(threadgroup half4*)(ws + c * LD + 4 * q) = v;
    }
}

// One threadgroup's 64 x 64 output tile; FMT selects the weight loader, BIAS the bias add.
template <int FMT, bool BIAS>
inline void gemm_tile(constant GemmParams& p, device const uint* qs, device const uint* scales,
                      device const float4* x, device const float* bias, device float* out,
                      threadgroup float* shmem, uint2 tg, uint tid, uint sg, uint lane) {
    threadgroup half* xs = (threadgroup half*)shmem;
    threadgroup half* ws = xs + BM * LD;
    uint col0 = tg.x * BN;
    uint row0 = tg.y * BM;
    // This SIMD group's sub-tile within the threadgroup's.
    uint sr = SG_TILE * (sg / 2);
    uint sc = SG_TILE * (sg % 2);

    simdgroup_float8x8 acc[4][4];
    for (uint i = 0; i < 4; i++) {
        for (uint j = 0; j < 4; j++) {
            acc[i][j] = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
        }
    }

    for (uint k0 = 0; k0 < p.k; k0 += BK) {
        stage_x(p, x, xs, row0, k0, tid);
        if (FMT == FMT_Q4_0) {
            stage_w_q4_0(p, qs, scales, ws, col0, k0, tid);
        } else if (FMT == FMT_Q4_1) {
            stage_w_q4_1(p, qs, scales, ws, col0, k0, tid);
        } else if (FMT == FMT_Q8_0) {
            stage_w_q8_0(p, qs, scales, ws, col0, k0, tid);
        } else {
            stage_w_f16(p, qs, ws, col0, k0, tid);
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        for (uint kk = 0; kk < BK; kk += 8) {
            simdgroup_half8x8 a[4];
            simdgroup_half8x8 b[4];
            for (uint i = 0; i < 4; i++) {
                simdgroup_load(a[i], xs + (sr + 8 * i) * LD + kk, LD);
                simdgroup_load(b[i], ws + (sc + 8 * i) * LD + kk, LD, ulong2(0, 0), true);
            }
            for (uint i = 0; i < 4; i++) {
                for (uint j = 0; j < 4; j++) {
                    simdgroup_multiply_accumulate(acc[i][j], a[i], b[j], acc[i][j]);
                }
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // The tiles are dead (the loop ended on a barrier): reuse the memory for the output blocks.
    threadgroup float* cs = shmem + sg * (SG_TILE * SG_TILE);
    for (uint i = 0; i < 4; i++) {
        for (uint j = 0; j < 4; j++) {
            simdgroup_store(acc[i][j], cs + 8 * i * SG_TILE + 8 * j, SG_TILE);
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);

    uint col = col0 + sc + lane;
    if (col >= p.n) {
        return;
    }
    float b = 0.0f;
    if (BIAS) {
        b = bias[col];
    }
    for (uint r = 0; r < SG_TILE; r++) {
        uint row = row0 + sr + r;
        if (row >= p.m) {
            break;
        }
        float v = cs[r * SG_TILE + lane] + b;
        uint o = row * p.out_stride + p.out_offset + col;
        if (p.accumulate != 0) {
            v += out[o];
        }
        out[o] = v;
    }
}

// The entry points: one per (format, bias) pair, each binding gemm::spec's layout, stamped by
// GEMM_ENTRY (tests/metal expands it as the compiler does and checks every entry against its
// spec). BIAS is true or false: the bias entries bind the bias between x and out; the others
// never read it, and x stands in for the pointer.

#define BIAS_AND_OUT_false device float* out [[buffer(4)]]
#define BIAS_AND_OUT_true device const float* bias [[buffer(4)]], device float* out [[buffer(5)]]
#define BIAS_POINTER_false (device const float*)x
#define BIAS_POINTER_true bias

#define GEMM_ENTRY(NAME, FMT, BIAS)                                                             \
[[max_total_threads_per_threadgroup(128)]]                                                      \
kernel void NAME(constant GemmParams& p [[buffer(0)]],                                          \
                 device const uint* qs [[buffer(1)]],                                           \
                 device const uint* scales [[buffer(2)]],                                       \
                 device const float4* x [[buffer(3)]],                                          \
                 BIAS_AND_OUT_##BIAS,                                                           \
                 uint3 tg [[threadgroup_position_in_grid]],                                     \
                 uint tid [[thread_index_in_threadgroup]],                                      \
                 uint sg [[simdgroup_index_in_threadgroup]],                                    \
                 uint lane [[thread_index_in_simdgroup]]) {                                     \
    threadgroup float shmem[SHMEM_FLOATS];                                                      \
    gemm_tile<FMT, BIAS>(p, qs, scales, x, BIAS_POINTER_##BIAS, out, shmem, tg.xy, tid, sg,     \
                         lane);                                                                 \
}

// A format's two entries: gemm_<fmt> and gemm_<fmt>_bias.
#define GEMM_ENTRIES(fmt, FMT)                                                                  \
    GEMM_ENTRY(gemm_##fmt, FMT, false)                                                          \
    GEMM_ENTRY(gemm_##fmt##_bias, FMT, true)

GEMM_ENTRIES(q4_0, FMT_Q4_0)
GEMM_ENTRIES(q4_1, FMT_Q4_1)
GEMM_ENTRIES(q8_0, FMT_Q8_0)
GEMM_ENTRIES(f16, FMT_F16)
