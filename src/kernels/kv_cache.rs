//! KV-cache write: f32 K/V rows of one step into the per-layer cache, f16 or q8_0
//! ([`KvType`]).
//!
//! f16 layout per layer: `[n_kv_heads][capacity][head_dim]` halves, stored as `u32` words of
//! two (element `2i` in the low half).
//!
//! q8_0 layout per layer (one `u32` buffer, two planes; `wgsl/kv_q8.wgsl` reads and writes
//! it):
//! - codes: `[n_kv_heads][capacity][head_dim]` int8, four to a word (element `4i` in the low
//!   byte), `head_dim / 4` words per (head, position), so a row starts on a 16-byte boundary
//!   and a tile of keys is one contiguous run of words;
//! - scales: from word `n_kv_heads * capacity * head_dim / 4`, one f32 per block of 32
//!   consecutive elements of a row, `[n_kv_heads][capacity][head_dim / 32]`.
//!
//! An element is `code * scale` with `scale = max|x| / 127` over its block and `code =
//! round(x / scale)` (GGML's Q8_0, rounding ties to even: `|x - code * scale| <= scale / 2`). An f32 scale
//! rather than GGML's f16 keeps the dequantised value exact in f32 and gives every block its
//! own word, so writers never share one: 36 bytes per 32 values, 0.5625 of the f16 cache.
//! Attention kernels read the same layouts.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{grid_1d, Binding, Dispatch, KernelSpec, Kernels, StepParams};
use crate::error::{Error, Result};

/// The KV-cache write, into an f16 or a q8_0 cache.
pub static FAMILY: Family = Family {
    name: "kv_cache",
    wgsl: &["kv_cache", "kv_cache_q8"],
    pipelines: || vec![spec(KvType::F16), spec(KvType::Q8_0)],
    native_coverage: None,
    checks: None,
    bench: None,
};

/// How the KV cache stores keys and values.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum KvType {
    /// Halves, two to a word.
    #[default]
    #[serde(rename = "f16")]
    F16,
    /// int8 codes with an f32 scale per block of 32 values (see the module docs).
    #[serde(rename = "q8_0")]
    Q8_0,
}

impl KvType {
    pub const ALL: [KvType; 2] = [KvType::F16, KvType::Q8_0];

    /// The name `--kv-type` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            KvType::F16 => "f16",
            KvType::Q8_0 => "q8_0",
        }
    }

    /// Bytes of one (head, position) row of `head_dim` values (q8_0: codes and scales).
    pub fn row_bytes(self, head_dim: usize) -> u64 {
        let hd = head_dim as u64;
        match self {
            KvType::F16 => hd * 2,
            KvType::Q8_0 => hd + hd.div_ceil(Q8_BLOCK as u64) * 4,
        }
    }

    /// Why a cache of this type cannot hold heads of `head_dim` (f16: it must be even;
    /// q8_0: a multiple of its 32-value block), or None when it can.
    pub fn head_dim_problem(self, head_dim: usize) -> Option<String> {
        let (multiple, why) = match self {
            KvType::F16 => (2, "two f16 per cache word"),
            KvType::Q8_0 => (Q8_BLOCK, "whole 32-value blocks"),
        };
        (head_dim == 0 || !head_dim.is_multiple_of(multiple)).then(|| {
            format!(
                "a {} KV cache needs head_dim a multiple of {multiple} ({why}); this one is {head_dim}",
                self.name()
            )
        })
    }
}

impl std::fmt::Display for KvType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for KvType {
    type Err = Error;

    fn from_str(s: &str) -> Result<KvType> {
        KvType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "unknown KV cache type {s:?} (expected f16 or q8_0)"
                ))
            })
    }
}

/// Values per q8_0 block (one scale each).
pub const Q8_BLOCK: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct KvWriteParams {
    pub n_kv_heads: u32,
    pub half_dim: u32,
    pub capacity: u32,
    pub max_tokens: u32,
}

/// Invocations per workgroup: one per cache word (f16) or per 32-value block (q8_0).
const WG: u32 = 64;

/// The write into a cache of `kv_type` (op `kv_write`, or `kv_write_q8` from
/// `wgsl/kv_cache_q8.wgsl`).
pub fn spec(kv_type: KvType) -> KernelSpec {
    let (op, family) = match kv_type {
        KvType::F16 => ("kv_write", "kv_cache"),
        KvType::Q8_0 => ("kv_write_q8", "kv_cache_q8"),
    };
    KernelSpec::new(
        op,
        family,
        "kv_write",
        &[
            Binding::Uniform,
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
            Binding::ReadWrite,
        ],
    )
    .constant("WG", WG)
}

/// Bytes of one layer's K (or V) cache of `kv_type`.
pub fn cache_bytes(kv_type: KvType, n_kv_heads: usize, head_dim: usize, capacity: usize) -> u64 {
    n_kv_heads as u64 * capacity as u64 * kv_type.row_bytes(head_dim)
}

/// The geometry and type of one layer's cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions it holds.
    pub capacity: usize,
    pub kv_type: KvType,
}

impl CacheShape {
    /// Bytes of one layer's K (or V) cache.
    pub fn bytes(&self) -> u64 {
        cache_bytes(self.kv_type, self.n_kv_heads, self.head_dim, self.capacity)
    }

    /// Checks the geometry (non-empty, a head_dim the type can pack, 32-bit word indexing)
    /// and that both cache buffers hold it.
    pub(crate) fn check(&self, what: &str, cache: KvPair) -> Result<()> {
        let (n_kv_heads, head_dim, capacity) = (self.n_kv_heads, self.head_dim, self.capacity);
        if n_kv_heads == 0 || head_dim == 0 || capacity == 0 {
            return Err(Error::Shape(format!(
                "{what}: cache of {n_kv_heads} heads x {capacity} x {head_dim}"
            )));
        }
        if let Some(p) = self.kv_type.head_dim_problem(head_dim) {
            return Err(Error::Shape(format!("{what}: {p}")));
        }
        let need = self.bytes();
        if need > u32::MAX as u64 * 4 {
            return Err(Error::Shape(format!(
                "{what}: a cache of {need} bytes exceeds 32-bit word indexing"
            )));
        }
        need_bytes(what, "cache k", cache.k, need)?;
        need_bytes(what, "cache v", cache.v, need)
    }
}

/// A key buffer and a value buffer: one layer's cache, or one step's new K and V rows.
#[derive(Debug, Clone, Copy)]
pub struct KvPair<'a> {
    pub k: &'a wgpu::Buffer,
    pub v: &'a wgpu::Buffer,
}

/// Checks that `step` holds the per-step uniform.
pub(crate) fn check_step(what: &str, step: &wgpu::Buffer) -> Result<()> {
    need_bytes(
        what,
        "step uniform",
        step,
        std::mem::size_of::<StepParams>() as u64,
    )
}

/// Writes `new.k`, `new.v` (f32 `[n_tokens][n_kv_heads * head_dim]`) into the caches at
/// positions `step.pos .. step.pos + step.n_tokens`. Values are clamped to the finite f16
/// range and rounded to nearest f16 (f16 cache) or quantised per 32-value block (q8_0);
/// positions at or past `capacity` are dropped. The grid covers `max_tokens` rows.
pub fn kv_write(
    k: &Kernels,
    new: KvPair,
    cache: KvPair,
    step: &wgpu::Buffer,
    shape: &CacheShape,
    max_tokens: usize,
) -> Result<Dispatch> {
    let what = "kv_write";
    shape.check(what, cache)?;
    check_step(what, step)?;
    if max_tokens == 0 {
        return Err(Error::Shape("kv_write: max_tokens is 0".into()));
    }
    let row = shape.n_kv_heads * shape.head_dim;
    let need = (max_tokens * row * 4) as u64;
    need_bytes(what, "k_new", new.k, need)?;
    need_bytes(what, "v_new", new.v, need)?;
    // Invocations: one per cache word (f16) or per block (q8_0).
    let per_unit = match shape.kv_type {
        KvType::F16 => 2,
        KvType::Q8_0 => Q8_BLOCK,
    };
    let units = max_tokens as u64 * row as u64 / per_unit as u64;
    let max_dim = k.gpu.caps.max_compute_workgroups_per_dimension;
    let groups = units.div_ceil(WG as u64);
    if units > u32::MAX as u64 || groups > max_dim as u64 * max_dim as u64 {
        return Err(Error::Shape(format!(
            "kv_write: {units} invocations exceed the grid"
        )));
    }
    let params = k.gpu.uniform(
        "kv_write params",
        &KvWriteParams {
            n_kv_heads: shape.n_kv_heads as u32,
            half_dim: (shape.head_dim / 2) as u32,
            capacity: shape.capacity as u32,
            max_tokens: max_tokens as u32,
        },
    )?;
    k.dispatch(
        &spec(shape.kv_type),
        &[&params, step, new.k, new.v, cache.k, cache.v],
        grid_1d(groups as u32, max_dim),
    )
}
