// Decode/prefill post-QKV step in one dispatch: RoPE on q (in place) and k, and the KV-cache
// write of the rotated k and of v (f16 cache [n_kv_heads][capacity][head_dim], two halves per
// u32 word, element 2i in the low half). Replaces rope(q) + rope(k) + kv_write: three
// dependent dispatches per layer become one.
//
// One invocation per (token, head, j) for the n_heads q heads and n_kv_heads k heads, j in
// 0..head_dim/4: it rotates the two pairs whose elements form whole cache words, so no two
// invocations share a word (adjacent pairs 2j, 2j+1 are elements 4j..4j+3 = words 2j, 2j+1;
// half-split pairs 2j, 2j+1 are elements 2j, 2j+1 and 2j+h, 2j+1+h = words j and j + h/2,
// h = head_dim/2). k-head invocations also copy v words 2j and 2j+1. Needs the whole head
// rotated (rot_dim == head_dim) and head_dim % 4 == 0; the host checks.
// Angles and range reduction: rope_angle.wgsl.

#include "step"
#include "rope_angle"
#include "f16_pack"

#include "rope_kv_io" V_ELEM=u32

fn f16_word(lo: f32, hi: f32) -> u32 {
    return f16_pair(vec2<f32>(lo, hi));
}

@compute @workgroup_size(WG)
fn rope_kv(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let idx = (wid.x + wid.y * nwg.x) * WG + lid;
    let quarter = p.head_dim / 4u;
    let per_token = (p.n_heads + p.n_kv_heads) * quarter;
    let t = idx / per_token;
    let pos = step.pos + t;
    if (t >= step.n_tokens || t >= p.max_tokens) {
        return;
    }
    let rem = idx - t * per_token;
    let hh = rem / quarter;
    let j = rem - hh * quarter;
    let is_k = hh >= p.n_heads;
    let h = select(hh, hh - p.n_heads, is_k);
    let n = select(p.n_heads, p.n_kv_heads, is_k);
    let base = (t * n + h) * p.head_dim;
    let half = p.head_dim / 2u;

    // Element indices of the two pairs (a0, b0), (a1, b1) and their frequencies i0, i1.
    var a0: u32; var b0: u32; var a1: u32; var b1: u32;
    if (p.half_split != 0u) {
        a0 = 2u * j; a1 = a0 + 1u; b0 = a0 + half; b1 = a1 + half;
    } else {
        a0 = 4u * j; b0 = a0 + 1u; a1 = a0 + 2u; b1 = a0 + 3u;
    }
    let cs0 = cos_sin(pos, 2u * j);
    let cs1 = cos_sin(pos, 2u * j + 1u);
    var r0: vec2<f32>;
    var r1: vec2<f32>;
    if (is_k) {
        r0 = rotate(k[base + a0], k[base + b0], cs0);
        r1 = rotate(k[base + a1], k[base + b1], cs1);
        k[base + a0] = r0.x; k[base + b0] = r0.y;
        k[base + a1] = r1.x; k[base + b1] = r1.y;
    } else {
        r0 = rotate(q[base + a0], q[base + b0], cs0);
        r1 = rotate(q[base + a1], q[base + b1], cs1);
        q[base + a0] = r0.x; q[base + b0] = r0.y;
        q[base + a1] = r1.x; q[base + b1] = r1.y;
        return;
    }
    if (pos >= p.capacity) {
        return;
    }
    let row = (h * p.capacity + pos) * half;
    if (p.half_split != 0u) {
        // Words j (elements 2j, 2j+1 = a0, a1) and j + half/2 (b0, b1).
        cache_k[row + j] = f16_word(r0.x, r1.x);
        cache_k[row + j + half / 2u] = f16_word(r0.y, r1.y);
    } else {
        // Words 2j (elements 4j, 4j+1 = a0, b0) and 2j+1 (a1, b1).
        cache_k[row + 2u * j] = f16_word(r0.x, r0.y);
        cache_k[row + 2u * j + 1u] = f16_word(r1.x, r1.y);
    }
    // v words 2j, 2j+1 of this head, as f32 pairs.
    let vsrc = (t * p.n_kv_heads + h) * p.head_dim + 4u * j;
    cache_v[row + 2u * j] = f16_word(bitcast<f32>(v[vsrc]), bitcast<f32>(v[vsrc + 1u]));
    cache_v[row + 2u * j + 1u] = f16_word(bitcast<f32>(v[vsrc + 2u]), bitcast<f32>(v[vsrc + 3u]));
}
