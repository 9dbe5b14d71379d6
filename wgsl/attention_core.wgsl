// Shared core of the attention kernels (included by attention_decode and attention_prefill).
//
// A workgroup owns one KV head and ROWS query rows that all read that head: the G query heads
// of the GQA group (decode), or BQ tokens x G heads (prefill). K/V tiles of T keys are staged
// once in workgroup memory and reused by every row, so the cache is read once per workgroup.
// Softmax is online in the exp2 domain: queries are pre-scaled by scale * log2(e) when loaded,
// each row keeps a running max m and sum l, and the unnormalised output o is rescaled by
// exp2(m_old - m_new) as the max grows. Everything accumulates in f32.
//
// The cache is f16 [n_kv_heads][capacity][head_dim] packed two halves per u32 word. Per-row key
// limits (exclusive key ends) give causal masking; keys at or past the workgroup's key_end are
// never read, so stale or poisoned cache words beyond the live length cannot leak in.
// KV_Q8 (define): the cache is q8_0 instead (layout: kv_q8.wgsl). A staged K or V row then
// holds the key's HD / 4 code words followed by its HD / 32 f32 scales (fewer words than an
// f16 row, so the f16 plan's tiles fit), and the dot products dequantise from them in f32:
// scores sum code x q per 32-value block, then scale; output words take scale x code. The
// kernel calls kv_q8_head(KV head, capacity, KV heads) before attend, whose kv_base (an f16
// word offset) it then ignores.
//
// Sizes are override constants chosen on the host from the device limits: HD (head_dim, even),
// HW = HD / 2, ROWS, T (keys per tile), WG (invocations) and ACC (output words per
// invocation, at most MAX_ACC, ACC * WG >= ROWS * HW). All workgroup storage is one word array
// carved into regions at host-computed offsets (the *_OFF overrides) rather than
// override-sized arrays (a newer naga feature with a history of bugs, gfx-rs/wgpu#6722); one
// array also lets the host fit any (ROWS, HD, T) mix into the budget. SMALL_SMEM halves the array when the plan fits, for occupancy.
// No subgroup operations: the per-row softmax step is a short serial loop over T scores and
// dot products run one per invocation over workgroup memory, so the code is the same with and
// without subgroups and for any subgroup size.

#include "attention_plan"

const MAX_ACC: u32 = 8u;
// Finite stand-ins for -inf: some backends compile with fast math, where inf is unsafe.
const NEG: f32 = -3.0e38;
const NEG_HALF: f32 = -1.0e38;

@group(0) @binding(3) var<storage, read> cache_k: array<u32>;
@group(0) @binding(4) var<storage, read> cache_v: array<u32>;

#ifdef SMALL_SMEM
var<workgroup> smem: array<u32, 2048>;
#else
var<workgroup> smem: array<u32, 4096>;
#endif

var<private> acc: array<vec2<f32>, MAX_ACC>;

#ifdef KV_Q8
// The KV head's first cache row and the first word of the scales plane.
var<private> kvq_row0: u32;
var<private> kvq_scales: u32;

fn kv_q8_head(kvh: u32, capacity: u32, n_kv_heads: u32) {
    kvq_row0 = kvh * capacity;
    kvq_scales = n_kv_heads * capacity * (HD / 4u);
}

// Score of query row words qb.. against the staged key row at kb (codes, then scales).
fn kv_q8_dot(qb: u32, kb: u32) -> f32 {
    var d = 0.0;
    for (var b = 0u; b < HD / 32u; b++) {
        var db = 0.0;
        for (var u = 0u; u < 8u; u++) {
            let c = vec4<f32>(unpack4xI8(smem[kb + 8u * b + u]));
            let qi = qb + 16u * b + 2u * u;
            db += dot(vec4(q_get(qi), q_get(qi + 1u)), c);
        }
        d += db * bitcast<f32>(smem[kb + HD / 4u + b]);
    }
    return d;
}

// Output word w (values 2w, 2w + 1) of the staged value row at vb.
fn kv_q8_pair(vb: u32, w: u32) -> vec2<f32> {
    let c = vec4<f32>(unpack4xI8(smem[vb + w / 2u]));
    let pair = select(c.xy, c.zw, (w & 1u) != 0u);
    return pair * bitcast<f32>(smem[vb + HD / 4u + w / 16u]);
}
#endif

fn q_get(i: u32) -> vec2<f32> {
    return vec2(bitcast<f32>(smem[Q_OFF + 2u * i]), bitcast<f32>(smem[Q_OFF + 2u * i + 1u]));
}
fn q_set(i: u32, v: vec2<f32>) {
    smem[Q_OFF + 2u * i] = bitcast<u32>(v.x);
    smem[Q_OFF + 2u * i + 1u] = bitcast<u32>(v.y);
}
fn f_get(i: u32) -> f32 {
    return bitcast<f32>(smem[i]);
}
fn f_set(i: u32, v: f32) {
    smem[i] = bitcast<u32>(v);
}

// Attends rows (q and key ends already in smem, set by the caller) to keys key_start..key_end of the
// KV head whose key 0 starts at cache word kv_base. Leaves the unnormalised output in acc
// (word f = lid + a * WG of the ROWS x HW output tile in acc[a]) and m, l in smem.
// Must be called from workgroup-uniform control flow with uniform key bounds.
fn attend(kv_base: u32, key_start: u32, key_end: u32, lid: u32) {
    for (var a = 0u; a < MAX_ACC; a++) {
        acc[a] = vec2(0.0);
    }
    for (var r = lid; r < ROWS; r += WG) {
        f_set(M_OFF + r, NEG);
        f_set(L_OFF + r, 0.0);
    }
    workgroupBarrier();
    for (var t0 = key_start; t0 < key_end; t0 += T) {
        let n = min(T, key_end - t0);
#ifdef KV_Q8
        // Codes then scales of each key, into the K and V rows.
        let qw = HD / 4u;
        let rw = qw + HD / 32u;
        for (var f = lid; f < T * rw; f += WG) {
            let j = f / rw;
            let w = f - j * rw;
            var kw = 0u;
            var vw = 0u;
            if (j < n) {
                let row = kvq_row0 + t0 + j;
                let src = select(kvq_scales + row * (HD / 32u) + w - qw, row * qw + w, w < qw);
                kw = cache_k[src];
                vw = cache_v[src];
            }
            smem[K_OFF + j * KSTRIDE + w] = kw;
            smem[V_OFF + j * HW + w] = vw;
        }
#else
        for (var f = lid; f < T * HW; f += WG) {
            let j = f / HW;
            let w = f - j * HW;
            var kw = 0u;
            var vw = 0u;
            if (j < n) {
                let src = kv_base + (t0 + j) * HW + w;
                kw = cache_k[src];
                vw = cache_v[src];
            }
            smem[K_OFF + j * KSTRIDE + w] = kw;
            smem[V_OFF + f] = vw;
        }
#endif
        workgroupBarrier();

        for (var e = lid; e < ROWS * T; e += WG) {
            let r = e / T;
            let j = e - r * T;
            var s = NEG;
            if (j < n && t0 + j < smem[E_OFF + r]) {
#ifdef KV_Q8
                s = kv_q8_dot(r * HW, K_OFF + j * KSTRIDE);
#else
                var d = 0.0;
                let qb = r * HW;
                let kb = K_OFF + j * KSTRIDE;
                for (var w = 0u; w < HW; w++) {
                    d += dot(q_get(qb + w), unpack2x16float(smem[kb + w]));
                }
                s = d;
#endif
            }
            f_set(S_OFF + e, s);
        }
        workgroupBarrier();

        for (var r = lid; r < ROWS; r += WG) {
            let m_old = f_get(M_OFF + r);
            var m_new = m_old;
            for (var j = 0u; j < n; j++) {
                m_new = max(m_new, f_get(S_OFF + r * T + j));
            }
            var sum = 0.0;
            for (var j = 0u; j < n; j++) {
                let s = f_get(S_OFF + r * T + j);
                let pj = select(0.0, exp2(s - m_new), s > NEG_HALF);
                f_set(S_OFF + r * T + j, pj);
                sum += pj;
            }
            // m_old == NEG (nothing seen yet) gives exp2(-huge) = 0; a tile with no key for
            // this row leaves m unchanged and alpha = 1.
            let alpha = exp2(m_old - m_new);
            f_set(A_OFF + r, alpha);
            f_set(L_OFF + r, f_get(L_OFF + r) * alpha + sum);
            f_set(M_OFF + r, m_new);
        }
        workgroupBarrier();

        for (var a = 0u; a < ACC; a++) {
            let f = lid + a * WG;
            if (f < ROWS * HW) {
                let r = f / HW;
                let w = f - r * HW;
                var o = acc[a] * f_get(A_OFF + r);
                for (var j = 0u; j < n; j++) {
#ifdef KV_Q8
                    o += f_get(S_OFF + r * T + j) * kv_q8_pair(V_OFF + j * HW, w);
#else
                    o += f_get(S_OFF + r * T + j) * unpack2x16float(smem[V_OFF + j * HW + w]);
#endif
                }
                acc[a] = o;
            }
        }
        workgroupBarrier();
    }
}
