// Workgroup-wide reductions, shared by kernels through `#include "reduce"`.
// The including kernel declares `override WG: u32` (its 1-D workgroup size, at most 256)
// and calls these from uniform control flow with every invocation participating.
// With SUBGROUP the subgroup does the first level and one slot per subgroup is combined;
// without it a shared-memory tree does the whole reduction.

var<workgroup> wg_scratch: array<f32, 256>;

// Entry points take their invocation ids as `lane: Lane`; the subgroup builtins exist only
// where the device has subgroups, so the struct differs between the two paths.
#ifdef SUBGROUP
struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg_id: u32,
    @builtin(subgroup_invocation_id) sg_lane: u32,
    @builtin(subgroup_size) sg_size: u32,
}
#else
struct Lane {
    @builtin(local_invocation_index) lid: u32,
}
#endif

fn wg_sum(v: f32, lane: Lane) -> f32 {
#ifdef SUBGROUP
    let s = subgroupAdd(v);
    if (lane.sg_lane == 0u) { wg_scratch[lane.sg_id] = s; }
    workgroupBarrier();
    var t = 0.0;
    let nsg = (WG + lane.sg_size - 1u) / lane.sg_size;
    for (var i = 0u; i < nsg; i++) { t += wg_scratch[i]; }
    workgroupBarrier();
    return t;
#else
    let lid = lane.lid;
    wg_scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { wg_scratch[lid] += wg_scratch[lid + s]; }
        workgroupBarrier();
    }
    let t = wg_scratch[0];
    workgroupBarrier();
    return t;
#endif
}

fn wg_max(v: f32, lane: Lane) -> f32 {
#ifdef SUBGROUP
    let s = subgroupMax(v);
    if (lane.sg_lane == 0u) { wg_scratch[lane.sg_id] = s; }
    workgroupBarrier();
    var t = wg_scratch[0];
    let nsg = (WG + lane.sg_size - 1u) / lane.sg_size;
    for (var i = 1u; i < nsg; i++) { t = max(t, wg_scratch[i]); }
    workgroupBarrier();
    return t;
#else
    let lid = lane.lid;
    wg_scratch[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { wg_scratch[lid] = max(wg_scratch[lid], wg_scratch[lid + s]); }
        workgroupBarrier();
    }
    let t = wg_scratch[0];
    workgroupBarrier();
    return t;
#endif
}
