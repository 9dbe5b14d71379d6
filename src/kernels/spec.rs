//! What a kernel is: its spec (op, WGSL family, entry, bindings, defines, constants) and the
//! native variants that back it per backend, with what those need of the adapter. Whether a
//! native variant runs on an adapter is decided in one place, [`native_unavailable`].

use crate::gpu::{AdapterClass, Capabilities};
use crate::quant::WeightFormat;

use super::{cooperative_matrix_usable, msl_source, spirv_source, wgsl_source};

/// Which implementation backs a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// The WGSL kernel, on every backend.
    Portable,
    /// A hand-written native shader for the current backend (MSL on Metal, SPIR-V on Vulkan).
    Native,
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

/// Why the native kernel `n` (a variant for `backend`) cannot run on this adapter, or None
/// when it can. The one test behind both the registry's choice ([`Kernels::native_for`]) and
/// `wick kernels list`.
pub fn native_unavailable(
    caps: &Capabilities,
    backend: wgpu::Backend,
    n: &NativeKernel,
) -> Option<String> {
    if caps.backend != backend {
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
}

/// The weight format an op name ends in (`gemv_q4_0` -> Q4_0).
pub fn op_format(op: &str) -> Option<WeightFormat> {
    WeightFormat::ALL
        .into_iter()
        .find(|f| op.ends_with(&format!("_{}", f.name())))
}
