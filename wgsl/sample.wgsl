// GPU sampling: repetition penalty, top-k, temperature, top-p, min-p and the draw, leaving
// the chosen id where the next decode step's embedding gather reads it, so no logits leave
// the GPU.
//
// Top-k is a tree of sorts. Each workgroup sorts C elements in workgroup memory (bitonic,
// best first: larger value, ties to the lower id) and keeps its best `k`. Level 0 reads the
// logits (FROM_LOGITS), applies the repetition penalty to its slice and records, per
// workgroup, (max, sum of exp((l - max) / T)) for the full-vocabulary softmax normaliser;
// later levels read the (value, id) pairs of the previous one. The level with one workgroup
// (FINAL) turns its best `k` into probabilities and draws with the per-token uniform `u`:
//   p_j = exp((v_j - v_0) / T) / Z, Z = sum over the k candidates (top-k on), or over the
//   whole vocabulary from the level-0 partials (top-k off: `full_norm`);
//   top-p keeps the shortest prefix whose mass reaches top_p; min-p keeps p_j >= p_0 * min_p;
//   the draw takes the first j whose cumulative kept mass exceeds u * (kept mass).
// This is the CPU sampler's chain (runtime/sampling.rs) in the same order. With top-k off the
// candidates are the best K_MAX; when the kept set would extend past them (a very flat
// distribution with neither top-p nor min-p cutting inside), flag 1 is set in token[1].
//
// A non-finite logit (NaN, +-inf) anywhere in the vocabulary makes the chosen id
// 0x80000000 | (its index): the runtime reports it instead of emitting a token.

#include "reduce"
#include "order_key"

struct Level {
    // Elements this level reads (vocabulary for level 0, pairs otherwise).
    n: u32,
    n_groups: u32,
    // Candidates each workgroup keeps (and the final level's k).
    k: u32,
    // Level-0 workgroups: entries of `norm`.
    n0: u32,
}

struct Step {
    temperature: f32,
    top_k: u32,
    top_p: f32,
    min_p: f32,
    penalty: f32,
    // Penalty window: history[hist_start..hist_end].
    hist_start: u32,
    hist_end: u32,
    // Where the chosen id is appended to the history (ignored when out of range).
    hist_out: u32,
    u: f32,
    // 1: normalise over the whole vocabulary (top-k off).
    full_norm: u32,
    vocab: u32,
    _pad: u32,
}

override WG: u32 = 256u;
// Elements sorted per workgroup (a power of two; 16 KiB of workgroup memory).
const C: u32 = 2048u;
const K_MAX: u32 = 256u;
const NO_ID: u32 = 0xffffffffu;
const FLAG_TRUNCATED: u32 = 1u;

@group(0) @binding(0) var<uniform> lv: Level;
@group(0) @binding(1) var<uniform> st: Step;
#ifdef FROM_LOGITS
@group(0) @binding(2) var<storage, read> logits: array<f32>;
#else
@group(0) @binding(2) var<storage, read> pairs_in: array<vec2<u32>>;
#endif
@group(0) @binding(3) var<storage, read_write> history: array<u32>;
// Non-final: (value bits, id) per kept candidate. Final: (id, probability bits), K_MAX.
@group(0) @binding(4) var<storage, read_write> out: array<vec2<u32>>;
// Level-0 (max, sum of exp) per workgroup.
@group(0) @binding(5) var<storage, read_write> norm: array<vec2<f32>>;
// [0]: 0, or 0xffffffff - (lowest index of a non-finite logit).
@group(0) @binding(6) var<storage, read_write> status: array<atomic<u32>>;
// [0]: chosen id, [1]: flags.
@group(0) @binding(7) var<storage, read_write> token: array<u32>;

var<workgroup> s_val: array<f32, C>;
var<workgroup> s_id: array<u32, C>;
// One bit per element: already penalised (each distinct history id counts once).
var<workgroup> s_pen: array<atomic<u32>, 64>;
var<workgroup> s_prob: array<f32, K_MAX>;
var<workgroup> s_keep: u32;
var<workgroup> s_kept_mass: f32;


// Whether element a sorts before element b: larger value, then lower id.
fn before(a: u32, b: u32) -> bool {
    let ka = order_key(s_val[a]);
    let kb = order_key(s_val[b]);
    return ka > kb || (ka == kb && s_id[a] < s_id[b]);
}

fn finite(v: f32) -> bool {
    return (bitcast<u32>(v) & 0x7f800000u) != 0x7f800000u;
}

fn pad(i: u32) {
    // A NaN value with the largest id: sorts after every real element.
    s_val[i] = bitcast<f32>(0xffffffffu);
    s_id[i] = NO_ID;
}

// Bitonic sort of s_val/s_id, best first.
fn sort(lid: u32) {
    for (var k = 2u; k <= C; k <<= 1u) {
        for (var j = k >> 1u; j > 0u; j >>= 1u) {
            for (var t = lid; t < C / 2u; t += WG) {
                let i = 2u * t - (t & (j - 1u));
                let l = i + j;
                // Blocks with bit k clear sort best first, the others worst first, so the
                // next merge sees bitonic sequences; at k == C everything is best first.
                if (((i & k) == 0u) == before(l, i)) {
                    let v = s_val[i];
                    s_val[i] = s_val[l];
                    s_val[l] = v;
                    let d = s_id[i];
                    s_id[i] = s_id[l];
                    s_id[l] = d;
                }
            }
            workgroupBarrier();
        }
    }
}

@compute @workgroup_size(WG)
fn sample(
    @builtin(workgroup_id) wid: vec3<u32>,
    lane: Lane,
) {
    let lid = lane.lid;
    let g = wid.x;
    let base = g * C;
    let end = min(base + C, lv.n);

#ifdef FROM_LOGITS
    for (var i = lid; i < C; i += WG) {
        let gi = base + i;
        if (gi < end) {
            let v = logits[gi];
            if (!finite(v)) { atomicMax(&status[0], 0xffffffffu - gi); }
            s_val[i] = v;
            s_id[i] = gi;
        } else {
            pad(i);
        }
    }
    for (var i = lid; i < C / 32u; i += WG) { atomicStore(&s_pen[i], 0u); }
    workgroupBarrier();
    if (st.penalty != 1.0) {
        for (var h = st.hist_start + lid; h < st.hist_end; h += WG) {
            let t = history[h];
            if (t >= base && t < end) {
                let li = t - base;
                let bit = 1u << (li & 31u);
                if ((atomicOr(&s_pen[li >> 5u], bit) & bit) == 0u) {
                    let v = s_val[li];
                    s_val[li] = select(v * st.penalty, v / st.penalty, v > 0.0);
                }
            }
        }
        workgroupBarrier();
    }
    // This slice's share of the softmax normaliser (finite values only).
    var own_norm = vec2<f32>(0.0, 0.0);
    if (st.temperature > 0.0) {
        var m = -3.4028235e38;
        for (var i = lid; i < end - base; i += WG) {
            if (finite(s_val[i])) { m = max(m, s_val[i]); }
        }
        m = wg_max(m, lane);
        var s = 0.0;
        for (var i = lid; i < end - base; i += WG) {
            if (finite(s_val[i])) { s += exp((s_val[i] - m) / st.temperature); }
        }
        s = wg_sum(s, lane);
        own_norm = vec2<f32>(m, s);
    }
#else
    for (var i = lid; i < C; i += WG) {
        let gi = base + i;
        if (gi < end) {
            let p = pairs_in[gi];
            s_val[i] = bitcast<f32>(p.x);
            s_id[i] = p.y;
        } else {
            pad(i);
        }
    }
    workgroupBarrier();
#endif

    sort(lid);

#ifndef FINAL
    for (var j = lid; j < lv.k; j += WG) {
        out[g * lv.k + j] = vec2<u32>(bitcast<u32>(s_val[j]), s_id[j]);
    }
#ifdef FROM_LOGITS
    if (lid == 0u) { norm[g] = own_norm; }
#endif
#else
    // Candidates: the best k real entries (padding sorts last).
    var kk = 0u;
    for (var j = 0u; j < lv.k; j++) {
        if (s_id[j] != NO_ID) { kk = j + 1u; }
    }
    let t = st.temperature;
    let top = s_val[0];
    if (t > 0.0) {
        for (var j = lid; j < kk; j += WG) { s_prob[j] = exp((s_val[j] - top) / t); }
    }
    workgroupBarrier();
    if (lid == 0u) {
        var keep = 1u;
        var kept = 1.0;
        var id = s_id[0];
        var flags = 0u;
        if (t > 0.0) {
            var z = 0.0;
            if (st.full_norm != 0u) {
#ifdef FROM_LOGITS
                z = own_norm.y * exp((own_norm.x - top) / t);
#else
                for (var i = 0u; i < lv.n0; i++) {
                    let q = norm[i];
                    z += q.y * exp((q.x - top) / t);
                }
#endif
            } else {
                for (var j = 0u; j < kk; j++) { z += s_prob[j]; }
            }
            keep = kk;
            var cut_inside = false;
            if (st.top_p < 1.0) {
                var acc = 0.0;
                for (var j = 0u; j < kk; j++) {
                    acc += s_prob[j] / z;
                    if (acc >= st.top_p) {
                        keep = j + 1u;
                        cut_inside = true;
                        break;
                    }
                }
            }
            if (st.min_p > 0.0) {
                let cut = s_prob[0] * st.min_p;
                var n = 1u;
                while (n < keep && s_prob[n] >= cut) { n++; }
                cut_inside = cut_inside || n < keep || (n == keep && keep < kk);
                keep = n;
            }
            if (st.full_norm != 0u && !cut_inside && kk < st.vocab) {
                flags |= FLAG_TRUNCATED;
            }
            kept = 0.0;
            for (var j = 0u; j < keep; j++) { kept += s_prob[j]; }
            let goal = st.u * kept;
            var acc = 0.0;
            id = s_id[keep - 1u];
            for (var j = 0u; j < keep; j++) {
                acc += s_prob[j];
                if (goal < acc) {
                    id = s_id[j];
                    break;
                }
            }
        } else {
            s_prob[0] = 1.0;
        }
        let bad = atomicLoad(&status[0]);
        if (bad != 0u) {
            id = 0x80000000u | (0xffffffffu - bad);
            atomicStore(&status[0], 0u);
        }
        token[0] = id;
        token[1] = flags;
        if (st.hist_out < arrayLength(&history)) { history[st.hist_out] = id; }
        s_keep = keep;
        s_kept_mass = kept;
    }
    workgroupBarrier();
    let keep = s_keep;
    let kept = s_kept_mass;
    for (var j = lid; j < K_MAX; j += WG) {
        if (j < keep) {
            out[j] = vec2<u32>(s_id[j], bitcast<u32>(s_prob[j] / kept));
        } else if (j < kk) {
            out[j] = vec2<u32>(s_id[j], 0u);
        } else {
            out[j] = vec2<u32>(NO_ID, 0u);
        }
    }
#endif
}
