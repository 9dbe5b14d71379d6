// GEMV: y = W x for one f32 activation vector x[k] and an n x k weight matrix W in the
// repacked planes of src/quant (module doc there). Decode's hot path: memory-bound, so
// every weight byte is read once, in 16-byte (8-byte for f16/bf16) loads.
//
// Work split (KERNELS.md §2): a workgroup of WG lanes is cut into WG / LPR row groups of
// LPR lanes. A row group owns RPG consecutive rows; its lanes stride over the row's "units"
// (one qs load each: a Q4 block, half a Q8 block, 4 floats), adjacent lanes on adjacent
// units so a row group's loads are contiguous. Each unit's activations are loaded once and
// reused for all RPG rows. At the end the LPR partial sums of each row are reduced with
// subgroup shuffles (SG_REDUCE: the host guarantees LPR <= the subgroup size and groups are
// formed inside subgroups) or, without subgroups, with a workgroup-memory tree.
//
// Q4 uses the affine identity: a block contributes d * (sum(q*x) - 8*sum(x)) (Q4_0) or
// d * sum(q*x) + m * sum(x) (Q4_1), so nibbles are converted without a per-element offset.
//
// Defines: one of FMT_F32 / FMT_F16 / FMT_BF16 / FMT_Q8_0 / FMT_Q4_0 / FMT_Q4_1; SWIGLU
// selects the entry `gemv_swiglu` (out = silu(gate x) * (up x), two matrices of one shape).

#include "reduce"

struct Params {
    // Rows of the matrix.
    n: u32,
    // Units (qs loads) per row: k / UNIT.
    upr: u32,
    // Row i is written to out[out_offset + i].
    out_offset: u32,
    _pad: u32,
}

// Lanes per row group (a power of two; with SG_REDUCE at most the subgroup size).
override LPR: u32 = 32u;
// Rows per row group (at most MAX_RPG).
override RPG: u32 = 4u;
// Workgroup size, a multiple of LPR.
override WG: u32 = 64u;
// Reduce with subgroup shuffles (only meaningful under SUBGROUP).
override SG_REDUCE: bool = true;
// Epilogue: add bias[row]; add into out instead of overwriting.
override HAS_BIAS: bool = false;
override ACCUMULATE: bool = false;

// Accumulators per lane: NMAT * RPG <= 16, so RPG <= 8 (16 for plain gemv).

// ---- per-format units -------------------------------------------------------------------
// WUnit: the type of one qs load; XV: vec4<f32> of x per unit; SUM_X: the unit needs
// sum(x) (affine identity); HAS_SCALES: the scales plane is read.

#ifdef FMT_F32
alias WUnit = vec4<f32>;
const XV: u32 = 1u;
const SUM_X: bool = false;
const HAS_SCALES: bool = false;
fn scale_index(g: u32) -> u32 { return 0u; }
fn unit_value(q: WUnit, sw: u32, g: u32, xs: array<vec4<f32>, XV>, sx: f32) -> f32 {
    return dot(q, xs[0]);
}
#endif

#ifdef FMT_F16
alias WUnit = vec2<u32>;
const XV: u32 = 1u;
const SUM_X: bool = false;
const HAS_SCALES: bool = false;
fn scale_index(g: u32) -> u32 { return 0u; }
fn unit_value(q: WUnit, sw: u32, g: u32, xs: array<vec4<f32>, XV>, sx: f32) -> f32 {
    let w = vec4<f32>(unpack2x16float(q.x), unpack2x16float(q.y));
    return dot(w, xs[0]);
}
#endif

#ifdef FMT_BF16
alias WUnit = vec2<u32>;
const XV: u32 = 1u;
const SUM_X: bool = false;
const HAS_SCALES: bool = false;
fn scale_index(g: u32) -> u32 { return 0u; }
fn unit_value(q: WUnit, sw: u32, g: u32, xs: array<vec4<f32>, XV>, sx: f32) -> f32 {
    // bf16 is the high half of an f32: element 2i sits in the low half of word i.
    let w = bitcast<vec4<f32>>(vec4<u32>(q.x << 16u, q.x & 0xFFFF0000u, q.y << 16u, q.y & 0xFFFF0000u));
    return dot(w, xs[0]);
}
#endif

#ifdef FMT_Q8_0
// A unit is half a block: 16 int8, contiguous elements; unit g belongs to block g / 2.
alias WUnit = vec4<u32>;
const XV: u32 = 4u;
const SUM_X: bool = false;
const HAS_SCALES: bool = true;
fn scale_index(g: u32) -> u32 { return g >> 2u; }
fn i8x4(w: u32) -> vec4<f32> {
    // Move each byte to the top, then an arithmetic shift sign-extends it.
    return vec4<f32>(bitcast<vec4<i32>>(vec4<u32>(w) << vec4<u32>(24u, 16u, 8u, 0u)) >> vec4<u32>(24u));
}
fn unit_value(q: WUnit, sw: u32, g: u32, xs: array<vec4<f32>, XV>, sx: f32) -> f32 {
    let d = unpack2x16float(sw)[(g >> 1u) & 1u];
    let s = dot(i8x4(q.x), xs[0]) + dot(i8x4(q.y), xs[1]) + dot(i8x4(q.z), xs[2]) + dot(i8x4(q.w), xs[3]);
    return d * s;
}
#endif

// Q4: word w of a block holds elements 4w..4w+3 in its low nibbles and 4w+16..4w+19 in
// its high nibbles. A unit is one block (32 elements, 8 vec4 of x); returns sum(q*x).
fn nib_lo(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(0u, 8u, 16u, 24u)) & vec4<u32>(15u));
}
fn nib_hi(w: u32) -> vec4<f32> {
    return vec4<f32>((vec4<u32>(w) >> vec4<u32>(4u, 12u, 20u, 28u)) & vec4<u32>(15u));
}
fn q4_dot(q: vec4<u32>, xs: array<vec4<f32>, 8>) -> f32 {
    return dot(nib_lo(q.x), xs[0]) + dot(nib_lo(q.y), xs[1]) + dot(nib_lo(q.z), xs[2]) + dot(nib_lo(q.w), xs[3])
         + dot(nib_hi(q.x), xs[4]) + dot(nib_hi(q.y), xs[5]) + dot(nib_hi(q.z), xs[6]) + dot(nib_hi(q.w), xs[7]);
}

#ifdef FMT_Q4_0
alias WUnit = vec4<u32>;
const XV: u32 = 8u;
const SUM_X: bool = true;
const HAS_SCALES: bool = true;
// One f16 d per block, two blocks per word.
fn scale_index(g: u32) -> u32 { return g >> 1u; }
fn unit_value(q: WUnit, sw: u32, g: u32, xs: array<vec4<f32>, XV>, sx: f32) -> f32 {
    let d = unpack2x16float(sw)[g & 1u];
    return d * (q4_dot(q, xs) - 8.0 * sx);
}
#endif

#ifdef FMT_Q4_1
alias WUnit = vec4<u32>;
const XV: u32 = 8u;
const SUM_X: bool = true;
const HAS_SCALES: bool = true;
// One word per block: d in the low half, m in the high half.
fn scale_index(g: u32) -> u32 { return g; }
fn unit_value(q: WUnit, sw: u32, g: u32, xs: array<vec4<f32>, XV>, sx: f32) -> f32 {
    let dm = unpack2x16float(sw);
    return dm.x * q4_dot(q, xs) + dm.y * sx;
}
#endif

// ---- bindings ---------------------------------------------------------------------------

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> w_qs: array<WUnit>;
@group(0) @binding(2) var<storage, read> w_scales: array<u32>;
#ifdef SWIGLU
@group(0) @binding(3) var<storage, read> u_qs: array<WUnit>;
@group(0) @binding(4) var<storage, read> u_scales: array<u32>;
@group(0) @binding(5) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out: array<f32>;
const NMAT: u32 = 2u;
#else
@group(0) @binding(3) var<storage, read> x: array<vec4<f32>>;
// f32[n]; a placeholder when HAS_BIAS is false, so the layout never changes.
@group(0) @binding(4) var<storage, read> bias: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
const NMAT: u32 = 1u;
#endif

// Partial sums of the workgroup-memory reduction: [matrix][row in group][lane].
// The host keeps NMAT * RPG * WG <= 2048.
var<workgroup> gemv_partial: array<f32, 2048>;

// ---- kernel -----------------------------------------------------------------------------

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

fn load_x(u: u32) -> array<vec4<f32>, XV> {
    var xs: array<vec4<f32>, XV>;
    for (var i = 0u; i < XV; i++) {
        xs[i] = x[u * XV + i];
    }
    return xs;
}

fn sum_x(xs: array<vec4<f32>, XV>) -> f32 {
    var s = vec4<f32>(0.0);
    for (var i = 0u; i < XV; i++) {
        s += xs[i];
    }
    return s.x + s.y + s.z + s.w;
}

// Accumulates this lane's share of rows row0 .. row0 + RPG of the bound matrices into acc
// (acc[m * RPG + r] for matrix m, row r), reduced over the row group.
fn accumulate_rows(acc: ptr<function, array<f32, 16>>, row0: u32, lane: Lane, l: u32) {
    for (var u = l; u < p.upr; u += LPR) {
        let xs = load_x(u);
        var sx = 0.0;
        if (SUM_X) { sx = sum_x(xs); }
        for (var r = 0u; r < RPG; r++) {
            // Rows past the end recompute the last row: every lane must reach the
            // reduction, and the result is never written.
            let g = min(row0 + r, p.n - 1u) * p.upr + u;
            var sw = 0u;
            if (HAS_SCALES) { sw = w_scales[scale_index(g)]; }
            (*acc)[r] += unit_value(w_qs[g], sw, g, xs, sx);
#ifdef SWIGLU
            var su = 0u;
            if (HAS_SCALES) { su = u_scales[scale_index(g)]; }
            (*acc)[RPG + r] += unit_value(u_qs[g], su, g, xs, sx);
#endif
        }
    }
    reduce_rows(acc, lane, l);
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
    let gl = row_group(lane);
    let row0 = ((wid.x + wid.y * nwg.x) * (WG / LPR) + gl.x) * RPG;
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
    let gl = row_group(lane);
    let row0 = ((wid.x + wid.y * nwg.x) * (WG / LPR) + gl.x) * RPG;
    var acc: array<f32, 16>;
    accumulate_rows(&acc, row0, lane, gl.y);
    if (gl.y == 0u) {
        for (var r = 0u; r < RPG; r++) {
            let row = row0 + r;
            if (row < p.n) {
                var y = acc[r];
                if (HAS_BIAS) { y += bias[row]; }
                let o = p.out_offset + row;
                if (ACCUMULATE) { y += out[o]; }
                out[o] = y;
            }
        }
    }
}
#endif
