//! Where the MSL sources, the Metal standard-library shim and clang++ are.

use std::path::{Path, PathBuf};
use std::process::Command;

pub(crate) fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn shim_dir() -> PathBuf {
    root().join("tests").join("metal_shim")
}

/// Every `metal_overrides/*.metal`, sorted.
pub(crate) fn metal_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("metal_overrides"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "metal"))
        .collect();
    v.sort();
    v
}

pub(crate) fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The first clang++ on PATH (plain, then versioned names, newest first).
pub(crate) fn find_clang() -> Option<String> {
    let mut names = vec!["clang++".to_string()];
    names.extend((14..=22).rev().map(|v| format!("clang++-{v}")));
    names.into_iter().find(|c| {
        Command::new(c)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    })
}

/// clang++, or None after a message when it is missing and not required.
pub(crate) fn clang_or_skip() -> Option<String> {
    let found = find_clang();
    if found.is_none() {
        assert!(
            std::env::var("WICK_REQUIRE_CLANG").as_deref() != Ok("1"),
            "WICK_REQUIRE_CLANG=1 but no clang++ is on PATH (apt-get install clang)"
        );
        eprintln!("skipping: clang++ is not installed (apt-get install clang)");
    }
    found
}
