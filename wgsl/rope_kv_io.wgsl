// Params, bindings and rotation helpers of the fused RoPE + KV-cache write, shared by the
// f16-cache kernel (rope_kv.wgsl) and the q8_0-cache one (rope_kv_q8.wgsl). Included as a
// template: `#include "rope_kv_io" V_ELEM=u32` (f16 pairs of v) or `V_ELEM=f32`.

struct Params {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    // 0: adjacent pairs (2i, 2i+1); 1: half split (i, i + head_dim/2).
    half_split: u32,
    capacity: u32,
    max_tokens: u32,
    _pad0: u32,
    _pad1: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> inv_freq: array<f32>;
@group(0) @binding(3) var<storage, read_write> q: array<f32>;
@group(0) @binding(4) var<storage, read_write> k: array<f32>;
@group(0) @binding(5) var<storage, read> v: array<V_ELEM>;
@group(0) @binding(6) var<storage, read_write> cache_k: array<u32>;
@group(0) @binding(7) var<storage, read_write> cache_v: array<u32>;

fn cos_sin(pos: u32, i: u32) -> vec2<f32> {
    return rope_cos_sin(f32(pos) * inv_freq[i]);
}

fn rotate(a: f32, b: f32, cs: vec2<f32>) -> vec2<f32> {
    return vec2<f32>(a * cs.x - b * cs.y, a * cs.y + b * cs.x);
}
