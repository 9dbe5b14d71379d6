// KV-cache write into the q8_0 cache (layout and quantisation: kv_q8.wgsl): this step's K and
// V rows (f32 [n_tokens][n_kv_heads * head_dim]) at positions step.pos .. step.pos + n_tokens.
// One invocation per (token, head, 32-value block): it reads the block's 32 values of k and of
// v, and writes their 8 code words and scale. Consecutive invocations take consecutive blocks
// of a row, so their code stores are contiguous. The grid covers max_tokens rows; invocations
// past step.n_tokens, or whose position falls outside the cache, exit.

#include "step"
#include "kv_q8"

struct Params {
    n_kv_heads: u32,
    // head_dim / 2
    half_dim: u32,
    capacity: u32,
    max_tokens: u32,
}

override WG: u32 = 64u;

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> k_new: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v_new: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> cache_k: array<u32>;
@group(0) @binding(5) var<storage, read_write> cache_v: array<u32>;

@compute @workgroup_size(WG)
fn kv_write(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    // Blocks per head row, per token.
    let nb = p.half_dim / 16u;
    let per_token = p.n_kv_heads * nb;
    let t = idx / per_token;
    let pos = step.pos + t;
    if (t >= step.n_tokens || t >= p.max_tokens || pos >= p.capacity) {
        return;
    }
    // idx - t * per_token == h * nb + b; block idx of the input is vec4s 8 idx .. 8 idx + 7.
    let rem = idx - t * per_token;
    let h = rem / nb;
    let b = rem - h * nb;
    let row = h * p.capacity + pos;
    let codes = row * (p.half_dim / 2u) + 8u * b;
    let scale_at = p.n_kv_heads * p.capacity * (p.half_dim / 2u) + row * nb + b;

    for (var i = 0u; i < 8u; i++) {
        let x = k_new[8u * idx + i];
        kv_q8_set(4u * i, x.x); kv_q8_set(4u * i + 1u, x.y);
        kv_q8_set(4u * i + 2u, x.z); kv_q8_set(4u * i + 3u, x.w);
    }
    var d = kv_q8_scale();
    var inv = kv_q8_inv(d);
    for (var i = 0u; i < 8u; i++) {
        cache_k[codes + i] = kv_q8_word(i, inv);
    }
    cache_k[scale_at] = bitcast<u32>(d);

    for (var i = 0u; i < 8u; i++) {
        let x = v_new[8u * idx + i];
        kv_q8_set(4u * i, x.x); kv_q8_set(4u * i + 1u, x.y);
        kv_q8_set(4u * i + 2u, x.z); kv_q8_set(4u * i + 3u, x.w);
    }
    d = kv_q8_scale();
    inv = kv_q8_inv(d);
    for (var i = 0u; i < 8u; i++) {
        cache_v[codes + i] = kv_q8_word(i, inv);
    }
    cache_v[scale_at] = bitcast<u32>(d);
}
