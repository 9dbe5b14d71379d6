//! `wick synth`: a synthetic preset (real shapes, random weights) written as a GGUF with the
//! SmolLM2 tokenizer, so llama.cpp can run exactly the weights `wick bench --synthetic` runs.

use std::path::PathBuf;

use clap::Args;

use wick::formats::gguf::GgufFile;
use wick::formats::tokenizer::GgufVocab;
use wick::model::export::write_model_gguf;
use wick::model::source;
use wick::model::synthetic::{padded_vocab, Preset, SyntheticStore};
use wick::model::QuantTarget;
use wick::{Error, Result};

#[derive(Args)]
pub struct SynthArgs {
    /// smollm2-135m, qwen2.5-0.5b, qwen3-0.6b, llama3.2-1b, llama3-8b.
    #[arg(long)]
    preset: String,
    /// Matrix type (q4_0, q4_1, q8_0, q4_k, q6_k, f16, ...) or mix (q4_k_m, q5_k_m).
    #[arg(long, default_value = "q4_0")]
    quant: String,
    /// Output GGUF.
    #[arg(short, long)]
    output: PathBuf,
    /// The GGUF whose tokenizer is copied (default: the SmolLM2 model, downloaded once).
    #[arg(long)]
    tokenizer_from: Option<String>,
}

pub fn run(a: SynthArgs) -> Result<()> {
    let preset = Preset::by_name(&a.preset)?;
    let quant: QuantTarget = a.quant.parse()?;
    let tok_path = source::resolve(a.tokenizer_from.as_deref())?;
    let vocab = GgufVocab::from_gguf(&GgufFile::open(&tok_path)?)?;
    if vocab.tokens.len() > preset.vocab {
        return Err(Error::InvalidArgument(format!(
            "{} has {} tokens, more than the preset's vocabulary of {}",
            tok_path.display(),
            vocab.tokens.len(),
            preset.vocab
        )));
    }
    let vocab = padded_vocab(&vocab, preset.vocab);
    eprintln!(
        "generating synthetic {} ({}) ...",
        preset.name,
        quant.name()
    );
    let store = SyntheticStore::new(&preset, quant, 0x5EED)?;
    let name = format!("wick-synthetic-{}", preset.name);
    let report = write_model_gguf(
        &store,
        store.config(),
        &name,
        vocab.to_metadata(),
        false,
        quant,
        &a.output,
    )?;
    println!(
        "wrote {} ({} bytes): {} {}, {} tensors, tokenizer from {}",
        a.output.display(),
        report.file_bytes,
        preset.name,
        quant.name(),
        report.tensors,
        tok_path.display()
    );
    Ok(())
}
