//! RMSNorm (f32), plain or fused with the residual add.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{Binding, Dispatch, KernelSpec, Kernels};
use crate::error::{Error, Result};

/// RMSNorm, plain and fused with the residual add.
pub static FAMILY: Family = Family {
    name: "rmsnorm",
    wgsl: &["rmsnorm"],
    pipelines: || vec![spec(false), spec(true)],
    native_coverage: None,
    checks: None,
    bench: None,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RmsNormParams {
    pub n: u32,
    pub rows: u32,
    pub eps: f32,
    pub _pad: u32,
}

/// Workgroup size: one workgroup per row; 256 lanes cover hidden sizes up to ~8k in a few steps.
const WG: u32 = 256;

pub fn spec(fused_add: bool) -> KernelSpec {
    if fused_add {
        KernelSpec::new(
            "add_rmsnorm",
            "rmsnorm",
            "add_rmsnorm",
            &[
                Binding::Uniform,
                Binding::Read,
                Binding::Read,
                Binding::ReadWrite,
                Binding::ReadWrite,
            ],
        )
        .define("FUSED_ADD")
        .constant("WG", WG)
    } else {
        KernelSpec::new(
            "rmsnorm",
            "rmsnorm",
            "rmsnorm",
            &[
                Binding::Uniform,
                Binding::Read,
                Binding::Read,
                Binding::ReadWrite,
            ],
        )
        .constant("WG", WG)
    }
}

/// The weights (f32 `[n]`) and epsilon of an RMSNorm; GEMV's norm prologue takes the same.
pub type NormWeights<'a> = (&'a wgpu::Buffer, f32);

fn check(k: &Kernels, n: usize, rows: usize, bufs: &[(&str, &wgpu::Buffer, usize)]) -> Result<()> {
    if n == 0 || rows == 0 {
        return Err(Error::Shape(format!("rmsnorm of {rows} rows of {n}")));
    }
    if rows as u32 > k.gpu.caps.max_compute_workgroups_per_dimension {
        return Err(Error::Shape(format!(
            "rmsnorm: {rows} rows exceed the grid limit"
        )));
    }
    for (name, b, need) in bufs {
        need_bytes("rmsnorm", name, b, (need * 4) as u64)?;
    }
    Ok(())
}

/// `out[r] = rmsnorm(x[r]) * weight` for `rows` rows of `n` f32.
pub fn rmsnorm(
    k: &Kernels,
    x: &wgpu::Buffer,
    (weight, eps): NormWeights,
    out: &wgpu::Buffer,
    n: usize,
    rows: usize,
) -> Result<Dispatch> {
    check(
        k,
        n,
        rows,
        &[
            ("x", x, n * rows),
            ("weight", weight, n),
            ("out", out, n * rows),
        ],
    )?;
    let params = k.gpu.uniform(
        "rmsnorm params",
        &RmsNormParams {
            n: n as u32,
            rows: rows as u32,
            eps,
            _pad: 0,
        },
    )?;
    k.dispatch(
        &spec(false),
        &[&params, x, weight, out],
        [rows as u32, 1, 1],
    )
}

/// `residual += x; out = rmsnorm(residual) * weight`, row by row.
pub fn add_rmsnorm(
    k: &Kernels,
    x: &wgpu::Buffer,
    residual: &wgpu::Buffer,
    (weight, eps): NormWeights,
    out: &wgpu::Buffer,
    n: usize,
    rows: usize,
) -> Result<Dispatch> {
    check(
        k,
        n,
        rows,
        &[
            ("x", x, n * rows),
            ("weight", weight, n),
            ("residual", residual, n * rows),
            ("out", out, n * rows),
        ],
    )?;
    let params = k.gpu.uniform(
        "add_rmsnorm params",
        &RmsNormParams {
            n: n as u32,
            rows: rows as u32,
            eps,
            _pad: 0,
        },
    )?;
    k.dispatch(
        &spec(true),
        &[&params, x, weight, residual, out],
        [rows as u32, 1, 1],
    )
}
