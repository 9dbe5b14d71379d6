// Quantises one f32 activation row x[k] (k a multiple of 32) into 8-bit blocks for the
// integer-dot GEMV (gemv_dot.wgsl), once per decode step: block b of 32 elements becomes
// 32 int8 q = round(x / d) with d = max|x| / 127 (GGML's Q8_1), packed four to a word, and
// the pair (d, d * sum(q)) that the affine weight formats (Q4_1, Q5_1, K-quant minimums)
// multiply with their offsets.
//
// Output layout (u32 words; the GEMV reads it as vec4s): words [0, k/4) the packed int8,
// word 8b + i holding elements 32b + 4i .. 32b + 4i + 3 (byte e = element 4i + e); then from
// word k/4 two f32 bits per block, d(b) at k/4 + 2b and d(b) * sum(q) at k/4 + 2b + 1.
//
// One lane per block: the row is a few KB and the kernel is bound by its launch, not by its
// loads. NORM (define): x is the residual stream and is RMS-normalised on load
// (x * rsqrt(mean(x^2) + eps) * norm_w), each workgroup reducing all of x itself, so the
// decode step's norm and quantisation are one dispatch.

#include "reduce"

struct Params {
    // Elements of x (a multiple of 32).
    k: u32,
    // NORM: the RMSNorm epsilon (f32 bits).
    eps_bits: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
#ifdef NORM
@group(0) @binding(3) var<storage, read> norm_w: array<vec4<f32>>;
#endif

@compute @workgroup_size(WG)
fn act_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    var scale = 1.0;
#ifdef NORM
    var ss = 0.0;
    for (var i = lane.lid; i < p.k / 4u; i += WG) {
        let v = x[i];
        ss += dot(v, v);
    }
    scale = inverseSqrt(wg_sum(ss, lane) / f32(p.k) + bitcast<f32>(p.eps_bits));
#endif
    let b = (wid.x + wid.y * nwg.x) * WG + lane.lid;
    let nb = p.k / 32u;
    if (b >= nb) {
        return;
    }
    var v: array<vec4<f32>, 8>;
    var amax = 0.0;
    for (var i = 0u; i < 8u; i++) {
        var t = x[8u * b + i];
#ifdef NORM
        t = t * scale * norm_w[8u * b + i];
#endif
        v[i] = t;
        let a = abs(t);
        amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
    }
    let d = amax / 127.0;
    // An all-zero block quantises to zeros with d = 0.
    let id = select(0.0, 1.0 / d, d > 0.0);
    var qsum = 0;
    for (var i = 0u; i < 8u; i++) {
        // |x| * id <= 127 up to rounding: the clamp keeps a rounding overshoot in range.
        let q = clamp(vec4<i32>(round(v[i] * id)), vec4<i32>(-127), vec4<i32>(127));
        qsum += q.x + q.y + q.z + q.w;
        xq[8u * b + i] = pack4xI8(q);
    }
    let ds = p.k / 4u + 2u * b;
    xq[ds] = bitcast<u32>(d);
    xq[ds + 1u] = bitcast<u32>(d * f32(qsum));
}
