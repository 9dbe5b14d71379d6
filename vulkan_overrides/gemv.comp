// Native Vulkan GEMV (GLSL 4.50 -> SPIR-V through glslc; wick ships the .spv files next to
// this file). The portable kernel is wgsl/gemv.wgsl; every module here binds exactly the
// layout of its WGSL pipeline (gemv::gemv_spec) and reads the same repacked planes
// (src/quant), so both variants run on the same buffers.
//
// One module per (format, kind): -DQ4_0 / -DQ4_1 / -DQ8_0 picks the format; -DSWIGLU the
// fused gate+up+SwiGLU, -DQKV the fused q/k/v projections, neither the plain GEMV; -DNORM the
// RMSNorm prologue. Bindings (set 0):
//   plain:  0 Params, 1 qs, 2 scales, 3 x, 4 bias, 5 out, [6 norm weights]
//   SWIGLU: 0 Params, 1 gate qs, 2 gate scales, 3 up qs, 4 up scales, 5 x, 6 out, [7 norm]
//   QKV:    0 Params, 1..6 q/k/v qs and scales, 7 x, 8..10 q/k/v bias, 11..13 q/k/v out,
//           [14 norm]
// Passthrough SPIR-V gets no override or specialization constants, so what the WGSL reads
// as overrides comes from Params: flags (bit 0 add the bias, bit 1 accumulate into out) and
// lanes_per_row.
//
// Work split: 256 lanes per workgroup, cut into row groups of lanes_per_row lanes (a power of
// two from the host's chosen split, 1..256), one row per group, so 256 / lanes_per_row rows
// per workgroup. A group's lanes stride over the row's units (one qs word each, as in the
// WGSL: adjacent lanes read adjacent words and adjacent activations), four units per step so
// each lane has four independent loads in flight. Lanes are numbered subgroup by subgroup
// (subgroup id * size + invocation), so a group smaller than a subgroup lies inside one and
// is reduced with shuffles; a group of one or more whole subgroups is reduced with
// subgroupAdd, then the subgroups' sums are combined in workgroup memory. This is correct for
// any power-of-two subgroup size (8 on lavapipe, 32 on NVIDIA, up to 128 elsewhere); the host
// only picks these modules on devices with subgroup operations.
//
// wick-glslc: --target-env=vulkan1.1
// wick-spirv: q4_0 -DQ4_0
// wick-spirv: q4_0_norm -DQ4_0 -DNORM
// wick-spirv: swiglu_q4_0 -DQ4_0 -DSWIGLU
// wick-spirv: swiglu_q4_0_norm -DQ4_0 -DSWIGLU -DNORM
// wick-spirv: qkv_q4_0 -DQ4_0 -DQKV
// wick-spirv: qkv_q4_0_norm -DQ4_0 -DQKV -DNORM
// wick-spirv: q4_1 -DQ4_1
// wick-spirv: q4_1_norm -DQ4_1 -DNORM
// wick-spirv: swiglu_q4_1 -DQ4_1 -DSWIGLU
// wick-spirv: swiglu_q4_1_norm -DQ4_1 -DSWIGLU -DNORM
// wick-spirv: qkv_q4_1 -DQ4_1 -DQKV
// wick-spirv: qkv_q4_1_norm -DQ4_1 -DQKV -DNORM
// wick-spirv: q8_0 -DQ8_0
// wick-spirv: q8_0_norm -DQ8_0 -DNORM
// wick-spirv: swiglu_q8_0 -DQ8_0 -DSWIGLU
// wick-spirv: swiglu_q8_0_norm -DQ8_0 -DSWIGLU -DNORM
// wick-spirv: qkv_q8_0 -DQ8_0 -DQKV
// wick-spirv: qkv_q8_0_norm -DQ8_0 -DQKV -DNORM
#version 450
#extension GL_KHR_shader_subgroup_basic : require
#extension GL_KHR_shader_subgroup_arithmetic : require
#extension GL_KHR_shader_subgroup_shuffle : require

#define WG 256u

layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

// gemv::GemvParams.
layout(set = 0, binding = 0) uniform Params {
    uint n;             // rows (QKV: of q)
    uint upr;           // units (qs words) per row
    uint out_offset;    // row i goes to out[out_offset + i] (plain, SWIGLU)
    uint eps_bits;      // NORM: RMSNorm epsilon, f32 bits
    uint k4;            // k / 4
    uint nk;            // QKV: rows of k
    uint nv;            // QKV: rows of v
    uint flags;         // bit 0: add bias, bit 1: accumulate
    uint lanes_per_row; // power of two, 1..256
} p;

#if defined(SWIGLU)
layout(set = 0, binding = 1) readonly buffer GateQs { uint gate_qs[]; };
layout(set = 0, binding = 2) readonly buffer GateScales { uint gate_scales[]; };
layout(set = 0, binding = 3) readonly buffer UpQs { uint up_qs[]; };
layout(set = 0, binding = 4) readonly buffer UpScales { uint up_scales[]; };
layout(set = 0, binding = 5) readonly buffer X { vec4 x[]; };
layout(set = 0, binding = 6) buffer Out { float y[]; };
#define NORM_BINDING 7
#elif defined(QKV)
layout(set = 0, binding = 1) readonly buffer QQs { uint q_qs[]; };
layout(set = 0, binding = 2) readonly buffer QScales { uint q_scales[]; };
layout(set = 0, binding = 3) readonly buffer KQs { uint k_qs[]; };
layout(set = 0, binding = 4) readonly buffer KScales { uint k_scales[]; };
layout(set = 0, binding = 5) readonly buffer VQs { uint v_qs[]; };
layout(set = 0, binding = 6) readonly buffer VScales { uint v_scales[]; };
layout(set = 0, binding = 7) readonly buffer X { vec4 x[]; };
// Placeholders (x) when flags bit 0 is clear.
layout(set = 0, binding = 8) readonly buffer QBias { float q_bias[]; };
layout(set = 0, binding = 9) readonly buffer KBias { float k_bias[]; };
layout(set = 0, binding = 10) readonly buffer VBias { float v_bias[]; };
layout(set = 0, binding = 11) buffer QOut { float q_out[]; };
layout(set = 0, binding = 12) buffer KOut { float k_out[]; };
layout(set = 0, binding = 13) buffer VOut { float v_out[]; };
#define NORM_BINDING 14
#else
layout(set = 0, binding = 1) readonly buffer Qs { uint w_qs[]; };
layout(set = 0, binding = 2) readonly buffer Scales { uint w_scales[]; };
layout(set = 0, binding = 3) readonly buffer X { vec4 x[]; };
// A placeholder (x) when flags bit 0 is clear.
layout(set = 0, binding = 4) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = 5) buffer Out { float y[]; };
#define NORM_BINDING 6
#endif

#ifdef NORM
layout(set = 0, binding = NORM_BINDING) readonly buffer NormW { vec4 norm_w[]; };
// One sum of squares per subgroup.
shared float norm_sums[WG];
float x_scale = 1.0;

// Every invocation gets rsqrt(mean(x^2) + eps); called from uniform control flow.
void norm_prologue(uint lid) {
    float s = 0.0;
    for (uint i = lid; i < p.k4; i += WG) {
        vec4 v = x[i];
        s += dot(v, v);
    }
    s = subgroupAdd(s);
    if (subgroupElect()) {
        norm_sums[gl_SubgroupID] = s;
    }
    barrier();
    float t = 0.0;
    for (uint i = 0u; i < gl_NumSubgroups; i++) {
        t += norm_sums[i];
    }
    x_scale = inversesqrt(t / float(4u * p.k4) + uintBitsToFloat(p.eps_bits));
}

vec4 x_at(uint i) {
    return x[i] * x_scale * norm_w[i];
}
#else
vec4 x_at(uint i) {
    return x[i];
}
#endif

// ---- formats --------------------------------------------------------------------------
// A unit is one qs word. XU holds its activations (xa, and xb for the high nibbles) and,
// for Q4, their sum (the affine identity: a Q4_0 block contributes d * (sum(q*x) -
// 8 * sum(x)), a Q4_1 block d * sum(q*x) + m * sum(x), so nibbles need no per-element
// offset). load_x(u) reads the activations of row-relative unit u once for every matrix
// sharing them; SCALE_WORD(g) is the scales word of matrix-wide unit g; unit_value(w, s, g,
// xs) the unit's dot product.
struct XU {
    vec4 xa;
    vec4 xb;
    float sum;
};

// Low and high nibbles of the four bytes of w.
vec4 nib_lo(uint w) {
    return vec4((uvec4(w) >> uvec4(0u, 8u, 16u, 24u)) & 15u);
}
vec4 nib_hi(uint w) {
    return vec4((uvec4(w) >> uvec4(4u, 12u, 20u, 28u)) & 15u);
}

#if defined(Q8_0)
// Word g: four int8, consecutive elements; 8 words per 32-element block; two f16 d per
// scales word (block b at half b & 1 of word b / 2).
XU load_x(uint u) {
    XU r;
    r.xa = x_at(u);
    r.xb = vec4(0.0);
    r.sum = 0.0;
    return r;
}
#define SCALE_WORD(g) ((g) >> 4u)
float unit_value(uint w, uint s, uint g, XU xs) {
    ivec4 q = ivec4(int(w << 24u), int(w << 16u), int(w << 8u), int(w)) >> 24;
    return unpackHalf2x16(s)[(g >> 3u) & 1u] * dot(vec4(q), xs.xa);
}
#elif defined(Q4_0) || defined(Q4_1)
// Word w (0..3) of a block's 16 bytes: elements 4w..4w+3 in its low nibbles, 4w+16..4w+19
// in its high nibbles; 4 words per block.
XU load_x(uint u) {
    uint b = (u >> 2u) * 8u + (u & 3u);
    XU r;
    r.xa = x_at(b);
    r.xb = x_at(b + 4u);
    r.sum = dot(r.xa + r.xb, vec4(1.0));
    return r;
}
#if defined(Q4_0)
// Two f16 d per scales word, as Q8_0.
#define SCALE_WORD(g) ((g) >> 3u)
float unit_value(uint w, uint s, uint g, XU xs) {
    float d = unpackHalf2x16(s)[(g >> 2u) & 1u];
    return d * (dot(nib_lo(w), xs.xa) + dot(nib_hi(w), xs.xb) - 8.0 * xs.sum);
}
#else
// One scales word per block: d in the low half, m in the high half.
#define SCALE_WORD(g) ((g) >> 2u)
float unit_value(uint w, uint s, uint g, XU xs) {
    vec2 dm = unpackHalf2x16(s);
    return dm.x * (dot(nib_lo(w), xs.xa) + dot(nib_hi(w), xs.xb)) + dm.y * xs.sum;
}
#endif
#else
#error "define one of Q4_0, Q4_1, Q8_0"
#endif

#define UNIT(QS, SC, g, xs) unit_value(QS[g], SC[SCALE_WORD(g)], g, xs)

// This lane's partial dot product of the row starting at unit `base` of matrix (QS, SC):
// units l, l + lpr, ... of the row, four per step.
#define DEFINE_ROW_DOT(NAME, QS, SC)                                                    \
    float NAME(uint base, uint l, uint lpr) {                                           \
        float acc = 0.0;                                                                \
        uint u = l;                                                                     \
        for (; u + 3u * lpr < p.upr; u += 4u * lpr) {                                   \
            XU x0 = load_x(u);                                                          \
            XU x1 = load_x(u + lpr);                                                    \
            XU x2 = load_x(u + 2u * lpr);                                               \
            XU x3 = load_x(u + 3u * lpr);                                               \
            float a0 = UNIT(QS, SC, base + u, x0);                                      \
            float a1 = UNIT(QS, SC, base + u + lpr, x1);                                \
            float a2 = UNIT(QS, SC, base + u + 2u * lpr, x2);                           \
            float a3 = UNIT(QS, SC, base + u + 3u * lpr, x3);                           \
            acc += (a0 + a1) + (a2 + a3);                                               \
        }                                                                               \
        for (; u < p.upr; u += lpr) {                                                   \
            acc += UNIT(QS, SC, base + u, load_x(u));                                   \
        }                                                                               \
        return acc;                                                                     \
    }

// ---- reduction ------------------------------------------------------------------------

#ifdef SWIGLU
// gate and up accumulators.
#define ACC vec2
#else
#define ACC float
#endif

// Per-subgroup sums of groups wider than a subgroup.
shared ACC group_sums[WG];

// Sums v over the lpr lanes of this lane's row group; the group's lane 0 (l == 0) gets the
// total. Called from uniform control flow by every invocation.
ACC reduce_row(ACC v, uint lpr, uint l) {
    uint sgs = gl_SubgroupSize;
    if (lpr <= sgs) {
        for (uint off = lpr >> 1u; off > 0u; off >>= 1u) {
            v += subgroupShuffleXor(v, off);
        }
        return v;
    }
    // Whole subgroups: their sums, then lane 0 of the group adds its lpr / sgs subgroups.
    v = subgroupAdd(v);
    if (subgroupElect()) {
        group_sums[gl_SubgroupID] = v;
    }
    barrier();
    if (l == 0u) {
        v = ACC(0.0);
        for (uint i = 0u; i < lpr / sgs; i++) {
            v += group_sums[gl_SubgroupID + i];
        }
    }
    return v;
}

// ---- kernels --------------------------------------------------------------------------

#if defined(SWIGLU)
// gate and up share each unit's activations.
vec2 row_dot_swiglu(uint base, uint l, uint lpr) {
    vec2 acc = vec2(0.0);
    uint u = l;
    for (; u + 3u * lpr < p.upr; u += 4u * lpr) {
        XU x0 = load_x(u);
        XU x1 = load_x(u + lpr);
        XU x2 = load_x(u + 2u * lpr);
        XU x3 = load_x(u + 3u * lpr);
        uint g = base + u;
        acc.x += (UNIT(gate_qs, gate_scales, g, x0) + UNIT(gate_qs, gate_scales, g + lpr, x1))
            + (UNIT(gate_qs, gate_scales, g + 2u * lpr, x2)
                + UNIT(gate_qs, gate_scales, g + 3u * lpr, x3));
        acc.y += (UNIT(up_qs, up_scales, g, x0) + UNIT(up_qs, up_scales, g + lpr, x1))
            + (UNIT(up_qs, up_scales, g + 2u * lpr, x2) + UNIT(up_qs, up_scales, g + 3u * lpr, x3));
    }
    for (; u < p.upr; u += lpr) {
        XU xs = load_x(u);
        acc += vec2(UNIT(gate_qs, gate_scales, base + u, xs), UNIT(up_qs, up_scales, base + u, xs));
    }
    return acc;
}
#elif defined(QKV)
DEFINE_ROW_DOT(row_dot_q, q_qs, q_scales)
DEFINE_ROW_DOT(row_dot_k, k_qs, k_scales)
DEFINE_ROW_DOT(row_dot_v, v_qs, v_scales)
#else
DEFINE_ROW_DOT(row_dot, w_qs, w_scales)
#endif

void main() {
    uint lid = gl_LocalInvocationIndex;
#ifdef NORM
    norm_prologue(lid);
#endif
    uint lpr = p.lanes_per_row;
    uint shift = uint(findLSB(lpr));
    // Lanes numbered subgroup by subgroup, so small row groups lie inside one subgroup.
    uint t = gl_SubgroupID * gl_SubgroupSize + gl_SubgroupInvocationID;
    uint l = t & (lpr - 1u);
    uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    uint row = wg * (WG >> shift) + (t >> shift);
    ACC acc = ACC(0.0);
#if defined(SWIGLU)
    if (row < p.n) {
        acc = row_dot_swiglu(row * p.upr, l, lpr);
    }
    acc = reduce_row(acc, lpr, l);
    if (l == 0u && row < p.n) {
        y[p.out_offset + row] = acc.x / (1.0 + exp(-acc.x)) * acc.y;
    }
#elif defined(QKV)
    // Rows are numbered q, then k, then v; a row group has one row, so it never straddles.
    uint m = 0u;
    uint r = row;
    uint rows = p.n;
    if (r >= p.n) {
        r -= p.n;
        m = 1u;
        rows = p.nk;
        if (r >= p.nk) {
            r -= p.nk;
            m = 2u;
            rows = p.nv;
        }
    }
    if (r < rows) {
        // One branch per matrix (uniform within a group), so each lane loads only its own.
        if (m == 0u) {
            acc = row_dot_q(r * p.upr, l, lpr);
        } else if (m == 1u) {
            acc = row_dot_k(r * p.upr, l, lpr);
        } else {
            acc = row_dot_v(r * p.upr, l, lpr);
        }
    }
    acc = reduce_row(acc, lpr, l);
    if (l == 0u && r < rows) {
        // The bias is read only when bound: the placeholder (x) may be shorter than rows.
        bool has_bias = (p.flags & 1u) != 0u;
        if (m == 0u) {
            if (has_bias) {
                acc += q_bias[r];
            }
            q_out[r] = acc;
        } else if (m == 1u) {
            if (has_bias) {
                acc += k_bias[r];
            }
            k_out[r] = acc;
        } else {
            if (has_bias) {
                acc += v_bias[r];
            }
            v_out[r] = acc;
        }
    }
#else
    if (row < p.n) {
        acc = row_dot(row * p.upr, l, lpr);
    }
    acc = reduce_row(acc, lpr, l);
    if (l == 0u && row < p.n) {
        if ((p.flags & 1u) != 0u) {
            acc += bias[row];
        }
        uint o = p.out_offset + row;
        if ((p.flags & 2u) != 0u) {
            acc += y[o];
        }
        y[o] = acc;
    }
#endif
}
