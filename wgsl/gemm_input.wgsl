// The cooperative-matrix GEMM's activations in f16: n f32 values (a multiple of 4) rounded to
// f16 once per chunk, four per vec2<u32> (element 4i in the low half of word 0), clamped to
// the largest finite f16 (an f32 beyond the f16 range would otherwise become inf). Every
// GEMM reading the same rows then stages half the bytes and converts nothing.

#include "f16_pack"

struct Params {
    // vec4s to convert.
    n4: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> xh: array<vec2<u32>>;

@compute @workgroup_size(256)
fn gemm_input_f16(
    @builtin(global_invocation_id) gid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
) {
    for (var i = gid.x; i < p.n4; i += nwg.x * 256u) {
        let v = x[i];
        xh[i] = vec2<u32>(f16_pair(v.xy), f16_pair(v.zw));
    }
}
