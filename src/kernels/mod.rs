//! The kernel registry.
//!
//! A kernel is identified by (op, weight format, variant). Every op has a portable WGSL
//! implementation in `wgsl/<family>.wgsl`; an op may also have native variants per backend
//! (`metal_overrides/<family>.metal`, `vulkan_overrides/<family>.spv`) that bind the same
//! buffers in the same layout. Callers describe what they want with a [`KernelSpec`] and get a
//! cached [`Pipeline`]; which variant backs it is the registry's choice ([`KernelPolicy`]).
//!
//! WGSL sources go through a small preprocessor ([`preprocess`]): `#include "name"`,
//! `#ifdef` / `#ifndef` / `#else` / `#endif`. The registry defines `SUBGROUP` when the
//! device has subgroup operations and `F16` when it has `SHADER_F16`, so one source carries
//! both the subgroup path and its workgroup-memory fallback. Numeric specialisation (tile
//! sizes, lanes per row) goes through WGSL `override` constants.
//!
//! Each family lives in its own module with its params struct, bindings, dispatch shape and
//! variant choice; the host wrappers are thin and return a [`Dispatch`] that is built once
//! and recorded into a compute pass as often as needed.

pub mod argmax;
pub mod attention;
pub mod bandwidth;
pub mod catalog;
pub mod check;
pub mod embedding;
pub mod family;
pub mod gemm;
pub mod gemv;
pub mod kv_cache;
pub mod matrix;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod swiglu;
pub mod tuning;
pub mod variant_bench;

pub use family::Family;
pub use matrix::GpuMatrix;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::gpu::{AdapterClass, Capabilities, Gpu};
pub use crate::quant::WeightFormat;

mod sources {
    include!(concat!(env!("OUT_DIR"), "/shader_sources.rs"));
}

/// The WGSL source of a family (file stem under `wgsl/`), before preprocessing.
pub fn wgsl_source(family: &str) -> Option<&'static str> {
    sources::WGSL_SOURCES
        .iter()
        .find(|(n, _)| *n == family)
        .map(|(_, s)| *s)
}

/// Every WGSL family shipped in the binary.
pub fn wgsl_families() -> impl Iterator<Item = &'static str> {
    sources::WGSL_SOURCES.iter().map(|(n, _)| *n)
}

/// The MSL source of a native Metal family, if any.
pub fn msl_source(family: &str) -> Option<&'static str> {
    sources::MSL_SOURCES
        .iter()
        .find(|(n, _)| *n == family)
        .map(|(_, s)| *s)
}

/// The SPIR-V of a native Vulkan family, if any.
pub fn spirv_source(family: &str) -> Option<&'static [u8]> {
    sources::SPIRV_SOURCES
        .iter()
        .find(|(n, _)| *n == family)
        .map(|(_, s)| *s)
}

/// The runtime checks naga adds to wick's WGSL kernels. By default every check stays except
/// loop bounding: naga otherwise wraps every loop in an iteration counter that keeps drivers
/// from unrolling and pipelining it, which on an H100 (Vulkan) cost 35-60% of the GEMV
/// bandwidth and 5x in prefill (measured 2026-11-22: Q8_0 GEMV 4096x4096 23.4 -> 15.3 us,
/// SmolLM2 decode 543 -> 842 tok/s, pp512 844 -> 3941 tok/s). Every wick loop is a counted
/// loop over sizes the host validated, so none can run forever. `WICK_SHADER_CHECKS=all` puts
/// loop bounding back; `none` also drops bounds and integer-division checks (kernel authors
/// measuring their cost: on Vulkan robust buffer access still applies, elsewhere an
/// out-of-range index is undefined behaviour).
pub fn shader_checks() -> wgpu::ShaderRuntimeChecks {
    let all = wgpu::ShaderRuntimeChecks::checked();
    match std::env::var("WICK_SHADER_CHECKS").as_deref() {
        Ok("all") => all,
        Ok("none") => wgpu::ShaderRuntimeChecks::unchecked(),
        _ => wgpu::ShaderRuntimeChecks {
            force_loop_bounding: false,
            ..all
        },
    }
}

/// Every kernel family, in the order of a decode step (roughly): the catalog, `wick kernels
/// check` and `wick kernels bench` iterate over this list (see [`Family`]).
pub static FAMILIES: &[&Family] = &[
    &embedding::FAMILY,
    &rmsnorm::FAMILY,
    &rope::FAMILY,
    &kv_cache::FAMILY,
    &attention::FAMILY,
    &gemv::FAMILY,
    &gemm::FAMILY,
    &softmax::FAMILY,
    &swiglu::FAMILY,
    &argmax::FAMILY,
    &sample::FAMILY,
];

/// The family whose WGSL file `spec` builds from.
pub fn family_of(spec: &KernelSpec) -> Option<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.wgsl.contains(&spec.family))
}

/// Every pipeline with a native variant on some backend, from every family: what `wick
/// kernels check` checks, and what the binding-contract tests read (a native module must
/// bind exactly its spec's layout).
pub fn native_specs() -> Vec<KernelSpec> {
    FAMILIES
        .iter()
        .flat_map(|f| (f.pipelines)())
        .filter(KernelSpec::has_native)
        .collect()
}

/// The weight format an op name ends in (`gemv_q4_0` -> Q4_0).
pub fn op_format(op: &str) -> Option<WeightFormat> {
    WeightFormat::ALL
        .into_iter()
        .find(|f| op.ends_with(&format!("_{}", f.name())))
}

/// The checks naga adds to a native kernel written in WGSL ([`NativeKernel::wgsl_defines`]):
/// none, as for the SPIR-V and MSL native kernels, unless `WICK_SHADER_CHECKS=all`. Its
/// workgroup indices come from constants and invocation ids, and its storage accesses are
/// guarded by explicit bounds tests (plus Vulkan's robust buffer access). On the H100 the
/// bounds checks on the cooperative-matrix GEMM's workgroup tiles cost 28% of its time
/// (measured 2026-11-22, 8B Q4_0 pp512: 198 -> 143 ms of GEMM per 512-token chunk).
pub fn native_wgsl_checks() -> wgpu::ShaderRuntimeChecks {
    match std::env::var("WICK_SHADER_CHECKS").as_deref() {
        Ok("all") => wgpu::ShaderRuntimeChecks::checked(),
        _ => wgpu::ShaderRuntimeChecks::unchecked(),
    }
}

/// Whether kernels that need cooperative matrices can run: f16 16x16x16 cooperative
/// matrices and subgroups of exactly 32 (each subgroup owns a fixed share of the tile).
pub fn cooperative_matrix_usable(caps: &Capabilities) -> bool {
    caps.cooperative_matrix_f16
        && caps.subgroup
        && caps.subgroup_min_size == 32
        && caps.subgroup_max_size == 32
}

/// Expands `#include`, `#ifdef`, `#ifndef`, `#else`, `#endif` with the given defines.
pub fn preprocess(family: &str, defines: &[&str]) -> Result<String> {
    let src = wgsl_source(family).ok_or_else(|| Error::Shader {
        family: family.into(),
        message: "no such WGSL family".into(),
    })?;
    let mut out = String::with_capacity(src.len() + 1024);
    let mut included = Vec::new();
    let mut defines: Vec<String> = defines.iter().map(|d| d.to_string()).collect();
    expand(family, src, &mut defines, &mut out, &mut included, 0)?;
    Ok(out)
}

fn expand(
    family: &str,
    src: &str,
    defines: &mut Vec<String>,
    out: &mut String,
    included: &mut Vec<String>,
    depth: u32,
) -> Result<()> {
    let err = |line: usize, msg: String| Error::Shader {
        family: family.into(),
        message: format!("line {}: {msg}", line + 1),
    };
    if depth > 8 {
        return Err(err(0, "#include nested too deeply".into()));
    }
    // Stack of (this branch active, some branch of this #if taken, parent active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|(a, _)| *a);
    for (ln, line) in src.lines().enumerate() {
        let t = line.trim_start();
        let defined = |d: &Vec<String>, name: &str| d.iter().any(|x| x == name.trim());
        if let Some(rest) = t.strip_prefix("#ifdef ") {
            let on = defined(defines, rest);
            stack.push((on, on));
        } else if let Some(rest) = t.strip_prefix("#ifndef ") {
            let on = !defined(defines, rest);
            stack.push((on, on));
        } else if let Some(rest) = t.strip_prefix("#define ") {
            // A flag for the rest of the expansion (no values, no macros).
            if active(&stack) && !defined(defines, rest) {
                defines.push(rest.trim().to_string());
            }
            out.push('\n');
        } else if t.starts_with("#else") {
            let top = stack
                .last_mut()
                .ok_or_else(|| err(ln, "#else without #ifdef".into()))?;
            *top = (!top.1, true);
        } else if t.starts_with("#endif") {
            stack
                .pop()
                .ok_or_else(|| err(ln, "#endif without #ifdef".into()))?;
        } else if let Some(rest) = t.strip_prefix("#include ") {
            if !active(&stack) {
                continue;
            }
            let name = rest.trim().trim_matches('"');
            if included.iter().any(|n| n == name) {
                continue;
            }
            included.push(name.to_string());
            let inc = wgsl_source(name)
                .ok_or_else(|| err(ln, format!("#include of unknown file {name:?}")))?;
            expand(family, inc, defines, out, included, depth + 1)?;
        } else if t.starts_with('#') {
            return Err(err(ln, format!("unknown directive {t:?}")));
        } else if active(&stack) {
            out.push_str(line);
            out.push('\n');
        } else {
            // Keep line numbers stable for error messages.
            out.push('\n');
        }
    }
    if !stack.is_empty() {
        return Err(err(0, "unterminated #ifdef".into()));
    }
    Ok(())
}

/// Which implementation backs a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The WGSL kernel, on every backend.
    Portable,
    /// A hand-written native shader for the current backend (MSL on Metal, SPIR-V on Vulkan).
    Native,
}

/// How the registry picks variants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KernelChoice {
    #[default]
    Portable,
    Native,
    /// Native where one exists for this backend and the tuning cache does not say it is
    /// slower; on Metal, only where the tuning cache says it is faster (see `variant_for`).
    Auto,
}

impl std::str::FromStr for KernelChoice {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "portable" | "wgsl" => Ok(KernelChoice::Portable),
            "native" => Ok(KernelChoice::Native),
            "auto" => Ok(KernelChoice::Auto),
            o => Err(Error::InvalidArgument(format!(
                "kernel choice {o:?} (expected portable, native or auto)"
            ))),
        }
    }
}

/// The variant policy: a default and per-op overrides (`WICK_KERNELS=gemv_q4_0=native,...`).
#[derive(Debug, Clone, Default)]
pub struct KernelPolicy {
    pub default: KernelChoice,
    pub per_op: HashMap<String, KernelChoice>,
}

impl KernelPolicy {
    /// Parses `op=choice,op=choice`.
    pub fn parse_overrides(&mut self, s: &str) -> Result<()> {
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, choice) = part.split_once('=').ok_or_else(|| {
                Error::InvalidArgument(format!("WICK_KERNELS entry {part:?} is not op=choice"))
            })?;
            self.per_op.insert(op.trim().to_string(), choice.parse()?);
        }
        Ok(())
    }

    /// The default policy plus `$WICK_KERNELS`.
    pub fn from_env(default: KernelChoice) -> Result<Self> {
        let mut p = KernelPolicy {
            default,
            per_op: HashMap::new(),
        };
        if let Ok(s) = std::env::var("WICK_KERNELS") {
            p.parse_overrides(&s)?;
        }
        Ok(p)
    }

    pub fn choice_for(&self, op: &str) -> KernelChoice {
        self.per_op.get(op).copied().unwrap_or(self.default)
    }
}

/// One binding of a kernel's bind group (group 0, binding = index in the list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    Uniform,
    /// Read-only storage.
    Read,
    /// Read-write storage.
    ReadWrite,
}

/// A native shader for one backend, binding exactly the same layout as the portable kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NativeKernel {
    /// File stem under `metal_overrides/` or `vulkan_overrides/`; for a [`Self::wgsl_defines`]
    /// kernel, the WGSL family under `wgsl/`.
    pub family: &'static str,
    pub entry: &'static str,
    /// Fixed workgroup size (Metal passthrough needs it per entry point).
    pub workgroup_size: [u32; 3],
    /// Non-empty: the kernel is the WGSL family compiled with these defines, using a device
    /// extension wgpu exposes beyond WebGPU (cooperative matrices) rather than a SPIR-V/MSL
    /// module. Debian's glslc (shaderc 2023.2) predates GL_KHR_cooperative_matrix, while naga
    /// (wgpu 30) emits SPV_KHR_cooperative_matrix from WGSL's `wgpu_cooperative_matrix`, and
    /// the kernel keeps wgpu's shader validation.
    pub wgsl_defines: &'static [&'static str],
    /// What it needs of the adapter beyond its backend.
    pub needs: NativeNeeds,
}

/// Adapter features a native kernel depends on ([`native_unavailable`] tests them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NativeNeeds {
    /// Subgroup operations (it reduces with them).
    pub subgroups: bool,
    /// f16 16x16x16 cooperative matrices and a fixed subgroup size of 32 (its subgroups each
    /// own a fixed share of the tile; see [`cooperative_matrix_usable`]).
    pub cooperative_matrix: bool,
    /// Bytes of workgroup memory it declares.
    pub workgroup_storage: u32,
    /// Only on this class of adapter.
    pub adapter: Option<AdapterClass>,
}

/// The wgpu backend of a capability record, for matching native variants.
fn backend_of(caps: &Capabilities) -> Option<wgpu::Backend> {
    match caps.backend.as_str() {
        "vulkan" => Some(wgpu::Backend::Vulkan),
        "metal" => Some(wgpu::Backend::Metal),
        _ => None,
    }
}

/// Why the native kernel `n` (a variant for `backend`) cannot run on this adapter, or None
/// when it can. The one test behind both the registry's choice ([`Kernels::native_for`]) and
/// `wick kernels list`.
pub fn native_unavailable(
    caps: &Capabilities,
    backend: wgpu::Backend,
    n: &NativeKernel,
) -> Option<String> {
    if backend_of(caps) != Some(backend) {
        return Some(format!("{backend} only (adapter is {})", caps.backend));
    }
    let needs = &n.needs;
    if needs.cooperative_matrix && !cooperative_matrix_usable(caps) {
        return Some(
            "needs cooperative matrices (f16 16x16x16 -> f32) and subgroups of exactly 32".into(),
        );
    }
    if needs.subgroups && !caps.subgroup {
        return Some("needs subgroup operations (SUBGROUP)".into());
    }
    if let Some(class) = needs.adapter.filter(|c| *c != caps.class) {
        return Some(format!("needs an adapter of class {class:?}"));
    }
    if needs.workgroup_storage > caps.max_compute_workgroup_storage_size {
        return Some(format!(
            "needs {} bytes of workgroup memory (adapter has {})",
            needs.workgroup_storage, caps.max_compute_workgroup_storage_size
        ));
    }
    let invocations: u32 = n.workgroup_size.iter().product();
    if invocations > caps.max_compute_invocations_per_workgroup {
        return Some(format!(
            "needs {invocations} invocations per workgroup (adapter has {})",
            caps.max_compute_invocations_per_workgroup
        ));
    }
    if !n.wgsl_defines.is_empty() {
        return wgsl_source(n.family)
            .is_none()
            .then(|| format!("wgsl/{}.wgsl not built into this binary", n.family));
    }
    if !caps.passthrough_shaders {
        return Some("adapter lacks shader passthrough (PASSTHROUGH_SHADERS)".into());
    }
    let (shipped, file) = match backend {
        wgpu::Backend::Vulkan => (
            spirv_source(n.family).is_some(),
            format!("vulkan_overrides/{}.spv", n.family),
        ),
        _ => (
            msl_source(n.family).is_some(),
            format!("metal_overrides/{}.metal", n.family),
        ),
    };
    (!shipped).then(|| format!("module {file} not built into this binary"))
}

/// Everything needed to build one pipeline.
#[derive(Debug, Clone)]
pub struct KernelSpec {
    /// Op name for variant policy and reports, e.g. `gemv_q4_0`, `rmsnorm`.
    pub op: String,
    /// WGSL family (file stem under `wgsl/`).
    pub family: &'static str,
    pub entry: &'static str,
    pub bindings: Vec<Binding>,
    /// Preprocessor defines beyond the automatic `SUBGROUP` / `F16`.
    pub defines: Vec<&'static str>,
    /// WGSL `override` constants.
    pub constants: Vec<(&'static str, f64)>,
    /// Native variants for Vulkan and Metal, if the op has them.
    pub native_vulkan: Option<NativeKernel>,
    pub native_metal: Option<NativeKernel>,
}

impl KernelSpec {
    pub fn new(
        op: impl Into<String>,
        family: &'static str,
        entry: &'static str,
        bindings: &[Binding],
    ) -> Self {
        KernelSpec {
            op: op.into(),
            family,
            entry,
            bindings: bindings.to_vec(),
            defines: Vec::new(),
            constants: Vec::new(),
            native_vulkan: None,
            native_metal: None,
        }
    }

    pub fn define(mut self, d: &'static str) -> Self {
        self.defines.push(d);
        self
    }

    pub fn constant(mut self, name: &'static str, value: impl Into<f64>) -> Self {
        self.constants.push((name, value.into()));
        self
    }

    /// The native variant for `backend`, if the spec has one.
    pub fn native(&self, backend: wgpu::Backend) -> Option<&NativeKernel> {
        match backend {
            wgpu::Backend::Vulkan => self.native_vulkan.as_ref(),
            wgpu::Backend::Metal => self.native_metal.as_ref(),
            _ => None,
        }
    }

    /// Every native variant with its backend.
    pub fn natives(&self) -> impl Iterator<Item = (wgpu::Backend, &NativeKernel)> {
        [wgpu::Backend::Vulkan, wgpu::Backend::Metal]
            .into_iter()
            .filter_map(|b| self.native(b).map(|n| (b, n)))
    }

    pub fn has_native(&self) -> bool {
        self.natives().next().is_some()
    }

    /// The preprocessor defines, sorted: which of its op's pipelines the spec is (format,
    /// kind, prologue).
    pub fn pipeline_defines(&self) -> Vec<&'static str> {
        let mut d = self.defines.clone();
        d.sort();
        d
    }

    fn key(&self, variant: Variant) -> PipelineKey {
        let mut defines: Vec<&'static str> = self.defines.clone();
        defines.sort();
        PipelineKey {
            family: self.family,
            entry: self.entry,
            defines,
            constants: self
                .constants
                .iter()
                .map(|(n, v)| (*n, v.to_bits()))
                .collect(),
            variant,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PipelineKey {
    family: &'static str,
    entry: &'static str,
    defines: Vec<&'static str>,
    constants: Vec<(&'static str, u64)>,
    variant: Variant,
}

/// A built compute pipeline with its bind group layout.
#[derive(Debug)]
pub struct Pipeline {
    pub op: String,
    pub variant: Variant,
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
}

/// A pipeline, its bind group and its grid: built once, recorded many times.
#[derive(Debug, Clone)]
pub struct Dispatch {
    pub pipeline: Arc<Pipeline>,
    pub bind_group: wgpu::BindGroup,
    pub workgroups: [u32; 3],
}

impl Dispatch {
    pub fn record(&self, pass: &mut wgpu::ComputePass<'_>) {
        pass.set_pipeline(&self.pipeline.pipeline);
        pass.set_bind_group(0, &self.bind_group, &[]);
        let [x, y, z] = self.workgroups;
        pass.dispatch_workgroups(x, y, z);
    }
}

/// Per-step values shared by every position-dependent kernel of one forward step (a decoded
/// token or a prefill chunk). One uniform buffer holds it; the runtime rewrites it with
/// `queue.write_buffer` before each submit, so bind groups never change.
/// WGSL mirror: `struct Step { pos: u32, n_tokens: u32, kv_len: u32, seed: u32,
/// temperature: f32, top_k: u32, top_p: f32, min_p: f32 }`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct StepParams {
    /// Absolute position of the first token of this step (tokens already in the KV cache).
    pub pos: u32,
    /// Tokens processed in this step (1 for decode).
    pub n_tokens: u32,
    /// Cached length after this step's KV write: `pos + n_tokens`.
    pub kv_len: u32,
    /// Per-token random seed for sampling.
    pub seed: u32,
    pub temperature: f32,
    pub top_k: u32,
    pub top_p: f32,
    pub min_p: f32,
}

/// Splits a 1-D workgroup count over x and y to respect the per-dimension limit.
/// Kernels recover the linear index as `wid.x + wid.y * nwg.x` and must ignore the tail.
pub fn grid_1d(workgroups: u32, max_per_dim: u32) -> [u32; 3] {
    if workgroups <= max_per_dim {
        [workgroups.max(1), 1, 1]
    } else {
        let y = workgroups.div_ceil(max_per_dim);
        [workgroups.div_ceil(y), y, 1]
    }
}

/// The pipeline cache and variant policy over one [`Gpu`].
pub struct Kernels {
    pub gpu: Arc<Gpu>,
    pub policy: KernelPolicy,
    pipelines: Mutex<HashMap<PipelineKey, Arc<Pipeline>>>,
    modules: Mutex<HashMap<(String, Vec<&'static str>), wgpu::ShaderModule>>,
    /// Measured GEMV splits (`wick tune`) and variant winners (`wick kernels bench --save`)
    /// for this device; None: built-in choices only.
    pub tuning: Option<tuning::TuningTable>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernels")
            .field("policy", &self.policy)
            .finish()
    }
}

impl Kernels {
    pub fn new(gpu: Arc<Gpu>) -> Self {
        Self::with_policy(gpu, KernelPolicy::default())
    }

    pub fn with_policy(gpu: Arc<Gpu>, policy: KernelPolicy) -> Self {
        Kernels {
            gpu,
            policy,
            pipelines: Mutex::default(),
            modules: Mutex::default(),
            tuning: None,
        }
    }

    /// Uses `table`'s measured GEMV splits where it has the shape, and its variant winners
    /// for `--kernels auto`.
    pub fn with_tuning(mut self, table: Option<tuning::TuningTable>) -> Self {
        self.tuning = table;
        self
    }

    /// Defines every WGSL module gets from the device's capabilities.
    pub fn device_defines(&self) -> Vec<&'static str> {
        let mut d = Vec::new();
        if self.gpu.caps.subgroup {
            d.push("SUBGROUP");
        }
        if self.gpu.caps.shader_f16 {
            d.push("F16");
        }
        d
    }

    /// The native kernel usable for `spec` on this adapter, if any ([`native_unavailable`]).
    pub fn native_for(&self, spec: &KernelSpec) -> Option<NativeKernel> {
        let caps = &self.gpu.caps;
        let backend = backend_of(caps)?;
        let n = spec.native(backend)?;
        native_unavailable(caps, backend, n).is_none().then_some(*n)
    }

    /// Which variant the policy selects for `spec` here.
    pub fn variant_for(&self, spec: &KernelSpec) -> Result<Variant> {
        let native = self.native_for(spec).is_some();
        match self.policy.choice_for(&spec.op) {
            KernelChoice::Portable => Ok(Variant::Portable),
            // Native where present, unless `wick kernels bench --save` measured it slower
            // than the portable kernel on this adapter.
            KernelChoice::Auto => Ok(
                match (
                    native,
                    self.tuning
                        .as_ref()
                        .and_then(|t| t.variant_winner(&spec.op)),
                ) {
                    (true, Some(Variant::Portable)) | (false, _) => Variant::Portable,
                    (true, Some(Variant::Native)) => Variant::Native,
                    // Unmeasured: native where wick's natives have been run on such a GPU.
                    // The Metal ones have only had syntax checks and a CPU emulation, so on
                    // Metal auto waits for `wick kernels bench --save` (run after `wick
                    // kernels check`) to record them as faster.
                    (true, None) if self.gpu.caps.backend == "metal" => Variant::Portable,
                    (true, None) => Variant::Native,
                },
            ),
            KernelChoice::Native if native => Ok(Variant::Native),
            // A global "native" falls back per op; an explicit per-op request is an error.
            KernelChoice::Native if !self.policy.per_op.contains_key(&spec.op) => {
                Ok(Variant::Portable)
            }
            KernelChoice::Native => Err(Error::Unsupported(format!(
                "op {} has no native variant for backend {}",
                spec.op, self.gpu.caps.backend
            ))),
        }
    }

    /// The cached pipeline for `spec`, built on first use.
    pub fn pipeline(&self, spec: &KernelSpec) -> Result<Arc<Pipeline>> {
        let variant = self.variant_for(spec)?;
        self.pipeline_variant(spec, variant)
    }

    /// (op, variant) of every pipeline built so far: which variants a model really runs (a
    /// pipeline is built when a dispatch of it is).
    pub fn built_pipelines(&self) -> Vec<(String, Variant)> {
        self.pipelines
            .lock()
            .unwrap()
            .values()
            .map(|p| (p.op.clone(), p.variant))
            .collect()
    }

    /// The pipeline for `spec` with an explicit variant (kernel checks and benchmarks).
    pub fn pipeline_variant(&self, spec: &KernelSpec, variant: Variant) -> Result<Arc<Pipeline>> {
        let key = spec.key(variant);
        if let Some(p) = self.pipelines.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let built = Arc::new(self.build(spec, variant)?);
        self.pipelines
            .lock()
            .unwrap()
            .entry(key)
            .or_insert(built.clone());
        Ok(built)
    }

    fn layout_entries(spec: &KernelSpec) -> Vec<wgpu::BindGroupLayoutEntry> {
        spec.bindings
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b {
                    Binding::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Binding::Read => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: true },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Binding::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: false },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect()
    }

    fn wgsl_module(
        &self,
        spec: &KernelSpec,
        checks: wgpu::ShaderRuntimeChecks,
    ) -> Result<wgpu::ShaderModule> {
        let mut defines = self.device_defines();
        defines.extend(spec.defines.iter().copied());
        defines.sort();
        defines.dedup();
        let key = (spec.family.to_string(), defines.clone());
        if let Some(m) = self.modules.lock().unwrap().get(&key) {
            return Ok(m.clone());
        }
        let src = preprocess(spec.family, &defines)?;
        let gpu = &self.gpu;
        let module = gpu
            .scoped(|| {
                let desc = wgpu::ShaderModuleDescriptor {
                    label: Some(spec.family),
                    source: wgpu::ShaderSource::Wgsl(src.into()),
                };
                // SAFETY: `shader_checks` keeps bounds checks unless the user turned them off;
                // dropping loop bounding needs every loop to terminate, which wick's kernels
                // guarantee (counted loops over host-validated sizes and constants). Native
                // WGSL kernels see `native_wgsl_checks`.
                unsafe { gpu.device.create_shader_module_trusted(desc, checks) }
            })
            .map_err(|e| Error::Shader {
                family: spec.family.into(),
                message: e.to_string(),
            })?;
        self.modules.lock().unwrap().insert(key, module.clone());
        Ok(module)
    }

    fn native_module(&self, native: &NativeKernel) -> Result<wgpu::ShaderModule> {
        let gpu = &self.gpu;
        let mut desc = wgpu::ShaderModuleDescriptorPassthrough {
            label: Some(native.family),
            ..Default::default()
        };
        let spirv_words;
        match gpu.caps.backend.as_str() {
            "vulkan" => {
                let bytes = spirv_source(native.family).ok_or_else(|| Error::Shader {
                    family: native.family.into(),
                    message: "no SPIR-V shipped".into(),
                })?;
                if bytes.len() % 4 != 0 {
                    return Err(Error::Shader {
                        family: native.family.into(),
                        message: "SPIR-V length is not a multiple of 4".into(),
                    });
                }
                spirv_words = bytemuck::pod_collect_to_vec::<u8, u32>(bytes);
                desc.spirv = Some(std::borrow::Cow::Borrowed(&spirv_words));
            }
            "metal" => {
                let src = msl_source(native.family).ok_or_else(|| Error::Shader {
                    family: native.family.into(),
                    message: "no MSL shipped".into(),
                })?;
                desc.msl = Some(std::borrow::Cow::Borrowed(src));
            }
            b => return Err(Error::Unsupported(format!("native kernels on backend {b}"))),
        }
        desc.entry_points = std::borrow::Cow::Owned(vec![wgpu::PassthroughShaderEntryPoint {
            name: std::borrow::Cow::Borrowed(native.entry),
            workgroup_size: (
                native.workgroup_size[0],
                native.workgroup_size[1],
                native.workgroup_size[2],
            ),
        }]);
        // SAFETY: native kernels are wick's own shaders, checked against the CPU reference
        // by `wick kernels check` and the test suite; they bind the portable layout.
        gpu.scoped(|| unsafe { gpu.device.create_shader_module_passthrough(desc) })
            .map_err(|e| Error::Shader {
                family: native.family.into(),
                message: e.to_string(),
            })
    }

    fn build(&self, spec: &KernelSpec, variant: Variant) -> Result<Pipeline> {
        let gpu = &self.gpu;
        let entries = Self::layout_entries(spec);
        let layout = gpu.scoped(|| {
            gpu.device
                .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some(spec.entry),
                    entries: &entries,
                })
        })?;
        let pl = gpu.scoped(|| {
            gpu.device
                .create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: Some(spec.entry),
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                })
        })?;
        let (module, entry, constants) = match variant {
            Variant::Portable => (
                self.wgsl_module(spec, shader_checks())?,
                spec.entry,
                spec.constants.clone(),
            ),
            Variant::Native => {
                let native = self.native_for(spec).ok_or_else(|| {
                    Error::Unsupported(format!("no native variant of {} here", spec.op))
                })?;
                if native.wgsl_defines.is_empty() {
                    (self.native_module(&native)?, native.entry, Vec::new())
                } else {
                    let mut wgsl = spec.clone();
                    wgsl.family = native.family;
                    wgsl.defines.extend(native.wgsl_defines.iter().copied());
                    let m = self.wgsl_module(&wgsl, native_wgsl_checks())?;
                    (m, native.entry, spec.constants.clone())
                }
            }
        };
        let pipeline = gpu
            .scoped(|| {
                gpu.device
                    .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                        label: Some(&spec.op),
                        layout: Some(&pl),
                        module: &module,
                        entry_point: Some(entry),
                        compilation_options: wgpu::PipelineCompilationOptions {
                            constants: &constants,
                            zero_initialize_workgroup_memory: false,
                        },
                        cache: None,
                    })
            })
            .map_err(|e| Error::Shader {
                family: spec.family.into(),
                message: format!("{} ({:?}): {e}", spec.entry, variant),
            })?;
        Ok(Pipeline {
            op: spec.op.clone(),
            variant,
            pipeline,
            layout,
        })
    }

    /// A bind group binding `buffers` at 0..n in order (whole buffers).
    pub fn bind(&self, pipeline: &Pipeline, buffers: &[&wgpu::Buffer]) -> Result<wgpu::BindGroup> {
        let resources: Vec<wgpu::BindingResource> =
            buffers.iter().map(|b| b.as_entire_binding()).collect();
        self.bind_resources(pipeline, &resources)
    }

    /// A bind group from explicit resources (buffer ranges of split tensors).
    pub fn bind_resources(
        &self,
        pipeline: &Pipeline,
        resources: &[wgpu::BindingResource<'_>],
    ) -> Result<wgpu::BindGroup> {
        let entries: Vec<wgpu::BindGroupEntry> = resources
            .iter()
            .enumerate()
            .map(|(i, r)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: r.clone(),
            })
            .collect();
        let gpu = &self.gpu;
        gpu.scoped(|| {
            gpu.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(&pipeline.op),
                layout: &pipeline.layout,
                entries: &entries,
            })
        })
    }

    /// A dispatch of `spec` over `workgroups`, binding `buffers` in order.
    pub fn dispatch(
        &self,
        spec: &KernelSpec,
        buffers: &[&wgpu::Buffer],
        workgroups: [u32; 3],
    ) -> Result<Dispatch> {
        let pipeline = self.pipeline(spec)?;
        let bind_group = self.bind(&pipeline, buffers)?;
        Ok(Dispatch {
            pipeline,
            bind_group,
            workgroups,
        })
    }

    /// Records `dispatches` into one compute pass, submits, and waits (tests, one-off work).
    pub fn run(&self, dispatches: &[&Dispatch]) -> Result<()> {
        let gpu = &self.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut pass = enc.begin_compute_pass(&Default::default());
            for d in dispatches {
                d.record(&mut pass);
            }
        }
        gpu.scoped(|| gpu.queue.submit([enc.finish()]))?;
        gpu.wait_idle()
    }
}
