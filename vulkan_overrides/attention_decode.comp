// Native Vulkan split-KV GQA decode attention, pass 1 (GLSL 4.50 -> SPIR-V through glslc; wick
// ships the .spv next to this file). The portable kernel is wgsl/attention_decode.wgsl (entry
// attention_decode) over wgsl/attention_core.wgsl; this one binds exactly its layout and writes
// exactly its outputs, so the portable merge pass (and the runtime's decode step) use it unchanged:
//   set 0: 0 Params (uniform), 1 Step (uniform), 2 q (f32), 3 cache K, 4 cache V (f16 pairs),
//          5 out (DIRECT: normalised rows) or the split partials (o unnormalised, then (m, l)).
// Passthrough SPIR-V gets no override constants: head_dim is a per-module define (one module per
// head dim the models use), the GQA group and the DIRECT flag come from Params (group, flags bit
// 0), and the work split is fixed (WG = 128 invocations, tiles of T = 32 keys); the host
// dispatches the portable grid (n_kv_heads, n_splits) and falls back to the portable kernel for
// shapes outside G <= 8 and these head dims (attention::decode_spec).
//
// One workgroup per (KV head, split) serves the G query heads of the group, walks the split's key
// chunk in tiles, and keeps an online softmax in the exp2 domain (q pre-scaled by
// scale * log2(e)), f32 everywhere but the f16 cache. Per tile:
//   load   K and V rows as uvec4 (8 halves) into workgroup memory, coalesced; the next tile's
//          loads are issued into registers before the tile is used, so global latency overlaps
//          the tile's arithmetic;
//   scores invocation (key j = lid % 32, row set lid / 32) dots key j with rows rs and rs + 4;
//          K rows are padded by one uvec4 so the 32 keys of a step hit distinct banks;
//   softmax every invocation of a row set recomputes the row's tile max from the 32 scores
//          (broadcast reads) and keeps the running max m in a register, identical in all of
//          them; it writes p_j = exp2(s_j - m) and the row's rescale alpha;
//   p.V    invocation owns 8 output dims (one uvec4 of V) of one row over every KS-th key of
//          the tile (KS = WG / (G * HD / 8) key slices when the group leaves invocations
//          idle), with its own share of l; the slices are summed once at the end.
// No subgroup operations, so the code is right for any subgroup size (8 on lavapipe).
//
// wick-spirv: hd32 -DHD=32
// wick-spirv: hd64 -DHD=64
// wick-spirv: hd128 -DHD=128
#version 450

#ifndef HD
#define HD 64
#endif

layout(local_size_x = 128, local_size_y = 1, local_size_z = 1) in;

const uint WG = 128u;
// Keys per tile: one per invocation of a 32-wide row set in the score step.
const uint T = 32u;
// Query heads per KV head at most (the host falls back to the portable kernel beyond).
const uint MAX_G = 8u;
// uvec4 words (8 halves) per cache row, and the padded K row stride in workgroup memory.
const uint U = uint(HD) / 8u;
const uint KSTR = U + 1u;
// Tile uvec4 loads per invocation (T * U / WG).
const uint NL = T * U / WG;
// Finite stand-ins for -inf (fast-math compilers may not keep inf), as in the WGSL.
const float NEG = -3.0e38;
const float NEG_HALF = -1.0e38;

layout(set = 0, binding = 0) uniform Params {
    uint n_heads;
    uint n_splits;
    uint capacity;
    uint max_tokens;  // unused in decode
    float scale_log2e;
    uint flags;       // bit 0: DIRECT (one split: write normalised rows)
    uint group;       // query heads per KV head (the WGSL's G)
    uint pad;
} p;

layout(set = 0, binding = 1) uniform Step {
    uint pos;
    uint n_tokens;
    uint kv_len;
    uint pad;
} step;

layout(set = 0, binding = 2) readonly buffer Q { vec4 q[]; };
layout(set = 0, binding = 3) readonly buffer CacheK { uvec4 cache_k[]; };
layout(set = 0, binding = 4) readonly buffer CacheV { uvec4 cache_v[]; };
layout(set = 0, binding = 5) buffer Dst { float dst[]; };

shared uvec4 k_s[T * KSTR];
shared uvec4 v_s[T * U];
// Pre-scaled q rows: row r, dims 4i..4i+3 at r * HD / 4 + i.
shared vec4 q_s[MAX_G * uint(HD) / 4u];
shared float s_s[MAX_G * T];
shared float p_s[MAX_G * T];
shared float alpha_s[MAX_G];
shared float m_s[MAX_G];
// End of the walk: each p.V invocation's 8 dims and its share of l, summed over key slices.
shared vec4 red_o[2u * WG];
shared float red_l[WG];

// Tile loads of this invocation: item f = lid + i * WG is uvec4 (f % U) of tile row f / U.
uvec4 kreg[NL];
uvec4 vreg[NL];

void load_tile(uint kv_base, uint t0, uint n, uint lid) {
    for (uint i = 0u; i < NL; i++) {
        uint f = lid + i * WG;
        uint j = f / U;
        // Rows past the chunk end are never read: stale or poisoned cache words beyond the
        // live length must not reach the output (0 * NaN is NaN even with p = 0).
        if (j < n) {
            uint src = kv_base + (t0 + j) * U + (f - j * U);
            kreg[i] = cache_k[src];
            vreg[i] = cache_v[src];
        } else {
            kreg[i] = uvec4(0u);
            vreg[i] = uvec4(0u);
        }
    }
}

float dot8(vec4 qa, vec4 qb, uvec4 k) {
    return dot(qa, vec4(unpackHalf2x16(k.x), unpackHalf2x16(k.y)))
        + dot(qb, vec4(unpackHalf2x16(k.z), unpackHalf2x16(k.w)));
}

void main() {
    uint lid = gl_LocalInvocationIndex;
    uint kvh = gl_WorkGroupID.x;
    uint split = gl_WorkGroupID.y;
    uint G = p.group;
    uint kv_len = min(step.kv_len, p.capacity);
    uint chunk = (kv_len + p.n_splits - 1u) / p.n_splits;
    uint key_start = split * chunk;
    uint key_end = min(key_start + chunk, kv_len);
    uint h0 = kvh * G;
    uint kv_base = kvh * p.capacity * U;

    for (uint i = lid; i < G * uint(HD) / 4u; i += WG) {
        q_s[i] = q[h0 * uint(HD) / 4u + i] * p.scale_log2e;
    }

    // Score and softmax steps: key j of rows rs and rs + 4.
    uint j = lid % T;
    uint rs = lid / T;
    float m0 = NEG;
    float m1 = NEG;

    // p.V step: dims 8u..8u+7 of row pr over keys ks, ks + KS, ...; invocations past
    // KS * pairs idle.
    uint pairs = G * U;
    uint KS = WG / pairs;
    uint ks = lid / pairs;
    uint pr = (lid - ks * pairs) / U;
    uint pu = lid - ks * pairs - pr * U;
    bool pv = ks < KS;
    vec4 o0 = vec4(0.0);
    vec4 o1 = vec4(0.0);
    float l = 0.0;

    if (key_start < key_end) {
        load_tile(kv_base, key_start, min(T, key_end - key_start), lid);
    }
    for (uint t0 = key_start; t0 < key_end; t0 += T) {
        uint n = min(T, key_end - t0);
        for (uint i = 0u; i < NL; i++) {
            uint f = lid + i * WG;
            uint jr = f / U;
            k_s[jr * KSTR + (f - jr * U)] = kreg[i];
            v_s[f] = vreg[i];
        }
        barrier();
        // Prefetch the next tile while this one is used.
        if (t0 + T < key_end) {
            load_tile(kv_base, t0 + T, min(T, key_end - t0 - T), lid);
        }

        // Scores (q already scaled into the exp2 domain).
        {
            float d0 = 0.0;
            float d1 = 0.0;
            uint r1 = rs + 4u;
            for (uint u = 0u; u < U; u++) {
                uvec4 kw = k_s[j * KSTR + u];
                if (rs < G) {
                    d0 += dot8(q_s[rs * (U * 2u) + 2u * u], q_s[rs * (U * 2u) + 2u * u + 1u], kw);
                }
                if (r1 < G) {
                    d1 += dot8(q_s[r1 * (U * 2u) + 2u * u], q_s[r1 * (U * 2u) + 2u * u + 1u], kw);
                }
            }
            if (rs < G) {
                s_s[rs * T + j] = j < n ? d0 : NEG;
            }
            if (r1 < G) {
                s_s[r1 * T + j] = j < n ? d1 : NEG;
            }
        }
        barrier();

        // Online softmax: every invocation of a row set updates the row's running max the
        // same way; the one with j == 0 publishes the rescale of the row's output.
        for (uint h = 0u; h < 2u; h++) {
            uint r = rs + 4u * h;
            if (r < G) {
                float m_old = h == 0u ? m0 : m1;
                float m_new = m_old;
                for (uint jj = 0u; jj < n; jj++) {
                    m_new = max(m_new, s_s[r * T + jj]);
                }
                float s = s_s[r * T + j];
                p_s[r * T + j] = (j < n && s > NEG_HALF) ? exp2(s - m_new) : 0.0;
                if (j == 0u) {
                    // m_old == NEG (nothing seen yet) gives exp2(-huge) = 0.
                    alpha_s[r] = exp2(m_old - m_new);
                }
                if (h == 0u) {
                    m0 = m_new;
                } else {
                    m1 = m_new;
                }
            }
        }
        barrier();

        if (pv) {
            float a = alpha_s[pr];
            o0 *= a;
            o1 *= a;
            l *= a;
            for (uint jj = ks; jj < n; jj += KS) {
                float pj = p_s[pr * T + jj];
                uvec4 vw = v_s[jj * U + pu];
                o0 += pj * vec4(unpackHalf2x16(vw.x), unpackHalf2x16(vw.y));
                o1 += pj * vec4(unpackHalf2x16(vw.z), unpackHalf2x16(vw.w));
                l += pj;
            }
        }
        // The next tile's stores overwrite K, V; its softmax overwrites p and alpha.
        barrier();
    }

    // Sum the key slices; the row sets publish the running max.
    if (pv) {
        red_o[2u * lid] = o0;
        red_o[2u * lid + 1u] = o1;
        red_l[lid] = l;
    }
    if (j == 0u) {
        if (rs < G) {
            m_s[rs] = m0;
        }
        if (rs + 4u < G) {
            m_s[rs + 4u] = m1;
        }
    }
    barrier();
    if (lid < pairs) {
        vec4 a0 = vec4(0.0);
        vec4 a1 = vec4(0.0);
        float lt = 0.0;
        for (uint s = 0u; s < KS; s++) {
            uint src = s * pairs + lid;
            a0 += red_o[2u * src];
            a1 += red_o[2u * src + 1u];
            lt += red_l[src];
        }
        // lid < pairs: ks == 0, so (pr, pu) are this invocation's row and uvec4.
        uint h = h0 + pr;
        uint d = pu * 8u;
        if ((p.flags & 1u) != 0u) {
            vec4 inv = vec4(lt > 0.0 ? 1.0 / lt : 0.0);
            uint o = h * uint(HD) + d;
            vec4 b0 = a0 * inv;
            vec4 b1 = a1 * inv;
            dst[o] = b0.x;
            dst[o + 1u] = b0.y;
            dst[o + 2u] = b0.z;
            dst[o + 3u] = b0.w;
            dst[o + 4u] = b1.x;
            dst[o + 5u] = b1.y;
            dst[o + 6u] = b1.z;
            dst[o + 7u] = b1.w;
        } else {
            uint ps = h * p.n_splits + split;
            uint o = ps * uint(HD) + d;
            dst[o] = a0.x;
            dst[o + 1u] = a0.y;
            dst[o + 2u] = a0.z;
            dst[o + 3u] = a0.w;
            dst[o + 4u] = a1.x;
            dst[o + 5u] = a1.y;
            dst[o + 6u] = a1.z;
            dst[o + 7u] = a1.w;
            if (pu == 0u) {
                uint ml = p.n_heads * p.n_splits * uint(HD) + 2u * ps;
                dst[ml] = m_s[pr];
                dst[ml + 1u] = lt;
            }
        }
    }
}
