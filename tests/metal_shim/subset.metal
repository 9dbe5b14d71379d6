// Every construct of the MSL subset wick's kernels may use (see tests/metal/), written as
// Metal would take it: the shim must accept all of it. When a kernel needs something new, add
// it to the shim and a use of it here.
#include <metal_stdlib>
using namespace metal;

struct Params {
    uint n;
    uint k;
    float scale;
    uint flags;
};

constant uint TILE = 64;
constexpr constant float LOG2E = 1.4426950408889634f;

template <typename T, int N> inline T sum_of(thread const T* v) {
    T s = T(0);
    for (int i = 0; i < N; i++) {
        s += v[i];
    }
    return s;
}

inline float dequant(device const uchar* q, uint i, half d) {
    return float(d) * (float(q[i] & 0xF) - 8.0f);
}

inline void stage(threadgroup half* tile, uint i, float v) {
    tile[i] = half(v);
}

[[max_total_threads_per_threadgroup(256)]]
kernel void subset_vectors(
    constant Params& p [[buffer(0)]],
    device const uint* qs [[buffer(1)]],
    device const half4* h [[buffer(2)]],
    const device float4* x [[buffer(3)]],
    device float* out [[buffer(4)]],
    uint3 gid [[thread_position_in_grid]],
    uint3 lid3 [[thread_position_in_threadgroup]],
    uint lid [[thread_index_in_threadgroup]],
    uint3 tg [[threadgroup_position_in_grid]],
    uint3 ntg [[threadgroups_per_grid]],
    ushort lane [[thread_index_in_simdgroup]],
    ushort sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup float partial[8];
    threadgroup half tile[TILE * 4];

    // Scalars and conversions.
    short s = -3;
    ushort us = ushort(s);
    uchar uc = uchar(qs[0] & 0xFFu);
    int i = int(gid.x) - 1;
    half hv = half(1.0h) + half(p.scale);
    float f = float(hv) * 2.0f + float(uc) + float(us) + float(i);

    // Vectors: constructors, swizzles, operators, comparisons.
    float2 a2 = float2(1.0f, 2.0f);
    float3 a3 = float3(a2, 3.0f);
    float4 a4 = float4(a3, 4.0f);
    float4 b4 = float4(a2, a2) + float4(0.5f) * a4 - 1.0f;
    b4 = 2.0f * b4 / float4(1.0f, 2.0f, 3.0f, 4.0f);
    b4.xy = a4.zw;
    b4 += x[gid.x];
    half2 h2 = half2(a2);
    half4 h4 = h[lid] * half4(h2, h2);
    int4 i4 = int4(1, 2, 3, 4) + int4(uint4(5u));
    uint2 u2 = uint2(qs[1], qs[2]) >> 4u;
    uint3 u3 = uint3(u2, 7u) & 0xFFu;
    uint4 u4 = uint4(u3, 1u) | (uint4(1u) << uint4(0u, 8u, 16u, 24u));
    uchar4 c4 = uchar4(u4 & 0xFFu);
    short4 s4 = short4(c4.x, 0, 1, 2);
    ushort2 us2 = ushort2(lane, sg);
    bool4 mask = a4 > b4;
    float4 picked = select(a4, b4, mask);
    bool any_lt = any(a4 < b4) || all(mask);
    float d = dot(picked, a4) + a4.x + a4.y + a4.z + a4.w + a3.xy.y + b4.xyz.z;
    d += float(i4.w + s4.y) + float(u4.z + us2.y);

    // Math.
    d = fma(d, f, exp(d) + exp2(d));
    d = max(d, min(f, abs(d)));
    d = sqrt(d) + rsqrt(d + 1.0f);
    d = clamp(d, 0.0f, 1.0f);
    float4 m4 = max(a4, 0.0f) + clamp(b4, -1.0f, 1.0f) + abs(a4) + exp(b4);
    half hm = max(hv, half(0)) + exp(hv);
    uint um = max(qs[3], 1u) + min(lid, 31u);

    // Bit casts.
    float bits = as_type<float>(qs[4]);
    half2 hp = as_type<half2>(qs[5]);
    uint packed = as_type<uint>(h2);
    float2 unpacked = float2(as_type<half2>(packed));
    uint fbits = as_type<uint>(f);

    // SIMD-group and threadgroup reductions.
    float r = simd_sum(d) + simd_max(f);
    r += simd_shuffle_xor(r, 16);
    r += simd_broadcast(r, 0);
    float4 r4 = simd_sum(m4);
    if (lane == 0) {
        partial[sg] = r;
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    stage(tile, lid, r);
    threadgroup_barrier(mem_flags::mem_device | mem_flags::mem_threadgroup);
    float tot = sum_of<float, 8>(partial) + float(tile[lid]);
    tot += dequant((device const uchar*)qs, lid, hp.x);

    float acc = tot + bits + float(hm) + float(um) + unpacked.x + float(fbits) + r4.x +
                float(lid3.y + tg.z + ntg.x) + (any_lt ? 1.0f : 0.0f) + LOG2E;
    if (gid.x < p.n) {
        out[gid.x] = acc + float(h4.w);
    }
}

kernel void subset_simdgroup_matrix(
    constant Params& p [[buffer(0)]],
    device const half* a [[buffer(1)]],
    device float* c [[buffer(2)]],
    uint sg [[simdgroup_index_in_threadgroup]]) {
    threadgroup half ta[8 * 8 * 4];
    threadgroup float tc[8 * 8 * 4];
    simdgroup_half8x8 ma;
    simdgroup_half8x8 mb;
    simdgroup_float8x8 acc = make_filled_simdgroup_matrix<float, 8, 8>(0.0f);
    simdgroup_load(ma, a, p.k);
    simdgroup_load(mb, ta + 64 * sg, 8, ulong2(0, 0), true);
    simdgroup_multiply_accumulate(acc, ma, mb, acc);
    simdgroup_float8x8 fb;
    simdgroup_load(fb, tc, 8);
    simdgroup_multiply_accumulate(acc, fb, fb, acc);
    simdgroup_store(acc, tc + 64 * sg, 8);
    simdgroup_store(acc, c, p.n, ulong2(8, 0));
}
