//! The clang++ syntax and type check of every MSL file against the shim (check 1 of the crate
//! docs), and the proof that it rejects broken MSL.

use std::path::Path;
use std::process::Command;

use crate::sources::{clang_or_skip, metal_files, shim_dir};

/// Compiles `src` as C++17 against the shim, syntax and types only; Err holds clang's output.
/// Metal's attributes are unknown to clang: that one warning is silenced, every other is an
/// error.
pub(crate) fn syntax_check(clang: &str, src: &Path) -> Result<(), String> {
    let out = Command::new(clang)
        .args([
            "-x",
            "c++",
            "-std=c++17",
            "-fsyntax-only",
            "--target=aarch64-linux-gnu",
            "-nostdinc",
        ])
        .arg("-I")
        .arg(shim_dir())
        .args(["-Werror", "-Wno-unknown-attributes"])
        .arg(src)
        .output()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// `src` after clang's preprocessor (`-E -P`), with `<metal_stdlib>` an empty file so that the
/// MSL keywords the shim defines away (`kernel`, `device`, ...) stay as written.
pub(crate) fn clang_preprocess(clang: &str, src: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("metal_stdlib"), "").unwrap();
    let path = dir.path().join("source.metal");
    std::fs::write(&path, src).unwrap();
    let out = Command::new(clang)
        .args(["-x", "c++", "-std=c++17", "-E", "-P", "-nostdinc"])
        .arg("-I")
        .arg(dir.path())
        .arg(&path)
        .output()
        .unwrap_or_else(|e| panic!("running {clang}: {e}"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
pub(crate) fn metal_sources_pass_the_clang_syntax_check() {
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let mut files = metal_files();
    assert!(!files.is_empty(), "no metal_overrides/*.metal found");
    // The shim's own coverage file: every construct the kernels may use.
    files.push(shim_dir().join("subset.metal"));
    let failures: Vec<String> = files
        .iter()
        .filter_map(|f| {
            syntax_check(&clang, f)
                .err()
                .map(|e| format!("{}:\n{e}", f.display()))
        })
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{} MSL files pass the clang++ syntax check", files.len());
}

/// A kernel around `body`: valid MSL when `body` is.
pub(crate) fn snippet(body: &str) -> String {
    format!(
        "#include <metal_stdlib>\nusing namespace metal;\nstruct P {{ uint n; }};\n\
         kernel void k(constant P& p [[buffer(0)]], device const half* h [[buffer(1)]],\n\
         device float* out [[buffer(2)]], uint i [[thread_position_in_grid]]) {{\n\
         {body}\n}}\n"
    )
}

#[test]
pub(crate) fn clang_syntax_check_rejects_broken_msl() {
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snippet.metal");
    let good = "float4 v = float4(h[i]) * 2.0f;\nout[i] = v.x + float(p.n);";
    std::fs::write(&path, snippet(good)).unwrap();
    if let Err(e) = syntax_check(&clang, &path) {
        panic!("the valid control snippet fails, so rejections prove nothing:\n{e}");
    }
    let bad = [
        (
            "a float4 assigned to a float",
            "float f = float4(1.0f);\nout[i] = f;",
        ),
        (
            "an undeclared function",
            "out[i] = undeclared_helper(float(h[i]));",
        ),
        (
            "half4 plus float4 without a conversion",
            "float4 v = half4(h[i]) + float4(1.0f);\nout[i] = v.x;",
        ),
        (
            "as_type between different sizes",
            "out[i] = float(as_type<uint>(h[i]));",
        ),
        ("a write to the constant address space", "p.n = 1u;"),
        (
            "a half matrix loaded from float memory",
            "simdgroup_half8x8 m;\nsimdgroup_load(m, out, 8);",
        ),
        (
            "max of uint and int (ambiguous in MSL)",
            "out[i] = float(max(p.n, 1));",
        ),
    ];
    for (what, body) in bad {
        std::fs::write(&path, snippet(body)).unwrap();
        match syntax_check(&clang, &path) {
            Ok(()) => panic!("the syntax check accepts {what}:\n{body}"),
            Err(e) => assert!(e.contains("error"), "{what}: no error in\n{e}"),
        }
    }
}
