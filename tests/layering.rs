//! The library's layering, checked from its source: every `crate::` path (in `use` lines and
//! inline) of a module of `src/` may name only modules of a lower layer, and no two files of
//! the library import each other, directly or through a circle (a module and its own parent
//! or children aside: a `mod.rs` declares and re-exports its children).
//!
//! Layers, lowest first: the crate-wide error; quantisation formats and the GPU device; model
//! file formats and the CPU reference; kernels; the engine; the model; the runtime; the
//! tooling (`tools`). The binary's `cli` sits above everything and is not part of the library.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module of the library; a module may import only lower layers.
const LAYERS: &[(&str, u32)] = &[
    ("error", 0),
    ("quant", 1),
    ("gpu", 1),
    ("formats", 2),
    ("reference", 2),
    ("kernels", 3),
    ("engine", 4),
    ("model", 5),
    ("runtime", 6),
    ("tools", 7),
    ("serve", 7),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file of the library (the binary's `main.rs` and `cli/` excluded).
fn library_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let mut files = Vec::new();
    walk(&src(), &mut files);
    files.retain(|f| {
        let rel = f.strip_prefix(src()).unwrap();
        rel != Path::new("main.rs") && !rel.starts_with("cli")
    });
    files.sort();
    files
}

/// The module path of a file: `src/a/b.rs` and `src/a/b/mod.rs` are `[a, b]`, `src/lib.rs`
/// is `[]`.
fn module_of(file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src()).unwrap().with_extension("");
    let mut m: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if m.last().is_some_and(|l| l == "mod" || l == "lib") {
        m.pop();
    }
    m
}

/// The file that defines module `m` (or its longest existing prefix).
fn file_of(m: &[String]) -> Option<PathBuf> {
    for n in (0..=m.len()).rev() {
        let base = m[..n].iter().fold(src(), |p, s| p.join(s));
        for f in [base.with_extension("rs"), base.join("mod.rs")] {
            if n > 0 && f.is_file() {
                return Some(f);
            }
        }
        if n == 0 {
            return Some(src().join("lib.rs"));
        }
    }
    None
}

fn ident_len(s: &str) -> usize {
    s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len())
}

/// Expands the path at the start of `s` (after `crate::` or `super::`): `a::b::{c, d::e}`
/// gives `[a, b, c]` and `[a, b, d, e]`.
fn paths(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut cur = prefix;
    let mut rest = s;
    loop {
        let n = ident_len(rest);
        if n > 0 {
            cur.push(rest[..n].to_string());
            rest = &rest[n..];
        }
        if let Some(r) = rest.strip_prefix("::") {
            rest = r;
            if let Some(r) = rest.strip_prefix('{') {
                let mut depth = 0;
                let mut start = 0;
                for (i, c) in r.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => {
                            paths(r[start..i].trim(), cur.clone(), out);
                            return;
                        }
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            paths(r[start..i].trim(), cur.clone(), out);
                            start = i + 1;
                        }
                        _ => {}
                    }
                }
                return;
            }
            continue;
        }
        out.push(cur);
        return;
    }
}

/// Module paths a file names through `crate::` and `super::`, as absolute paths. Comments
/// are skipped (doc links name modules freely).
fn references(file: &Path) -> Vec<Vec<String>> {
    let text = std::fs::read_to_string(file).unwrap();
    let here = module_of(file);
    // `super` of `a/b.rs` and of `a/b/mod.rs` is `a` (inline `mod tests` blocks aside).
    let parent: Vec<String> = here[..here.len().saturating_sub(1)].to_vec();
    // Statements may span lines (`use crate::{...}`): join the non-comment lines.
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = Vec::new();
    for (key, base) in [("crate::", Vec::new()), ("super::", parent)] {
        let mut rest = code.as_str();
        while let Some(i) = rest.find(key) {
            let before = rest[..i].chars().last();
            rest = &rest[i + key.len()..];
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                continue;
            }
            // Collapse whitespace inside brace groups spanning lines.
            let end = rest.find(';').unwrap_or(rest.len()).min(2000);
            let stmt: String = rest[..end].split_whitespace().collect::<Vec<_>>().join(" ");
            paths(&stmt, base.clone(), &mut out);
        }
    }
    out.retain(|p| !p.is_empty() && p[0] != "self" && p[0] != "super");
    out
}

#[test]
fn no_module_imports_a_higher_layer() {
    let layer = |m: &str| LAYERS.iter().find(|(n, _)| *n == m).map(|(_, l)| *l);
    let mut violations = Vec::new();
    let mut unknown = BTreeSet::new();
    for f in library_files() {
        let here = module_of(&f);
        let Some(top) = here.first() else { continue };
        let Some(mine) = layer(top) else {
            unknown.insert(top.clone());
            continue;
        };
        for p in references(&f) {
            let to = &p[0];
            if to == top {
                continue;
            }
            if to == "cli" {
                violations.push(format!("{}: names the binary's cli", f.display()));
                continue;
            }
            match layer(to) {
                Some(l) if l < mine => {}
                Some(_) => violations.push(format!(
                    "{} ({top}) imports crate::{} (layer of {to} is not below {top})",
                    f.strip_prefix(src()).unwrap().display(),
                    p.join("::")
                )),
                None => {}
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "modules without a layer in tests/layering.rs: {unknown:?}"
    );
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

#[test]
fn no_import_circles_between_files() {
    let files = library_files();
    let mut edges: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
    for f in &files {
        let here = module_of(f);
        for p in references(f) {
            let Some(to) = file_of(&p) else { continue };
            let there = module_of(&to);
            // A module and its ancestors or descendants: declarations and re-exports.
            if here.starts_with(&there) || there.starts_with(&here) {
                continue;
            }
            edges.entry(f.clone()).or_default().insert(to);
        }
    }
    // Depth-first search for a back edge.
    fn visit(
        f: &PathBuf,
        edges: &BTreeMap<PathBuf, BTreeSet<PathBuf>>,
        stack: &mut Vec<PathBuf>,
        done: &mut BTreeSet<PathBuf>,
        circles: &mut Vec<String>,
    ) {
        if done.contains(f) {
            return;
        }
        if let Some(i) = stack.iter().position(|s| s == f) {
            let names: Vec<String> = stack[i..]
                .iter()
                .chain([f])
                .map(|p| p.strip_prefix(src()).unwrap().display().to_string())
                .collect();
            circles.push(names.join(" -> "));
            return;
        }
        stack.push(f.clone());
        for t in edges.get(f).into_iter().flatten() {
            visit(t, edges, stack, done, circles);
        }
        stack.pop();
        done.insert(f.clone());
    }
    let mut circles = Vec::new();
    let mut done = BTreeSet::new();
    for f in &files {
        visit(f, &edges, &mut Vec::new(), &mut done, &mut circles);
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
}

/// The scanner itself: it must see the imports the tests above judge.
#[test]
fn the_scanner_reads_use_lines_and_inline_paths() {
    let f = src().join("runtime").join("session.rs");
    let refs = references(&f);
    let has = |p: &[&str]| {
        refs.iter()
            .any(|r| r.iter().map(String::as_str).eq(p.iter().copied()))
    };
    assert!(has(&["error", "Error"]), "{refs:?}");
    assert!(has(&["runtime", "forward", "Forward"]), "{refs:?}");
    let mut out = Vec::new();
    paths("a::{b, c::{d, e}}", Vec::new(), &mut out);
    assert_eq!(
        out,
        [vec!["a", "b"], vec!["a", "c", "d"], vec!["a", "c", "e"]]
    );
    assert_eq!(
        file_of(&["runtime".into(), "forward".into(), "Forward".into()]),
        Some(src().join("runtime").join("forward.rs"))
    );
}
