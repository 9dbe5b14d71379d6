//! Timing of recorded dispatches, shared by `wick kernels bench` and the GEMV sweeps: warm-up,
//! then the median of GPU timestamps around each run, or the wall clock of a synchronous batch
//! where the adapter has no timestamps.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::gpu::{Gpu, GpuProfiler};
use crate::kernels::Dispatch;

/// How [`time_dispatches`] measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Timing {
    /// GPU timestamps around each run inside one pass.
    Timestamps,
    /// GPU timestamps at the start and end of one pass per run (no timestamps inside passes).
    PassTimestamps,
    /// Wall clock over a synchronous batch of runs (no timestamps): includes submit latency.
    Wall,
}

/// Median time in nanoseconds of one run of `dispatches` (recorded in order in one pass), over
/// `reps` runs, after a warm-up of at least 3 batches of `reps` runs and `warmup_secs` seconds
/// (GPU clocks ramp up under load). GPU timestamps when the adapter has them, else the wall
/// clock of a synchronous batch divided by its runs (median of 5 batches).
pub fn time_dispatches(
    gpu: &Gpu,
    dispatches: &[&Dispatch],
    reps: usize,
    warmup_secs: f64,
) -> Result<(f64, Timing)> {
    let reps = reps.max(1);
    let batch = |prof: Option<&mut GpuProfiler>| -> Result<()> {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            match prof {
                Some(p) => {
                    for _ in 0..reps {
                        let r = p.begin(&mut pass, "run");
                        for d in dispatches {
                            d.record(&mut pass);
                        }
                        p.end(&mut pass, r);
                    }
                    drop(pass);
                    p.resolve(&mut enc);
                }
                None => {
                    for _ in 0..reps {
                        for d in dispatches {
                            d.record(&mut pass);
                        }
                    }
                }
            }
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait_idle()
    };
    let t0 = Instant::now();
    let mut passes = 0;
    while passes < 3 || t0.elapsed().as_secs_f64() < warmup_secs {
        passes += 1;
        batch(None)?;
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let caps = &gpu.caps;
    let result = if caps.timestamps && caps.timestamps_inside_passes {
        let mut prof = GpuProfiler::new(gpu, reps as u32)?;
        batch(Some(&mut prof))?;
        let ns: Vec<f64> = prof.read(gpu)?.iter().map(|s| s.nanos).collect();
        (median(ns), Timing::Timestamps)
    } else if caps.timestamps {
        let mut prof = GpuProfiler::new(gpu, reps as u32)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for _ in 0..reps {
            let tw = prof.pass_writes("run");
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("timed run"),
                timestamp_writes: tw,
            });
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        prof.resolve(&mut enc);
        gpu.queue.submit([enc.finish()]);
        gpu.wait_idle()?;
        let ns: Vec<f64> = prof.read(gpu)?.iter().map(|s| s.nanos).collect();
        (median(ns), Timing::PassTimestamps)
    } else {
        let mut per_run = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            batch(None)?;
            per_run.push(t.elapsed().as_secs_f64() * 1e9 / reps as f64);
        }
        (median(per_run), Timing::Wall)
    };
    gpu.check()?;
    Ok(result)
}
