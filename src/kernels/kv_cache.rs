//! KV-cache write: f32 K/V rows of one step into the per-layer f16 cache.
//!
//! Cache layout per layer: f16 `[n_kv_heads][capacity][head_dim]`, stored as `u32` words of
//! two halves (element `2i` in the low half). Attention kernels read the same layout.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{grid_1d, Binding, Dispatch, KernelSpec, Kernels, StepParams};
use crate::error::{Error, Result};

/// The KV-cache write.
pub static FAMILY: Family = Family {
    name: "kv_cache",
    wgsl: &["kv_cache"],
    pipelines: || vec![spec()],
    native_coverage: None,
    checks: None,
    bench: None,
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct KvWriteParams {
    pub n_kv_heads: u32,
    pub half_dim: u32,
    pub capacity: u32,
    pub max_tokens: u32,
}

/// One invocation per cache word.
const WG: u32 = 64;

pub fn spec() -> KernelSpec {
    KernelSpec::new(
        "kv_write",
        "kv_cache",
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

/// Bytes of one layer's K (or V) cache.
pub fn cache_bytes(n_kv_heads: usize, head_dim: usize, capacity: usize) -> u64 {
    n_kv_heads as u64 * capacity as u64 * head_dim as u64 * 2
}

/// The geometry of one layer's cache: f16 `[n_kv_heads][capacity][head_dim]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheShape {
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions it holds.
    pub capacity: usize,
}

impl CacheShape {
    /// Bytes of one layer's K (or V) cache.
    pub fn bytes(&self) -> u64 {
        cache_bytes(self.n_kv_heads, self.head_dim, self.capacity)
    }

    /// Checks the geometry (non-empty, even head_dim, 32-bit word indexing) and that both
    /// cache buffers hold it.
    pub(crate) fn check(&self, what: &str, cache: KvPair) -> Result<()> {
        let (n_kv_heads, head_dim, capacity) = (self.n_kv_heads, self.head_dim, self.capacity);
        if n_kv_heads == 0 || head_dim == 0 || capacity == 0 {
            return Err(Error::Shape(format!(
                "{what}: cache of {n_kv_heads} heads x {capacity} x {head_dim}"
            )));
        }
        if !head_dim.is_multiple_of(2) {
            return Err(Error::Shape(format!(
                "{what}: head_dim {head_dim} must be even (two f16 per cache word)"
            )));
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
/// positions `step.pos .. step.pos + step.n_tokens`. Values are rounded to nearest f16 and
/// clamped to the finite f16 range; positions at or past `capacity` are dropped. The grid
/// covers `max_tokens` rows.
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
    let words = max_tokens as u64 * row as u64 / 2;
    let max_dim = k.gpu.caps.max_compute_workgroups_per_dimension;
    let groups = words.div_ceil(WG as u64);
    if words > u32::MAX as u64 || groups > max_dim as u64 * max_dim as u64 {
        return Err(Error::Shape(format!(
            "kv_write: {words} words exceed the grid"
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
        &spec(),
        &[&params, step, new.k, new.v, cache.k, cache.v],
        grid_1d(groups as u32, max_dim),
    )
}
