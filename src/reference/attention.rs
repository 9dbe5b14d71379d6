//! Attention reference over the f16 cache: scores, softmax and the weighted sum in f64, with
//! K/V taken exactly as the cache stores them (f16).

use half::f16;

/// One query row `q` (head_dim) against keys `0..n_keys` of KV head `kvh` of an f16 cache
/// `[n_kv_heads][capacity][head_dim]`.
#[allow(clippy::too_many_arguments)]
fn attend_row(
    q: &[f32],
    cache_k: &[f16],
    cache_v: &[f16],
    kvh: usize,
    n_keys: usize,
    head_dim: usize,
    capacity: usize,
    scale: f32,
    out: &mut [f32],
) {
    let row = |c: &[f16], j: usize| {
        let b = (kvh * capacity + j) * head_dim;
        c[b..b + head_dim]
            .iter()
            .map(|v| v.to_f64())
            .collect::<Vec<_>>()
    };
    let scores: Vec<f64> = (0..n_keys)
        .map(|j| {
            let k = row(cache_k, j);
            q.iter().zip(&k).map(|(&a, b)| a as f64 * b).sum::<f64>() * scale as f64
        })
        .collect();
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let l: f64 = w.iter().sum();
    let mut o = vec![0.0f64; head_dim];
    for (j, wj) in w.iter().enumerate() {
        for (od, vd) in o.iter_mut().zip(row(cache_v, j)) {
            *od += wj * vd;
        }
    }
    for (d, od) in out.iter_mut().zip(o) {
        *d = if n_keys == 0 { 0.0 } else { (od / l) as f32 };
    }
}

/// Decode: `q` f32 `[n_heads * head_dim]` against keys `0..kv_len`; GQA maps query head `h`
/// to KV head `h / (n_heads / n_kv_heads)`.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    q: &[f32],
    cache_k: &[f16],
    cache_v: &[f16],
    kv_len: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    scale: f32,
) -> Vec<f32> {
    attention_prefill(
        q,
        cache_k,
        cache_v,
        kv_len - 1,
        1,
        n_heads,
        n_kv_heads,
        head_dim,
        capacity,
        scale,
    )
}

/// Causal prefill: `q` f32 `[n_tokens][n_heads * head_dim]`, query `t` at position `pos + t`
/// attends to keys `0..=pos + t`.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    q: &[f32],
    cache_k: &[f16],
    cache_v: &[f16],
    pos: usize,
    n_tokens: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    scale: f32,
) -> Vec<f32> {
    let group = n_heads / n_kv_heads;
    let mut out = vec![0.0f32; n_tokens * n_heads * head_dim];
    for t in 0..n_tokens {
        for h in 0..n_heads {
            let b = (t * n_heads + h) * head_dim;
            attend_row(
                &q[b..b + head_dim],
                cache_k,
                cache_v,
                h / group,
                pos + t + 1,
                head_dim,
                capacity,
                scale,
                &mut out[b..b + head_dim],
            );
        }
    }
    out
}
