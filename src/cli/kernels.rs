//! `wick kernels list|check|bench`: the op catalog with each variant's availability on this
//! adapter, native-vs-portable correctness against the CPU reference, and portable-vs-native
//! timings. The logic lives in `wick::tools::{catalog, check, kernel_bench}`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use wick::gpu::{Gpu, GpuOptions};
use wick::tools::catalog;
use wick::tools::check::{self, CheckOptions};
use wick::tools::kernel_bench::{self, OpBenchOptions};
use wick::{Error, Result};

#[derive(Args)]
pub struct KernelsArgs {
    #[command(subcommand)]
    cmd: KernelsCmd,
    /// Backend to open (vulkan, metal, dx12, gl); default: the best adapter.
    #[arg(long, global = true)]
    backend: Option<String>,
}

#[derive(Subcommand)]
enum KernelsCmd {
    /// Every op with its variants (portable; native per backend) and whether this adapter
    /// runs each, with the adapter's support flags.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Every variant this adapter runs of each op with a native variant, and the portable
    /// kernel on the same inputs, against the CPU reference. Exits non-zero on any failure.
    Check {
        /// Only ops whose name contains this (e.g. gemv_q8_0, attention).
        #[arg(long)]
        op: Option<String>,
        /// Seed of the random inputs (default: from the clock; printed).
        #[arg(long)]
        seed: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// Portable vs native time per op on real model shapes, as GB/s and a share of the
    /// measured read ceiling.
    Bench(BenchArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Only ops whose name contains this (e.g. gemv_q4_0, attention, gemm).
    #[arg(long)]
    op: Option<String>,
    /// Also ops without a native variant (portable time only).
    #[arg(long)]
    all: bool,
    /// Presets whose GEMV and attention shapes are timed, comma-separated.
    #[arg(long, default_value = "smollm2-135m,qwen2.5-0.5b,llama3-8b")]
    models: String,
    /// KV lengths of the decode attention cases, comma-separated.
    #[arg(long, default_value = "512,2048,8192")]
    kv_lens: String,
    /// Activation rows of the GEMM cases (the llama3-8b shapes).
    #[arg(long, default_value_t = 512)]
    gemm_rows: usize,
    /// Timed samples per case and variant (each a batch of runs; the median is reported).
    #[arg(short = 'r', long, default_value_t = 20)]
    reps: usize,
    /// Seconds of GPU warm-up before the first timed case.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Draw achieved GB/s per case against the read ceiling into this SVG file.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write each op's winner into this adapter's tuning file, which `--kernels auto` follows.
    #[arg(long)]
    save: bool,
    /// Tuning file for --save (default: this adapter's, as for `wick tune`).
    #[arg(long, requires = "save")]
    tune_file: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string_pretty(v).map_err(|e| Error::InvalidArgument(e.to_string()))
}

/// Three significant digits or so: H100 rates in the thousands, lavapipe's below one.
fn num(v: f64) -> String {
    match v.abs() {
        a if a >= 100.0 => format!("{v:.0}"),
        a if a >= 1.0 => format!("{v:.1}"),
        _ => format!("{v:.3}"),
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

pub fn run(a: KernelsArgs) -> Result<()> {
    let gpu = Gpu::with_options(GpuOptions {
        backend: a.backend.clone(),
        ..Default::default()
    })?;
    match a.cmd {
        KernelsCmd::List { json } => list(&gpu, json),
        KernelsCmd::Check { op, seed, json } => check(&gpu, op, seed, json),
        KernelsCmd::Bench(b) => bench(&gpu, b),
    }
}

fn list(gpu: &Gpu, json: bool) -> Result<()> {
    let l = catalog::list(&gpu.caps);
    if json {
        println!("{}", to_json(&l)?);
        return Ok(());
    }
    let s = &l.adapter;
    println!("{} ({}, {})", s.adapter, s.backend, s.driver_info);
    println!(
        "subgroups {} (sizes {}..{}), f16 {}, shader passthrough {}, cooperative matrices f16 {}, timestamps {} (inside passes {})\n",
        yes_no(s.subgroup),
        s.subgroup_min_size,
        s.subgroup_max_size,
        yes_no(s.shader_f16),
        yes_no(s.passthrough_shaders),
        yes_no(s.cooperative_matrix_f16),
        yes_no(s.timestamps),
        yes_no(s.timestamps_inside_passes),
    );
    println!("| op | variant | backend | source : entry | pipelines | here |\n| --- | --- | --- | --- | --- | --- |");
    for o in &l.ops {
        for v in &o.variants {
            let here = match (&v.reason, v.available) {
                (_, true) => "yes".to_string(),
                (Some(r), false) => format!("no: {r}"),
                (None, false) => "no".to_string(),
            };
            println!(
                "| {} | {:?} | {} | {} : {} | {} | {here} |",
                o.op,
                v.variant,
                v.backend.unwrap_or("any"),
                v.source,
                v.entry,
                if v.defines.is_empty() {
                    "all".to_string()
                } else {
                    v.defines.join(" ")
                },
            );
        }
    }
    if !l.native_coverage.is_empty() {
        println!("\nWhat the native variants cover (anything else runs the portable kernel):");
        for c in &l.native_coverage {
            println!("- {}: {}", c.family, c.covers);
        }
    }
    Ok(())
}

fn check(
    gpu: &std::sync::Arc<Gpu>,
    op: Option<String>,
    seed: Option<u64>,
    json: bool,
) -> Result<()> {
    let r = check::check(
        gpu,
        &CheckOptions {
            filter: op,
            seed,
            corrupt_reference: false,
        },
    )?;
    if json {
        println!("{}", to_json(&r)?);
    } else {
        println!("{} ({}), seed {}", r.adapter, r.backend, r.seed);
        println!("| op | variant | pipeline | shape | max rel err | tolerance | result |\n| --- | --- | --- | --- | ---: | ---: | --- |");
        for row in &r.rows {
            let result = match (&row.error, row.pass) {
                (Some(e), _) => format!("FAIL: {e}"),
                (None, true) => "pass".into(),
                (None, false) => "FAIL".into(),
            };
            println!(
                "| {} | {:?} | {} | {} | {:.2e} | {:.0e} | {result} |",
                row.op, row.variant, row.pipeline, row.shape, row.max_rel_err, row.tolerance
            );
        }
    }
    if r.rows.is_empty() {
        eprintln!("no op with a native variant matches; nothing checked");
    } else if !json {
        println!("{}", r.summary());
    }
    match r.failures() {
        0 => Ok(()),
        n => Err(Error::Gpu(format!(
            "{n} of {} kernel checks failed (seed {})",
            r.rows.len(),
            r.seed
        ))),
    }
}

fn parse_list(what: &str, s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            t.parse()
                .map_err(|_| Error::InvalidArgument(format!("--{what}: {t:?} is not a number")))
        })
        .collect()
}

fn bench(gpu: &std::sync::Arc<Gpu>, a: BenchArgs) -> Result<()> {
    let o = OpBenchOptions {
        filter: a.op,
        all: a.all,
        models: a.models.split(',').map(|m| m.trim().to_string()).collect(),
        kv_lens: parse_list("kv-lens", &a.kv_lens)?,
        gemm_rows: a.gemm_rows,
        reps: a.reps,
        warmup_secs: a.warmup,
        ..Default::default()
    };
    if !a.json {
        eprintln!(
            "timing portable vs native kernels on {} ({}) ...",
            gpu.caps.adapter_name, gpu.caps.backend
        );
    }
    let r = kernel_bench::run(gpu, &o)?;
    if a.json {
        println!("{}", to_json(&r)?);
    } else {
        println!(
            "{} ({}, {}), read ceiling {} GB/s (measured); timing: {:?}",
            r.adapter,
            r.backend,
            r.driver,
            num(r.read_ceiling_gb_s),
            r.timing
        );
        println!("| # | op | model | role | shape | variant | us | runs/sample | copies | GB/s | % ceiling | GFLOP/s | native speedup |\n| ---: | --- | --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
        for row in &r.rows {
            println!(
                "| {} | {} | {} | {} | {} | {:?} | {:.2} | {} | {} | {} | {:.1}% | {} | {} |",
                row.index,
                row.op,
                row.model,
                row.role,
                row.shape,
                row.variant,
                row.us,
                row.runs_per_sample,
                row.weight_copies,
                num(row.gb_s),
                row.ceiling_share * 100.0,
                num(row.gflop_s),
                row.speedup.map_or(String::new(), |s| format!("{s:.2}x"))
            );
        }
        if !r.winners.is_empty() {
            println!("\n| op | shapes | portable us (sum) | native us (sum) | auto picks |\n| --- | ---: | ---: | ---: | --- |");
            for w in &r.winners {
                println!(
                    "| {} | {} | {:.2} | {:.2} | {:?} |",
                    w.op, w.shapes, w.portable_us, w.native_us, w.winner
                );
            }
        }
        for s in &r.skipped {
            println!("skipped: {s}");
        }
        if r.rows.is_empty() {
            println!("nothing timed: no selected op (use --all for ops without a native variant)");
        }
    }
    if let Some(p) = &a.plot {
        kernel_bench::plot_svg(&r, p)?;
        eprintln!("wrote {}", p.display());
    }
    if a.save {
        let path = kernel_bench::save_winners(&gpu.caps, &r, a.tune_file.as_deref())?;
        eprintln!(
            "wrote {} ({} op winners); `--kernels auto` follows them",
            path.display(),
            r.winners.len()
        );
    }
    Ok(())
}
