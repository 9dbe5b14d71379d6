// Native Vulkan GEMV (GLSL 4.50 -> SPIR-V through glslc; wick ships the .spv files next to
// this file). The portable kernel is wgsl/gemv.wgsl; every module here binds exactly the
// layout of its WGSL pipeline (gemv::gemv_spec) and reads the same repacked planes
// (src/quant), so both variants run on the same buffers.
//
// One module per (format, kind): -DQ4_0 / -DQ4_1 / -DQ8_0 / -DQ4_K / -DQ5_K / -DQ6_K picks
// the format; -DSWIGLU the fused gate+up+SwiGLU, -DQKV the fused q/k/v projections, neither
// the plain GEMV; -DNORM the RMSNorm prologue. Bindings (set 0), the same for every format:
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
// per workgroup. A group's lanes stride over the row's units, four units per step so each
// lane has four independent loads in flight. A unit is one qs word for Q4_0/Q4_1/Q8_0 (as in
// the WGSL: adjacent lanes read adjacent words and adjacent activations) and two qs words
// (one 8-byte load, 16 elements) for the K-quants, whose WGSL unit is a 64-element pair: the
// per-sub-block scales are decoded once per 16 elements, and four adjacent lanes still read
// one contiguous 128-byte run of activations (see "formats"). Lanes are numbered subgroup by
// subgroup (subgroup id * size + invocation), so a group smaller than a subgroup lies inside
// one and is reduced with shuffles; a group of one or more whole subgroups is reduced with
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
// wick-spirv: q4_k -DQ4_K
// wick-spirv: q4_k_norm -DQ4_K -DNORM
// wick-spirv: swiglu_q4_k -DQ4_K -DSWIGLU
// wick-spirv: swiglu_q4_k_norm -DQ4_K -DSWIGLU -DNORM
// wick-spirv: qkv_q4_k -DQ4_K -DQKV
// wick-spirv: qkv_q4_k_norm -DQ4_K -DQKV -DNORM
// wick-spirv: q5_k -DQ5_K
// wick-spirv: q5_k_norm -DQ5_K -DNORM
// wick-spirv: swiglu_q5_k -DQ5_K -DSWIGLU
// wick-spirv: swiglu_q5_k_norm -DQ5_K -DSWIGLU -DNORM
// wick-spirv: qkv_q5_k -DQ5_K -DQKV
// wick-spirv: qkv_q5_k_norm -DQ5_K -DQKV -DNORM
// wick-spirv: q6_k -DQ6_K
// wick-spirv: q6_k_norm -DQ6_K -DNORM
// wick-spirv: swiglu_q6_k -DQ6_K -DSWIGLU
// wick-spirv: swiglu_q6_k_norm -DQ6_K -DSWIGLU -DNORM
// wick-spirv: qkv_q6_k -DQ6_K -DQKV
// wick-spirv: qkv_q6_k_norm -DQ6_K -DQKV -DNORM
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

// Element types of the qs and scales planes: the K-quants read 8-byte qs units and 16-byte
// headers (the buffers and their layout are the WGSL's; only the declared element differs).
#if defined(Q4_K) || defined(Q5_K)
#define QS_T uvec2
#define SC_T uvec4
#elif defined(Q6_K)
#define QS_T uvec2
#define SC_T uint
#else
#define QS_T uint
#define SC_T uint
#endif

#if defined(SWIGLU)
layout(set = 0, binding = 1) readonly buffer GateQs { QS_T gate_qs[]; };
layout(set = 0, binding = 2) readonly buffer GateScales { SC_T gate_scales[]; };
layout(set = 0, binding = 3) readonly buffer UpQs { QS_T up_qs[]; };
layout(set = 0, binding = 4) readonly buffer UpScales { SC_T up_scales[]; };
layout(set = 0, binding = 5) readonly buffer X { vec4 x[]; };
layout(set = 0, binding = 6) buffer Out { float y[]; };
#define NORM_BINDING 7
#elif defined(QKV)
layout(set = 0, binding = 1) readonly buffer QQs { QS_T q_qs[]; };
layout(set = 0, binding = 2) readonly buffer QScales { SC_T q_scales[]; };
layout(set = 0, binding = 3) readonly buffer KQs { QS_T k_qs[]; };
layout(set = 0, binding = 4) readonly buffer KScales { SC_T k_scales[]; };
layout(set = 0, binding = 5) readonly buffer VQs { QS_T v_qs[]; };
layout(set = 0, binding = 6) readonly buffer VScales { SC_T v_scales[]; };
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
layout(set = 0, binding = 1) readonly buffer Qs { QS_T w_qs[]; };
layout(set = 0, binding = 2) readonly buffer Scales { SC_T w_scales[]; };
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
// load_x(u) reads the activations of row-relative unit u once for every matrix sharing them
// (an XU); UNIT(QS, SC, g, xs) is the dot product of matrix-wide unit g of the matrix with
// planes QS and SC with them; UNITS_PER_ROW is the units of a row (Params.upr counts the
// WGSL's units: one qs word for Q4_0/Q4_1/Q8_0, one 64-element pair for the K-quants).

// Low and high nibbles of the four bytes of w.
vec4 nib_lo(uint w) {
    return vec4((uvec4(w) >> uvec4(0u, 8u, 16u, 24u)) & 15u);
}
vec4 nib_hi(uint w) {
    return vec4((uvec4(w) >> uvec4(4u, 12u, 20u, 28u)) & 15u);
}

#if defined(Q8_0) || defined(Q4_0) || defined(Q4_1)
// A unit is one qs word. XU holds its activations (xa, and xb for the high nibbles) and, for
// Q4, their sum (the affine identity: a Q4_0 block contributes d * (sum(q*x) - 8 * sum(x)), a
// Q4_1 block d * sum(q*x) + m * sum(x), so nibbles need no per-element offset). SCALE_WORD(g)
// is the scales word of unit g; unit_value(w, s, g, xs) the unit's dot product.
struct XU {
    vec4 xa;
    vec4 xb;
    float sum;
};
#define UNITS_PER_ROW (p.upr)
#define UNIT(QS, SC, g, xs) unit_value(QS[g], SC[SCALE_WORD(g)], g, xs)
#endif

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
#elif defined(Q4_K) || defined(Q5_K) || defined(Q6_K)
// K-quants (module doc of src/quant): 256-element super-blocks b, four 64-element pairs j
// each, whose nibble byte l (l < 32) holds element 64j + l in its low nibble and
// 64j + 32 + l in its high one. A unit is two words, v = 0..3 of its pair: nibble words
// 2v and 2v + 1 (one uvec2 load), so elements 8v..8v+8 of sub-block 2j (low nibbles) and
// the same of sub-block 2j + 1 (high nibbles); 16 units per super-block, so unit g is
// super-block g >> 4, pair (g >> 2) & 3, v = g & 3. Its activations are two runs of eight
// (a0 a1, b0 b1), with their sums for the affine identity (a sub-block contributes
// d*sc*sum(q*x) - dmin*m*sum(x), Q6_K d*sc*(sum(q*x) - 32*sum(x))). Lanes 4i..4i+3 of a
// group read one pair's 32-byte runs of x, so each 128-byte line of x is read whole by
// neighbouring lanes.
struct XU {
    vec4 a0;
    vec4 a1;
    vec4 b0;
    vec4 b1;
    vec2 sum;
};
#define UNITS_PER_ROW (4u * p.upr)

XU load_x(uint u) {
    uint i = ((u >> 2u) << 4u) + ((u & 3u) << 1u);
    XU r;
    r.a0 = x_at(i);
    r.a1 = x_at(i + 1u);
    r.b0 = x_at(i + 8u);
    r.b1 = x_at(i + 9u);
    r.sum = vec2(dot(r.a0 + r.a1, vec4(1.0)), dot(r.b0 + r.b1, vec4(1.0)));
    return r;
}

// The four bytes of w as floats.
vec4 bytes_f(uint w) {
    return vec4((uvec4(w) >> uvec4(0u, 8u, 16u, 24u)) & 0xFFu);
}

// sum(q*x) of the low (x) and high (y) sub-block runs of a unit whose four packed byte words
// are (low of word 2v, low of 2v + 1, high of 2v, high of 2v + 1).
vec2 k_dots(uvec4 q, XU xs) {
    return vec2(dot(bytes_f(q.x), xs.a0) + dot(bytes_f(q.y), xs.a1),
                dot(bytes_f(q.z), xs.b0) + dot(bytes_f(q.w), xs.b1));
}
#endif

#if defined(Q4_K) || defined(Q5_K)
const uint NIB = 0x0F0F0F0Fu;

// Scales header (one uvec4 per super-block): d | dmin << 16, then GGML's 12 bytes of 6-bit
// (scale, min) pairs. Returns the scales (xy) and mins (zw) of sub-blocks 2j and 2j + 1, as
// GGML's get_scale_min_k4 for both at once: bytes 2(j & 1) and 2(j & 1) + 1 of each header
// word, taken as 16 bits; sub-blocks 0..3 (j < 2) are the low 6 bits of words y (scales) and
// z (mins), 4..7 the nibbles of word w with the top 2 bits of y and z.
vec4 k4_scales(uvec4 hdr, uint j) {
    uint sh = (j & 1u) << 4u;
    uint y = hdr.y >> sh;
    uint z = hdr.z >> sh;
    uint w = hdr.w >> sh;
    bool upper = j >= 2u;
    uint sc = upper ? ((w & 0x0F0Fu) | ((y >> 2u) & 0x3030u)) : (y & 0x3F3Fu);
    uint mn = upper ? (((w >> 4u) & 0x0F0Fu) | ((z >> 2u) & 0x3030u)) : (z & 0x3F3Fu);
    return vec4((uvec4(sc, sc >> 8u, mn, mn >> 8u)) & 0xFFu);
}

// d*sc*sum(q*x) - dmin*m*sum(x) over the unit's two sub-block runs.
float k4_combine(uvec4 hdr, uint j, vec2 qx, XU xs) {
    vec4 sm = k4_scales(hdr, j);
    vec2 dd = unpackHalf2x16(hdr.x);
    return dd.x * dot(sm.xy, qx) - dd.y * dot(sm.zw, xs.sum);
}
#endif

#if defined(Q4_K)
// qs: 32 words (16 units) per super-block; scales: the header, one uvec4 per super-block.
float q4k_value(uvec2 q, uvec4 hdr, uint g, XU xs) {
    uvec4 n = uvec4(q & NIB, (q >> 4u) & NIB);
    return k4_combine(hdr, (g >> 2u) & 3u, k_dots(n, xs), xs);
}
#define UNIT(QS, SC, g, xs) q4k_value(QS[g], SC[(g) >> 4u], g, xs)
#elif defined(Q5_K)
// qs as Q4_K; scales: three uvec4 per super-block, the Q4_K header, then 8 words of fifth
// bits, word s for sub-block s (bit l: its element l). The unit's are bits 8v..8v+8 of words
// 2j (low run) and 2j + 1 (high run): the .xy or .zw half of uvec4 1 + j / 2.
//
// Four fifth bits (bits 0..3 of h) moved to bit 4 of bytes 0..3, to OR onto four nibbles:
// the multiply places copies of h at bits 0, 7, 14 and 21, which do not overlap.
uint fifth4(uint h) {
    return (((h & 15u) * 0x00204081u) & 0x01010101u) << 4u;
}
float q5k_value(uvec2 q, uvec4 hdr, uvec4 hv, uint g, XU xs) {
    uint j = (g >> 2u) & 3u;
    uvec2 h = (((j & 1u) != 0u) ? hv.zw : hv.xy) >> ((g & 3u) << 3u);
    uvec4 n = uvec4(q & NIB, (q >> 4u) & NIB);
    n |= uvec4(fifth4(h.x), fifth4(h.x >> 4u), fifth4(h.y), fifth4(h.y >> 4u));
    return k4_combine(hdr, j, k_dots(n, xs), xs);
}
#define UNIT(QS, SC, g, xs)                                                              \
    q5k_value(QS[g], SC[3u * ((g) >> 4u)], SC[3u * ((g) >> 4u) + 1u + (((g) >> 3u) & 1u)], \
              g, xs)
#elif defined(Q6_K)
// qs: 48 words per super-block, 12 per pair: nibble words 0..8 (uvec2 v = 0..3), then the
// top 2 bits (uvec2 4 and 5). Top word 8 + i byte b holds, in bits 0-1 / 4-5, the top bits of
// the low / high nibble of byte b of nibble word i, in bits 2-3 / 6-7 those of word i + 4; so
// unit v's two top words are uvec2 4 + (v & 1), shifted right by 2 * (v >> 1). Scales (one
// uint plane): per pair of super-blocks nine words, the 16 i8 scales of each (scale s in
// byte s % 4 of word s / 4, covering elements 16s..16s+16), then d(2i) | d(2i+1) << 16. The
// unit's low run has scale 4j + v / 2 (byte v / 2 of word j), its high run 4j + 2 + v / 2.
float q6k_value(uvec2 q, uvec2 top, uint scw, uint dw, uint g, XU xs) {
    uint v = g & 3u;
    uint b = g >> 4u;
    uvec2 t = top >> (2u * (v >> 1u));
    uvec4 n = uvec4(q & 0x0F0F0F0Fu, (q >> 4u) & 0x0F0F0F0Fu);
    n |= uvec4((t & 0x03030303u) << 4u, t & 0x30303030u);
    vec2 qx = k_dots(n, xs) - 32.0 * xs.sum;
    int sc = int(scw);
    vec2 s = vec2(bitfieldExtract(sc, int(8u * (v >> 1u)), 8),
                  bitfieldExtract(sc, int(8u * (v >> 1u)) + 16, 8));
    return unpackHalf2x16(dw)[b & 1u] * dot(s, qx);
}
#define Q6K_SCALES(b) (9u * ((b) >> 1u) + 4u * ((b) & 1u))
#define UNIT(QS, SC, g, xs)                                                               \
    q6k_value(QS[6u * ((g) >> 2u) + ((g) & 3u)], QS[6u * ((g) >> 2u) + 4u + ((g) & 1u)], \
              SC[Q6K_SCALES((g) >> 4u) + (((g) >> 2u) & 3u)],                             \
              SC[9u * ((g) >> 5u) + 8u], g, xs)
#endif

#if !defined(UNIT)
#error "define one of Q4_0, Q4_1, Q8_0, Q4_K, Q5_K, Q6_K"
#endif

// This lane's partial dot product of the row starting at unit `base` of matrix (QS, SC):
// units l, l + lpr, ... of the row, four per step.
#define DEFINE_ROW_DOT(NAME, QS, SC)                                                    \
    float NAME(uint base, uint l, uint lpr) {                                           \
        float acc = 0.0;                                                                \
        uint u = l;                                                                     \
        for (; u + 3u * lpr < UNITS_PER_ROW; u += 4u * lpr) {                           \
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
        for (; u < UNITS_PER_ROW; u += lpr) {                                           \
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
    for (; u + 3u * lpr < UNITS_PER_ROW; u += 4u * lpr) {
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
    for (; u < UNITS_PER_ROW; u += lpr) {
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
        acc = row_dot_swiglu(row * UNITS_PER_ROW, l, lpr);
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
            acc = row_dot_q(r * UNITS_PER_ROW, l, lpr);
        } else if (m == 1u) {
            acc = row_dot_k(r * UNITS_PER_ROW, l, lpr);
        } else {
            acc = row_dot_v(r * UNITS_PER_ROW, l, lpr);
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
        acc = row_dot(row * UNITS_PER_ROW, l, lpr);
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
