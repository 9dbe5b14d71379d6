//! `wick perplexity`: perplexity of a text file, by llama.cpp's chunked method (default, the
//! number llama-perplexity prints) or a sliding window.

use std::path::PathBuf;

use clap::{Args, ValueEnum};

use super::common::ModelArgs;
use wick::runtime::perplexity;
use wick::runtime::Session;
use wick::{Error, Result};

/// llama-perplexity's default context (`-c 512`).
const LLAMA_CPP_DEFAULT_CTX: usize = 512;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// llama.cpp's llama-perplexity: non-overlapping chunks of --ctx tokens, each starting
    /// with BOS when the vocabulary adds one, only each chunk's second half scored.
    Chunked,
    /// Windows of --ctx tokens advancing by --stride, every token after the first scored
    /// once (the Hugging Face scheme).
    Sliding,
}

#[derive(Args)]
#[command(
    after_help = "The default method is llama.cpp's (chunked): on the same GGUF and text, `wick perplexity --ctx N` and `llama-perplexity -c N` report the same number, the one quantisations are usually compared by. --ctx defaults to 512 for it, as in llama-perplexity."
)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file.
    #[arg(short, long)]
    pub file: PathBuf,
    /// How the text is scored: chunked (llama.cpp's llama-perplexity, the default) or
    /// sliding.
    #[arg(long, value_enum, default_value = "chunked")]
    pub method: Method,
    /// Sliding method only: window stride in tokens (default: half the context).
    #[arg(long)]
    pub stride: Option<usize>,
}

pub fn run(a: PerplexityArgs) -> Result<()> {
    let text = std::fs::read_to_string(&a.file).map_err(|e| Error::io(&a.file, e))?;
    if a.stride.is_some() && a.method != Method::Sliding {
        return Err(Error::InvalidArgument(
            "--stride applies to --method sliding only".into(),
        ));
    }
    let (_engine, model) = a.model.load()?;
    let tok = model.tokenizer()?;
    let ids = tok.encode(&text)?;
    match a.method {
        Method::Chunked => {
            let n_ctx = a
                .model
                .ctx
                .unwrap_or(LLAMA_CPP_DEFAULT_CTX.min(model.config().context_len));
            let bos = if tok.adds_bos() { tok.bos() } else { None };
            let mut s = Session::with_context(&model, n_ctx)?;
            let p = perplexity::chunked(&mut s, &ids, n_ctx, bos)?;
            println!(
                "perplexity {:.4} ± {:.4} (llama.cpp chunked method: {} chunks of {n_ctx}, second half scored{}; {} of {} tokens scored)",
                p.ppl,
                p.ppl_err,
                p.passes,
                if bos.is_some() { ", BOS first" } else { "" },
                p.scored,
                ids.len()
            );
        }
        Method::Sliding => {
            let mut s = Session::new(&model)?;
            let ctx = s.capacity();
            let stride = a.stride.unwrap_or(ctx / 2).clamp(1, ctx);
            let p = perplexity::sliding(&mut s, &ids, ctx, stride)?;
            println!(
                "perplexity {:.4} ± {:.4} (sliding window of {ctx}, stride {stride}: {} windows; {} of {} tokens scored)",
                p.ppl,
                p.ppl_err,
                p.passes,
                p.scored,
                ids.len()
            );
        }
    }
    Ok(())
}
