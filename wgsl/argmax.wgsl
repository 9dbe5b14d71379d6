// Argmax over an f32 vector in two passes: `argmax_partial` reduces chunks of `chunk`
// elements to one (key, index) pair per workgroup, `argmax_reduce` (one workgroup, entry
// under REDUCE) folds the partials and writes the index as a u32.
//
// Elements compare through `order_key`, a u32 whose unsigned order is the float order:
// NaN maps to 0, below -inf, so it never beats a number; -0.0 and +0.0 share a key, so they
// tie. Ties go to the lowest index. An all-NaN vector yields index 0. A pair (key, index) with
// the largest key and, among those, the smallest index wins; the empty pair is (0, 0xffffffff),
// which loses to every real element. Anything that produces partials in this format (e.g. a
// fused lm_head epilogue) can hand them to `argmax_reduce`.
//
// With CHECKED (the decode step's greedy choice) a non-finite element (NaN, +-inf) anywhere
// makes the written index 0x80000000 | (the lowest such index), so the runtime reports it
// instead of emitting a token: the partial pass records it in `status`, the reduce reads and
// clears it.

#include "reduce"
#include "order_key"

struct Params {
    n: u32,
    n_partials: u32,
    chunk: u32,
    out_index: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
#ifdef REDUCE
@group(0) @binding(1) var<storage, read> partials: array<vec2<u32>>;
@group(0) @binding(2) var<storage, read_write> out_ids: array<u32>;
#else
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> partials: array<vec2<u32>>;
#endif
#ifdef CHECKED
// 0, or 0xffffffff - (the lowest index of a non-finite element).
@group(0) @binding(3) var<storage, read_write> status: array<atomic<u32>>;
#endif

const NO_INDEX: u32 = 0xffffffffu;

var<workgroup> am_scratch: array<u32, 256>;
#include "wg_reduce" NAME=wg_max_u32 T=u32 SG_OP=subgroupMax OP=max SCRATCH=am_scratch
#include "wg_reduce" NAME=wg_min_u32 T=u32 SG_OP=subgroupMin OP=min SCRATCH=am_scratch


// Whether (ka, ia) beats (kb, ib).
fn better(ka: u32, ia: u32, kb: u32, ib: u32) -> bool {
    return ka > kb || (ka == kb && ia < ib);
}

// The workgroup's best pair: the largest key, then the smallest index holding it.
fn wg_best(key: u32, idx: u32, lane: Lane) -> vec2<u32> {
    let kmax = wg_max_u32(key, lane);
    let imin = wg_min_u32(select(NO_INDEX, idx, key == kmax), lane);
    return vec2<u32>(kmax, imin);
}

#ifdef REDUCE
@compute @workgroup_size(WG)
fn argmax_reduce(lane: Lane) {
    var bk = 0u;
    var bi = NO_INDEX;
    for (var i = lane.lid; i < p.n_partials; i += WG) {
        let c = partials[i];
        if (better(c.x, c.y, bk, bi)) {
            bk = c.x;
            bi = c.y;
        }
    }
    let best = wg_best(bk, bi, lane);
    if (lane.lid == 0u) {
        var id = best.y;
#ifdef CHECKED
        let bad = atomicLoad(&status[0]);
        if (bad != 0u) {
            id = 0x80000000u | (0xffffffffu - bad);
            atomicStore(&status[0], 0u);
        }
#endif
        out_ids[p.out_index] = id;
    }
}
#else
@compute @workgroup_size(WG)
fn argmax_partial(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    lane: Lane,
) {
    let g = wid.x + wid.y * nwg.x;
    // The tail of a 2-D grid: uniform per workgroup, so the barriers below stay uniform.
    if (g >= p.n_partials) { return; }
    let start = g * p.chunk;
    let end = min(start + p.chunk, p.n);
    var bk = 0u;
    var bi = NO_INDEX;
    for (var i = start + lane.lid; i < end; i += WG) {
        let v = x[i];
        let key = order_key(v);
#ifdef CHECKED
        if ((bitcast<u32>(v) & 0x7f800000u) == 0x7f800000u) {
            atomicMax(&status[0], 0xffffffffu - i);
        }
#endif
        if (better(key, i, bk, bi)) {
            bk = key;
            bi = i;
        }
    }
    let best = wg_best(bk, bi, lane);
    if (lane.lid == 0u) { partials[g] = best; }
}
#endif
