//! Prefill GEMM: many activation rows times a weight matrix, for every [`WeightFormat`].
//!
//! `out[r][out_offset + j] (+)= sum_k x[r][k] * W[j][k] (+ bias[j])`. One WGSL kernel
//! (`wgsl/gemm.wgsl`) with a dequantising loader per format; tiles of 64 x 64 outputs, 256
//! invocations of 4 x 4 each, k in steps of 32, f32 accumulation (docs/kernels.md, Prefill GEMM).

use bytemuck::{Pod, Zeroable};

use super::args::need_bytes;
use super::family::Family;
use super::{
    Binding, Dispatch, GpuMatrix, KernelSpec, Kernels, NativeKernel, NativeNeeds, Variant,
    WeightFormat,
};
use crate::error::{Error, Result};
use crate::gpu::Capabilities;

pub mod cases;

/// The GEMM family: one pipeline per format, with and without the bias; native kernels
/// (cooperative matrices on Vulkan for [`VULKAN_NATIVE_FORMATS`], simdgroup matrices on Metal
/// for [`METAL_NATIVE_FORMATS`]).
pub static FAMILY: Family = Family {
    name: "gemm",
    wgsl: &["gemm", "gemm_input"],
    pipelines,
    native_coverage: Some(native_coverage),
    checks: Some(cases::checks),
    bench: Some(cases::bench),
};

/// Every GEMM pipeline (natives attached where wick ships them): per format with and without
/// the bias, the variants reading f16 rows where the format has a cooperative-matrix kernel,
/// and the f16 conversion of the rows.
fn pipelines() -> Vec<KernelSpec> {
    let tiling = GemmTiling {
        wg_m: 16,
        wg_n: 16,
        pad: 1,
    };
    let mut v: Vec<KernelSpec> = WeightFormat::ALL
        .iter()
        .flat_map(|&f| [spec(f, false, tiling), spec(f, true, tiling)])
        .collect();
    for mode in HalfRows::ALL {
        v.extend(VULKAN_NATIVE_FORMATS.iter().flat_map(|&f| {
            [
                spec_half(f, false, tiling, mode),
                spec_half(f, true, tiling, mode),
            ]
        }));
    }
    v.push(input_spec());
    v
}

fn native_coverage() -> String {
    let names = |fs: &[WeightFormat]| {
        fs.iter()
            .map(|f| f.name().to_uppercase())
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "Vulkan (cooperative matrices): {}; Metal (simdgroup matrices): {}; with every \
         epilogue; other formats run the portable kernel",
        names(&VULKAN_NATIVE_FORMATS),
        names(&METAL_NATIVE_FORMATS)
    )
}

/// Specs of every pipeline of this family that has a native variant (see
/// [`super::native_specs`]).
pub fn native_specs() -> Vec<KernelSpec> {
    pipelines()
        .into_iter()
        .filter(KernelSpec::has_native)
        .collect()
}

/// Formats with a native GEMM on both backends: every format but F32, whose weights the f16
/// (half) operands would round. The Vulkan kernel stages with the portable loaders; gemm.metal
/// has a loader per format.
pub const NATIVE_FORMATS: [WeightFormat; 10] = [
    WeightFormat::Q4_0,
    WeightFormat::Q4_1,
    WeightFormat::Q5_0,
    WeightFormat::Q5_1,
    WeightFormat::Q8_0,
    WeightFormat::Q4K,
    WeightFormat::Q5K,
    WeightFormat::Q6K,
    WeightFormat::F16,
    WeightFormat::Bf16,
];
/// Formats with a native Vulkan GEMM (cooperative matrices).
pub const VULKAN_NATIVE_FORMATS: [WeightFormat; 10] = NATIVE_FORMATS;
/// Formats with a native Metal GEMM (simdgroup matrices).
pub const METAL_NATIVE_FORMATS: [WeightFormat; 10] = NATIVE_FORMATS;

/// Output tile (activation rows, weight rows) and workgroup bytes of the native Vulkan GEMM
/// (`gemm_coop` in wgsl/gemm.wgsl): two pairs of f16 tiles (double-buffered) of 128 rows of 40 and eight 16 x 16 f32
/// staging fragments.
pub const COOP_TILE: (u32, u32) = (128, 128);
const COOP_WORKGROUP_BYTES: u32 = 2 * 2 * 128 * 40 * 2 + 8 * 256 * 4;

/// Output tile of the native Metal GEMM (`metal_overrides/gemm.metal`, simdgroup matrices):
/// 64 x 64 per threadgroup of 128 threads.
pub const METAL_TILE: (u32, u32) = (64, 64);

/// The (plain, bias) entry names of one format in metal_overrides/gemm.metal.
macro_rules! metal_entries {
    ($f:literal) => {
        (concat!("gemm_", $f), concat!("gemm_", $f, "_bias"))
    };
}

/// The native Metal variant: `gemm_<fmt>[_bias]` in metal_overrides/gemm.metal, for
/// [`METAL_NATIVE_FORMATS`].
fn native_metal(format: WeightFormat, bias: bool) -> Option<NativeKernel> {
    use WeightFormat as F;
    let (plain, with_bias) = match format {
        F::Q4_0 => metal_entries!("q4_0"),
        F::Q4_1 => metal_entries!("q4_1"),
        F::Q5_0 => metal_entries!("q5_0"),
        F::Q5_1 => metal_entries!("q5_1"),
        F::Q8_0 => metal_entries!("q8_0"),
        F::Q4K => metal_entries!("q4_k"),
        F::Q5K => metal_entries!("q5_k"),
        F::Q6K => metal_entries!("q6_k"),
        F::F16 => metal_entries!("f16"),
        F::Bf16 => metal_entries!("bf16"),
        F::F32 => return None,
    };
    let entry = if bias { with_bias } else { plain };
    Some(NativeKernel {
        family: "gemm",
        entry,
        workgroup_size: [128, 1, 1],
        ..Default::default()
    })
}

/// The native Vulkan variant: the cooperative-matrix kernel (see [`NativeKernel::wgsl_defines`]).
fn native_vulkan() -> NativeKernel {
    NativeKernel {
        family: "gemm",
        entry: "gemm_coop",
        workgroup_size: [256, 1, 1],
        wgsl_defines: &["COOP"],
        needs: NativeNeeds {
            cooperative_matrix: true,
            workgroup_storage: COOP_WORKGROUP_BYTES,
            ..Default::default()
        },
    }
}

/// [`spec`] of the cooperative-matrix variant that reads the rows in f16 ([`gemm_half`]): the
/// `COOP_XH` define (which the portable side ignores).
pub fn spec_half(
    format: WeightFormat,
    bias: bool,
    tiling: GemmTiling,
    mode: HalfRows,
) -> KernelSpec {
    let mut s = spec(format, bias, tiling).define("COOP_XH");
    for d in mode.defines() {
        s = s.define(d);
    }
    // The Metal GEMM reads f32 rows ([`reads_half`] is false there).
    s.native_metal = None;
    s
}

/// The f16 conversion of the GEMM's rows (wgsl/gemm_input.wgsl).
pub fn input_spec() -> KernelSpec {
    KernelSpec::new(
        "gemm_input_f16",
        "gemm_input",
        "gemm_input_f16",
        &[Binding::Uniform, Binding::Read, Binding::ReadWrite],
    )
}

/// Whether the engine gives the cooperative-matrix GEMM f16 rows ([`gemm_half`]):
/// `WICK_GEMM_F16_ROWS=1`. Off by default until it has run on a GPU: the kernel passes naga's
/// validation and the conversion its reference check on lavapipe, but neither has been
/// checked or timed on a device with cooperative matrices.
pub fn f16_rows_enabled() -> bool {
    std::env::var("WICK_GEMM_F16_ROWS").is_ok_and(|v| v == "1")
}

/// How the cooperative-matrix kernel on f16 rows ([`spec_half`]) gets its activation
/// fragments: staged in workgroup memory like the weights, or loaded straight from the rows
/// (`COOP_XDIRECT`: only the weights are staged; the caches serve the re-reads), optionally
/// in k steps of 64 (`COOP_BK64`: half the barriers; k a multiple of 64). Chosen with
/// `WICK_GEMM_X_DIRECT=1` and `WICK_GEMM_BK64=1` until the three have been timed against each
/// other; `wick kernels check` checks all three.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HalfRows {
    Staged,
    Direct,
    Direct64,
    /// [`HalfRows::Direct64`] with the weight loads of each step issued before the previous
    /// step's products and decoded after them (`COOP_WPIPE`, `WICK_GEMM_W_PIPE=1`).
    Direct64Pipelined,
}

impl HalfRows {
    pub const ALL: [HalfRows; 4] = [
        HalfRows::Staged,
        HalfRows::Direct,
        HalfRows::Direct64,
        HalfRows::Direct64Pipelined,
    ];

    /// The environment's choice (see the type).
    pub fn from_env() -> HalfRows {
        let on = |name: &str| std::env::var(name).is_ok_and(|v| v == "1");
        match (
            on("WICK_GEMM_X_DIRECT"),
            on("WICK_GEMM_BK64"),
            on("WICK_GEMM_W_PIPE"),
        ) {
            (false, _, _) => HalfRows::Staged,
            (true, false, _) => HalfRows::Direct,
            (true, true, false) => HalfRows::Direct64,
            (true, true, true) => HalfRows::Direct64Pipelined,
        }
    }

    fn defines(self) -> &'static [&'static str] {
        match self {
            HalfRows::Staged => &[],
            HalfRows::Direct => &["COOP_XDIRECT"],
            HalfRows::Direct64 => &["COOP_XDIRECT", "COOP_BK64"],
            HalfRows::Direct64Pipelined => &["COOP_XDIRECT", "COOP_BK64", "COOP_WPIPE"],
        }
    }

    /// The mode a [`spec_half`] spec was built for.
    pub fn of_spec(spec: &KernelSpec) -> HalfRows {
        HalfRows::ALL
            .into_iter()
            .rev()
            .find(|m| m.defines().iter().all(|d| spec.defines.contains(d)))
            .unwrap_or(HalfRows::Staged)
    }

    /// Rows the f16 input of an `m`-row GEMM must hold: whole 128-row tiles when the
    /// fragments are loaded straight from them (rows past `m` are read and their results
    /// discarded), else `m`.
    pub fn rows(self, m: usize) -> usize {
        match self {
            HalfRows::Staged => m,
            _ => m.next_multiple_of(COOP_TILE.0 as usize),
        }
    }

    /// Whether this mode takes a k of `k`.
    pub fn takes_k(self, k: usize) -> bool {
        matches!(self, HalfRows::Staged | HalfRows::Direct) || k.is_multiple_of(64)
    }
}

/// Whether [`gemm_half`] on this matrix format (with or without a bias) runs the
/// cooperative-matrix kernel on f16 rows here; otherwise it reads the f32 rows and the
/// conversion ([`input_f16`]) is wasted.
pub fn reads_half(k: &Kernels, format: WeightFormat, bias: bool) -> Result<bool> {
    reads_half_as(k, format, bias, HalfRows::from_env())
}

/// [`reads_half`] for the kernel of `mode`.
pub fn reads_half_as(
    k: &Kernels,
    format: WeightFormat,
    bias: bool,
    mode: HalfRows,
) -> Result<bool> {
    let caps = &k.gpu.caps;
    if caps.backend == wgpu::Backend::Metal || !VULKAN_NATIVE_FORMATS.contains(&format) {
        return Ok(false);
    }
    let sp = spec_half(format, bias, GemmTiling::for_caps(caps), mode);
    Ok(k.variant_for(&sp)? == Variant::Native)
}

/// The f16 conversion's uniform (WGSL `Params` in gemm_input.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GemmInputParams {
    /// vec4s to convert.
    pub n4: u32,
    pub _pad: [u32; 3],
}

/// `xh` = the first `n` f32 of `x` rounded to f16 (clamped to the finite range), packed two
/// per u32 word, for [`gemm_half`]; `n` a multiple of 4.
pub fn input_f16(k: &Kernels, x: &wgpu::Buffer, n: usize, xh: &wgpu::Buffer) -> Result<Dispatch> {
    if n == 0 || !n.is_multiple_of(4) || n / 4 > u32::MAX as usize {
        return Err(shape(format!(
            "f16 rows of {n} values (a positive multiple of 4)"
        )));
    }
    need_bytes("gemm_input_f16", "x", x, n as u64 * 4)?;
    need_bytes("gemm_input_f16", "xh", xh, n as u64 * 2)?;
    let n4 = (n / 4) as u32;
    let params = k
        .gpu
        .uniform("gemm input params", &GemmInputParams { n4, _pad: [0; 3] })?;
    let groups = n4
        .div_ceil(256)
        .min(k.gpu.caps.max_compute_workgroups_per_dimension);
    k.dispatch(&input_spec(), &[&params, x, xh], [groups, 1, 1])
}

/// The kernel's uniform (WGSL `Params` in gemm.wgsl).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub out_stride: u32,
    pub out_offset: u32,
    /// 1: `out += result`; 0: `out = result`.
    pub accumulate: u32,
    pub _pad: [u32; 2],
}

/// What happens to the result on its way out.
#[derive(Clone, Copy, Default)]
pub struct GemmEpilogue<'a> {
    /// f32[n] added to every row.
    pub bias: Option<&'a wgpu::Buffer>,
    /// `out += result` (residual add).
    pub accumulate: bool,
    /// Column offset: row r, col j of the result goes to `out[r*out_stride + out_offset + j]`.
    pub out_offset: usize,
    /// Row stride of `out` in f32; 0 means n.
    pub out_stride: usize,
}

/// Tile shape: invocations along m and n (each computes 4 x 4 outputs) and the padding of the
/// k-major workgroup tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmTiling {
    pub wg_m: u32,
    pub wg_n: u32,
    pub pad: u32,
}

/// Outputs per invocation along each axis (fixed in the shader) and the k step.
const TM: u32 = 4;
const TN: u32 = 4;
const BK: u32 = 32;

impl GemmTiling {
    /// Output rows (activation rows) per workgroup.
    pub fn bm(self) -> u32 {
        self.wg_m * TM
    }

    /// Output columns (weight rows) per workgroup.
    pub fn bn(self) -> u32 {
        self.wg_n * TN
    }

    /// Bytes of workgroup memory the two f32 tiles take.
    pub fn workgroup_bytes(self) -> u32 {
        BK * (self.bm() + self.pad + self.bn() + self.pad) * 4
    }

    /// 64 x 64 tiles of 256 invocations. The one-word padding that keeps the transposed tile
    /// stores conflict-free needs 16.25 KiB; devices at WebGPU's 16 KiB default go without it.
    pub fn for_caps(caps: &Capabilities) -> GemmTiling {
        let padded = GemmTiling {
            wg_m: 16,
            wg_n: 16,
            pad: 1,
        };
        if padded.workgroup_bytes() <= caps.max_compute_workgroup_storage_size {
            padded
        } else {
            GemmTiling { pad: 0, ..padded }
        }
    }
}

/// Op name of the GEMM for `format`, e.g. `gemm_q4_0`.
pub fn op_name(format: WeightFormat) -> String {
    format!("gemm_{}", format.name())
}

pub fn spec(format: WeightFormat, bias: bool, tiling: GemmTiling) -> KernelSpec {
    let mut bindings = vec![
        Binding::Uniform,
        Binding::Read,
        Binding::Read,
        Binding::Read,
    ];
    if bias {
        bindings.push(Binding::Read);
    }
    bindings.push(Binding::ReadWrite);
    let mut s = KernelSpec::new(op_name(format), "gemm", "gemm", &bindings)
        .define(format.define())
        .constant("WG_M", tiling.wg_m)
        .constant("WG_N", tiling.wg_n)
        .constant("PAD", tiling.pad);
    if bias {
        s = s.define("BIAS");
    }
    if VULKAN_NATIVE_FORMATS.contains(&format) {
        s.native_vulkan = Some(native_vulkan());
    }
    if METAL_NATIVE_FORMATS.contains(&format) {
        s.native_metal = native_metal(format, bias);
    }
    s
}

fn shape(msg: String) -> Error {
    Error::Shape(format!("gemm: {msg}"))
}

/// `out[r*out_stride + out_offset + j] (+)= x[r] . w[j] (+ bias[j])` for r < m, j < w.n.
///
/// x: f32 [m][k] row-major; out: f32 [m][out_stride].
pub fn gemm(
    k: &Kernels,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    m: usize,
    epi: GemmEpilogue,
) -> Result<Dispatch> {
    gemm_tiled(k, w, x, out, m, epi, GemmTiling::for_caps(&k.gpu.caps))
}

/// [`gemm`] with the rows also in f16 (`xh`, from [`input_f16`] of `x`): where
/// [`reads_half`], the cooperative-matrix kernel stages `xh` (half the bytes, no conversion);
/// elsewhere the kernel reads `x`.
pub fn gemm_half(
    k: &Kernels,
    w: &GpuMatrix,
    (x, xh): (&wgpu::Buffer, &wgpu::Buffer),
    out: &wgpu::Buffer,
    m: usize,
    epi: GemmEpilogue,
) -> Result<Dispatch> {
    gemm_half_as(k, w, (x, xh), out, m, epi, HalfRows::from_env())
}

/// [`gemm_half`] with the kernel of `mode`; `xh` holds `mode.rows(m)` rows. A k the mode does
/// not take falls back to the f32 rows.
pub fn gemm_half_as(
    k: &Kernels,
    w: &GpuMatrix,
    (x, xh): (&wgpu::Buffer, &wgpu::Buffer),
    out: &wgpu::Buffer,
    m: usize,
    epi: GemmEpilogue,
    mode: HalfRows,
) -> Result<Dispatch> {
    let tiling = GemmTiling::for_caps(&k.gpu.caps);
    if !reads_half_as(k, w.format, epi.bias.is_some(), mode)? || !mode.takes_k(w.k) {
        return gemm_tiled(k, w, x, out, m, epi, tiling);
    }
    need_bytes("gemm", "xh", xh, (mode.rows(m) * w.k * 2) as u64)?;
    gemm_inner(k, w, (xh, Some(mode)), out, m, epi, tiling)
}

/// [`gemm`] with an explicit tile shape (tests and tuning).
pub fn gemm_tiled(
    k: &Kernels,
    w: &GpuMatrix,
    x: &wgpu::Buffer,
    out: &wgpu::Buffer,
    m: usize,
    epi: GemmEpilogue,
    tiling: GemmTiling,
) -> Result<Dispatch> {
    gemm_inner(k, w, (x, None), out, m, epi, tiling)
}

/// The GEMM of `x`: f32 rows, or with `half` f16 rows for [`spec_half`]'s native kernel.
fn gemm_inner(
    k: &Kernels,
    w: &GpuMatrix,
    (x, half): (&wgpu::Buffer, Option<HalfRows>),
    out: &wgpu::Buffer,
    m: usize,
    epi: GemmEpilogue,
    tiling: GemmTiling,
) -> Result<Dispatch> {
    let (n, kd, f) = (w.n, w.k, w.format);
    if m == 0 || n == 0 || kd == 0 {
        return Err(shape(format!("{m} rows times a {n} x {kd} matrix")));
    }
    if kd % f.k_multiple() != 0 {
        return Err(shape(format!(
            "k = {kd} is not a multiple of {} for {}",
            f.k_multiple(),
            f.name()
        )));
    }
    let stride = if epi.out_stride == 0 {
        n
    } else {
        epi.out_stride
    };
    if epi.out_offset + n > stride {
        return Err(shape(format!(
            "columns {}..{} do not fit an output row of {stride}",
            epi.out_offset,
            epi.out_offset + n
        )));
    }
    let out_len = (m - 1) * stride + epi.out_offset + n;
    let mut need: Vec<(&str, &wgpu::Buffer, usize)> = vec![
        ("weights qs", &w.qs, f.qs_words_per_row(kd) * n * 4),
        ("weights scales", &w.scales, f.scale_words(n, kd) * 4),
        ("x", x, half.map_or(m * kd * 4, |h| h.rows(m) * kd * 2)),
        ("out", out, out_len * 4),
    ];
    if let Some(b) = epi.bias {
        need.push(("bias", b, n * 4));
    }
    for (name, b, bytes) in need {
        need_bytes("gemm", name, b, bytes as u64)?;
    }
    // Indices in the shader are u32.
    if out_len > u32::MAX as usize || m * kd > u32::MAX as usize || n * kd > u32::MAX as usize {
        return Err(shape(format!("{m} x {n} x {kd} overflows 32-bit indexing")));
    }

    let caps = &k.gpu.caps;
    let spec = match half {
        Some(mode) => spec_half(f, epi.bias.is_some(), tiling, mode),
        None => spec(f, epi.bias.is_some(), tiling),
    };
    let native = k.variant_for(&spec)? == Variant::Native;
    if half.is_some() && !native {
        return Err(Error::Unsupported(format!(
            "{}: f16 rows need the cooperative-matrix kernel, not available here",
            spec.op
        )));
    }
    let threads = tiling.wg_m * tiling.wg_n;
    if tiling.wg_m == 0
        || tiling.wg_n == 0
        || threads > caps.max_compute_invocations_per_workgroup
        || tiling.workgroup_bytes() > caps.max_compute_workgroup_storage_size
    {
        return Err(Error::InvalidArgument(format!(
            "gemm tiling {tiling:?} does not fit this device"
        )));
    }
    let metal = caps.backend == wgpu::Backend::Metal;
    // The native kernel has its own fixed tile: dispatch for it.
    let (bm, bn) = if native && metal {
        METAL_TILE
    } else if native {
        COOP_TILE
    } else {
        (tiling.bm(), tiling.bn())
    };
    let grid = [(n as u32).div_ceil(bn), (m as u32).div_ceil(bm), 1];
    if grid[0] > caps.max_compute_workgroups_per_dimension
        || grid[1] > caps.max_compute_workgroups_per_dimension
    {
        return Err(shape(format!(
            "a {m} x {n} output needs {} x {} workgroups, over the device's {} per dimension",
            grid[0], grid[1], caps.max_compute_workgroups_per_dimension
        )));
    }

    let params = k.gpu.uniform(
        "gemm params",
        &GemmParams {
            m: m as u32,
            n: n as u32,
            k: kd as u32,
            out_stride: stride as u32,
            out_offset: epi.out_offset as u32,
            accumulate: epi.accumulate as u32,
            _pad: [0; 2],
        },
    )?;
    match epi.bias {
        Some(b) => k.dispatch(&spec, &[&params, &w.qs, &w.scales, x, b, out], grid),
        None => k.dispatch(&spec, &[&params, &w.qs, &w.scales, x, out], grid),
    }
}
