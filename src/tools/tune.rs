//! GEMV work-split sweeps (`wick bench gemv`, `wick tune`): every split the device and the
//! shader accept, timed on one shape; `wick tune` writes the winners into the tuning table
//! the registry consults ([`crate::kernels::tuning`]).

use serde::{Deserialize, Serialize};

use super::timing::{time_runs, BatchOptions};
use crate::error::Result;
use crate::gpu::Capabilities;
use crate::kernels::family::{bench_matrices, matrix_bytes};
use crate::kernels::gemv::{self, GemvConfig};
use crate::kernels::gemv_dot;
use crate::kernels::{Dispatch, Kernels, Variant};
use crate::quant::WeightFormat;

/// Every GEMV work split worth timing on this device: lanes per row 4..256, rows per group
/// 1..8, workgroups of 32..256, those the device and shader accept.
pub fn gemv_split_candidates(caps: &Capabilities, swiglu: bool) -> Vec<GemvConfig> {
    let mut out = Vec::new();
    for lpr in [4u32, 8, 16, 32, 64, 128, 256] {
        for rpg in [1u32, 2, 4, 8] {
            for wg in [32u32, 64, 128, 256] {
                let c = GemvConfig {
                    lanes_per_row: lpr,
                    rows_per_group: rpg,
                    workgroup_size: wg,
                    subgroup_reduce: caps.subgroup && lpr <= caps.subgroup_min_size,
                };
                if c.validate(caps, swiglu).is_ok() {
                    out.push(c);
                }
            }
        }
    }
    out
}

/// One timed GEMV variant (`wick bench gemv`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GemvTiming {
    pub format: String,
    pub n: usize,
    pub k: usize,
    pub swiglu: bool,
    /// The integer-dot GEMV (on 8-bit quantised activations) rather than the float one.
    #[serde(default)]
    pub dot: bool,
    /// Which kernel ran: the WGSL one or a native shader (whose split is its own).
    pub variant: Variant,
    pub lanes_per_row: u32,
    pub rows_per_group: u32,
    pub workgroup_size: u32,
    /// Median GPU time per dispatch: timestamps around samples of `runs_per_sample`
    /// dispatches rotating over `weight_copies` copies of the weights (see
    /// [`super::timing`]), including the barrier between consecutive dispatches.
    pub us: f64,
    /// Dispatches between one pair of timestamps (0 in reports from before batching).
    #[serde(default)]
    pub runs_per_sample: usize,
    /// Weight copies the dispatches rotate over (0 in reports from before batching).
    #[serde(default)]
    pub weight_copies: usize,
    pub gb_s: f64,
    /// Share of the measured read ceiling (when given).
    pub ceiling_share: f64,
    /// Whether this is the configuration `choose_config` picks.
    pub default: bool,
}

/// One GEMV shape a sweep times: an n x k matrix of `format` (two with `swiglu`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepShape {
    pub format: WeightFormat,
    pub n: usize,
    pub k: usize,
    /// Gate+up with the SwiGLU (`gemv_swiglu`) rather than one matrix.
    pub swiglu: bool,
    /// The integer-dot GEMV on 8-bit quantised activations (`gemv_dot`, `gemv_dot_swiglu`)
    /// rather than the float-activation one.
    pub dot: bool,
}

impl SweepShape {
    /// The tuning-table op this shape times.
    pub fn op(&self) -> &'static str {
        match (self.dot, self.swiglu) {
            (false, false) => "gemv",
            (false, true) => "gemv_swiglu",
            (true, false) => "gemv_dot",
            (true, true) => "gemv_dot_swiglu",
        }
    }
}

/// Times GEMV (or gate+up SwiGLU) on random weights of `shape` for each of `configs` (plus the
/// default choice), `reps` samples each after a warm-up, batched and rotated over weight
/// copies as [`BatchOptions::default`] plans; `ceiling_gb_s` (when known) turns the rates
/// into shares.
pub fn gemv_sweep(
    k: &Kernels,
    shape: &SweepShape,
    configs: &[GemvConfig],
    reps: usize,
    ceiling_gb_s: f64,
) -> Result<Vec<GemvTiming>> {
    let SweepShape {
        format,
        n,
        k: kdim,
        swiglu,
        dot,
    } = *shape;
    let gpu = &k.gpu;
    let weight_bytes = matrix_bytes(format, n, kdim) * if swiglu { 2 } else { 1 };
    let batch = BatchOptions::default();
    let plan = batch.plan(&gpu.caps, weight_bytes, weight_bytes);
    let w = bench_matrices(gpu, format, n, kdim, 1, plan.weight_copies)?;
    let u = if swiglu {
        Some(bench_matrices(gpu, format, n, kdim, 2, plan.weight_copies)?)
    } else {
        None
    };
    let x = gpu.upload("bench x", &vec![0.5f32; kdim])?;
    // The integer-dot kernels read the row as act_q8 writes it, quantised once here.
    let xq = if dot {
        let xq = gemv_dot::act_q8_buffer(gpu, kdim)?;
        let d = gemv_dot::act_q8(k, &x, kdim, &xq, None)?;
        k.run(&[&d])?;
        Some(xq)
    } else {
        None
    };
    let out = gpu.storage_buffer("bench out", (n * 4) as u64)?;
    let op = shape.op();
    let default = if dot {
        gemv_dot::dot_config_for(k, op, format, n, kdim)
    } else {
        gemv::config_for(k, op, format, n, kdim)
    };
    let mut all = vec![default];
    all.extend(configs.iter().copied().filter(|c| *c != default));
    let bytes = (w[0].qs.size() + w[0].scales.size()) * if swiglu { 2 } else { 1 };
    let mut out_rows = Vec::new();
    for cfg in all {
        // One dispatch per weight copy; a split the shader or device refuses is skipped.
        let ds: Result<Vec<Dispatch>> = (0..w.len())
            .map(|c| match (&u, &xq) {
                (Some(u), Some(xq)) => {
                    gemv_dot::gemv_dot_swiglu_with_config(k, &w[c], &u[c], xq, &out, &cfg)
                }
                (None, Some(xq)) => {
                    gemv_dot::gemv_dot_with_config(k, &w[c], xq, &out, Default::default(), &cfg)
                }
                (Some(u), None) => gemv::gemv_swiglu_with_config(k, &w[c], &u[c], &x, &out, &cfg),
                (None, None) => {
                    gemv::gemv_with_config(k, &w[c], &x, &out, Default::default(), &cfg)
                }
            })
            .collect();
        let Ok(ds) = ds else { continue };
        let runs: Vec<Vec<&Dispatch>> = ds.iter().map(|d| vec![d]).collect();
        // Warm-up: the first variant runs for half a second (GPU clocks ramp up under
        // load), the others a few passes.
        let warm = if out_rows.is_empty() { 0.5 } else { 0.0 };
        let timed = time_runs(
            gpu,
            &runs,
            plan.runs_per_sample,
            batch.max_sample_secs,
            reps,
            warm,
        )?;
        let med = timed.ns;
        let gb_s = bytes as f64 / med;
        let d = &ds[0];
        let native = d.pipeline.variant == Variant::Native;
        let is_default = cfg == default;
        let cfg = if native {
            gemv::native_config(&cfg)
        } else {
            cfg
        };
        out_rows.push(GemvTiming {
            format: format.name().to_string(),
            n,
            k: kdim,
            swiglu,
            dot,
            variant: d.pipeline.variant,
            lanes_per_row: cfg.lanes_per_row,
            rows_per_group: cfg.rows_per_group,
            workgroup_size: cfg.workgroup_size,
            us: med / 1e3,
            runs_per_sample: timed.runs_per_sample,
            weight_copies: w.len(),
            gb_s,
            ceiling_share: if ceiling_gb_s > 0.0 {
                gb_s / ceiling_gb_s
            } else {
                0.0
            },
            default: is_default,
        });
    }
    gpu.check()?;
    Ok(out_rows)
}
