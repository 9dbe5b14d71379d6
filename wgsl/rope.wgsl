// Rotary position embedding, in place on f32 rows x[t][n_heads * head_dim].
// Token t sits at absolute position step.pos + t. One invocation per rotated pair; the grid
// covers max_tokens rows (fixed at build time) and invocations past step.n_tokens exit, so
// the bind group and grid never change between steps.
// Angles and their range reduction: rope_angle.wgsl.

#include "step"
#include "rope_angle"

struct Params {
    n_heads: u32,
    head_dim: u32,
    // Rotated pairs per head: rot_dim / 2.
    half_rot: u32,
    // 0: adjacent pairs (2i, 2i+1) (GGUF llama); 1: half split (i, i + rot_dim/2) (HF).
    half_split: u32,
    max_tokens: u32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> x: array<f32>;

@compute @workgroup_size(WG)
fn rope(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    let pairs_per_token = p.n_heads * p.half_rot;
    let t = idx / pairs_per_token;
    if (t >= step.n_tokens || t >= p.max_tokens) {
        return;
    }
    let rem = idx - t * pairs_per_token;
    let h = rem / p.half_rot;
    let i = rem - h * p.half_rot;

    let cs = rope_cos_sin(f32(step.pos + t) * inv_freq[i]);
    let c = cs.x;
    let s = cs.y;

    let base = t * p.n_heads * p.head_dim + h * p.head_dim;
    var a: u32;
    var b: u32;
    if (p.half_split != 0u) {
        a = base + i;
        b = base + i + p.half_rot;
    } else {
        a = base + 2u * i;
        b = a + 1u;
    }
    let x0 = x[a];
    let x1 = x[b];
    x[a] = x0 * c - x1 * s;
    x[b] = x0 * s + x1 * c;
}
