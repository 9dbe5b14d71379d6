//! The op catalog: every op wick dispatches, with its portable WGSL kernel and its native
//! variants per backend, and which of them this adapter can run (`wick kernels list`).
//!
//! The catalog is built from the families' pipelines ([`crate::kernels::FAMILIES`]), merged by op
//! name, so a native variant a family attaches to its specs shows up here (and in `wick
//! kernels check` / `bench`) without edits to this file. Whether a native runs here is
//! [`crate::kernels::native_unavailable`], the registry's own test.

use serde::Serialize;

use crate::gpu::Capabilities;
pub use crate::kernels::op_format;
use crate::kernels::{
    native_unavailable, wgsl_source, Family, KernelSpec, NativeKernel, Variant, FAMILIES,
};
use crate::quant::WeightFormat;

/// One native shader backing (some pipelines of) an op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeInfo {
    /// Vulkan (SPIR-V, or WGSL with [`NativeKernel::wgsl_defines`]) or Metal (MSL).
    pub backend: wgpu::Backend,
    pub kernel: NativeKernel,
    /// Preprocessor defines of the pipeline it replaces (format, kind, prologue), which say
    /// which of the op's pipelines it backs, e.g. `["Q8_0"]` but not `["NORM", "Q8_0"]`.
    pub defines: Vec<&'static str>,
}

impl NativeInfo {
    /// Why it cannot run on this adapter, or None when it can.
    pub fn unavailable(&self, caps: &Capabilities) -> Option<String> {
        native_unavailable(caps, self.backend, &self.kernel)
    }
}

/// One op: its portable kernel and its native variants on every backend.
#[derive(Debug, Clone)]
pub struct OpInfo {
    /// The op name the variant policy and the tuning cache use, e.g. `gemv_q8_0`.
    pub op: String,
    /// The op without its weight format (`gemv`, `gemv_swiglu`, `gemm`, `rmsnorm`, ...).
    pub kind: String,
    pub format: Option<WeightFormat>,
    pub family: &'static Family,
    /// WGSL family (file stem under `wgsl/`) and entry point of the portable kernel.
    pub wgsl_family: &'static str,
    pub wgsl_entry: &'static str,
    pub native: Vec<NativeInfo>,
}

impl OpInfo {
    /// Whether `filter` (a substring of the op name; empty: everything) selects this op.
    pub fn matches(&self, filter: Option<&str>) -> bool {
        filter.is_none_or(|f| self.op.contains(f))
    }

    /// Whether a native variant of the pipeline with these (sorted) defines runs here.
    pub fn native_here(&self, caps: &Capabilities, defines: Option<&[&'static str]>) -> bool {
        self.native
            .iter()
            .filter(|n| defines.is_none_or(|d| n.defines == d))
            .any(|n| n.unavailable(caps).is_none())
    }
}

fn natives_of(spec: &KernelSpec) -> Vec<NativeInfo> {
    let defines = spec.pipeline_defines();
    spec.natives()
        .map(|(backend, n)| NativeInfo {
            backend,
            kernel: *n,
            defines: defines.clone(),
        })
        .collect()
}

/// An op name without its weight format (`gemv_swiglu_q4_0` -> `gemv_swiglu`).
pub fn op_kind(op: &str) -> String {
    match op_format(op) {
        Some(f) => op
            .strip_suffix(&format!("_{}", f.name()))
            .unwrap_or(op)
            .to_string(),
        None => op.to_string(),
    }
}

/// Every op with its variants, family by family ([`FAMILIES`]), GEMV and GEMM per format.
pub fn catalog() -> Vec<OpInfo> {
    let mut ops: Vec<OpInfo> = Vec::new();
    for &family in FAMILIES {
        for spec in (family.pipelines)() {
            let i = match ops.iter().position(|o| o.op == spec.op) {
                Some(i) => i,
                None => {
                    ops.push(OpInfo {
                        op: spec.op.clone(),
                        kind: op_kind(&spec.op),
                        format: op_format(&spec.op),
                        family,
                        wgsl_family: spec.family,
                        wgsl_entry: spec.entry,
                        native: Vec::new(),
                    });
                    ops.len() - 1
                }
            };
            for n in natives_of(&spec) {
                if !ops[i].native.contains(&n) {
                    ops[i].native.push(n);
                }
            }
        }
    }
    ops
}

/// The catalog entry of `op`.
pub fn op_info(op: &str) -> Option<OpInfo> {
    catalog().into_iter().find(|o| o.op == op)
}

/// What the adapter offers that kernel variants depend on.
#[derive(Debug, Clone, Serialize)]
pub struct AdapterSupport {
    pub adapter: String,
    pub backend: String,
    pub driver: String,
    pub driver_info: String,
    pub device_type: String,
    pub subgroup: bool,
    pub subgroup_min_size: u32,
    pub subgroup_max_size: u32,
    pub shader_f16: bool,
    pub passthrough_shaders: bool,
    pub cooperative_matrix_f16: bool,
    pub timestamps: bool,
    pub timestamps_inside_passes: bool,
    pub max_compute_workgroup_storage_size: u32,
    pub max_storage_buffer_binding_size: u64,
}

impl AdapterSupport {
    pub fn of(caps: &Capabilities) -> AdapterSupport {
        AdapterSupport {
            adapter: caps.adapter_name.clone(),
            backend: caps.backend.to_string(),
            driver: caps.driver.clone(),
            driver_info: caps.driver_info.clone(),
            device_type: caps.device_type.clone(),
            subgroup: caps.subgroup,
            subgroup_min_size: caps.subgroup_min_size,
            subgroup_max_size: caps.subgroup_max_size,
            shader_f16: caps.shader_f16,
            passthrough_shaders: caps.passthrough_shaders,
            cooperative_matrix_f16: caps.cooperative_matrix_f16,
            timestamps: caps.timestamps,
            timestamps_inside_passes: caps.timestamps_inside_passes,
            max_compute_workgroup_storage_size: caps.max_compute_workgroup_storage_size,
            max_storage_buffer_binding_size: caps.max_storage_buffer_binding_size,
        }
    }
}

/// One variant of an op and whether this adapter runs it.
#[derive(Debug, Clone, Serialize)]
pub struct VariantStatus {
    pub variant: Variant,
    /// None for the portable kernel (every backend).
    pub backend: Option<&'static str>,
    /// `wgsl/<family>.wgsl`, `vulkan_overrides/<module>.spv` or `metal_overrides/<module>.metal`.
    pub source: String,
    pub entry: &'static str,
    /// Pipelines of the op it backs (native only; see [`NativeInfo::defines`]).
    pub defines: Vec<&'static str>,
    pub available: bool,
    /// Why not, when not available.
    pub reason: Option<String>,
}

/// One op of `wick kernels list`.
#[derive(Debug, Clone, Serialize)]
pub struct OpListing {
    pub op: String,
    pub kind: String,
    pub format: Option<WeightFormat>,
    /// The op's family.
    pub family: &'static str,
    pub variants: Vec<VariantStatus>,
}

/// What one family's native variants cover: requests outside it run the portable kernel.
#[derive(Debug, Clone, Serialize)]
pub struct NativeCoverage {
    pub family: &'static str,
    pub covers: String,
}

/// `wick kernels list`: the adapter's support flags and every op's variants.
#[derive(Debug, Clone, Serialize)]
pub struct KernelList {
    pub adapter: AdapterSupport,
    pub ops: Vec<OpListing>,
    /// Per family with native variants, the shapes, formats and epilogues they cover (the
    /// gaps: anything else is routed to the portable kernel).
    pub native_coverage: Vec<NativeCoverage>,
}

/// The catalog as seen from this adapter.
pub fn list(caps: &Capabilities) -> KernelList {
    let ops = catalog()
        .into_iter()
        .map(|o| {
            let wgsl = wgsl_source(o.wgsl_family).is_some();
            let mut variants = vec![VariantStatus {
                variant: Variant::Portable,
                backend: None,
                source: format!("wgsl/{}.wgsl", o.wgsl_family),
                entry: o.wgsl_entry,
                defines: Vec::new(),
                available: wgsl,
                reason: (!wgsl).then(|| "WGSL source not built into this binary".into()),
            }];
            for n in &o.native {
                let reason = n.unavailable(caps);
                let k = &n.kernel;
                variants.push(VariantStatus {
                    variant: Variant::Native,
                    backend: Some(n.backend.to_str()),
                    source: match n.backend {
                        _ if !k.wgsl_defines.is_empty() => format!(
                            "wgsl/{}.wgsl with {} (cooperative matrices)",
                            k.family,
                            k.wgsl_defines.join(" ")
                        ),
                        wgpu::Backend::Vulkan => format!("vulkan_overrides/{}.spv", k.family),
                        _ => format!("metal_overrides/{}.metal", k.family),
                    },
                    entry: k.entry,
                    defines: n.defines.clone(),
                    available: reason.is_none(),
                    reason,
                });
            }
            OpListing {
                op: o.op,
                kind: o.kind,
                format: o.format,
                family: o.family.name,
                variants,
            }
        })
        .collect();
    let native_coverage = FAMILIES
        .iter()
        .filter_map(|f| {
            f.native_coverage.map(|covers| NativeCoverage {
                family: f.name,
                covers: covers(),
            })
        })
        .collect();
    KernelList {
        adapter: AdapterSupport::of(caps),
        ops,
        native_coverage,
    }
}
