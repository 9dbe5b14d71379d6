//! Attention over the KV cache (f16 or q8_0, [`KvType`]): split-KV decode (flash-decoding) and
//! causal prefill.
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
//! Prefill has native variants at head_dim 64 and 128 (`wgsl/attention_prefill_coop.wgsl` on
//! Vulkan with cooperative matrices, `metal_overrides/attention_prefill.metal` on Apple GPUs),
//! flash attention on matrix units with one geometry: 64 query rows per workgroup.
//! They read an f16 cache only: over a q8_0 cache decode and prefill are the ops
//! `attention_decode_kv_q8` and `attention_prefill_kv_q8` (the WGSL with `KV_Q8`), which have
//! no native variant.

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::kv_cache::{check_step, CacheShape, KvPair, KvType};
use super::{Binding, Dispatch, KernelSpec, Kernels, NativeKernel, NativeNeeds, Variant};
use crate::error::{Error, Result};
use crate::gpu::{AdapterClass, Capabilities};

pub mod cases;

/// The attention family: split-KV decode (pass 1 and the merge pass) and causal prefill, over
/// an f16 or a q8_0 cache; native decode pass 1 for [`NATIVE_HEAD_DIMS`] and GQA groups up to
/// [`NATIVE_MAX_GROUP`] over an f16 cache, native prefill on cooperative matrices for
/// [`PREFILL_COOP_HEAD_DIMS`].
pub static FAMILY: Family = Family {
    name: "attention",
    wgsl: &[
        "attention_decode",
        "attention_prefill",
        "attention_prefill_coop",
    ],
    pipelines,
    native_coverage: Some(native_coverage),
    checks: Some(cases::checks),
    bench: Some(cases::bench),
};

/// Decode pass 1 at each native head dim (natives attached) and with every define set the
/// planner can choose ([`planned_specs`]), the merge pass, then prefill likewise.
fn pipelines() -> Vec<KernelSpec> {
    let (decode, prefill): (Vec<_>, Vec<_>) = planned_specs()
        .into_iter()
        .partition(|s| s.op == "attention_decode");
    let mut v = native_specs();
    v.extend(decode);
    v.extend(lanes_listing());
    v.push(merge_spec(64));
    v.extend(prefill);
    v
}

fn native_coverage() -> String {
    let dims: Vec<String> = NATIVE_HEAD_DIMS.iter().map(|d| d.to_string()).collect();
    format!(
        "decode pass 1 at head_dim {} with up to {NATIVE_MAX_GROUP} query heads per KV head \
         and prefill at head_dim {} (Vulkan: cooperative matrices) over an f16 KV cache \
         (Metal: Apple GPUs); other shapes, a q8_0 KV cache (attention_decode_kv_q8, \
         attention_prefill_kv_q8) and the merge pass run the portable kernel",
        dims.join(", "),
        PREFILL_COOP_HEAD_DIMS.map(|d| d.to_string()).join(", ")
    )
}

/// Specs of every pipeline of this family that has a native variant (see
/// [`super::native_specs`]): decode pass 1 at each native head dim and prefill at each
/// cooperative-matrix head dim, planned for the WebGPU default limits (the natives' own limits
/// are in their [`NativeNeeds`]).
pub fn native_specs() -> Vec<KernelSpec> {
    let decode = NATIVE_HEAD_DIMS.iter().filter_map(|&hd| {
        portable_decode_spec(&NATIVE_PLAN_CAPS, 8, 2, hd, false, KvType::F16)
            .map(|s| with_native(s, hd))
    });
    let prefill = PREFILL_COOP_HEAD_DIMS.iter().filter_map(|&hd| {
        let p = plan(NATIVE_PLAN_CAPS, 8, hd, 4)?;
        let mut s = core_spec("attention_prefill", "attention_prefill", p, 4, KvType::F16)
            .constant("BQ", 2);
        s.native_vulkan = Some(prefill_coop());
        s.native_metal = prefill_metal(hd);
        Some(s)
    });
    decode.chain(prefill).collect()
}

/// A pass-1 decode and a prefill spec for each workgroup-memory size the planner can choose
/// (with and without `SMALL_SMEM`) and each cache type, under the WebGPU default limits. Their
/// op names and preprocessor defines are those of every attention pipeline the registry builds
/// (the override constants depend on the device and the head shape).
fn planned_specs() -> Vec<KernelSpec> {
    let mut v = Vec::new();
    for kv_type in KvType::ALL {
        for small in [false, true] {
            let mut p = plan(NATIVE_PLAN_CAPS, 8, 64, 4).expect("8 rows of head dim 64 fit");
            p.small = small;
            for name in ["attention_decode", "attention_prefill"] {
                v.push(core_spec(name, name, p, 8, kv_type));
            }
        }
    }
    v
}

/// The op of attention pass `family` (`attention_decode`, `attention_prefill`) over a cache of
/// `kv_type`: the family's name, with `_kv_q8` for a q8_0 cache (no native variant).
pub fn op_name(family: &str, kv_type: KvType) -> String {
    match kv_type {
        KvType::F16 => family.to_string(),
        KvType::Q8_0 => format!("{family}_kv_q8"),
    }
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

/// `spec` with the native decode kernels for `head_dim` attached (both backends). Both
/// declare [`native_smem_bytes`] of workgroup memory; the MSL's softmax step reduces over a
/// 32-wide simdgroup, so it runs on Apple GPUs only.
fn with_native(mut spec: KernelSpec, head_dim: usize) -> KernelSpec {
    let (vk, mtl) = match head_dim {
        32 => ("attention_decode.hd32", "attention_decode_hd32"),
        64 => ("attention_decode.hd64", "attention_decode_hd64"),
        128 => ("attention_decode.hd128", "attention_decode_hd128"),
        _ => return spec,
    };
    let needs = NativeNeeds {
        workgroup_storage: native_smem_bytes(head_dim) as u32,
        ..Default::default()
    };
    spec.native_vulkan = Some(NativeKernel {
        family: vk,
        entry: "main",
        workgroup_size: [NATIVE_WG as u32, 1, 1],
        needs,
        ..Default::default()
    });
    spec.native_metal = Some(NativeKernel {
        family: "attention_decode",
        entry: mtl,
        workgroup_size: [NATIVE_WG as u32, 1, 1],
        needs: NativeNeeds {
            adapter: Some(AdapterClass::Apple),
            ..needs
        },
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
/// Invocations of the merge pass: WG / (head_dim / 2) groups of splits per output word.
const MERGE_WG: u32 = 256;
/// Splits the merge pass takes at most (its weight array).
pub const MERGE_MAX_SPLITS: usize = 256;

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

/// The spec of pass `family` (entry of the same name) over a cache of `kv_type`.
fn core_spec(
    family: &'static str,
    entry: &'static str,
    p: Plan,
    group: usize,
    kv_type: KvType,
) -> KernelSpec {
    let hw = p.head_dim / 2;
    let off = p.offsets();
    let mut spec = KernelSpec::new(
        op_name(family, kv_type),
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
    if kv_type == KvType::Q8_0 {
        spec = spec.define("KV_Q8");
    }
    spec
}

/// The attention geometry of a layer, shared by decode and prefill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AttentionShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    /// Positions the cache holds.
    pub capacity: usize,
    /// Score scale (1 / sqrt(head_dim) unless the model says otherwise).
    pub scale: f32,
    /// How the cache stores keys and values.
    pub kv_type: KvType,
}

impl AttentionShape {
    /// The cache geometry this attention reads.
    pub fn cache(&self) -> CacheShape {
        CacheShape {
            n_kv_heads: self.n_kv_heads,
            head_dim: self.head_dim,
            capacity: self.capacity,
            kv_type: self.kv_type,
        }
    }

    /// Query heads per KV head.
    pub fn group(&self) -> usize {
        self.n_heads / self.n_kv_heads
    }
}

/// The buffers attention binds: q and out f32 `[tokens][n_heads * head_dim]`, the layer's
/// cache, and the step uniform (positions and lengths).
#[derive(Debug, Clone, Copy)]
pub struct AttentionBuffers<'a> {
    pub q: &'a wgpu::Buffer,
    pub cache: KvPair<'a>,
    pub step: &'a wgpu::Buffer,
    pub out: &'a wgpu::Buffer,
}

fn check_common(
    what: &str,
    k: &Kernels,
    io: &AttentionBuffers,
    s: &AttentionShape,
    rows: usize,
) -> Result<()> {
    s.cache().check(what, io.cache)?;
    check_step(what, io.step)?;
    let (n_heads, n_kv_heads) = (s.n_heads, s.n_kv_heads);
    if n_heads == 0 || !n_heads.is_multiple_of(n_kv_heads) {
        return Err(Error::Shape(format!(
            "{what}: {n_heads} query heads are not a multiple of {n_kv_heads} KV heads"
        )));
    }
    let need = (rows * n_heads * s.head_dim * 4) as u64;
    need_bytes(what, "q", io.q, need)?;
    need_bytes(what, "out", io.out, need)?;
    let max_dim = k.gpu.caps.max_compute_workgroups_per_dimension as usize;
    if n_kv_heads > max_dim || n_heads > max_dim {
        return Err(Error::Shape(format!("{what}: too many heads for the grid")));
    }
    Ok(())
}

/// The params uniform of one attention pipeline: `splits` KV splits, a grid of `max_tokens`
/// queries.
fn params(
    k: &Kernels,
    label: &str,
    s: &AttentionShape,
    (n_splits, max_tokens): (usize, usize),
    flags: u32,
) -> Result<wgpu::Buffer> {
    k.gpu.uniform(
        label,
        &AttentionParams {
            n_heads: s.n_heads as u32,
            n_splits: n_splits as u32,
            capacity: s.capacity as u32,
            max_tokens: max_tokens as u32,
            scale_log2e: s.scale * std::f32::consts::LOG2_E,
            flags,
            group: s.group() as u32,
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

/// The lanes form's pass 1 as listed for the catalog and `kernels check` (subgroups of 32, a
/// group of 4 at head_dim 128; the registry builds it for the device's subgroup sizes).
pub fn lanes_listing() -> Vec<KernelSpec> {
    KvType::ALL
        .into_iter()
        .map(|kv| lanes_spec((32, 32), 4, 128, false, kv))
        .collect()
}

/// How decode pass 1 is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeForm {
    /// K/V tiles staged in workgroup memory for the whole GQA group, barriers between the
    /// score, softmax and output steps of each tile (`attention_core.wgsl`); no subgroup
    /// operations. Has the native variants (f16 cache).
    Tiled,
    /// Each subgroup streams its own keys from the cache, scores with `subgroupAdd`, and
    /// keeps its own softmax state; no barrier inside the key loop (entry
    /// `attention_decode_lanes`), over either cache type; where [`lanes_unfit`] is None.
    Lanes,
}

/// Keys each subgroup of the lanes form loads per step (`KB` in the WGSL).
const LANES_KEYS: u32 = 4;
/// Limits of the lanes form's WGSL arrays: cache words per lane, subgroups per workgroup,
/// GQA group, and the `vec2` words of its workgroup array.
const LANES_MAX_WORDS: usize = 8;
const LANES_MAX_SG: usize = 4;
const LANES_MAX_G: usize = 8;
const LANES_SMEM_WORDS: usize = 2016;

/// Why the lanes form of decode pass 1 cannot serve this head shape on `caps` (None: it can).
/// Lanes split a cache row's words (`head_dim / 2` f16 pairs, or `head_dim / 4` q8_0 code
/// words) evenly at every subgroup size the adapter may use, with at most
/// [`LANES_MAX_WORDS`] output words each.
pub fn lanes_unfit(caps: &Capabilities, shape: &AttentionShape) -> Option<String> {
    let hw = shape.head_dim / 2;
    let (lo, hi) = (
        caps.subgroup_min_size as usize,
        caps.subgroup_max_size as usize,
    );
    let g = shape.group();
    if !caps.subgroup || lo == 0 || hi < lo {
        return Some("needs subgroup operations".into());
    }
    // Cache words per row a lane's loads cover, and output words per cache word.
    let (words, out) = match shape.kv_type {
        KvType::F16 => (hw, 1),
        KvType::Q8_0 => (shape.head_dim / 4, 2),
    };
    if !shape.head_dim.is_multiple_of(32)
        || !words.is_multiple_of(hi)
        || out * words / lo > LANES_MAX_WORDS
    {
        return Some(format!(
            "head_dim {} does not split over subgroups of {lo}-{hi} lanes",
            shape.head_dim
        ));
    }
    if g == 0 || g > LANES_MAX_G || LANES_MAX_SG * g * hw > LANES_SMEM_WORDS {
        return Some(format!(
            "a GQA group of {g} x head_dim {} is too large",
            shape.head_dim
        ));
    }
    let wg = LANES_MAX_SG * lo;
    if wg > caps.max_compute_invocations_per_workgroup as usize
        || (LANES_SMEM_WORDS + 32) * 8 > caps.max_compute_workgroup_storage_size as usize
    {
        return Some("exceeds the workgroup limits".into());
    }
    None
}

/// The lanes form's pass-1 spec ([`DecodeForm::Lanes`]): `LANES_MAX_SG` subgroups of the
/// smallest size per workgroup; the subgroup size is baked in where the adapter has one.
fn lanes_spec(
    (sg_min, sg_max): (u32, u32),
    group: usize,
    head_dim: usize,
    direct: bool,
    kv_type: KvType,
) -> KernelSpec {
    let spec = KernelSpec::new(
        op_name("attention_decode_lanes", kv_type),
        "attention_decode",
        "attention_decode_lanes",
        &[
            Binding::Uniform,
            Binding::Uniform,
            Binding::Read,
            Binding::Read,
            Binding::Read,
            Binding::ReadWrite,
        ],
    )
    .define("LANES")
    .constant("WG", LANES_MAX_SG as u32 * sg_min)
    .constant("HW", (head_dim / 2) as u32)
    .constant("G", group as u32)
    .constant("KB", LANES_KEYS)
    .constant("DIRECT", direct as u32)
    .constant("SGS", if sg_min == sg_max { sg_min } else { 0 });
    match kv_type {
        KvType::F16 => spec,
        KvType::Q8_0 => spec.define("KV_Q8"),
    }
}

/// Pass-1 spec for a decode attention geometry over a cache of `kv_type` (`None` if the group
/// does not fit the portable kernel). Over an f16 cache it carries the native kernels when
/// they cover the shape: head_dim in [`NATIVE_HEAD_DIMS`] and at most [`NATIVE_MAX_GROUP`]
/// heads per KV head; whether this device runs them is the registry's choice
/// ([`super::native_unavailable`]). Over a q8_0 cache it has none: the WGSL kernel runs.
pub fn decode_spec(
    caps: &Capabilities,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    direct: bool,
    kv_type: KvType,
) -> Option<KernelSpec> {
    let spec = portable_decode_spec(&caps.into(), n_heads, n_kv_heads, head_dim, direct, kv_type)?;
    if kv_type == KvType::F16 && n_heads / n_kv_heads <= NATIVE_MAX_GROUP {
        return Some(with_native(spec, head_dim));
    }
    Some(spec)
}

fn portable_decode_spec(
    caps: &PlanLimits,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    direct: bool,
    kv_type: KvType,
) -> Option<KernelSpec> {
    let group = n_heads / n_kv_heads;
    let p = plan(*caps, group, head_dim, 4)?;
    Some(
        core_spec("attention_decode", "attention_decode", p, group, kv_type)
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

/// Decode attention, pass 1 in `form`: `out[h] = softmax(q[h] . K[kv(h)][0..kv_len] * scale) V[kv(h)]` for each
/// query head `h` (q, out f32 `[n_heads * head_dim]`), where `kv(h) = h / (n_heads /
/// n_kv_heads)` and `kv_len = step.kv_len` (clamped to `capacity`). The keys are split over
/// `n_splits` workgroups per KV head, merged by a second pass when `n_splits > 1`, through
/// `partials` (at least [`partials_bytes`]; allocated here when None; one buffer serves every
/// layer and split count of a decode step, which run one after another).
pub fn attention_decode(
    k: &Kernels,
    io: &AttentionBuffers,
    shape: &AttentionShape,
    form: DecodeForm,
    n_splits: usize,
    partials: Option<&wgpu::Buffer>,
) -> Result<DecodeAttention> {
    let what = "attention_decode";
    check_common(what, k, io, shape, 1)?;
    let (n_heads, n_kv_heads, head_dim) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
    let caps = &k.gpu.caps;
    if n_splits == 0 || n_splits > caps.max_compute_workgroups_per_dimension as usize {
        return Err(Error::Shape(format!("{what}: {n_splits} splits")));
    }
    let direct = n_splits == 1;
    if !direct && (n_splits > MERGE_MAX_SPLITS || head_dim / 2 > MERGE_WG as usize) {
        return Err(Error::Shape(format!(
            "{what}: the merge pass takes at most {MERGE_MAX_SPLITS} splits and head_dim {} (got {n_splits} splits of head_dim {head_dim})",
            2 * MERGE_WG
        )));
    }
    let spec = match form {
        DecodeForm::Lanes => {
            if let Some(why) = lanes_unfit(caps, shape) {
                return Err(Error::Unsupported(format!("{what} (lanes form): {why}")));
            }
            let sizes = (caps.subgroup_min_size, caps.subgroup_max_size);
            lanes_spec(sizes, shape.group(), head_dim, direct, shape.kv_type)
        }
        DecodeForm::Tiled => decode_spec(caps, n_heads, n_kv_heads, head_dim, direct, shape.kv_type).ok_or_else(|| {
            Error::Unsupported(format!(
                "{what}: a GQA group of {} heads x head_dim {head_dim} does not fit in {} bytes of workgroup memory",
                shape.group(),
                caps.max_compute_workgroup_storage_size
            ))
        })?,
    };
    let flags = if direct { FLAG_DIRECT } else { 0 };
    let params = params(k, "attention_decode params", shape, (n_splits, 1), flags)?;
    let (q, cache_k, cache_v, step) = (io.q, io.cache.k, io.cache.v, io.step);
    // One workgroup per (KV head, split) for the WGSL and the native kernels alike (the
    // native kernel's fixed 128-invocation split is inside the workgroup).
    let grid = [n_kv_heads as u32, n_splits as u32, 1];
    if direct {
        let d = k.dispatch(&spec, &[&params, step, q, cache_k, cache_v, io.out], grid)?;
        return Ok(DecodeAttention {
            dispatches: vec![d],
            scratch: None,
            n_splits,
        });
    }
    let bytes = partials_bytes(n_heads, head_dim, n_splits);
    let mut own = None;
    let scratch: &wgpu::Buffer = match partials {
        Some(b) => {
            need_bytes(what, "partials", b, bytes)?;
            b
        }
        None => own.insert(k.gpu.storage_buffer("attention partials", bytes)?),
    };
    let pass1 = k.dispatch(&spec, &[&params, step, q, cache_k, cache_v, scratch], grid)?;
    let merge = k.dispatch(
        &merge_spec(head_dim),
        &[&params, scratch, io.out],
        [n_heads as u32, 1, 1],
    )?;
    Ok(DecodeAttention {
        dispatches: vec![pass1, merge],
        scratch: own,
        n_splits,
    })
}

/// Bytes of the split partials of decode attention: o (head_dim f32) plus (m, l) per (query
/// head, split).
pub fn partials_bytes(n_heads: usize, head_dim: usize, n_splits: usize) -> u64 {
    (n_heads * n_splits * (head_dim + 2) * 4) as u64
}

/// Keys per split of decode attention: a step over `kv_len` cached keys wants
/// `kv_len / SPLIT_KEYS` splits ([`decode_splits`]).
pub const SPLIT_KEYS: usize = 128;

/// `WICK_ATTN_SPLIT_KEYS` (a positive number of keys): when set, decode steps are recorded for
/// every power-of-two split count and each step takes about this many keys per split; when
/// unset, None: two forms, one split below `2 * SPLIT_KEYS` cached keys and the session's
/// [`choose_splits`] count from there (the policy measured so far; the per-length counts
/// are there to be measured against it).
pub fn split_keys() -> Result<Option<usize>> {
    match std::env::var("WICK_ATTN_SPLIT_KEYS") {
        Err(_) => Ok(None),
        Ok(v) => v
            .trim()
            .parse::<usize>()
            .ok()
            .filter(|&n| n > 0)
            .map(Some)
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "WICK_ATTN_SPLIT_KEYS={v:?} (expected a positive number of keys)"
                ))
            }),
    }
}

/// How a decode step's split count follows the cached length: about `keys` keys per split,
/// and at least `min_splits` splits once the cache holds `2 * keys` keys (one split below).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitRule {
    pub keys: usize,
    pub min_splits: usize,
}

/// The per-length rule of an adapter class and head size where it was measured, used when
/// `WICK_ATTN_SPLIT_KEYS` is unset. NVIDIA with head_dim >= 128: 256 keys per split and at
/// least 128 workgroups (`min_splits = 128 / n_kv_heads`). On an H100, Llama-3-8B Q4_0 (8 KV
/// heads of 128) at depth 4096: 64 splits of ~64 keys 249.4 tok/s, 32 of 128 keys 265.9, 16 of
/// 256 keys 275.7, 8 of 512 keys 234.1; the rule against the old policy: 274.4 vs 248.2 at
/// 4096, 319.4 vs 307.8 at 1024. Llama-3.2-1B (heads of 64) was slower with it at 4096 (813.2
/// vs 872.5), so smaller heads keep the old policy. Others: None (one split, or
/// [`choose_splits`]' count from `2 * SPLIT_KEYS` keys).
pub fn default_split_rule(
    caps: &Capabilities,
    n_kv_heads: usize,
    head_dim: usize,
) -> Option<SplitRule> {
    match caps.class {
        AdapterClass::Nvidia if head_dim >= 128 => Some(SplitRule {
            keys: 256,
            min_splits: (128 / n_kv_heads.max(1)).max(1),
        }),
        _ => None,
    }
}

/// The split counts a decode step is built for, up to `max_splits` ([`choose_splits`] at
/// the session's capacity): 1 and the powers of two below `max_splits`, then `max_splits`.
pub fn split_counts(max_splits: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..usize::BITS)
        .map(|i| 1usize << i)
        .take_while(|&s| s < max_splits)
        .collect();
    v.push(max_splits.max(1));
    v.dedup();
    v
}

/// The split count for a step over `kv_len` cached keys: one below `2 * rule.keys` keys, else
/// `kv_len / rule.keys` and at least `rule.min_splits`, rounded up to one of `counts` (those
/// the step was built for), or the largest of them. Short caches run one split and no merge
/// pass where 1 is among the counts.
pub fn decode_splits(
    counts: impl IntoIterator<Item = usize> + Clone,
    kv_len: usize,
    rule: SplitRule,
) -> usize {
    let keys = rule.keys.max(1);
    let want = if kv_len < 2 * keys {
        1
    } else {
        (kv_len / keys).max(rule.min_splits)
    };
    let up = counts.clone().into_iter().filter(|&s| s >= want).min();
    up.or_else(|| counts.into_iter().max()).unwrap_or(1)
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
        .min(MERGE_MAX_SPLITS)
        .min(caps.max_compute_workgroups_per_dimension as usize)
        .max(1)
}

/// Pass spec and tokens per workgroup for prefill attention over a cache of `kv_type` (`None`
/// if nothing fits).
pub fn prefill_spec(
    caps: &Capabilities,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    max_tokens: usize,
    kv_type: KvType,
) -> Option<(KernelSpec, usize)> {
    let group = n_heads / n_kv_heads;
    let max_bq = (MAX_PREFILL_ROWS / group).clamp(1, max_tokens.max(1));
    // Prefer more tokens per workgroup (K/V tiles reused by more rows) while keeping tiles of
    // at least 16 keys; fall back to one token with whatever tile fits.
    let (bq, p) = (1..=max_bq)
        .rev()
        .find_map(|bq| plan(caps.into(), bq * group, head_dim, 16).map(|p| (bq, p)))
        .or_else(|| plan(caps.into(), group, head_dim, 4).map(|p| (1, p)))?;
    let mut spec = core_spec("attention_prefill", "attention_prefill", p, group, kv_type)
        .constant("BQ", bq as u32);
    if kv_type == KvType::F16 && PREFILL_COOP_HEAD_DIMS.contains(&head_dim) && group <= COOP_ROWS {
        spec.native_vulkan = Some(prefill_coop());
        spec.native_metal = prefill_metal(head_dim);
    }
    Some((spec, bq))
}

/// Head dims of the native prefill kernels (the cooperative-matrix kernel's O accumulators are
/// written out for up to 128, 64 uses half of them; the Metal kernel has one entry per dim).
pub const PREFILL_COOP_HEAD_DIMS: [usize; 2] = [64, 128];
/// Query rows (tokens x heads of a group) per workgroup of both native prefill kernels
/// (cooperative matrices on Vulkan, simdgroup matrices on Metal): 4 subgroups of 16, so one
/// dispatch geometry serves either.
const COOP_ROWS: usize = 64;
/// Its workgroup memory: the q tile (64 rows) and the staged K and V tiles (32 keys), rows of
/// 136 halves; 4 x 16 x 32 f32 score slots; 4 x 16 rows of 40 halves of P; two f32 per row
/// and one word per subgroup.
const COOP_PREFILL_BYTES: u32 =
    (64 + 2 * 32) * 136 * 2 + 4 * 16 * 32 * 4 + 4 * 16 * 40 * 2 + 2 * 64 * 4 + 4 * 4;

/// The native Vulkan prefill: wgsl/attention_prefill_coop.wgsl, flash attention on
/// cooperative matrices (f16 cache, [`PREFILL_COOP_HEAD_DIMS`]).
fn prefill_coop() -> NativeKernel {
    NativeKernel {
        family: "attention_prefill_coop",
        entry: "attention_prefill_coop",
        workgroup_size: [128, 1, 1],
        wgsl_defines: &["COOP"],
        needs: NativeNeeds {
            subgroups: true,
            cooperative_matrix: true,
            workgroup_storage: COOP_PREFILL_BYTES,
            ..Default::default()
        },
    }
}

/// Threadgroup memory of the native Metal prefill at `head_dim`: q rows and the K and V
/// rows of one staged 8-key group, each padded to `head_dim + 8` halves, and four 16 x 32 f32
/// slots (scores, then P, the rescale diagonals and O on their way out).
pub const fn metal_prefill_bytes(head_dim: usize) -> u32 {
    ((COOP_ROWS + 2 * 8) * (head_dim + 8) * 2 + 4 * 16 * 32 * 4) as u32
}

/// The native Metal prefill at `head_dim` (64 or 128): metal_overrides/attention_prefill.metal,
/// flash attention on simdgroup matrices with the cooperative-matrix kernel's geometry. Its
/// softmax step pairs lanes by shuffle and its rows are fixed per lane of a 32-wide
/// simdgroup, so it runs on Apple GPUs only.
fn prefill_metal(head_dim: usize) -> Option<NativeKernel> {
    let entry = match head_dim {
        64 => "attention_prefill_hd64",
        128 => "attention_prefill_hd128",
        _ => return None,
    };
    Some(NativeKernel {
        family: "attention_prefill",
        entry,
        workgroup_size: [128, 1, 1],
        needs: NativeNeeds {
            adapter: Some(AdapterClass::Apple),
            workgroup_storage: metal_prefill_bytes(head_dim),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Causal prefill attention: q, out f32 `[n_tokens][n_heads * head_dim]`; query `t` (absolute
/// position `step.pos + t`) attends to cache keys `0 ..= step.pos + t` of its KV head. The
/// grid covers `max_tokens` queries; `step.n_tokens` of them are live.
pub fn attention_prefill(
    k: &Kernels,
    io: &AttentionBuffers,
    shape: &AttentionShape,
    max_tokens: usize,
) -> Result<Dispatch> {
    let what = "attention_prefill";
    if max_tokens == 0 {
        return Err(Error::Shape(format!("{what}: max_tokens is 0")));
    }
    check_common(what, k, io, shape, max_tokens)?;
    let (n_heads, n_kv_heads, head_dim) = (shape.n_heads, shape.n_kv_heads, shape.head_dim);
    let caps = &k.gpu.caps;
    let (spec, bq) =
        prefill_spec(caps, n_heads, n_kv_heads, head_dim, max_tokens, shape.kv_type).ok_or_else(|| {
            Error::Unsupported(format!(
                "{what}: a GQA group of {} heads x head_dim {head_dim} does not fit in {} bytes of workgroup memory",
                shape.group(),
                caps.max_compute_workgroup_storage_size
            ))
        })?;
    // The native kernels (either backend) have their own rows per workgroup.
    let bq = if k.variant_for(&spec)? == Variant::Native {
        COOP_ROWS / shape.group()
    } else {
        bq
    };
    let blocks = max_tokens.div_ceil(bq);
    if blocks > caps.max_compute_workgroups_per_dimension as usize {
        return Err(Error::Shape(format!(
            "{what}: {max_tokens} tokens exceed the grid"
        )));
    }
    let params = params(k, "attention_prefill params", shape, (1, max_tokens), 0)?;
    k.dispatch(
        &spec,
        &[&params, io.step, io.q, io.cache.k, io.cache.v, io.out],
        [n_kv_heads as u32, blocks as u32, 1],
    )
}
