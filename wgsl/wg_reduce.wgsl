// One workgroup-wide reduction: a template, instantiated once per function by
//   #include "wg_reduce" NAME=wg_max T=f32 SG_OP=subgroupMax OP=max SCRATCH=wg_scratch
// (a parameterised include expands every time, its parameters defined for this file only;
// src/kernels/preprocess.rs). Parameters:
//   NAME     the function defined, `fn NAME(v: T, lane: Lane) -> T`;
//   T        the element type;
//   SG_OP    the subgroup builtin that reduces one subgroup (subgroupAdd, subgroupMax, ...);
//   OP       the function that combines two values (`max`, `min`, `add_f32` of reduce.wgsl);
//   SCRATCH  a `var<workgroup> array<T, N>` of the includer's, N at least the workgroup size
//            (the tree below) and the number of subgroups. Instances may share one scratch:
//            it is free again when the function returns.
// Needs `Lane` (reduce.wgsl) and `override WG: u32`, the 1-D workgroup size (a power of two
// for the tree). Call from uniform control flow with every invocation participating; every
// invocation gets the result. With SUBGROUP the subgroup does the first level and one slot per
// subgroup is combined; without it a shared-memory tree does the whole reduction.

fn NAME(v: T, lane: Lane) -> T {
#ifdef SUBGROUP
    let s = SG_OP(v);
    if (lane.sg_lane == 0u) { SCRATCH[lane.sg_id] = s; }
    workgroupBarrier();
    var t = SCRATCH[0];
    let nsg = (WG + lane.sg_size - 1u) / lane.sg_size;
    for (var i = 1u; i < nsg; i++) { t = OP(t, SCRATCH[i]); }
    workgroupBarrier();
    return t;
#else
    let lid = lane.lid;
    SCRATCH[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s >>= 1u) {
        if (lid < s) { SCRATCH[lid] = OP(SCRATCH[lid], SCRATCH[lid + s]); }
        workgroupBarrier();
    }
    let t = SCRATCH[0];
    workgroupBarrier();
    return t;
#endif
}
