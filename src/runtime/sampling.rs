//! Token sampling: greedy (on the GPU, see `forward`), or temperature with top-k, top-p,
//! min-p and a repetition penalty on the CPU from read-back logits.
//!
//! Order of operations (as llama.cpp's default chain): repetition penalty on the raw logits
//! of the last `repeat_last_n` tokens, top-k, temperature softmax, top-p (smallest set whose
//! mass reaches p), min-p (drop tokens below min_p x the top probability), renormalise, draw.

/// Sampling settings. `temperature <= 0` means greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub temperature: f32,
    /// 0 disables.
    pub top_k: usize,
    /// 1.0 disables.
    pub top_p: f32,
    /// 0.0 disables.
    pub min_p: f32,
    /// 1.0 disables.
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            seed: 0,
        }
    }
}

impl SamplingParams {
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0 && self.repeat_penalty == 1.0
    }
}

/// A small deterministic generator (PCG-XSH-RR 64/32): the same seed gives the same draws on
/// every platform.
#[derive(Debug, Clone)]
pub struct Rng {
    state: u64,
}

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let mut r = Rng {
            state: seed.wrapping_add(0x853c_49e6_748f_ea9b),
        };
        r.next_u32();
        r
    }

    pub fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        let rot = (old >> 59) as u32;
        xorshifted.rotate_right(rot)
    }

    /// Uniform in [0, 1).
    pub fn next_f64(&mut self) -> f64 {
        let hi = (self.next_u32() >> 5) as u64;
        let lo = (self.next_u32() >> 6) as u64;
        (hi * 67108864 + lo) as f64 / 9007199254740992.0
    }
}

/// Applies the repetition penalty to `logits` in place.
pub fn apply_repeat_penalty(logits: &mut [f32], history: &[u32], p: &SamplingParams) {
    if p.repeat_penalty == 1.0 || p.repeat_last_n == 0 {
        return;
    }
    let start = history.len().saturating_sub(p.repeat_last_n);
    let mut seen = std::collections::HashSet::new();
    for &t in &history[start..] {
        if !seen.insert(t) {
            continue;
        }
        if let Some(l) = logits.get_mut(t as usize) {
            *l = if *l > 0.0 {
                *l / p.repeat_penalty
            } else {
                *l * p.repeat_penalty
            };
        }
    }
}

/// The candidate distribution after every filter: (token, probability) by descending
/// probability, summing to 1. Greedy params give the single argmax.
pub fn distribution(logits: &[f32], history: &[u32], p: &SamplingParams) -> Vec<(u32, f64)> {
    let mut l = logits.to_vec();
    apply_repeat_penalty(&mut l, history, p);
    let mut cand: Vec<(u32, f32)> = l
        .iter()
        .enumerate()
        .filter(|(_, v)| !v.is_nan())
        .map(|(i, &v)| (i as u32, v))
        .collect();
    if cand.is_empty() {
        return Vec::new();
    }
    // Descending by logit, ties to the lower id (stable with the id order).
    cand.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    if p.temperature <= 0.0 {
        return vec![(cand[0].0, 1.0)];
    }
    if p.top_k > 0 && p.top_k < cand.len() {
        cand.truncate(p.top_k);
    }
    let t = p.temperature as f64;
    let max = cand[0].1 as f64;
    let mut probs: Vec<(u32, f64)> = cand
        .iter()
        .map(|&(i, v)| (i, ((v as f64 - max) / t).exp()))
        .collect();
    let sum: f64 = probs.iter().map(|x| x.1).sum();
    probs.iter_mut().for_each(|x| x.1 /= sum);
    if p.top_p < 1.0 {
        let mut acc = 0.0;
        let mut keep = probs.len();
        for (n, x) in probs.iter().enumerate() {
            acc += x.1;
            if acc >= p.top_p as f64 {
                keep = n + 1;
                break;
            }
        }
        probs.truncate(keep.max(1));
    }
    if p.min_p > 0.0 {
        let cut = probs[0].1 * p.min_p as f64;
        let keep = probs.iter().take_while(|x| x.1 >= cut).count().max(1);
        probs.truncate(keep);
    }
    let sum: f64 = probs.iter().map(|x| x.1).sum();
    probs.iter_mut().for_each(|x| x.1 /= sum);
    probs
}

/// Draws from a distribution with the uniform number `u` in [0, 1): the first token whose
/// cumulative probability exceeds `u`.
pub fn draw(dist: &[(u32, f64)], u: f64) -> Option<u32> {
    let mut acc = 0.0;
    for &(t, p) in dist {
        acc += p;
        if u < acc {
            return Some(t);
        }
    }
    dist.last().map(|x| x.0)
}

/// Samples one token.
pub fn sample(logits: &[f32], history: &[u32], p: &SamplingParams, rng: &mut Rng) -> Option<u32> {
    let dist = distribution(logits, history, p);
    if p.temperature <= 0.0 {
        return dist.first().map(|x| x.0);
    }
    draw(&dist, rng.next_f64())
}
