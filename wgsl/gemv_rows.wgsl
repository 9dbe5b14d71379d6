// The row-group frame shared by the float GEMV (gemv.wgsl, whose header describes the work
// split) and the integer-dot GEMV (gemv_dot.wgsl) through `#include "gemv_rows"`: params,
// work-split overrides, bindings, the matrix each row group reads, the reduction of a row's
// lane partial sums, and the entry points with their epilogues. The including kernel
// includes "reduce" (Lane) and declares
//   alias WUnit (one qs load), SElem (one scales-plane element), XElem (one element of x);
//   fn prologue(lane: Lane): run first by every invocation, in uniform control flow;
//   fn accumulate_rows(acc: ptr<function, array<f32, 16>>, row0: u32, lane: Lane, l: u32):
//     lane l's partial sums of rows row0 .. row0 + RPG of each bound matrix into acc
//     (acc[m * RPG + r]), reduced over the row group with reduce_rows.
//
// Defines: SWIGLU selects the entry `gemv_swiglu` (out = silu(gate x) * (up x), two matrices
// of one shape); QKV (entry `gemv`) three matrices of one format and row length (q: n rows,
// k: nk, v: nv) in one dispatch, each with its own bias and output buffer: rows are numbered
// q, then k, then v, and each row group (RPG dividing n and nk) reads the matrix its rows
// belong to. EXTRA_BINDING is set to the first binding number after these.

struct Params {
    // Rows of the matrix (QKV: of q).
    n: u32,
    // Units (qs loads) per row.
    upr: u32,
    // Row i is written to out[out_offset + i].
    out_offset: u32,
    // gemv NORM: the RMSNorm epsilon (f32 bits).
    eps_bits: u32,
    // k / 4: vec4s of gemv's x; gemv_dot: words of packed int8 in x, whose (d, d * sum)
    // pairs start at vec4 k4 / 4.
    k4: u32,
    // QKV: rows of the k and v matrices.
    nk: u32,
    nv: u32,
    // Native kernels only (epilogue flags, lanes per row); the WGSL reads overrides instead.
    flags: u32,
    lanes_per_row: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

// Lanes per row group (a power of two; with SG_REDUCE at most the subgroup size).
override LPR: u32 = 32u;
// Rows per row group: NMAT * RPG accumulators per lane, at most 16.
override RPG: u32 = 4u;
// Workgroup size, a multiple of LPR.
override WG: u32 = 64u;
// Reduce with subgroup shuffles (only meaningful under SUBGROUP).
override SG_REDUCE: bool = true;
// Epilogue: add bias[row]; add into out instead of overwriting.
override HAS_BIAS: bool = false;
override ACCUMULATE: bool = false;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w_qs: array<WUnit>;
@group(0) @binding(2) var<storage, read> w_scales: array<SElem>;
#ifdef SWIGLU
@group(0) @binding(3) var<storage, read> u_qs: array<WUnit>;
@group(0) @binding(4) var<storage, read> u_scales: array<SElem>;
@group(0) @binding(5) var<storage, read> x: array<XElem>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
const NMAT: u32 = 2u;
#define EXTRA_BINDING 7
#else
#ifdef QKV
@group(0) @binding(3) var<storage, read> k_qs: array<WUnit>;
@group(0) @binding(4) var<storage, read> k_scales: array<SElem>;
@group(0) @binding(5) var<storage, read> v_qs: array<WUnit>;
@group(0) @binding(6) var<storage, read> v_scales: array<SElem>;
@group(0) @binding(7) var<storage, read> x: array<XElem>;
// Biases: placeholders when HAS_BIAS is false.
@group(0) @binding(8) var<storage, read> bias: array<f32>;
@group(0) @binding(9) var<storage, read> k_bias: array<f32>;
@group(0) @binding(10) var<storage, read> v_bias: array<f32>;
@group(0) @binding(11) var<storage, read_write> out: array<f32>;
@group(0) @binding(12) var<storage, read_write> k_out: array<f32>;
@group(0) @binding(13) var<storage, read_write> v_out: array<f32>;
#define EXTRA_BINDING 14
#else
@group(0) @binding(3) var<storage, read> x: array<XElem>;
// f32[n]; a placeholder when HAS_BIAS is false, so the layout never changes.
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
#define EXTRA_BINDING 6
#endif
const NMAT: u32 = 1u;
#endif

// QKV: the matrix (0 q, 1 k, 2 v) of this invocation's row group, and its row count.
var<private> cur_mat: u32 = 0u;
var<private> cur_n: u32 = 0u;

// Load g of matrix m's qs plane (m: 0 w, 1 u under SWIGLU; QKV: cur_mat's).
fn qs_at(m: u32, g: u32) -> WUnit {
#ifdef SWIGLU
    if (m == 1u) { return u_qs[g]; }
#endif
#ifdef QKV
    if (cur_mat == 1u) { return k_qs[g]; }
    if (cur_mat == 2u) { return v_qs[g]; }
#endif
    return w_qs[g];
}

// Element i of matrix m's scales plane.
fn sc_at(m: u32, i: u32) -> SElem {
#ifdef SWIGLU
    if (m == 1u) { return u_scales[i]; }
#endif
#ifdef QKV
    if (cur_mat == 1u) { return k_scales[i]; }
    if (cur_mat == 2u) { return v_scales[i]; }
#endif
    return w_scales[i];
}

// Partial sums of the workgroup-memory reduction: [matrix][row in group][lane].
// The host keeps NMAT * RPG * WG <= 2048.
var<workgroup> gemv_partial: array<f32, 2048>;

// Sums each accumulator over the LPR lanes of a row group; lane 0 of the group gets the total.
fn reduce_rows(acc: ptr<function, array<f32, 16>>, lane: Lane, l: u32) {
    let nacc = NMAT * RPG;
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
    for (var a = 0u; a < nacc; a++) {
        gemv_partial[a * WG + lid] = (*acc)[a];
    }
    workgroupBarrier();
    for (var s = LPR >> 1u; s > 0u; s >>= 1u) {
        if (l < s) {
            for (var a = 0u; a < nacc; a++) {
                gemv_partial[a * WG + lid] += gemv_partial[a * WG + lid + s];
            }
        }
        workgroupBarrier();
    }
    for (var a = 0u; a < nacc; a++) {
        (*acc)[a] = gemv_partial[a * WG + lid];
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

#ifdef SWIGLU
@compute @workgroup_size(WG)
fn gemv_swiglu(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    prologue(lane);
    let gl = row_group(lane);
    let row0 = ((wid.x + wid.y * nwg.x) * (WG / LPR) + gl.x) * RPG;
    cur_n = p.n;
    var acc: array<f32, 16>;
    accumulate_rows(&acc, row0, lane, gl.y);
    if (gl.y == 0u) {
        for (var r = 0u; r < RPG; r++) {
            let row = row0 + r;
            if (row < p.n) {
                let g = acc[r];
                out[p.out_offset + row] = g / (1.0 + exp(-g)) * acc[RPG + r];
            }
        }
    }
}
#else
@compute @workgroup_size(WG)
fn gemv(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, lane: Lane) {
    prologue(lane);
    let gl = row_group(lane);
    var row0 = ((wid.x + wid.y * nwg.x) * (WG / LPR) + gl.x) * RPG;
    cur_n = p.n;
#ifdef QKV
    // Past q's rows: k's, then v's (row groups never straddle: RPG divides n and nk).
    if (row0 >= p.n) {
        row0 -= p.n;
        cur_mat = 1u;
        cur_n = p.nk;
        if (row0 >= p.nk) {
            row0 -= p.nk;
            cur_mat = 2u;
            cur_n = p.nv;
        }
    }
#endif
    var acc: array<f32, 16>;
    accumulate_rows(&acc, row0, lane, gl.y);
    if (gl.y == 0u) {
        for (var r = 0u; r < RPG; r++) {
            let row = row0 + r;
            if (row < cur_n) {
                var y = acc[r];
#ifdef QKV
                if (cur_mat == 0u) {
                    if (HAS_BIAS) { y += bias[row]; }
                    out[row] = y;
                } else if (cur_mat == 1u) {
                    if (HAS_BIAS) { y += k_bias[row]; }
                    k_out[row] = y;
                } else {
                    if (HAS_BIAS) { y += v_bias[row]; }
                    v_out[row] = y;
                }
#else
                if (HAS_BIAS) { y += bias[row]; }
                let o = p.out_offset + row;
                if (ACCUMULATE) { y += out[o]; }
                out[o] = y;
#endif
            }
        }
    }
}
#endif
