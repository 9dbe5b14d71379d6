//! Integer-dot GEMV: decode's GEMV on a quantised activation row. [`act_q8`] quantises the
//! (optionally RMS-normalised) f32 row once per step into 8-bit blocks of 32 (GGML's Q8_1:
//! int8, d, d * sum; `wgsl/act_q8.wgsl`); [`gemv_dot`], [`gemv_dot_swiglu`] and
//! [`gemv_dot_qkv`] multiply weight blocks with it in packed 4-way int8 dot products
//! (`wgsl/gemv_dot.wgsl`), so the f32 activation loads that bound the float GEMV
//! ([`super::gemv`]) go away. The result differs from the float GEMV's by the activation
//! rounding (at most d/2 per element; [`crate::reference::act_q8::rounding_bound`]).
//!
//! Formats: [`DOT_FORMATS`]. Work split: [`GemvConfig`], as the float GEMV's, over units of
//! one 32-element block (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) or one 64-element K-quant
//! pair (Q4_K, Q5_K, Q6_K).

use super::args::need_bytes;
use super::family::Family;
use super::gemv::{check_matrix, grid, qkv_shapes, GemvConfig, GemvParams};
use super::{grid_1d, Binding, Dispatch, GpuMatrix, KernelSpec, Kernels};
use crate::error::{Error, Result};
use crate::gpu::Capabilities;
use crate::quant::WeightFormat;
use crate::reference::act_q8::{packed_words, BLOCK};

pub mod cases;

/// The integer-dot GEMV family: the activation quantiser (with and without the norm
/// prologue) and plain, gate+up+SwiGLU and QKV GEMVs per format of [`DOT_FORMATS`].
pub static FAMILY: Family = Family {
    name: "gemv_dot",
    wgsl: &["gemv_dot", "act_q8"],
    pipelines,
    native_coverage: None,
    checks: Some(cases::checks),
    bench: Some(cases::bench),
};

/// Weight formats with an integer-dot GEMV.
pub const DOT_FORMATS: [WeightFormat; 8] = [
    WeightFormat::Q4K,
    WeightFormat::Q6K,
    WeightFormat::Q4_0,
    WeightFormat::Q8_0,
    WeightFormat::Q5K,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
];

/// Whether `format` has an integer-dot GEMV.
pub fn dot_supported(format: WeightFormat) -> bool {
    DOT_FORMATS.contains(&format)
}

/// The op of the activation quantiser.
pub const ACT_Q8_OP: &str = "act_q8";

fn pipelines() -> Vec<KernelSpec> {
    let cfg = GemvConfig {
        lanes_per_row: 32,
        rows_per_group: 2,
        workgroup_size: 64,
        subgroup_reduce: false,
    };
    let mut v = vec![act_q8_spec(false), act_q8_spec(true)];
    // Each kind on act_q8's row, and with the quantising prologue (the runtime's plain
    // GEMVs read a row without the norm, the fused ones the residual stream with it).
    let pro: &[&'static str] = &["QPRO", PROLOGUE_SIZES[0].1];
    let pro_norm: &[&'static str] = &["QPRO", PROLOGUE_SIZES[0].1, "NORM"];
    for input in [&[][..], pro] {
        for f in DOT_FORMATS {
            v.push(spec(f, &cfg, (false, false), input));
        }
    }
    for input in [&[][..], pro_norm] {
        for f in DOT_FORMATS {
            v.push(swiglu_spec(f, &cfg, input));
        }
        for f in DOT_FORMATS {
            v.push(qkv_spec(f, &cfg, false, input));
        }
    }
    v
}

/// WGSL mirror of act_q8's `struct Params { k, eps_bits, _pad }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ActParams {
    pub k: u32,
    pub eps_bits: u32,
    pub _pad: [u32; 2],
}

/// Workgroup size of the quantiser (eight lanes per 32-element block).
const ACT_WG: u32 = 256;

fn act_q8_spec(norm: bool) -> KernelSpec {
    let mut b = vec![Binding::Uniform, Binding::Read, Binding::ReadWrite];
    if norm {
        b.push(Binding::Read);
    }
    let s = KernelSpec::new(ACT_Q8_OP, "act_q8", "act_q8", &b);
    let s = if norm { s.define("NORM") } else { s };
    s.constant("WG", ACT_WG)
}

/// Bytes of the quantised activations of a row of `k` elements ([`act_q8`]'s output).
pub fn act_q8_bytes(k: usize) -> u64 {
    packed_words(k) as u64 * 4
}

/// A buffer for the quantised activations of a row of `k` elements.
pub fn act_q8_buffer(gpu: &crate::gpu::Gpu, k: usize) -> Result<wgpu::Buffer> {
    gpu.storage_buffer("act_q8", act_q8_bytes(k))
}

/// Quantises the f32 row `x[k]` (k a multiple of 32) into `xq` (see `wgsl/act_q8.wgsl` for
/// the layout), RMS-normalising it first with `norm` = (weights f32[k], epsilon) when given.
pub fn act_q8(
    kern: &Kernels,
    x: &wgpu::Buffer,
    k: usize,
    xq: &wgpu::Buffer,
    norm: Option<(&wgpu::Buffer, f32)>,
) -> Result<Dispatch> {
    if k == 0 || !k.is_multiple_of(BLOCK) || k > u32::MAX as usize / 2 {
        return Err(Error::Shape(format!(
            "act_q8: k = {k} must be a non-zero multiple of {BLOCK}"
        )));
    }
    need_bytes("act_q8", "x", x, k as u64 * 4)?;
    need_bytes("act_q8", "xq", xq, act_q8_bytes(k))?;
    if let Some((w, eps)) = norm {
        need_bytes("act_q8", "norm weights", w, k as u64 * 4)?;
        if !(eps.is_finite() && eps >= 0.0) {
            return Err(Error::InvalidArgument(format!("rms epsilon {eps}")));
        }
    }
    let params = ActParams {
        k: k as u32,
        eps_bits: norm.map_or(0, |(_, e)| e.to_bits()),
        _pad: [0; 2],
    };
    let params = kern.gpu.uniform("act_q8 params", &params)?;
    let sp = act_q8_spec(norm.is_some());
    let wgs = (k / 4).div_ceil(ACT_WG as usize) as u32;
    let g = grid_1d(wgs, kern.gpu.caps.max_compute_workgroups_per_dimension);
    match norm {
        Some((w, _)) => kern.dispatch(&sp, &[&params, x, xq, w], g),
        None => kern.dispatch(&sp, &[&params, x, xq], g),
    }
}

/// Elements per unit of the integer-dot GEMV: a 32-element block, or a 64-element K-quant
/// pair.
pub fn dot_unit_elems(format: WeightFormat) -> usize {
    match format {
        WeightFormat::Q4K | WeightFormat::Q5K | WeightFormat::Q6K => 64,
        _ => 32,
    }
}

/// The activation row an integer-dot GEMV reads.
#[derive(Clone, Copy, Debug)]
pub enum DotInput<'a> {
    /// [`act_q8`]'s output for the row.
    Quantised(&'a wgpu::Buffer),
    /// The f32 row itself, quantised by every workgroup in its prologue (RMS-normalised
    /// first with `norm` = (weights f32[k], epsilon) when given), so the row costs no
    /// dispatch of its own; where [`prologue_fits`] says so.
    Row {
        x: &'a wgpu::Buffer,
        norm: Option<(&'a wgpu::Buffer, f32)>,
    },
}

impl<'a> From<&'a wgpu::Buffer> for DotInput<'a> {
    fn from(xq: &'a wgpu::Buffer) -> Self {
        DotInput::Quantised(xq)
    }
}

impl<'a> DotInput<'a> {
    /// The bound x buffer.
    fn buffer(&self) -> &'a wgpu::Buffer {
        match *self {
            DotInput::Quantised(b) => b,
            DotInput::Row { x, .. } => x,
        }
    }

    /// The norm weights, bound last.
    fn norm(&self) -> Option<(&'a wgpu::Buffer, f32)> {
        match *self {
            DotInput::Quantised(_) => None,
            DotInput::Row { norm, .. } => norm,
        }
    }

    /// Checks the buffers for a row of `k` and returns the prologue's defines (QPRO with
    /// its array size, NORM) and the epsilon bits.
    fn prepare(
        &self,
        what: &str,
        caps: &Capabilities,
        k: usize,
    ) -> Result<(Vec<&'static str>, u32)> {
        match *self {
            DotInput::Quantised(xq) => {
                need_bytes(what, "xq", xq, act_q8_bytes(k))?;
                Ok((Vec::new(), 0))
            }
            DotInput::Row { x, norm } => {
                let size = prologue_fits(caps, k).ok_or_else(|| {
                    Error::Unsupported(format!(
                        "{what}: a row of {k} does not fit the quantising prologue's workgroup memory here"
                    ))
                })?;
                need_bytes(what, "x", x, k as u64 * 4)?;
                let mut d = vec!["QPRO", size];
                let mut eps_bits = 0;
                if let Some((w, eps)) = norm {
                    need_bytes(what, "norm weights", w, k as u64 * 4)?;
                    if !(eps.is_finite() && eps >= 0.0) {
                        return Err(Error::InvalidArgument(format!("rms epsilon {eps}")));
                    }
                    d.push("NORM");
                    eps_bits = eps.to_bits();
                }
                Ok((d, eps_bits))
            }
        }
    }
}

/// Row lengths the quantising prologue's workgroup array is compiled for (its `XQ_VEC4`
/// define: 5k / 64 vec4s, the packed int8 then the (d, d * sum) pairs).
const PROLOGUE_SIZES: [(usize, &str); 5] = [
    (2048, "XQ_VEC4=160"),
    (4096, "XQ_VEC4=320"),
    (8192, "XQ_VEC4=640"),
    (16384, "XQ_VEC4=1280"),
    (24576, "XQ_VEC4=1920"),
];

/// Workgroup bytes of the GEMV beside the prologue's array: the reduction partials, the norm
/// partials and the reduce scratch.
const PROLOGUE_OTHER_BYTES: usize = 2048 * 4 + 1024 * 4 + 1024;

/// The `XQ_VEC4` define of the quantising prologue for a row of `k` (a multiple of 32) when
/// its array fits this device's workgroup memory ([`DotInput::Row`]).
pub fn prologue_fits(caps: &Capabilities, k: usize) -> Option<&'static str> {
    let (cap, d) = PROLOGUE_SIZES.into_iter().find(|(cap, _)| *cap >= k)?;
    let bytes = cap * 5 / 64 * 16 + PROLOGUE_OTHER_BYTES;
    (k.is_multiple_of(BLOCK) && bytes <= caps.max_compute_workgroup_storage_size as usize)
        .then_some(d)
}

/// Accumulators per lane in the shader.
const MAX_ACC: u32 = 16;

/// The work split for an n x k matrix (`swiglu`: the gate+up kernel, two matrices per row
/// group). NVIDIA: the splits `wick tune --kinds dot` measured fastest on an H100 for the
/// Llama-3-8B shapes (docs/performance.md), written as a rule: one warp-wide 32-lane group
/// per row, 64 lanes on short matrices with long rows (n <= 2048) and on a Q6_K-style LM head,
/// wider for Q8_0 (34-byte units: 64 lanes at k = 4096, 128 at k >= 8192); two rows per group
/// (each unit's activations serve both) where the matrix is large enough to keep the GPU busy
/// with half the groups, except Q8_0 and the gate+up kernel; workgroups of 128 (256 for the
/// Q4_0-style formats on rows of one warp and k < 8192). Others: the
/// widest lanes per row up to 32 (or the subgroup) that keeps 3/4 of the lane-steps busy,
/// two rows per group, 64-lane workgroups.
pub fn dot_config(
    caps: &Capabilities,
    format: WeightFormat,
    n: usize,
    k: usize,
    swiglu: bool,
) -> GemvConfig {
    let units = (k / dot_unit_elems(format)).max(1);
    if caps.class == crate::gpu::AdapterClass::Nvidia {
        let k_quant = format.k_multiple() > 32;
        let lpr: usize = if swiglu && k_quant {
            16
        } else if format == WeightFormat::Q8_0 {
            if k >= 8192 {
                128
            } else if n <= 4096 {
                64
            } else {
                32
            }
        } else if (n <= 2048 && units >= 128) || (k_quant && n >= 65536) {
            64
        } else {
            32
        };
        let lpr = lpr.min(units.next_power_of_two().clamp(4, 256)) as u32;
        let two_rows = !swiglu
            && format != WeightFormat::Q8_0
            && ((k_quant && n >= 4096) || k >= 8192 || n >= 65536);
        // The 32-element block formats but Q8_0 measured faster in 256-lane workgroups on
        // rows of 4096 with one warp per row (QKV, q/o, the LM head).
        let wide = !swiglu && !k_quant && format != WeightFormat::Q8_0 && lpr == 32 && k < 8192;
        return GemvConfig {
            lanes_per_row: lpr,
            rows_per_group: if two_rows { 2 } else { 1 },
            workgroup_size: if wide { 256 } else { 128 },
            subgroup_reduce: caps.subgroup && lpr <= caps.subgroup_min_size,
        };
    }
    let mut lpr = 32u32;
    while lpr > 1 {
        let slots = units.div_ceil(lpr as usize) * lpr as usize;
        if units * 4 >= slots * 3 {
            break;
        }
        lpr /= 2;
    }
    let subgroup_reduce = caps.subgroup && caps.subgroup_min_size >= 1;
    if subgroup_reduce {
        lpr = lpr.min(caps.subgroup_min_size.max(1));
    }
    GemvConfig {
        lanes_per_row: lpr,
        rows_per_group: 2,
        workgroup_size: 64u32.max(lpr),
        subgroup_reduce,
    }
}

/// The work split of op `gemv_dot` or `gemv_dot_swiglu` (the fused QKV looks up `gemv_dot`
/// with its summed rows) on an n x k `format` matrix: this device's measured split from the
/// tuning table (`wick tune`) where it has one that the shader accepts, else [`dot_config`].
pub fn dot_config_for(
    k: &Kernels,
    op: &str,
    format: WeightFormat,
    n: usize,
    kdim: usize,
) -> GemvConfig {
    let caps = &k.gpu.caps;
    let nmat = if op == "gemv_dot_swiglu" { 2 } else { 1 };
    if let Some(c) = k
        .tuning
        .as_ref()
        .and_then(|t| t.lookup(caps, op, format, n, kdim))
        .filter(|c| validate(c, caps, nmat).is_ok())
    {
        return c;
    }
    let mut cfg = dot_config(caps, format, n, kdim, nmat == 2);
    // Two matrices per row group: keep the accumulators within the shader's array.
    cfg.rows_per_group = cfg.rows_per_group.min(MAX_ACC / nmat);
    cfg
}

/// A GEMV spec of `reads` + `writes` storage bindings, with `input`'s prologue defines
/// (QPRO, its size, NORM: the norm weights bound last).
fn dot_spec(
    op: String,
    entry: &'static str,
    format: WeightFormat,
    cfg: &GemvConfig,
    variant: Option<&'static str>,
    (reads, writes): (usize, usize),
    input: &[&'static str],
) -> KernelSpec {
    let mut bindings = vec![Binding::Uniform];
    bindings.extend(std::iter::repeat_n(Binding::Read, reads));
    bindings.extend(std::iter::repeat_n(Binding::ReadWrite, writes));
    if input.contains(&"NORM") {
        bindings.push(Binding::Read);
    }
    let mut s = KernelSpec::new(op, "gemv_dot", entry, &bindings).define(format.define());
    if let Some(d) = variant {
        s = s.define(d);
    }
    for d in input {
        s = s.define(d);
    }
    s.constant("LPR", cfg.lanes_per_row)
        .constant("RPG", cfg.rows_per_group)
        .constant("WG", cfg.workgroup_size)
        .constant("SG_REDUCE", cfg.subgroup_reduce as u32)
}

/// The plain integer-dot GEMV (op `gemv_dot_<format>`); `input`: the prologue's defines
/// ([`DotInput`]).
pub fn spec(
    format: WeightFormat,
    cfg: &GemvConfig,
    (bias, accumulate): (bool, bool),
    input: &[&'static str],
) -> KernelSpec {
    let op = format!("gemv_dot_{}", format.name());
    dot_spec(op, "gemv", format, cfg, None, (4, 1), input)
        .constant("HAS_BIAS", bias as u32)
        .constant("ACCUMULATE", accumulate as u32)
}

/// The fused gate+up+SwiGLU integer-dot GEMV (op `gemv_dot_swiglu_<format>`).
pub fn swiglu_spec(format: WeightFormat, cfg: &GemvConfig, input: &[&'static str]) -> KernelSpec {
    let op = format!("gemv_dot_swiglu_{}", format.name());
    dot_spec(
        op,
        "gemv_swiglu",
        format,
        cfg,
        Some("SWIGLU"),
        (5, 1),
        input,
    )
}

/// The fused QKV integer-dot GEMV (op `gemv_dot_qkv_<format>`).
pub fn qkv_spec(
    format: WeightFormat,
    cfg: &GemvConfig,
    bias: bool,
    input: &[&'static str],
) -> KernelSpec {
    let op = format!("gemv_dot_qkv_{}", format.name());
    dot_spec(op, "gemv", format, cfg, Some("QKV"), (10, 3), input)
        .constant("HAS_BIAS", bias as u32)
        .constant("ACCUMULATE", 0)
}

/// Validates the split for the shader's accumulator array and workgroup-memory slots.
fn validate(cfg: &GemvConfig, caps: &Capabilities, nmat: u32) -> Result<()> {
    cfg.validate(caps, nmat == 2)?;
    if nmat * cfg.rows_per_group > MAX_ACC {
        return Err(Error::InvalidArgument(format!(
            "gemv_dot config {cfg:?}: too many rows per group"
        )));
    }
    Ok(())
}

/// Checks the matrix is of a dot format and returns its units per row.
fn check_dot_matrix(name: &str, w: &GpuMatrix) -> Result<u32> {
    if !dot_supported(w.format) {
        return Err(Error::Unsupported(format!(
            "gemv_dot: {name} is {}, which has no integer-dot GEMV (formats: {})",
            w.format.name(),
            DOT_FORMATS.map(|f| f.name()).join(", ")
        )));
    }
    check_matrix(name, w)?;
    Ok((w.k / dot_unit_elems(w.format)) as u32)
}

fn params(
    w: &GpuMatrix,
    upr: u32,
    out_offset: usize,
    cfg: &GemvConfig,
    eps_bits: u32,
) -> GemvParams {
    GemvParams {
        n: w.n as u32,
        upr,
        out_offset: out_offset as u32,
        eps_bits,
        k4: (w.k / 4) as u32,
        nk: 0,
        nv: 0,
        flags: 0,
        lanes_per_row: cfg.lanes_per_row,
        _pad: [0; 3],
    }
}

/// The epilogue of [`gemv_dot`]: as the float GEMV's, without the norm prologue (the norm
/// belongs to [`act_q8`]).
#[derive(Clone, Copy, Default)]
pub struct DotEpilogue<'a> {
    /// f32[n], added to each output row.
    pub bias: Option<&'a wgpu::Buffer>,
    /// `out[i] += result` instead of `out[i] = result`.
    pub accumulate: bool,
    /// Row i is written to `out[out_offset + i]`.
    pub out_offset: usize,
}

/// `out[epi.out_offset + i] (+)= w[i] · x (+ bias[i])` for a row x of w.k elements, given as
/// [`act_q8`]'s output (a `&wgpu::Buffer`) or as the f32 row ([`DotInput::Row`]).
pub fn gemv_dot<'a>(
    k: &Kernels,
    w: &GpuMatrix,
    x: impl Into<DotInput<'a>>,
    out: &wgpu::Buffer,
    epi: DotEpilogue,
) -> Result<Dispatch> {
    let cfg = dot_config_for(k, "gemv_dot", w.format, w.n, w.k);
    gemv_dot_with_config(k, w, x, out, epi, &cfg)
}

/// [`gemv_dot`] with an explicit work split.
pub fn gemv_dot_with_config<'a>(
    k: &Kernels,
    w: &GpuMatrix,
    x: impl Into<DotInput<'a>>,
    out: &wgpu::Buffer,
    epi: DotEpilogue,
    cfg: &GemvConfig,
) -> Result<Dispatch> {
    let x: DotInput = x.into();
    validate(cfg, &k.gpu.caps, 1)?;
    let upr = check_dot_matrix("w", w)?;
    let (input, eps_bits) = x.prepare("gemv_dot", &k.gpu.caps, w.k)?;
    let xq = x.buffer();
    let end = epi
        .out_offset
        .checked_add(w.n)
        .filter(|e| *e <= u32::MAX as usize)
        .ok_or_else(|| Error::Shape("gemv_dot: out_offset too large".into()))?;
    need_bytes("gemv_dot", "out", out, end as u64 * 4)?;
    if let Some(b) = epi.bias {
        need_bytes("gemv_dot", "bias", b, w.n as u64 * 4)?;
    }
    let sp = spec(w.format, cfg, (epi.bias.is_some(), epi.accumulate), &input);
    let params = k.gpu.uniform(
        "gemv_dot params",
        &params(w, upr, epi.out_offset, cfg, eps_bits),
    )?;
    let bias = epi.bias.unwrap_or(xq);
    let mut b = vec![&params, &w.qs, &w.scales, xq, bias, out];
    b.extend(x.norm().map(|(nw, _)| nw));
    k.dispatch(&sp, &b, grid(k, w.n, cfg)?)
}

/// out[i] = silu(gate·x)_i * (up·x)_i on quantised activations (one format and shape).
pub fn gemv_dot_swiglu<'a>(
    k: &Kernels,
    gate: &GpuMatrix,
    up: &GpuMatrix,
    x: impl Into<DotInput<'a>>,
    out: &wgpu::Buffer,
) -> Result<Dispatch> {
    let cfg = dot_config_for(k, "gemv_dot_swiglu", gate.format, gate.n, gate.k);
    gemv_dot_swiglu_with_config(k, gate, up, x, out, &cfg)
}

/// [`gemv_dot_swiglu`] with an explicit work split.
pub fn gemv_dot_swiglu_with_config<'a>(
    k: &Kernels,
    gate: &GpuMatrix,
    up: &GpuMatrix,
    x: impl Into<DotInput<'a>>,
    out: &wgpu::Buffer,
    cfg: &GemvConfig,
) -> Result<Dispatch> {
    let x: DotInput = x.into();
    validate(cfg, &k.gpu.caps, 2)?;
    if gate.format != up.format || gate.n != up.n || gate.k != up.k {
        return Err(Error::Shape(format!(
            "gemv_dot_swiglu: gate is {} x {} {}, up is {} x {} {}",
            gate.n,
            gate.k,
            gate.format.name(),
            up.n,
            up.k,
            up.format.name()
        )));
    }
    let upr = check_dot_matrix("gate", gate)?;
    check_dot_matrix("up", up)?;
    let (input, eps_bits) = x.prepare("gemv_dot", &k.gpu.caps, gate.k)?;
    need_bytes("gemv_dot", "out", out, gate.n as u64 * 4)?;
    let sp = swiglu_spec(gate.format, cfg, &input);
    let params = k.gpu.uniform(
        "gemv_dot_swiglu params",
        &params(gate, upr, 0, cfg, eps_bits),
    )?;
    let mut b = vec![
        &params,
        &gate.qs,
        &gate.scales,
        &up.qs,
        &up.scales,
        x.buffer(),
        out,
    ];
    b.extend(x.norm().map(|(nw, _)| nw));
    k.dispatch(&sp, &b, grid(k, gate.n, cfg)?)
}

/// Storage buffers the fused QKV integer-dot GEMV binds.
pub const QKV_STORAGE_BINDINGS: u32 = 13;

fn qkv_config(kern: &Kernels, q: &GpuMatrix, k: &GpuMatrix, v: &GpuMatrix) -> GemvConfig {
    dot_config_for(kern, "gemv_dot", q.format, q.n + k.n + v.n, q.k)
}

/// Whether [`gemv_dot_qkv`] can run these three matrices here: one dot format and row
/// length, row groups that never straddle two matrices, enough storage bindings.
pub fn qkv_dot_supported(kern: &Kernels, q: &GpuMatrix, k: &GpuMatrix, v: &GpuMatrix) -> bool {
    let caps = &kern.gpu.caps;
    let cfg = qkv_config(kern, q, k, v);
    dot_supported(q.format)
        && q.format == k.format
        && q.format == v.format
        && q.k == k.k
        && q.k == v.k
        && caps.max_storage_buffers_per_shader_stage >= QKV_STORAGE_BINDINGS
        && q.n.is_multiple_of(cfg.rows_per_group as usize)
        && k.n.is_multiple_of(cfg.rows_per_group as usize)
}

/// q, k and v projections of one quantised activation row in one dispatch, each matrix with
/// its own planes, optional bias and output buffer. See [`qkv_dot_supported`].
pub fn gemv_dot_qkv<'a>(
    kern: &Kernels,
    w: [&GpuMatrix; 3],
    x: impl Into<DotInput<'a>>,
    bias: Option<[&wgpu::Buffer; 3]>,
    out: [&wgpu::Buffer; 3],
) -> Result<Dispatch> {
    let x: DotInput = x.into();
    let [q, k, v] = w;
    let caps = &kern.gpu.caps;
    if !qkv_dot_supported(kern, q, k, v) {
        return Err(Error::Unsupported(format!(
            "fused QKV integer-dot GEMV of {} on this device",
            qkv_shapes([q, k, v])
        )));
    }
    let cfg = qkv_config(kern, q, k, v);
    validate(&cfg, caps, 1)?;
    let upr = check_dot_matrix("q", q)?;
    check_dot_matrix("k", k)?;
    check_dot_matrix("v", v)?;
    let (input, eps_bits) = x.prepare("gemv_dot", caps, q.k)?;
    if x.norm().is_some() && caps.max_storage_buffers_per_shader_stage < QKV_STORAGE_BINDINGS + 1 {
        return Err(Error::Unsupported(
            "fused QKV integer-dot GEMV with the norm prologue: too few storage bindings".into(),
        ));
    }
    let xq = x.buffer();
    for (name, m, o) in [("q", q, out[0]), ("k", k, out[1]), ("v", v, out[2])] {
        need_bytes("gemv_dot", &format!("out {name}"), o, m.n as u64 * 4)?;
    }
    if let Some(b) = bias {
        for (name, m, bb) in [("q", q, b[0]), ("k", k, b[1]), ("v", v, b[2])] {
            need_bytes("gemv_dot", &format!("bias {name}"), bb, m.n as u64 * 4)?;
        }
    }
    let sp = qkv_spec(q.format, &cfg, bias.is_some(), &input);
    let mut p = params(q, upr, 0, &cfg, eps_bits);
    p.nk = k.n as u32;
    p.nv = v.n as u32;
    let p = kern.gpu.uniform("gemv_dot_qkv params", &p)?;
    let b = bias.unwrap_or([xq, xq, xq]);
    let mut bind = vec![
        &p, &q.qs, &q.scales, &k.qs, &k.scales, &v.qs, &v.scales, xq, b[0], b[1], b[2], out[0],
        out[1], out[2],
    ];
    bind.extend(x.norm().map(|(nw, _)| nw));
    kern.dispatch(&sp, &bind, grid(kern, q.n + k.n + v.n, &cfg)?)
}
