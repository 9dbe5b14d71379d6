//! The device's memory read ceiling, measured with a WGSL streaming-read kernel
//! (`wgsl/bandwidth.wgsl`). Decode is bandwidth-bound, so `wick bench` reports decode
//! bandwidth as a share of this number rather than of a datasheet figure.

use std::time::Instant;

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result};
use crate::gpu::GpuProfiler;
use crate::kernels::{Binding, KernelSpec, Kernels};

/// WGSL mirror of bandwidth.wgsl's `struct Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct Params {
    pub n: u32,
    pub magic: u32,
    pub _pad: [u32; 2],
}

const WG: u32 = 256;

pub fn spec() -> KernelSpec {
    KernelSpec::new(
        "read_bandwidth",
        "bandwidth",
        "read_bandwidth",
        &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
    )
    .constant("WG", WG)
}

/// Read bandwidth in bytes per second: the best of `reps` timed passes over a buffer of
/// `bytes` (capped by the binding limit, rounded to 16 bytes). GPU timestamps when the
/// adapter has them, else wall-clock per submit (which undercounts on fast GPUs).
pub fn read_ceiling(k: &Kernels, bytes: u64, reps: usize) -> Result<f64> {
    let gpu = &k.gpu;
    let bytes = bytes
        .min(gpu.caps.max_storage_buffer_binding_size)
        .min(u32::MAX as u64 * 16)
        / 16
        * 16;
    if bytes == 0 || reps == 0 {
        return Err(Error::InvalidArgument("read_ceiling of nothing".into()));
    }
    let src = gpu.storage_buffer("bandwidth src", bytes)?;
    let sink = gpu.storage_buffer("bandwidth sink", 16)?;
    let n = (bytes / 16) as u32;
    // The buffer is zero-initialised: the XOR is 0, never the magic value.
    let params = gpu.uniform(
        "bandwidth params",
        &Params {
            n,
            magic: 0x9E37_79B9,
            _pad: [0; 2],
        },
    )?;
    // Enough workgroups to fill any GPU, each streaming a long run.
    let groups = (n / WG / 16).clamp(1, 8192);
    let d = k.dispatch(&spec(), &[&params, &src, &sink], [groups, 1, 1])?;
    let mut prof = GpuProfiler::new(gpu, reps as u32).ok();
    let mut best = 0.0f64;
    for _ in 0..reps {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let t0 = Instant::now();
        {
            let tw = prof.as_mut().and_then(|p| p.pass_writes("read"));
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("read bandwidth"),
                timestamp_writes: tw,
            });
            d.record(&mut pass);
        }
        if let Some(p) = &prof {
            p.resolve(&mut enc);
        }
        gpu.queue.submit([enc.finish()]);
        gpu.wait_idle()?;
        let secs = match prof.as_mut() {
            Some(p) => p.read(gpu)?.first().map_or(0.0, |s| s.nanos * 1e-9),
            None => t0.elapsed().as_secs_f64(),
        };
        if secs > 0.0 {
            best = best.max(bytes as f64 / secs);
        }
    }
    gpu.check()?;
    Ok(best)
}
