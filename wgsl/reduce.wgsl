// Workgroup-wide reductions, shared by kernels through `#include "reduce"`: the `Lane` struct
// entry points take their invocation ids in, and wg_sum / wg_max over f32 (wg_reduce.wgsl
// instances; a kernel instantiates the template for other types or scratch sizes itself).
// The including kernel declares `override WG: u32` (its 1-D workgroup size, at most 256 for
// these two) and calls them from uniform control flow with every invocation participating.

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

// `+` as a function, for wg_reduce's OP.
fn add_f32(a: f32, b: f32) -> f32 {
    return a + b;
}

#include "wg_reduce" NAME=wg_sum T=f32 SG_OP=subgroupAdd OP=add_f32 SCRATCH=wg_scratch
#include "wg_reduce" NAME=wg_max T=f32 SG_OP=subgroupMax OP=max SCRATCH=wg_scratch
