//! The kernel registry.
//!
//! A kernel is identified by (op, weight format, variant). Every op has a portable WGSL
//! implementation in `wgsl/<family>.wgsl`; an op may also have native variants per backend
//! (`metal_overrides/<family>.metal`, `vulkan_overrides/<family>.spv`) that bind the same
//! buffers in the same layout. Callers describe what they want with a [`KernelSpec`] and get a
//! cached [`Pipeline`]; which variant backs it is the registry's choice ([`KernelPolicy`]).
//!
//! WGSL sources go through a small preprocessor ([`preprocess`]): `#include "name"` (and
//! parameterised `#include "template" A=x` instantiations), `#define` flags and values,
//! `#ifdef` / `#ifndef` / `#else` / `#endif`. The registry defines `SUBGROUP` when the
//! device has subgroup operations and `F16` when it has `SHADER_F16`, so one source carries
//! both the subgroup path and its workgroup-memory fallback. Numeric specialisation (tile
//! sizes, lanes per row) goes through WGSL `override` constants.
//!
//! Each family lives in its own module with its params struct, bindings, dispatch shape and
//! variant choice; the host wrappers are thin and return a [`Dispatch`] that is built once
//! and recorded into a compute pass as often as needed.
//!
//! Layout: [`spec`] (specs, native variants and the one native selection test), [`policy`]
//! (portable / native / auto), [`registry`] (the pipeline cache, bind groups, dispatches),
//! [`step`] (the per-step uniform), [`family`] (the family descriptor, [`FAMILIES`]), then
//! one module per family.

pub mod argmax;
pub mod args;
pub mod attention;
pub mod embedding;
pub mod family;
pub mod gemm;
pub mod gemv;
pub mod gemv_batch;
pub mod gemv_dot;
pub mod kv_cache;
pub mod matrix;
pub mod policy;
mod preprocess;
pub mod registry;
pub mod rmsnorm;
pub mod rope;
pub mod sample;
pub mod softmax;
pub mod spec;
pub mod step;
pub mod swiglu;
pub mod tuning;

pub use family::Family;
pub use matrix::GpuMatrix;
pub use policy::{KernelChoice, KernelPolicy};
pub use preprocess::preprocess;
pub use registry::{grid_1d, Dispatch, Kernels, Pipeline};
pub use spec::{
    native_unavailable, op_format, Binding, KernelSpec, NativeKernel, NativeNeeds, Variant,
};
pub use step::StepParams;

use crate::gpu::Capabilities;
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
    &gemv_dot::FAMILY,
    &gemv_batch::FAMILY,
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

/// Every family's pipeline specs ([`Family::pipelines`]): one or more per op, covering every
/// set of preprocessor defines the registry builds each op's WGSL with (beyond the device's
/// `SUBGROUP` / `F16`); tests/translate.rs translates each. Override constants are those of a
/// typical shape.
pub fn pipeline_specs() -> Vec<KernelSpec> {
    FAMILIES.iter().flat_map(|f| (f.pipelines)()).collect()
}

/// Every pipeline with a native variant on some backend, from every family: what `wick
/// kernels check` checks, and what the binding-contract tests read (a native module must
/// bind exactly its spec's layout).
pub fn native_specs() -> Vec<KernelSpec> {
    pipeline_specs()
        .into_iter()
        .filter(KernelSpec::has_native)
        .collect()
}

/// The pipelines `wick kernels check` checks: every one with a native variant (portable
/// against native), and every pipeline of the integer-dot GEMV, of the batched GEMV and of
/// attention over a q8_0 KV cache (`KV_Q8`), which have no natives yet and are checked
/// against their reference alone.
pub fn checked_specs() -> Vec<KernelSpec> {
    let mut v = native_specs();
    v.extend((gemv_dot::FAMILY.pipelines)());
    v.extend((gemv_batch::FAMILY.pipelines)());
    v.extend(
        (attention::FAMILY.pipelines)()
            .into_iter()
            .filter(|s| s.defines.contains(&"KV_Q8")),
    );
    v.extend(attention::lanes_listing());
    v
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
