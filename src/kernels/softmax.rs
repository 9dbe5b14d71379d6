//! Row-wise softmax (f32, max-subtracted), out of place or in place.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{grid_1d, Binding, Dispatch, KernelSpec, Kernels};
use crate::error::{Error, Result};

/// Row-wise softmax, out of place and in place.
pub static FAMILY: Family = Family {
    name: "softmax",
    wgsl: &["softmax"],
    pipelines: || vec![spec(false), spec(true)],
    native_coverage: None,
    checks: None,
    bench: None,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct SoftmaxParams {
    pub n: u32,
    pub rows: u32,
    pub _pad: [u32; 2],
}

/// One workgroup per row; 256 lanes read a 151936-long vocabulary row in ~600 steps each.
const WG: u32 = 256;

pub fn spec(inplace: bool) -> KernelSpec {
    if inplace {
        KernelSpec::new(
            "softmax_inplace",
            "softmax",
            "softmax_inplace",
            &[Binding::Uniform, Binding::ReadWrite],
        )
        .define("INPLACE")
        .constant("WG", WG)
    } else {
        KernelSpec::new(
            "softmax",
            "softmax",
            "softmax",
            &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
        )
        .constant("WG", WG)
    }
}

fn check(n: usize, rows: usize, bufs: &[(&str, &wgpu::Buffer)]) -> Result<SoftmaxParams> {
    let len = n.checked_mul(rows).filter(|&l| l <= u32::MAX as usize);
    let Some(len) = len.filter(|_| n > 0 && rows > 0) else {
        return Err(Error::Shape(format!("softmax of {rows} rows of {n}")));
    };
    for (name, b) in bufs {
        need_bytes("softmax", name, b, len as u64 * 4)?;
    }
    Ok(SoftmaxParams {
        n: n as u32,
        rows: rows as u32,
        _pad: [0; 2],
    })
}

/// `out[r] = softmax(x[r])` for `rows` rows of `n` f32 (x is not modified).
pub fn softmax(
    k: &Kernels,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n: usize,
    rows: usize,
) -> Result<Dispatch> {
    let params = check(n, rows, &[("x", x), ("out", out)])?;
    let params = k.gpu.uniform("softmax params", &params)?;
    let grid = grid_1d(rows as u32, k.gpu.caps.max_compute_workgroups_per_dimension);
    k.dispatch(&spec(false), &[&params, x, out], grid)
}

/// `x[r] = softmax(x[r])` in place, for `rows` rows of `n` f32.
pub fn softmax_inplace(k: &Kernels, x: &wgpu::Buffer, n: usize, rows: usize) -> Result<Dispatch> {
    let params = check(n, rows, &[("x", x)])?;
    let params = k.gpu.uniform("softmax params", &params)?;
    let grid = grid_1d(rows as u32, k.gpu.caps.max_compute_workgroups_per_dimension);
    k.dispatch(&spec(true), &[&params, x], grid)
}
