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
// gemv_units.wgsl: each format's WUnit, SElem, XV, SUM_X, unit_load and unit_dot, and load_x /
// x_stats. qs_at / sc_at (gemv_rows.wgsl) read matrix m's planes (0: w, 1: u under SWIGLU).

#include "gemv_units"

// The dot product of unit g of matrix m with its activations xs.
fn unit_value(m: u32, g: u32, xs: array<vec4<f32>, XV>, st: vec4<f32>) -> f32 {
    return unit_dot(unit_load(m, g), xs, st);
}

// ---- norm prologue ------------------------------------------------------------------------

#include "x_norm"

// NORM: the RMSNorm scale (x_norm.wgsl).
fn prologue(lane: Lane) {
    norm_prologue(lane);
}

// ---- kernel -----------------------------------------------------------------------------

// Accumulates this lane's share of rows row0 .. row0 + RPG of the bound matrices into acc
// (acc[m * RPG + r] for matrix m, row r), reduced over the row group.
fn accumulate_unit(acc: ptr<function, array<f32, 16>>, row0: u32, u: u32) {
    let xs = load_x(0u, u);
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
