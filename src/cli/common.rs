//! Arguments and helpers shared by the model-running subcommands.

use clap::Args;

use wick::engine::{Engine, EngineOptions};
use wick::kernels::KernelChoice;
use wick::model::{source, LoadOptions, LoadProgress, Model};
use wick::Result;

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// Model: a GGUF file, a Hugging Face model directory, `hf:ORG/REPO[:FILE]`; default `$WICK_MODEL`, else SmolLM2-135M-Instruct (downloaded once).
    #[arg(short, long)]
    pub model: Option<String>,
    /// Context size (KV-cache capacity) in tokens; default min(model context, 8192).
    #[arg(long)]
    pub ctx: Option<usize>,
    /// Kernel variants: portable (WGSL), native, or auto (native where present, unless
    /// `wick kernels bench --save` measured it slower here; on Metal only where it measured
    /// it faster).
    #[arg(long, default_value = "auto")]
    pub kernels: String,
    /// Quantise a float checkpoint's matrices while loading: q8_0, q4_0, q4_1, q5_0, q5_1,
    /// q4_k, q5_k, q6_k (or f16/bf16), or a mix: q4_k_m, q5_k_m. Already-quantised tensors
    /// are kept as stored.
    #[arg(long)]
    pub quantize: Option<String>,
    /// KV-cache type: f16, or q8_0 (int8 with a scale per 32 values: 0.56x the bytes, for
    /// long contexts; head_dim must be a multiple of 32).
    #[arg(long, default_value = "f16")]
    pub kv_type: String,
    /// No progress bar while the weights load (it is drawn on stderr only when stderr is a
    /// terminal).
    #[arg(short, long)]
    pub quiet: bool,
}

impl ModelArgs {
    pub fn load(&self) -> Result<(Engine, Model)> {
        // Flags first: a bad value is reported before any download or GPU work.
        let kv_type = parse_kv_type(&self.kv_type)?;
        let kernels: KernelChoice = self.kernels.parse()?;
        let path = source::resolve(self.model.as_deref())?;
        let engine = Engine::with_options(EngineOptions {
            kernels,
            ..Default::default()
        })?;
        let quantize = self
            .quantize
            .as_deref()
            .map(str::parse::<wick::model::QuantTarget>)
            .transpose()?;
        let model = Model::load(
            &engine,
            &path,
            LoadOptions {
                ctx: self.ctx,
                quantize,
                kv_type,
                progress: load_progress_bar(self.quiet),
            },
        )?;
        Ok((engine, model))
    }
}

/// `--kv-type`'s value, with an error naming the flag.
pub fn parse_kv_type(s: &str) -> Result<wick::KvType> {
    s.parse().map_err(|e| match e {
        wick::Error::InvalidArgument(m) => wick::Error::InvalidArgument(format!("--kv-type: {m}")),
        e => e,
    })
}

/// Parses `1,2,3` (spaces allowed).
pub fn parse_ids(s: &str) -> Result<Vec<u32>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse::<u32>()
                .map_err(|_| wick::Error::InvalidArgument(format!("{t:?} is not a token id")))
        })
        .collect()
}

/// A progress bar on stderr for [`Model::load`]: bytes of weights read, converted and uploaded.
/// indicatif draws nothing when stderr is not a terminal; `quiet` turns it off altogether.
pub fn load_progress_bar(quiet: bool) -> Option<LoadProgress> {
    if quiet {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "loading weights {bar:40} {bytes}/{total_bytes} {bytes_per_sec}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(LoadProgress::new(move |done, total| {
        bar.set_length(total);
        bar.set_position(done);
        if done >= total {
            bar.finish_and_clear();
        }
    }))
}
