//! A weight matrix on the GPU: the repacked planes of a [`PackedMatrix`] in storage buffers.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::quant::{PackedMatrix, WeightFormat};

/// An n x k weight matrix in GPU planes. Kernels bind `qs` and, for quantised formats,
/// `scales` (float formats bind a 4-byte placeholder there so the layout never changes).
#[derive(Debug)]
pub struct GpuMatrix {
    pub format: WeightFormat,
    pub n: usize,
    pub k: usize,
    pub qs: wgpu::Buffer,
    pub scales: wgpu::Buffer,
}

impl GpuMatrix {
    /// Uploads both planes. Errors if a plane exceeds one storage binding (the model layer
    /// splits larger matrices by rows before uploading).
    pub fn upload(gpu: &Gpu, label: &str, m: &PackedMatrix) -> Result<GpuMatrix> {
        for (plane, words) in [("qs", m.qs.len()), ("scales", m.scales.len())] {
            let bytes = words as u64 * 4;
            if !gpu.fits_binding(bytes) {
                return Err(Error::Shape(format!(
                    "{label}: {plane} plane of {bytes} bytes exceeds the device's {}-byte storage binding limit",
                    gpu.caps.max_storage_buffer_binding_size
                )));
            }
        }
        let qs = gpu.upload(&format!("{label}.qs"), &m.qs)?;
        let scales = if m.scales.is_empty() {
            gpu.upload(&format!("{label}.scales"), &[0u32])?
        } else {
            gpu.upload(&format!("{label}.scales"), &m.scales)?
        };
        Ok(GpuMatrix {
            format: m.format,
            n: m.n,
            k: m.k,
            qs,
            scales,
        })
    }
}
