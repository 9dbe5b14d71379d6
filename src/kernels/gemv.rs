//! GEMV: one f32 activation vector times a weight matrix in GPU planes (decode's hot path),
//! with fused epilogues (bias, residual accumulate, output offset) and a fused
//! gate+up+SwiGLU variant and a fused QKV variant. Kernel: `wgsl/gemv.wgsl` (per-format units in
//! `wgsl/gemv_units.wgsl`, shared with [`super::gemv_batch`]); design in
//! docs/kernels.md (GEMV). Q4_0, Q4_1, Q8_0, Q4_K, Q5_K and Q6_K also have native kernels of
//! every kind (`vulkan_overrides/gemv.comp`, `metal_overrides/gemv.metal`), dispatched with
//! [`native_config`].

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{
    grid_1d, Binding, Dispatch, GpuMatrix, KernelSpec, Kernels, NativeKernel, NativeNeeds, Variant,
};
use crate::error::{Error, Result};
use crate::gpu::Capabilities;
use crate::quant::WeightFormat;

pub mod cases;

/// The GEMV family: plain, fused gate+up+SwiGLU and fused QKV pipelines per weight format,
/// each with and without the norm prologue; native kernels for [`NATIVE_FORMATS`].
pub static FAMILY: Family = Family {
    name: "gemv",
    wgsl: &["gemv"],
    pipelines,
    native_coverage: Some(native_coverage),
    checks: Some(cases::checks),
    bench: Some(cases::bench),
};

/// Every GEMV pipeline kind of every format (natives attached where wick ships them), on the
/// split the native kernels dispatch with.
fn pipelines() -> Vec<KernelSpec> {
    let cfg = native_config(&GemvConfig {
        lanes_per_row: 32,
        rows_per_group: 1,
        workgroup_size: NATIVE_WORKGROUP_SIZE,
        subgroup_reduce: false,
    });
    let mut v = Vec::new();
    for f in WeightFormat::ALL {
        for norm in [false, true] {
            v.push(spec(f, &cfg, false, false, norm));
        }
    }
    for f in WeightFormat::ALL {
        for norm in [false, true] {
            v.push(swiglu_spec(f, &cfg, norm));
        }
    }
    for f in WeightFormat::ALL {
        for norm in [false, true] {
            v.push(qkv_spec(f, &cfg, false, norm));
        }
    }
    v
}

fn native_coverage() -> String {
    let formats: Vec<String> = NATIVE_FORMATS
        .iter()
        .map(|f| f.name().to_uppercase())
        .collect();
    format!(
        "{} (plain, SwiGLU and QKV, with and without the norm prologue, every epilogue), on \
         adapters with subgroups; other formats run the portable kernel",
        formats.join(", ")
    )
}

/// WGSL mirror: `struct Params { n, upr, out_offset, eps_bits, k4, nk, nv, flags,
/// lanes_per_row, _pad }`; the native kernels (`vulkan_overrides/gemv.comp`,
/// `metal_overrides/gemv.metal`) declare the same struct.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct GemvParams {
    /// Rows of the matrix.
    pub n: u32,
    /// Units (one `qs` load each) per row: k / [`unit_elems`]. The native K-quant kernels
    /// split each 64-element unit into four of their own (8-byte loads).
    pub upr: u32,
    /// Row i is written to `out[out_offset + i]`.
    pub out_offset: u32,
    /// RMSNorm epsilon (f32 bits) of the fused norm prologue.
    pub eps_bits: u32,
    /// k / 4.
    pub k4: u32,
    /// QKV: rows of the k and v matrices.
    pub nk: u32,
    pub nv: u32,
    /// Epilogue flags for native kernels, which get no override constants: bit 0 add the
    /// bias (QKV: all three), bit 1 accumulate (the WGSL kernel reads HAS_BIAS / ACCUMULATE
    /// instead).
    pub flags: u32,
    /// Native kernels: lanes per row (a power of two, 1..=256) of their fixed 256-lane
    /// workgroup (the WGSL kernel reads LPR instead).
    pub lanes_per_row: u32,
    /// Keeps the uniform a multiple of 16 bytes.
    pub _pad: [u32; 3],
}

/// `GemvParams::flags` bits.
pub const FLAG_BIAS: u32 = 1;
pub const FLAG_ACCUMULATE: u32 = 2;

/// Workgroup size of the native GEMV kernels (`vulkan_overrides/gemv.comp`,
/// `metal_overrides/gemv.metal`): fixed, since passthrough shaders get no override constants.
/// 256 lanes are 8 Metal simdgroups / NVIDIA warps, 32 lavapipe subgroups.
pub const NATIVE_WORKGROUP_SIZE: u32 = 256;

/// The work split a native GEMV runs for the split `cfg` the host chose: the same lanes per
/// row (passed in [`GemvParams::lanes_per_row`], so the native kernel adapts to the shape as
/// the WGSL one does), one row per row group, [`NATIVE_WORKGROUP_SIZE`] lanes, so
/// 256 / lanes_per_row rows per workgroup. The kernels reduce with subgroup operations.
pub fn native_config(cfg: &GemvConfig) -> GemvConfig {
    GemvConfig {
        lanes_per_row: cfg.lanes_per_row.clamp(1, NATIVE_WORKGROUP_SIZE),
        rows_per_group: 1,
        workgroup_size: NATIVE_WORKGROUP_SIZE,
        subgroup_reduce: true,
    }
}

/// The GEMV pipeline kinds the runtime uses (each with and without the norm prologue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemvKind {
    /// `gemv`: one matrix with the bias / accumulate / out_offset epilogue.
    Plain,
    /// `gemv_swiglu`: gate and up, then silu(gate) * up.
    Swiglu,
    /// `gemv_qkv`: q, k and v projections with optional biases.
    Qkv,
}

/// (SPIR-V module stem, MSL entry) of each native kernel of one format, indexed by
/// `2 * kind + norm` (kinds in [`GemvKind`] order).
macro_rules! native_names {
    ($f:literal) => {
        [
            (concat!("gemv.", $f), concat!("gemv_", $f)),
            (concat!("gemv.", $f, "_norm"), concat!("gemv_", $f, "_norm")),
            (concat!("gemv.swiglu_", $f), concat!("gemv_swiglu_", $f)),
            (
                concat!("gemv.swiglu_", $f, "_norm"),
                concat!("gemv_swiglu_", $f, "_norm"),
            ),
            (concat!("gemv.qkv_", $f), concat!("gemv_qkv_", $f)),
            (
                concat!("gemv.qkv_", $f, "_norm"),
                concat!("gemv_qkv_", $f, "_norm"),
            ),
        ]
    };
}

/// Formats with native GEMV kernels.
pub const NATIVE_FORMATS: [WeightFormat; 6] = [
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q8_0,
    WeightFormat::Q4K,
    WeightFormat::Q5K,
    WeightFormat::Q6K,
];

/// Sets the native Vulkan and Metal variants of a GEMV spec of this format and kind, where
/// wick ships them. They reduce with subgroup operations: on a device without them (or with
/// them turned off) every GEMV runs its WGSL kernel.
fn with_natives(mut s: KernelSpec, format: WeightFormat, kind: GemvKind, norm: bool) -> KernelSpec {
    let names = match format {
        WeightFormat::Q4_0 => native_names!("q4_0"),
        WeightFormat::Q4_1 => native_names!("q4_1"),
        WeightFormat::Q8_0 => native_names!("q8_0"),
        WeightFormat::Q4K => native_names!("q4_k"),
        WeightFormat::Q5K => native_names!("q5_k"),
        WeightFormat::Q6K => native_names!("q6_k"),
        _ => return s,
    };
    let (module, entry) = names[2 * kind as usize + norm as usize];
    let workgroup_size = [NATIVE_WORKGROUP_SIZE, 1, 1];
    let needs = NativeNeeds {
        subgroups: true,
        ..Default::default()
    };
    s.native_vulkan = Some(NativeKernel {
        family: module,
        entry: "main",
        workgroup_size,
        needs,
        ..Default::default()
    });
    s.native_metal = Some(NativeKernel {
        family: "gemv",
        entry,
        workgroup_size,
        needs,
        ..Default::default()
    });
    s
}

/// Specs of every GEMV pipeline that has a native variant (see [`super::native_specs`]).
pub fn native_specs() -> Vec<KernelSpec> {
    pipelines()
        .into_iter()
        .filter(KernelSpec::has_native)
        .collect()
}

/// What happens to each dot product before it is stored.
#[derive(Clone, Copy, Default)]
pub struct GemvEpilogue<'a> {
    /// f32[n], added to each output row.
    pub bias: Option<&'a wgpu::Buffer>,
    /// `out[i] += result` (residual add) instead of `out[i] = result`.
    pub accumulate: bool,
    /// Row i of w is written to `out[out_offset + i]` (split matrices).
    pub out_offset: usize,
    /// Prologue: x is RMS-normalised on load with these f32[k] weights and epsilon, so the
    /// norm before a projection needs no dispatch of its own.
    pub norm: Option<(&'a wgpu::Buffer, f32)>,
}

/// The work split of one GEMV pipeline (the WGSL `override` constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GemvConfig {
    /// Lanes sharing one row group (power of two, 1..=256).
    pub lanes_per_row: u32,
    /// Rows each row group computes, reusing its activations across them.
    pub rows_per_group: u32,
    /// Workgroup size, a multiple of `lanes_per_row`.
    pub workgroup_size: u32,
    /// Reduce with subgroup shuffles; needs SUBGROUP and `lanes_per_row` at most the
    /// device's minimum subgroup size. Otherwise a workgroup-memory tree.
    pub subgroup_reduce: bool,
}

impl GemvConfig {
    pub fn rows_per_workgroup(&self) -> u32 {
        self.workgroup_size / self.lanes_per_row * self.rows_per_group
    }

    /// Checks the constraints the shader relies on.
    pub fn validate(&self, caps: &Capabilities, swiglu: bool) -> Result<()> {
        let bad = |m: &str| Err(Error::InvalidArgument(format!("gemv config {self:?}: {m}")));
        let lpr = self.lanes_per_row;
        if !lpr.is_power_of_two() || lpr > 256 {
            return bad("lanes_per_row must be a power of two up to 256");
        }
        if self.workgroup_size == 0
            || !self.workgroup_size.is_multiple_of(lpr)
            || self.workgroup_size > caps.max_compute_invocations_per_workgroup
        {
            return bad(
                "workgroup_size must be a multiple of lanes_per_row within the device limit",
            );
        }
        let nmat = if swiglu { 2 } else { 1 };
        if self.rows_per_group == 0 || nmat * self.rows_per_group > MAX_ACC {
            return bad("too many rows per group for the accumulator array");
        }
        if nmat * self.rows_per_group * self.workgroup_size > PARTIAL_SLOTS {
            return bad("workgroup-memory reduction needs more than its 2048 slots");
        }
        if self.subgroup_reduce && (!caps.subgroup || lpr > caps.subgroup_min_size.max(1)) {
            return bad("subgroup reduction needs subgroups at least lanes_per_row wide");
        }
        Ok(())
    }
}

/// Size of the per-lane accumulator array in the shader.
const MAX_ACC: u32 = 16;
/// Size of `gemv_partial` in the shader.
const PARTIAL_SLOTS: u32 = 2048;

/// Elements of k covered by one unit (one `qs` load): a Q4/Q5 block is 16 bytes, a Q8 half
/// block 16 bytes, 4 f32 16 bytes, 4 f16/bf16 8 bytes (rows of k = 4 mod 8 f16 are only
/// 8-byte aligned); a K-quant pair of sub-blocks (64 elements) is 32 bytes (Q4_K/Q5_K) or
/// 48 bytes (Q6_K).
pub fn unit_elems(format: WeightFormat) -> usize {
    match format {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => 4,
        // One word per lane, so a subgroup's activation loads are contiguous.
        WeightFormat::Q8_0 => 4,
        WeightFormat::Q4_0 | WeightFormat::Q4_1 => 8,
        WeightFormat::Q5_0 | WeightFormat::Q5_1 => 32,
        WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => 64,
    }
}

/// Picks the work split for an n x k matrix on this device: a per-adapter-class entry.
///
/// - NVIDIA (measured on an H100 with `wick bench gemv --sweep`, 20 shapes of Q4_0/Q4_1/Q8_0
///   from 576x576 to 151936x896): one row per row group and 256-lane workgroups won nearly
///   everywhere; the best lanes per row is whichever is larger of what fills the GPU with
///   about 2^17 threads (n * lanes) and what keeps each lane at most ~32 units, capped by the
///   row's units. In the last sweep this was within 12% of the best split on 13 of 14 shapes;
///   the exception, 1536x576 Q4_1, ran at 2x the best (64 lanes, 2 rows per group).
/// - Others (Apple first, then AMD, Intel, CPU): MLX's qmv_fast split (docs/kernels.md), not yet
///   measured on those devices: 32 (or fewer for short rows) lanes per row, 4 rows per group,
///   64-lane workgroups.
pub fn choose_config(caps: &Capabilities, format: WeightFormat, n: usize, k: usize) -> GemvConfig {
    let units = (k / unit_elems(format)).max(1);
    if caps.class == crate::gpu::AdapterClass::Nvidia {
        let by_threads = (131_072 / n.max(1)).max(1).next_power_of_two();
        let by_units = units.div_ceil(32).next_power_of_two();
        let cap = units.next_power_of_two().min(256);
        let lpr = by_threads.max(by_units).clamp(4, cap.max(4)) as u32;
        let subgroup_reduce = caps.subgroup && lpr <= caps.subgroup_min_size;
        return GemvConfig {
            lanes_per_row: lpr,
            rows_per_group: 1,
            workgroup_size: 256,
            subgroup_reduce,
        };
    }
    // Lanes per row: one subgroup-sized group (32) streams long rows; for short rows
    // (K=576 is only 18 Q4 blocks) take the widest power of two that still keeps >= 75% of
    // the lane-steps busy, so few lanes idle in the last step.
    let mut lpr = 32u32;
    while lpr > 1 {
        let slots = units.div_ceil(lpr as usize) * lpr as usize;
        if units * 4 >= slots * 3 {
            break;
        }
        lpr /= 2;
    }
    // Subgroup shuffles need the whole group inside one subgroup of the smallest size the
    // device may run us at.
    let subgroup_reduce = caps.subgroup && caps.subgroup_min_size >= 1;
    if subgroup_reduce {
        lpr = lpr.min(caps.subgroup_min_size.max(1));
    }
    // 64 lanes: two subgroups on Apple/NVIDIA, one wave on AMD; enough lanes in flight
    // without starving small matrices of workgroups.
    let workgroup_size = 64u32.max(lpr);
    // Four rows per group amortise each activation load over four weight loads; fall back
    // to fewer when the matrix would give fewer than ~256 workgroups (o-proj, down at
    // n = 576..896), since small GEMVs are bound by how many cores they occupy.
    let mut rows_per_group = 4u32;
    while rows_per_group > 1 && n.div_ceil((workgroup_size / lpr * rows_per_group) as usize) < 256 {
        rows_per_group /= 2;
    }
    GemvConfig {
        lanes_per_row: lpr,
        rows_per_group,
        workgroup_size,
        subgroup_reduce,
    }
}

/// The work split `op` (`gemv` or `gemv_swiglu`) uses for an n x k `format` matrix: the
/// device's tuning table entry when there is one, else [`choose_config`].
pub fn config_for(
    k: &Kernels,
    op: &str,
    format: WeightFormat,
    n: usize,
    kdim: usize,
) -> GemvConfig {
    let caps = &k.gpu.caps;
    if let Some(c) = k
        .tuning
        .as_ref()
        .and_then(|t| t.lookup(caps, op, format, n, kdim))
    {
        return c;
    }
    let mut cfg = choose_config(caps, format, n, kdim);
    if op == "gemv_swiglu" {
        // Two matrices per row group: keep the accumulators within the shader's array.
        cfg.rows_per_group = cfg.rows_per_group.min(MAX_ACC / 2);
    }
    cfg
}

/// A GEMV pipeline spec: `reads` read-only storage bindings after the uniform, then `writes`
/// outputs, then the norm weights when `norm`; the format, `variant` defines and the work
/// split as override constants.
fn gemv_spec(
    op: String,
    entry: &'static str,
    format: WeightFormat,
    cfg: &GemvConfig,
    variant: &[&'static str],
    (reads, writes): (usize, usize),
    norm: bool,
) -> KernelSpec {
    let mut bindings = vec![Binding::Uniform];
    bindings.extend(std::iter::repeat_n(Binding::Read, reads));
    bindings.extend(std::iter::repeat_n(Binding::ReadWrite, writes));
    if norm {
        bindings.push(Binding::Read);
    }
    let mut s = KernelSpec::new(op, "gemv", entry, &bindings).define(format.define());
    for d in variant.iter().copied().chain(norm.then_some("NORM")) {
        s = s.define(d);
    }
    s.constant("LPR", cfg.lanes_per_row)
        .constant("RPG", cfg.rows_per_group)
        .constant("WG", cfg.workgroup_size)
        .constant("SG_REDUCE", cfg.subgroup_reduce as u32)
}

/// The spec of a plain GEMV pipeline (op `gemv_<format>`).
pub fn spec(
    format: WeightFormat,
    cfg: &GemvConfig,
    bias: bool,
    accumulate: bool,
    norm: bool,
) -> KernelSpec {
    let op = format!("gemv_{}", format.name());
    let s = gemv_spec(op, "gemv", format, cfg, &[], (4, 1), norm)
        .constant("HAS_BIAS", bias as u32)
        .constant("ACCUMULATE", accumulate as u32);
    with_natives(s, format, GemvKind::Plain, norm)
}

/// The spec of the fused gate+up+SwiGLU pipeline (op `gemv_swiglu_<format>`).
pub fn swiglu_spec(format: WeightFormat, cfg: &GemvConfig, norm: bool) -> KernelSpec {
    let op = format!("gemv_swiglu_{}", format.name());
    let s = gemv_spec(op, "gemv_swiglu", format, cfg, &["SWIGLU"], (5, 1), norm);
    with_natives(s, format, GemvKind::Swiglu, norm)
}

/// The spec of the fused QKV pipeline (op `gemv_qkv_<format>`).
pub fn qkv_spec(format: WeightFormat, cfg: &GemvConfig, bias: bool, norm: bool) -> KernelSpec {
    let op = format!("gemv_qkv_{}", format.name());
    let s = gemv_spec(op, "gemv", format, cfg, &["QKV"], (10, 3), norm)
        .constant("HAS_BIAS", bias as u32)
        .constant("ACCUMULATE", 0);
    with_natives(s, format, GemvKind::Qkv, norm)
}

/// The split to dispatch `sp` with: the native one when the registry picks the native
/// kernel, else `cfg`.
fn dispatch_config(k: &Kernels, sp: &KernelSpec, cfg: &GemvConfig) -> Result<GemvConfig> {
    Ok(match k.variant_for(sp)? {
        Variant::Native => native_config(cfg),
        Variant::Portable => *cfg,
    })
}

/// Params of one dispatch; `cfg` is the split it runs (native kernels read its lanes per
/// row from here).
fn params_for(
    w: &GpuMatrix,
    upr: u32,
    out_offset: usize,
    norm: Option<(&wgpu::Buffer, f32)>,
    cfg: &GemvConfig,
) -> GemvParams {
    GemvParams {
        n: w.n as u32,
        upr,
        out_offset: out_offset as u32,
        eps_bits: norm.map_or(0, |(_, e)| e.to_bits()),
        k4: (w.k / 4) as u32,
        nk: 0,
        nv: 0,
        flags: 0,
        lanes_per_row: cfg.lanes_per_row,
        _pad: [0; 3],
    }
}

/// Storage buffers the fused QKV GEMV binds (with its norm prologue).
pub const QKV_STORAGE_BINDINGS: u32 = 14;

/// Whether [`gemv_qkv`] can run these three matrices on this device: one format and row
/// length, a work split whose row groups never straddle two matrices, and enough storage
/// bindings per stage.
pub fn qkv_supported(caps: &Capabilities, q: &GpuMatrix, k: &GpuMatrix, v: &GpuMatrix) -> bool {
    let cfg = qkv_config(caps, q, k, v);
    q.format == k.format
        && q.format == v.format
        && q.k == k.k
        && q.k == v.k
        && caps.max_storage_buffers_per_shader_stage >= QKV_STORAGE_BINDINGS
        && q.n.is_multiple_of(cfg.rows_per_group as usize)
        && k.n.is_multiple_of(cfg.rows_per_group as usize)
}

fn qkv_config(caps: &Capabilities, q: &GpuMatrix, k: &GpuMatrix, v: &GpuMatrix) -> GemvConfig {
    choose_config(caps, q.format, q.n + k.n + v.n, q.k)
}

/// q, k and v projections of one activation vector in one dispatch: `out_q = Wq x (+ bq)`,
/// likewise k and v, with x RMS-normalised on load when `norm` is given. Each matrix keeps
/// its own planes and output buffer. See [`qkv_supported`].
pub fn gemv_qkv(
    kern: &Kernels,
    w: [&GpuMatrix; 3],
    x: &wgpu::Buffer,
    bias: Option<[&wgpu::Buffer; 3]>,
    out: [&wgpu::Buffer; 3],
    norm: Option<(&wgpu::Buffer, f32)>,
) -> Result<Dispatch> {
    let [q, k, v] = w;
    let caps = &kern.gpu.caps;
    if !qkv_supported(caps, q, k, v) {
        return Err(Error::Unsupported(format!(
            "fused QKV GEMV of {} on this device",
            qkv_shapes([q, k, v])
        )));
    }
    let cfg = qkv_config(caps, q, k, v);
    cfg.validate(caps, false)?;
    let upr = check_matrix("q", q)?;
    check_matrix("k", k)?;
    check_matrix("v", v)?;
    need_bytes("gemv", "x", x, q.k as u64 * 4)?;
    for (name, m, o) in [("q", q, out[0]), ("k", k, out[1]), ("v", v, out[2])] {
        need_bytes("gemv", &format!("out {name}"), o, m.n as u64 * 4)?;
    }
    if let Some(b) = bias {
        for (name, m, bb) in [("q", q, b[0]), ("k", k, b[1]), ("v", v, b[2])] {
            need_bytes("gemv", &format!("bias {name}"), bb, m.n as u64 * 4)?;
        }
    }
    check_norm(norm, q.k, &cfg)?;
    let sp = qkv_spec(q.format, &cfg, bias.is_some(), norm.is_some());
    let cfg = dispatch_config(kern, &sp, &cfg)?;
    let mut params = params_for(q, upr, 0, norm, &cfg);
    params.nk = k.n as u32;
    params.nv = v.n as u32;
    params.flags = if bias.is_some() { FLAG_BIAS } else { 0 };
    let params = kern.gpu.uniform("gemv_qkv params", &params)?;
    // Without biases the bindings still need buffers: x is bound read-only already.
    let b = bias.unwrap_or([x, x, x]);
    let mut res: Vec<&wgpu::Buffer> = vec![
        &params, &q.qs, &q.scales, &k.qs, &k.scales, &v.qs, &v.scales, x, b[0], b[1], b[2], out[0],
        out[1], out[2],
    ];
    if let Some((nw, _)) = norm {
        res.push(nw);
    }
    kern.dispatch(&sp, &res, grid(kern, q.n + k.n + v.n, &cfg)?)
}

/// The norm prologue reads f32[k] weights and reduces over a power-of-two workgroup of at
/// most 1024 lanes (its workgroup array).
fn check_norm(norm: Option<(&wgpu::Buffer, f32)>, kdim: usize, cfg: &GemvConfig) -> Result<()> {
    let Some((w, eps)) = norm else { return Ok(()) };
    need_bytes("gemv", "norm weights", w, kdim as u64 * 4)?;
    if !cfg.workgroup_size.is_power_of_two() || cfg.workgroup_size > 1024 {
        return Err(Error::InvalidArgument(format!(
            "gemv norm prologue needs a power-of-two workgroup up to 1024, not {}",
            cfg.workgroup_size
        )));
    }
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(Error::InvalidArgument(format!("rms epsilon {eps}")));
    }
    Ok(())
}

/// Checks a matrix's shape and planes; returns units per row.
pub(super) fn check_matrix(name: &str, w: &GpuMatrix) -> Result<u32> {
    let f = w.format;
    if w.n == 0
        || w.k == 0
        || !w.k.is_multiple_of(f.k_multiple())
        || !w.k.is_multiple_of(unit_elems(f))
    {
        return Err(Error::Shape(format!(
            "gemv: {name} is {} x {} {}; k must be a non-zero multiple of {}",
            w.n,
            w.k,
            f.name(),
            unit_elems(f).max(f.k_multiple())
        )));
    }
    let qs_bytes = (f.qs_words_per_row(w.k) as u64) * 4 * w.n as u64;
    need_bytes("gemv", &format!("{name}.qs"), &w.qs, qs_bytes)?;
    need_bytes(
        "gemv",
        &format!("{name}.scales"),
        &w.scales,
        (f.scale_words(w.n, w.k) as u64 * 4).max(4),
    )?;
    // Indices in the shader are u32 (qs loads and output rows).
    let units = (w.k / unit_elems(f)) as u64 * w.n as u64;
    if units > u32::MAX as u64 {
        return Err(Error::Shape(format!(
            "gemv: {name} ({} x {}) has too many elements for one dispatch; split it by rows",
            w.n, w.k
        )));
    }
    Ok((w.k / unit_elems(f)) as u32)
}

pub(super) fn grid(k: &Kernels, n: usize, cfg: &GemvConfig) -> Result<[u32; 3]> {
    let wgs = n.div_ceil(cfg.rows_per_workgroup() as usize);
    let max = k.gpu.caps.max_compute_workgroups_per_dimension;
    if wgs as u64 > max as u64 * max as u64 {
        return Err(Error::Shape(format!("gemv: {n} rows exceed the grid")));
    }
    Ok(grid_1d(wgs as u32, max))
}

/// `out[epi.out_offset + i] (+)= w[i] · x (+ bias[i])` for the n rows of `w`; x is f32[k].
pub fn gemv(
    k: &Kernels,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    epi: GemvEpilogue,
) -> Result<Dispatch> {
    let cfg = config_for(k, "gemv", w.format, w.n, w.k);
    gemv_with_config(k, w, x, out, epi, &cfg)
}

/// [`gemv`] with an explicit work split (tests, benchmarks, tuning).
pub fn gemv_with_config(
    k: &Kernels,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    epi: GemvEpilogue,
    cfg: &GemvConfig,
) -> Result<Dispatch> {
    cfg.validate(&k.gpu.caps, false)?;
    let upr = check_matrix("w", w)?;
    need_bytes("gemv", "x", x, w.k as u64 * 4)?;
    let end = epi
        .out_offset
        .checked_add(w.n)
        .filter(|e| *e <= u32::MAX as usize)
        .ok_or_else(|| Error::Shape("gemv: out_offset too large".into()))?;
    need_bytes("gemv", "out", out, end as u64 * 4)?;
    if let Some(b) = epi.bias {
        need_bytes("gemv", "bias", b, w.n as u64 * 4)?;
    }
    check_norm(epi.norm, w.k, cfg)?;
    let sp = spec(
        w.format,
        cfg,
        epi.bias.is_some(),
        epi.accumulate,
        epi.norm.is_some(),
    );
    // A native kernel has its own workgroup size: dispatch for its split.
    let cfg = dispatch_config(k, &sp, cfg)?;
    let mut params = params_for(w, upr, epi.out_offset, epi.norm, &cfg);
    params.flags = if epi.bias.is_some() { FLAG_BIAS } else { 0 }
        | if epi.accumulate { FLAG_ACCUMULATE } else { 0 };
    let params = k.gpu.uniform("gemv params", &params)?;
    // Without a bias the binding still needs a buffer; x is bound read-only already.
    let bias = epi.bias.unwrap_or(x);
    let g = grid(k, w.n, &cfg)?;
    match epi.norm {
        Some((nw, _)) => k.dispatch(&sp, &[&params, &w.qs, &w.scales, x, bias, out, nw], g),
        None => k.dispatch(&sp, &[&params, &w.qs, &w.scales, x, bias, out], g),
    }
}

/// out[i] = silu(gate·x)_i * (up·x)_i — the FFN's gate+up+SwiGLU in one dispatch (same
/// format/shape for both).
pub fn gemv_swiglu(
    k: &Kernels,
    gate: &GpuMatrix,
    up: &GpuMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    let cfg = config_for(k, "gemv_swiglu", gate.format, gate.n, gate.k);
    gemv_swiglu_with_config(k, gate, up, x, out, &cfg)
}

/// [`gemv_swiglu`] with x RMS-normalised on load (`norm` = weights f32[k], epsilon): the
/// FFN norm, gate, up and SwiGLU in one dispatch.
pub fn gemv_swiglu_normed(
    k: &Kernels,
    gate: &GpuMatrix,
    up: &GpuMatrix,
    x: &wgpu::Buffer,
    norm: (&wgpu::Buffer, f32),
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    let cfg = config_for(k, "gemv_swiglu", gate.format, gate.n, gate.k);
    gemv_swiglu_with_config_norm(k, gate, up, x, out, &cfg, Some(norm))
}

/// [`gemv_swiglu`] with an explicit work split.
pub fn gemv_swiglu_with_config(
    k: &Kernels,
    gate: &GpuMatrix,
    up: &GpuMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    cfg: &GemvConfig,
) -> Result<Dispatch> {
    gemv_swiglu_with_config_norm(k, gate, up, x, out, cfg, None)
}

/// [`gemv_swiglu_with_config`] with an optional norm prologue.
pub fn gemv_swiglu_with_config_norm(
    k: &Kernels,
    gate: &GpuMatrix,
    up: &GpuMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    cfg: &GemvConfig,
    norm: Option<(&wgpu::Buffer, f32)>,
) -> Result<Dispatch> {
    cfg.validate(&k.gpu.caps, true)?;
    if gate.format != up.format || gate.n != up.n || gate.k != up.k {
        return Err(Error::Shape(format!(
            "gemv_swiglu: gate is {} x {} {}, up is {} x {} {}",
            gate.n,
            gate.k,
            gate.format.name(),
            up.n,
            up.k,
            up.format.name()
        )));
    }
    let upr = check_matrix("gate", gate)?;
    check_matrix("up", up)?;
    need_bytes("gemv", "x", x, gate.k as u64 * 4)?;
    need_bytes("gemv", "out", out, gate.n as u64 * 4)?;
    check_norm(norm, gate.k, cfg)?;
    let sp = swiglu_spec(gate.format, cfg, norm.is_some());
    let cfg = dispatch_config(k, &sp, cfg)?;
    let params = k
        .gpu
        .uniform("gemv_swiglu params", &params_for(gate, upr, 0, norm, &cfg))?;
    let g = grid(k, gate.n, &cfg)?;
    match norm {
        Some((nw, _)) => k.dispatch(
            &sp,
            &[
                &params,
                &gate.qs,
                &gate.scales,
                &up.qs,
                &up.scales,
                x,
                out,
                nw,
            ],
            g,
        ),
        None => k.dispatch(
            &sp,
            &[&params, &gate.qs, &gate.scales, &up.qs, &up.scales, x, out],
            g,
        ),
    }
}

/// `NxK FORMAT` of each of the three QKV matrices, for errors.
pub(super) fn qkv_shapes(w: [&GpuMatrix; 3]) -> String {
    w.map(|m| format!("{}x{} {}", m.n, m.k, m.format.name()))
        .join(", ")
}
