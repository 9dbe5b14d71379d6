//! `wick logits`: logits for a sequence of token ids, as JSON.

use clap::Args;
use serde_json::json;

use super::common::{parse_ids, ModelArgs};
use wick::runtime::Session;
use wick::{Error, Result};

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Comma-separated token ids.
    #[arg(long)]
    pub ids: String,
    /// Only the K largest logits per position (else the whole vector).
    #[arg(long)]
    pub top: Option<usize>,
    /// Every position, not only the last.
    #[arg(long)]
    pub all_positions: bool,
    /// JSON output (the only format).
    #[arg(long)]
    pub json: bool,
}

fn top_k(v: &[f32], k: usize) -> (Vec<u32>, Vec<f32>) {
    let mut idx: Vec<u32> = (0..v.len() as u32).collect();
    idx.sort_by(|&a, &b| v[b as usize].total_cmp(&v[a as usize]).then(a.cmp(&b)));
    idx.truncate(k);
    let vals = idx.iter().map(|&i| v[i as usize]).collect();
    (idx, vals)
}

pub fn run(a: LogitsArgs) -> Result<()> {
    let ids = parse_ids(&a.ids)?;
    if ids.is_empty() {
        return Err(Error::InvalidArgument("--ids is empty".into()));
    }
    let (_engine, model) = a.model.load()?;
    let mut s = Session::new(&model)?;
    let rows: Vec<(usize, Vec<f32>)> = if a.all_positions {
        s.logits_all(&ids)?.into_iter().enumerate().collect()
    } else {
        s.prefill(&ids)?;
        vec![(ids.len() - 1, s.logits()?)]
    };
    let positions: Vec<_> = rows
        .into_iter()
        .map(|(pos, v)| {
            let (ids, values) = match a.top {
                Some(k) => top_k(&v, k),
                None => ((0..v.len() as u32).collect(), v),
            };
            json!({ "pos": pos, "ids": ids, "values": values })
        })
        .collect();
    println!("{}", json!({ "positions": positions }));
    Ok(())
}
