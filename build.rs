//! Embeds every shader source under wgsl/, metal_overrides/ and vulkan_overrides/ into the
//! binary through a generated table, so adding a kernel family needs no registration edit.

use std::fs;
use std::path::Path;

fn table(dir: &str, exts: &[&str], out: &mut String, name: &str, binary: bool) {
    println!("cargo:rerun-if-changed={dir}");
    let mut entries: Vec<(String, String)> = Vec::new();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            let Some(ext) = p.extension().and_then(|x| x.to_str()) else {
                continue;
            };
            if !exts.contains(&ext) {
                continue;
            }
            let stem = p.file_stem().unwrap().to_string_lossy().to_string();
            let abs = fs::canonicalize(&p).unwrap();
            println!("cargo:rerun-if-changed={}", abs.display());
            entries.push((stem, abs.display().to_string()));
        }
    }
    entries.sort();
    let ty = if binary { "&[u8]" } else { "&str" };
    let mac = if binary {
        "include_bytes"
    } else {
        "include_str"
    };
    out.push_str(&format!("pub static {name}: &[(&str, {ty})] = &[\n"));
    for (stem, abs) in entries {
        out.push_str(&format!("    ({stem:?}, {mac}!({abs:?})),\n"));
    }
    out.push_str("];\n");
}

fn main() {
    let mut out = String::new();
    table("wgsl", &["wgsl"], &mut out, "WGSL_SOURCES", false);
    table(
        "metal_overrides",
        &["metal"],
        &mut out,
        "MSL_SOURCES",
        false,
    );
    table(
        "vulkan_overrides",
        &["spv"],
        &mut out,
        "SPIRV_SOURCES",
        true,
    );
    let dest = Path::new(&std::env::var("OUT_DIR").unwrap()).join("shader_sources.rs");
    fs::write(dest, out).unwrap();
}
