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
    /// An OpenAI-compatible HTTP server (chat and text completions, streamed or not).
    Serve(cli::serve::ServeArgs),
    /// Prefill and decode speed (llama-bench style): `-m MODEL` or `--synthetic PRESET`.
    Bench(cli::bench::BenchArgs),
    /// Print logits for token ids as JSON.
    Logits(cli::logits::LogitsArgs),
    /// Perplexity of a text file: llama.cpp's chunked method (as llama-perplexity) or a sliding window.
    Perplexity(cli::perplexity::PerplexityArgs),
    /// Write a model (HF directory or GGUF) as a GGUF of one type (f16, q8_0, q4_k, ...) or of
    /// a llama.cpp mix (q4_k_m, q5_k_m).
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

/// Mesa's `VK_LAYER_MESA_device_select` implicit layer asks the Wayland compositor for the
/// default GPU while adapters are enumerated; without `XDG_RUNTIME_DIR` (ssh sessions,
/// containers, CI) libwayland prints `error: XDG_RUNTIME_DIR is invalid or not set` on every
/// command. wick ranks adapters itself (`WICK_ADAPTER` picks one), so the layer adds nothing
/// there: disable it, unless the user set `NODEVICE_SELECT` either way. Done first thing in
/// `main`, before any thread exists, since it changes the process environment.
#[cfg(target_os = "linux")]
fn quiet_vulkan_device_select_layer() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| d.is_empty())
        && std::env::var_os("NODEVICE_SELECT").is_none()
    {
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

fn main() -> ExitCode {
    #[cfg(target_os = "linux")]
    quiet_vulkan_device_select_layer();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(a) => cli::run::run(a),
        Command::Chat(a) => cli::chat::run(a),
        Command::Serve(a) => cli::serve::run(a),
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
