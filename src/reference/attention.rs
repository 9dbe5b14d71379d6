//! Attention reference over the cache: scores, softmax and the weighted sum in f64, with K/V
//! taken exactly as the cache stores them (f16, or a q8_0 cache's dequantised f32 values), or
//! as f32 values before any cache rounding.

use half::f16;

/// A cache `[n_kv_heads][capacity][head_dim]` of keys and values: f16 as the f16 cache stores
/// them, or f32 (a q8_0 cache dequantised, or the unrounded values).
#[derive(Debug, Clone, Copy)]
pub struct Cache<'a, T = f16> {
    pub k: &'a [T],
    pub v: &'a [T],
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

/// One query row `q` (head_dim) against keys `0..n_keys` of KV head `kvh`, into `out`.
fn attend_row<T: Copy + Into<f64>>(
    q: &[f32],
    c: &Cache<T>,
    (kvh, n_keys): (usize, usize),
    scale: f32,
    out: &mut [f32],
) {
    let head_dim = c.head_dim;
    let row = |c_: &[T], j: usize| {
        let b = (kvh * c.capacity + j) * head_dim;
        c_[b..b + head_dim]
            .iter()
            .map(|&v| v.into())
            .collect::<Vec<f64>>()
    };
    let scores: Vec<f64> = (0..n_keys)
        .map(|j| {
            let k = row(c.k, j);
            q.iter().zip(&k).map(|(&a, b)| a as f64 * b).sum::<f64>() * scale as f64
        })
        .collect();
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let w: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
    let l: f64 = w.iter().sum();
    let mut o = vec![0.0f64; head_dim];
    for (j, wj) in w.iter().enumerate() {
        for (od, vd) in o.iter_mut().zip(row(c.v, j)) {
            *od += wj * vd;
        }
    }
    for (d, od) in out.iter_mut().zip(o) {
        *d = if n_keys == 0 { 0.0 } else { (od / l) as f32 };
    }
}

/// Decode: `q` f32 `[n_heads * head_dim]` against keys `0..kv_len`; GQA maps query head `h`
/// to KV head `h / (n_heads / n_kv_heads)`.
pub fn attention_decode<T: Copy + Into<f64>>(
    q: &[f32],
    cache: &Cache<T>,
    kv_len: usize,
    n_heads: usize,
    scale: f32,
) -> Vec<f32> {
    attention_prefill(q, cache, (kv_len - 1, 1), n_heads, scale)
}

/// Causal prefill: `q` f32 `[n_tokens][n_heads * head_dim]`, query `t` at position `pos + t`
/// attends to keys `0..=pos + t`.
pub fn attention_prefill<T: Copy + Into<f64>>(
    q: &[f32],
    cache: &Cache<T>,
    (pos, n_tokens): (usize, usize),
    n_heads: usize,
    scale: f32,
) -> Vec<f32> {
    let head_dim = cache.head_dim;
    let group = n_heads / cache.n_kv_heads;
    let mut out = vec![0.0f32; n_tokens * n_heads * head_dim];
    for t in 0..n_tokens {
        for h in 0..n_heads {
            let b = (t * n_heads + h) * head_dim;
            attend_row(
                &q[b..b + head_dim],
                cache,
                (h / group, pos + t + 1),
                scale,
                &mut out[b..b + head_dim],
            );
        }
    }
    out
}
