//! `wick tune`: times every GEMV work split for the shapes of a model on this adapter and
//! writes the fastest to the device's tuning file, which later engines load.

use std::collections::BTreeSet;
use std::path::PathBuf;

use clap::Args;

use wick::engine::{Engine, EngineOptions};
use wick::kernels::tuning::{TuneEntry, TuningTable};
use wick::kernels::{gemv_dot, KernelPolicy, Kernels};
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
    /// Which GEMVs: float (on f32 activations), dot (integer dot products on 8-bit quantised
    /// activations, for the formats that have them) or all.
    #[arg(long, default_value = "all", value_parser = ["float", "dot", "all"])]
    kinds: String,
    /// Fewer candidate splits: workgroups of 128 and 256 lanes, up to 4 rows per group.
    #[arg(long)]
    quick: bool,
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
    // (op, format, n, k) of every GEMV the decode step runs, over all layers (mixes such as
    // q4_k_m give layers different formats); the fused QKV integer-dot GEMV is timed as one
    // matrix of the summed rows, which is how it looks its split up.
    let w = model.weights();
    let (float, dot) = (a.kinds != "dot", a.kinds != "float");
    let mut shapes = BTreeSet::new();
    let mut add = |op: &'static str, m: &wick::kernels::GpuMatrix, n: usize| {
        let is_dot = op.starts_with("gemv_dot");
        if (is_dot && dot && gemv_dot::dot_supported(m.format)) || (!is_dot && float) {
            shapes.insert((op, m.format, n, m.k));
        }
    };
    for l in &w.layers {
        for m in [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_down] {
            for (_, c) in &m.chunks {
                add("gemv", c, c.n);
                add("gemv_dot", c, c.n);
            }
        }
        for (_, c) in &l.w_gate.chunks {
            add("gemv_swiglu", c, c.n);
            add("gemv_dot_swiglu", c, c.n);
        }
        if let [(_, q)] = &l.wq.chunks[..] {
            if let ([(_, kk)], [(_, v)]) = (&l.wk.chunks[..], &l.wv.chunks[..]) {
                if q.format == kk.format && q.format == v.format {
                    add("gemv_dot", q, q.n + kk.n + v.n);
                }
            }
        }
    }
    for (_, c) in &w.lm_head().chunks {
        add("gemv", c, c.n);
        add("gemv_dot", c, c.n);
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
        let swiglu = op.ends_with("swiglu");
        let mut candidates = tune::gemv_split_candidates(&gpu.caps, swiglu);
        if a.quick {
            candidates.retain(|c| c.workgroup_size >= 128 && c.rows_per_group <= 4);
        }
        let shape = tune::SweepShape {
            format,
            n,
            k: kd,
            swiglu,
            dot: op.starts_with("gemv_dot"),
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
