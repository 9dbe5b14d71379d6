//! The op catalog: every op wick dispatches, with its portable WGSL kernel and its native
//! variants per backend, and which of them this adapter can run (`wick kernels list`).
//!
//! The catalog is built from the families' own spec functions plus [`super::native_specs`],
//! merged by op name, so a native variant a family attaches to its specs shows up here (and in
//! `wick kernels check` / `bench`) without edits to this file.

use serde::Serialize;

use super::{
    argmax, attention, embedding, gemm, gemv, kv_cache, msl_source, native_specs, rmsnorm, rope,
    sample, softmax, spirv_source, swiglu, wgsl_source, KernelSpec, NativeKernel, Variant,
};
use crate::gpu::Capabilities;
use crate::quant::WeightFormat;

/// One native shader backing (some pipelines of) an op.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NativeInfo {
    /// `vulkan` (SPIR-V) or `metal` (MSL).
    pub backend: &'static str,
    /// Module name: `vulkan_overrides/<module>.spv` or `metal_overrides/<module>.metal`.
    pub module: &'static str,
    pub entry: &'static str,
    pub workgroup_size: [u32; 3],
    /// Preprocessor defines of the pipeline it replaces (format, kind, prologue), which say
    /// which of the op's pipelines it backs, e.g. `["Q8_0"]` but not `["NORM", "Q8_0"]`.
    pub defines: Vec<&'static str>,
    /// Non-empty: written in WGSL with these defines ([`NativeKernel::wgsl_defines`]).
    pub wgsl_defines: Vec<&'static str>,
    /// Needs cooperative matrices (f16 16x16x16, subgroups of 32).
    pub needs_cooperative_matrix: bool,
}

/// One op: its portable kernel and its native variants on every backend.
#[derive(Debug, Clone, Serialize)]
pub struct OpInfo {
    /// The op name the variant policy and the tuning cache use, e.g. `gemv_q8_0`.
    pub op: String,
    /// The op without its weight format (`gemv`, `gemv_swiglu`, `gemm`, `rmsnorm`, ...).
    pub kind: String,
    pub format: Option<WeightFormat>,
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
}

/// The weight format an op name ends in (`gemv_q4_0` -> Q4_0).
pub fn op_format(op: &str) -> Option<WeightFormat> {
    WeightFormat::ALL
        .into_iter()
        .find(|f| op.ends_with(&format!("_{}", f.name())))
}

fn natives_of(spec: &KernelSpec) -> Vec<NativeInfo> {
    let mut defines = spec.defines.clone();
    defines.sort();
    let info = |backend, n: NativeKernel| NativeInfo {
        backend,
        module: n.family,
        entry: n.entry,
        workgroup_size: n.workgroup_size,
        defines: defines.clone(),
        wgsl_defines: n.wgsl_defines.to_vec(),
        needs_cooperative_matrix: n.needs_cooperative_matrix,
    };
    spec.native_vulkan
        .map(|n| info("vulkan", n))
        .into_iter()
        .chain(spec.native_metal.map(|n| info("metal", n)))
        .collect()
}

/// Specs of the portable pipelines, one or more per op, covering every set of preprocessor
/// defines the registry builds each op's WGSL with (beyond the device's `SUBGROUP` / `F16`);
/// the catalog reads their op names, families and native variants, tests/translate.rs their
/// defines. Override constants are nominal (they depend on the device and shape).
pub fn portable_specs() -> Vec<KernelSpec> {
    let any_split = gemv::native_config(&gemv::GemvConfig {
        lanes_per_row: 32,
        rows_per_group: 1,
        workgroup_size: 256,
        subgroup_reduce: false,
    });
    let tiling = gemm::GemmTiling {
        wg_m: 16,
        wg_n: 16,
        pad: 0,
    };
    let mut v = Vec::new();
    for f in WeightFormat::ALL {
        v.push(embedding::spec(f));
    }
    v.extend([rmsnorm::spec(false), rmsnorm::spec(true)]);
    v.extend([rope::spec(), rope::rope_kv_spec(), kv_cache::spec()]);
    // Attention pipelines depend on the device and head shape: one per define set here; their
    // native variants come from `attention::native_specs`.
    let attention = attention::catalog_specs();
    v.extend(
        attention
            .iter()
            .filter(|s| s.op == "attention_decode")
            .cloned(),
    );
    v.push(attention::merge_spec(64));
    v.extend(
        attention
            .into_iter()
            .filter(|s| s.op == "attention_prefill"),
    );
    for f in WeightFormat::ALL {
        for norm in [false, true] {
            v.push(gemv::spec(f, &any_split, false, false, norm));
        }
    }
    for f in WeightFormat::ALL {
        for norm in [false, true] {
            v.push(gemv::swiglu_spec(f, &any_split, norm));
        }
    }
    for f in WeightFormat::ALL {
        for norm in [false, true] {
            v.push(gemv::qkv_spec(f, &any_split, false, norm));
        }
    }
    for f in WeightFormat::ALL {
        for bias in [false, true] {
            v.push(gemm::spec(f, bias, tiling));
        }
    }
    v.extend([softmax::spec(false), softmax::spec(true), swiglu::spec()]);
    v.extend([argmax::spec_partial(), argmax::spec_reduce()]);
    v.extend([
        argmax::checked(argmax::spec_partial()),
        argmax::checked(argmax::spec_reduce()),
    ]);
    for (from_logits, last) in [(true, true), (true, false), (false, false), (false, true)] {
        v.push(sample::spec(from_logits, last));
    }
    v
}

/// Every op with its variants, in dispatch order of a decode step (roughly), GEMV and GEMM
/// per format.
pub fn catalog() -> Vec<OpInfo> {
    let mut ops: Vec<OpInfo> = Vec::new();
    for spec in portable_specs().into_iter().chain(native_specs()) {
        let i = match ops.iter().position(|o| o.op == spec.op) {
            Some(i) => i,
            None => {
                let format = op_format(&spec.op);
                let kind = match format {
                    Some(f) => spec
                        .op
                        .strip_suffix(&format!("_{}", f.name()))
                        .unwrap_or(&spec.op)
                        .to_string(),
                    None => spec.op.clone(),
                };
                ops.push(OpInfo {
                    op: spec.op.clone(),
                    kind,
                    format,
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
    ops
}

/// Ops with at least one native variant on some backend.
pub fn native_ops() -> Vec<OpInfo> {
    catalog()
        .into_iter()
        .filter(|o| !o.native.is_empty())
        .collect()
}

/// Why `n` cannot run on this adapter, or None when it can. Mirrors
/// [`super::Kernels::native_for`] (a test keeps them in step).
pub fn native_unavailable(caps: &Capabilities, n: &NativeInfo) -> Option<String> {
    if n.backend != caps.backend {
        return Some(format!("{} only (adapter is {})", n.backend, caps.backend));
    }
    if n.needs_cooperative_matrix && !super::cooperative_matrix_usable(caps) {
        return Some(
            "needs cooperative matrices (f16 16x16x16 -> f32) and subgroups of exactly 32".into(),
        );
    }
    if !n.wgsl_defines.is_empty() {
        return wgsl_source(n.module)
            .is_none()
            .then(|| format!("wgsl/{}.wgsl not built into this binary", n.module));
    }
    if !caps.passthrough_shaders {
        return Some("adapter lacks shader passthrough (PASSTHROUGH_SHADERS)".into());
    }
    let shipped = match n.backend {
        "vulkan" => spirv_source(n.module).is_some(),
        "metal" => msl_source(n.module).is_some(),
        _ => false,
    };
    if !shipped {
        let file = match n.backend {
            "vulkan" => format!("vulkan_overrides/{}.spv", n.module),
            _ => format!("metal_overrides/{}.metal", n.module),
        };
        return Some(format!("module {file} not built into this binary"));
    }
    None
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
            backend: caps.backend.clone(),
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
    pub variants: Vec<VariantStatus>,
}

/// `wick kernels list`: the adapter's support flags and every op's variants.
#[derive(Debug, Clone, Serialize)]
pub struct KernelList {
    pub adapter: AdapterSupport,
    pub ops: Vec<OpListing>,
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
                let reason = native_unavailable(caps, n);
                variants.push(VariantStatus {
                    variant: Variant::Native,
                    backend: Some(n.backend),
                    source: match n.backend {
                        _ if !n.wgsl_defines.is_empty() => format!(
                            "wgsl/{}.wgsl with {} (cooperative matrices)",
                            n.module,
                            n.wgsl_defines.join(" ")
                        ),
                        "vulkan" => format!("vulkan_overrides/{}.spv", n.module),
                        _ => format!("metal_overrides/{}.metal", n.module),
                    },
                    entry: n.entry,
                    defines: n.defines.clone(),
                    available: reason.is_none(),
                    reason,
                });
            }
            OpListing {
                op: o.op,
                kind: o.kind,
                format: o.format,
                variants,
            }
        })
        .collect();
    KernelList {
        adapter: AdapterSupport::of(caps),
        ops,
    }
}
