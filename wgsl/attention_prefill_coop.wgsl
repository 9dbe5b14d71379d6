// Causal prefill attention on cooperative matrices (the native Vulkan variant of
// attention_prefill; same bindings, Params and Step, f16 cache only, head_dim 64 or 128).
//
// Flash attention: a workgroup of 128 invocations (4 subgroups of exactly 32) owns CR = 64 query
// rows of one KV head, row R = token R / G and head R % G of the GQA group (CR / G tokens), so
// each K/V fragment serves the whole group. Subgroup sg owns rows 16 sg .. 16 sg + 15. Per tile
// of CT = 32 keys:
//   S = Q K^T   two 16 x 16 f32 fragments per subgroup, f16 operands (q pre-scaled by
//               scale * log2(e) and rounded to f16 once, staged in workgroup memory);
//   softmax     S goes through the subgroup's slot of workgroup memory; two lanes per row
//               take 16 keys each (causal mask per row), pair maxima and sums by shuffle;
//               P = exp2(S - m) is written back as f16;
//   O += P V    HD / 16 f32 accumulator fragments per subgroup, f16 operands.
// K and V fragments of full tiles load straight from the cache (global memory, L1/L2); the
// last, partial tile is staged into workgroup memory with zeros past the workgroup's key end,
// so cache rows past the live length (stale or NaN) are never multiplied in.
//
// The running max is lazy: a row's reference max m moves only when a tile's max exceeds it by
// more than 8 (log2 units), so P stays below 2^8 (exact in f16, summed in f32) and the O
// fragments, which cooperative matrices give no per-row access to, are rescaled only then:
// when any row of the workgroup moved, every subgroup passes its O fragments through its slot,
// scales rows by exp2(m_old - m_new) and loads them back. Causal rows see their largest scores
// early, so this is rare after the first tiles. l sums P in f32 with the same reference.
//
// Tiles run from key 0 to the workgroup's last key (pos + its last token); the mask trims
// each row to its own causal limit. Rows past the tokens of the step are masked and not
// written.

enable f16;
enable wgpu_cooperative_matrix;

// The portable pass's interface and override constants (only HD, HW and G are read here).
#include "attention_prefill_io"
#include "attention_plan"

// The f16 cache words as pairs of halves (cooperative loads take the element type of the
// array they read).
@group(0) @binding(3) var<storage, read> cache_k: array<vec2<f16>>;
@group(0) @binding(4) var<storage, read> cache_v: array<vec2<f16>>;

// Query rows per workgroup, keys per tile.
const CR: u32 = 64u;
const CT: u32 = 32u;
// Row stride (vec2<f16> elements) of the q tile and staged K/V rows: the largest head
// (128) plus 8 halves, so the fragment loads of consecutive rows spread over the banks.
const KS: u32 = (128u + 8u) / 2u;
// Row stride (vec2<f16> elements) of a subgroup's P block: CT + 8 halves.
const PS: u32 = (CT + 8u) / 2u;
const NEG: f32 = -3.0e38;
const NEG_HALF: f32 = -1.0e38;
const F16_MAX: f32 = 65504.0;
// How far (log2 units) a row's max may pass its reference before O is rescaled.
const LAZY: f32 = 8.0;

var<workgroup> tq: array<vec2<f16>, CR * KS>;
var<workgroup> tk: array<vec2<f16>, CT * KS>;
var<workgroup> tv: array<vec2<f16>, CT * KS>;
// Per subgroup: its 16 x CT scores (f32), then its O fragments on their way through.
var<workgroup> ts: array<f32, 4u * 16u * CT>;
var<workgroup> tp: array<vec2<f16>, 4u * 16u * PS>;
// Per row: the factor of its latest rescale, and its final sum.
var<workgroup> ra: array<f32, CR>;
var<workgroup> rl: array<f32, CR>;
// Per subgroup: whether any of its rows moved its reference max this tile.
var<workgroup> moved: array<u32, 4>;

// Facts of the block and of this invocation's row, set once at the start: the first token
// and the live tokens and rows; lanes 2r and 2r + 1 of subgroup sg hold row 16 sg + r (keys
// 16 * half .. + 16 of each tile), whose keys end at e_row (0 for a masked row), with the
// row's reference max m and sum l.
var<private> t_first: u32;
var<private> n_tokens: u32;
var<private> rows_live: u32;
var<private> sg_id: u32;
var<private> lane_id: u32;
var<private> row: u32;
var<private> rr: u32;
var<private> half: u32;
var<private> e_row: u32;
var<private> m: f32;
var<private> l: f32;

fn pack2(v: vec2<f32>) -> vec2<f16> {
    return vec2<f16>(clamp(v, vec2<f32>(-F16_MAX), vec2<f32>(F16_MAX)));
}

// First element of subgroup sg's score slot and of its P block.
fn slot() -> u32 {
    return sg_id * 16u * CT;
}
fn pslot() -> u32 {
    return sg_id * 16u * PS;
}

// Fragments as B: K^T (16 dims from 16 dc, 16 keys from key j0 of the tile) and V (16 keys
// from j0, 16 dims from 16 dc), from the cache (tile at key t0 of the head at element
// kv_base) or the staged tile. Callers pick one with uniform control flow: naga counts a
// branch on a function argument or a loop variable as non-uniform, and cooperative
// operations may not sit under one.
fn k_cache(kv_base: u32, t0: u32, j0: u32, dc: u32) -> coop_mat16x16<f16, B> {
    return coopLoad<coop_mat16x16<f16, B>>(&cache_k[kv_base + (t0 + j0) * HW + 8u * dc], HW);
}
fn k_staged(j0: u32, dc: u32) -> coop_mat16x16<f16, B> {
    return coopLoad<coop_mat16x16<f16, B>>(&tk[j0 * KS + 8u * dc], KS);
}
fn v_cache(kv_base: u32, t0: u32, j0: u32, dc: u32) -> coop_mat16x16<f16, B> {
    return coopLoadT<coop_mat16x16<f16, B>>(&cache_v[kv_base + (t0 + j0) * HW + 8u * dc], HW);
}
fn v_staged(j0: u32, dc: u32) -> coop_mat16x16<f16, B> {
    return coopLoadT<coop_mat16x16<f16, B>>(&tv[j0 * KS + 8u * dc], KS);
}

// The subgroup's q rows, dims 16 dc .. + 16, as A.
fn q_frag(dc: u32) -> coop_mat16x16<f16, A> {
    return coopLoadT<coop_mat16x16<f16, A>>(&tq[sg_id * 16u * KS + 8u * dc], KS);
}

// S of the tile at t0 from the cache, into the subgroup's slot.
fn scores_cache(kv_base: u32, t0: u32) {
    var s0: coop_mat16x16<f32, C>;
    var s1: coop_mat16x16<f32, C>;
    for (var dc = 0u; dc < HD / 16u; dc++) {
        let a = q_frag(dc);
        s0 = coopMultiplyAdd(a, k_cache(kv_base, t0, 0u, dc), s0);
        s1 = coopMultiplyAdd(a, k_cache(kv_base, t0, 16u, dc), s1);
    }
    coopStoreT(s0, &ts[slot()], CT);
    coopStoreT(s1, &ts[slot() + 16u], CT);
}

// S of the staged tile, into the subgroup's slot.
fn scores_staged() {
    var s0: coop_mat16x16<f32, C>;
    var s1: coop_mat16x16<f32, C>;
    for (var dc = 0u; dc < HD / 16u; dc++) {
        let a = q_frag(dc);
        s0 = coopMultiplyAdd(a, k_staged(0u, dc), s0);
        s1 = coopMultiplyAdd(a, k_staged(16u, dc), s1);
    }
    coopStoreT(s0, &ts[slot()], CT);
    coopStoreT(s1, &ts[slot() + 16u], CT);
}

// The softmax step of the tile at t0 (scores in the slots, all subgroups' stores behind a
// barrier): P into the P blocks, m and l updated, each row's factor in ra. Returns, the same
// in every invocation, whether any row of the workgroup moved its reference max (O must be
// rescaled before P V is added).
fn softmax_step(t0: u32) -> bool {
    let base = slot() + rr * CT + 16u * half;
    var mx = NEG;
    for (var j = 0u; j < 16u; j++) {
        if (t0 + 16u * half + j < e_row) {
            mx = max(mx, ts[base + j]);
        }
    }
    mx = max(mx, subgroupShuffleXor(mx, 1u));
    var m_new = m;
    var alpha = 1.0;
    if (mx > m + LAZY) {
        m_new = mx;
        alpha = exp2(m - mx);
    }
    var sum = 0.0;
    for (var j = 0u; j < 16u; j += 2u) {
        let k = t0 + 16u * half + j;
        let sc = vec2<f32>(ts[base + j], ts[base + j + 1u]);
        let pj = vec2<f32>(
            select(0.0, exp2(sc.x - m_new), k < e_row),
            select(0.0, exp2(sc.y - m_new), k + 1u < e_row),
        );
        sum += pj.x + pj.y;
        tp[pslot() + rr * PS + (16u * half + j) / 2u] = vec2<f16>(pj);
    }
    sum += subgroupShuffleXor(sum, 1u);
    // O holds something to rescale only once a key was seen (m above NEG).
    let moves = alpha < 1.0 && m > NEG_HALF;
    l = l * alpha + sum;
    m = m_new;
    if (half == 0u) {
        ra[row] = alpha;
    }
    let any = subgroupAny(moves);
    if (lane_id == 0u) {
        moved[sg_id] = select(0u, 1u, any);
    }
    let f = workgroupUniformLoad(&moved);
    return (f[0] | f[1] | f[2] | f[3]) != 0u;
}

// O fragment times its rows' latest factors, through the subgroup's slot.
fn rescale(o: ptr<function, coop_mat16x16<f32, C>>) {
    coopStoreT(*o, &ts[slot()], 16u);
    workgroupBarrier();
    for (var e = lane_id; e < 256u; e += 32u) {
        ts[slot() + e] *= ra[sg_id * 16u + e / 16u];
    }
    workgroupBarrier();
    *o = coopLoadT<coop_mat16x16<f32, C>>(&ts[slot()], 16u);
}

// Every O fragment of the head (o4..o7 only for heads of 128), rescaled.
fn rescale_all(
    o0: ptr<function, coop_mat16x16<f32, C>>,
    o1: ptr<function, coop_mat16x16<f32, C>>,
    o2: ptr<function, coop_mat16x16<f32, C>>,
    o3: ptr<function, coop_mat16x16<f32, C>>,
    o4: ptr<function, coop_mat16x16<f32, C>>,
    o5: ptr<function, coop_mat16x16<f32, C>>,
    o6: ptr<function, coop_mat16x16<f32, C>>,
    o7: ptr<function, coop_mat16x16<f32, C>>,
) {
    rescale(o0);
    rescale(o1);
    rescale(o2);
    rescale(o3);
    if (HD > 64u) {
        rescale(o4);
        rescale(o5);
        rescale(o6);
        rescale(o7);
    }
}

// The subgroup's P block, keys 16 kc .. + 16, as A.
fn p_frag(kc: u32) -> coop_mat16x16<f16, A> {
    return coopLoadT<coop_mat16x16<f16, A>>(&tp[pslot() + 8u * kc], PS);
}

// Writes O fragment dc of the subgroup divided by the rows' sums.
fn store_o(o: coop_mat16x16<f32, C>, dc: u32, kvh: u32) {
    coopStoreT(o, &ts[slot()], 16u);
    workgroupBarrier();
    let row_words = p.n_heads * HW;
    // 16 rows x 8 output words (pairs of dims).
    for (var e = lane_id; e < 128u; e += 32u) {
        let r = e / 8u;
        let c = e % 8u;
        let rw = sg_id * 16u + r;
        let t = t_first + rw / G;
        if (rw < rows_live && t < n_tokens) {
            let lr = rl[rw];
            let b = slot() + r * 16u + 2u * c;
            let v = vec2<f32>(ts[b], ts[b + 1u]);
            let h = kvh * G + rw % G;
            out[t * row_words + h * HW + 8u * dc + c] = select(vec2(0.0), v / lr, lr > 0.0);
        }
    }
    workgroupBarrier();
}

@compute @workgroup_size(128)
fn attention_prefill_coop(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_id) sg: u32,
    @builtin(subgroup_invocation_id) lane: u32,
) {
    let kvh = wid.x;
    let bq = CR / G;
    let tf = wid.y * bq;
    let nt = min(step.n_tokens, p.max_tokens);
    if (tf >= nt) {
        return;
    }
    t_first = tf;
    n_tokens = nt;
    rows_live = bq * G;
    sg_id = sg;
    lane_id = lane;
    rr = lane / 2u;
    half = lane % 2u;
    row = sg * 16u + rr;
    let t_row = tf + row / G;
    e_row = select(0u, step.pos + t_row + 1u, row < rows_live && t_row < nt);
    m = NEG;
    l = 0.0;
    let t_end = min(tf + bq, nt);
    let key_end = min(step.pos + t_end, p.capacity);
    let row_words = p.n_heads * HW;
    let kv_base = kvh * p.capacity * HW;

    // q rows as f16, pre-scaled; rows past the live ones are zero.
    for (var i = lid; i < CR * HW; i += 128u) {
        let r = i / HW;
        let w = i % HW;
        let t = tf + r / G;
        var v = vec2<f32>(0.0);
        if (r < rows_live && t < nt) {
            v = q[t * row_words + (kvh * G + r % G) * HW + w] * p.scale_log2e;
        }
        tq[r * KS + w] = pack2(v);
    }
    workgroupBarrier();

    var o0: coop_mat16x16<f32, C>;
    var o1: coop_mat16x16<f32, C>;
    var o2: coop_mat16x16<f32, C>;
    var o3: coop_mat16x16<f32, C>;
    var o4: coop_mat16x16<f32, C>;
    var o5: coop_mat16x16<f32, C>;
    var o6: coop_mat16x16<f32, C>;
    var o7: coop_mat16x16<f32, C>;

    // Full tiles, K and V straight from the cache.
    let n_full = key_end / CT;
    for (var it = 0u; it < n_full; it++) {
        let t0 = it * CT;
        scores_cache(kv_base, t0);
        workgroupBarrier();
        if (softmax_step(t0)) {
            rescale_all(&o0, &o1, &o2, &o3, &o4, &o5, &o6, &o7);
        }
        for (var kc = 0u; kc < CT / 16u; kc++) {
            let pa = p_frag(kc);
            let j = 16u * kc;
            o0 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 0u), o0);
            o1 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 1u), o1);
            o2 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 2u), o2);
            o3 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 3u), o3);
            if (HD > 64u) {
                o4 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 4u), o4);
                o5 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 5u), o5);
                o6 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 6u), o6);
                o7 = coopMultiplyAdd(pa, v_cache(kv_base, t0, j, 7u), o7);
            }
        }
        // The slots are rewritten next tile.
        workgroupBarrier();
    }

    // The partial last tile, staged with zeros past key_end (the same steps as above).
    if (key_end % CT != 0u) {
        let t0 = n_full * CT;
        for (var i = lid; i < CT * HW; i += 128u) {
            let j = i / HW;
            let w = i % HW;
            var kw = vec2<f16>(0.0);
            var vw = vec2<f16>(0.0);
            if (t0 + j < key_end) {
                kw = cache_k[kv_base + (t0 + j) * HW + w];
                vw = cache_v[kv_base + (t0 + j) * HW + w];
            }
            tk[j * KS + w] = kw;
            tv[j * KS + w] = vw;
        }
        workgroupBarrier();
        scores_staged();
        workgroupBarrier();
        if (softmax_step(t0)) {
            rescale_all(&o0, &o1, &o2, &o3, &o4, &o5, &o6, &o7);
        }
        for (var kc = 0u; kc < CT / 16u; kc++) {
            let pa = p_frag(kc);
            let j = 16u * kc;
            o0 = coopMultiplyAdd(pa, v_staged(j, 0u), o0);
            o1 = coopMultiplyAdd(pa, v_staged(j, 1u), o1);
            o2 = coopMultiplyAdd(pa, v_staged(j, 2u), o2);
            o3 = coopMultiplyAdd(pa, v_staged(j, 3u), o3);
            if (HD > 64u) {
                o4 = coopMultiplyAdd(pa, v_staged(j, 4u), o4);
                o5 = coopMultiplyAdd(pa, v_staged(j, 5u), o5);
                o6 = coopMultiplyAdd(pa, v_staged(j, 6u), o6);
                o7 = coopMultiplyAdd(pa, v_staged(j, 7u), o7);
            }
        }
        workgroupBarrier();
    }

    if (half == 0u) {
        rl[row] = l;
    }
    workgroupBarrier();
    store_o(o0, 0u, kvh);
    store_o(o1, 1u, kvh);
    store_o(o2, 2u, kvh);
    store_o(o3, 3u, kvh);
    if (HD > 64u) {
        store_o(o4, 4u, kvh);
        store_o(o5, 5u, kvh);
        store_o(o6, 6u, kvh);
        store_o(o7, 7u, kvh);
    }
}
