//! GPU timestamp profiler: labelled timestamp pairs written inside a compute pass
//! (TIMESTAMP_QUERY_INSIDE_PASSES) or around passes, resolved and read back after the work.
//! Used by `wick bench` for per-kernel-family GPU time; never in the normal decode loop.

use super::Gpu;
use crate::error::{Error, Result};

/// One measured region.
#[derive(Debug, Clone)]
pub struct ProfileSample {
    pub label: String,
    pub nanos: f64,
}

/// A fixed-capacity set of timestamp queries with labels.
pub struct GpuProfiler {
    query_set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    capacity: u32,
    next: u32,
    labels: Vec<(String, u32)>,
    period_ns: f64,
}

impl GpuProfiler {
    /// A profiler for up to `regions` timed regions. Errors when the device has no timestamps.
    pub fn new(gpu: &Gpu, regions: u32) -> Result<Self> {
        if !gpu.caps.timestamps {
            return Err(Error::Unsupported(
                "GPU timestamps (TIMESTAMP_QUERY) are not offered by this adapter".into(),
            ));
        }
        let capacity = regions * 2;
        let query_set = gpu.scoped(|| {
            gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("wick profiler"),
                ty: wgpu::QueryType::Timestamp,
                count: capacity,
            })
        })?;
        let resolve = gpu.scoped(|| {
            gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wick profiler resolve"),
                size: capacity as u64 * 8,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            })
        })?;
        Ok(GpuProfiler {
            query_set,
            resolve,
            capacity,
            next: 0,
            labels: Vec::new(),
            period_ns: gpu.queue.get_timestamp_period() as f64,
        })
    }

    /// Whether timestamps can be written inside a compute pass on this device.
    pub fn inside_passes(gpu: &Gpu) -> bool {
        gpu.caps.timestamps_inside_passes
    }

    fn alloc(&mut self, label: &str) -> Option<u32> {
        if self.next + 2 > self.capacity {
            return None;
        }
        let i = self.next;
        self.next += 2;
        self.labels.push((label.to_string(), i));
        Some(i)
    }

    /// Timestamp writes for a whole pass (start and end), labelled.
    pub fn pass_writes(&mut self, label: &str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.alloc(label)?;
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.query_set,
            beginning_of_pass_write_index: Some(i),
            end_of_pass_write_index: Some(i + 1),
        })
    }

    /// Starts a region inside a pass; returns the query index to pass to [`GpuProfiler::end`].
    pub fn begin(&mut self, pass: &mut wgpu::ComputePass<'_>, label: &str) -> Option<u32> {
        let i = self.alloc(label)?;
        pass.write_timestamp(&self.query_set, i);
        Some(i)
    }

    /// Ends a region started with [`GpuProfiler::begin`].
    pub fn end(&self, pass: &mut wgpu::ComputePass<'_>, region: Option<u32>) {
        if let Some(i) = region {
            pass.write_timestamp(&self.query_set, i + 1);
        }
    }

    /// Records the resolve of every written query into the encoder.
    pub fn resolve(&self, encoder: &mut wgpu::CommandEncoder) {
        if self.next > 0 {
            encoder.resolve_query_set(&self.query_set, 0..self.next, &self.resolve, 0);
        }
    }

    /// Reads the resolved timestamps (blocking) and clears the profiler for reuse.
    pub fn read(&mut self, gpu: &Gpu) -> Result<Vec<ProfileSample>> {
        if self.next == 0 {
            return Ok(Vec::new());
        }
        let raw: Vec<u64> = gpu.read_range(&self.resolve, 0, self.next as usize)?;
        let out = self
            .labels
            .iter()
            .map(|(label, i)| {
                let (a, b) = (raw[*i as usize], raw[*i as usize + 1]);
                ProfileSample {
                    label: label.clone(),
                    nanos: b.saturating_sub(a) as f64 * self.period_ns,
                }
            })
            .collect();
        self.next = 0;
        self.labels.clear();
        Ok(out)
    }
}
