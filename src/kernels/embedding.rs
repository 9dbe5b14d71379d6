//! Embedding gather: rows of a weight table in any [`WeightFormat`], selected by token ids
//! that live in a GPU buffer (the decode loop's argmax writes the next id there), written out
//! as f32.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{Binding, Dispatch, GpuMatrix, KernelSpec, Kernels, WeightFormat};
use crate::error::{Error, Result};

/// The embedding gather, one pipeline per weight format.
pub static FAMILY: Family = Family {
    name: "embedding",
    wgsl: &["embedding"],
    pipelines: || WeightFormat::ALL.into_iter().map(spec).collect(),
    native_coverage: None,
    checks: None,
    bench: None,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct EmbeddingParams {
    /// Rows in this table (chunk).
    pub n_rows: u32,
    /// Hidden size (row length in elements).
    pub k: u32,
    /// Vocabulary row of this table's first row.
    pub row_offset: u32,
    pub ids_offset: u32,
    pub n_tokens: u32,
    /// u32 words of `qs` per row.
    pub words_per_row: u32,
    /// Quantised blocks per row (0 for float formats).
    pub blocks_per_row: u32,
    pub _pad: u32,
}

/// One invocation per `qs` word; 64 keeps a 576-wide Q4 row (72 words) in two workgroups.
const WG: u32 = 64;

pub fn spec(format: WeightFormat) -> KernelSpec {
    KernelSpec::new(
        format!("embedding_{}", format.name()),
        "embedding",
        "embedding",
        &[
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
    )
    .define(format.define())
    .constant("WG", WG)
}

fn shape(msg: String) -> Error {
    Error::Shape(format!("embedding: {msg}"))
}

fn to_u32(what: &str, v: usize) -> Result<u32> {
    u32::try_from(v).map_err(|_| shape(format!("{what} = {v} exceeds u32")))
}

/// Gathers `n_tokens` rows of `table` into `out`.
///
/// out: f32 `[n_tokens][hidden]`; token t's id is `ids[ids_offset + t]` (u32). The table may be
/// one row-chunk of a larger vocabulary split across bindings: it holds vocabulary rows
/// `row_offset .. row_offset + table.n`, and ids outside that range are left untouched
/// (another chunk's dispatch writes them). An id beyond the whole vocabulary is therefore
/// never read and its output row keeps its previous contents; the runtime validates ids on
/// the CPU too.
///
/// Values are exactly what [`crate::quant::unpack`] gives: float formats are bit copies;
/// quantised ones compute `d * q` (`+ m` for Q4_1/Q5_1, `d*sc * q - dmin*m` for Q4_K/Q5_K) in
/// f32, where a GPU that fuses the multiply-add may differ by 1 ulp (more where the two
/// terms nearly cancel).
pub fn embedding(
    k: &Kernels,
    table: &GpuMatrix,
    ids: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n_tokens: usize,
    ids_offset: usize,
    row_offset: usize,
) -> Result<Dispatch> {
    let f = table.format;
    if n_tokens == 0 || table.n == 0 || table.k == 0 || !table.k.is_multiple_of(f.k_multiple()) {
        return Err(shape(format!(
            "{n_tokens} tokens from a {} x {} {} table (k must be a non-zero multiple of {})",
            table.n,
            table.k,
            f.name(),
            f.k_multiple()
        )));
    }
    let wpr = f.qs_words_per_row(table.k);
    let max_dim = k.gpu.caps.max_compute_workgroups_per_dimension;
    let groups_x = to_u32("row words", wpr.div_ceil(WG as usize))?;
    if groups_x > max_dim || n_tokens > max_dim as usize {
        return Err(shape(format!(
            "{n_tokens} tokens of {} words exceed the grid limit {max_dim}",
            wpr
        )));
    }
    let out_len = n_tokens
        .checked_mul(table.k)
        .ok_or_else(|| shape("output size overflows".into()))?;
    to_u32("output elements", out_len)?;
    let last_row = row_offset
        .checked_add(table.n)
        .ok_or_else(|| shape("row range overflows".into()))?;
    to_u32("row_offset + rows", last_row)?;
    let ids_end = ids_offset
        .checked_add(n_tokens)
        .ok_or_else(|| shape("id range overflows".into()))?;
    to_u32("ids_offset + n_tokens", ids_end)?;
    need_bytes(
        "embedding",
        "qs",
        &table.qs,
        (wpr.saturating_mul(table.n) as u64).saturating_mul(4),
    )?;
    need_bytes(
        "embedding",
        "scales",
        &table.scales,
        (f.scale_words(table.n, table.k) as u64).saturating_mul(4),
    )?;
    need_bytes("embedding", "ids", ids, (ids_end as u64).saturating_mul(4))?;
    need_bytes("embedding", "out", out, (out_len as u64).saturating_mul(4))?;

    let params = k.gpu.uniform(
        "embedding params",
        &EmbeddingParams {
            n_rows: to_u32("table rows", table.n)?,
            k: table.k as u32,
            row_offset: row_offset as u32,
            ids_offset: ids_offset as u32,
            n_tokens: n_tokens as u32,
            words_per_row: wpr as u32,
            blocks_per_row: if f.is_quantized() {
                (table.k / f.block_size()) as u32
            } else {
                0
            },
            _pad: 0,
        },
    )?;
    k.dispatch(
        &spec(f),
        &[&params, &table.qs, &table.scales, ids, out],
        [groups_x, n_tokens as u32, 1],
    )
}
