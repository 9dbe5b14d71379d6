//! Every WGSL kernel through naga's Metal (MSL) and DX12 (HLSL) backends, the translation wgpu
//! performs on those platforms, so a kernel that would not build there fails here, on a machine
//! with neither. The variants translated are exactly the ones the registry builds: every
//! pipeline spec of every family (`kernels::pipeline_specs`, one per define set of each op) with
//! its override constants, under each combination of the defines the registry adds from the
//! device (`SUBGROUP`, `F16`). Each must parse, validate and translate to both; any failure
//! fails the test.

use std::collections::{BTreeMap, BTreeSet};

use naga::back::{hlsl, msl, pipeline_constants};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use wick::kernels::{pipeline_specs, preprocess, wgsl_families, wgsl_source, KernelSpec};
use wick::tools::bandwidth;

/// The defines a family's source and its includes test (`#ifdef` / `#ifndef`), and the ones
/// they set themselves (`#define`).
fn defines_of(family: &str) -> (BTreeSet<&'static str>, BTreeSet<&'static str>) {
    let (mut tested, mut set) = (BTreeSet::new(), BTreeSet::new());
    let mut todo = vec![wgsl_families().find(|f| *f == family).expect("a family")];
    let mut seen = BTreeSet::new();
    while let Some(f) = todo.pop() {
        if !seen.insert(f) {
            continue;
        }
        let src = wgsl_source(f).unwrap_or_else(|| panic!("no family {f}"));
        for line in src.lines() {
            let t = line.trim();
            if let Some(name) = t
                .strip_prefix("#ifdef ")
                .or_else(|| t.strip_prefix("#ifndef "))
            {
                tested.insert(name.trim());
            }
            if let Some(rest) = t.strip_prefix("#define ") {
                // `#define NAME` or `#define NAME VALUE`.
                set.extend(rest.split_whitespace().next());
            }
            if let Some(inc) = t.strip_prefix("#include ") {
                // `#include "file"`, or a template's `#include "file" A=x ...`.
                let inc = inc.trim().split('"').nth(1).expect("#include \"file\"");
                let fam = wgsl_families()
                    .find(|x| *x == inc)
                    .expect("included family");
                todo.push(fam);
            }
        }
    }
    (tested, set)
}

/// The defines `Kernels::device_defines` may add, in every combination.
const DEVICE_DEFINES: [&[&str]; 4] = [&[], &["SUBGROUP"], &["F16"], &["SUBGROUP", "F16"]];

/// Every WGSL pipeline the registry builds: every family's pipeline specs, and the tooling's
/// read-bandwidth probe (`wick bench`), which is no catalog op.
fn registry_specs() -> Vec<KernelSpec> {
    let mut v = pipeline_specs();
    v.push(bandwidth::spec());
    v
}

/// Override constants by name, values as f64 bits.
type Constants = Vec<(&'static str, u64)>;

/// One pipeline: its WGSL family, sorted defines (device ones included) and constants.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Variant {
    family: &'static str,
    defines: Vec<&'static str>,
    constants: Constants,
}

fn variants() -> BTreeSet<Variant> {
    let mut out = BTreeSet::new();
    for spec in registry_specs() {
        for device in DEVICE_DEFINES {
            let mut defines: Vec<&'static str> = spec.defines.clone();
            defines.extend(device.iter().copied());
            defines.sort();
            defines.dedup();
            out.insert(Variant {
                family: spec.family,
                defines,
                constants: spec
                    .constants
                    .iter()
                    .map(|(n, v)| (*n, v.to_bits()))
                    .collect(),
            });
        }
    }
    out
}

/// Parses and validates `src` (the preprocessed `v`) and applies its override constants;
/// panics with naga's message on any error.
fn module(v: &Variant, src: &str) -> (naga::Module, naga::valid::ModuleInfo) {
    let what = format!("{} {:?}", v.family, v.defines);
    let module = naga::front::wgsl::parse_str(src)
        .unwrap_or_else(|e| panic!("{what}: WGSL parse: {}", e.emit_to_string(src)));
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{what}: validation: {e:?}"));
    let constants = v
        .constants
        .iter()
        .map(|(n, bits)| (n.to_string(), f64::from_bits(*bits)))
        .collect();
    let (module, info) = pipeline_constants::process_overrides(&module, &info, None, &constants)
        .unwrap_or_else(|e| panic!("{what}: overrides {:?}: {e}", v.constants));
    (module.into_owned(), info.into_owned())
}

/// What one variant translated to: (MSL bytes, HLSL bytes).
fn translate(v: &Variant, src: &str) -> (usize, usize) {
    let what = format!("{} {:?}", v.family, v.defines);
    let (module, info) = module(v, src);
    let msl_opts = msl::Options {
        // Metal 2.4 (Apple7+, macOS 12): simdgroup functions and half.
        lang_version: (2, 4),
        fake_missing_bindings: true,
        ..Default::default()
    };
    let (msl_src, _) =
        msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default())
            .unwrap_or_else(|e| panic!("{what}: MSL: {e}"));
    let hlsl_opts = hlsl::Options {
        // Shader model 6.2: wave intrinsics and 16-bit types.
        shader_model: hlsl::ShaderModel::V6_2,
        fake_missing_bindings: true,
        ..Default::default()
    };
    let mut hlsl_src = String::new();
    hlsl::Writer::new(&mut hlsl_src, &hlsl_opts, &hlsl::PipelineOptions::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{what}: HLSL: {e}"));
    assert!(
        msl_src.contains("kernel void"),
        "{what}: MSL without a kernel"
    );
    assert!(
        hlsl_src.contains("[numthreads("),
        "{what}: HLSL without a compute entry point"
    );
    (msl_src.len(), hlsl_src.len())
}

#[test]
fn every_wgsl_kernel_translates_to_msl_and_hlsl() {
    let variants = variants();
    // Variants whose preprocessed source and constants coincide (F16 selects nothing in
    // some families) translate identically: translate each once.
    let mut distinct: BTreeMap<(String, Constants), &Variant> = BTreeMap::new();
    for v in &variants {
        let src = preprocess(v.family, &v.defines)
            .unwrap_or_else(|e| panic!("{} {:?}: preprocess: {e}", v.family, v.defines));
        distinct.entry((src, v.constants.clone())).or_insert(v);
    }
    let mut per_family: BTreeMap<&str, usize> = BTreeMap::new();
    for ((src, _), v) in &distinct {
        translate(v, src);
        *per_family.entry(v.family).or_default() += 1;
    }
    for (family, n) in &per_family {
        eprintln!("{family}: {n} distinct variants translated");
    }
    eprintln!(
        "{} registry variants, {} distinct sources, all translated to MSL and HLSL",
        variants.len(),
        distinct.len()
    );
    // Every kernel family is among them, and every define its source tests is one the
    // registry sets (or the source itself), but for COOP, the Vulkan-only cooperative-matrix
    // GEMM (`cooperative_matrix_kernels_build_spirv`; naga's Metal backend has 8x8 matrices
    // only): no kernel and no branch of one goes untranslated.
    let included: BTreeSet<&str> = wgsl_families()
        .flat_map(|f| wgsl_source(f).unwrap().lines())
        .filter_map(|l| l.trim().strip_prefix("#include ")?.split('"').nth(1))
        .collect();
    // Families only native cooperative-matrix kernels build (Vulkan only, like COOP).
    let coop_only: BTreeSet<&str> = wick::kernels::native_specs()
        .into_iter()
        .filter_map(|s| s.native_vulkan.filter(|n| !n.wgsl_defines.is_empty()))
        .map(|n| n.family)
        .filter(|f| !variants.iter().any(|v| v.family == *f))
        .collect();
    for family in wgsl_families() {
        if included.contains(family) || coop_only.contains(family) {
            // An include (shared pieces), translated as part of the kernels using it; or a
            // cooperative-matrix kernel (`cooperative_matrix_gemm_builds_spirv`).
            continue;
        }
        assert!(
            per_family.contains_key(family),
            "wgsl/{family}.wgsl: a kernel family no registry spec builds"
        );
        let (tested, set) = defines_of(family);
        for name in tested {
            let used = variants
                .iter()
                .any(|v| v.family == family && v.defines.contains(&name));
            assert!(
                used || set.contains(name) || name == "COOP",
                "wgsl/{family}.wgsl tests {name}, which no registry spec defines"
            );
        }
    }
}

/// The native Vulkan kernels written in WGSL (`NativeKernel::wgsl_defines`: the
/// cooperative-matrix GEMM, `COOP` in wgsl/gemm.wgsl, and prefill attention,
/// wgsl/attention_prefill_coop.wgsl), as the registry builds them for every
/// native spec that has one: the spec's defines plus the kernel's, with SUBGROUP (required
/// with cooperative matrices) and with and without F16, and the spec's constants. naga must
/// accept each, validate it with the cooperative-matrix capability, and write SPIR-V with the
/// cooperative-matrix instructions, as wgpu does on a device with
/// EXPERIMENTAL_COOPERATIVE_MATRIX (lavapipe has none, so this is the check the kernel gets
/// here; it runs on GPUs with tensor cores through tests/kernels/gemm.rs and `wick kernels
/// check`).
#[test]
fn cooperative_matrix_kernels_build_spirv() {
    use naga::back::spv;
    let mut built = 0;
    for spec in wick::kernels::native_specs() {
        let Some(native) = spec.native_vulkan.filter(|n| !n.wgsl_defines.is_empty()) else {
            continue;
        };
        assert!(native.needs.cooperative_matrix, "{}", spec.op);
        for f16 in [false, true] {
            let mut d: Vec<&str> = spec.defines.clone();
            d.extend(native.wgsl_defines);
            d.push("SUBGROUP");
            if f16 {
                d.push("F16");
            }
            d.sort();
            let src = preprocess(native.family, &d).unwrap();
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("{} {d:?}: {}", spec.op, e.emit_to_string(&src)));
            let info = Validator::new(ValidationFlags::all(), Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{} {d:?}: {}", spec.op, e.emit_to_string(&src)));
            let constants = spec
                .constants
                .iter()
                .map(|(n, v)| (n.to_string(), *v))
                .collect();
            let (module, info) =
                pipeline_constants::process_overrides(&module, &info, None, &constants)
                    .unwrap_or_else(|e| panic!("{} {d:?}: overrides: {e}", spec.op));
            let opts = spv::Options {
                lang_version: (1, 3),
                capabilities: None,
                ..Default::default()
            };
            let pipeline = spv::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: native.entry.into(),
            };
            let words = spv::write_vec(&module, &info, &opts, Some(&pipeline))
                .unwrap_or_else(|e| panic!("{} {d:?}: SPIR-V: {e}", spec.op));
            // OpCooperativeMatrixMulAddKHR (4459) must be there: the products really run on
            // the matrix units.
            let has_mul_add = {
                let mut i = 5;
                let mut found = false;
                while i < words.len() {
                    let (len, op) = ((words[i] >> 16) as usize, words[i] & 0xffff);
                    found |= op == 4459;
                    i += len.max(1);
                }
                found
            };
            assert!(
                has_mul_add,
                "{} {d:?}: no OpCooperativeMatrixMulAddKHR",
                spec.op
            );
            built += 1;
        }
    }
    // Four formats with and without bias, each with and without F16.
    assert!(built >= 16, "only {built} cooperative-matrix variants");
}
