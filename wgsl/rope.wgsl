// Rotary position embedding, in place on f32 rows x[t][n_heads * head_dim].
// Token t sits at absolute position step.pos + t. One invocation per rotated pair; the grid
// covers max_tokens rows (fixed at build time) and invocations past step.n_tokens exit, so
// the bind group and grid never change between steps.
// The angle is f32(pos) * inv_freq[i] in f32, as HF computes it; cos/sin get an explicit
// two-constant range reduction first because GPU sin/cos are only accurate near [-pi, pi]
// (Vulkan guarantees 2^-11 absolute there and nothing outside), while angles reach ~3e4 rad.

#include "step"

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

// 2*pi split Cody-Waite style: TWO_PI_HI has an 8-bit mantissa, so k * TWO_PI_HI is exact for
// k < 2^16 (positions up to ~4e5 at inv_freq 1), and TWO_PI_LO carries the rest.
const TWO_PI_HI: f32 = 6.28125;
const TWO_PI_LO: f32 = 0.0019353071795864769;
const INV_TWO_PI: f32 = 0.15915494309189535;

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

    let angle = f32(step.pos + t) * inv_freq[i];
    let k = round(angle * INV_TWO_PI);
    let r = (angle - k * TWO_PI_HI) - k * TWO_PI_LO;
    let c = cos(r);
    let s = sin(r);

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
