//! `wick kernels bench`: portable against native time of each op with a native variant, on
//! the real model shapes (GEMV of SmolLM2-135M, Qwen2.5-0.5B and Llama-3-8B, decode
//! attention at a few KV lengths, GEMM at pp512 on the 8B shapes), as GB/s and a share of
//! the measured read ceiling; the per-op winner can go into the tuning cache, which
//! `--kernels auto` follows ([`crate::kernels::Kernels::variant_for`]).
//!
//! Timing is [`super::timing::time_runs`] (the method of `wick bench gemv` too): each timed
//! sample is a batch of runs of the case between one pair of GPU timestamps, sized so its
//! bytes read dwarf the fixed cost of a sample; consecutive runs rotate over copies of the
//! weights (or K/V cache) totalling well over the L2, so they read DRAM as decode does; the
//! time of one run is the median sample over its runs, and includes the barrier before the
//! next run (the runs write the same outputs). Where the adapter has no timestamps, the wall
//! clock of a synchronous batch of samples. Each row reports its runs per sample and copies.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::catalog::{self, OpInfo};
use super::timing::{time_runs, BatchOptions, Timing};
use crate::error::{Error, Result};
use crate::gpu::{Capabilities, Gpu};
pub use crate::kernels::family::{BenchCase, BenchShapes, ModelShape, Work};
use crate::kernels::family::{BuiltWork, PreparedWork};
use crate::kernels::tuning::{TuningTable, VariantEntry};
use crate::kernels::{Dispatch, KernelChoice, KernelPolicy, Kernels, Variant};
use crate::model::synthetic::Preset;

/// What to benchmark.
#[derive(Debug, Clone)]
pub struct OpBenchOptions {
    /// Only ops whose name contains this.
    pub filter: Option<String>,
    /// Also ops without a native variant (portable time only).
    pub all: bool,
    /// Synthetic presets whose GEMV and attention shapes are timed.
    pub models: Vec<String>,
    /// KV lengths of the decode attention cases.
    pub kv_lens: Vec<usize>,
    /// The preset and activation rows of the GEMM cases.
    pub gemm_model: String,
    pub gemm_rows: usize,
    /// Timed samples per case and variant (each a batch of runs; the median is reported).
    pub reps: usize,
    /// Seconds of warm-up before the first timed case.
    pub warmup_secs: f64,
    /// Bytes read by the ceiling kernel (capped by the binding limit).
    pub ceiling_bytes: u64,
    /// How each case's samples and weight copies are sized.
    pub batch: BatchOptions,
}

impl Default for OpBenchOptions {
    fn default() -> Self {
        OpBenchOptions {
            filter: None,
            all: false,
            models: ["smollm2-135m", "qwen2.5-0.5b", "llama3-8b"]
                .map(String::from)
                .to_vec(),
            kv_lens: vec![512, 2048, 8192],
            gemm_model: "llama3-8b".into(),
            gemm_rows: 512,
            reps: 20,
            warmup_secs: 1.0,
            ceiling_bytes: 1 << 30,
            batch: BatchOptions::default(),
        }
    }
}

/// The kernel-level shape of a synthetic preset.
fn model_shape(p: &Preset) -> ModelShape {
    ModelShape {
        name: p.name.to_string(),
        hidden: p.hidden,
        ffn: p.ffn,
        n_heads: p.n_heads,
        n_kv_heads: p.n_kv_heads,
        head_dim: p.head_dim,
        vocab: p.vocab,
    }
}

/// The shapes the options time.
pub fn shapes(o: &OpBenchOptions) -> Result<BenchShapes> {
    let decode = o
        .models
        .iter()
        .map(|m| Preset::by_name(m).map(|p| model_shape(&p)))
        .collect::<Result<Vec<_>>>()?;
    Ok(BenchShapes {
        decode,
        kv_lens: o.kv_lens.clone(),
        prefill: model_shape(&Preset::by_name(&o.gemm_model)?),
        prefill_rows: o.gemm_rows,
    })
}

/// Ops the options select: those with a native variant (or all with `all`).
fn selected_ops(o: &OpBenchOptions) -> Vec<OpInfo> {
    catalog::catalog()
        .into_iter()
        .filter(|op| (o.all || !op.native.is_empty()) && op.matches(o.filter.as_deref()))
        .collect()
}

/// The cases of the selected ops on the options' model shapes, from each op's family
/// ([`crate::kernels::Family::bench`]; ops their family does not time have none).
pub fn cases(o: &OpBenchOptions) -> Result<Vec<BenchCase>> {
    let shapes = shapes(o)?;
    let mut out = Vec::new();
    for op in selected_ops(o) {
        if let Some(bench) = op.family.bench {
            out.extend(bench(&op.op, &shapes));
        }
    }
    Ok(out)
}

/// A case's buffers on the GPU, built once and bound by both variants.
pub struct Prepared {
    pub case: BenchCase,
    work: Box<dyn PreparedWork>,
}

/// A case's dispatches on one registry, one run per weight copy.
pub struct Built {
    /// `runs[c]`: the dispatches of one run reading weight copy `c`.
    pub runs: Vec<Vec<Dispatch>>,
    /// The variant the case's op ran as.
    pub variant: Variant,
    _scratch: Vec<wgpu::Buffer>,
}

/// Uploads random inputs for `case` with one copy of its weights.
pub fn prepare(gpu: &Gpu, case: &BenchCase) -> Result<Prepared> {
    prepare_copies(gpu, case, 1)
}

/// Uploads random inputs for `case` with `copies` (at least 1) copies of its weights.
pub fn prepare_copies(gpu: &Gpu, case: &BenchCase, copies: usize) -> Result<Prepared> {
    Ok(Prepared {
        case: case.clone(),
        work: case.work.prepare(gpu, copies.max(1))?,
    })
}

impl Prepared {
    /// The weight copies prepared.
    pub fn copies(&self) -> usize {
        self.work.copies()
    }

    /// The case's dispatches on `k` (whose policy picks the variant), for every copy.
    pub fn build(&self, k: &Kernels) -> Result<Built> {
        let mut runs = Vec::with_capacity(self.copies());
        let mut scratch = Vec::new();
        let mut variant = None;
        for copy in 0..self.copies() {
            let BuiltWork {
                dispatches,
                scratch: s,
            } = self.work.build(k, copy)?;
            let v = dispatches
                .iter()
                .find(|d| d.pipeline.op == self.case.op)
                .map(|d| d.pipeline.variant)
                .ok_or_else(|| {
                    Error::Unsupported(format!("no dispatch of {} was built", self.case.op))
                })?;
            // Copies differ only in buffers, so they pick the same pipelines.
            if variant.is_some_and(|w| w != v) {
                return Err(Error::Unsupported(format!(
                    "{}: weight copies built different variants",
                    self.case.op
                )));
            }
            variant = Some(v);
            runs.push(dispatches);
            scratch.extend(s);
        }
        let variant = variant.ok_or_else(|| {
            Error::Unsupported(format!("{}: no weight copy to build", self.case.op))
        })?;
        Ok(Built {
            runs,
            variant,
            _scratch: scratch,
        })
    }
}

/// A registry running `op` as `variant`: portable everywhere, or native for `op` (an error
/// when it has none here) and wherever else one exists.
pub fn registry(gpu: &Arc<Gpu>, op: &str, variant: Variant) -> Kernels {
    let policy = match variant {
        Variant::Portable => KernelPolicy::default(),
        Variant::Native => KernelPolicy {
            default: KernelChoice::Native,
            per_op: [(op.to_string(), KernelChoice::Native)].into(),
        },
    };
    Kernels::with_policy(gpu.clone(), policy)
}

/// Whether `op` has a native variant this adapter can run.
pub fn native_available(caps: &Capabilities, op: &str) -> bool {
    catalog::op_info(op).is_some_and(|o| o.native_here(caps, None))
}

/// One variant timed on one case.
#[derive(Debug, Clone, Serialize)]
pub struct OpBenchRow {
    /// Case number: the x position in the plot; both variants of a case share it.
    pub index: usize,
    pub op: String,
    pub model: String,
    pub role: String,
    pub shape: String,
    pub variant: Variant,
    /// Median time of one run (all dispatches of the op: attention includes its merge), from
    /// samples of `runs_per_sample` runs over `weight_copies` copies; includes the barrier
    /// between consecutive runs, as in a decode step.
    pub us: f64,
    /// Runs of the case between one pair of timestamps.
    pub runs_per_sample: usize,
    /// Copies of the weights (or K/V cache) consecutive runs rotate over.
    pub weight_copies: usize,
    pub bytes: u64,
    pub flops: f64,
    /// flops / bytes.
    pub intensity: f64,
    pub gb_s: f64,
    /// Share of the measured read ceiling.
    pub ceiling_share: f64,
    pub gflop_s: f64,
    /// Native rows: portable time / native time (> 1: native is faster).
    pub speedup: Option<f64>,
}

/// Everything `wick kernels bench` reports.
#[derive(Debug, Clone, Serialize)]
pub struct OpBenchReport {
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    pub timing: Timing,
    pub read_ceiling_gb_s: f64,
    pub rows: Vec<OpBenchRow>,
    /// Per op with both variants timed: the summed times and the winner.
    pub winners: Vec<VariantEntry>,
    /// Cases or variants that could not run here, with the reason.
    pub skipped: Vec<String>,
}

/// Times every selected case, portable and (where this adapter has one) native.
pub fn run(gpu: &Arc<Gpu>, o: &OpBenchOptions) -> Result<OpBenchReport> {
    if o.reps == 0 {
        return Err(Error::InvalidArgument("reps must be at least 1".into()));
    }
    o.batch.validate()?;
    let caps = &gpu.caps;
    let portable = registry(gpu, "", Variant::Portable);
    // The first pass over the buffer warms the GPU clocks up; the second is the ceiling.
    super::bandwidth::read_ceiling(&portable, o.ceiling_bytes, 5)?;
    let ceiling = super::bandwidth::read_ceiling(&portable, o.ceiling_bytes, 10)?;
    let mut rows = Vec::new();
    let mut skipped = Vec::new();
    let mut timing = Timing::Wall;
    let mut warm = o.warmup_secs;
    for (index, case) in cases(o)?.into_iter().enumerate() {
        let label = format!(
            "#{index} {} {} {} {}",
            case.op,
            case.model,
            case.role,
            case.work.shape()
        );
        let plan = o
            .batch
            .plan(caps, case.work.bytes(), case.work.weight_bytes());
        let prepared = match prepare_copies(gpu, &case, plan.weight_copies) {
            Ok(p) => p,
            Err(e) => {
                skipped.push(format!("{label}: {e}"));
                continue;
            }
        };
        let mut variants = vec![Variant::Portable];
        if native_available(caps, &case.op) {
            variants.push(Variant::Native);
        }
        let mut portable_us = None;
        for variant in variants {
            let k = registry(gpu, &case.op, variant);
            let built = match prepared.build(&k) {
                Ok(b) if b.variant == variant => b,
                Ok(b) => {
                    skipped.push(format!(
                        "{label} {variant:?}: ran {:?} (no such pipeline)",
                        b.variant
                    ));
                    continue;
                }
                Err(e) => {
                    skipped.push(format!("{label} {variant:?}: {e}"));
                    continue;
                }
            };
            let runs: Vec<Vec<&Dispatch>> = built.runs.iter().map(|r| r.iter().collect()).collect();
            let timed = time_runs(
                gpu,
                &runs,
                plan.runs_per_sample,
                o.batch.max_sample_secs,
                o.reps,
                warm,
            )?;
            let (ns, t) = (timed.ns, timed.timing);
            // Only the first case needs the long warm-up: the GPU stays busy afterwards.
            warm = 0.0;
            timing = t;
            let us = ns / 1e3;
            let (bytes, flops) = (case.work.bytes(), case.work.flops());
            let gb_s = bytes as f64 / ns;
            if variant == Variant::Portable {
                portable_us = Some(us);
            }
            rows.push(OpBenchRow {
                index,
                op: case.op.clone(),
                model: case.model.clone(),
                role: case.role.clone(),
                shape: case.work.shape(),
                variant,
                us,
                runs_per_sample: timed.runs_per_sample,
                weight_copies: prepared.copies(),
                bytes,
                flops,
                intensity: flops / bytes as f64,
                gb_s,
                ceiling_share: if ceiling > 0.0 {
                    gb_s * 1e9 / ceiling
                } else {
                    0.0
                },
                gflop_s: flops / ns,
                speedup: match (variant, portable_us) {
                    (Variant::Native, Some(p)) => Some(p / us),
                    _ => None,
                },
            });
        }
    }
    let winners = winners(&rows);
    Ok(OpBenchReport {
        adapter: caps.adapter_name.clone(),
        backend: caps.backend.to_string(),
        driver: caps.driver_info.clone(),
        timing,
        read_ceiling_gb_s: ceiling / 1e9,
        rows,
        winners,
        skipped,
    })
}

/// Per op, the summed portable and native times over the cases where both ran, and the
/// winner (native unless it was slower).
pub fn winners(rows: &[OpBenchRow]) -> Vec<VariantEntry> {
    let mut ops: Vec<&str> = rows.iter().map(|r| r.op.as_str()).collect();
    ops.sort();
    ops.dedup();
    let mut out = Vec::new();
    for op in ops {
        let (mut p, mut n, mut shapes) = (0.0, 0.0, 0);
        for r in rows
            .iter()
            .filter(|r| r.op == op && r.variant == Variant::Native)
        {
            let Some(pr) = rows
                .iter()
                .find(|x| x.index == r.index && x.variant == Variant::Portable)
            else {
                continue;
            };
            p += pr.us;
            n += r.us;
            shapes += 1;
        }
        if shapes > 0 {
            out.push(VariantEntry::from_times(op, p, n, shapes));
        }
    }
    out
}

/// Writes the report's winners into this device's tuning file (`path`, else the default
/// location), keeping its GEMV splits; returns the path.
pub fn save_winners(
    caps: &Capabilities,
    report: &OpBenchReport,
    path: Option<&Path>,
) -> Result<PathBuf> {
    let path = path.map_or_else(|| TuningTable::path_for(caps), Path::to_path_buf);
    let mut table = TuningTable::load(&path, caps).unwrap_or_else(|| TuningTable::for_device(caps));
    for w in &report.winners {
        table.set_variant(w.clone());
    }
    table.save(&path)?;
    Ok(path)
}

/// Draws achieved GB/s per case (x: case number, as in the table) for each variant, with the
/// measured read ceiling as a horizontal line, into an SVG file. Case number rather than
/// arithmetic intensity on x: GEMV and decode attention all sit near 1-4 flop/byte and would
/// pile up on one column.
pub fn plot_svg(report: &OpBenchReport, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let perr = |e: String| Error::InvalidArgument(format!("plot {}: {e}", path.display()));
    let cases = report.rows.iter().map(|r| r.index + 1).max().unwrap_or(1);
    let ceiling = report.read_ceiling_gb_s;
    let top = report
        .rows
        .iter()
        .map(|r| r.gb_s)
        .fold(ceiling, f64::max)
        .max(1e-3)
        * 1.15;
    let root = SVGBackend::new(path, (1280, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| perr(e.to_string()))?;
    let x_range = -0.5f64..(cases as f64 - 0.5);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} ({}): achieved GB/s per kernel case",
                report.adapter, report.backend
            ),
            ("sans-serif", 22),
        )
        .margin(20)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, 0f64..top)
        .map_err(|e| perr(e.to_string()))?;
    chart
        .configure_mesh()
        .x_desc("case # (see `wick kernels bench` table)")
        .y_desc("GB/s")
        .x_labels(cases.min(40))
        .x_label_formatter(&|v| format!("{}", v.round() as i64))
        .draw()
        .map_err(|e| perr(e.to_string()))?;
    let right = cases as f64 - 0.5;
    chart
        .draw_series(std::iter::once(PathElement::new(
            vec![(-0.5, ceiling), (right, ceiling)],
            RED.stroke_width(2),
        )))
        .map_err(|e| perr(e.to_string()))?
        .label(format!("measured read ceiling {ceiling:.1} GB/s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED.stroke_width(2)));
    let of = |v: Variant| report.rows.iter().filter(move |r| r.variant == v);
    chart
        .draw_series(
            of(Variant::Portable)
                .map(|r| Circle::new((r.index as f64 - 0.15, r.gb_s), 5, BLUE.filled())),
        )
        .map_err(|e| perr(e.to_string()))?
        .label("portable (WGSL)")
        .legend(|(x, y)| Circle::new((x + 10, y), 5, BLUE.filled()));
    chart
        .draw_series(
            of(Variant::Native)
                .map(|r| TriangleMarker::new((r.index as f64 + 0.15, r.gb_s), 7, GREEN.filled())),
        )
        .map_err(|e| perr(e.to_string()))?
        .label(format!("native ({})", report.backend))
        .legend(|(x, y)| TriangleMarker::new((x + 10, y), 7, GREEN.filled()));
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| perr(e.to_string()))?;
    root.present().map_err(|e| perr(e.to_string()))?;
    Ok(())
}
