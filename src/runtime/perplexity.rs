//! Perplexity of a token sequence, two ways:
//! - [`chunked`]: llama.cpp's `llama-perplexity` method (tools/perplexity/perplexity.cpp,
//!   b10587), the one behind the perplexity tables quantisations are compared with:
//!   non-overlapping chunks of `n_ctx` tokens (`tokens / n_ctx` of them, the rest dropped),
//!   each evaluated from an empty cache with its first token replaced by BOS when the
//!   vocabulary adds BOS, and only the second half scored (the predictions of tokens
//!   `n_ctx/2 + 1 .. n_ctx - 1`, so every scored token has at least half a context before it);
//! - [`sliding`]: windows of `ctx` tokens advancing by `stride`, each scoring the tokens the
//!   previous one did not (all of them for the first): every token after the first is scored,
//!   the Hugging Face scheme.
//!
//! Both evaluate each chunk or window with one prefill ([`Session::prefill_with_logits`]).
//! The ± is llama.cpp's: the standard error of the mean negative log-likelihood, times the
//! perplexity.

use crate::error::{Error, Result};
use crate::runtime::Session;

/// What runs the model: logits at every position `>= first` of `ids`, evaluated from an
/// empty cache. [`Session`] in wick; a stand-in in tests of the bookkeeping.
pub trait Scorer {
    fn logits_from(
        &mut self,
        ids: &[u32],
        first: usize,
        visit: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()>;
}

impl Scorer for Session {
    fn logits_from(
        &mut self,
        ids: &[u32],
        first: usize,
        visit: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        self.prefill_with_logits(ids, first, visit)
    }
}

/// A perplexity and how it was measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Perplexity {
    /// exp(mean negative log-likelihood).
    pub ppl: f64,
    /// llama.cpp's ± estimate: standard error of the mean NLL times `ppl`.
    pub ppl_err: f64,
    /// Tokens scored.
    pub scored: usize,
    /// Chunks (chunked) or windows (sliding) evaluated.
    pub passes: usize,
}

/// Negative log-likelihood of `target` under `logits`: log-sum-exp in f64 minus the
/// target's logit, as llama.cpp's `log_softmax`.
pub fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let sum: f64 = logits.iter().map(|&v| ((v - max) as f64).exp()).sum();
    max as f64 + sum.ln() - logits[target as usize] as f64
}

/// Running sums of the NLL and its square.
#[derive(Default)]
struct Tally {
    nll: f64,
    nll2: f64,
    count: usize,
}

impl Tally {
    fn add(&mut self, logits: &[f32], target: u32) -> Result<()> {
        if target as usize >= logits.len() {
            return Err(Error::InvalidArgument(format!(
                "token id {target} is outside the vocabulary (size {})",
                logits.len()
            )));
        }
        let v = nll(logits, target);
        if !v.is_finite() {
            return Err(Error::Model(format!(
                "the negative log-likelihood of token {target} is {v} (non-finite logits)"
            )));
        }
        self.nll += v;
        self.nll2 += v * v;
        self.count += 1;
        Ok(())
    }

    fn finish(self, passes: usize) -> Perplexity {
        let n = self.count as f64;
        let mean = self.nll / n;
        let ppl = mean.exp();
        let var = self.nll2 / n - mean * mean;
        let ppl_err = if var > 0.0 && self.count > 1 {
            (var / (n - 1.0)).sqrt() * ppl
        } else {
            0.0
        };
        Perplexity {
            ppl,
            ppl_err,
            scored: self.count,
            passes,
        }
    }
}

/// llama.cpp's chunked perplexity (see the module docs) of `tokens`, which must already
/// start with BOS when the vocabulary adds one (as the tokenizer's `encode` does); `bos` is
/// that id then, else None. Needs at least `2 * n_ctx` tokens, as llama-perplexity does.
pub fn chunked(
    model: &mut dyn Scorer,
    tokens: &[u32],
    n_ctx: usize,
    bos: Option<u32>,
) -> Result<Perplexity> {
    if n_ctx < 4 {
        return Err(Error::InvalidArgument(format!(
            "a chunk of {n_ctx} tokens is too short to score its second half (use --ctx 4 or more)"
        )));
    }
    if tokens.len() < 2 * n_ctx {
        return Err(Error::InvalidArgument(format!(
            "the text has {} tokens; the chunked method needs at least 2 x {n_ctx} (use a smaller --ctx, a longer text, or --method sliding)",
            tokens.len()
        )));
    }
    let first = n_ctx / 2;
    let n_chunks = tokens.len() / n_ctx;
    let mut tally = Tally::default();
    for c in 0..n_chunks {
        let chunk = &tokens[c * n_ctx..(c + 1) * n_ctx];
        let mut ids = chunk.to_vec();
        if let Some(b) = bos {
            ids[0] = b;
        }
        // Logits at position p predict the chunk's token p + 1 (the original one, not BOS).
        model.logits_from(&ids, first, &mut |p, logits| {
            match chunk.get(p + 1) {
                Some(&t) => tally.add(logits, t),
                None => Ok(()), // the last position predicts the next chunk: not scored
            }
        })?;
    }
    Ok(tally.finish(n_chunks))
}

/// Sliding-window perplexity (see the module docs) of `tokens` with windows of `ctx` tokens
/// advancing by `stride`.
pub fn sliding(
    model: &mut dyn Scorer,
    tokens: &[u32],
    ctx: usize,
    stride: usize,
) -> Result<Perplexity> {
    if tokens.len() < 2 {
        return Err(Error::InvalidArgument(
            "the text has fewer than 2 tokens".into(),
        ));
    }
    if ctx < 2 || stride == 0 || stride > ctx {
        return Err(Error::InvalidArgument(format!(
            "a window of {ctx} tokens with stride {stride} (need a window of 2 or more and 1 <= stride <= window)"
        )));
    }
    let mut tally = Tally::default();
    let mut windows = 0;
    let mut scored_up_to = 1; // token 0 has no prediction
    let mut begin = 0;
    while scored_up_to < tokens.len() {
        let end = (begin + ctx).min(tokens.len());
        let window = &tokens[begin..end];
        // Logits at window position p predict token begin + p + 1; score the ones not yet
        // scored.
        let first = scored_up_to.max(begin + 1) - 1 - begin;
        model.logits_from(window, first, &mut |p, logits| match window.get(p + 1) {
            Some(&t) => tally.add(logits, t),
            None => Ok(()),
        })?;
        windows += 1;
        scored_up_to = end;
        if end == tokens.len() {
            break;
        }
        begin += stride;
    }
    Ok(tally.finish(windows))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model that records what it was asked and predicts from a fixed rule: logits 0
    /// everywhere except `boost` at the id `(previous token + 1) % vocab`.
    struct Fake {
        vocab: usize,
        boost: f32,
        calls: Vec<(Vec<u32>, usize)>,
    }

    impl Scorer for Fake {
        fn logits_from(
            &mut self,
            ids: &[u32],
            first: usize,
            visit: &mut dyn FnMut(usize, &[f32]) -> Result<()>,
        ) -> Result<()> {
            self.calls.push((ids.to_vec(), first));
            for (p, &t) in ids.iter().enumerate().skip(first) {
                let mut l = vec![0.0; self.vocab];
                l[(t as usize + 1) % self.vocab] = self.boost;
                visit(p, &l)?;
            }
            Ok(())
        }
    }

    fn fake(vocab: usize, boost: f32) -> Fake {
        Fake {
            vocab,
            boost,
            calls: Vec::new(),
        }
    }

    #[test]
    fn uniform_logits_give_the_vocabulary_size() {
        let tokens: Vec<u32> = (0..300).map(|i| (i * 7 % 50) as u32).collect();
        let mut m = fake(50, 0.0);
        let p = chunked(&mut m, &tokens, 64, None).unwrap();
        assert!((p.ppl - 50.0).abs() < 1e-9, "{p:?}");
        // Equal NLLs: no spread (up to the rounding of sum(x^2)/n - mean^2).
        assert!(p.ppl_err < 1e-4, "{p:?}");
        // 300 / 64 = 4 chunks, each scoring 64 - 32 - 1 tokens.
        assert_eq!((p.passes, p.scored), (4, 4 * 31));
        let s = sliding(&mut fake(50, 0.0), &tokens, 64, 32).unwrap();
        assert!((s.ppl - 50.0).abs() < 1e-9);
        assert_eq!(s.scored, 299);
    }

    #[test]
    fn chunks_start_with_bos_and_score_the_original_tokens() {
        // Tokens that count up: the fake predicts each one exactly, so every scored NLL is
        // the same, and a chunk scored against its BOS-replaced copy would differ.
        let tokens: Vec<u32> = (0..40).collect();
        let mut m = fake(64, 5.0);
        let p = chunked(&mut m, &tokens, 16, Some(63)).unwrap();
        assert_eq!(m.calls.len(), 2);
        for (c, (ids, first)) in m.calls.iter().enumerate() {
            assert_eq!(*first, 8);
            assert_eq!(ids[0], 63);
            assert_eq!(&ids[1..], &tokens[c * 16 + 1..(c + 1) * 16]);
        }
        let want = nll(
            &{
                let mut l = vec![0.0; 64];
                l[0] = 5.0;
                l
            },
            0,
        );
        assert!((p.ppl.ln() - want).abs() < 1e-12);
        assert_eq!(p.scored, 2 * 7);
    }

    #[test]
    fn sliding_windows_score_every_token_once() {
        let tokens: Vec<u32> = (0..100).map(|i| (i % 64) as u32).collect();
        let mut m = fake(64, 3.0);
        let p = sliding(&mut m, &tokens, 32, 16).unwrap();
        assert_eq!(p.scored, 99);
        // Windows at 0, 16, 32, 48, 64, 80 (the last reaching the end); after the first
        // each scores from where the previous one stopped.
        let starts: Vec<(usize, usize)> = m
            .calls
            .iter()
            .map(|(ids, first)| (ids.len(), *first))
            .collect();
        assert_eq!(
            starts,
            vec![(32, 0), (32, 15), (32, 15), (32, 15), (32, 15), (20, 15)]
        );
        assert_eq!(p.passes, 6);
    }

    #[test]
    fn too_short_texts_and_bad_windows_are_refused() {
        let tokens: Vec<u32> = (0..100).collect();
        let e = chunked(&mut fake(128, 0.0), &tokens, 64, None).unwrap_err();
        assert!(e.to_string().contains("at least 2 x 64"), "{e}");
        assert!(sliding(&mut fake(128, 0.0), &tokens, 32, 0).is_err());
        assert!(sliding(&mut fake(128, 0.0), &tokens[..1], 32, 16).is_err());
        // A token outside the logits is an error, not a panic.
        let e = chunked(&mut fake(8, 0.0), &tokens, 16, None).unwrap_err();
        assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    }

    #[test]
    fn the_error_estimate_is_llama_cpps() {
        // Two NLL values a and b: mean m, variance ((a-m)^2 + (b-m)^2)/2, estimate
        // sqrt(var / (n-1)) * exp(m).
        let mut t = Tally::default();
        t.add(&[0.0, 0.0], 0).unwrap(); // ln 2
        t.add(&[0.0, 2.0, 0.0], 1).unwrap();
        let (a, b) = (2f64.ln(), (2.0 + 2f64.exp()).ln() - 2.0);
        let m = (a + b) / 2.0;
        let var = ((a - m).powi(2) + (b - m).powi(2)) / 2.0;
        let p = t.finish(1);
        assert!((p.ppl - m.exp()).abs() < 1e-12);
        assert!((p.ppl_err - (var / 1.0).sqrt() * m.exp()).abs() < 1e-12);
    }
}
