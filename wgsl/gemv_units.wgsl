// The float GEMVs' per-format units, shared by gemv.wgsl and gemv_batch.wgsl through
// `#include "gemv_units"` (after "dequant"). A unit is one qs load of a weight row (gemv.wgsl's
// header describes the units of each format). Each format gives
//   alias WUnit: the type of one qs load; alias SElem: the element type of the scales plane;
//   XV: vec4<f32> of x per unit; SUM_X: unit_dot needs x_stats (sums of x over the unit's four
//   quarters, for the affine identity); WORD_UNITS (Q4_0, Q4_1): units are words of a block;
//   struct/alias WVal: one unit's weights as loaded, with the scales that apply to them;
//   unit_load(m, g) -> WVal: unit g (row * upr + unit) of matrix m, read once;
//   unit_dot(w, xs, st) -> f32: its dot product with the unit's activations xs (load_x), st
//     their x_stats.
// The split lets gemv_batch.wgsl apply one loaded unit to several activation rows; the single
// GEMV calls unit_dot(unit_load(..)). The includer declares qs_at(m, g) -> WUnit,
// sc_at(m, i) -> SElem (matrix m's planes) and x_at(i) -> vec4<f32> (vec4 i of x).

#ifdef FMT_F32
alias WUnit = vec4<f32>;
alias SElem = u32;
const XV: u32 = 1u;
const SUM_X: bool = false;
alias WVal = vec4<f32>;
fn unit_load(m: u32, g: u32) -> WVal {
    return qs_at(m, g);
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return dot(w, xs[0]);
}
#endif

#ifdef FMT_F16
alias WUnit = vec2<u32>;
alias SElem = u32;
const XV: u32 = 1u;
const SUM_X: bool = false;
alias WVal = vec4<f32>;
fn unit_load(m: u32, g: u32) -> WVal {
    let q = qs_at(m, g);
    return vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return dot(w, xs[0]);
}
#endif

#ifdef FMT_BF16
alias WUnit = vec2<u32>;
alias SElem = u32;
const XV: u32 = 1u;
const SUM_X: bool = false;
alias WVal = vec4<f32>;
fn unit_load(m: u32, g: u32) -> WVal {
    let q = qs_at(m, g);
    return vec4<f32>(bf16x2(q.x), bf16x2(q.y));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return dot(w, xs[0]);
}
#endif

#ifdef FMT_Q8_0
// A unit is one word: 4 int8, contiguous elements; 8 units per block, so unit g belongs to
// block g / 8. Adjacent lanes read adjacent words and adjacent vec4s of x (coalesced).
alias WUnit = u32;
alias SElem = u32;
const XV: u32 = 1u;
const SUM_X: bool = false;
struct WVal {
    d: f32,
    q: vec4<f32>,
}
fn unit_load(m: u32, g: u32) -> WVal {
    let b = g >> 3u;
    return WVal(f16_of(sc_at(m, q8_d_word(b)), b), i8x4(qs_at(m, g)));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return w.d * dot(w.q, xs[0]);
}
#endif

// sum(q*x) over the 32 nibbles of one 32-element block (x in 8 vec4).
fn q4_dot(q: vec4<u32>, xs: array<vec4<f32>, 8>) -> f32 {
    return dot(nib_lo(q.x), xs[0]) + dot(nib_lo(q.y), xs[1]) + dot(nib_lo(q.z), xs[2]) + dot(nib_lo(q.w), xs[3])
         + dot(nib_hi(q.x), xs[4]) + dot(nib_hi(q.y), xs[5]) + dot(nib_hi(q.z), xs[6]) + dot(nib_hi(q.w), xs[7]);
}
// sum(h_e * x_e) over a 32-element run whose bit e of h is element e's fifth bit; x from xs[o..o+8].
fn qh_dot(h: u32, xs: array<vec4<f32>, XV>, o: u32) -> f32 {
    var s = 0.0;
    for (var i = 0u; i < 8u; i++) {
        s += dot(bits4(h, 4u * i), xs[o + i]);
    }
    return s;
}

#ifdef FMT_Q4_0
// A unit is one word of a block's 16 bytes: word w (0..3) holds elements 4w..4w+3 in its low
// nibbles and 4w+16..4w+19 in its high nibbles; 4 units per block. Lanes on adjacent words
// read adjacent vec4s of x (WORD_UNITS), instead of each lane striding through a block.
alias WUnit = u32;
alias SElem = u32;
const XV: u32 = 2u;
const SUM_X: bool = true;
#define WORD_UNITS
// The word's nibbles as floats and its block's d (one f16 per block, two blocks per word).
struct WVal {
    d: f32,
    lo: vec4<f32>,
    hi: vec4<f32>,
}
fn unit_load(m: u32, g: u32) -> WVal {
    let q = qs_at(m, g);
    let b = g >> 2u;
    return WVal(f16_of(sc_at(m, q8_d_word(b)), b), nib_lo(q), nib_hi(q));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return w.d * (dot(w.lo, xs[0]) + dot(w.hi, xs[1]) - 8.0 * (st.x + st.y));
}
#endif

#ifdef FMT_Q4_1
// Word units as Q4_0.
alias WUnit = u32;
alias SElem = u32;
const XV: u32 = 2u;
const SUM_X: bool = true;
#define WORD_UNITS
// One word per block: d in the low half, m in the high half.
struct WVal {
    dm: vec2<f32>,
    lo: vec4<f32>,
    hi: vec4<f32>,
}
fn unit_load(m: u32, g: u32) -> WVal {
    let q = qs_at(m, g);
    return WVal(unpack2x16float(sc_at(m, g >> 2u)), nib_lo(q), nib_hi(q));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return w.dm.x * (dot(w.lo, xs[0]) + dot(w.hi, xs[1])) + w.dm.y * (st.x + st.y);
}
#endif

#ifdef FMT_Q5_0
alias WUnit = vec4<u32>;
alias SElem = u32;
const XV: u32 = 8u;
const SUM_X: bool = true;
// A unit is a block. x = d * (q - 16).
struct WVal {
    q: vec4<u32>,
    qh: u32,
    d: f32,
}
fn unit_load(m: u32, g: u32) -> WVal {
    return WVal(qs_at(m, g), sc_at(m, q5_0_qh_word(g)), f16_of(sc_at(m, q5_0_d_word(g)), g));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let qx = q4_dot(w.q, xs) + 16.0 * qh_dot(w.qh, xs, 0u);
    return w.d * (qx - 16.0 * dot(st, vec4<f32>(1.0)));
}
#endif

#ifdef FMT_Q5_1
alias WUnit = vec4<u32>;
alias SElem = u32;
const XV: u32 = 8u;
const SUM_X: bool = true;
// A unit is a block. x = d * q + m.
struct WVal {
    q: vec4<u32>,
    qh: u32,
    dm: vec2<f32>,
}
fn unit_load(m: u32, g: u32) -> WVal {
    return WVal(qs_at(m, g), sc_at(m, q5_1_qh_word(g)), unpack2x16float(sc_at(m, q5_1_dm_word(g))));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let qx = q4_dot(w.q, xs) + 16.0 * qh_dot(w.qh, xs, 0u);
    return w.dm.x * qx + w.dm.y * dot(st, vec4<f32>(1.0));
}
#endif

// K-quants: a unit is one 64-element pair j = g % 4 of super-block g / 4 (sub-blocks 2j, 2j+1):
// 32 bytes of nibbles, q[0] holding elements 0..16 (low nibbles) and 32..48 (high), q[1]
// elements 16..32 and 48..64; xs[0..8] are the low sub-block's x, xs[8..16] the high one's.

// sum(q*x) of the low and high sub-blocks of a K-quant pair's nibbles.
fn k4_dots(q: array<vec4<u32>, 2>, xs: array<vec4<f32>, XV>) -> vec2<f32> {
    var lo = 0.0;
    var hi = 0.0;
    for (var w = 0u; w < 4u; w++) {
        lo += dot(nib_lo(q[0][w]), xs[w]) + dot(nib_lo(q[1][w]), xs[4u + w]);
        hi += dot(nib_hi(q[0][w]), xs[8u + w]) + dot(nib_hi(q[1][w]), xs[12u + w]);
    }
    return vec2<f32>(lo, hi);
}

// x = d*sc*q - dmin*m per sub-block: the pair j's (d*sc, d*sc', dmin*m, dmin*m') from its
// super-block's header, decoded once per loaded unit.
fn k4_pair_affine(hdr: vec4<u32>, j: u32) -> vec4<f32> {
    let dd = unpack2x16float(hdr.x);
    let a = k4_scale_min(hdr, 2u * j);
    let b = k4_scale_min(hdr, 2u * j + 1u);
    return vec4<f32>(dd.x * a.x, dd.x * b.x, dd.y * a.y, dd.y * b.y);
}

// d*sc*sum(q*x) - dmin*m*sum(x) over the pair's two sub-blocks (sm from k4_pair_affine).
fn k4_combine(sm: vec4<f32>, qx: vec2<f32>, st: vec4<f32>) -> f32 {
    let sx = vec2<f32>(st.x + st.y, st.z + st.w);
    return dot(sm.xy, qx) - dot(sm.zw, sx);
}

#ifdef FMT_Q4_K
alias WUnit = array<vec4<u32>, 2>;
// One vec4 per block: d | dmin << 16, then the 12 scale bytes.
alias SElem = vec4<u32>;
const XV: u32 = 16u;
const SUM_X: bool = true;
// The pair's nibbles and its sub-blocks' scales and mins.
struct WVal {
    q: array<vec4<u32>, 2>,
    sm: vec4<f32>,
}
fn unit_load(m: u32, g: u32) -> WVal {
    return WVal(qs_at(m, g), k4_pair_affine(sc_at(m, g >> 2u), g & 3u));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return k4_combine(w.sm, k4_dots(w.q, xs), st);
}
#endif

#ifdef FMT_Q5_K
alias WUnit = array<vec4<u32>, 2>;
// Three vec4 per block: the Q4_K header, then 8 words of fifth bits, word s for sub-block s.
alias SElem = vec4<u32>;
const XV: u32 = 16u;
const SUM_X: bool = true;
// As Q4_K's, with the fifth bits of the pair's two sub-blocks.
struct WVal {
    q: array<vec4<u32>, 2>,
    sm: vec4<f32>,
    h0: u32,
    h1: u32,
}
fn unit_load(m: u32, g: u32) -> WVal {
    let b = g >> 2u;
    let j = g & 3u;
    let hv = sc_at(m, 3u * b + 1u + (j >> 1u));
    return WVal(qs_at(m, g), k4_pair_affine(sc_at(m, 3u * b), j), hv[2u * (j & 1u)], hv[2u * (j & 1u) + 1u]);
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let qx = k4_dots(w.q, xs) + 16.0 * vec2<f32>(qh_dot(w.h0, xs, 0u), qh_dot(w.h1, xs, 8u));
    return k4_combine(w.sm, qx, st);
}
#endif

#ifdef FMT_Q6_K
// A pair: q[0], q[1] the nibble words 0..4 and 4..8, q[2] their top 2 bits (module doc of
// src/quant). Scales: per pair of blocks, 4 words of i8 scales each, then d(2i) | d(2i+1) << 16.
alias WUnit = array<vec4<u32>, 3>;
alias SElem = u32;
const XV: u32 = 16u;
const SUM_X: bool = true;
// The pair's words, its four i8 scales and its super-block's d.
struct WVal {
    q: array<vec4<u32>, 3>,
    sc: vec4<f32>,
    d: f32,
}
fn unit_load(m: u32, g: u32) -> WVal {
    let b = g >> 2u;
    return WVal(qs_at(m, g), i8x4(sc_at(m, q6k_scales_word(b, g & 3u))), f16_of(sc_at(m, q6k_d_word(b)), b));
}
fn unit_dot(w: WVal, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let q = w.q;
    // Sixteen elements per scale: 0..16 (low nibbles of q[0]), 16..32 (low of q[1]),
    // 32..48 (high of q[0]), 48..64 (high of q[1]).
    var qx = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        let v0 = q6_top(q[2][i], 0u);
        let v1 = q6_top(q[2][i], 1u);
        qx += vec4<f32>(
            dot(u8x4(q6_lo(q[0][i], v0)), xs[i]),
            dot(u8x4(q6_lo(q[1][i], v1)), xs[4u + i]),
            dot(u8x4(q6_hi(q[0][i], v0)), xs[8u + i]),
            dot(u8x4(q6_hi(q[1][i], v1)), xs[12u + i]),
        );
    }
    return w.d * dot(w.sc, qx - 32.0 * st);
}
#endif

// ---- activations ---------------------------------------------------------------------------

// The activations of unit u of a row whose x starts at vec4 o.
fn load_x(o: u32, u: u32) -> array<vec4<f32>, XV> {
    var xs: array<vec4<f32>, XV>;
#ifdef WORD_UNITS
    // Word w of block b: x[32b + 4w ..] and x[32b + 16 + 4w ..].
    let base = o + (u >> 2u) * 8u + (u & 3u);
    xs[0] = x_at(base);
    xs[1] = x_at(base + 4u);
#else
    for (var i = 0u; i < XV; i++) {
        xs[i] = x_at(o + u * XV + i);
    }
#endif
    return xs;
}

// Sums of x over the four quarters of a unit (XV >= 4).
fn x_stats(xs: array<vec4<f32>, XV>) -> vec4<f32> {
    let per = max(XV / 4u, 1u);
    var s = vec4<f32>(0.0);
    for (var i = 0u; i < XV; i++) {
        s[min(i / per, 3u)] += dot(xs[i], vec4<f32>(1.0));
    }
    return s;
}
