// Prefill GEMM on Apple GPUs with SIMD-group matrices: the native variant of wgsl/gemm.wgsl.
//   out[r * out_stride + out_offset + j] (+)= sum_k x[r][k] * W[j][k] (+ bias[j])
// for r < m activation rows (x: f32 [m][k]) and j < n weight rows (W: the repacked GPU planes of
// src/quant/mod.rs).
//
// Host contract (fixed geometry: passthrough MSL gets no specialisation):
//   threadgroup = 128 threads (4 SIMD groups of 32), [[max_total_threads_per_threadgroup(128)]];
//   grid = [ceil(n / 64), ceil(m / 64), 1] threadgroups; threadgroup (X, Y) owns weight rows
//   64X .. 64X+64 (output columns) and activation rows 64Y .. 64Y+64;
//   k is a multiple of 32 for the 32-element block formats, of 256 for the K-quants and of 4
//   for f16 and bf16 (WeightFormat::k_multiple, checked by gemm.rs);
//   every index fits in 32 bits (gemm.rs checks m*k, n*k and the output length).
// Bindings (gemm::spec, same order as the WGSL): 0 GemmParams (uniform), 1 qs, 2 scales, 3 x,
// then bias (the *_bias entries only), then out. Entries: gemm_<fmt> and gemm_<fmt>_bias for fmt
// in q4_0, q4_1, q5_0, q5_1, q8_0, q4_k, q5_k, q6_k, f16 and bf16: every weight format but f32,
// which keeps the portable kernel (rounding f32 weights to half would undo the point of them).
//
// Design: each k step of BK = 32 (one block, or one sub-block of a K-quant super-block) stages
// a 64 x 32 tile of x (converted to half) and of W (dequantised to half by the format's loader
// below) in threadgroup memory, rows padded to LD = 40 halves (80 bytes) so that
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
constexpr constant int FMT_Q5_0 = 4;
constexpr constant int FMT_Q5_1 = 5;
constexpr constant int FMT_Q4_K = 6;
constexpr constant int FMT_Q5_K = 7;
constexpr constant int FMT_Q6_K = 8;
constexpr constant int FMT_BF16 = 9;

constexpr constant uint NIB = 0x0F0F0F0F;

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

// The f16 pair of a scales word (low half first).
inline float2 halves(uint s) {
    return float2(as_type<half2>(s));
}

// The four bytes of w as floats, byte i in component i.
inline float4 bytes_f(uint w) {
    return float4(as_type<uchar4>(w));
}

// Four fifth bits (bits 0..3 of h) moved to bit 4 of bytes 0..3, to OR onto four nibbles
// (gemv.metal's fifth4: the multiply places copies of h at bits 0, 7, 14 and 21).
inline uint fifth4(uint h) {
    return (((h & 15) * 0x00204081u) & 0x01010101u) << 4;
}

// The 32-element nibble formats, one block per k step: qs word `part` (4 a block) byte e holds
// element 4*part + e in its low nibble and 4*part + 16 + e in its high one; Q5_0/Q5_1 add the
// fifth bit of element e as bit e of their qh word. Every block is x = a * q + z:
//   Q4_0: d at half index b of the scales plane (two a word), (a, z) = (d, -8d);
//   Q4_1: scales word b = d | m << 16, (d, m);
//   Q5_0: per pair of blocks three words qh(2i), qh(2i+1), d(2i) | d(2i+1) << 16, (d, -16d);
//   Q5_1: two words per block, qh then d | m << 16, (d, m).
// a * q is exact in f32 (an f16 times a 5-bit integer), so the fma rounds as the reference's
// d * q + m does.
template <int FMT>
inline void stage_w_nib32(constant GemmParams& p, device const uint* qs,
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
            uint w = qs[b * 4 + part];
            uint nl = w & NIB;
            uint nh = (w >> 4) & NIB;
            float2 az;
            if (FMT == FMT_Q4_0) {
                float d = float(((device const half*)scales)[b]);
                az = float2(d, -8.0f * d);
            } else if (FMT == FMT_Q4_1) {
                az = halves(scales[b]);
            } else if (FMT == FMT_Q5_0) {
                uint qh = scales[3 * (b >> 1) + (b & 1)];
                float d = halves(scales[3 * (b >> 1) + 2])[b & 1];
                az = float2(d, -16.0f * d);
                nl |= fifth4(qh >> (4 * part));
                nh |= fifth4(qh >> (16 + 4 * part));
            } else {
                uint qh = scales[2 * b];
                az = halves(scales[2 * b + 1]);
                nl |= fifth4(qh >> (4 * part));
                nh |= fifth4(qh >> (16 + 4 * part));
            }
            lo = half4(fma(float4(az.x), bytes_f(nl), float4(az.y)));
            hi = half4(fma(float4(az.x), bytes_f(nh), float4(az.y)));
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

// F16 / BF16: element e of weight row j is half j * k + e of qs (element 2i in the low half of
// word i); k is a multiple of 4, so each group of 4 is two whole words, 8-byte aligned, and
// wholly inside or outside the row. A bf16 is the high half of an f32; rounding it to half keeps
// its 8 significant bits but not its range (magnitudes past 65504 become infinite, below 2^-14
// lose bits), which model weights do not reach.
template <int FMT>
inline void stage_w_float(constant GemmParams& p, device const uint* qs, threadgroup half* ws,
                          uint col0, uint k0, uint tid) {
    for (uint i = tid; i < BN * (BK / 4); i += THREADS) {
        uint c = i / (BK / 4);
        uint q = i % (BK / 4);
        uint wrow = col0 + c;
        half4 v = half4(0.0h);
        if (wrow < p.n && k0 + 4 * q < p.k) {
            uint idx = (wrow * p.k + k0) / 4 + q;
            if (FMT == FMT_F16) {
                v = ((device const half4*)qs)[idx];
            } else {
                uint2 w = ((device const uint2*)qs)[idx];
                v = half4(float4(as_type<float>(w.x << 16), as_type<float>(w.x & 0xFFFF0000u),
                                 as_type<float>(w.y << 16), as_type<float>(w.y & 0xFFFF0000u)));
            }
        }
        *(threadgroup half4*)(ws + c * LD + 4 * q) = v;
    }
}

// Q4_K/Q5_K header (one uint4 per super-block): d | dmin << 16, then GGML's 12 bytes of 6-bit
// (scale, min) pairs. Returns the scales (xy) and mins (zw) of sub-blocks 2j and 2j + 1; the
// same decoding as gemv.metal's k4_scales (GGML's get_scale_min_k4 for both at once).
inline float4 k4_scales(uint4 hdr, uint j) {
    uint sh = (j & 1) << 4;
    uint y = hdr.y >> sh;
    uint z = hdr.z >> sh;
    uint w = hdr.w >> sh;
    bool upper = j >= 2;
    uint sc = upper ? ((w & 0x0F0F) | ((y >> 2) & 0x3030)) : (y & 0x3F3F);
    uint mn = upper ? (((w >> 4) & 0x0F0F) | ((z >> 2) & 0x3030)) : (z & 0x3F3F);
    return bytes_f(sc | (mn << 16));
}

// The K-quants (256-element super-blocks, k a multiple of 256): a k step of 32 is sub-block
// s = (k0 / 32) % 8 of super-block bb, which lies in pair j = s / 2 (64 elements) as its low
// (even s) or high (odd s) nibbles. Each thread stages 8 elements, part = 0..3 of the
// sub-block: nibble words 2*part and 2*part + 1 of the pair (one uint2 load), the 4-bit
// values shifted down by 4 for odd s, with the sub-block's scale decoded per staged run.
//   Q4_K: qs 32 words per super-block (8 per pair); scales the header; x = d*sc*q - dmin*m.
//   Q5_K: as Q4_K, scales 12 words per super-block: the header, then word 4 + s holding the
//     fifth bits of sub-block s (bit l: its element l).
//   Q6_K: qs 48 words per super-block, 12 per pair: nibble words 0..8, then 4 words of top
//     2 bits; top word 8 + i byte b holds, in bits 0-1 / 4-5, the top bits of the low / high
//     nibble of byte b of nibble word i, in bits 2-3 / 6-7 those of word i + 4, so words
//     2*part, 2*part + 1 take uint2 4 + (part & 1) of the pair shifted by 2 * (part / 2).
//     Scales: per pair of super-blocks nine words, the 16 i8 scales of each (scale si in
//     byte si % 4 of word si / 4, covering elements 16si .. +16; here si = 2s + part / 2),
//     then d(2i) | d(2i+1) << 16. x = d * sc * (q - 32).
template <int FMT>
inline void stage_w_kquant(constant GemmParams& p, device const uint* qs,
                           device const uint* scales, threadgroup half* ws, uint col0, uint k0,
                           uint tid) {
    uint s = (k0 / 32) % 8;
    uint j = s >> 1;
    uint shift = 4 * (s & 1);
    for (uint i = tid; i < BN * 4; i += THREADS) {
        uint c = i / 4;
        uint part = i % 4;
        uint wrow = col0 + c;
        half4 v0 = half4(0.0h);
        half4 v1 = half4(0.0h);
        if (wrow < p.n) {
            uint bb = wrow * (p.k / 256) + k0 / 256;
            device const uint2* q2 = (device const uint2*)qs;
            if (FMT == FMT_Q6_K) {
                uint pw = 24 * bb + 6 * j;
                uint2 q = q2[pw + part];
                uint2 t = q2[pw + 4 + (part & 1)] >> (2 * (part >> 1));
                uint2 n = ((q >> shift) & NIB) | (((t >> shift) & 0x03030303u) << 4);
                uint si = 2 * s + (part >> 1);
                uint base = 9 * (bb >> 1);
                uint scw = scales[base + 4 * (bb & 1) + si / 4];
                float sc = float(int(scw << (24 - 8 * (si & 3))) >> 24);
                float a = halves(scales[base + 8])[bb & 1] * sc;
                v0 = half4(a * (bytes_f(n.x) - 32.0f));
                v1 = half4(a * (bytes_f(n.y) - 32.0f));
            } else {
                uint2 n = (q2[16 * bb + 4 * j + part] >> shift) & NIB;
                uint hw = FMT == FMT_Q5_K ? 12 : 4;
                uint4 hdr = uint4(scales[hw * bb], scales[hw * bb + 1], scales[hw * bb + 2],
                                  scales[hw * bb + 3]);
                float4 sm = k4_scales(hdr, j);
                float2 dd = halves(hdr.x);
                float a = dd.x * ((s & 1) != 0 ? sm.y : sm.x);
                float z = -dd.y * ((s & 1) != 0 ? sm.w : sm.z);
                if (FMT == FMT_Q5_K) {
                    uint h = scales[hw * bb + 4 + s] >> (8 * part);
                    n |= uint2(fifth4(h), fifth4(h >> 4));
                }
                v0 = half4(fma(float4(a), bytes_f(n.x), float4(z)));
                v1 = half4(fma(float4(a), bytes_f(n.y), float4(z)));
            }
        }
        *(threadgroup half4*)(ws + c * LD + 8 * part) = v0;
        *(threadgroup half4*)(ws + c * LD + 8 * part + 4) = v1;
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
        if (FMT == FMT_Q8_0) {
            stage_w_q8_0(p, qs, scales, ws, col0, k0, tid);
        } else if (FMT == FMT_F16 || FMT == FMT_BF16) {
            stage_w_float<FMT>(p, qs, ws, col0, k0, tid);
        } else if (FMT == FMT_Q4_K || FMT == FMT_Q5_K || FMT == FMT_Q6_K) {
            stage_w_kquant<FMT>(p, qs, scales, ws, col0, k0, tid);
        } else {
            stage_w_nib32<FMT>(p, qs, scales, ws, col0, k0, tid);
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
GEMM_ENTRIES(q5_0, FMT_Q5_0)
GEMM_ENTRIES(q5_1, FMT_Q5_1)
GEMM_ENTRIES(q4_k, FMT_Q4_K)
GEMM_ENTRIES(q5_k, FMT_Q5_K)
GEMM_ENTRIES(q6_k, FMT_Q6_K)
GEMM_ENTRIES(bf16, FMT_BF16)
