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
// Eight lanes per block, one vec4 each: a decode step quantises a few rows of a few KB, so
// the kernel's time is its latency, and spreading each block over lanes keeps every lane's
// chain of loads short (one lane per block took ~12 us per row on an H100). The block's
// largest |x| and its sum of q meet in workgroup memory. NORM (define): x is the residual
// stream and is RMS-normalised on load (x * rsqrt(mean(x^2) + eps) * norm_w), each
// workgroup reducing all of x itself, so the decode step's norm and quantisation are one
// dispatch.

#include "reduce"

struct Params {
    // Elements of x (a multiple of 32).
    k: u32,
    // NORM: the RMSNorm epsilon (f32 bits).
    eps_bits: u32,
    _pad0: u32,
    _pad1: u32,
}

// Lanes per workgroup: a multiple of 8 (whole blocks), at most 256 (reduce's scratch).
override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
#ifdef NORM
@group(0) @binding(3) var<storage, read> norm_w: array<vec4<f32>>;
#endif

// Per lane: the largest |x| of its vec4, then the sum of its four q.
var<workgroup> lane_amax: array<f32, 256>;
var<workgroup> lane_qsum: array<i32, 256>;

@compute @workgroup_size(WG)
fn act_q8(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let lid = lane.lid;
    let n4 = p.k / 4u;
    var scale = 1.0;
#ifdef NORM
    var ss = 0.0;
    for (var i = lid; i < n4; i += WG) {
        let v = x[i];
        ss += dot(v, v);
    }
    scale = inverseSqrt(wg_sum(ss, lane) / f32(p.k) + bitcast<f32>(p.eps_bits));
#endif
    // vec4 i of x: element 4i of block i / 8, packed into word i (8 words per block).
    let i = (wid.x + wid.y * nwg.x) * WG + lid;
    let live = i < n4;
    var v = vec4<f32>(0.0);
    if (live) {
        v = x[i];
#ifdef NORM
        v = v * scale * norm_w[i];
#endif
    }
    let a = abs(v);
    lane_amax[lid] = max(max(a.x, a.y), max(a.z, a.w));
    workgroupBarrier();
    let first = lid & ~7u;
    var amax = 0.0;
    for (var j = 0u; j < 8u; j++) {
        amax = max(amax, lane_amax[first + j]);
    }
    let d = amax / 127.0;
    // An all-zero block quantises to zeros with d = 0.
    let id = select(0.0, 1.0 / d, d > 0.0);
    // |x| * id <= 127 up to rounding: the clamp keeps a rounding overshoot in range.
    let q = clamp(vec4<i32>(round(v * id)), vec4<i32>(-127), vec4<i32>(127));
    lane_qsum[lid] = q.x + q.y + q.z + q.w;
    workgroupBarrier();
    if (!live) {
        return;
    }
    xq[i] = pack4xI8(q);
    if (lid == first) {
        var qsum = 0;
        for (var j = 0u; j < 8u; j++) {
            qsum += lane_qsum[first + j];
        }
        let ds = n4 + 2u * (i / 8u);
        xq[ds] = bitcast<u32>(d);
        xq[ds + 1u] = bitcast<u32>(d * f32(qsum));
    }
}
