//! The benchmark behind `wick bench` (modelled on llama.cpp's llama-bench, stricter about
//! method):
//! - warm-up: at least `warmup_secs` of GPU work before anything is timed (GPU clocks ramp
//!   up under load: the H100 idles at 345 MHz);
//! - `reps` timed runs per test, the first `discard` dropped, then a 10%-trimmed mean, the
//!   spread ((max - min) / median of the kept runs) and a 95% confidence interval;
//! - decode rate also by the two-length slope: (N2 - N1) / (t(N2) - t(N1)), which cancels
//!   prefill, start-up and the pipeline's fill and drain;
//! - the device's read ceiling, measured here by a WGSL streaming-read kernel, and decode
//!   bandwidth (weights + KV cache read per token) as a share of it;
//! - a separate profiling run with a timestamp around every dispatch, summed per op: of a
//!   decode step, and of the whole prefill of each prompt length.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::runtime::{BatchEvent, GenerateParams, KvType, Picker, SamplingParams, Session};

/// What to run.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Prompt lengths of the prefill tests, each timed and profiled on its own, in this order
    /// (empty: no prefill test). See [`parse_prompt_lengths`].
    pub prompts: Vec<usize>,
    /// Generated tokens for the decode test (0: no decode test).
    pub gen: usize,
    /// Tokens of context already in the cache when each test starts (llama-bench's `-d`):
    /// prefill is timed for each prompt length after them, decode for `gen` tokens after them.
    pub depth: usize,
    pub reps: usize,
    /// Leading runs dropped from the statistics.
    pub discard: usize,
    pub warmup_secs: f64,
    /// (N1, N2) of the slope method; None skips it.
    pub slope: Option<(usize, usize)>,
    /// Per-op GPU time from timestamps (a separate run).
    pub profile: bool,
    /// Bytes read by the ceiling kernel (capped by the binding limit).
    pub ceiling_bytes: u64,
    /// How decode picks tokens (greedy by default; sampled settings run the GPU sampling
    /// chain, or the CPU sampler with `sample_on_cpu`).
    pub sampling: SamplingParams,
    pub sample_on_cpu: bool,
    /// Sequence counts of the batched decode tests (`--parallel 4,8`): that many sequences
    /// decode `gen` tokens each together ([`crate::runtime::Batch`]); empty: none.
    pub parallel: Vec<usize>,
}

impl BenchOptions {
    /// The context length the tests need: the depth plus the longest test.
    pub fn context(&self) -> usize {
        let longest = [
            self.prompts.iter().copied().max().unwrap_or(0),
            self.gen + 1,
            self.slope.map_or(0, |(_, n2)| n2 + 1),
            64,
        ]
        .into_iter()
        .max()
        .unwrap_or(1);
        self.depth + longest
    }

    /// Refuses prompt lengths that are 0 or given twice, and tests that do not fit a context
    /// of `ctx` tokens; `whose_ctx` says whose context that is, as the message ends with
    /// "{whose_ctx} {ctx}".
    pub fn check_context(&self, ctx: usize, whose_ctx: &str) -> Result<()> {
        check_prompt_lengths(&self.prompts)?;
        let at = match self.depth {
            0 => String::new(),
            d => format!(" at depth {d}"),
        };
        for &n in &self.prompts {
            let need = self.depth + n;
            if need > ctx {
                return Err(Error::InvalidArgument(format!(
                    "-p {n}{at}: the prefill test needs a context of {need} tokens; {whose_ctx} {ctx}"
                )));
            }
        }
        let need = self.context();
        if need > ctx {
            return Err(Error::InvalidArgument(format!(
                "the benchmark needs a context of {need} tokens; {whose_ctx} {ctx}"
            )));
        }
        Ok(())
    }
}

/// The prompt lengths of `wick bench -p`: one count (`0` skips the prefill test: no length)
/// or several, comma-separated (`512,4096`), each above 0 and none twice.
pub fn parse_prompt_lengths(s: &str) -> Result<Vec<usize>> {
    let lengths = s
        .split(',')
        .map(|v| {
            v.trim().parse::<usize>().map_err(|_| {
                Error::InvalidArgument(format!(
                    "-p {s}: {:?} is not a token count (give N or N1,N2,...)",
                    v.trim()
                ))
            })
        })
        .collect::<Result<Vec<usize>>>()?;
    if lengths == [0] {
        return Ok(Vec::new());
    }
    check_prompt_lengths(&lengths).map_err(|e| match e {
        Error::InvalidArgument(m) => Error::InvalidArgument(format!("-p {s}: {m}")),
        e => e,
    })?;
    Ok(lengths)
}

/// Every prompt length must be above 0 (no length at all skips prefill) and given once (a
/// repeat would be timed twice under one name).
fn check_prompt_lengths(lengths: &[usize]) -> Result<()> {
    if lengths.contains(&0) {
        return Err(Error::InvalidArgument(
            "prompt lengths must be above 0 (-p 0 alone skips the prefill test)".into(),
        ));
    }
    for (i, n) in lengths.iter().enumerate() {
        if lengths[..i].contains(n) {
            return Err(Error::InvalidArgument(format!(
                "prompt length {n} is given twice"
            )));
        }
    }
    Ok(())
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            prompts: vec![512],
            gen: 128,
            depth: 0,
            reps: 15,
            discard: 2,
            warmup_secs: 2.0,
            slope: Some((64, 512)),
            profile: true,
            ceiling_bytes: 1 << 30,
            sampling: SamplingParams::default(),
            sample_on_cpu: false,
            parallel: Vec::new(),
        }
    }
}

/// Statistics of one test's runs, in tokens per second.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    /// 10%-trimmed mean of the kept runs.
    pub mean: f64,
    /// (max - min) / median of the kept runs, in percent.
    pub spread_pct: f64,
    /// Half-width of the 95% confidence interval of the mean.
    pub ci95: f64,
    /// Every run's rate, in order, the discarded ones included.
    pub runs: Vec<f64>,
    pub discarded: usize,
}

/// Two-sided 95% Student t quantile for `df` degrees of freedom.
fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

impl Measurement {
    pub fn from_runs(runs: Vec<f64>, discard: usize) -> Measurement {
        let discarded = discard.min(runs.len().saturating_sub(1));
        let mut kept: Vec<f64> = runs[discarded..].to_vec();
        kept.sort_by(f64::total_cmp);
        let n = kept.len();
        let trim = n / 10;
        let core = &kept[trim..n - trim];
        let mean = core.iter().sum::<f64>() / core.len() as f64;
        let median = kept[n / 2];
        let spread_pct = if median > 0.0 {
            (kept[n - 1] - kept[0]) / median * 100.0
        } else {
            0.0
        };
        let all_mean = kept.iter().sum::<f64>() / n as f64;
        let ci95 = if n > 1 {
            let var = kept.iter().map(|x| (x - all_mean).powi(2)).sum::<f64>() / (n - 1) as f64;
            t95(n - 1) * (var / n as f64).sqrt()
        } else {
            0.0
        };
        Measurement {
            mean,
            spread_pct,
            ci95,
            runs,
            discarded,
        }
    }
}

/// GPU time of one op per decoded token, from the profiling run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpTime {
    pub op: String,
    pub calls_per_token: f64,
    pub us_per_token: f64,
    /// Share of the summed per-dispatch time.
    pub share: f64,
}

/// One prefill test: the timed runs of one prompt length and, with profiling, its split by op.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PrefillTest {
    pub prompt_tokens: usize,
    /// The trimmed mean rate in tokens per second (`measurement.mean`).
    pub tok_s: f64,
    /// The runs' statistics (spread, confidence interval, every run).
    pub measurement: Measurement,
    /// GPU time per op of one whole prefill of `prompt_tokens` after the depth, every chunk
    /// (`calls_per_token` and `us_per_token` are per prefill here), the LM head excluded;
    /// empty without a profile.
    #[serde(default)]
    pub profile: Vec<OpTime>,
}

/// One batched decode test: `sequences` sequences decoding `gen_tokens` each together.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchedTest {
    pub sequences: usize,
    pub gen_tokens: usize,
    /// Tokens per second of all sequences together, timed from the step where the last
    /// prompt finished prefilling to the end (the trimmed mean: `measurement.mean`).
    pub tok_s: f64,
    pub measurement: Measurement,
    pub dispatches_per_step: f64,
}

/// Everything `wick bench` reports for one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub quant: String,
    /// How the KV cache stored keys and values (reports from before the option: f16).
    #[serde(default)]
    pub kv_type: KvType,
    /// How decode picked tokens (greedy, GPU sampling chain, CPU sampler).
    #[serde(default)]
    pub sampler: Option<Picker>,
    pub adapter: String,
    pub backend: String,
    /// The first prompt length (0 without a prefill test); `prefill_tok_s`, `prefill` and
    /// `prefill_profile` are its, as in reports from before several lengths.
    pub prompt_tokens: usize,
    pub gen_tokens: usize,
    /// Context tokens cached before each test (`--depth`).
    #[serde(default)]
    pub depth: usize,
    pub prefill_tok_s: f64,
    pub prefill: Option<Measurement>,
    /// Every prefill test, one per prompt length in the order given (`-p 512,4096`); empty in
    /// reports from before several lengths.
    #[serde(default)]
    pub prefill_by_length: Vec<PrefillTest>,
    pub decode_tok_s: f64,
    pub decode: Option<Measurement>,
    /// Decode rate by the two-length slope method, with its (N1, N2).
    pub decode_slope_tok_s: Option<f64>,
    pub slope_lengths: Option<(usize, usize)>,
    pub dispatches_per_token: f64,
    pub submits_per_token: f64,
    /// Bytes the GPU reads per decoded token: every weight once plus the KV cache (of
    /// `kv_type`) at the decode test's mean position.
    pub decode_bytes_per_token: u64,
    pub weight_bytes: u64,
    pub read_ceiling_gb_s: f64,
    pub decode_gb_s: f64,
    pub decode_roofline_share: f64,
    /// GPU time of a whole decode step (pass timestamps), microseconds.
    pub profile_step_us: Option<f64>,
    pub profile: Vec<OpTime>,
    /// The first prompt length's profile ([`PrefillTest::profile`], per prefill) and the
    /// tokens it covers (0 without a profile). Reports from before several lengths profiled
    /// one full prefill chunk at the start of the cache here and gave its size.
    #[serde(default)]
    pub prefill_profile: Vec<OpTime>,
    #[serde(default)]
    pub prefill_chunk: usize,
    /// The batched decode tests (`--parallel`), in the order given.
    #[serde(default)]
    pub batched: Vec<BatchedTest>,
}

impl BenchReport {
    /// The prompt lengths of the prefill tests, a report from before several lengths
    /// included.
    pub fn prompt_lengths(&self) -> Vec<usize> {
        match (&self.prefill_by_length[..], &self.prefill) {
            ([], Some(_)) => vec![self.prompt_tokens],
            (tests, _) => tests.iter().map(|t| t.prompt_tokens).collect(),
        }
    }
}

/// Per-op totals of profiled dispatches over `steps` repetitions, largest first.
fn op_times(samples: &[crate::gpu::ProfileSample], steps: usize) -> Vec<OpTime> {
    let mut by_op: BTreeMap<String, (usize, f64)> = BTreeMap::new();
    for smp in samples {
        let e = by_op.entry(smp.label.clone()).or_default();
        e.0 += 1;
        e.1 += smp.nanos;
    }
    let sum: f64 = by_op.values().map(|v| v.1).sum();
    let mut v: Vec<OpTime> = by_op
        .into_iter()
        .map(|(op, (calls, ns))| OpTime {
            op,
            calls_per_token: calls as f64 / steps as f64,
            us_per_token: ns / steps as f64 / 1e3,
            share: if sum > 0.0 { ns / sum } else { 0.0 },
        })
        .collect();
    v.sort_by(|a, b| b.us_per_token.total_cmp(&a.us_per_token));
    v
}

/// A fresh pseudo-random prompt of `n` ids below `vocab` (content does not change speed).
fn prompt_ids(n: usize, vocab: usize, salt: u64) -> Vec<u32> {
    let mut s = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % vocab as u64) as u32
        })
        .collect()
}

/// Decodes `n` tokens after a prompt of `o.depth + 1` tokens (its first `o.depth` the same
/// every run, so only the last is prefilled again); returns the decode seconds and the
/// session's dispatch/submit counts per token.
fn decode_run(s: &mut Session, o: &BenchOptions, n: usize, salt: u64) -> Result<(f64, f64, f64)> {
    let (secs, d, sub, _) = decode_run_picker(s, o, n, salt)?;
    Ok((secs, d, sub))
}

/// [`decode_run`], also saying how tokens were picked.
fn decode_run_picker(
    s: &mut Session,
    o: &BenchOptions,
    n: usize,
    salt: u64,
) -> Result<(f64, f64, f64, Option<Picker>)> {
    let vocab = s.model().config().vocab;
    let params = GenerateParams {
        max_tokens: n,
        ignore_eos: true,
        sampling: SamplingParams {
            seed: salt,
            ..o.sampling.clone()
        },
        sample_on_cpu: o.sample_on_cpu,
        ..Default::default()
    };
    let mut prompt = depth_prefix(o.depth, vocab);
    prompt.extend(prompt_ids(1, vocab, salt));
    if o.depth == 0 {
        s.reset();
    }
    // `generate` prefills (reusing the cached depth prefix) and waits before returning.
    let mut g = s.generate(&prompt, params)?;
    let t0 = Instant::now();
    let mut count = 0;
    for t in g.by_ref() {
        t?;
        count += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    if count != n {
        return Err(Error::Gpu(format!("decode produced {count} of {n} tokens")));
    }
    let st = g.stats();
    Ok((
        secs,
        st.dispatches_per_token(),
        st.submits_per_token(),
        st.sampler,
    ))
}

/// The context every test at depth `depth` starts from (the same tokens each time, so a
/// session keeps it cached between runs).
fn depth_prefix(depth: usize, vocab: usize) -> Vec<u32> {
    prompt_ids(depth, vocab, 0xDE97)
}

/// Seconds to prefill `n` fresh tokens after the depth prefix of `o` (prefilled before the
/// clock starts, or still cached from the previous run).
fn prefill_run(s: &mut Session, o: &BenchOptions, n: usize, salt: u64) -> Result<f64> {
    let vocab = s.model().config().vocab;
    let mut ids = depth_prefix(o.depth, vocab);
    if o.depth == 0 {
        s.reset();
    } else {
        s.prefill(&ids)?;
    }
    ids.extend(prompt_ids(n, vocab, salt));
    let t0 = Instant::now();
    s.prefill(&ids)?;
    Ok(t0.elapsed().as_secs_f64())
}

/// `n` sequences of `o.gen` tokens each decoded together, `o.reps` times: the rate of all of
/// them from the step at which every prompt (8 tokens, after `o.depth` shared ones) is
/// prefilled to the end.
fn batched_decode(model: &Model, o: &BenchOptions, n: usize) -> Result<BatchedTest> {
    use crate::runtime::{Batch, BatchOptions};
    if o.gen == 0 {
        return Err(Error::InvalidArgument(
            "--parallel needs a decode test (-n above 0)".into(),
        ));
    }
    let vocab = model.config().vocab;
    let mut batch = Batch::new(model, BatchOptions::new(n, o.context()))?;
    let params = GenerateParams {
        max_tokens: o.gen,
        sampling: o.sampling.clone(),
        ignore_eos: true,
        ..Default::default()
    };
    let mut runs = Vec::with_capacity(o.reps);
    let (steps0, dispatches0) = (batch.steps_run, batch.dispatches_run);
    for rep in 0..o.reps {
        for i in 0..n {
            let mut prompt = depth_prefix(o.depth, vocab);
            prompt.extend(prompt_ids(8, vocab, 4000 + (rep * n + i) as u64));
            batch.add(&prompt, params.clone())?;
        }
        let mut t0 = None;
        let mut tokens = 0;
        while !batch.is_idle() {
            if t0.is_none() && batch.prefilling() == 0 {
                t0 = Some(Instant::now());
            }
            for ev in batch.step()? {
                match ev {
                    BatchEvent::Token { .. } if t0.is_some() => tokens += 1,
                    BatchEvent::Failed { error, .. } => return Err(error),
                    _ => {}
                }
            }
        }
        let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
        runs.push(if secs > 0.0 {
            tokens as f64 / secs
        } else {
            0.0
        });
    }
    let measurement = Measurement::from_runs(runs, o.discard);
    let steps = (batch.steps_run - steps0).max(1);
    Ok(BatchedTest {
        sequences: n,
        gen_tokens: o.gen,
        tok_s: measurement.mean,
        measurement,
        dispatches_per_step: (batch.dispatches_run - dispatches0) as f64 / steps as f64,
    })
}

/// Runs the benchmark on `model`; `label` and `quant` name it in the report.
pub fn run(model: &Model, label: &str, quant: &str, o: &BenchOptions) -> Result<BenchReport> {
    if o.reps == 0 {
        return Err(Error::InvalidArgument("-r must be at least 1".into()));
    }
    let cfg = model.config().clone();
    o.check_context(model.context(), "the model was loaded with")?;
    let need_ctx = o.context();
    let mut s = Session::with_context(model, need_ctx)?;
    let gpu = model.engine().gpu().clone();

    // Warm-up: real decode work until the GPU has been busy long enough.
    let t0 = Instant::now();
    let mut salt = 1;
    while t0.elapsed().as_secs_f64() < o.warmup_secs {
        decode_run(&mut s, o, 32.min(need_ctx - 1 - o.depth), salt)?;
        salt += 1;
    }

    let mut prefills = Vec::with_capacity(o.prompts.len());
    for (li, &n) in o.prompts.iter().enumerate() {
        // A fresh prompt for every run of every length (the first length's as before).
        let salts = 1000 + (li * o.reps) as u64;
        let runs = (0..o.reps)
            .map(|i| prefill_run(&mut s, o, n, salts + i as u64).map(|t| n as f64 / t))
            .collect::<Result<Vec<f64>>>()?;
        let measurement = Measurement::from_runs(runs, o.discard);
        prefills.push(PrefillTest {
            prompt_tokens: n,
            tok_s: measurement.mean,
            measurement,
            profile: Vec::new(),
        });
    }
    let (mut dispatches, mut submits, mut sampler) = (0.0, 0.0, None);
    let mut decode = None;
    if o.gen > 0 {
        let mut runs = Vec::with_capacity(o.reps);
        for i in 0..o.reps {
            let (secs, d, sub, p) = decode_run_picker(&mut s, o, o.gen, 2000 + i as u64)?;
            runs.push(o.gen as f64 / secs);
            (dispatches, submits, sampler) = (d, sub, p);
        }
        decode = Some(Measurement::from_runs(runs, o.discard));
    }
    let mut decode_slope = None;
    if let Some((n1, n2)) = o.slope {
        if n2 <= n1 || n1 == 0 {
            return Err(Error::InvalidArgument(format!(
                "slope lengths {n1},{n2}: need 0 < N1 < N2"
            )));
        }
        let reps = o.reps.clamp(1, 5);
        let time = |s: &mut Session, n: usize| -> Result<f64> {
            let mut t: Vec<f64> = (0..reps)
                .map(|i| decode_run(s, o, n, 3000 + i as u64).map(|r| r.0))
                .collect::<Result<_>>()?;
            t.sort_by(f64::total_cmp);
            Ok(t[t.len() / 2])
        };
        let (t1, t2) = (time(&mut s, n1)?, time(&mut s, n2)?);
        if t2 > t1 {
            decode_slope = Some((n2 - n1) as f64 / (t2 - t1));
        }
    }

    let k = model.engine().kernels();
    let read_ceiling = super::bandwidth::read_ceiling(k, o.ceiling_bytes, 10)?;
    let weight_bytes = model.weight_bytes();
    let mean_pos = (o.depth + o.gen / 2 + 1) as u64;
    let kv_type = s.kv_type();
    let kv_row = cfg.n_kv_heads as u64 * kv_type.row_bytes(cfg.head_dim);
    let kv_bytes = 2 * cfg.n_layers as u64 * kv_row * mean_pos;
    let bytes_per_token = weight_bytes + kv_bytes;
    let decode_tok_s = decode.as_ref().map_or(0.0, |m| m.mean);
    let decode_gb_s = bytes_per_token as f64 * decode_tok_s / 1e9;

    let (mut profile, mut profile_step_us) = (Vec::new(), None);
    if o.profile && crate::gpu::GpuProfiler::inside_passes(&gpu) {
        let steps = 8.min(need_ctx - 1);
        let mut prompt = depth_prefix(o.depth, cfg.vocab);
        prompt.extend(prompt_ids(1, cfg.vocab, 9));
        s.reset();
        s.prefill(&prompt)?;
        let sampling = (!o.sample_on_cpu).then_some(&o.sampling);
        let (samples, total_ns) = super::profile::profile_decode(&mut s, steps, sampling)?;
        profile = op_times(&samples, steps);
        profile_step_us = Some(total_ns / steps as f64 / 1e3);
        let prefix = depth_prefix(o.depth, cfg.vocab);
        for (li, t) in prefills.iter_mut().enumerate() {
            if !prefix.is_empty() {
                s.prefill(&prefix)?;
            }
            let ids = prompt_ids(t.prompt_tokens, cfg.vocab, 10 + li as u64);
            t.profile = op_times(&super::profile::profile_prefill(&mut s, &ids)?, 1);
        }
    }
    let mut batched = Vec::with_capacity(o.parallel.len());
    for &n in &o.parallel {
        batched.push(batched_decode(model, o, n)?);
    }
    let first = prefills.first();
    let caps = &gpu.caps;
    Ok(BenchReport {
        batched,
        model: label.to_string(),
        quant: quant.to_string(),
        kv_type,
        sampler,
        adapter: caps.adapter_name.clone(),
        backend: caps.backend.to_string(),
        prompt_tokens: first.map_or(0, |t| t.prompt_tokens),
        gen_tokens: o.gen,
        depth: o.depth,
        prefill_tok_s: first.map_or(0.0, |t| t.tok_s),
        prefill: first.map(|t| t.measurement.clone()),
        prefill_profile: first.map(|t| t.profile.clone()).unwrap_or_default(),
        prefill_chunk: first
            .filter(|t| !t.profile.is_empty())
            .map_or(0, |t| t.prompt_tokens),
        prefill_by_length: prefills,
        decode_tok_s,
        decode,
        decode_slope_tok_s: decode_slope,
        slope_lengths: o.slope,
        dispatches_per_token: dispatches,
        submits_per_token: submits,
        decode_bytes_per_token: bytes_per_token,
        weight_bytes,
        read_ceiling_gb_s: read_ceiling / 1e9,
        decode_gb_s,
        decode_roofline_share: if read_ceiling > 0.0 {
            decode_gb_s * 1e9 / read_ceiling
        } else {
            0.0
        },
        profile_step_us,
        profile,
    })
}

/// Numeric fields compared by `wick bench compare`, with their names. Prefill rows are named
/// by prompt length (`prefill_tok_s@512`), so that only the same lengths line up.
pub fn comparable(r: &BenchReport) -> Vec<(String, f64)> {
    let mut v = Vec::new();
    // A report from before several lengths has its one length in the first-length fields.
    if r.prefill_by_length.is_empty() && r.prefill.is_some() {
        v.push((
            format!("prefill_tok_s@{}", r.prompt_tokens),
            r.prefill_tok_s,
        ));
    }
    for t in &r.prefill_by_length {
        v.push((format!("prefill_tok_s@{}", t.prompt_tokens), t.tok_s));
    }
    v.extend(
        [
            ("decode_tok_s", r.decode_tok_s),
            ("decode_slope_tok_s", r.decode_slope_tok_s.unwrap_or(0.0)),
            ("dispatches_per_token", r.dispatches_per_token),
            ("submits_per_token", r.submits_per_token),
            ("read_ceiling_gb_s", r.read_ceiling_gb_s),
            ("decode_roofline_share", r.decode_roofline_share),
        ]
        .map(|(name, x)| (name.to_string(), x)),
    );
    for b in &r.batched {
        v.push((format!("batched_decode_tok_s@x{}", b.sequences), b.tok_s));
    }
    if let Some(us) = r.profile_step_us {
        v.push(("profile_step_us".to_string(), us));
    }
    for p in &r.profile {
        v.push((format!("profile_us[{}]", p.op), p.us_per_token));
    }
    for t in &r.prefill_by_length {
        for p in &t.profile {
            let name = format!("prefill_profile_us@{}[{}]", t.prompt_tokens, p.op);
            v.push((name, p.us_per_token));
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measurement_statistics() {
        // Two discarded warm runs, then ten runs 10..=19 (trim drops 10 and 19).
        let mut runs = vec![1.0, 2.0];
        runs.extend((10..20).map(|v| v as f64));
        let m = Measurement::from_runs(runs, 2);
        assert_eq!(m.discarded, 2);
        assert!((m.mean - 14.5).abs() < 1e-12);
        assert!((m.spread_pct - 9.0 / 15.0 * 100.0).abs() < 1e-9);
        // sd of 10..19 = 3.0277, t(9) = 2.262, n = 10.
        assert!(
            (m.ci95 - 2.262 * 3.02765 / 10f64.sqrt()).abs() < 1e-3,
            "{}",
            m.ci95
        );
        let one = Measurement::from_runs(vec![5.0], 2);
        assert_eq!((one.mean, one.ci95, one.discarded), (5.0, 0.0, 0));
    }
}
