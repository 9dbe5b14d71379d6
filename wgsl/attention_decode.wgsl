// Decode attention: one query row per head against keys 0..step.kv_len of the f16 KV cache.
//
// Pass 1 (entry attention_decode): grid (n_kv_heads, n_splits). The workgroup holds the G
// query heads of one KV group (ROWS = G) and walks a contiguous key chunk of
// ceil(kv_len / n_splits) keys (see attention_core). With DIRECT (one split) it writes the
// normalised output; otherwise it writes a partial (o unnormalised, m, l) to the scratch
// buffer, and a split with no keys writes the neutral partial (m = NEG, l = 0, o = 0).
// Pass 2 (entry attention_merge, define MERGE): one workgroup per query head combines the
// partials with weights exp2(m_s - M).
//
// Scratch layout (vec2<f32>): o at [(h * n_splits + s) * HW + w], then (m, l) at
// n_heads * n_splits * HW + h * n_splits + s.

#include "step"

struct Params {
    n_heads: u32,
    n_splits: u32,
    capacity: u32,
    max_tokens: u32,
    scale_log2e: f32,
    _pad0: u32,
    _pad1: u32,
    _pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

#ifdef MERGE
override WG: u32 = 64u;
override HW: u32 = 32u;

@group(0) @binding(1) var<storage, read> part: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec2<f32>>;

@compute @workgroup_size(WG)
fn attention_merge(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let h = wid.x;
    let ns = p.n_splits;
    let ml_base = p.n_heads * ns * HW + h * ns;
    var m = -3.0e38;
    for (var s = 0u; s < ns; s++) {
        m = max(m, part[ml_base + s].x);
    }
    var l = 0.0;
    for (var s = 0u; s < ns; s++) {
        let ml = part[ml_base + s];
        l += ml.y * exp2(ml.x - m);
    }
    let inv_l = select(0.0, 1.0 / l, l > 0.0);
    for (var w = lid; w < HW; w += WG) {
        var o = vec2(0.0);
        for (var s = 0u; s < ns; s++) {
            o += part[(h * ns + s) * HW + w] * exp2(part[ml_base + s].x - m);
        }
        out[h * HW + w] = o * inv_l;
    }
}
#else
#include "attention_core"

override G: u32 = 1u;
override DIRECT: bool = true;

@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec2<f32>>;
@group(0) @binding(5) var<storage, read_write> dst: array<vec2<f32>>;

@compute @workgroup_size(WG)
fn attention_decode(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kvh = wid.x;
    let split = wid.y;
    let kv_len = min(step.kv_len, p.capacity);
    let chunk = (kv_len + p.n_splits - 1u) / p.n_splits;
    let key_start = split * chunk;
    let key_end = min(key_start + chunk, kv_len);
    let h0 = kvh * G;

    for (var f = lid; f < ROWS * HW; f += WG) {
        q_set(f, q[h0 * HW + f] * p.scale_log2e);
    }
    for (var r = lid; r < ROWS; r += WG) {
        smem[E_OFF + r] = key_end;
    }
#ifdef KV_Q8
    kv_q8_head(kvh, p.capacity, p.n_heads / G);
#endif
    attend(kvh * p.capacity * HW, key_start, key_end, lid);

    for (var a = 0u; a < ACC; a++) {
        let f = lid + a * WG;
        if (f < ROWS * HW) {
            let r = f / HW;
            let w = f - r * HW;
            let h = h0 + r;
            if (DIRECT) {
                let l = f_get(L_OFF + r);
                dst[h * HW + w] = select(vec2(0.0), acc[a] / l, l > 0.0);
            } else {
                let ps = h * p.n_splits + split;
                dst[ps * HW + w] = acc[a];
                if (w == 0u) {
                    dst[p.n_heads * p.n_splits * HW + ps] = vec2(f_get(M_OFF + r), f_get(L_OFF + r));
                }
            }
        }
    }
}
#endif
