// Batched GEMV: out[b][row] = W[row,:] · x[b,:] (+ bias[row]) (+ out[b][row]) for BATCH f32
// activation rows x[b] of length k (contiguous, row b at vec4 b * k4) and one n x k weight
// matrix in the repacked planes of src/quant: one decode step of BATCH sequences that reads
// the weights once for all of them. Output row b of the batch starts at b * out_stride.
//
// Work split as gemv.wgsl's (whose header describes the units): a workgroup of WG lanes is cut
// into WG / LPR row groups of LPR lanes; a row group owns RPG consecutive rows, and its lanes
// stride over the rows' units, adjacent lanes on adjacent units, STEP = 4 / RPG units per lane
// step.
// Per unit a lane loads the weights of its RPG rows once (unit_load, gemv_units.wgsl: the
// loaders and per-format dot products are the single GEMV's), then for each of the BATCH
// activation rows loads that row's activations of the unit once and applies every held
// weight unit to them (unit_dot) into acc[r * BATCH + b]. So every weight byte is read once
// per dispatch, whatever BATCH; each activation load is reused for RPG rows (x is BATCH * k
// * 4 bytes, read through the caches by every row group). At the end the LPR partial sums of
// each of the RPG * BATCH outputs are reduced with subgroup shuffles (SG_REDUCE: LPR at most
// the subgroup size, groups formed inside subgroups) or a workgroup-memory tree, in passes of
// as many accumulators as its 2048 slots hold; lane 0 of each group writes the outputs.
//
// Defines: one of gemv.wgsl's FMT_*. Overrides: LPR, RPG (<= MAX_RPG), WG, SG_REDUCE, BATCH
// (<= 8; RPG * BATCH <= ACC), HAS_BIAS, ACCUMULATE.

#include "reduce"
#include "dequant"

struct Params {
    // Rows of the matrix.
    n: u32,
    // Units (qs loads) per row.
    upr: u32,
    // Row i of batch row b is written to out[b * out_stride + out_offset + i].
    out_offset: u32,
    out_stride: u32,
    // k / 4: vec4s per activation row.
    k4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Lanes per row group (a power of two; with SG_REDUCE at most the subgroup size).
override LPR: u32 = 32u;
// Rows per row group (at most MAX_RPG).
override RPG: u32 = 2u;
// Workgroup size, a multiple of LPR.
override WG: u32 = 64u;
// Reduce with subgroup shuffles (only meaningful under SUBGROUP).
override SG_REDUCE: bool = true;
// Activation rows (sequences) per dispatch.
override BATCH: u32 = 4u;
// Units per lane step.
override STEP: u32 = max(1u, 4u / RPG);
// Epilogue: add bias[row]; add into out instead of overwriting.
override HAS_BIAS: bool = false;
override ACCUMULATE: bool = false;

// Size of the per-lane weight-unit and accumulator arrays (the host keeps RPG and
// RPG * BATCH within them).
const MAX_RPG: u32 = 4u;
const ACC: u32 = 32u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w_qs: array<WUnit>;
@group(0) @binding(2) var<storage, read> w_scales: array<SElem>;
// f32[BATCH][k] as vec4s.
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
// f32[n]; a placeholder when HAS_BIAS is false, so the layout never changes.
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

// gemv_units.wgsl's reads: one matrix.
fn qs_at(m: u32, g: u32) -> WUnit {
    return w_qs[g];
}
fn sc_at(m: u32, i: u32) -> SElem {
    return w_scales[i];
}
fn x_at(i: u32) -> vec4<f32> {
    return x[i];
}

#include "gemv_units"

// Unit u of rows row0 .. row0 + RPG against every activation row, added where `valid` (a
// lane past the row's last unit rereads that unit and drops the result, so every step's loads
// are issued unconditionally).
fn accumulate_unit(acc: ptr<function, array<f32, ACC>>, row0: u32, u: u32, valid: bool) {
    var wv: array<WVal, MAX_RPG>;
    for (var r = 0u; r < RPG; r++) {
        // Rows past the end reread the last row: every lane must reach the reduction, and
        // the result is never written.
        wv[r] = unit_load(0u, min(row0 + r, p.n - 1u) * p.upr + u);
    }
    for (var b = 0u; b < BATCH; b++) {
        let xs = load_x(b * p.k4, u);
        var st = vec4<f32>(0.0);
        if (SUM_X) { st = x_stats(xs); }
        for (var r = 0u; r < RPG; r++) {
            (*acc)[r * BATCH + b] += select(0.0, unit_dot(wv[r], xs, st), valid);
        }
    }
}

// Partial sums of the workgroup-memory reduction: [accumulator of the pass][lane].
const PARTIAL_SLOTS: u32 = 2048u;
var<workgroup> batch_partial: array<f32, PARTIAL_SLOTS>;

// Sums each of the RPG * BATCH accumulators over the LPR lanes of a row group; lane 0 of the
// group gets the totals.
fn reduce_rows(acc: ptr<function, array<f32, ACC>>, lane: Lane, l: u32) {
    let nacc = RPG * BATCH;
#ifdef SUBGROUP
    if (SG_REDUCE) {
        for (var off = LPR >> 1u; off > 0u; off >>= 1u) {
            for (var a = 0u; a < nacc; a++) {
                (*acc)[a] += subgroupShuffleXor((*acc)[a], off);
            }
        }
        return;
    }
#endif
    let lid = lane.lid;
    // Accumulators per pass (WG <= 256, so at least 8).
    let per = PARTIAL_SLOTS / WG;
    for (var a0 = 0u; a0 < nacc; a0 += per) {
        let na = min(per, nacc - a0);
        for (var a = 0u; a < na; a++) {
            batch_partial[a * WG + lid] = (*acc)[a0 + a];
        }
        workgroupBarrier();
        for (var s = LPR >> 1u; s > 0u; s >>= 1u) {
            if (l < s) {
                for (var a = 0u; a < na; a++) {
                    batch_partial[a * WG + lid] += batch_partial[a * WG + lid + s];
                }
            }
            workgroupBarrier();
        }
        for (var a = 0u; a < na; a++) {
            (*acc)[a0 + a] = batch_partial[a * WG + lid];
        }
        // The next pass overwrites the slots.
        workgroupBarrier();
    }
}

// The row group of this lane and its index within the group.
fn row_group(lane: Lane) -> vec2<u32> {
#ifdef SUBGROUP
    if (SG_REDUCE) {
        // Groups inside subgroups, whatever the mapping of subgroups to local indices.
        let t = lane.sg_id * lane.sg_size + lane.sg_lane;
        return vec2<u32>(t / LPR, t % LPR);
    }
#endif
    return vec2<u32>(lane.lid / LPR, lane.lid % LPR);
}

@compute @workgroup_size(WG)
fn gemv_batch(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    let gl = row_group(lane);
    let row0 = ((wid.x + wid.y * nwg.x) * (WG / LPR) + gl.x) * RPG;
    let l = gl.y;
    var acc: array<f32, ACC>;
    // STEP units per lane step, their loads issued unconditionally: with the RPG rows' loads of
    // each unit, a lane keeps about four weight loads in flight (as gemv.wgsl's four units
    // of one row), while the code stays at STEP * RPG * BATCH dot products.
    for (var u0 = l; u0 < p.upr; u0 += STEP * LPR) {
        for (var s = 0u; s < STEP; s++) {
            let u = u0 + s * LPR;
            accumulate_unit(&acc, row0, min(u, p.upr - 1u), u < p.upr);
        }
    }
    reduce_rows(&acc, lane, l);
    if (l == 0u) {
        for (var r = 0u; r < RPG; r++) {
            let row = row0 + r;
            if (row < p.n) {
                var bv = 0.0;
                if (HAS_BIAS) { bv = bias[row]; }
                for (var b = 0u; b < BATCH; b++) {
                    let o = b * p.out_stride + p.out_offset + row;
                    var y = acc[r * BATCH + b] + bv;
                    if (ACCUMULATE) { y += out[o]; }
                    out[o] = y;
                }
            }
        }
    }
}
