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

/// One SPIR-V module a `.comp` source builds: its file stem and the glslc flags of
/// scripts/build-spirv.sh (`// wick-glslc:` and `// wick-spirv:` lines; keep both in step).
struct Module {
    src: PathBuf,
    stem: String,
    flags: Vec<String>,
}

fn modules() -> Vec<Module> {
    let mut out = Vec::new();
    for src in files("comp") {
        let family = src.file_stem().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&src).unwrap();
        let mut common: Vec<String> = Vec::new();
        let mut variants: Vec<(String, Vec<String>)> = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("// wick-glslc:") {
                common.extend(rest.split_whitespace().map(String::from));
            } else if let Some(rest) = line.strip_prefix("// wick-spirv:") {
                let mut it = rest.split_whitespace().map(String::from);
                let name = it.next().expect("wick-spirv line without a name");
                variants.push((name, it.collect()));
            }
        }
        if !common.iter().any(|f| f.starts_with("--target-env=")) {
            common.insert(0, "--target-env=vulkan1.0".into());
        }
        let mut flags = vec!["-fshader-stage=compute".to_string()];
        flags.extend(common);
        if variants.is_empty() {
            flags.push("-O".into());
            out.push(Module {
                src: src.clone(),
                stem: family.clone(),
                flags,
            });
        } else {
            for (name, extra) in variants {
                let mut f = flags.clone();
                f.extend(extra);
                f.push("-O".into());
                out.push(Module {
                    src: src.clone(),
                    stem: format!("{family}.{name}"),
                    flags: f,
                });
            }
        }
    }
    out
}

#[test]
fn every_native_vulkan_source_has_its_spirv_and_back() {
    let spv = files("spv");
    let mut want: Vec<String> = modules().into_iter().map(|m| m.stem).collect();
    assert!(!want.is_empty(), "no native Vulkan kernels found");
    want.sort();
    let have: Vec<String> = spv
        .iter()
        .map(|p| p.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        want, have,
        "the .spv files must be exactly the modules the .comp sources declare"
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
    for m in modules() {
        let out = tmp.path().join(format!("{}.spv", m.stem));
        let st = Command::new("glslc")
            .args(&m.flags)
            .arg(&m.src)
            .arg("-o")
            .arg(&out)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "glslc failed on {} ({:?})",
            m.src.display(),
            m.flags
        );
        let fresh = std::fs::read(&out).unwrap();
        let committed = std::fs::read(dir().join(format!("{}.spv", m.stem))).unwrap();
        assert!(
            fresh == committed,
            "vulkan_overrides/{}.spv is stale: run scripts/build-spirv.sh and commit it",
            m.stem
        );
    }
}
