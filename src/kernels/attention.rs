//! Attention over the f16 KV cache: split-KV decode (flash-decoding) and causal prefill.
//!
//! Both kernels share `wgsl/attention_core.wgsl`: a workgroup owns one KV head and the query
//! rows that read it (the GQA group for decode; a block of tokens x the group for prefill),
//! stages K/V tiles in workgroup memory once for all of them, and runs an online softmax in
//! the exp2 domain with f32 accumulation. Per-step lengths come from the step uniform
//! ([`super::StepParams`]); grids are fixed at build time, so one [`Dispatch`] serves every
//! token.
//!
//! Decode pass 1 has native variants (`vulkan_overrides/attention_decode.comp`,
//! `metal_overrides/attention_decode.metal`) for the head dims and GQA groups the models use;
//! they bind the same layout and write the same partials, so the WGSL merge pass serves both.

use bytemuck::{Pod, Zeroable};

use super::kv_cache::{check_cache, check_step};
use super::{Binding, Dispatch, KernelSpec, Kernels, NativeKernel};
use crate::error::{Error, Result};
use crate::gpu::{AdapterClass, Capabilities};

/// Specs of every pipeline of this family that has a native variant (see
/// [`super::native_specs`]): decode pass 1 at each native head dim, with the natives attached
/// whatever the device (the registry checks the backend; [`decode_spec`] the device limits).
pub fn native_specs() -> Vec<KernelSpec> {
    NATIVE_HEAD_DIMS
        .iter()
        .filter_map(|&hd| {
            portable_decode_spec(&NATIVE_PLAN_CAPS, 8, 2, hd, false).map(|s| with_native(s, hd))
        })
        .collect()
}

/// For the catalog: a pass-1 decode and a prefill spec for each workgroup-memory size the
/// planner can choose (with and without `SMALL_SMEM`), under the WebGPU default limits. Their
/// op names and preprocessor defines are those of every attention pipeline the registry
/// builds (the override constants depend on the device and the head shape).
pub fn catalog_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for small in [false, true] {
        let mut p = plan(NATIVE_PLAN_CAPS, 8, 64, 4).expect("8 rows of head dim 64 fit");
        p.small = small;
        for name in ["attention_decode", "attention_prefill"] {
            v.push(core_spec(name, name, name, p, 8));
        }
    }
    v
}

/// Head dims of the native decode kernels (`vulkan_overrides/attention_decode.comp` builds one
/// SPIR-V module per head dim, `metal_overrides/attention_decode.metal` one entry per head dim):
/// 32 for the synthetic test checkpoints, 64 (SmolLM2, Llama-3.2-1B, Qwen2.5-0.5B) and 128
/// (Llama-3-8B, Qwen3).
pub const NATIVE_HEAD_DIMS: [usize; 3] = [32, 64, 128];
/// Query heads per KV head the native decode kernel serves at most (its row sets hold two rows
/// each of four).
pub const NATIVE_MAX_GROUP: usize = 8;
/// The native decode kernel's fixed geometry: invocations per workgroup, keys per tile.
const NATIVE_WG: usize = 128;
const NATIVE_TILE: usize = 32;

/// Workgroup memory the native decode kernel declares at `head_dim` (bytes; the GLSL's, which
/// is the larger of the two: the MSL has no score array): padded K tile, V tile, q rows, scores
/// and probabilities, alpha and m, and the key-slice reduction arrays.
fn native_smem_bytes(head_dim: usize) -> usize {
    let u = head_dim / 8;
    let (t, g, wg) = (NATIVE_TILE, NATIVE_MAX_GROUP, NATIVE_WG);
    16 * t * (u + 1)
        + 16 * t * u
        + 4 * g * head_dim
        + 2 * 4 * g * t
        + 2 * 4 * g
        + 2 * 16 * wg
        + 4 * wg
}

/// Limits under which [`native_specs`] plans the portable side of its specs: the WebGPU
/// defaults (the portable plan only fixes the WGSL constants of those listing specs).
const NATIVE_PLAN_CAPS: PlanLimits = PlanLimits {
    storage: 16384,
    invocations: 256,
};

/// The device limits the portable plan reads.
#[derive(Debug, Clone, Copy)]
struct PlanLimits {
    storage: u32,
    invocations: u32,
}

impl From<&Capabilities> for PlanLimits {
    fn from(c: &Capabilities) -> Self {
        PlanLimits {
            storage: c.max_compute_workgroup_storage_size,
            invocations: c.max_compute_invocations_per_workgroup,
        }
    }
}

/// `spec` with the native decode kernels for `head_dim` attached (both backends).
fn with_native(mut spec: KernelSpec, head_dim: usize) -> KernelSpec {
    let (vk, mtl) = match head_dim {
        32 => ("attention_decode.hd32", "attention_decode_hd32"),
        64 => ("attention_decode.hd64", "attention_decode_hd64"),
        128 => ("attention_decode.hd128", "attention_decode_hd128"),
        _ => return spec,
    };
    spec.native_vulkan = Some(NativeKernel {
        family: vk,
        entry: "main",
        workgroup_size: [NATIVE_WG as u32, 1, 1],
        ..Default::default()
    });
    spec.native_metal = Some(NativeKernel {
        family: "attention_decode",
        entry: mtl,
        workgroup_size: [NATIVE_WG as u32, 1, 1],
        ..Default::default()
    });
    spec
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct AttentionParams {
    pub n_heads: u32,
    pub n_splits: u32,
    pub capacity: u32,
    pub max_tokens: u32,
    pub scale_log2e: f32,
    /// Bit 0: DIRECT (one split, normalised output). The WGSL reads the DIRECT override
    /// constant instead; native kernels get none.
    pub flags: u32,
    /// Query heads per KV head (the WGSL's override constant G), for native kernels.
    pub group: u32,
    pub _pad: u32,
}

/// `AttentionParams::flags` bit: pass 1 writes normalised rows (no merge pass).
pub const FLAG_DIRECT: u32 = 1;

/// Upper bound on output words per invocation (`MAX_ACC` in the WGSL).
const MAX_ACC: usize = 8;
/// Keys per staged tile at most: more only lengthens the serial softmax step.
const MAX_TILE: usize = 32;
/// Rows of a prefill workgroup at most (tokens x heads of a group).
const MAX_PREFILL_ROWS: usize = 64;
/// Invocations of the merge pass (loops over head_dim / 2 words).
const MERGE_WG: u32 = 64;

/// Words of the kernels' workgroup array (`smem` in attention_core.wgsl): 16 KiB, the WebGPU
/// minimum, or half of it with `SMALL_SMEM`.
const SMEM_WORDS: usize = 4096;
const SMALL_SMEM_WORDS: usize = 2048;

/// Workgroup geometry of one attention pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Plan {
    rows: usize,
    head_dim: usize,
    tile: usize,
    wg: usize,
    acc: usize,
    small: bool,
}

impl Plan {
    /// Region offsets (words) in the order of attention_core.wgsl: q, K, V, scores, m, l,
    /// alpha, key end; the last entry is the total.
    fn offsets(&self) -> [usize; 9] {
        let hw = self.head_dim / 2;
        let sizes = [
            self.rows * self.head_dim,
            self.tile * (hw + 1),
            self.tile * hw,
            self.rows * self.tile,
            self.rows,
            self.rows,
            self.rows,
            self.rows,
        ];
        let mut off = [0; 9];
        for (i, s) in sizes.iter().enumerate() {
            off[i + 1] = off[i] + s;
        }
        off
    }
}

/// Fits `rows` query rows of `head_dim` into the device's workgroup memory and invocation
/// limits with a tile of at least `min_tile` keys; `None` when it does not fit.
fn plan(caps: PlanLimits, rows: usize, head_dim: usize, min_tile: usize) -> Option<Plan> {
    let hw = head_dim / 2;
    let budget = (caps.storage as usize / 4).min(SMEM_WORDS);
    // q + m, l, alpha, end per row; K row (padded) + V row + one score per row, per key.
    let fixed = rows * head_dim + 4 * rows;
    let per_key = (hw + 1) + hw + rows;
    let tile = (budget.checked_sub(fixed)? / per_key).min(MAX_TILE);
    if tile < min_tile {
        return None;
    }
    let units = rows * hw;
    let max_wg = (caps.invocations as usize).min(256);
    let wg = units.next_power_of_two().clamp(64.min(max_wg), max_wg);
    let acc = units.div_ceil(wg);
    if acc > MAX_ACC {
        return None;
    }
    let mut p = Plan {
        rows,
        head_dim,
        tile,
        wg,
        acc,
        small: false,
    };
    p.small = p.offsets()[8] <= SMALL_SMEM_WORDS;
    Some(p)
}

fn core_spec(
    op: &str,
    family: &'static str,
    entry: &'static str,
    p: Plan,
    group: usize,
) -> KernelSpec {
    let hw = p.head_dim / 2;
    let off = p.offsets();
    let mut spec = KernelSpec::new(
        op,
        family,
        entry,
        &[
            Binding::Uniform,
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
    )
    .constant("WG", p.wg as u32)
    .constant("HD", p.head_dim as u32)
    .constant("HW", hw as u32)
    .constant("KSTRIDE", (hw + 1) as u32)
    .constant("ROWS", p.rows as u32)
    .constant("T", p.tile as u32)
    .constant("ACC", p.acc as u32)
    .constant("G", group as u32);
    for (name, o) in [
        "Q_OFF", "K_OFF", "V_OFF", "S_OFF", "M_OFF", "L_OFF", "A_OFF", "E_OFF",
    ]
    .into_iter()
    .zip(off)
    {
        spec = spec.constant(name, o as u32);
    }
    if p.small {
        spec = spec.define("SMALL_SMEM");
    }
    spec
}

#[allow(clippy::too_many_arguments)]
fn check_common(
    what: &str,
    k: &Kernels,
    q: &wgpu::Buffer,
    cache_k: &wgpu::Buffer,
    cache_v: &wgpu::Buffer,
    step: &wgpu::Buffer,
    out: &wgpu::Buffer,
    rows: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
) -> Result<()> {
    check_cache(what, n_kv_heads, head_dim, capacity, &[cache_k, cache_v])?;
    check_step(what, step)?;
    if n_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::Shape(format!(
            "{what}: {n_heads} query heads are not a multiple of {n_kv_heads} KV heads"
        )));
    }
    let need = (rows * n_heads * head_dim * 4) as u64;
    for (name, b) in [("q", q), ("out", out)] {
        if b.size() < need {
            return Err(Error::Shape(format!(
                "{what}: {name} holds {} bytes, needs {need}",
                b.size()
            )));
        }
    }
    let max_dim = k.gpu.caps.max_compute_workgroups_per_dimension as usize;
    if n_kv_heads > max_dim || n_heads > max_dim {
        return Err(Error::Shape(format!("{what}: too many heads for the grid")));
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn params(
    k: &Kernels,
    label: &str,
    n_heads: usize,
    n_kv_heads: usize,
    n_splits: usize,
    capacity: usize,
    max_tokens: usize,
    scale: f32,
    flags: u32,
) -> Result<wgpu::Buffer> {
    k.gpu.uniform(
        label,
        &AttentionParams {
            n_heads: n_heads as u32,
            n_splits: n_splits as u32,
            capacity: capacity as u32,
            max_tokens: max_tokens as u32,
            scale_log2e: scale * std::f32::consts::LOG2_E,
            flags,
            group: (n_heads / n_kv_heads) as u32,
            _pad: 0,
        },
    )
}

/// A built decode attention: pass 1 and, with more than one split, the merge pass. Record
/// `dispatches` in order.
#[derive(Debug)]
pub struct DecodeAttention {
    pub dispatches: Vec<Dispatch>,
    /// Partials of the split-KV pass (absent with one split); kept with the dispatches.
    pub scratch: Option<wgpu::Buffer>,
    pub n_splits: usize,
}

/// Pass-1 spec for a decode attention geometry (`None` if the group does not fit the portable
/// kernel). It carries the native kernels when they cover the shape on this device: head_dim
/// in [`NATIVE_HEAD_DIMS`], at most [`NATIVE_MAX_GROUP`] heads per KV head, the workgroup
/// memory and invocations they declare, and on Metal an Apple GPU (the MSL's softmax step
/// reduces over a 32-wide simdgroup). Elsewhere the registry runs the WGSL kernel.
pub fn decode_spec(
    caps: &Capabilities,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    direct: bool,
) -> Option<KernelSpec> {
    let mut spec = portable_decode_spec(&caps.into(), n_heads, n_kv_heads, head_dim, direct)?;
    let group = n_heads / n_kv_heads;
    let fits = group <= NATIVE_MAX_GROUP
        && native_smem_bytes(head_dim) <= caps.max_compute_workgroup_storage_size as usize
        && NATIVE_WG <= caps.max_compute_invocations_per_workgroup as usize;
    if fits {
        spec = with_native(spec, head_dim);
        if caps.class != AdapterClass::Apple {
            spec.native_metal = None;
        }
    }
    Some(spec)
}

fn portable_decode_spec(
    caps: &PlanLimits,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    direct: bool,
) -> Option<KernelSpec> {
    let group = n_heads / n_kv_heads;
    let p = plan(*caps, group, head_dim, 4)?;
    Some(
        core_spec(
            "attention_decode",
            "attention_decode",
            "attention_decode",
            p,
            group,
        )
        .constant("DIRECT", direct as u32),
    )
}

/// The merge pass over the split partials. It has no native variant on purpose: it reads
/// `n_splits x (head_dim + 2)` floats per query head (a few KiB per layer) and writes one row,
/// so its time is the dispatch itself, which a native kernel would not shorten; the WGSL
/// serves the partials of either pass-1 variant (same layout).
pub fn merge_spec(head_dim: usize) -> KernelSpec {
    KernelSpec::new(
        "attention_merge",
        "attention_decode",
        "attention_merge",
        &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
    )
    .define("MERGE")
    .constant("WG", MERGE_WG)
    .constant("HW", (head_dim / 2) as u32)
}

/// Decode attention: `out[h] = softmax(q[h] . K[kv(h)][0..kv_len] * scale) V[kv(h)]` for each
/// query head `h` (q, out f32 `[n_heads * head_dim]`), where `kv(h) = h / (n_heads /
/// n_kv_heads)` and `kv_len = step.kv_len` (clamped to `capacity`). The keys are split over
/// `n_splits` workgroups per KV head, merged by a second pass when `n_splits > 1`.
#[allow(clippy::too_many_arguments)]
pub fn attention_decode(
    k: &Kernels,
    q: &wgpu::Buffer,
    cache_k: &wgpu::Buffer,
    cache_v: &wgpu::Buffer,
    step: &wgpu::Buffer,
    out: &wgpu::Buffer,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    scale: f32,
    n_splits: usize,
) -> Result<DecodeAttention> {
    let what = "attention_decode";
    check_common(
        what, k, q, cache_k, cache_v, step, out, 1, n_heads, n_kv_heads, head_dim, capacity,
    )?;
    let caps = &k.gpu.caps;
    if n_splits == 0 || n_splits > caps.max_compute_workgroups_per_dimension as usize {
        return Err(Error::Shape(format!("{what}: {n_splits} splits")));
    }
    let direct = n_splits == 1;
    let spec = decode_spec(caps, n_heads, n_kv_heads, head_dim, direct).ok_or_else(|| {
        Error::Unsupported(format!(
            "{what}: a GQA group of {} heads x head_dim {head_dim} does not fit in {} bytes of workgroup memory",
            n_heads / n_kv_heads,
            caps.max_compute_workgroup_storage_size
        ))
    })?;
    let params = params(
        k,
        "attention_decode params",
        n_heads,
        n_kv_heads,
        n_splits,
        capacity,
        1,
        scale,
        if direct { FLAG_DIRECT } else { 0 },
    )?;
    // One workgroup per (KV head, split) for the WGSL and the native kernels alike (the
    // native kernel's fixed 128-invocation split is inside the workgroup).
    let grid = [n_kv_heads as u32, n_splits as u32, 1];
    if direct {
        let d = k.dispatch(&spec, &[&params, step, q, cache_k, cache_v, out], grid)?;
        return Ok(DecodeAttention {
            dispatches: vec![d],
            scratch: None,
            n_splits,
        });
    }
    // o (head_dim f32) plus (m, l) per (head, split).
    let scratch_bytes = (n_heads * n_splits * (head_dim + 2) * 4) as u64;
    let scratch = k.gpu.storage_buffer("attention partials", scratch_bytes)?;
    let pass1 = k.dispatch(&spec, &[&params, step, q, cache_k, cache_v, &scratch], grid)?;
    let merge = k.dispatch(
        &merge_spec(head_dim),
        &[&params, &scratch, out],
        [n_heads as u32, 1, 1],
    )?;
    Ok(DecodeAttention {
        dispatches: vec![pass1, merge],
        scratch: Some(scratch),
        n_splits,
    })
}

/// Splits so that `n_kv_heads x n_splits` workgroups cover the GPU a few times over, with at
/// least 64 keys per split when the cache is full (short contexts leave splits empty; those
/// exit after writing a neutral partial).
pub fn choose_splits(caps: &Capabilities, n_kv_heads: usize, capacity: usize) -> usize {
    // Rough workgroups in flight x 2-4 per adapter class; the exact core count is not exposed.
    let target: usize = match caps.class {
        AdapterClass::Nvidia | AdapterClass::Amd => 512,
        AdapterClass::Apple | AdapterClass::Intel | AdapterClass::Other => 128,
        AdapterClass::Cpu => 16,
    };
    let by_occupancy = target.div_ceil(n_kv_heads.max(1));
    let by_length = (capacity / 64).max(1);
    by_occupancy
        .min(by_length)
        .min(256)
        .min(caps.max_compute_workgroups_per_dimension as usize)
        .max(1)
}

/// Pass spec and tokens per workgroup for prefill attention (`None` if nothing fits).
pub fn prefill_spec(
    caps: &Capabilities,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    max_tokens: usize,
) -> Option<(KernelSpec, usize)> {
    let group = n_heads / n_kv_heads;
    let max_bq = (MAX_PREFILL_ROWS / group).clamp(1, max_tokens.max(1));
    // Prefer more tokens per workgroup (K/V tiles reused by more rows) while keeping tiles of
    // at least 16 keys; fall back to one token with whatever tile fits.
    let (bq, p) = (1..=max_bq)
        .rev()
        .find_map(|bq| plan(caps.into(), bq * group, head_dim, 16).map(|p| (bq, p)))
        .or_else(|| plan(caps.into(), group, head_dim, 4).map(|p| (1, p)))?;
    let spec = core_spec(
        "attention_prefill",
        "attention_prefill",
        "attention_prefill",
        p,
        group,
    )
    .constant("BQ", bq as u32);
    Some((spec, bq))
}

/// Causal prefill attention: q, out f32 `[n_tokens][n_heads * head_dim]`; query `t` (absolute
/// position `step.pos + t`) attends to cache keys `0 ..= step.pos + t` of its KV head. The
/// grid covers `max_tokens` queries; `step.n_tokens` of them are live.
#[allow(clippy::too_many_arguments)]
pub fn attention_prefill(
    k: &Kernels,
    q: &wgpu::Buffer,
    cache_k: &wgpu::Buffer,
    cache_v: &wgpu::Buffer,
    step: &wgpu::Buffer,
    out: &wgpu::Buffer,
    max_tokens: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
    scale: f32,
) -> Result<Dispatch> {
    let what = "attention_prefill";
    if max_tokens == 0 {
        return Err(Error::Shape(format!("{what}: max_tokens is 0")));
    }
    check_common(
        what, k, q, cache_k, cache_v, step, out, max_tokens, n_heads, n_kv_heads, head_dim,
        capacity,
    )?;
    let caps = &k.gpu.caps;
    let (spec, bq) =
        prefill_spec(caps, n_heads, n_kv_heads, head_dim, max_tokens).ok_or_else(|| {
            Error::Unsupported(format!(
                "{what}: a GQA group of {} heads x head_dim {head_dim} does not fit in {} bytes of workgroup memory",
                n_heads / n_kv_heads,
                caps.max_compute_workgroup_storage_size
            ))
        })?;
    let blocks = max_tokens.div_ceil(bq);
    if blocks > caps.max_compute_workgroups_per_dimension as usize {
        return Err(Error::Shape(format!(
            "{what}: {max_tokens} tokens exceed the grid"
        )));
    }
    let params = params(
        k,
        "attention_prefill params",
        n_heads,
        n_kv_heads,
        1,
        capacity,
        max_tokens,
        scale,
        0,
    )?;
    k.dispatch(
        &spec,
        &[&params, step, q, cache_k, cache_v, out],
        [n_kv_heads as u32, blocks as u32, 1],
    )
}
