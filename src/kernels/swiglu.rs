//! SwiGLU elementwise for prefill (decode fuses it into the gate+up GEMV).

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{grid_1d, Binding, Dispatch, KernelSpec, Kernels};
use crate::error::{Error, Result};

/// Prefill's SwiGLU elementwise.
pub static FAMILY: Family = Family {
    name: "swiglu",
    wgsl: &["swiglu"],
    pipelines: || vec![spec()],
    native_coverage: None,
    checks: None,
    bench: None,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SwigluParams {
    pub n: u32,
    pub rows: u32,
    /// rows * n.
    pub total: u32,
    pub _pad: u32,
}

const WG: u32 = 256;

pub fn spec() -> KernelSpec {
    KernelSpec::new(
        "swiglu",
        "swiglu",
        "swiglu",
        &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
    )
    .constant("WG", WG)
}

/// out[r][i] = silu(gate[r][i]) * up[r][i], where gate and up are read from one f32 buffer
/// `gu` laid out [rows][2*n] with gate in columns 0..n and up in n..2n (the GEMM writes them
/// there through its column offset); out: f32 [rows][n].
pub fn swiglu(
    k: &Kernels,
    gu: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    n: usize,
) -> Result<Dispatch> {
    // The shader indexes gu with u32, up to 2 * rows * n.
    let total = rows
        .checked_mul(n)
        .filter(|&t| t > 0 && t <= (u32::MAX / 2) as usize)
        .ok_or_else(|| Error::Shape(format!("swiglu of {rows} rows of {n}")))?;
    need_bytes("swiglu", "gu", gu, 2 * total as u64 * 4)?;
    need_bytes("swiglu", "out", out, total as u64 * 4)?;
    let params = k.gpu.uniform(
        "swiglu params",
        &SwigluParams {
            n: n as u32,
            rows: rows as u32,
            total: total as u32,
            _pad: 0,
        },
    )?;
    let groups = total.div_ceil(WG as usize) as u32;
    let grid = grid_1d(groups, k.gpu.caps.max_compute_workgroups_per_dimension);
    k.dispatch(&spec(), &[&params, gu, out], grid)
}
