//! Rotary position embedding (RoPE), in place on f32 activations.
//!
//! Positions come from the shared per-step uniform ([`super::StepParams`]): token `t` of the
//! step sits at `step.pos + t`. The grid covers `max_tokens` rows and is fixed when the
//! dispatch is built; invocations past `step.n_tokens` exit.
//!
//! The frequency table is computed on the CPU ([`inv_freq`]), so frequency scaling schemes
//! (linear, llama3, YaRN's per-dimension factors) are just a different table.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::attention::AttentionShape;
use super::family::Family;
use super::kv_cache::{check_step, KvPair, KvType};
use super::{grid_1d, Binding, Dispatch, KernelSpec, Kernels};
use crate::error::{Error, Result};

/// RoPE in place, and RoPE fused with the KV-cache write.
pub static FAMILY: Family = Family {
    name: "rope",
    wgsl: &["rope", "rope_kv", "rope_kv_q8"],
    pipelines: || {
        vec![
            spec(),
            rope_kv_spec(KvType::F16),
            rope_kv_spec(KvType::Q8_0),
        ]
    },
    native_coverage: None,
    checks: None,
    bench: None,
};

/// How a layer rotates its heads, shared by decode and prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RopeShape {
    pub head_dim: usize,
    /// Leading dimensions of each head that rotate (even, at most `head_dim`); the rest pass
    /// through.
    pub rot_dim: usize,
    /// Rotated pairs are `(i, i + rot_dim/2)` (HF's `rotate_half`, llama.cpp's "neox"
    /// mode), else `(2i, 2i+1)` (llama.cpp's "norm" mode).
    pub half_split: bool,
}

/// Where each token sits and how fast each pair turns: the step uniform (token `t` of the
/// step is at `step.pos + t`) and the f32 frequency table ([`inv_freq`]).
#[derive(Debug, Clone, Copy)]
pub struct RopeTables<'a> {
    pub step: &'a wgpu::Buffer,
    pub inv_freq: &'a wgpu::Buffer,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RopeParams {
    pub n_heads: u32,
    pub head_dim: u32,
    pub half_rot: u32,
    pub half_split: u32,
    pub max_tokens: u32,
    pub _pad: [u32; 3],
}

/// Invocations per workgroup: one per rotated pair, so any multiple of the subgroup size works.
const WG: u32 = 64;

pub fn spec() -> KernelSpec {
    KernelSpec::new(
        "rope",
        "rope",
        "rope",
        &[
            Binding::Uniform,
            Binding::Uniform,
            Binding::Read,
            Binding::ReadWrite,
        ],
    )
    .constant("WG", WG)
}

/// `theta^(-2i/rot_dim)` for `i in 0..rot_dim/2`, computed in f64 and rounded once to f32.
pub fn inv_freq(theta: f32, rot_dim: usize) -> Vec<f32> {
    (0..rot_dim / 2)
        .map(|i| (theta as f64).powf(-2.0 * i as f64 / rot_dim as f64) as f32)
        .collect()
}

/// Rotates `x` (f32 `[n_tokens][n_heads * head_dim]`) in place; token `t` has position
/// `step.pos + t`. The first `rot_dim` dimensions of each head rotate, the rest pass through.
/// The grid covers `max_tokens` rows.
pub fn rope(
    k: &Kernels,
    x: &wgpu::Buffer,
    n_heads: usize,
    tables: RopeTables,
    shape: &RopeShape,
    max_tokens: usize,
) -> Result<Dispatch> {
    let (head_dim, rot_dim) = (shape.head_dim, shape.rot_dim);
    if max_tokens == 0 || n_heads == 0 || head_dim == 0 {
        return Err(Error::Shape(format!(
            "rope of {max_tokens} tokens x {n_heads} heads x {head_dim}"
        )));
    }
    if rot_dim == 0 || !rot_dim.is_multiple_of(2) || rot_dim > head_dim {
        return Err(Error::Shape(format!(
            "rope: rot_dim {rot_dim} must be even, non-zero and at most head_dim {head_dim}"
        )));
    }
    let half_rot = rot_dim / 2;
    need_bytes("rope", "x", x, (max_tokens * n_heads * head_dim * 4) as u64)?;
    need_bytes("rope", "inv_freq", tables.inv_freq, (half_rot * 4) as u64)?;
    check_step("rope", tables.step)?;
    let pairs = max_tokens as u64 * n_heads as u64 * half_rot as u64;
    let caps = &k.gpu.caps;
    let max_dim = caps.max_compute_workgroups_per_dimension;
    let groups = pairs.div_ceil(WG as u64);
    if groups > max_dim as u64 * max_dim as u64 || pairs > u32::MAX as u64 {
        return Err(Error::Shape(format!("rope: {pairs} pairs exceed the grid")));
    }
    let params = k.gpu.uniform(
        "rope params",
        &RopeParams {
            n_heads: n_heads as u32,
            head_dim: head_dim as u32,
            half_rot: half_rot as u32,
            half_split: shape.half_split as u32,
            max_tokens: max_tokens as u32,
            _pad: [0; 3],
        },
    )?;
    k.dispatch(
        &spec(),
        &[&params, tables.step, tables.inv_freq, x],
        grid_1d(groups as u32, max_dim),
    )
}

/// WGSL mirror of `rope_kv.wgsl`'s `Params`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct RopeKvParams {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub half_split: u32,
    pub capacity: u32,
    pub max_tokens: u32,
    pub _pad: [u32; 2],
}

/// The fused RoPE and write into a cache of `kv_type` (op `rope_kv`, or `rope_kv_q8` from
/// `wgsl/rope_kv_q8.wgsl`).
pub fn rope_kv_spec(kv_type: KvType) -> KernelSpec {
    let (op, family) = match kv_type {
        KvType::F16 => ("rope_kv", "rope_kv"),
        KvType::Q8_0 => ("rope_kv_q8", "rope_kv_q8"),
    };
    KernelSpec::new(
        op,
        family,
        "rope_kv",
        &[
            Binding::Uniform,
            Binding::Uniform,
            Binding::Read,
            Binding::ReadWrite,
            Binding::ReadWrite,
            Binding::Read,
            Binding::ReadWrite,
            Binding::ReadWrite,
        ],
    )
    .constant("WG", WG)
}

/// Whether [`rope_kv`] handles this head shape (whole head rotated, head_dim % 4 == 0).
pub fn rope_kv_supported(head_dim: usize, rot_dim: usize) -> bool {
    rot_dim == head_dim && head_dim.is_multiple_of(4) && head_dim > 0
}

/// The buffers [`rope_kv`] binds: q and the step's new K rows (rotated in place), its V rows,
/// and the layer's cache.
#[derive(Debug, Clone, Copy)]
pub struct RopeKvBuffers<'a> {
    pub q: &'a wgpu::Buffer,
    pub new: KvPair<'a>,
    pub cache: KvPair<'a>,
}

/// RoPE on `q` (f32 `[tokens][n_heads * head_dim]`, in place) and `new.k`
/// (`[tokens][n_kv_heads * head_dim]`), then the rotated k and `new.v` written to the caches
/// (of `heads.kv_type`) at positions `step.pos..` (as [`super::kv_cache::kv_write`]): one
/// dispatch instead of three. The whole head must rotate ([`rope_kv_supported`]). With an f16
/// cache `new.k` is rotated in place too; with a q8_0 cache it is left as it was (each
/// block's invocation reads its values' RoPE partners from other blocks, so none may
/// overwrite them), and the cache holds the only rotated keys.
pub fn rope_kv(
    k: &Kernels,
    io: &RopeKvBuffers,
    tables: RopeTables,
    heads: &AttentionShape,
    rope: &RopeShape,
    max_tokens: usize,
) -> Result<Dispatch> {
    let what = "rope_kv";
    let (n_heads, n_kv_heads, head_dim) = (heads.n_heads, heads.n_kv_heads, heads.head_dim);
    if !rope_kv_supported(head_dim, rope.rot_dim)
        || rope.head_dim != head_dim
        || max_tokens == 0
        || n_heads == 0
    {
        return Err(Error::Shape(format!(
            "rope_kv of {max_tokens} tokens x {n_heads} heads x {head_dim}, rot_dim {} (the whole head must rotate, head_dim a multiple of 4)",
            rope.rot_dim
        )));
    }
    heads.cache().check(what, io.cache)?;
    check_step(what, tables.step)?;
    for (name, b, n) in [
        ("q", io.q, n_heads),
        ("k", io.new.k, n_kv_heads),
        ("v", io.new.v, n_kv_heads),
    ] {
        need_bytes(what, name, b, (max_tokens * n * head_dim * 4) as u64)?;
    }
    need_bytes(what, "inv_freq", tables.inv_freq, (head_dim / 2 * 4) as u64)?;
    let work = max_tokens as u64 * (n_heads + n_kv_heads) as u64 * (head_dim / 4) as u64;
    let max_dim = k.gpu.caps.max_compute_workgroups_per_dimension;
    let groups = work.div_ceil(WG as u64);
    if groups > max_dim as u64 * max_dim as u64 || work > u32::MAX as u64 {
        return Err(Error::Shape(format!(
            "rope_kv: {work} invocations exceed the grid"
        )));
    }
    let params = k.gpu.uniform(
        "rope_kv params",
        &RopeKvParams {
            n_heads: n_heads as u32,
            n_kv_heads: n_kv_heads as u32,
            head_dim: head_dim as u32,
            half_split: rope.half_split as u32,
            capacity: heads.capacity as u32,
            max_tokens: max_tokens as u32,
            _pad: [0; 2],
        },
    )?;
    let (q, kn, vn) = (io.q, io.new.k, io.new.v);
    k.dispatch(
        &rope_kv_spec(heads.kv_type),
        &[
            &params,
            tables.step,
            tables.inv_freq,
            q,
            kn,
            vn,
            io.cache.k,
            io.cache.v,
        ],
        grid_1d(groups as u32, max_dim),
    )
}
