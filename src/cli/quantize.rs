//! `wick quantize`: write a model (Hugging Face directory or GGUF) as a GGUF of one type or
//! of one of llama.cpp's K-quant mixes.

use std::path::PathBuf;

use clap::Args;

use wick::model::export::quantize_to_gguf;
use wick::model::QuantTarget;
use wick::Result;

#[derive(Args)]
pub struct QuantizeArgs {
    /// Input: a Hugging Face model directory (config.json + safetensors) or a GGUF file.
    input: PathBuf,
    /// Output GGUF file (replaced atomically; never the input).
    output: PathBuf,
    /// Matrix type, llama.cpp naming: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q4_k,
    /// q5_k, q6_k; or a mix with llama.cpp's per-tensor rules: q4_k_m, q5_k_m.
    #[arg(long = "type", short = 't')]
    ty: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(args: QuantizeArgs) -> Result<()> {
    let target: QuantTarget = args.ty.parse()?;
    let report = quantize_to_gguf(&args.input, &args.output, target)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return Ok(());
    }
    let types: Vec<String> = report
        .types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    println!(
        "wrote {} ({} bytes): architecture {}, {} tensors ({}){}{}",
        args.output.display(),
        report.file_bytes,
        report.architecture,
        report.tensors,
        types.join(", "),
        if report.tokenizer {
            ""
        } else {
            ", no tokenizer"
        },
        if report.permuted_qk {
            ", Q/K rows permuted for llama.cpp's RoPE"
        } else {
            ""
        },
    );
    Ok(())
}
