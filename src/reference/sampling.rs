//! Sampling reference: the same filter chain as `runtime::sampling`, written the naive way
//! (full softmax over the vocabulary in f64, then masks), to check the runtime sampler.

/// The filter chain's settings (as `runtime::SamplingParams`, without the seed).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Filters {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
}

/// Probability of every vocabulary entry after penalty, top-k, temperature, top-p, min-p.
pub fn probabilities(logits: &[f32], history: &[u32], f: &Filters) -> Vec<f64> {
    let Filters {
        temperature,
        top_k,
        top_p,
        min_p,
        repeat_penalty,
        repeat_last_n,
    } = *f;
    let n = logits.len();
    let mut l: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
    let recent = &history[history.len().saturating_sub(repeat_last_n)..];
    for (i, v) in l.iter_mut().enumerate() {
        if repeat_penalty != 1.0 && recent.contains(&(i as u32)) {
            let pen = repeat_penalty as f64;
            // Penalise in f32 exactly as the runtime, so ties resolve the same way.
            *v = if *v > 0.0 {
                (logits[i] / repeat_penalty) as f64
            } else {
                (logits[i] * pen as f32) as f64
            };
        }
    }
    // rank[i] = number of tokens strictly ahead of i (higher logit, or equal with lower id).
    let rank = |i: usize| {
        (0..n)
            .filter(|&j| l[j] > l[i] || (l[j] == l[i] && j < i))
            .count()
    };
    let mut keep: Vec<bool> = (0..n).map(|i| top_k == 0 || rank(i) < top_k).collect();
    if temperature <= 0.0 {
        return (0..n)
            .map(|i| if rank(i) == 0 { 1.0 } else { 0.0 })
            .collect();
    }
    let max = (0..n)
        .filter(|&i| keep[i])
        .map(|i| l[i])
        .fold(f64::NEG_INFINITY, f64::max);
    let mut p: Vec<f64> = (0..n)
        .map(|i| {
            if keep[i] {
                ((l[i] - max) / temperature as f64).exp()
            } else {
                0.0
            }
        })
        .collect();
    let s: f64 = p.iter().sum();
    p.iter_mut().for_each(|x| *x /= s);
    if top_p < 1.0 {
        // Keep i if the mass of the tokens ranked ahead of it is still below top_p.
        let ranks: Vec<usize> = (0..n).map(rank).collect();
        // Mass ahead of each token, accumulated in rank order (as a sequential sampler would).
        let mut by_rank: Vec<usize> = (0..n).collect();
        by_rank.sort_by_key(|&i| ranks[i]);
        let mut ahead = vec![0.0f64; n];
        let mut acc = 0.0;
        for &i in &by_rank {
            ahead[i] = acc;
            if keep[i] {
                acc += p[i];
            }
        }
        for i in 0..n {
            if keep[i] && ahead[i] >= top_p as f64 && ranks[i] > 0 {
                keep[i] = false;
            }
        }
    }
    if min_p > 0.0 {
        let top = (0..n)
            .filter(|&i| keep[i])
            .map(|i| p[i])
            .fold(0.0, f64::max);
        for i in 0..n {
            if keep[i] && p[i] < top * min_p as f64 {
                keep[i] = false;
            }
        }
    }
    let s: f64 = (0..n).filter(|&i| keep[i]).map(|i| p[i]).sum();
    (0..n)
        .map(|i| if keep[i] { p[i] / s } else { 0.0 })
        .collect()
}
