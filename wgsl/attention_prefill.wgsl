// Causal prefill attention: n_tokens query rows per head; query t sits at absolute position
// step.pos + t and attends to cache keys 0 ..= step.pos + t (the chunk's own K/V were written
// by kv_write first, after the cached prefix).
//
// Grid (n_kv_heads, ceil(max_tokens / BQ)). A workgroup owns BQ consecutive tokens x the G
// query heads of one KV head (ROWS = BQ * G, row r = token-in-block r / G, head-in-group
// r % G), so each staged K/V tile serves the whole GQA group and BQ tokens. It walks keys
// 0 .. pos + (last live token of the block) + 1; per-row limits mask the causal triangle.
// Blocks past step.n_tokens exit; rows past it are masked and not written.

#include "attention_core"
#include "attention_prefill_io"

@compute @workgroup_size(WG)
fn attention_prefill(
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(local_invocation_index) lid: u32,
) {
    let kvh = wid.x;
    let t_first = wid.y * BQ;
    let n_tokens = min(step.n_tokens, p.max_tokens);
    if (t_first >= n_tokens) {
        return;
    }
    let t_end = min(t_first + BQ, n_tokens);
    let key_end = min(step.pos + t_end, p.capacity);
    let row_words = p.n_heads * HW;
    let h0 = kvh * G;

    for (var f = lid; f < ROWS * HW; f += WG) {
        let r = f / HW;
        let w = f - r * HW;
        let t = t_first + r / G;
        let g = r - (r / G) * G;
        var v = vec2(0.0);
        if (t < n_tokens) {
            v = q[t * row_words + (h0 + g) * HW + w] * p.scale_log2e;
        }
        q_set(f, v);
    }
    for (var r = lid; r < ROWS; r += WG) {
        let t = t_first + r / G;
        smem[E_OFF + r] = select(0u, step.pos + t + 1u, t < n_tokens);
    }
#ifdef KV_Q8
    kv_q8_head(kvh, p.capacity, p.n_heads / G);
#endif
    attend(kvh * p.capacity * HW, 0u, key_end, lid);

    for (var a = 0u; a < ACC; a++) {
        let f = lid + a * WG;
        if (f < ROWS * HW) {
            let r = f / HW;
            let w = f - r * HW;
            let t = t_first + r / G;
            let g = r - (r / G) * G;
            if (t < n_tokens) {
                let l = f_get(L_OFF + r);
                out[t * row_words + (h0 + g) * HW + w] = select(vec2(0.0), acc[a] / l, l > 0.0);
            }
        }
    }
}
