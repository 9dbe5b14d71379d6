// Native Metal split-KV GQA decode attention, pass 1, for Apple GPUs: the MSL twin of
// vulkan_overrides/attention_decode.comp (read the two side by side). It binds exactly the layout
// of the portable kernel (wgsl/attention_decode.wgsl, entry attention_decode) and writes exactly
// its outputs, so the portable merge pass serves it:
//   [[buffer(i)]] = binding i: 0 Params, 1 Step, 2 q (f32), 3 cache K, 4 cache V (f16 pairs),
//   5 out (DIRECT: normalised rows) or the split partials (o unnormalised, then (m, l)).
// One kernel per head dim (entries attention_decode_hd32/64/128, templated), the GQA group and
// DIRECT from Params (group, flags bit 0), a fixed split of 128 threads and tiles of 32 keys.
//
// Same walk as the GLSL (K/V tiles in threadgroup memory with the next tile prefetched into
// registers, online softmax in the exp2 domain, p.V by (row, 8 dims, key slice)), with one
// difference: simdgroup s holds rows s and s + 4 and its lane j key j of the tile, so a row's
// tile max is one simd_max over the simdgroup (Apple simdgroups are 32 wide, one per 32 keys;
// the host offers this kernel on Apple GPUs only). Scores then never go through threadgroup
// memory and a tile needs three barriers instead of four.
#include <metal_stdlib>
using namespace metal;

struct Params {
    uint n_heads;
    uint n_splits;
    uint capacity;
    uint max_tokens;  // unused in decode
    float scale_log2e;
    uint flags;       // bit 0: DIRECT (one split: write normalised rows)
    uint group;       // query heads per KV head
    uint pad;
};

struct Step {
    uint pos;
    uint n_tokens;
    uint kv_len;
    uint pad;
};

// Threads per threadgroup, keys per tile (one per simdgroup lane), query heads per KV head.
constexpr constant uint WG = 128;
constexpr constant uint T = 32;
constexpr constant uint MAX_G = 8;
// Finite stand-ins for -inf (fast math does not keep inf), as in the WGSL.
constant float NEG = -3.0e38f;
constant float NEG_HALF = -1.0e38f;

// Eight f16 of a cache word group against eight f32 of q.
inline float dot8(float4 qa, float4 qb, uint4 k) {
    return dot(qa, float4(as_type<half4>(k.xy))) + dot(qb, float4(as_type<half4>(k.zw)));
}

// Loads of one tile: item f = lid + i * WG is uint4 (f % U) of tile row f / U. Rows past the
// chunk end are never read (poisoned cache words past the live length must not leak: 0 * NaN).
template <uint HD>
inline void load_tile(
    device const uint4* cache_k,
    device const uint4* cache_v,
    uint kv_base,
    uint t0,
    uint n,
    uint lid,
    thread uint4* kreg,
    thread uint4* vreg) {
    constexpr uint U = HD / 8;
    constexpr uint NL = T * U / WG;
    for (uint i = 0; i < NL; i++) {
        uint f = lid + i * WG;
        uint j = f / U;
        if (j < n) {
            uint src = kv_base + (t0 + j) * U + (f - j * U);
            kreg[i] = cache_k[src];
            vreg[i] = cache_v[src];
        } else {
            kreg[i] = uint4(0);
            vreg[i] = uint4(0);
        }
    }
}

template <uint HD>
inline void attention_decode_impl(
    constant Params& p,
    constant Step& step,
    device const float4* q,
    device const uint4* cache_k,
    device const uint4* cache_v,
    device float* dst,
    threadgroup uint4* k_s,     // T * (U + 1): K rows padded by one uint4 against bank conflicts
    threadgroup uint4* v_s,     // T * U
    threadgroup float4* q_s,    // MAX_G * HD / 4, pre-scaled
    threadgroup float* p_s,     // MAX_G * T
    threadgroup float* alpha_s, // MAX_G
    threadgroup float* m_s,     // MAX_G
    threadgroup float4* red_o,  // 2 * WG
    threadgroup float* red_l,   // WG
    uint2 wid,
    uint lid,
    uint lane,
    uint sg) {
    constexpr uint U = HD / 8;
    constexpr uint KSTR = U + 1;
    constexpr uint NL = T * U / WG;
    uint kvh = wid.x;
    uint split = wid.y;
    uint G = p.group;
    uint kv_len = min(step.kv_len, p.capacity);
    uint chunk = (kv_len + p.n_splits - 1) / p.n_splits;
    uint key_start = split * chunk;
    uint key_end = min(key_start + chunk, kv_len);
    uint h0 = kvh * G;
    uint kv_base = kvh * p.capacity * U;

    for (uint i = lid; i < G * HD / 4; i += WG) {
        q_s[i] = q[h0 * HD / 4 + i] * p.scale_log2e;
    }

    // Scores and softmax: key j = lane of rows sg and sg + 4.
    uint j = lane;
    uint rs = sg;
    float m0 = NEG;
    float m1 = NEG;

    // p.V: dims 8pu..8pu+7 of row pr over keys ks, ks + KS, ...; threads past KS * pairs idle.
    uint pairs = G * U;
    uint KS = WG / pairs;
    uint ks = lid / pairs;
    uint pr = (lid - ks * pairs) / U;
    uint pu = lid - ks * pairs - pr * U;
    bool pv = ks < KS;
    float4 o0 = float4(0.0f);
    float4 o1 = float4(0.0f);
    float l = 0.0f;

    uint4 kreg[NL];
    uint4 vreg[NL];
    if (key_start < key_end) {
        load_tile<HD>(cache_k, cache_v, kv_base, key_start, min(T, key_end - key_start), lid, kreg, vreg);
    }
    for (uint t0 = key_start; t0 < key_end; t0 += T) {
        uint n = min(T, key_end - t0);
        for (uint i = 0; i < NL; i++) {
            uint f = lid + i * WG;
            uint jr = f / U;
            k_s[jr * KSTR + (f - jr * U)] = kreg[i];
            v_s[f] = vreg[i];
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);
        // Prefetch the next tile while this one is used.
        if (t0 + T < key_end) {
            load_tile<HD>(cache_k, cache_v, kv_base, t0 + T, min(T, key_end - t0 - T), lid, kreg, vreg);
        }

        // Scores (q already in the exp2 domain) and the online softmax step. The row
        // conditions depend on the simdgroup only, so simd_max sees every lane.
        uint r1 = rs + 4;
        float d0 = 0.0f;
        float d1 = 0.0f;
        for (uint u = 0; u < U; u++) {
            uint4 kw = k_s[j * KSTR + u];
            if (rs < G) {
                d0 += dot8(q_s[rs * 2 * U + 2 * u], q_s[rs * 2 * U + 2 * u + 1], kw);
            }
            if (r1 < G) {
                d1 += dot8(q_s[r1 * 2 * U + 2 * u], q_s[r1 * 2 * U + 2 * u + 1], kw);
            }
        }
        for (uint hi = 0; hi < 2; hi++) {
            uint r = rs + 4 * hi;
            if (r < G) {
                float s = j < n ? (hi == 0 ? d0 : d1) : NEG;
                float m_old = hi == 0 ? m0 : m1;
                float m_new = max(m_old, simd_max(s));
                p_s[r * T + j] = (j < n && s > NEG_HALF) ? exp2(s - m_new) : 0.0f;
                if (j == 0) {
                    // m_old == NEG (nothing seen yet) gives exp2(-huge) = 0.
                    alpha_s[r] = exp2(m_old - m_new);
                }
                if (hi == 0) {
                    m0 = m_new;
                } else {
                    m1 = m_new;
                }
            }
        }
        threadgroup_barrier(mem_flags::mem_threadgroup);

        if (pv) {
            float a = alpha_s[pr];
            o0 *= a;
            o1 *= a;
            l *= a;
            for (uint jj = ks; jj < n; jj += KS) {
                float pj = p_s[pr * T + jj];
                uint4 vw = v_s[jj * U + pu];
                o0 += pj * float4(as_type<half4>(vw.xy));
                o1 += pj * float4(as_type<half4>(vw.zw));
                l += pj;
            }
        }
        // The next tile's stores overwrite K, V; its softmax overwrites p and alpha.
        threadgroup_barrier(mem_flags::mem_threadgroup);
    }

    // Sum the key slices; the simdgroups publish the running max of their rows.
    if (pv) {
        red_o[2 * lid] = o0;
        red_o[2 * lid + 1] = o1;
        red_l[lid] = l;
    }
    if (j == 0) {
        if (rs < G) {
            m_s[rs] = m0;
        }
        if (rs + 4 < G) {
            m_s[rs + 4] = m1;
        }
    }
    threadgroup_barrier(mem_flags::mem_threadgroup);
    if (lid < pairs) {
        float4 a0 = float4(0.0f);
        float4 a1 = float4(0.0f);
        float lt = 0.0f;
        for (uint s = 0; s < KS; s++) {
            uint src = s * pairs + lid;
            a0 += red_o[2 * src];
            a1 += red_o[2 * src + 1];
            lt += red_l[src];
        }
        // lid < pairs: ks == 0, so (pr, pu) are this thread's row and uint4.
        uint h = h0 + pr;
        uint d = pu * 8;
        if ((p.flags & 1) != 0) {
            float4 inv = float4(lt > 0.0f ? 1.0f / lt : 0.0f);
            uint o = h * HD + d;
            float4 b0 = a0 * inv;
            float4 b1 = a1 * inv;
            dst[o] = b0.x;
            dst[o + 1] = b0.y;
            dst[o + 2] = b0.z;
            dst[o + 3] = b0.w;
            dst[o + 4] = b1.x;
            dst[o + 5] = b1.y;
            dst[o + 6] = b1.z;
            dst[o + 7] = b1.w;
        } else {
            uint ps = h * p.n_splits + split;
            uint o = ps * HD + d;
            dst[o] = a0.x;
            dst[o + 1] = a0.y;
            dst[o + 2] = a0.z;
            dst[o + 3] = a0.w;
            dst[o + 4] = a1.x;
            dst[o + 5] = a1.y;
            dst[o + 6] = a1.z;
            dst[o + 7] = a1.w;
            if (pu == 0) {
                uint ml = p.n_heads * p.n_splits * HD + 2 * ps;
                dst[ml] = m_s[pr];
                dst[ml + 1] = lt;
            }
        }
    }
}

// The entry points, one per head dim, stamped by ATTENTION_DECODE_ENTRY (tests/metal expands it
// as the compiler does and checks every entry against its spec). Threadgroup memory is declared
// in each kernel (MSL allows it nowhere else) and handed down; its sizes are
// attention::native_smem_bytes.

#define ATTENTION_DECODE_ENTRY(HD)                                                              \
kernel void attention_decode_hd##HD(                                                            \
    constant Params& p [[buffer(0)]],                                                           \
    constant Step& step [[buffer(1)]],                                                          \
    device const float4* q [[buffer(2)]],                                                       \
    device const uint4* cache_k [[buffer(3)]],                                                  \
    device const uint4* cache_v [[buffer(4)]],                                                  \
    device float* dst [[buffer(5)]],                                                            \
    uint3 wid [[threadgroup_position_in_grid]],                                                 \
    uint lid [[thread_index_in_threadgroup]],                                                   \
    uint lane [[thread_index_in_simdgroup]],                                                    \
    uint sg [[simdgroup_index_in_threadgroup]]) {                                               \
    threadgroup uint4 k_s[T * (HD / 8 + 1)];                                                    \
    threadgroup uint4 v_s[T * (HD / 8)];                                                        \
    threadgroup float4 q_s[MAX_G * HD / 4];                                                     \
    threadgroup float p_s[MAX_G * T];                                                           \
    threadgroup float alpha_s[MAX_G];                                                           \
    threadgroup float m_s[MAX_G];                                                               \
    threadgroup float4 red_o[2 * WG];                                                           \
    threadgroup float red_l[WG];                                                                \
    attention_decode_impl<HD>(p, step, q, cache_k, cache_v, dst, k_s, v_s, q_s, p_s, alpha_s,   \
                              m_s, red_o, red_l, wid.xy, lid, lane, sg);                        \
}

ATTENTION_DECODE_ENTRY(32)
ATTENTION_DECODE_ENTRY(64)
ATTENTION_DECODE_ENTRY(128)
