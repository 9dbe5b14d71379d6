// KV-cache write: this step's K and V rows (f32 [n_tokens][n_kv_heads * head_dim]) go to the
// f16 cache [n_kv_heads][capacity][head_dim] at positions step.pos .. step.pos + n_tokens.
// The cache is array<u32> with two halves per word (element 2i in the low half, as
// pack2x16float packs), so no f16 shader feature is needed.
// One invocation per cache word, in cache order within a head so the stores coalesce. The
// grid covers max_tokens rows; invocations past step.n_tokens, or whose position falls outside
// the cache, exit.

#include "step"
#include "f16_pack"

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
@group(0) @binding(2) var<storage, read> k_new: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> v_new: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> cache_k: array<u32>;
@group(0) @binding(5) var<storage, read_write> cache_v: array<u32>;


@compute @workgroup_size(WG)
fn kv_write(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    let words_per_token = p.n_kv_heads * p.half_dim;
    let t = idx / words_per_token;
    let pos = step.pos + t;
    if (t >= step.n_tokens || t >= p.max_tokens || pos >= p.capacity) {
        return;
    }
    // idx - t * words_per_token == h * half_dim + w, which is also the source word in row t.
    let rem = idx - t * words_per_token;
    let h = rem / p.half_dim;
    let w = rem - h * p.half_dim;
    let dst = (h * p.capacity + pos) * p.half_dim + w;
    cache_k[dst] = f16_pair(k_new[idx]);
    cache_v[dst] = f16_pair(v_new[idx]);
}
