// Row-wise softmax over rows of n f32, numerically stable: exp(x - max) / sum(exp(x - max)).
// One workgroup per row. The first pass keeps a running (max, sum) per lane ("online"
// softmax: the sum is rescaled whenever the max grows), so the row is read twice, not three
// times; lanes' pairs are merged with one max and one sum reduction. With INPLACE
// (entry `softmax_inplace`) the row is overwritten; otherwise `out` receives it.
// A row that is all -inf has no defined result.

#include "reduce"

struct Params {
    n: u32,
    rows: u32,
    _a: u32,
    _b: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
#ifdef INPLACE
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
#endif

// The lowest finite f32 as the empty max: with -inf an empty lane would compute
// exp(-inf - -inf) = NaN when merging.
const LOWEST: f32 = -3.4028234e38; // rounds to -FLT_MAX

fn softmax_row(row: u32, lane: Lane) {
    let lid = lane.lid;
    let base = row * p.n;
    var m = LOWEST;
    var s = 0.0;
    for (var i = lid; i < p.n; i += WG) {
        let v = x[base + i];
        if (v > m) {
            s = s * exp(m - v) + 1.0;
            m = v;
        } else {
            s += exp(v - m);
        }
    }
    let row_max = wg_max(m, lane);
    let total = wg_sum(s * exp(m - row_max), lane);
    let inv = 1.0 / total;
    for (var i = lid; i < p.n; i += WG) {
        let e = exp(x[base + i] - row_max) * inv;
#ifdef INPLACE
        x[base + i] = e;
#else
        out[base + i] = e;
#endif
    }
}

#ifdef INPLACE
@compute @workgroup_size(WG)
fn softmax_inplace(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lane: Lane,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    softmax_row(row, lane);
}
#else
@compute @workgroup_size(WG)
fn softmax(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lane: Lane,
) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.rows) { return; }
    softmax_row(row, lane);
}
#endif
