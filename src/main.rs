//! The `wick` command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

#[derive(Parser)]
#[command(
    name = "wick",
    version,
    about = "WGSL Inference Compute Kernels: LLM inference on wgpu"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt.
    Run(cli::run::RunArgs),
    /// Chat interactively with the model's chat template.
    Chat(cli::chat::ChatArgs),
    /// Prefill and decode speed (llama-bench style): `-m MODEL` or `--synthetic PRESET`.
    Bench(cli::bench::BenchArgs),
    /// Print logits for token ids as JSON.
    Logits(cli::logits::LogitsArgs),
    /// Perplexity of a text file: llama.cpp's chunked method (as llama-perplexity) or a sliding window.
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Write a model (HF directory or GGUF) as a GGUF of one type (f16, q8_0, q4_k, ...).
    Quantize(cli::quantize::QuantizeArgs),
    /// Write a synthetic preset (real shapes, random weights) as a GGUF llama.cpp can run.
    Synth(cli::synth::SynthArgs),
    /// Tokenize text (or decode ids) with a model's tokenizer.
    Tokenize(cli::tokenize::TokenizeArgs),
    /// Time every GEMV work split for a model's shapes and save the fastest for this adapter.
    Tune(cli::tune::TuneArgs),
    /// List every GPU adapter with its backend, features, limits and subgroup sizes.
    Info(cli::info::InfoArgs),
    /// Kernel variants: list them, check them against the CPU reference, time them.
    Kernels(cli::kernels::KernelsArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Bench(a) => cli::bench::run(a),
        Command::Logits(a) => cli::logits::run(a),
        Command::Perplexity(a) => cli::perplexity::run(a),
        Command::Quantize(a) => cli::quantize::run(a),
        Command::Synth(a) => cli::synth::run(a),
        Command::Tokenize(a) => cli::tokenize::run(a),
        Command::Tune(a) => cli::tune::run(a),
        Command::Info(a) => cli::info::run(a),
        Command::Kernels(a) => cli::kernels::run(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wick: error: {e}");
            ExitCode::FAILURE
        }
    }
}
