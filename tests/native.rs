//! Native kernel sources: every SPIR-V module wick ships is the compilation of its GLSL source
//! next to it (a stale .spv fails here whenever `glslc` is installed; CI installs it and sets
//! WICK_REQUIRE_GLSLC=1), and every native source has its compiled form.

use std::path::{Path, PathBuf};
use std::process::Command;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vulkan_overrides")
}

fn files(ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == ext))
        .collect();
    v.sort();
    v
}

#[test]
fn every_native_vulkan_source_has_its_spirv_and_back() {
    let comp = files("comp");
    let spv = files("spv");
    assert!(!comp.is_empty(), "no native Vulkan kernels found");
    let stems = |v: &[PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        stems(&comp),
        stems(&spv),
        ".comp and .spv files must pair up"
    );
    // Every embedded module is a SPIR-V module (magic number, whole words).
    for p in &spv {
        let b = std::fs::read(p).unwrap();
        assert!(b.len() % 4 == 0 && b.len() > 20, "{}", p.display());
        assert_eq!(&b[..4], &0x0723_0203u32.to_le_bytes(), "{}", p.display());
    }
}

#[test]
fn committed_spirv_matches_its_glsl_source() {
    let have = Command::new("glslc").arg("--version").output().is_ok();
    if !have {
        assert!(
            std::env::var("WICK_REQUIRE_GLSLC").as_deref() != Ok("1"),
            "WICK_REQUIRE_GLSLC=1 but glslc is not installed"
        );
        eprintln!("skipping: glslc is not installed (apt-get install glslc)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    for src in files("comp") {
        let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
        let out = tmp.path().join(format!("{stem}.spv"));
        // The flags of scripts/build-spirv.sh.
        let st = Command::new("glslc")
            .args(["-fshader-stage=compute", "--target-env=vulkan1.0", "-O"])
            .arg(&src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "glslc failed on {}", src.display());
        let fresh = std::fs::read(&out).unwrap();
        let committed = std::fs::read(dir().join(format!("{stem}.spv"))).unwrap();
        assert!(
            fresh == committed,
            "vulkan_overrides/{stem}.spv is stale: run scripts/build-spirv.sh and commit it"
        );
    }
}
