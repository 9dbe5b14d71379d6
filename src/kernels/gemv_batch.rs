//! Batched GEMV: one weight matrix times B f32 activation rows (B = 1..=[`MAX_BATCH`]), the
//! decode step of B sequences at once (continuous batching, issue 16), reading every weight
//! byte once for all of them: `out[b][out_offset + i] (+)= w[i] · x[b] (+ bias[i])`.
//! Kernel: `wgsl/gemv_batch.wgsl`, which shares the float GEMV's per-format units
//! (`wgsl/gemv_units.wgsl`: loaders and dot products) and work split ([`GemvConfig`]); design
//! in docs/kernels.md (Batched GEMV). Every [`WeightFormat`]; no native variants.
//!
//! Not yet used by the runtime: decode still runs one sequence per step through
//! [`super::gemv`]. Wiring it into a batched decode loop (and fused gate+up / QKV / norm
//! variants, which this family does not have yet) is left to the runtime's batching work.
//! B = 1 is accepted so the kernel can be timed against the single GEMV; the runtime should
//! keep [`super::gemv::gemv`] for one sequence.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::gemv::{
    check_matrix, choose_config as gemv_choose_config, grid, unit_elems, GemvConfig,
};
use super::{Binding, Dispatch, GpuMatrix, KernelSpec, Kernels};
use crate::error::{Error, Result};
use crate::gpu::{AdapterClass, Capabilities};
use crate::quant::WeightFormat;

pub mod cases;

/// The batched GEMV family: one pipeline per weight format (the batch size and work split
/// are override constants).
pub static FAMILY: Family = Family {
    name: "gemv_batch",
    wgsl: &["gemv_batch"],
    pipelines,
    native_coverage: None,
    checks: Some(cases::checks),
    bench: Some(cases::bench),
};

/// The most activation rows one dispatch takes (the shader's accumulators are sized for it).
pub const MAX_BATCH: usize = 8;
/// The most rows per row group (the shader's array of held weight units).
pub const MAX_ROWS_PER_GROUP: u32 = 4;
/// Size of the shader's per-lane accumulator array: rows per group x batch must fit.
const MAX_ACC: u32 = 32;

/// The op of `format` (`gemv_batch_q4_0`).
pub fn op(format: WeightFormat) -> String {
    format!("gemv_batch_{}", format.name())
}

fn pipelines() -> Vec<KernelSpec> {
    let cfg = GemvConfig {
        lanes_per_row: 32,
        rows_per_group: 2,
        workgroup_size: 64,
        subgroup_reduce: false,
    };
    WeightFormat::ALL
        .into_iter()
        .map(|f| spec(f, &cfg, 4, false, false))
        .collect()
}

/// WGSL mirror: `struct Params { n, upr, out_offset, out_stride, k4, _pad }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GemvBatchParams {
    /// Rows of the matrix.
    pub n: u32,
    /// Units (one `qs` load each) per row: k / [`super::gemv::unit_elems`].
    pub upr: u32,
    /// Row i of batch row b is written to `out[b * out_stride + out_offset + i]`.
    pub out_offset: u32,
    pub out_stride: u32,
    /// k / 4.
    pub k4: u32,
    /// Keeps the uniform a multiple of 16 bytes.
    pub _pad: [u32; 3],
}

/// What happens to each dot product before it is stored, and where.
#[derive(Clone, Copy, Default)]
pub struct BatchEpilogue<'a> {
    /// f32[n], added to each output row of every batch row.
    pub bias: Option<&'a wgpu::Buffer>,
    /// `out += result` (residual add) instead of `out = result`.
    pub accumulate: bool,
    /// Row i of batch row b goes to `out[b * out_stride + out_offset + i]`.
    pub out_offset: usize,
    /// Elements between consecutive batch rows of `out`; None: n (rows packed). At least n.
    pub out_stride: Option<usize>,
}

/// Checks `cfg` for a batch of `batch` rows on this device: the GEMV's lane constraints, and
/// rows per group and accumulators within the shader's arrays.
pub fn validate(cfg: &GemvConfig, caps: &Capabilities, batch: usize) -> Result<()> {
    let bad = |m: &str| {
        Err(Error::InvalidArgument(format!(
            "gemv_batch config {cfg:?} at batch {batch}: {m}"
        )))
    };
    check_batch(batch)?;
    let lpr = cfg.lanes_per_row;
    if !lpr.is_power_of_two() || lpr > 256 {
        return bad("lanes_per_row must be a power of two up to 256");
    }
    if cfg.workgroup_size == 0
        || cfg.workgroup_size > 256
        || !cfg.workgroup_size.is_multiple_of(lpr)
        || cfg.workgroup_size > caps.max_compute_invocations_per_workgroup
    {
        return bad(
            "workgroup_size must be a multiple of lanes_per_row, at most 256 and the device limit",
        );
    }
    if cfg.rows_per_group == 0 || cfg.rows_per_group > MAX_ROWS_PER_GROUP {
        return bad("rows_per_group must be 1..=4");
    }
    if cfg.rows_per_group * batch as u32 > MAX_ACC {
        return bad("rows_per_group x batch exceeds the 32 accumulators");
    }
    if cfg.subgroup_reduce && (!caps.subgroup || lpr > caps.subgroup_min_size.max(1)) {
        return bad("subgroup reduction needs subgroups at least lanes_per_row wide");
    }
    Ok(())
}

fn check_batch(batch: usize) -> Result<()> {
    if batch == 0 || batch > MAX_BATCH {
        return Err(Error::InvalidArgument(format!(
            "gemv_batch: batch of {batch} rows; it takes 1..={MAX_BATCH}"
        )));
    }
    Ok(())
}

/// The work split for `batch` rows of an n x k `format` matrix, not yet measured on any GPU
/// (a starting point for `wick kernels bench` to tune): the single GEMV's split
/// ([`super::gemv::choose_config`]) with at least min(batch, 4) rows per group, so each
/// activation load (the activations are `batch` times the single GEMV's) serves several weight
/// rows. On NVIDIA, whose single-GEMV split sizes the lanes of a matrix (~2^17) to keep enough
/// loads in flight to cover DRAM latency, the lanes per row grow with the rows per group so the
/// matrix keeps that many lanes (capped by the row's units and 256; beyond the subgroup, the
/// workgroup-memory reduction).
pub fn choose_config(
    caps: &Capabilities,
    format: WeightFormat,
    n: usize,
    k: usize,
    batch: usize,
) -> GemvConfig {
    let mut cfg = gemv_choose_config(caps, format, n, k);
    let base_rpg = cfg.rows_per_group;
    let rpg = (batch.clamp(1, MAX_ROWS_PER_GROUP as usize) as u32)
        .max(base_rpg)
        .min(MAX_ROWS_PER_GROUP)
        .min(MAX_ACC / batch.clamp(1, MAX_BATCH) as u32);
    cfg.rows_per_group = rpg;
    if caps.class == AdapterClass::Nvidia && rpg > base_rpg {
        let units = (k / unit_elems(format)).max(1);
        let cap = (units.next_power_of_two().min(256) as u32).max(cfg.lanes_per_row);
        let lpr = (cfg.lanes_per_row * rpg / base_rpg)
            .next_power_of_two()
            .min(cap);
        cfg.lanes_per_row = lpr;
        cfg.workgroup_size = cfg.workgroup_size.max(lpr);
        cfg.subgroup_reduce = caps.subgroup && lpr <= caps.subgroup_min_size;
    }
    cfg
}

/// The spec of the batched GEMV pipeline of `format` for `batch` rows (op `gemv_batch_<fmt>`).
pub fn spec(
    format: WeightFormat,
    cfg: &GemvConfig,
    batch: usize,
    bias: bool,
    accumulate: bool,
) -> KernelSpec {
    let bindings = [
        Binding::Uniform,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::Read,
        Binding::ReadWrite,
    ];
    KernelSpec::new(op(format), "gemv_batch", "gemv_batch", &bindings)
        .define(format.define())
        .constant("LPR", cfg.lanes_per_row)
        .constant("RPG", cfg.rows_per_group)
        .constant("WG", cfg.workgroup_size)
        .constant("SG_REDUCE", cfg.subgroup_reduce as u32)
        .constant("BATCH", batch as u32)
        .constant("HAS_BIAS", bias as u32)
        .constant("ACCUMULATE", accumulate as u32)
}

/// `out[b * stride + epi.out_offset + i] (+)= w[i] · x[b] (+ bias[i])` for the n rows of `w`
/// and the `batch` rows of x (f32[batch][k], packed).
pub fn gemv_batch(
    k: &Kernels,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    batch: usize,
    out: &wgpu::Buffer,
    epi: BatchEpilogue,
) -> Result<Dispatch> {
    check_batch(batch)?;
    let cfg = choose_config(&k.gpu.caps, w.format, w.n, w.k, batch);
    gemv_batch_with_config(k, w, x, batch, out, epi, &cfg)
}

/// [`gemv_batch`] with an explicit work split (tests, benchmarks, tuning).
pub fn gemv_batch_with_config(
    k: &Kernels,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    batch: usize,
    out: &wgpu::Buffer,
    epi: BatchEpilogue,
    cfg: &GemvConfig,
) -> Result<Dispatch> {
    validate(cfg, &k.gpu.caps, batch)?;
    let upr = check_matrix("w", w)?;
    let x_len = (batch as u64) * w.k as u64;
    if x_len / 4 > u32::MAX as u64 {
        return Err(Error::Shape(format!(
            "gemv_batch: {batch} rows of {} activations exceed the shader's indices",
            w.k
        )));
    }
    need_bytes("gemv_batch", "x", x, x_len * 4)?;
    let stride = epi.out_stride.unwrap_or(w.n);
    if stride < w.n {
        return Err(Error::Shape(format!(
            "gemv_batch: out_stride {stride} is below the {} rows of the matrix (batch rows \
             would overlap)",
            w.n
        )));
    }
    // The last element written: (batch - 1) * stride + out_offset + n - 1.
    let end = ((batch - 1) as u64)
        .checked_mul(stride as u64)
        .and_then(|v| v.checked_add(epi.out_offset as u64 + w.n as u64))
        .filter(|e| *e <= u32::MAX as u64)
        .ok_or_else(|| Error::Shape("gemv_batch: out_offset or out_stride too large".into()))?;
    need_bytes("gemv_batch", "out", out, end * 4)?;
    if let Some(b) = epi.bias {
        need_bytes("gemv_batch", "bias", b, w.n as u64 * 4)?;
    }
    let sp = spec(w.format, cfg, batch, epi.bias.is_some(), epi.accumulate);
    let params = GemvBatchParams {
        n: w.n as u32,
        upr,
        out_offset: epi.out_offset as u32,
        out_stride: stride as u32,
        k4: (w.k / 4) as u32,
        _pad: [0; 3],
    };
    let params = k.gpu.uniform("gemv_batch params", &params)?;
    // Without a bias the binding still needs a buffer; x is bound read-only already.
    let bias = epi.bias.unwrap_or(x);
    k.dispatch(
        &sp,
        &[&params, &w.qs, &w.scales, x, bias, out],
        grid(k, w.n, cfg)?,
    )
}
