//! Argmax over a vocabulary-sized f32 vector (greedy sampling), leaving the token id in a GPU
//! buffer for the next step's embedding gather.
//!
//! Ties go to the LOWEST index; NaN never wins over a number (an all-NaN vector yields 0);
//! -0.0 and +0.0 compare equal. Two passes: per-workgroup `(key, index)` partials, then one
//! reduce workgroup. The partial format is public ([`order_key`], [`argmax_reduce`]) so a
//! fused producer (an lm_head epilogue) can skip the first pass.

use bytemuck::{Pod, Zeroable};

use super::{grid_1d, Binding, Dispatch, KernelSpec, Kernels};
use crate::error::{Error, Result};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct ArgmaxParams {
    pub n: u32,
    pub n_partials: u32,
    /// Elements per first-pass workgroup.
    pub chunk: u32,
    pub out_index: u32,
}

const WG: u32 = 256;
/// Elements per first-pass workgroup: 4 per lane gives 149 workgroups for a 151936 vocabulary,
/// enough to spread over a large GPU, and few enough partials for one reduce workgroup.
const CHUNK: u32 = WG * 4;

pub fn spec_partial() -> KernelSpec {
    KernelSpec::new(
        "argmax_partial",
        "argmax",
        "argmax_partial",
        &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
    )
    .constant("WG", WG)
}

/// Bit set in the index [`argmax_checked`] writes when an element was not finite; the low
/// bits hold the lowest such index.
pub const NON_FINITE: u32 = 0x8000_0000;

/// `spec` with the non-finite check and its status binding (op `<op>_checked`).
pub fn checked(mut spec: KernelSpec) -> KernelSpec {
    spec.op.push_str("_checked");
    spec.bindings.push(Binding::ReadWrite);
    spec.define("CHECKED")
}

pub fn spec_reduce() -> KernelSpec {
    KernelSpec::new(
        "argmax_reduce",
        "argmax",
        "argmax_reduce",
        &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
    )
    .define("REDUCE")
    .constant("WG", WG)
}

/// The u32 whose unsigned order is the f32 order used by argmax: NaN is 0 (below -inf),
/// -0.0 and +0.0 share a key. A partial is the pair `[order_key(max), index]`; the empty
/// partial is `[0, u32::MAX]`.
pub fn order_key(v: f32) -> u32 {
    let b = v.to_bits();
    let mag = b & 0x7fff_ffff;
    if mag > 0x7f80_0000 {
        0
    } else if mag == 0 {
        0x8000_0000
    } else if b != mag {
        !b
    } else {
        b | 0x8000_0000
    }
}

/// The two dispatches of one argmax, recorded in order into the same pass.
#[derive(Debug)]
pub struct Argmax {
    pub dispatches: Vec<Dispatch>,
    /// The per-workgroup partials the first pass writes and the second reads.
    pub partials: wgpu::Buffer,
    pub n_partials: usize,
}

fn check_out(out_ids: &wgpu::Buffer, out_index: usize) -> Result<u32> {
    let need = (out_index as u64 + 1) * 4;
    if out_ids.size() < need || out_index >= u32::MAX as usize {
        return Err(Error::Shape(format!(
            "argmax: out_ids holds {} bytes, index {out_index} needs {need}",
            out_ids.size()
        )));
    }
    Ok(out_index as u32)
}

/// Writes the index of the max of `x[0..n]` to `out_ids[out_index]` (u32).
pub fn argmax(
    k: &Kernels,
    x: &wgpu::Buffer,
    n: usize,
    out_ids: &wgpu::Buffer,
    out_index: usize,
) -> Result<Argmax> {
    build(k, x, n, out_ids, out_index, None)
}

/// [`argmax`] that writes `NON_FINITE | i` instead when `x[i]` is the lowest-indexed NaN or
/// infinity (the decode step's greedy choice: a broken model is reported, not decoded).
/// `status` (4 bytes, zeroed once) carries the finding from the first pass to the second,
/// which clears it again.
pub fn argmax_checked(
    k: &Kernels,
    x: &wgpu::Buffer,
    n: usize,
    out_ids: &wgpu::Buffer,
    out_index: usize,
    status: &wgpu::Buffer,
) -> Result<Argmax> {
    if n >= NON_FINITE as usize {
        return Err(Error::Shape(format!("checked argmax of {n} elements")));
    }
    build(k, x, n, out_ids, out_index, Some(status))
}

fn build(
    k: &Kernels,
    x: &wgpu::Buffer,
    n: usize,
    out_ids: &wgpu::Buffer,
    out_index: usize,
    status: Option<&wgpu::Buffer>,
) -> Result<Argmax> {
    // Indices must stay below u32::MAX, the empty partial's index.
    if n == 0 || n >= u32::MAX as usize {
        return Err(Error::Shape(format!("argmax of {n} elements")));
    }
    if x.size() < n as u64 * 4 {
        return Err(Error::Shape(format!(
            "argmax: x holds {} bytes, {n} elements need {}",
            x.size(),
            n * 4
        )));
    }
    let out_index = check_out(out_ids, out_index)?;
    let n_partials = n.div_ceil(CHUNK as usize);
    let max_dim = k.gpu.caps.max_compute_workgroups_per_dimension;
    let grid = grid_1d(n_partials as u32, max_dim);
    let params = k.gpu.uniform(
        "argmax params",
        &ArgmaxParams {
            n: n as u32,
            n_partials: n_partials as u32,
            chunk: CHUNK,
            out_index,
        },
    )?;
    let partials = k
        .gpu
        .storage_buffer("argmax partials", n_partials as u64 * 8)?;
    let (first, second) = match status {
        None => (
            k.dispatch(&spec_partial(), &[&params, x, &partials], grid)?,
            k.dispatch(&spec_reduce(), &[&params, &partials, out_ids], [1, 1, 1])?,
        ),
        Some(s) => (
            k.dispatch(&checked(spec_partial()), &[&params, x, &partials, s], grid)?,
            k.dispatch(
                &checked(spec_reduce()),
                &[&params, &partials, out_ids, s],
                [1, 1, 1],
            )?,
        ),
    };
    Ok(Argmax {
        dispatches: vec![first, second],
        partials,
        n_partials,
    })
}

/// The second pass alone: folds `n_partials` pairs `[order_key(v), index]` (u32 each) from
/// `partials` and writes the winning index to `out_ids[out_index]`.
pub fn argmax_reduce(
    k: &Kernels,
    partials: &wgpu::Buffer,
    n_partials: usize,
    out_ids: &wgpu::Buffer,
    out_index: usize,
) -> Result<Dispatch> {
    if n_partials == 0 || n_partials > u32::MAX as usize {
        return Err(Error::Shape(format!(
            "argmax reduce of {n_partials} partials"
        )));
    }
    if partials.size() < n_partials as u64 * 8 {
        return Err(Error::Shape(format!(
            "argmax: partials hold {} bytes, {n_partials} pairs need {}",
            partials.size(),
            n_partials * 8
        )));
    }
    let out_index = check_out(out_ids, out_index)?;
    let params = k.gpu.uniform(
        "argmax reduce params",
        &ArgmaxParams {
            n: 0,
            n_partials: n_partials as u32,
            chunk: 0,
            out_index,
        },
    )?;
    k.dispatch(&spec_reduce(), &[&params, partials, out_ids], [1, 1, 1])
}
