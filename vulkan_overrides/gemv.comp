// Native Vulkan GEMV (GLSL 4.50 -> SPIR-V through glslc; wick ships the .spv next to this file).
// The portable kernel is wgsl/gemv.wgsl; this variant binds exactly its plain-GEMV layout and
// reads the same repacked planes (src/quant), so both can be compared on the same buffers:
//   set 0: 0 Params (uniform), 1 qs words, 2 scales, 3 x (vec4), 4 bias, 5 out.
// Covered: Q8_0 without the RMSNorm prologue. Epilogues come from Params.flags (bit 0: add
// bias[row], bit 1: accumulate into out) because passthrough SPIR-V gets no override constants.
// Fixed work split (the host dispatches for it, gemv::NATIVE_CONFIG): 256 lanes, 32 lanes per
// row, 8 rows per workgroup; lanes stride over the row's words four at a time (independent
// loads in flight), then a workgroup-memory tree sums each row's 32 partials (no assumption
// about the subgroup size, which is 8 on lavapipe and 32 on NVIDIA).
#version 450

layout(local_size_x = 256, local_size_y = 1, local_size_z = 1) in;

layout(set = 0, binding = 0) uniform Params {
    uint n;          // rows
    uint upr;        // words (units) per row: k / 4
    uint out_offset; // row i goes to out[out_offset + i]
    uint eps_bits;   // unused here (norm prologue)
    uint k4;         // k / 4
    uint nk;         // unused here (QKV)
    uint nv;         // unused here (QKV)
    uint flags;      // bit 0: bias, bit 1: accumulate
} p;

layout(set = 0, binding = 1) readonly buffer Qs { uint w_qs[]; };
// Two f16 block scales per word; block b of the whole matrix at half (b & 1) of word b / 2.
layout(set = 0, binding = 2) readonly buffer Scales { uint w_scales[]; };
layout(set = 0, binding = 3) readonly buffer X { vec4 x[]; };
layout(set = 0, binding = 4) readonly buffer Bias { float bias[]; };
layout(set = 0, binding = 5) buffer Out { float y[]; };

const uint LPR = 32u;
const uint ROWS = 256u / LPR;

shared float partial[256];

// Word g of the matrix (4 int8 weights) times its activations, scaled by its block's d.
float unit_value(uint g, uint u) {
    uint w = w_qs[g];
    ivec4 q = ivec4(int(w << 24), int(w << 16), int(w << 8), int(w)) >> 24;
    float d = unpackHalf2x16(w_scales[g >> 4u])[(g >> 3u) & 1u];
    return d * dot(vec4(q), x[u]);
}

void main() {
    uint lid = gl_LocalInvocationIndex;
    uint wg = gl_WorkGroupID.x + gl_WorkGroupID.y * gl_NumWorkGroups.x;
    uint row = wg * ROWS + lid / LPR;
    uint l = lid % LPR;
    float acc = 0.0;
    if (row < p.n) {
        uint base = row * p.upr;
        uint u = l;
        for (; u + 3u * LPR < p.upr; u += 4u * LPR) {
            float a0 = unit_value(base + u, u);
            float a1 = unit_value(base + u + LPR, u + LPR);
            float a2 = unit_value(base + u + 2u * LPR, u + 2u * LPR);
            float a3 = unit_value(base + u + 3u * LPR, u + 3u * LPR);
            acc += (a0 + a1) + (a2 + a3);
        }
        for (; u < p.upr; u += LPR) {
            acc += unit_value(base + u, u);
        }
    }
    partial[lid] = acc;
    barrier();
    for (uint s = LPR / 2u; s > 0u; s >>= 1u) {
        if (l < s) {
            partial[lid] += partial[lid + s];
        }
        barrier();
    }
    if (l == 0u && row < p.n) {
        float v = partial[lid];
        if ((p.flags & 1u) != 0u) {
            v += bias[row];
        }
        uint o = p.out_offset + row;
        if ((p.flags & 2u) != 0u) {
            v += y[o];
        }
        y[o] = v;
    }
}
