//! `wick tune`: times every GEMV work split for the shapes of a model on this adapter and
//! writes the fastest to the device's tuning file, which later engines load.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use wick::engine::{Engine, EngineOptions};
use wick::kernels::tuning::{TuneEntry, TuningTable};
use wick::kernels::{KernelPolicy, Kernels};
use wick::model::synthetic::{Preset, SyntheticStore};
use wick::model::{source, LoadOptions, Model};
use wick::tools::tune;
use wick::Result;

#[derive(Args)]
pub struct TuneArgs {
    /// Model whose GEMV shapes are tuned (default as for `wick run`). Excludes --synthetic.
    #[arg(short, long, conflicts_with = "synthetic")]
    model: Option<String>,
    /// A synthetic preset's shapes instead (see `wick bench --synthetic`).
    #[arg(long)]
    synthetic: Option<String>,
    /// Matrix type (or mix, q4_k_m) of the synthetic preset.
    #[arg(long, default_value = "q4_0")]
    quant: String,
    /// Timed samples per split (each a batch of dispatches; the median is reported).
    #[arg(short = 'r', long, default_value_t = 20)]
    reps: usize,
    /// Output file (default: this device's tuning file, see the README).
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: TuneArgs) -> Result<()> {
    let engine = Engine::with_options(EngineOptions::default())?;
    let gpu = engine.gpu().clone();
    let model = match &a.synthetic {
        Some(name) => {
            let preset = Preset::by_name(name)?;
            let store =
                SyntheticStore::new(&preset, a.quant.parse::<wick::model::QuantTarget>()?, 1)?;
            let cfg = store.config().clone();
            Model::from_store(
                &engine,
                preset.name,
                cfg,
                &store,
                LoadOptions {
                    ctx: Some(64),
                    quantize: None,
                    ..Default::default()
                },
            )?
        }
        None => {
            let path = source::resolve(a.model.as_deref())?;
            Model::load(
                &engine,
                &path,
                LoadOptions {
                    ctx: Some(64),
                    quantize: None,
                    ..Default::default()
                },
            )?
        }
    };
    // (op, format, n, k) of every GEMV the decode step runs.
    let w = model.weights();
    let mut shapes = BTreeSet::new();
    let l = &w.layers[0];
    for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_down, w.lm_head()] {
        for (_, c) in &m.chunks {
            shapes.insert(("gemv", c.format, c.n, c.k));
        }
    }
    for (_, c) in &l.w_gate.chunks {
        shapes.insert(("gemv_swiglu", c.format, c.n, c.k));
    }
    // A registry without any tuning, so "default" means the built-in choice.
    let k = Kernels::with_policy(gpu.clone(), KernelPolicy::default());
    // The first pass over the buffer warms the GPU clocks up; the second is the ceiling.
    wick::tools::bandwidth::read_ceiling(&k, 1 << 30, 50)?;
    let ceiling = wick::tools::bandwidth::read_ceiling(&k, 1 << 30, 10)? / 1e9;
    let path = a
        .out
        .clone()
        .unwrap_or_else(|| TuningTable::path_for(&gpu.caps));
    let mut table =
        TuningTable::load(&path, &gpu.caps).unwrap_or_else(|| TuningTable::for_device(&gpu.caps));
    println!(
        "{} ({}), read ceiling {ceiling:.1} GB/s",
        gpu.caps.adapter_name, gpu.caps.backend
    );
    println!("| op | format | n x k | built-in us | tuned us | split (lanes, rows, wg) |\n| --- | --- | --- | ---: | ---: | --- |");
    for (op, format, n, kd) in shapes {
        let swiglu = op == "gemv_swiglu";
        let candidates = tune::gemv_split_candidates(&gpu.caps, swiglu);
        let shape = tune::SweepShape {
            format,
            n,
            k: kd,
            swiglu,
        };
        let rows = tune::gemv_sweep(&k, &shape, &candidates, a.reps, ceiling)?;
        let (Some(best), Some(default)) = (
            rows.iter().min_by(|x, y| x.us.total_cmp(&y.us)),
            rows.iter().find(|r| r.default),
        ) else {
            continue;
        };
        println!(
            "| {op} | {} | {n}x{kd} | {:.2} | {:.2} | {}, {}, {} |",
            format.name(),
            default.us,
            best.us,
            best.lanes_per_row,
            best.rows_per_group,
            best.workgroup_size
        );
        table
            .entries
            .retain(|e| !(e.op == op && e.format == format && e.n == n && e.k == kd));
        table.entries.push(TuneEntry {
            op: op.to_string(),
            format,
            n,
            k: kd,
            lanes_per_row: best.lanes_per_row,
            rows_per_group: best.rows_per_group,
            workgroup_size: best.workgroup_size,
            us: best.us,
            default_us: default.us,
        });
    }
    table.save(&path)?;
    println!(
        "wrote {} ({} shapes); delete it to return to the built-in choices",
        path.display(),
        table.entries.len()
    );
    Ok(())
}
