//! `wick serve`: the OpenAI-compatible HTTP server of `wick::serve`, on the model `-m` names.

use std::time::Duration;

use clap::Args;

use super::common::ModelArgs;
use wick::serve::{serve, ServeOptions};
use wick::Result;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to bind (loopback by default: anyone who can reach the port can use the model).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port; 0 picks a free one. The bound address is printed on stdout.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Requests decoded together (continuous batching), 1 to 8; each has its own KV cache of
    /// the model's context.
    #[arg(long, default_value_t = 1)]
    pub parallel: usize,
    /// Require `Authorization: Bearer KEY` on /v1/* (/health and /metrics stay open).
    #[arg(long)]
    pub api_key: Option<String>,
    /// Requests that may wait for the GPU; more get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub queue: usize,
    /// Seconds a request may take, queued and generating (504 or an error event after).
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// The model id /v1/models lists (default: the model file's name).
    #[arg(long)]
    pub model_id: Option<String>,
}

pub fn run(a: ServeArgs) -> Result<()> {
    let opts = ServeOptions {
        host: a.host,
        port: a.port,
        parallel: a.parallel,
        api_key: a.api_key,
        queue: a.queue,
        timeout: Duration::from_secs(a.timeout.max(1)),
        model_id: a.model_id,
        ..Default::default()
    };
    // Refused settings are reported before the model loads.
    opts.check()?;
    let (_engine, model) = a.model.load()?;
    serve(model, opts)
}
