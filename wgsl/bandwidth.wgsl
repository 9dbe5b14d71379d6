// Memory read ceiling: every invocation XORs a grid-strided share of a large buffer. The
// result is written only when it equals a value no input produces, so the loads cannot be
// optimised away and the write traffic is nil. `wick bench` times it to get the read
// bandwidth the decode kernels are compared against.

struct Params {
    // vec4<u32> elements in `src`.
    n: u32,
    magic: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read_write> sink: array<u32>;

@compute @workgroup_size(WG)
fn read_bandwidth(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let stride = nwg.x * WG;
    var acc = vec4<u32>(0u);
    var i = wid.x * WG + lid;
    // Four independent loads in flight per iteration.
    while (i + 3u * stride < p.n) {
        acc ^= src[i] ^ src[i + stride] ^ src[i + 2u * stride] ^ src[i + 3u * stride];
        i += 4u * stride;
    }
    while (i < p.n) {
        acc ^= src[i];
        i += stride;
    }
    let r = acc.x ^ acc.y ^ acc.z ^ acc.w;
    if (r == p.magic) {
        sink[0] = r;
    }
}
