//! Timing of recorded dispatches, shared by `wick kernels bench` and the GEMV sweeps.
//!
//! A *run* is one execution of a case (its one or few dispatches). A timed *sample* is a
//! batch of [`Batching::runs_per_sample`] runs recorded back to back between one pair of
//! GPU timestamps; the time of one run is the sample's time divided by its runs, and the
//! result is the median over `reps` samples. Timing single runs instead measures mostly the
//! fixed cost of the timestamp pair and the launch (~27 us per sample on an H100, more than
//! a small GEMV takes), so batches are sized by bytes read ([`BatchOptions::plan`]).
//!
//! Consecutive runs rotate over [`Batching::weight_copies`] copies of the case's weights
//! (or K/V cache) totalling well over any L2, so each run reads its weights from DRAM as a
//! decode step's layers do, rather than from the L2 the previous run filled. The runs
//! write the same outputs, so the driver puts a barrier between consecutive runs: the
//! per-run time includes one inter-dispatch barrier, as each kernel of a decode step does.
//!
//! Adapters without timestamps inside passes get one pass per sample with timestamps at
//! its start and end; adapters without timestamps get the wall clock of a synchronous
//! batch of `reps` samples (which includes the submit latency, amortised over its runs).

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::gpu::{Capabilities, Gpu, GpuProfiler};
use crate::kernels::Dispatch;

/// How [`time_runs`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// GPU timestamps around each sample inside one pass.
    Timestamps,
    /// GPU timestamps at the start and end of one pass per sample (no timestamps inside
    /// passes).
    PassTimestamps,
    /// Wall clock over a synchronous batch of samples (no timestamps): includes submit
    /// latency.
    Wall,
}

/// How one case is timed: runs per timed sample and weight copies they rotate over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batching {
    /// Runs of the case between one pair of timestamps (at least 1).
    pub runs_per_sample: usize,
    /// Copies of the weights consecutive runs rotate over (at least 1).
    pub weight_copies: usize,
}

impl Batching {
    /// One run per sample on one copy: the method before batching, whose per-sample
    /// overhead and L2 residency show in small kernels.
    pub const SINGLE: Batching = Batching {
        runs_per_sample: 1,
        weight_copies: 1,
    };
}

/// How [`BatchOptions::plan`] sizes samples and weight copies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchOptions {
    /// Bytes one sample should read at least: runs per sample = this / bytes per run, so
    /// the fixed cost of a sample is a small share of it (256 MiB: ~80 us on an H100).
    pub sample_bytes: u64,
    /// At most this many runs per sample (launch-bound cases with a few KiB per run).
    pub max_runs: usize,
    /// The weight copies together should hold at least this many bytes: four times a
    /// 64 MiB L2 (an H100 has 50 MB), so a copy is evicted before its next run.
    pub rotate_bytes: u64,
    /// The copies never hold more than this many bytes (nor a quarter of the device's
    /// memory where known); one copy of a larger matrix is already past any L2.
    pub max_copy_bytes: u64,
    /// At most this many copies (each a buffer and a bind group per variant).
    pub max_copies: usize,
    /// A sample is cut to about this many seconds of runs (estimated on the wall clock
    /// before the warm-up): on a slow adapter (lavapipe, a small integrated GPU) one run
    /// already dwarfs the per-sample overhead, and hundreds would only make the bench slow.
    pub max_sample_secs: f64,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            sample_bytes: 256 << 20,
            max_runs: 1024,
            rotate_bytes: 256 << 20,
            max_copy_bytes: 1 << 30,
            max_copies: 1024,
            max_sample_secs: 0.05,
        }
    }
}

impl BatchOptions {
    /// Errors when a bound is zero.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("sample_bytes", self.sample_bytes),
            ("max_runs", self.max_runs as u64),
            ("rotate_bytes", self.rotate_bytes),
            ("max_copy_bytes", self.max_copy_bytes),
            ("max_copies", self.max_copies as u64),
        ] {
            if v == 0 {
                return Err(Error::InvalidArgument(format!(
                    "batch option {what} must be at least 1"
                )));
            }
        }
        if self.max_sample_secs.is_nan() || self.max_sample_secs <= 0.0 {
            return Err(Error::InvalidArgument(format!(
                "batch option max_sample_secs must be positive, not {}",
                self.max_sample_secs
            )));
        }
        Ok(())
    }

    /// Runs per sample and weight copies for a case that moves `run_bytes` per run, of
    /// which `weight_bytes` are its rotatable read-only inputs (0: none). Each copy is a
    /// buffer of the original's size, so a case whose weights fit the binding limit once
    /// fits it in every copy.
    pub fn plan(&self, caps: &Capabilities, run_bytes: u64, weight_bytes: u64) -> Batching {
        let runs = self
            .sample_bytes
            .div_ceil(run_bytes.max(1))
            .clamp(1, self.max_runs.max(1) as u64) as usize;
        let copies = if weight_bytes == 0 || weight_bytes >= self.rotate_bytes {
            1
        } else {
            let budget = self
                .max_copy_bytes
                .min(caps.device_memory.map_or(u64::MAX, |m| m / 4));
            self.rotate_bytes
                .div_ceil(weight_bytes)
                .min(budget / weight_bytes)
                .min(self.max_copies as u64)
                .max(1) as usize
        };
        Batching {
            runs_per_sample: runs,
            weight_copies: copies,
        }
    }
}

/// Median time in nanoseconds of one run of `dispatches` (recorded in order in one pass), one
/// run per sample on the same buffers: [`time_runs`] with [`Batching::SINGLE`].
pub fn time_dispatches(
    gpu: &Gpu,
    dispatches: &[&Dispatch],
    reps: usize,
    warmup_secs: f64,
) -> Result<(f64, Timing)> {
    let t = time_runs(
        gpu,
        &[dispatches.to_vec()],
        1,
        f64::INFINITY,
        reps,
        warmup_secs,
    )?;
    Ok((t.ns, t.timing))
}

/// What [`time_runs`] measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    /// Median time of one run in nanoseconds.
    pub ns: f64,
    pub timing: Timing,
    /// Runs per sample used: as asked, or fewer where `max_sample_secs` cut it.
    pub runs_per_sample: usize,
}

/// Median time of one run over `reps` samples of `runs_per_sample` runs each (see the
/// module docs). `runs[c]` are the dispatches of one run on weight copy `c`; run `i` of the
/// whole sequence records `runs[i % runs.len()]`, so the rotation carries on across samples.
/// A sample estimated (wall clock, best of two short probes) to take over `max_sample_secs`
/// gets fewer runs, at least 1. Then a warm-up: batches of `reps` samples until at least
/// `3 * reps` runs and `warmup_secs` seconds (GPU clocks ramp up under load).
pub fn time_runs(
    gpu: &Gpu,
    runs: &[Vec<&Dispatch>],
    runs_per_sample: usize,
    max_sample_secs: f64,
    reps: usize,
    warmup_secs: f64,
) -> Result<Timed> {
    if runs.is_empty() || runs.iter().any(Vec::is_empty) {
        return Err(Error::InvalidArgument(
            "time_runs: a run with no dispatches to time".into(),
        ));
    }
    if max_sample_secs.is_nan() || max_sample_secs <= 0.0 {
        return Err(Error::InvalidArgument(format!(
            "time_runs: max_sample_secs must be positive, not {max_sample_secs}"
        )));
    }
    let reps = reps.max(1);
    let mut per = runs_per_sample.max(1);
    // The next copy to record, carried across samples and batches.
    let mut next = 0usize;
    // Records `count` runs: indices only, no allocation per dispatch.
    let mut record = |pass: &mut wgpu::ComputePass<'_>, count: usize| {
        for _ in 0..count {
            for d in &runs[next] {
                d.record(pass);
            }
            next = (next + 1) % runs.len();
        }
    };
    if per > 1 && max_sample_secs.is_finite() {
        // Wall clock of a few runs, best of two (the first may pay first-use costs). Submit
        // latency inflates a short run's estimate, but ~25 us a run still fits 1024 runs in
        // the default 50 ms: only adapters whose runs take tens of microseconds are cut.
        let probe = per.min(4);
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let t = Instant::now();
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                record(&mut pass, probe);
            }
            gpu.queue.submit([enc.finish()]);
            gpu.wait_idle()?;
            best = best.min(t.elapsed().as_secs_f64() / probe as f64);
        }
        if best * per as f64 > max_sample_secs {
            per = ((max_sample_secs / best) as usize).clamp(1, per);
        }
    }
    let mut sample = |pass: &mut wgpu::ComputePass<'_>| record(pass, per);
    let batch = |prof: Option<&mut GpuProfiler>,
                 sample: &mut dyn FnMut(&mut wgpu::ComputePass<'_>)|
     -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            match prof {
                Some(p) => {
                    for _ in 0..reps {
                        let r = p.begin(&mut pass, "sample");
                        sample(&mut pass);
                        p.end(&mut pass, r);
                    }
                    drop(pass);
                    p.resolve(&mut enc);
                }
                None => {
                    for _ in 0..reps {
                        sample(&mut pass);
                    }
                }
            }
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait_idle()
    };
    let t0 = Instant::now();
    let mut warm_runs = 0;
    while warm_runs < 3 * reps || t0.elapsed().as_secs_f64() < warmup_secs {
        warm_runs += reps * per;
        batch(None, &mut sample)?;
    }
    // The median sample over its runs.
    let median = |mut v: Vec<f64>| -> Result<f64> {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2)
            .map(|s| s / per as f64)
            .ok_or_else(|| Error::Gpu("no timestamp came back from the timed samples".into()))
    };
    let caps = &gpu.caps;
    let result = if caps.timestamps && caps.timestamps_inside_passes {
        let mut prof = GpuProfiler::new(gpu, reps as u32)?;
        batch(Some(&mut prof), &mut sample)?;
        let ns: Vec<f64> = prof.read(gpu)?.iter().map(|s| s.nanos).collect();
        (median(ns)?, Timing::Timestamps)
    } else if caps.timestamps {
        let mut prof = GpuProfiler::new(gpu, reps as u32)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..reps {
            let tw = prof.pass_writes("sample");
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed sample"),
                timestamp_writes: tw,
            });
            sample(&mut pass);
        }
        prof.resolve(&mut enc);
        gpu.queue.submit([enc.finish()]);
        gpu.wait_idle()?;
        let ns: Vec<f64> = prof.read(gpu)?.iter().map(|s| s.nanos).collect();
        (median(ns)?, Timing::PassTimestamps)
    } else {
        let mut ns = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            batch(None, &mut sample)?;
            ns.push(t.elapsed().as_secs_f64() * 1e9 / reps as f64);
        }
        (median(ns)?, Timing::Wall)
    };
    gpu.check()?;
    let (ns, timing) = result;
    Ok(Timed {
        ns,
        timing,
        runs_per_sample: per,
    })
}
