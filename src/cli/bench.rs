//! `wick bench`: prefill and decode speed of a model file or a synthetic preset, with the
//! method of [`wick::bench`]; `wick bench compare BEFORE.json AFTER.json`;
//! `wick bench serve` (load on a running `wick serve`).

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use wick::engine::{Engine, EngineOptions};
use wick::formats::gguf::GgufFile;
use wick::formats::hf::HfCheckpoint;
use wick::kernels::KernelChoice;
use wick::model::synthetic::{Preset, SyntheticStore};
use wick::model::{source, LoadOptions, Model, ModelConfig};
use wick::runtime::SamplingParams;
use wick::tools::model_bench::{self as bench, BenchOptions, BenchReport};
use wick::tools::serve_bench::{self, ServeBenchOptions, DEFAULT_PROMPT};
use wick::tools::tune;
use wick::{Error, Result};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    cmd: Option<BenchCmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum BenchCmd {
    /// Per-row ratios AFTER / BEFORE of two `wick bench --json` outputs.
    Compare { before: PathBuf, after: PathBuf },
    /// Time one GEMV shape (random weights) for the default work split and, with --sweep,
    /// every (lanes per row, rows per group, workgroup size) the device accepts.
    Gemv(GemvArgs),
    /// Drive a running OpenAI-compatible server (`wick serve`) with concurrent streaming
    /// chat clients: output tokens/s, time to first token and inter-token latency per level.
    Serve(ServeBenchArgs),
}

#[derive(Args)]
struct ServeBenchArgs {
    /// The server's root URL (plain http).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Concurrent clients, one level after another (comma-separated).
    #[arg(short = 'c', long, default_value = "1,4,16,64")]
    concurrency: String,
    /// Requests per level (default: 4 per client).
    #[arg(long)]
    requests: Option<usize>,
    /// Tokens each request generates (sent with `ignore_eos`, so exactly this many).
    #[arg(short = 'n', long, default_value_t = 128)]
    max_tokens: usize,
    /// The user message of every request (default: a built-in story prompt).
    #[arg(short, long)]
    prompt: Option<String>,
    /// The `model` field of the requests (default: omitted, the server's model).
    #[arg(long)]
    model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    #[arg(long)]
    api_key: Option<String>,
    /// Seconds one request may take before it counts as an error.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct GemvArgs {
    /// Weight format (q4_0, q8_0, f16, q4_k, ...).
    #[arg(long, default_value = "q4_0")]
    format: String,
    /// Shapes as NxK, comma-separated (rows x row length).
    #[arg(long, default_value = "4096x4096,14336x4096,4096x14336")]
    shapes: String,
    /// Gate+up SwiGLU (two matrices) instead of a plain GEMV.
    #[arg(long)]
    swiglu: bool,
    /// The integer-dot GEMV on 8-bit quantised activations (formats with one) instead of the
    /// float-activation GEMV.
    #[arg(long)]
    dot: bool,
    /// Try every work split, not only the default.
    #[arg(long)]
    sweep: bool,
    /// Timed samples per variant (each a batch of dispatches; the median is reported).
    #[arg(short = 'r', long, default_value_t = 20)]
    reps: usize,
    /// Kernel variants: portable (WGSL), native (SPIR-V/MSL where the op has one), auto.
    #[arg(long, default_value = "auto")]
    kernels: String,
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct RunArgs {
    /// Model file or directory (default as for `wick run`). Excludes --synthetic.
    #[arg(short, long, conflicts_with = "synthetic")]
    model: Option<String>,
    /// Random weights with a real model's shapes: smollm2-135m, qwen2.5-0.5b, qwen3-0.6b,
    /// llama3.2-1b, llama3-8b.
    #[arg(long)]
    synthetic: Option<String>,
    /// Matrix type of a synthetic model (q4_0, q4_1, q8_0, q4_k, f16, ...) or mix (q4_k_m,
    /// q5_k_m), or that of a float checkpoint quantised on load.
    #[arg(long)]
    quant: Option<String>,
    /// Prompt tokens of the prefill test (0 skips it); several, comma-separated, are timed
    /// and profiled one by one on the one loaded model (`-p 512,4096`).
    #[arg(short = 'p', long, default_value = "512")]
    prompt: String,
    /// Generated tokens of the decode test (0 skips it).
    #[arg(short = 'n', long, default_value_t = 128)]
    gen: usize,
    /// Tokens of context cached before each test, as llama-bench's `-d`: prefill and decode
    /// are timed after this many tokens (e.g. `-d 4096` for attention at depth).
    #[arg(short = 'd', long, default_value_t = 0)]
    depth: usize,
    /// Timed runs per test.
    #[arg(short = 'r', long, default_value_t = 15)]
    reps: usize,
    /// Leading runs dropped from the statistics.
    #[arg(long, default_value_t = 2)]
    discard: usize,
    /// Seconds of GPU warm-up before timing.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Token counts N1,N2 of the two-length decode slope; `0` skips it.
    #[arg(long, default_value = "64,512")]
    slope: String,
    /// Skip the per-op timestamp profile.
    #[arg(long)]
    no_profile: bool,
    /// Kernel variants: portable, native, auto.
    #[arg(long, default_value = "auto")]
    kernels: String,
    /// KV-cache type: f16 or q8_0 (as for `wick run`).
    #[arg(long, default_value = "f16")]
    kv_type: String,
    /// Decode with sampling at this temperature (0: greedy argmax).
    #[arg(long, default_value_t = 0.0)]
    temp: f32,
    #[arg(long, default_value_t = 40)]
    top_k: usize,
    #[arg(long, default_value_t = 0.95)]
    top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    min_p: f32,
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Sample on the CPU from read-back logits instead of the GPU sampling chain.
    #[arg(long)]
    cpu_sampling: bool,
    /// Batched decode tests: that many sequences (2 to 8; comma-separated for several
    /// tests) decode -n tokens each together, reported as tokens/s of all of them
    /// (`tg128 x4`).
    #[arg(long)]
    parallel: Option<String>,
    /// Print JSON.
    #[arg(long, conflicts_with = "csv")]
    json: bool,
    /// Print CSV (one row per test).
    #[arg(long)]
    csv: bool,
}

fn parse_parallel(s: Option<&str>) -> Result<Vec<usize>> {
    let Some(s) = s else {
        return Ok(Vec::new());
    };
    s.split(',')
        .map(|v| match v.trim().parse::<usize>() {
            Ok(n) if (1..=wick::runtime::batch::MAX_SLOTS).contains(&n) => Ok(n),
            _ => Err(Error::InvalidArgument(format!(
                "--parallel {s:?}: expected comma-separated sequence counts, 1 to {}",
                wick::runtime::batch::MAX_SLOTS
            ))),
        })
        .collect()
}

fn parse_slope(s: &str) -> Result<Option<(usize, usize)>> {
    if s.trim() == "0" {
        return Ok(None);
    }
    let bad = || Error::InvalidArgument(format!("--slope {s:?}: expected N1,N2 or 0"));
    let (a, b) = s.split_once(',').ok_or_else(bad)?;
    Ok(Some((
        a.trim().parse().map_err(|_| bad())?,
        b.trim().parse().map_err(|_| bad())?,
    )))
}

pub fn run(args: BenchArgs) -> Result<()> {
    match args.cmd {
        Some(BenchCmd::Compare { before, after }) => compare(&before, &after),
        Some(BenchCmd::Gemv(g)) => bench_gemv(g),
        Some(BenchCmd::Serve(a)) => bench_serve(a),
        None => bench_model(args.run),
    }
}

fn bench_model(a: RunArgs) -> Result<()> {
    let kernels: KernelChoice = a.kernels.parse()?;
    let kv_type = super::common::parse_kv_type(&a.kv_type)?;
    let engine = Engine::with_options(EngineOptions {
        kernels,
        ..Default::default()
    })?;
    let opts = BenchOptions {
        prompts: bench::parse_prompt_lengths(&a.prompt)?,
        gen: a.gen,
        depth: a.depth,
        reps: a.reps,
        discard: a.discard,
        warmup_secs: a.warmup,
        slope: parse_slope(&a.slope)?,
        profile: !a.no_profile,
        sampling: SamplingParams {
            temperature: a.temp,
            top_k: a.top_k,
            top_p: a.top_p,
            min_p: a.min_p,
            repeat_penalty: a.repeat_penalty,
            ..Default::default()
        },
        sample_on_cpu: a.cpu_sampling,
        parallel: parse_parallel(a.parallel.as_deref())?,
        ..Default::default()
    };
    let quant = a
        .quant
        .as_deref()
        .map(str::parse::<wick::model::QuantTarget>)
        .transpose()?;
    let ctx = Some(opts.context());
    let (model, label, quant_name) = match &a.synthetic {
        Some(name) => {
            let preset = Preset::by_name(name)?;
            opts.check_context(
                preset.context_len,
                &format!("{}'s context length is", preset.name),
            )?;
            let q = quant.unwrap_or(wick::quant::GgmlType::Q4_0.into());
            eprintln!("generating synthetic {} ({}) ...", preset.name, q.name());
            let store = SyntheticStore::new(&preset, q, 0x5EED)?;
            let cfg = store.config().clone();
            let model = Model::from_store(
                &engine,
                preset.name,
                cfg,
                &store,
                LoadOptions {
                    ctx,
                    quantize: None,
                    kv_type,
                    ..Default::default()
                },
            )?;
            (model, preset.name.to_string(), q.name())
        }
        None => {
            let path = source::resolve(a.model.as_deref())?;
            // Checked before the weights load, naming the test that does not fit.
            opts.check_context(context_length(&path)?, "the model's context length is")?;
            let model = Model::load(
                &engine,
                &path,
                LoadOptions {
                    ctx,
                    quantize: quant,
                    kv_type,
                    progress: super::common::load_progress_bar(false),
                },
            )?;
            let label = path
                .file_name()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let q = quant.map_or_else(|| "file".to_string(), |q| q.name());
            (model, label, q)
        }
    };
    eprintln!(
        "benchmarking {label} on {} ({}) ...",
        engine.gpu().caps.adapter_name,
        engine.gpu().caps.backend
    );
    let r = bench::run(&model, &label, &quant_name, &opts)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Error::InvalidArgument(e.to_string()))?
        );
    } else if a.csv {
        print_csv(&r);
    } else {
        print_table(&r);
    }
    Ok(())
}

fn bench_serve(a: ServeBenchArgs) -> Result<()> {
    let concurrency = a
        .concurrency
        .split(',')
        .map(|c| {
            c.trim().parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "--concurrency {:?}: expected comma-separated client counts",
                    a.concurrency
                ))
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let opts = ServeBenchOptions {
        url: a.url,
        concurrency,
        requests: a.requests,
        max_tokens: a.max_tokens,
        prompt: a.prompt.unwrap_or_else(|| DEFAULT_PROMPT.to_string()),
        model: a.model,
        api_key: a.api_key,
        timeout: std::time::Duration::from_secs(a.timeout.max(1)),
    };
    if !a.json {
        eprintln!(
            "benchmarking {} at concurrency {:?}, {} tokens per request ...",
            opts.url, opts.concurrency, opts.max_tokens
        );
    }
    let r = serve_bench::run(&opts)?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&r).map_err(|e| Error::InvalidArgument(e.to_string()))?
        );
        return Ok(());
    }
    println!(
        "{:>11} {:>8} {:>6} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "concurrency",
        "requests",
        "errors",
        "out tok/s",
        "TTFT p50",
        "TTFT p99",
        "ITL p50",
        "ITL p99"
    );
    for l in &r.levels {
        println!(
            "{:>11} {:>8} {:>6} {:>10.1} {:>8.1}ms {:>8.1}ms {:>7.1}ms {:>7.1}ms",
            l.concurrency,
            l.requests,
            l.errors,
            l.output_tok_s,
            l.ttft_ms.p50,
            l.ttft_ms.p99,
            l.itl_ms.p50,
            l.itl_ms.p99
        );
    }
    for l in &r.levels {
        if let Some(e) = &l.first_error {
            eprintln!("concurrency {}: first error: {e}", l.concurrency);
        }
    }
    Ok(())
}

/// The context length a model file or directory declares, read without loading weights.
fn context_length(path: &Path) -> Result<usize> {
    let cfg = if path.is_dir() {
        ModelConfig::from_hf(&HfCheckpoint::open(path)?.config)?
    } else {
        ModelConfig::from_gguf(&GgufFile::open(path)?)?
    };
    Ok(cfg.context_len)
}

/// A test's name as llama-bench writes it (`pp512`, `tg128 @ d4096`).
fn test_name(kind: &str, tokens: usize, depth: usize) -> String {
    match depth {
        0 => format!("{kind}{tokens}"),
        d => format!("{kind}{tokens} @ d{d}"),
    }
}

/// One row per test: a prefill row per prompt length, then decode.
fn rows(r: &BenchReport) -> Vec<(String, &bench::Measurement)> {
    let mut v: Vec<_> = r
        .prefill_by_length
        .iter()
        .map(|t| (test_name("pp", t.prompt_tokens, r.depth), &t.measurement))
        .collect();
    if let Some(m) = &r.decode {
        v.push((test_name("tg", r.gen_tokens, r.depth), m));
    }
    for b in &r.batched {
        let name = format!(
            "{} x{}",
            test_name("tg", b.gen_tokens, r.depth),
            b.sequences
        );
        v.push((name, &b.measurement));
    }
    v
}

fn print_csv(r: &BenchReport) {
    println!("model,quant,kv_type,adapter,backend,test,tok_s,ci95,spread_pct,runs,dispatches_per_token,submits_per_token,read_ceiling_gb_s,decode_roofline_share,decode_slope_tok_s");
    for (test, m) in rows(r) {
        println!(
            "{},{},{},\"{}\",{},{},{:.2},{:.2},{:.2},{},{:.1},{:.2},{:.1},{:.4},{}",
            r.model,
            r.quant,
            r.kv_type,
            r.adapter,
            r.backend,
            test,
            m.mean,
            m.ci95,
            m.spread_pct,
            m.runs.len() - m.discarded,
            r.dispatches_per_token,
            r.submits_per_token,
            r.read_ceiling_gb_s,
            r.decode_roofline_share,
            r.decode_slope_tok_s
                .map_or(String::new(), |v| format!("{v:.2}"))
        );
    }
}

fn print_table(r: &BenchReport) {
    println!(
        "| model | quant | backend | test | tok/s | ±95% | spread | runs |\n| --- | --- | --- | --- | ---: | ---: | ---: | ---: |"
    );
    for (test, m) in rows(r) {
        println!(
            "| {} | {} | {} | {} | {:.2} | {:.2} | {:.1}% | {} |",
            r.model,
            r.quant,
            r.backend,
            test,
            m.mean,
            m.ci95,
            m.spread_pct,
            m.runs.len() - m.discarded
        );
    }
    println!();
    println!("adapter: {} ({})", r.adapter, r.backend);
    println!("KV cache: {}", r.kv_type);
    if let Some(p) = r.sampler {
        println!("decode token choice: {p:?}");
    }
    if let (Some(v), Some((a, b))) = (r.decode_slope_tok_s, r.slope_lengths) {
        println!("decode by slope (tg{b} - tg{a}): {v:.2} tok/s");
    }
    println!(
        "per token: {:.1} dispatches, {:.2} submits; {:.1} MB read (weights {:.1} MB + KV)",
        r.dispatches_per_token,
        r.submits_per_token,
        r.decode_bytes_per_token as f64 / 1e6,
        r.weight_bytes as f64 / 1e6
    );
    println!(
        "read ceiling {:.1} GB/s (measured); decode {:.1} GB/s = {:.1}% of it",
        r.read_ceiling_gb_s,
        r.decode_gb_s,
        r.decode_roofline_share * 100.0
    );
    for b in &r.batched {
        println!(
            "batched decode x{}: {:.2} tok/s per sequence, {:.1} dispatches per step",
            b.sequences,
            b.tok_s / b.sequences as f64,
            b.dispatches_per_step
        );
    }
    if let Some(step) = r.profile_step_us {
        println!("\ndecode step GPU time {step:.1} us (pass timestamps); per op (timestamps around each dispatch):");
        print_op_table("token", &r.profile);
    }
    for t in r.prefill_by_length.iter().filter(|t| !t.profile.is_empty()) {
        let total: f64 = t.profile.iter().map(|p| p.us_per_token).sum();
        println!(
            "\n{}: prefill of {} tokens, {total:.1} us in dispatches (LM head aside); per op:",
            test_name("pp", t.prompt_tokens, r.depth),
            t.prompt_tokens
        );
        print_op_table("prefill", &t.profile);
    }
}

/// A per-op profile as a markdown table; `per` names what the counts and times are per.
fn print_op_table(per: &str, rows: &[bench::OpTime]) {
    println!("| op | calls/{per} | us/{per} | share |\n| --- | ---: | ---: | ---: |");
    for p in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1}% |",
            p.op,
            p.calls_per_token,
            p.us_per_token,
            p.share * 100.0
        );
    }
}

fn read_report(path: &PathBuf) -> Result<BenchReport> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| {
        Error::InvalidArgument(format!(
            "{}: not a `wick bench --json` report: {e}",
            path.display()
        ))
    })
}

fn compare(before: &PathBuf, after: &PathBuf) -> Result<()> {
    let (b, a) = (read_report(before)?, read_report(after)?);
    println!("{} ({}) -> {} ({})", b.model, b.quant, a.model, a.quant);
    let (lb, la) = (b.prompt_lengths(), a.prompt_lengths());
    if lb != la {
        let list = |l: &[usize]| match l {
            [] => "none".to_string(),
            l => l.iter().map(usize::to_string).collect::<Vec<_>>().join(","),
        };
        println!(
            "note: the runs differ in prompt lengths ({} before, {} after); prefill rows compare the lengths both have",
            list(&lb),
            list(&la)
        );
    }
    for (what, vb, va) in [
        ("generated tokens", b.gen_tokens, a.gen_tokens),
        ("depth", b.depth, a.depth),
    ] {
        if vb != va {
            println!("note: the runs differ in {what} ({vb} before, {va} after)");
        }
    }
    if b.kv_type != a.kv_type {
        println!(
            "note: the runs differ in KV-cache type ({} before, {} after)",
            b.kv_type, a.kv_type
        );
    }
    println!("| metric | before | after | after/before |\n| --- | ---: | ---: | ---: |");
    let after_rows = bench::comparable(&a);
    for (name, vb) in bench::comparable(&b) {
        let Some((_, va)) = after_rows.iter().find(|(n, _)| *n == name) else {
            continue;
        };
        let ratio = if vb != 0.0 {
            format!("{:.3}", va / vb)
        } else {
            "-".into()
        };
        println!("| {name} | {vb:.3} | {va:.3} | {ratio} |");
    }
    Ok(())
}

fn bench_gemv(a: GemvArgs) -> Result<()> {
    let engine = Engine::with_options(EngineOptions {
        kernels: a.kernels.parse()?,
        ..Default::default()
    })?;
    let k = engine.kernels();
    let caps = &engine.gpu().caps;
    let format: wick::quant::WeightFormat = a.format.parse()?;
    let ceiling = wick::tools::bandwidth::read_ceiling(k, 1 << 30, 10)? / 1e9;
    let configs = if a.sweep {
        tune::gemv_split_candidates(caps, a.swiglu)
    } else {
        Vec::new()
    };
    let mut rows = Vec::new();
    for shape in a.shapes.split(',') {
        let bad = || Error::InvalidArgument(format!("shape {shape:?}: expected NxK"));
        let (n, kd) = shape.trim().split_once('x').ok_or_else(bad)?;
        let (n, kd): (usize, usize) = (
            n.parse().map_err(|_| bad())?,
            kd.parse().map_err(|_| bad())?,
        );
        let shape = tune::SweepShape {
            format,
            n,
            k: kd,
            swiglu: a.swiglu,
            dot: a.dot,
        };
        let mut r = tune::gemv_sweep(k, &shape, &configs, a.reps, ceiling)?;
        r.sort_by(|x, y| x.us.total_cmp(&y.us));
        rows.extend(r);
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).unwrap_or_default()
        );
        return Ok(());
    }
    println!(
        "{} ({}), read ceiling {ceiling:.1} GB/s",
        caps.adapter_name, caps.backend
    );
    println!("| format | n x k | op | variant | lpr | rpg | wg | us | runs/sample | copies | GB/s | % ceiling | |\n| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
    for r in rows {
        println!(
            "| {} | {}x{} | {} | {:?} | {} | {} | {} | {:.2} | {} | {} | {:.1} | {:.1}% | {} |",
            r.format,
            r.n,
            r.k,
            tune::SweepShape {
                format,
                n: r.n,
                k: r.k,
                swiglu: r.swiglu,
                dot: r.dot,
            }
            .op(),
            r.variant,
            r.lanes_per_row,
            r.rows_per_group,
            r.workgroup_size,
            r.us,
            r.runs_per_sample,
            r.weight_copies,
            r.gb_s,
            r.ceiling_share * 100.0,
            if r.default { "default" } else { "" }
        );
    }
    Ok(())
}
