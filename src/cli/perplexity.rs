//! `wick perplexity`: sliding-window perplexity of a text file.

use std::path::PathBuf;

use clap::Args;

use super::common::ModelArgs;
use wick::runtime::Session;
use wick::{Error, Result};

#[derive(Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file.
    #[arg(short, long)]
    pub file: PathBuf,
    /// Window stride in tokens (default: half the context).
    #[arg(long)]
    pub stride: Option<usize>,
}

/// Negative log-likelihood of `target` under `logits` (log-softmax in f64).
fn nll(logits: &[f32], target: u32) -> f64 {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let lse = logits
        .iter()
        .map(|&v| (v as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    lse - logits[target as usize] as f64
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).map_err(|e| Error::io(&a.file, e))?;
    let (_engine, model) = a.model.load()?;
    let ids = model.tokenizer()?.encode(&text)?;
    if ids.len() < 2 {
        return Err(Error::InvalidArgument(
            "the file has fewer than 2 tokens".into(),
        ));
    }
    let mut s = Session::new(&model)?;
    let ctx = s.capacity();
    let stride = a.stride.unwrap_or(ctx / 2).clamp(1, ctx);
    // Windows of `ctx` tokens advancing by `stride`; each scores only the tokens not
    // scored by the previous window (all of them for the first), the usual HF scheme.
    let mut total = 0.0f64;
    let mut count = 0usize;
    let mut scored_up_to = 1; // token 0 has no prediction
    let mut begin = 0;
    while scored_up_to < ids.len() {
        let end = (begin + ctx).min(ids.len());
        s.reset();
        for t in scored_up_to.max(begin + 1)..end {
            // Logits at position t-1 predict token t.
            s.prefill(&ids[begin..t])?;
            total += nll(&s.logits()?, ids[t]);
            count += 1;
        }
        scored_up_to = end;
        if end == ids.len() {
            break;
        }
        begin += stride;
    }
    let ppl = (total / count as f64).exp();
    println!(
        "perplexity {ppl:.4} over {count} tokens ({} in file, window {ctx}, stride {stride})",
        ids.len()
    );
    Ok(())
}
