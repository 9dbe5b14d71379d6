//! Every WGSL kernel through naga's Metal (MSL) and DX12 (HLSL) backends, the translation wgpu
//! performs on those platforms, so a kernel that would not build there fails here, on a machine
//! with neither. Each family is expanded with every combination of its preprocessor defines
//! (weight formats one at a time, flags in every combination, with and without the device's
//! SUBGROUP and F16); a combination naga's WGSL front end rejects is not a kernel wick builds
//! (the Vulkan tests would fail first), every accepted one must translate to both.

use std::collections::BTreeSet;

use naga::back::{hlsl, msl, pipeline_constants};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use wick::kernels::{preprocess, wgsl_families, wgsl_source};

/// The defines a family's source and its includes test, split into the one-of weight
/// formats and independent flags.
fn defines_of(family: &str) -> (Vec<&'static str>, Vec<&'static str>) {
    let mut names = BTreeSet::new();
    let mut todo = vec![family];
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
                names.insert(name.trim());
            }
            if let Some(inc) = t.strip_prefix("#include ") {
                let inc = inc.trim().trim_matches('"');
                let fam = wgsl_families()
                    .find(|x| *x == inc)
                    .expect("included family");
                todo.push(fam);
            }
        }
    }
    // The sources are 'static, so are the names.
    let names: Vec<&'static str> = names
        .into_iter()
        .map(|n| -> &'static str { Box::leak(n.to_string().into_boxed_str()) })
        .filter(|n| *n != "SUBGROUP" && *n != "F16")
        // The cooperative-matrix GEMM is Vulkan-only (see
        // `cooperative_matrix_gemm_builds_spirv`); naga's Metal backend has 8x8 matrices only.
        .filter(|n| *n != "COOP")
        .collect();
    let (formats, flags) = names.into_iter().partition(|n| n.starts_with("FMT_"));
    (formats, flags)
}

fn combinations(formats: &[&'static str], flags: &[&'static str]) -> Vec<Vec<&'static str>> {
    let fmts: Vec<Option<&'static str>> = if formats.is_empty() {
        vec![None]
    } else {
        formats.iter().copied().map(Some).collect()
    };
    let all_flags: Vec<&'static str> = flags.iter().copied().chain(["SUBGROUP", "F16"]).collect();
    assert!(
        all_flags.len() <= 10,
        "too many flags to enumerate: {all_flags:?}"
    );
    let mut out = Vec::new();
    for f in &fmts {
        for mask in 0..(1u32 << all_flags.len()) {
            let mut d: Vec<&'static str> = f.iter().copied().collect();
            d.extend(
                all_flags
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, n)| *n),
            );
            out.push(d);
        }
    }
    out
}

/// What one accepted variant translated to: (MSL bytes, HLSL bytes).
fn translate(family: &str, defines: &[&str]) -> Option<(usize, usize)> {
    let src = preprocess(family, defines).unwrap();
    let module = naga::front::wgsl::parse_str(&src).ok()?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .ok()?;
    let (module, info) =
        pipeline_constants::process_overrides(&module, &info, None, &Default::default())
            .unwrap_or_else(|e| panic!("{family} {defines:?}: overrides: {e}"));
    let msl_opts = msl::Options {
        // Metal 2.4 (Apple7+, macOS 12): simdgroup functions and half.
        lang_version: (2, 4),
        fake_missing_bindings: true,
        ..Default::default()
    };
    let (msl_src, _) =
        msl::write_string(&module, &info, &msl_opts, &msl::PipelineOptions::default())
            .unwrap_or_else(|e| panic!("{family} {defines:?}: MSL: {e}"));
    let hlsl_opts = hlsl::Options {
        // Shader model 6.2: wave intrinsics and 16-bit types.
        shader_model: hlsl::ShaderModel::V6_2,
        fake_missing_bindings: true,
        ..Default::default()
    };
    let mut hlsl_src = String::new();
    hlsl::Writer::new(&mut hlsl_src, &hlsl_opts, &hlsl::PipelineOptions::default())
        .write(&module, &info, None)
        .unwrap_or_else(|e| panic!("{family} {defines:?}: HLSL: {e}"));
    assert!(
        msl_src.contains("kernel void"),
        "{family} {defines:?}: MSL without a kernel"
    );
    assert!(
        hlsl_src.contains("[numthreads("),
        "{family} {defines:?}: HLSL without a compute entry point"
    );
    Some((msl_src.len(), hlsl_src.len()))
}

#[test]
fn every_wgsl_kernel_translates_to_msl_and_hlsl() {
    let mut total = 0;
    for family in wgsl_families() {
        let src = wgsl_source(family).unwrap();
        if !src.contains("@compute") {
            // An include (shared functions), translated as part of the kernels using it.
            continue;
        }
        let (formats, flags) = defines_of(family);
        let mut accepted = 0;
        for d in combinations(&formats, &flags) {
            if translate(family, &d).is_some() {
                accepted += 1;
            }
        }
        eprintln!("{family}: {accepted} variants translated");
        // At least the plain form (or every weight format) builds: the check is never empty.
        assert!(
            accepted >= formats.len().max(1),
            "{family}: only {accepted} define combinations are valid WGSL"
        );
        total += accepted;
    }
    assert!(total > 100, "{total} variants");
}

/// The native Vulkan GEMM (`COOP` in wgsl/gemm.wgsl, cooperative matrices) for every weight
/// format and with/without bias: naga accepts it, validates it with the cooperative-matrix
/// capability, and writes SPIR-V with the cooperative-matrix instructions, as wgpu does on a
/// device with EXPERIMENTAL_COOPERATIVE_MATRIX (lavapipe has none, so this is the check the
/// kernel gets here; it runs on GPUs with tensor cores through tests/kernels/gemm.rs).
#[test]
fn cooperative_matrix_gemm_builds_spirv() {
    use naga::back::spv;
    let (formats, _) = defines_of("gemm");
    assert!(formats.len() >= 10, "{formats:?}");
    for f in formats {
        for bias in [false, true] {
            let mut d = vec![f, "COOP", "SUBGROUP"];
            if bias {
                d.push("BIAS");
            }
            let src = preprocess("gemm", &d).unwrap();
            let module = naga::front::wgsl::parse_str(&src)
                .unwrap_or_else(|e| panic!("gemm {d:?}: {}", e.emit_to_string(&src)));
            let info = Validator::new(ValidationFlags::all(), Capabilities::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("gemm {d:?}: {e:?}"));
            let constants = [("WG_M", 16.0), ("WG_N", 16.0), ("PAD", 1.0)]
                .into_iter()
                .map(|(n, v)| (n.to_string(), v))
                .collect();
            let (module, info) =
                pipeline_constants::process_overrides(&module, &info, None, &constants)
                    .unwrap_or_else(|e| panic!("gemm {d:?}: overrides: {e}"));
            let opts = spv::Options {
                lang_version: (1, 3),
                capabilities: None,
                ..Default::default()
            };
            let pipeline = spv::PipelineOptions {
                shader_stage: naga::ShaderStage::Compute,
                entry_point: "gemm_coop".into(),
            };
            let words = spv::write_vec(&module, &info, &opts, Some(&pipeline))
                .unwrap_or_else(|e| panic!("gemm {d:?}: SPIR-V: {e}"));
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
            assert!(has_mul_add, "gemm {d:?}: no OpCooperativeMatrixMulAddKHR");
        }
    }
}
