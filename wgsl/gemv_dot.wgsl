// Integer-dot GEMV: y = W x for an activation row already quantised by act_q8.wgsl into
// 8-bit blocks of 32 (int8 q, f32 d and d * sum(q) per block) and an n x k weight matrix in
// the GPU planes of src/quant. Each weight block's integer values meet the int8 activations
// in 4-way packed dot products (dot4I8Packed: OpSDot on Vulkan devices with integer dot
// products, a polyfill elsewhere), and the float scales are applied once per 32 (Q6_K: 16)
// elements: no per-element f32 activation loads, which bound the float GEMV (gemv.wgsl).
//
// Work split as gemv.wgsl: WG / LPR row groups of LPR lanes; a row group owns RPG rows; its
// lanes stride over the row's units, each unit's activations loaded once and used for all
// RPG rows; partial sums reduced with subgroup shuffles (SG_REDUCE) or a workgroup tree.
// A unit is one 32-element block (Q8_0, Q4_x, Q5_x) or one 64-element K-quant pair (two
// activation blocks).
//
// Weight values as int8: Q8_0 as stored; Q4_0 nibbles minus 8 and Q6_K 6-bit values minus 32
// and Q5_0 5-bit values minus 16 formed bytewise (below), so those need no activation sums;
// the affine formats (Q4_1, Q5_1, Q4_K, Q5_K) keep their unsigned values (< 32, so valid int8)
// and multiply their minimums by the activation block's d * sum(q).
//
// Defines: FMT_Q8_0 / FMT_Q4_0 / FMT_Q4_1 / FMT_Q5_0 / FMT_Q5_1 / FMT_Q4_K / FMT_Q5_K /
// FMT_Q6_K; SWIGLU and QKV as gemv.wgsl's. Params, bindings, reduction and entry points are
// gemv.wgsl's (gemv_rows.wgsl), with act_q8's quantised activations as x.
// QPRO (with the value define XQ_VEC4): x is the f32 row itself, as for the float GEMV, and
// every workgroup quantises it into workgroup memory in its prologue (act_q8's arithmetic and
// layout, XQ_VEC4 vec4s: k / 16 of packed int8, then k / 64 of (d, d * sum) pairs), with
// gemv.wgsl's NORM prologue (x_norm.wgsl) before it where the row is the residual stream. The
// row is then read from global memory once per workgroup (a few KB, from L2) instead of
// costing a dispatch of its own, whose fixed cost on a wide GPU exceeds the quantisation.

#include "reduce"
#include "dequant"

// One qs load: a vec4 of a block's (or a K-quant pair's) words; x: act_q8's words as vec4s,
// or (QPRO) the f32 row.
alias WUnit = vec4<u32>;
#ifdef QPRO
alias XElem = vec4<f32>;
#else
alias XElem = vec4<u32>;
#endif

#include "gemv_rows"

#ifdef QPRO
#include "x_norm"
// The row quantised as act_q8 writes it (vec4 i = its words 4i .. 4i + 3).
var<workgroup> xs: array<vec4<u32>, XQ_VEC4>;
#endif

// Vec4 i of the quantised row.
fn xq_at(i: u32) -> vec4<u32> {
#ifdef QPRO
    return xs[i];
#else
    return x[i];
#endif
}

// The activations of one unit: XQ vec4s of packed int8 (8 words per block) and, per block,
// (d, d * sum(q)) in ds.xy (first block) and ds.zw (second).
struct Act {
    q: array<vec4<u32>, 4>,
    ds: vec4<f32>,
}

// ---- per-format units -------------------------------------------------------------------
// XB: activation blocks per unit; SElem: the scales plane's element type.
// unit_value(m, g, a): the dot product of unit g (global: row * upr + unit) of matrix m.

#ifdef FMT_Q8_0
const XB: u32 = 1u;
alias SElem = u32;
// Two vec4 of int8 per block; d: f16, two blocks per word.
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let w0 = qs_at(m, 2u * g);
    let w1 = qs_at(m, 2u * g + 1u);
    var s = 0;
    for (var i = 0u; i < 4u; i++) {
        s += dot4I8Packed(w0[i], a.q[0][i]) + dot4I8Packed(w1[i], a.q[1][i]);
    }
    let d = f16_of(sc_at(m, q8_d_word(g)), g);
    return d * a.ds.x * f32(s);
}
#endif

#ifdef FMT_Q4_0
const XB: u32 = 1u;
alias SElem = u32;
// Nibbles n (bytes 0..15) to the int8 bytes n - 8: n >= 8 keeps its low 3 bits, n < 8 gets
// the top five bits set (0xF8 | n).
fn q4_minus8(n: u32) -> u32 {
    return (n & 0x07070707u) | ((~n & 0x08080808u) * 0x1Fu);
}
// One vec4 per block: word w holds elements 4w.. (low nibbles) and 16 + 4w.. (high).
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let q = qs_at(m, g);
    var s = 0;
    for (var w = 0u; w < 4u; w++) {
        s += dot4I8Packed(q4_minus8(lo_nibbles(q[w])), a.q[0][w]) + dot4I8Packed(q4_minus8(hi_nibbles(q[w])), a.q[1][w]);
    }
    let d = f16_of(sc_at(m, q8_d_word(g)), g);
    return d * a.ds.x * f32(s);
}
#endif

#ifdef FMT_Q4_K
const XB: u32 = 2u;
// One vec4 per super-block: d | dmin << 16, then the 12 scale bytes.
alias SElem = vec4<u32>;
// Pair j = g % 4 of super-block g / 4: two vec4 of nibbles, low nibbles sub-block 2j, high
// nibbles sub-block 2j + 1 (32 elements each, one activation block each).
// x = d*sc*q - dmin*m per sub-block: d*sc*dx*sum(q*qx) - dmin*m*(dx*sum(qx)).
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let q0 = qs_at(m, 2u * g);
    let q1 = qs_at(m, 2u * g + 1u);
    var lo = 0;
    var hi = 0;
    for (var w = 0u; w < 4u; w++) {
        lo += dot4I8Packed(lo_nibbles(q0[w]), a.q[0][w]) + dot4I8Packed(lo_nibbles(q1[w]), a.q[1][w]);
        hi += dot4I8Packed(hi_nibbles(q0[w]), a.q[2][w]) + dot4I8Packed(hi_nibbles(q1[w]), a.q[3][w]);
    }
    let hdr = sc_at(m, g >> 2u);
    let j = g & 3u;
    let dd = unpack2x16float(hdr.x);
    let sa = k4_scale_min(hdr, 2u * j);
    let sb = k4_scale_min(hdr, 2u * j + 1u);
    return dd.x * (sa.x * a.ds.x * f32(lo) + sb.x * a.ds.z * f32(hi)) - dd.y * (sa.y * a.ds.y + sb.y * a.ds.w);
}
#endif

#ifdef FMT_Q6_K
const XB: u32 = 2u;
alias SElem = u32;
// 6-bit values v (bytes 0..63) to the int8 bytes v - 32: v >= 32 keeps its low 5 bits,
// v < 32 gets the top three bits set (0xE0 | v).
fn q6_minus32(v: u32) -> u32 {
    return (v & 0x1F1F1F1Fu) | ((~v & 0x20202020u) * 7u);
}
// A pair: three vec4, the nibble words 0..4 and 4..8, then their top 2 bits (module doc of
// src/quant). Scales per pair of super-blocks: 4 words of i8 scales each, then d(2i) | d(2i+1) << 16.
// Sixteen elements per scale: 0..16 (low nibbles of q0), 16..32 (low of q1), 32..48 (high of
// q0), 48..64 (high of q1); so activation block 0 is q0/q1's low nibbles, block 1 their high.
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let b = g >> 2u;
    let sc = i8x4(sc_at(m, q6k_scales_word(b, g & 3u)));
    let d = f16_of(sc_at(m, q6k_d_word(b)), b);
    let q0 = qs_at(m, 3u * g);
    let q1 = qs_at(m, 3u * g + 1u);
    let qh = qs_at(m, 3u * g + 2u);
    var s = vec4<i32>(0);
    for (var w = 0u; w < 4u; w++) {
        let v0 = q6_top(qh[w], 0u);
        let v1 = q6_top(qh[w], 1u);
        s.x += dot4I8Packed(q6_minus32(q6_lo(q0[w], v0)), a.q[0][w]);
        s.y += dot4I8Packed(q6_minus32(q6_lo(q1[w], v1)), a.q[1][w]);
        s.z += dot4I8Packed(q6_minus32(q6_hi(q0[w], v0)), a.q[2][w]);
        s.w += dot4I8Packed(q6_minus32(q6_hi(q1[w], v1)), a.q[3][w]);
    }
    return d * dot(sc * vec4<f32>(s), a.ds.xxzz);
}
#endif

#ifdef FMT_Q4_1
const XB: u32 = 1u;
alias SElem = u32;
// As Q4_0, one word d | m << 16 per block; x = d*q + m: d*dx*sum(q*qx) + m*(dx*sum(qx)).
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let q = qs_at(m, g);
    var s = 0;
    for (var w = 0u; w < 4u; w++) {
        s += dot4I8Packed(lo_nibbles(q[w]), a.q[0][w]) + dot4I8Packed(hi_nibbles(q[w]), a.q[1][w]);
    }
    let dm = unpack2x16float(sc_at(m, g));
    return dm.x * a.ds.x * f32(s) + dm.y * a.ds.y;
}
#endif

// Five-bit values v (bytes 0..31) to the int8 bytes v - 16.
fn q5_minus16(v: u32) -> u32 {
    return (v & 0x0F0F0F0Fu) | ((~v & 0x10101010u) * 0x0Fu);
}

#ifdef FMT_Q5_0
const XB: u32 = 1u;
alias SElem = u32;
// Scales per pair of blocks: qh(2i), qh(2i+1), d(2i) | d(2i+1) << 16. x = d * (q - 16).
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let qh = sc_at(m, q5_0_qh_word(g));
    let d = f16_of(sc_at(m, q5_0_d_word(g)), g);
    let q = qs_at(m, g);
    var s = 0;
    for (var w = 0u; w < 4u; w++) {
        s += dot4I8Packed(q5_minus16(q5_lo(q[w], qh, w)), a.q[0][w]) + dot4I8Packed(q5_minus16(q5_hi(q[w], qh, w)), a.q[1][w]);
    }
    return d * a.ds.x * f32(s);
}
#endif

#ifdef FMT_Q5_1
const XB: u32 = 1u;
alias SElem = u32;
// Two words per block: qh, then d | m << 16. x = d * q + m.
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let qh = sc_at(m, q5_1_qh_word(g));
    let dm = unpack2x16float(sc_at(m, q5_1_dm_word(g)));
    let q = qs_at(m, g);
    var s = 0;
    for (var w = 0u; w < 4u; w++) {
        s += dot4I8Packed(q5_lo(q[w], qh, w), a.q[0][w]) + dot4I8Packed(q5_hi(q[w], qh, w), a.q[1][w]);
    }
    return dm.x * a.ds.x * f32(s) + dm.y * a.ds.y;
}
#endif

#ifdef FMT_Q5_K
const XB: u32 = 2u;
// Three vec4 per super-block: the Q4_K header, then 8 words of fifth bits, word s for
// sub-block s (bit l = element 32s + l).
alias SElem = vec4<u32>;
// As Q4_K with 5-bit values: word i (0..8) of the pair's nibbles holds elements 4i.. of
// sub-block 2j (low nibbles, fifth bits h0) and of sub-block 2j + 1 (high, h1).
fn unit_value(m: u32, g: u32, a: Act) -> f32 {
    let b = g >> 2u;
    let j = g & 3u;
    let hv = sc_at(m, 3u * b + 1u + (j >> 1u));
    let h0 = hv[2u * (j & 1u)];
    let h1 = hv[2u * (j & 1u) + 1u];
    let q0 = qs_at(m, 2u * g);
    let q1 = qs_at(m, 2u * g + 1u);
    var lo = 0;
    var hi = 0;
    for (var w = 0u; w < 4u; w++) {
        lo += dot4I8Packed(with_fifth(lo_nibbles(q0[w]), h0, 4u * w), a.q[0][w])
            + dot4I8Packed(with_fifth(lo_nibbles(q1[w]), h0, 16u + 4u * w), a.q[1][w]);
        hi += dot4I8Packed(with_fifth(hi_nibbles(q0[w]), h1, 4u * w), a.q[2][w])
            + dot4I8Packed(with_fifth(hi_nibbles(q1[w]), h1, 16u + 4u * w), a.q[3][w]);
    }
    let hdr = sc_at(m, 3u * b);
    let dd = unpack2x16float(hdr.x);
    let sa = k4_scale_min(hdr, 2u * j);
    let sb = k4_scale_min(hdr, 2u * j + 1u);
    return dd.x * (sa.x * a.ds.x * f32(lo) + sb.x * a.ds.z * f32(hi)) - dd.y * (sa.y * a.ds.y + sb.y * a.ds.w);
}
#endif

// The activations of row-local unit u: blocks XB*u .. XB*u + XB.
fn load_act(u: u32) -> Act {
    var a: Act;
    let b0 = XB * u;
    for (var i = 0u; i < 2u * XB; i++) {
        a.q[i] = xq_at(2u * b0 + i);
    }
    let ds = bitcast<vec4<f32>>(xq_at(p.k4 / 4u + (b0 >> 1u)));
    if (XB == 2u) {
        a.ds = ds;
    } else if ((b0 & 1u) == 0u) {
        a.ds = ds.xyxy;
    } else {
        a.ds = ds.zwzw;
    }
    return a;
}

// ---- kernel -----------------------------------------------------------------------------

// QPRO: quantises the (normalised) row into xs, one lane per 32-element block, exactly as
// act_q8 does (d = max|x| / 127, q = round(x / d) clamped to +-127, d * sum(q)); without
// QPRO act_q8 has done it.
fn prologue(lane: Lane) {
#ifdef QPRO
    norm_prologue(lane);
    let n_blocks = p.k4 / 8u;
    for (var b = lane.lid; b < n_blocks; b += WG) {
        var v: array<vec4<f32>, 8>;
        var amax = 0.0;
        for (var j = 0u; j < 8u; j++) {
            v[j] = x_at(8u * b + j);
            let a = abs(v[j]);
            amax = max(amax, max(max(a.x, a.y), max(a.z, a.w)));
        }
        let d = amax / 127.0;
        let id = select(0.0, 1.0 / d, d > 0.0);
        var words: array<u32, 8>;
        var qsum = 0;
        for (var j = 0u; j < 8u; j++) {
            let q = clamp(vec4<i32>(round(v[j] * id)), vec4<i32>(-127), vec4<i32>(127));
            qsum += q.x + q.y + q.z + q.w;
            words[j] = pack4xI8(q);
        }
        xs[2u * b] = vec4(words[0], words[1], words[2], words[3]);
        xs[2u * b + 1u] = vec4(words[4], words[5], words[6], words[7]);
        // Blocks 2i and 2i + 1 share vec4 i of the pairs: each writes its half.
        let ds = p.k4 / 4u + b / 2u;
        let pair = vec2(bitcast<u32>(d), bitcast<u32>(d * f32(qsum)));
        if ((b & 1u) == 0u) {
            xs[ds].x = pair.x;
            xs[ds].y = pair.y;
        } else {
            xs[ds].z = pair.x;
            xs[ds].w = pair.y;
        }
    }
    workgroupBarrier();
#endif
}

fn accumulate_unit(acc: ptr<function, array<f32, 16>>, row0: u32, u: u32) {
    let a = load_act(u);
    for (var r = 0u; r < RPG; r++) {
        // Rows past the end recompute the last row: every lane must reach the reduction,
        // and the result is never written.
        let g = min(row0 + r, cur_n - 1u) * p.upr + u;
        (*acc)[r] += unit_value(0u, g, a);
#ifdef SWIGLU
        (*acc)[RPG + r] += unit_value(1u, g, a);
#endif
    }
}

fn accumulate_rows(acc: ptr<function, array<f32, 16>>, row0: u32, lane: Lane, l: u32) {
    var u = l;
    // Two units per step: independent loads in flight.
    while (u + LPR < p.upr) {
        accumulate_unit(acc, row0, u);
        accumulate_unit(acc, row0, u + LPR);
        u += 2u * LPR;
    }
    for (; u < p.upr; u += LPR) {
        accumulate_unit(acc, row0, u);
    }
    reduce_rows(acc, lane, l);
}
