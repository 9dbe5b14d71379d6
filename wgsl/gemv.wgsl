// GEMV: y = W x for one f32 activation vector x[k] and an n x k weight matrix W in the
// repacked planes of src/quant (module doc there). Decode's hot path: memory-bound, so
// every weight byte is read once.
//
// Work split (host-chosen per device): a workgroup of WG lanes is cut into WG / LPR row groups of
// LPR lanes. A row group owns RPG consecutive rows; its lanes stride over the row's "units"
// (one qs load each: one word of a Q8_0/Q4_0/Q4_1 block, so that adjacent lanes also read
// adjacent activations; a Q5 block; 4 floats; a 64-element K-quant pair), adjacent lanes on
// adjacent units, four units per lane step. Each unit's activations are loaded once and
// reused for all RPG rows. At the end the LPR partial sums of each row are reduced with
// subgroup shuffles (SG_REDUCE: the host guarantees LPR <= the subgroup size and groups are
// formed inside subgroups) or, without subgroups, with a workgroup-memory tree.
//
// Q4/Q5 use the affine identity: a block contributes d * (sum(q*x) - 8*sum(x)) (Q4_0) or
// d * sum(q*x) + m * sum(x) (Q4_1), so nibbles are converted without a per-element offset;
// likewise per sub-block for the K-quants (sums of x over each quarter of the unit, computed
// once per unit and shared by its RPG rows).
//
// Defines: one of FMT_F32 / FMT_F16 / FMT_BF16 / FMT_Q8_0 / FMT_Q4_0 / FMT_Q4_1 / FMT_Q5_0 /
// FMT_Q5_1 / FMT_Q4_K / FMT_Q5_K / FMT_Q6_K; SWIGLU (entry `gemv_swiglu`: out = silu(gate x) *
// (up x)) and QKV (three projections in one dispatch), as gemv_rows.wgsl describes, which
// holds the params, bindings, reduction and entry points this kernel shares with gemv_dot.wgsl;
// NORM the RMSNorm prologue: x is the residual stream and the kernel applies RMSNorm to it on
// load (x * rsqrt(mean(x^2) + eps) * norm_w), each workgroup computing the mean itself from
// all of x, so the norm needs no dispatch of its own. WG must be a power of two.

#include "reduce"
#include "dequant"
#include "gemv_rows"

alias XElem = vec4<f32>;

// ---- per-format units -------------------------------------------------------------------
// WUnit: the type of one qs load; SElem: the element type of the scales plane; XV: vec4<f32>
// of x per unit; SUM_X: the unit needs x_stats (sums of x over the unit's four quarters, for
// the affine identity). unit_value(m, g, xs, st): the dot product of unit g of matrix m (0: w,
// 1: u under SWIGLU) with its activations xs; qs_at / sc_at read matrix m's planes.

#ifdef FMT_F32
alias WUnit = vec4<f32>;
alias SElem = u32;
const XV: u32 = 1u;
const SUM_X: bool = false;
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return dot(qs_at(m, g), xs[0]);
}
#endif

#ifdef FMT_F16
alias WUnit = vec2<u32>;
alias SElem = u32;
const XV: u32 = 1u;
const SUM_X: bool = false;
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let q = qs_at(m, g);
    let w = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    return dot(w, xs[0]);
}
#endif

#ifdef FMT_BF16
alias WUnit = vec2<u32>;
alias SElem = u32;
const XV: u32 = 1u;
const SUM_X: bool = false;
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let q = qs_at(m, g);
    let w = vec4<f32>(bf16x2(q.x), bf16x2(q.y));
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
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let b = g >> 3u;
    let d = f16_of(sc_at(m, q8_d_word(b)), b);
    return d * dot(i8x4(qs_at(m, g)), xs[0]);
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
// One f16 d per block, two blocks per word.
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let q = qs_at(m, g);
    let b = g >> 2u;
    let d = f16_of(sc_at(m, q8_d_word(b)), b);
    return d * (dot(nib_lo(q), xs[0]) + dot(nib_hi(q), xs[1]) - 8.0 * (st.x + st.y));
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
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let q = qs_at(m, g);
    let dm = unpack2x16float(sc_at(m, g >> 2u));
    return dm.x * (dot(nib_lo(q), xs[0]) + dot(nib_hi(q), xs[1])) + dm.y * (st.x + st.y);
}
#endif

#ifdef FMT_Q5_0
alias WUnit = vec4<u32>;
alias SElem = u32;
const XV: u32 = 8u;
const SUM_X: bool = true;
// A unit is a block. x = d * (q - 16).
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let qh = sc_at(m, q5_0_qh_word(g));
    let d = f16_of(sc_at(m, q5_0_d_word(g)), g);
    let qx = q4_dot(qs_at(m, g), xs) + 16.0 * qh_dot(qh, xs, 0u);
    return d * (qx - 16.0 * dot(st, vec4<f32>(1.0)));
}
#endif

#ifdef FMT_Q5_1
alias WUnit = vec4<u32>;
alias SElem = u32;
const XV: u32 = 8u;
const SUM_X: bool = true;
// A unit is a block. x = d * q + m.
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let qh = sc_at(m, q5_1_qh_word(g));
    let dm = unpack2x16float(sc_at(m, q5_1_dm_word(g)));
    let qx = q4_dot(qs_at(m, g), xs) + 16.0 * qh_dot(qh, xs, 0u);
    return dm.x * qx + dm.y * dot(st, vec4<f32>(1.0));
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

// x = d*sc*q - dmin*m per sub-block: d*sc*sum(q*x) - dmin*m*sum(x).
fn k4_combine(hdr: vec4<u32>, j: u32, qx: vec2<f32>, st: vec4<f32>) -> f32 {
    let dd = unpack2x16float(hdr.x);
    let a = k4_scale_min(hdr, 2u * j);
    let b = k4_scale_min(hdr, 2u * j + 1u);
    let sx = vec2<f32>(st.x + st.y, st.z + st.w);
    return dd.x * (a.x * qx.x + b.x * qx.y) - dd.y * (a.y * sx.x + b.y * sx.y);
}

#ifdef FMT_Q4_K
alias WUnit = array<vec4<u32>, 2>;
// One vec4 per block: d | dmin << 16, then the 12 scale bytes.
alias SElem = vec4<u32>;
const XV: u32 = 16u;
const SUM_X: bool = true;
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return k4_combine(sc_at(m, g >> 2u), g & 3u, k4_dots(qs_at(m, g), xs), st);
}
#endif

#ifdef FMT_Q5_K
alias WUnit = array<vec4<u32>, 2>;
// Three vec4 per block: the Q4_K header, then 8 words of fifth bits, word s for sub-block s.
alias SElem = vec4<u32>;
const XV: u32 = 16u;
const SUM_X: bool = true;
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let b = g >> 2u;
    let j = g & 3u;
    let hv = sc_at(m, 3u * b + 1u + (j >> 1u));
    let h0 = hv[2u * (j & 1u)];
    let h1 = hv[2u * (j & 1u) + 1u];
    let qx = k4_dots(qs_at(m, g), xs) + 16.0 * vec2<f32>(qh_dot(h0, xs, 0u), qh_dot(h1, xs, 8u));
    return k4_combine(sc_at(m, 3u * b), j, qx, st);
}
#endif

#ifdef FMT_Q6_K
// A pair: q[0], q[1] the nibble words 0..4 and 4..8, q[2] their top 2 bits (module doc of
// src/quant). Scales: per pair of blocks, 4 words of i8 scales each, then d(2i) | d(2i+1) << 16.
alias WUnit = array<vec4<u32>, 3>;
alias SElem = u32;
const XV: u32 = 16u;
const SUM_X: bool = true;
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    let b = g >> 2u;
    let sc = i8x4(sc_at(m, q6k_scales_word(b, g & 3u)));
    let d = f16_of(sc_at(m, q6k_d_word(b)), b);
    let q = qs_at(m, g);
    // Sixteen elements per scale: 0..16 (low nibbles of q[0]), 16..32 (low of q[1]),
    // 32..48 (high of q[0]), 48..64 (high of q[1]).
    var qx = vec4<f32>(0.0);
    for (var w = 0u; w < 4u; w++) {
        let v0 = q6_top(q[2][w], 0u);
        let v1 = q6_top(q[2][w], 1u);
        qx += vec4<f32>(
            dot(u8x4(q6_lo(q[0][w], v0)), xs[w]),
            dot(u8x4(q6_lo(q[1][w], v1)), xs[4u + w]),
            dot(u8x4(q6_hi(q[0][w], v0)), xs[8u + w]),
            dot(u8x4(q6_hi(q[1][w], v1)), xs[12u + w]),
        );
    }
    return d * dot(sc, qx - 32.0 * st);
}
#endif

// ---- norm prologue ------------------------------------------------------------------------

#include "x_norm"

// NORM: the RMSNorm scale (x_norm.wgsl).
fn prologue(lane: Lane) {
    norm_prologue(lane);
}

// ---- kernel -----------------------------------------------------------------------------

fn load_x(u: u32) -> array<vec4<f32>, XV> {
    var xs: array<vec4<f32>, XV>;
#ifdef WORD_UNITS
    // Word w of block b: x[32b + 4w ..] and x[32b + 16 + 4w ..].
    let base = (u >> 2u) * 8u + (u & 3u);
    xs[0] = x_at(base);
    xs[1] = x_at(base + 4u);
#else
    for (var i = 0u; i < XV; i++) {
        xs[i] = x_at(u * XV + i);
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

// Accumulates this lane's share of rows row0 .. row0 + RPG of the bound matrices into acc
// (acc[m * RPG + r] for matrix m, row r), reduced over the row group.
fn accumulate_unit(acc: ptr<function, array<f32, 16>>, row0: u32, u: u32) {
    let xs = load_x(u);
    var st = vec4<f32>(0.0);
    if (SUM_X) { st = x_stats(xs); }
    for (var r = 0u; r < RPG; r++) {
        // Rows past the end recompute the last row: every lane must reach the
        // reduction, and the result is never written.
        let g = min(row0 + r, cur_n - 1u) * p.upr + u;
        (*acc)[r] += unit_value(0u, g, xs, st);
#ifdef SWIGLU
        (*acc)[RPG + r] += unit_value(1u, g, xs, st);
#endif
    }
}

fn accumulate_rows(acc: ptr<function, array<f32, 16>>, row0: u32, lane: Lane, l: u32) {
    var u = l;
    // Four units per step, unconditionally: their loads are independent, so a lane keeps
    // four in flight instead of waiting out the memory latency once per unit.
    while (u + 3u * LPR < p.upr) {
        accumulate_unit(acc, row0, u);
        accumulate_unit(acc, row0, u + LPR);
        accumulate_unit(acc, row0, u + 2u * LPR);
        accumulate_unit(acc, row0, u + 3u * LPR);
        u += 4u * LPR;
    }
    for (; u < p.upr; u += LPR) {
        accumulate_unit(acc, row0, u);
    }
    reduce_rows(acc, lane, l);
}
