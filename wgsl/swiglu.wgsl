// SwiGLU for the prefill path: out[r][i] = silu(gate) * up with gate = gu[r][i] and
// up = gu[r][n + i] (the gate+up GEMM writes both halves of one [rows][2n] buffer).
// One invocation per output element over a 2-D grid of 1-D workgroups.

struct Params {
    n: u32,
    rows: u32,
    total: u32,
    _pad: u32,
}

override WG: u32 = 256u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> gu: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn swiglu(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    if (idx >= p.total) { return; }
    let r = idx / p.n;
    let i = idx - r * p.n;
    let g = gu[2u * r * p.n + i];
    let u = gu[2u * r * p.n + p.n + i];
    // sigmoid from exp(-|g|) in (0, 1]: no overflow to inf for very negative g (WGSL lets
    // implementations assume infinities never occur).
    let e = exp(-abs(g));
    let sig = select(e, 1.0, g >= 0.0) / (1.0 + e);
    out[idx] = g * sig * u;
}
