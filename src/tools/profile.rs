//! Per-dispatch GPU profiles of a session's decode steps and prefills (`wick bench`'s
//! per-op split), through the session's probe hooks: the session prepares a step and hands
//! over its dispatches, and this module records them with a timestamp pair around each.

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuProfiler, ProfileSample};
use crate::kernels::Dispatch;
use crate::runtime::sampling::Rng;
use crate::runtime::{SamplingParams, Session};

fn need_timestamps_inside_passes(gpu: &Gpu) -> Result<()> {
    if !GpuProfiler::inside_passes(gpu) {
        return Err(Error::Unsupported(
            "timestamps inside compute passes (TIMESTAMP_QUERY_INSIDE_PASSES)".into(),
        ));
    }
    Ok(())
}

/// Records `dispatches` into one pass with a timestamp pair around each, labelled with its op
/// (the timestamps themselves add a little time per dispatch).
fn record_profiled(
    enc: &mut wgpu::CommandEncoder,
    prof: &mut GpuProfiler,
    label: &str,
    dispatches: &[&Dispatch],
) {
    let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
        label: Some(label),
        timestamp_writes: None,
    });
    for d in dispatches {
        let region = prof.begin(&mut pass, &d.pipeline.op);
        d.record(&mut pass);
        prof.end(&mut pass, region);
    }
}

/// Runs `steps` decode steps after the session's cached tokens, each with a GPU timestamp
/// around every dispatch, and returns (op, nanoseconds) per dispatch of every step plus the
/// whole steps' GPU time (pass timestamps). Blocking per step: for profiles only. The session
/// is reset afterwards (the profiled steps leave no usable conversation). With `sampling` the
/// steps pick tokens with the GPU sampling chain (when it supports the settings; else argmax,
/// as the CPU sampler's own time is not GPU time).
pub fn profile_decode(
    s: &mut Session,
    steps: usize,
    sampling: Option<&SamplingParams>,
) -> Result<(Vec<ProfileSample>, f64)> {
    let gpu = s.model().engine().gpu().clone();
    need_timestamps_inside_passes(&gpu)?;
    if s.tokens().is_empty() {
        return Err(Error::InvalidArgument(
            "profile_decode needs a prefilled prompt".into(),
        ));
    }
    let sampling = match s.probe_sampler(sampling)? {
        true => sampling,
        false => None,
    };
    let mut rng = Rng::new(sampling.map_or(0, |p| p.seed));
    let n = s.max_decode_dispatches() as u32;
    let mut per_dispatch = GpuProfiler::new(&gpu, n)?;
    let mut whole = GpuProfiler::new(&gpu, 1)?;
    let mut samples = Vec::new();
    let mut total_ns = 0.0;
    for _ in 0..steps {
        let sample = sampling.map(|p| (p, rng.next_f64()));
        let Some(dispatches) = s.probe_decode_step(sample)? else {
            break;
        };
        // Timed twice: per dispatch (for the split by op), and the step as a whole without
        // inner timestamps (for the total).
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        record_profiled(
            &mut enc,
            &mut per_dispatch,
            "decode (profiled)",
            &dispatches,
        );
        per_dispatch.resolve(&mut enc);
        gpu.queue.submit([enc.finish()]);
        samples.extend(per_dispatch.read(&gpu)?);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let tw = whole.pass_writes("decode step");
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("decode (timed)"),
                timestamp_writes: tw,
            });
            for d in &dispatches {
                d.record(&mut pass);
            }
        }
        whole.resolve(&mut enc);
        gpu.queue.submit([enc.finish()]);
        total_ns += whole.read(&gpu)?.iter().map(|s| s.nanos).sum::<f64>();
        // The step's token is not read back: the next step decodes whatever id the GPU
        // chose, as generation would.
        s.probe_step_done();
    }
    s.reset();
    gpu.check()?;
    Ok((samples, total_ns))
}

/// GPU time of each dispatch of the prefill of `prompt` after the session's cached tokens,
/// step by step as [`Session::prefill`] submits them (the LM head excluded): `wick bench`'s
/// prefill split for one prompt length. Leaves the session empty.
pub fn profile_prefill(s: &mut Session, prompt: &[u32]) -> Result<Vec<ProfileSample>> {
    let gpu = s.model().engine().gpu().clone();
    need_timestamps_inside_passes(&gpu)?;
    let mut samples = Vec::new();
    let mut rest = prompt;
    for n in s.prefill_steps(prompt.len()) {
        let (ids, tail) = rest.split_at(n);
        rest = tail;
        // Blocking per step: each step's uniform is written before its submit and the next
        // step's would overwrite it.
        let dispatches = s.probe_prefill_step(ids)?;
        let mut prof = GpuProfiler::new(&gpu, dispatches.len() as u32)?;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        record_profiled(&mut enc, &mut prof, "prefill (profiled)", &dispatches);
        prof.resolve(&mut enc);
        gpu.queue.submit([enc.finish()]);
        samples.extend(prof.read(&gpu)?);
    }
    s.reset();
    gpu.check()?;
    Ok(samples)
}
