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

#include "attention_params"

@group(0) @binding(0) var<uniform> p: Params;

#ifdef MERGE
#include "reduce"

override WG: u32 = 256u;
override HW: u32 = 32u;

@group(0) @binding(1) var<storage, read> part: array<vec2<f32>>;
@group(0) @binding(2) var<storage, read_write> out: array<vec2<f32>>;

// Split s's weight exp2(m_s - M); then the split groups' partial output words.
var<workgroup> split_w: array<f32, 256>;
var<workgroup> group_o: array<vec2<f32>, 256>;

// Every invocation takes part: the max and the weighted sum of l over the splits are
// workgroup reductions, and each output word is summed by WG / HW split groups (each over
// every (WG / HW)-th split, their loads independent) whose sums meet in workgroup memory.
// The host keeps n_splits <= 256 and HW a power of two <= WG.
@compute @workgroup_size(WG)
fn attention_merge(@builtin(workgroup_id) wid: vec3<u32>, lane: Lane) {
    let lid = lane.lid;
    let h = wid.x;
    let ns = p.n_splits;
    let ml_base = p.n_heads * ns * HW + h * ns;
    var m = -3.0e38;
    for (var s = lid; s < ns; s += WG) {
        m = max(m, part[ml_base + s].x);
    }
    let mx = wg_max(m, lane);
    var l = 0.0;
    for (var s = lid; s < ns; s += WG) {
        let ml = part[ml_base + s];
        let e = exp2(ml.x - mx);
        split_w[s] = e;
        l += ml.y * e;
    }
    let lt = wg_sum(l, lane);
    let inv_l = select(0.0, 1.0 / lt, lt > 0.0);
    workgroupBarrier();
    let groups = WG / HW;
    let g = lid / HW;
    let w = lid - g * HW;
    var o = vec2(0.0);
    for (var s = g; s < ns; s += groups) {
        o += part[(h * ns + s) * HW + w] * split_w[s];
    }
    group_o[lid] = o;
    workgroupBarrier();
    if (g == 0u) {
        for (var t = 1u; t < groups; t++) {
            o += group_o[t * HW + w];
        }
        out[h * HW + w] = o * inv_l;
    }
}
#else
#ifdef LANES
// Lanes form of pass 1 (needs subgroups; same bindings, grid and outputs as the tiled form
// below). Each subgroup streams its own keys straight from the cache with no workgroup
// barrier inside the key loop: lane i of a subgroup of S owns cache words i, i + S, ... of a
// row (HW / S words, coalesced), so one key is a row-wide load per subgroup, its score for
// each of the G query heads a partial dot plus one subgroupAdd, and its V row goes into the
// lane's own output words. The softmax state (running max m, sum l per head) is identical in
// every lane of a subgroup. Subgroups take KB consecutive keys per step (their loads are in
// flight together) and interleave over the workgroup's key chunk; at the end the workgroup's
// subgroups (at most MAX_SG) are merged through workgroup memory. KV_Q8: the cache is q8_0
// (kv_q8.wgsl's layout); lanes own code words (four values) and their block scales.
override WG: u32 = 128u;
override HW: u32 = 64u;
override G: u32 = 4u;
override KB: u32 = 4u;
override DIRECT: bool = true;
// The subgroup size when the adapter has one fixed size (lets the compiler unroll the lane
// loops); 0 reads the subgroup_size builtin.
override SGS: u32 = 0u;

const MAX_G: u32 = 8u;
// Cache words per lane (HW / S) and keys per step at most.
const MAX_NW: u32 = 8u;
const MAX_KB: u32 = 4u;
// Subgroups per workgroup at most (the host sizes WG = 4 x the smallest subgroup size).
const MAX_SG: u32 = 4u;
const NEG: f32 = -3.0e38;
const NEG_HALF: f32 = -1.0e38;
// Output words per loaded cache word: 1 (f16 pair), 2 (q8_0 code word of four values).
#ifdef KV_Q8
const OUT_W: u32 = 2u;
#else
const OUT_W: u32 = 1u;
#endif

@group(0) @binding(1) var<uniform> step: Step;
@group(0) @binding(2) var<storage, read> q: array<vec2<f32>>;
@group(0) @binding(3) var<storage, read> cache_k: array<u32>;
@group(0) @binding(4) var<storage, read> cache_v: array<u32>;
@group(0) @binding(5) var<storage, read_write> dst: array<vec2<f32>>;

// The pre-scaled query rows (G x HW words) during the key loop; after it, each subgroup's
// output rows (subgroup t at t * G * HW), rescaled to the workgroup's max, to be summed. The
// host keeps MAX_SG * G * HW within the array (16 KiB with ml_s: the WebGPU minimum).
var<workgroup> wsm: array<vec2<f32>, 2016>;
// (m, l) of subgroup t, head r at t * MAX_G + r.
var<workgroup> ml_s: array<vec2<f32>, 32>;

@compute @workgroup_size(WG)
fn attention_decode_lanes(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
    @builtin(subgroup_size) sg_size: u32,
    @builtin(num_subgroups) n_sg: u32,
) {
    let kvh = wid.x;
    let split = wid.y;
    let kv_len = min(step.kv_len, p.capacity);
    let chunk = (kv_len + p.n_splits - 1u) / p.n_splits;
    let key_start = min(split * chunk, kv_len);
    let key_end = min(key_start + chunk, kv_len);
    let h0 = kvh * G;
#ifndef KV_Q8
    let kv_base = kvh * p.capacity * HW;
#endif
    let S = select(sg_size, SGS, SGS != 0u);
#ifdef KV_Q8
    // q8_0 cache: a row is HW / 2 code words (4 values each), then HD / 32 f32 scales in
    // the scales plane after all codes; a lane's code word w feeds output words 2w, 2w + 1.
    let QW = HW / 2u;
    let nw = QW / S;
    let scales0 = p.n_heads / G * p.capacity * QW;
    let row0 = kvh * p.capacity;
#else
    let nw = HW / S;
#endif

    for (var f = lid; f < G * HW; f += WG) {
        wsm[f] = q[h0 * HW + f] * p.scale_log2e;
    }
    workgroupBarrier();

    var acc: array<vec2<f32>, 64>;
    var m: array<f32, MAX_G>;
    var l: array<f32, MAX_G>;
    for (var r = 0u; r < G; r++) {
        m[r] = NEG;
        l[r] = 0.0;
        for (var i = 0u; i < MAX_NW; i++) {
            acc[r * MAX_NW + i] = vec2(0.0);
        }
    }

    // Steps are counted for the whole workgroup so every subgroup runs the same number
    // (subgroupAdd stays in uniform control flow); keys past the chunk are masked.
    let per_step = n_sg * KB;
    let n_steps = (key_end - key_start + per_step - 1u) / per_step;
    for (var it = 0u; it < n_steps; it++) {
        let k0 = key_start + (it * n_sg + sg) * KB;
        var kw: array<u32, 32>;
        var vw: array<u32, 32>;
#ifdef KV_Q8
        // Scales of the K and V blocks of each loaded code word.
        var ksc: array<f32, 32>;
        var vsc: array<f32, 32>;
#endif
        for (var b = 0u; b < KB; b++) {
            let key = k0 + b;
            // Keys past the chunk are never read: stale or poisoned words must not reach the
            // output (0 x NaN is NaN).
            if (key < key_end) {
#ifdef KV_Q8
                let row = row0 + key;
                for (var i = 0u; i < nw; i++) {
                    let w = lane + i * S;
                    let sc = scales0 + row * (HW / 16u) + w / 8u;
                    kw[b * MAX_NW + i] = cache_k[row * QW + w];
                    vw[b * MAX_NW + i] = cache_v[row * QW + w];
                    ksc[b * MAX_NW + i] = bitcast<f32>(cache_k[sc]);
                    vsc[b * MAX_NW + i] = bitcast<f32>(cache_v[sc]);
                }
#else
                let src = kv_base + key * HW + lane;
                for (var i = 0u; i < nw; i++) {
                    kw[b * MAX_NW + i] = cache_k[src + i * S];
                    vw[b * MAX_NW + i] = cache_v[src + i * S];
                }
#endif
            } else {
                for (var i = 0u; i < nw; i++) {
                    kw[b * MAX_NW + i] = 0u;
                    vw[b * MAX_NW + i] = 0u;
#ifdef KV_Q8
                    ksc[b * MAX_NW + i] = 0.0;
                    vsc[b * MAX_NW + i] = 0.0;
#endif
                }
            }
        }
        for (var r = 0u; r < G; r++) {
            var s: array<f32, MAX_KB>;
            var m_new = m[r];
            for (var b = 0u; b < KB; b++) {
                var d = 0.0;
                for (var i = 0u; i < nw; i++) {
#ifdef KV_Q8
                    let w = lane + i * S;
                    let qv = vec4(wsm[r * HW + 2u * w], wsm[r * HW + 2u * w + 1u]);
                    let c = vec4<f32>(unpack4xI8(kw[b * MAX_NW + i]));
                    d += dot(qv, c) * ksc[b * MAX_NW + i];
#else
                    d += dot(wsm[r * HW + lane + i * S], unpack2x16float(kw[b * MAX_NW + i]));
#endif
                }
                let sum = subgroupAdd(d);
                s[b] = select(NEG, sum, k0 + b < key_end);
                m_new = max(m_new, s[b]);
            }
            // m == NEG (nothing seen yet) gives exp2(-huge) = 0; a step with no key keeps
            // m and alpha = 1.
            let alpha = exp2(m[r] - m_new);
            var sum_p = 0.0;
            for (var i = 0u; i < OUT_W * nw; i++) {
                acc[r * MAX_NW + i] *= alpha;
            }
            for (var b = 0u; b < KB; b++) {
                let pb = select(0.0, exp2(s[b] - m_new), s[b] > NEG_HALF);
                sum_p += pb;
                for (var i = 0u; i < nw; i++) {
#ifdef KV_Q8
                    let c = vec4<f32>(unpack4xI8(vw[b * MAX_NW + i])) * (pb * vsc[b * MAX_NW + i]);
                    acc[r * MAX_NW + 2u * i] += c.xy;
                    acc[r * MAX_NW + 2u * i + 1u] += c.zw;
#else
                    acc[r * MAX_NW + i] += pb * unpack2x16float(vw[b * MAX_NW + i]);
#endif
                }
            }
            l[r] = l[r] * alpha + sum_p;
            m[r] = m_new;
        }
    }

    // Merge the subgroups: each publishes (m, l), rescales its rows to the workgroup max and
    // stores them over the query rows (every subgroup is past its key loop after the
    // barrier); the workgroup sums the stored rows.
    if (lane == 0u) {
        for (var r = 0u; r < G; r++) {
            ml_s[sg * MAX_G + r] = vec2(m[r], l[r]);
        }
    }
    workgroupBarrier();
    for (var r = 0u; r < G; r++) {
        var mx = NEG;
        for (var t = 0u; t < n_sg; t++) {
            mx = max(mx, ml_s[t * MAX_G + r].x);
        }
        let w = exp2(m[r] - mx);
        for (var i = 0u; i < nw; i++) {
#ifdef KV_Q8
            let o = (sg * G + r) * HW + 2u * (lane + i * S);
            wsm[o] = acc[r * MAX_NW + 2u * i] * w;
            wsm[o + 1u] = acc[r * MAX_NW + 2u * i + 1u] * w;
#else
            wsm[(sg * G + r) * HW + lane + i * S] = acc[r * MAX_NW + i] * w;
#endif
        }
    }
    workgroupBarrier();
    for (var f = lid; f < G * HW; f += WG) {
        let r = f / HW;
        let w = f - r * HW;
        var mx = NEG;
        for (var t = 0u; t < n_sg; t++) {
            mx = max(mx, ml_s[t * MAX_G + r].x);
        }
        var lt = 0.0;
        var o = vec2(0.0);
        for (var t = 0u; t < n_sg; t++) {
            let ml = ml_s[t * MAX_G + r];
            lt += ml.y * exp2(ml.x - mx);
            o += wsm[(t * G + r) * HW + w];
        }
        let h = h0 + r;
        if (DIRECT) {
            dst[h * HW + w] = select(vec2(0.0), o / lt, lt > 0.0);
        } else {
            let ps = h * p.n_splits + split;
            dst[ps * HW + w] = o;
            if (w == 0u) {
                dst[p.n_heads * p.n_splits * HW + ps] = vec2(mx, lt);
            }
        }
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
#endif
