// rope_kv.wgsl for the q8_0 cache (layout and quantisation: kv_q8.wgsl): RoPE on q (in place)
// and k, and the cache write of the rotated k and of v, in one dispatch.
//
// Same grid and q-head invocations as rope_kv: one per (token, head, j), j in
// 0..head_dim/4, each q-head invocation rotating two pairs of q in place. A scale needs the
// whole 32-value block, so each KV head's invocations j < head_dim/32 each own block j of
// k and of v: it rotates the block's 32 values of k from the unrotated input (reading each
// value's RoPE partner, which lies in another block under the half split), quantises them and
// v's, and writes codes and scales; the rest of the KV-head invocations exit. k itself is
// therefore NOT rotated in place (invocations read other blocks' inputs): the cache holds the
// only rotated keys, which is all the forward pass reads. Needs the whole head rotated and
// head_dim % 32 == 0; the host checks.
// Angles and range reduction: rope_angle.wgsl.

#include "step"
#include "rope_angle"
#include "kv_q8"

#include "rope_kv_io" V_ELEM=f32

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
    let half = p.head_dim / 2u;

    if (hh < p.n_heads) {
        // q: the two pairs of rope_kv.wgsl, rotated in place.
        let base = (t * p.n_heads + hh) * p.head_dim;
        var a0: u32; var b0: u32; var a1: u32; var b1: u32;
        if (p.half_split != 0u) {
            a0 = 2u * j; a1 = a0 + 1u; b0 = a0 + half; b1 = a1 + half;
        } else {
            a0 = 4u * j; b0 = a0 + 1u; a1 = a0 + 2u; b1 = a0 + 3u;
        }
        let r0 = rotate(q[base + a0], q[base + b0], cos_sin(pos, 2u * j));
        let r1 = rotate(q[base + a1], q[base + b1], cos_sin(pos, 2u * j + 1u));
        q[base + a0] = r0.x; q[base + b0] = r0.y;
        q[base + a1] = r1.x; q[base + b1] = r1.y;
        return;
    }
    let nb = p.head_dim / 32u;
    if (j >= nb || pos >= p.capacity) {
        return;
    }
    let h = hh - p.n_heads;
    let base = (t * p.n_kv_heads + h) * p.head_dim;
    for (var u = 0u; u < 32u; u++) {
        let e = 32u * j + u;
        // Pair (a, b) = (a, partner) with frequency index i; e is a (first) or b.
        var i: u32;
        var a: u32;
        var b: u32;
        var first: bool;
        if (p.half_split != 0u) {
            first = e < half;
            i = select(e - half, e, first);
            a = i;
            b = i + half;
        } else {
            i = e / 2u;
            a = 2u * i;
            b = a + 1u;
            first = (e & 1u) == 0u;
        }
        let r = rotate(k[base + a], k[base + b], cos_sin(pos, i));
        kv_q8_set(u, select(r.y, r.x, first));
    }
    let row = h * p.capacity + pos;
    let codes = row * quarter + 8u * j;
    let scale_at = p.n_kv_heads * p.capacity * quarter + row * nb + j;
    var d = kv_q8_scale();
    var inv = kv_q8_inv(d);
    for (var w = 0u; w < 8u; w++) {
        cache_k[codes + w] = kv_q8_word(w, inv);
    }
    cache_k[scale_at] = bitcast<u32>(d);

    for (var u = 0u; u < 32u; u++) {
        kv_q8_set(u, v[base + 32u * j + u]);
    }
    d = kv_q8_scale();
    inv = kv_q8_inv(d);
    for (var w = 0u; w < 8u; w++) {
        cache_v[codes + w] = kv_q8_word(w, inv);
    }
    cache_v[scale_at] = bitcast<u32>(d);
}
