//! The Metal safety net, for machines without a Mac (Metal kernels cannot run here):
//!
//! 1. Syntax and type check: every `metal_overrides/*.metal` compiles with clang++ as C++17
//!    against `tests/metal_shim/metal_stdlib`, a stand-in for the part of the Metal standard
//!    library wick uses (see its header comment for what it can and cannot catch). Skipped with
//!    a message when clang++ is missing, unless WICK_REQUIRE_CLANG=1 (CI sets it).
//! 2. Binding slots: wgpu's Metal backend gives a passthrough kernel's buffers the slots
//!    `[[buffer(0..n)]]` in bind group layout order (immediates would come first; wick uses none,
//!    `immediate_size: 0` in `Kernels::build`), and a sizes buffer after them. So the MSL
//!    signature of every native Metal entry must take binding i as `[[buffer(i)]]`, in the
//!    address space its `Binding` implies, and nothing else. Parsed here from the source.
//! 3. Shape rules of passthrough MSL: no threadgroup-memory parameters (wgpu sets no
//!    threadgroup memory lengths), threadgroup arrays only inside kernel functions, known
//!    built-in attributes with their allowed types, and a `max_total_threads_per_threadgroup`
//!    that admits the threadgroup size the host dispatches.
//! 4. Host emulation: gemm.metal is compiled for the CPU (metal_stdlib with WICK_METAL_EXEC,
//!    plus tests/metal_shim/metal_exec.h: one host thread per Metal thread, real barriers,
//!    SIMD-group matrices held whole by every lane) and checked against a CPU reference. This
//!    tests the kernel's indexing, dequantisation and epilogue, not Metal's compiler or timing.
//!
//! Every check is also run against hand-written bad MSL, so that it is known to fail (the
//! emulation was checked by hand with broken variants of gemm.metal: a wrong transpose flag,
//! nibble offset, sub-tile mapping, bias index and row bound are each caught).

use std::path::{Path, PathBuf};
use std::process::Command;

use wick::kernels::gemm::{self, GemmTiling};
use wick::kernels::{self, Binding, WeightFormat};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn shim_dir() -> PathBuf {
    root().join("tests").join("metal_shim")
}

/// Every `metal_overrides/*.metal`, sorted.
fn metal_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(root().join("metal_overrides"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "metal"))
        .collect();
    v.sort();
    v
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

// ---------------------------------------------------------------------------------------------
// 1. clang++ syntax check
// ---------------------------------------------------------------------------------------------

/// The first clang++ on PATH (plain, then versioned names, newest first).
fn find_clang() -> Option<String> {
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
fn clang_or_skip() -> Option<String> {
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

/// Compiles `src` as C++17 against the shim, syntax and types only; Err holds clang's output.
/// Metal's attributes are unknown to clang: that one warning is silenced, every other is an
/// error.
fn syntax_check(clang: &str, src: &Path) -> Result<(), String> {
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

#[test]
fn metal_sources_pass_the_clang_syntax_check() {
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
fn snippet(body: &str) -> String {
    format!(
        "#include <metal_stdlib>\nusing namespace metal;\nstruct P {{ uint n; }};\n\
         kernel void k(constant P& p [[buffer(0)]], device const half* h [[buffer(1)]],\n\
         device float* out [[buffer(2)]], uint i [[thread_position_in_grid]]) {{\n\
         {body}\n}}\n"
    )
}

#[test]
fn clang_syntax_check_rejects_broken_msl() {
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

// ---------------------------------------------------------------------------------------------
// 2 and 3. The signature parser and checks
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Num(String),
    Punct(char),
    /// A string or character literal (contents irrelevant here).
    Lit,
}

#[derive(Debug, Clone)]
struct Token {
    tok: Tok,
    line: usize,
    /// Index of its first character in the source.
    pos: usize,
}

impl Token {
    fn is(&self, c: char) -> bool {
        self.tok == Tok::Punct(c)
    }
    fn ident(&self) -> Option<&str> {
        match &self.tok {
            Tok::Ident(s) => Some(s),
            _ => None,
        }
    }
}

/// Tokens of C++ source without comments and preprocessor lines (the kernels' signatures must
/// be written out, not produced by macros, for this check to read them).
fn tokenize(src: &str) -> Vec<Token> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let (mut i, mut line) = (0, 1);
    let mut line_start = true;
    while i < c.len() {
        let ch = c[i];
        if ch == '\n' {
            line += 1;
            line_start = true;
            i += 1;
            continue;
        }
        if ch.is_whitespace() {
            i += 1;
            continue;
        }
        if ch == '#' && line_start {
            // A preprocessor line, with its backslash continuations.
            while i < c.len() && c[i] != '\n' {
                if c[i] == '\\' && c.get(i + 1) == Some(&'\n') {
                    line += 1;
                    i += 1;
                }
                i += 1;
            }
            continue;
        }
        line_start = false;
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if ch == '/' && c.get(i + 1) == Some(&'*') {
            i += 2;
            while i < c.len() && !(c[i] == '*' && c.get(i + 1) == Some(&'/')) {
                if c[i] == '\n' {
                    line += 1;
                }
                i += 1;
            }
            i += 2;
            continue;
        }
        let (start, start_line) = (i, line);
        if ch == '"' || ch == '\'' {
            i += 1;
            while i < c.len() && c[i] != ch {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
            out.push(Token {
                tok: Tok::Lit,
                line: start_line,
                pos: start,
            });
            continue;
        }
        if ch.is_ascii_alphabetic() || ch == '_' {
            let s = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Token {
                tok: Tok::Ident(c[s..i].iter().collect()),
                line,
                pos: s,
            });
            continue;
        }
        if ch.is_ascii_digit() || (ch == '.' && c.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
            let s = i;
            while i < c.len() {
                let d = c[i];
                let exp_sign = (d == '+' || d == '-') && matches!(c[i - 1], 'e' | 'E' | 'p' | 'P');
                if d.is_ascii_alphanumeric() || d == '.' || d == '_' || d == '\'' || exp_sign {
                    i += 1;
                } else {
                    break;
                }
            }
            out.push(Token {
                tok: Tok::Num(c[s..i].iter().collect()),
                line,
                pos: s,
            });
            continue;
        }
        out.push(Token {
            tok: Tok::Punct(ch),
            line,
            pos: i,
        });
        i += 1;
    }
    out
}

/// One attribute of a `[[...]]` list: its name and argument tokens.
#[derive(Debug, Clone)]
struct Attr {
    name: String,
    args: Vec<Tok>,
}

/// Index of the token closing the bracket opened at `open` (`(`, `[`, `{`).
fn matching(t: &[Token], open: usize) -> Option<usize> {
    let (o, c) = match t[open].tok {
        Tok::Punct('(') => ('(', ')'),
        Tok::Punct('[') => ('[', ']'),
        Tok::Punct('{') => ('{', '}'),
        _ => return None,
    };
    let mut depth = 0usize;
    for (j, tk) in t.iter().enumerate().skip(open) {
        if tk.is(o) {
            depth += 1;
        } else if tk.is(c) {
            depth -= 1;
            if depth == 0 {
                return Some(j);
            }
        }
    }
    None
}

/// The attribute list `[[a, b(args)]]` starting at `i`, and the index after it.
fn parse_attrs(t: &[Token], i: usize) -> Option<(Vec<Attr>, usize)> {
    if !(t.get(i)?.is('[') && t.get(i + 1)?.is('[')) {
        return None;
    }
    let close = matching(t, i)?;
    // `[[ ... ]]`: the inner list runs from i + 2 to the inner closing bracket.
    let inner = &t[i + 2..close.saturating_sub(1)];
    let mut attrs = Vec::new();
    let mut j = 0;
    while j < inner.len() {
        let mut name = String::new();
        // Namespaced names (`ns::name`) keep their last component.
        while j < inner.len() && !inner[j].is(',') && !inner[j].is('(') {
            if let Some(s) = inner[j].ident() {
                name = s.to_string();
            }
            j += 1;
        }
        let mut args = Vec::new();
        if j < inner.len() && inner[j].is('(') {
            let end = matching(inner, j).unwrap_or(inner.len() - 1);
            args = inner[j + 1..end].iter().map(|x| x.tok.clone()).collect();
            j = end + 1;
        }
        if !name.is_empty() {
            attrs.push(Attr { name, args });
        }
        while j < inner.len() && !inner[j].is(',') {
            j += 1;
        }
        j += 1;
    }
    Some((attrs, close + 1))
}

/// A kernel parameter: its declaration tokens (attributes removed) and attributes.
#[derive(Debug, Clone)]
struct Param {
    decl: Vec<Tok>,
    attrs: Vec<Attr>,
    line: usize,
}

impl Param {
    fn idents(&self) -> impl Iterator<Item = &str> {
        self.decl.iter().filter_map(|t| match t {
            Tok::Ident(s) => Some(s.as_str()),
            _ => None,
        })
    }

    fn name(&self) -> String {
        self.idents().last().unwrap_or("?").to_string()
    }

    fn address_space(&self) -> Option<&str> {
        self.idents()
            .find(|s| matches!(*s, "device" | "constant" | "threadgroup" | "thread"))
    }

    fn indirection(&self) -> Option<usize> {
        self.decl
            .iter()
            .position(|t| matches!(t, Tok::Punct('*') | Tok::Punct('&')))
    }

    /// Whether what the pointer or reference designates is const (`const` before the `*`).
    fn pointee_const(&self) -> bool {
        let end = self.indirection().unwrap_or(self.decl.len());
        self.decl[..end]
            .iter()
            .any(|t| *t == Tok::Ident("const".into()))
    }

    /// The type of a by-value parameter: its identifiers but the name and `const`.
    fn value_type(&self) -> Vec<&str> {
        let ids: Vec<&str> = self.idents().collect();
        ids[..ids.len().saturating_sub(1)]
            .iter()
            .copied()
            .filter(|s| *s != "const")
            .collect()
    }
}

#[derive(Debug, Clone)]
struct KernelFn {
    name: String,
    line: usize,
    params: Vec<Param>,
    /// Function attributes (`[[max_total_threads_per_threadgroup(N)]]`).
    attrs: Vec<Attr>,
}

/// A parsed MSL file: its kernels, and the problems found while reading it.
struct MslFile {
    kernels: Vec<KernelFn>,
    problems: Vec<String>,
    /// Source positions of the `threadgroup` keywords that declare variables in kernel bodies
    /// (the host emulation makes them `static`).
    threadgroup_vars: Vec<usize>,
}

/// Splits the tokens of a parameter list at its top-level commas.
fn split_params(t: &[Token]) -> Vec<&[Token]> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (j, tk) in t.iter().enumerate() {
        match tk.tok {
            Tok::Punct('(') | Tok::Punct('[') | Tok::Punct('<') | Tok::Punct('{') => depth += 1,
            Tok::Punct(')') | Tok::Punct(']') | Tok::Punct('>') | Tok::Punct('}') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                out.push(&t[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    if start < t.len() {
        out.push(&t[start..]);
    }
    out
}

fn parse_param(t: &[Token]) -> Param {
    let mut decl = Vec::new();
    let mut attrs = Vec::new();
    let mut j = 0;
    while j < t.len() {
        if let Some((a, next)) = parse_attrs(t, j) {
            attrs.extend(a);
            j = next;
        } else {
            decl.push(t[j].tok.clone());
            j += 1;
        }
    }
    Param {
        decl,
        attrs,
        line: t.first().map_or(0, |x| x.line),
    }
}

/// Finds the kernel functions (`kernel void name(...) {...}` at namespace scope) and checks
/// where `threadgroup` appears: inside a kernel body anything goes; a kernel parameter may not
/// be threadgroup memory; elsewhere (helpers, file scope) only pointers and references to it.
fn parse_msl(src: &str) -> MslFile {
    let t = tokenize(src);
    let mut kernels = Vec::new();
    let mut problems = Vec::new();
    // Token ranges of kernel parameter lists and bodies.
    let mut kernel_params: Vec<(usize, usize, String)> = Vec::new();
    let mut kernel_bodies: Vec<(usize, usize)> = Vec::new();
    // Braces opened at namespace scope that are namespaces (kernels may live inside them).
    let mut scopes: Vec<bool> = Vec::new();
    let mut pending: Vec<Attr> = Vec::new();
    let mut i = 0;
    while i < t.len() {
        let at_namespace_scope = scopes.iter().all(|ns| *ns);
        if at_namespace_scope {
            if let Some((a, next)) = parse_attrs(&t, i) {
                pending.extend(a);
                i = next;
                continue;
            }
        }
        match &t[i].tok {
            Tok::Punct('{') => {
                let is_ns = at_namespace_scope
                    && ((i >= 1 && t[i - 1].ident() == Some("namespace"))
                        || (i >= 2 && t[i - 2].ident() == Some("namespace")));
                scopes.push(is_ns);
            }
            Tok::Punct('}') => {
                scopes.pop();
                pending.clear();
            }
            Tok::Punct(';') => pending.clear(),
            Tok::Ident(s) if s == "kernel" && at_namespace_scope => {
                let line = t[i].line;
                let ok = t.get(i + 1).and_then(Token::ident) == Some("void")
                    && t.get(i + 2).and_then(Token::ident).is_some()
                    && t.get(i + 3).is_some_and(|x| x.is('('));
                if !ok {
                    problems.push(format!(
                        "line {line}: a kernel declaration this check cannot read: write each \
                         entry point out as `kernel void name(...) {{ ... }}`"
                    ));
                    i += 1;
                    continue;
                }
                let name = t[i + 2].ident().unwrap().to_string();
                let open = i + 3;
                let Some(close) = matching(&t, open) else {
                    problems.push(format!(
                        "line {line}: kernel {name}: unbalanced parentheses"
                    ));
                    break;
                };
                let mut attrs = std::mem::take(&mut pending);
                let mut j = close + 1;
                while let Some((a, next)) = parse_attrs(&t, j) {
                    attrs.extend(a);
                    j = next;
                }
                if !t.get(j).is_some_and(|x| x.is('{')) {
                    problems.push(format!(
                        "line {line}: kernel {name}: expected its body after the parameters"
                    ));
                    i = close + 1;
                    continue;
                }
                let Some(end) = matching(&t, j) else {
                    problems.push(format!("line {line}: kernel {name}: unbalanced braces"));
                    break;
                };
                let params = split_params(&t[open + 1..close])
                    .into_iter()
                    .filter(|p| !p.is_empty())
                    .map(parse_param)
                    .collect();
                kernel_params.push((open, close, name.clone()));
                kernel_bodies.push((j, end));
                kernels.push(KernelFn {
                    name,
                    line,
                    params,
                    attrs,
                });
                i = end + 1;
                continue;
            }
            _ => {}
        }
        i += 1;
    }

    let mut threadgroup_vars = Vec::new();
    for (idx, tk) in t.iter().enumerate() {
        if tk.ident() != Some("threadgroup") {
            continue;
        }
        // Whether it qualifies a pointer or reference, not a variable.
        let indirect = t[idx + 1..]
            .iter()
            .take_while(|x| !matches!(x.tok, Tok::Punct(';' | '=' | ',' | ')' | '{' | '[')))
            .any(|x| x.is('*') || x.is('&'));
        if kernel_bodies.iter().any(|&(a, b)| a < idx && idx < b) {
            if !indirect {
                threadgroup_vars.push(tk.pos);
            }
            continue;
        }
        if let Some((_, _, name)) = kernel_params.iter().find(|(a, b, _)| *a < idx && idx < *b) {
            problems.push(format!(
                "line {}: kernel {name} takes threadgroup memory as a parameter; wgpu sets no \
                 threadgroup memory lengths for passthrough MSL: declare the array inside the \
                 kernel",
                tk.line
            ));
            continue;
        }
        // Outside kernels: a pointer or reference type is fine, a variable is not.
        if !indirect {
            problems.push(format!(
                "line {}: a threadgroup variable outside a kernel function (MSL allows them \
                 only in kernel scope; declare it in the kernel and pass a pointer)",
                tk.line
            ));
        }
    }

    let mut names: Vec<&str> = kernels.iter().map(|k| k.name.as_str()).collect();
    names.sort();
    for w in names.windows(2) {
        if w[0] == w[1] {
            problems.push(format!("kernel {} is defined twice", w[0]));
        }
    }
    MslFile {
        kernels,
        problems,
        threadgroup_vars,
    }
}

/// Built-in input attributes wick may use, with the parameter types MSL allows for them.
fn builtin_types(attr: &str) -> Option<&'static [&'static str]> {
    const GRID: &[&str] = &["uint", "uint2", "uint3", "ushort", "ushort2", "ushort3"];
    const INDEX: &[&str] = &["uint", "ushort"];
    match attr {
        "thread_position_in_grid"
        | "thread_position_in_threadgroup"
        | "threadgroup_position_in_grid"
        | "threadgroups_per_grid"
        | "threads_per_threadgroup"
        | "threads_per_grid"
        | "dispatch_threads_per_threadgroup"
        | "grid_origin"
        | "grid_size" => Some(GRID),
        "thread_index_in_threadgroup"
        | "thread_index_in_simdgroup"
        | "simdgroup_index_in_threadgroup"
        | "threads_per_simdgroup"
        | "simdgroups_per_threadgroup"
        | "thread_execution_width"
        | "thread_index_in_quadgroup"
        | "quadgroup_index_in_threadgroup"
        | "quadgroups_per_threadgroup"
        | "dispatch_simdgroups_per_threadgroup"
        | "dispatch_quadgroups_per_threadgroup" => Some(INDEX),
        _ => None,
    }
}

/// The `Binding` a `[[buffer]]` parameter's declaration implies.
fn declared_binding(p: &Param) -> Result<Binding, String> {
    match (p.address_space(), p.indirection().is_some()) {
        (Some("constant"), true) => Ok(Binding::Uniform),
        (Some("device"), true) if p.pointee_const() => Ok(Binding::Read),
        (Some("device"), true) => Ok(Binding::ReadWrite),
        _ => Err(format!(
            "parameter {} must be a `constant` or `device` pointer or reference",
            p.name()
        )),
    }
}

/// The kernel's buffer parameters by slot, with the problems of its signature that do not
/// depend on a spec: every parameter has one known attribute, built-ins have allowed types,
/// buffers are device/constant pointers or references at distinct literal slots 0..n-1.
fn kernel_shape(k: &KernelFn) -> (Vec<(u32, Param)>, Vec<String>) {
    let mut problems = Vec::new();
    let mut buffers: Vec<(u32, Param)> = Vec::new();
    let at = |p: &Param| format!("line {}: kernel {}: parameter {}", p.line, k.name, p.name());
    for p in &k.params {
        if p.attrs.len() != 1 {
            problems.push(format!(
                "{}: needs exactly one attribute ([[buffer(i)]] or a built-in), has {}",
                at(p),
                p.attrs.len()
            ));
            continue;
        }
        let a = &p.attrs[0];
        if a.name == "buffer" {
            let slot = match a.args.as_slice() {
                [Tok::Num(n)] => n.trim_end_matches(['u', 'U']).parse::<u32>().ok(),
                _ => None,
            };
            let Some(slot) = slot else {
                problems.push(format!("{}: [[buffer]] needs a literal index", at(p)));
                continue;
            };
            if let Err(e) = declared_binding(p) {
                problems.push(format!("line {}: kernel {}: {e}", p.line, k.name));
            }
            buffers.push((slot, p.clone()));
        } else if let Some(types) = builtin_types(&a.name) {
            let ty = p.value_type();
            if p.indirection().is_some() || ty.len() != 1 || !types.contains(&ty[0]) {
                problems.push(format!(
                    "{}: [[{}]] must be one of {types:?}, is {}",
                    at(p),
                    a.name,
                    ty.join(" ")
                ));
            }
        } else {
            problems.push(format!(
                "{}: unknown attribute [[{}]] (threadgroup memory, textures and the like \
                 are not part of wick's passthrough contract)",
                at(p),
                a.name
            ));
        }
    }
    buffers.sort_by_key(|(s, _)| *s);
    for (want, (slot, p)) in buffers.iter().enumerate() {
        if *slot != want as u32 {
            problems.push(format!(
                "line {}: kernel {}: buffer slots must be 0..{} without gaps or repeats, \
                 parameter {} has [[buffer({slot})]]",
                p.line,
                k.name,
                buffers.len(),
                p.name()
            ));
            break;
        }
    }
    for a in &k.attrs {
        if a.name == "max_total_threads_per_threadgroup" {
            match max_threads(a) {
                Some(n) if (1..=1024).contains(&n) => {}
                _ => problems.push(format!(
                    "line {}: kernel {}: max_total_threads_per_threadgroup needs a literal \
                     in 1..=1024",
                    k.line, k.name
                )),
            }
        }
    }
    (buffers, problems)
}

fn max_threads(a: &Attr) -> Option<u32> {
    match a.args.as_slice() {
        [Tok::Num(n)] => n.trim_end_matches(['u', 'U']).parse().ok(),
        _ => None,
    }
}

/// Problems of the entry `entry` of `src` as the native variant of a spec with `bindings`,
/// dispatched with `workgroup_size` threads.
fn check_entry(
    src: &str,
    entry: &str,
    bindings: &[Binding],
    workgroup_size: [u32; 3],
) -> Vec<String> {
    let file = parse_msl(src);
    let mut problems = file.problems.clone();
    let Some(k) = file.kernels.iter().find(|k| k.name == entry) else {
        problems.push(format!("no `kernel void {entry}(...)` found"));
        return problems;
    };
    let (buffers, shape) = kernel_shape(k);
    problems.extend(shape);
    if buffers.len() != bindings.len() {
        problems.push(format!(
            "kernel {entry}: {} [[buffer]] parameters for {} bindings {bindings:?}",
            buffers.len(),
            bindings.len()
        ));
    }
    for (slot, p) in &buffers {
        let (Some(want), Ok(have)) = (bindings.get(*slot as usize), declared_binding(p)) else {
            continue;
        };
        if *want != have {
            problems.push(format!(
                "line {}: kernel {entry}: [[buffer({slot})]] {} is declared as {have:?}, \
                 binding {slot} is {want:?} (Uniform: `constant T&`, Read: `device const T*`, \
                 ReadWrite: `device T*`)",
                p.line,
                p.name()
            ));
        }
    }
    let threads: u32 = workgroup_size.iter().product();
    if !(1..=1024).contains(&threads) {
        problems.push(format!(
            "kernel {entry}: threadgroup size {workgroup_size:?} is not 1..=1024 threads"
        ));
    }
    for a in &k.attrs {
        if a.name == "max_total_threads_per_threadgroup" {
            if let Some(n) = max_threads(a).filter(|n| threads > *n) {
                problems.push(format!(
                    "kernel {entry}: dispatched with {threads} threads a threadgroup but \
                     declares max_total_threads_per_threadgroup({n})"
                ));
            }
        }
    }
    problems
}

/// All problems of a whole file: parse problems and every kernel's spec-independent shape.
fn check_file(src: &str) -> Vec<String> {
    let file = parse_msl(src);
    let mut problems = file.problems.clone();
    for k in &file.kernels {
        problems.extend(kernel_shape(k).1);
    }
    problems
}

#[test]
fn metal_kernels_have_passthrough_compatible_signatures() {
    let files = metal_files();
    assert!(!files.is_empty(), "no metal_overrides/*.metal found");
    let mut failures = Vec::new();
    // The shim's coverage file too: realistic MSL the checks must accept.
    for f in files.iter().chain([&shim_dir().join("subset.metal")]) {
        let src = read(f);
        let parsed = parse_msl(&src);
        if parsed.kernels.is_empty() {
            failures.push(format!("{}: no kernel functions found", f.display()));
        }
        failures.extend(
            check_file(&src)
                .into_iter()
                .map(|p| format!("{}: {p}", f.display())),
        );
    }
    // build.rs embeds every file under its stem; native_for finds it that way.
    for f in &files {
        let stem = f.file_stem().unwrap().to_string_lossy();
        if kernels::msl_source(&stem) != Some(read(f).as_str()) {
            failures.push(format!(
                "{}: not embedded as MSL family {stem}",
                f.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn native_metal_specs_match_their_msl_signatures() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for spec in kernels::native_specs() {
        let Some(n) = spec.native_metal else {
            continue;
        };
        let path = root()
            .join("metal_overrides")
            .join(format!("{}.metal", n.family));
        if !path.exists() {
            failures.push(format!(
                "{}: native Metal family {} has no {}",
                spec.op,
                n.family,
                path.display()
            ));
            continue;
        }
        let src = read(&path);
        failures.extend(
            check_entry(&src, n.entry, &spec.bindings, n.workgroup_size)
                .into_iter()
                .map(|p| format!("{} ({}.metal): {p}", spec.op, n.family)),
        );
        checked += 1;
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("{checked} native Metal specs match their MSL signatures");
}

/// The GEMM entries against `gemm::spec`'s layouts, whether or not the host has wired them as
/// native variants yet (then the test above covers them too).
#[test]
fn gemm_metal_entries_bind_the_gemm_layouts() {
    let src = read(&root().join("metal_overrides").join("gemm.metal"));
    let tiling = GemmTiling {
        wg_m: 16,
        wg_n: 16,
        pad: 1,
    };
    let mut failures = Vec::new();
    for f in [
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::F16,
    ] {
        for bias in [false, true] {
            let spec = gemm::spec(f, bias, tiling);
            let entry = format!("gemm_{}{}", f.name(), if bias { "_bias" } else { "" });
            failures.extend(check_entry(&src, &entry, &spec.bindings, [128, 1, 1]));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A kernel the checks must accept: comments (with decoy signatures), a template helper taking
/// threadgroup pointers, both `const device` spellings, a multi-line signature, attributes.
const GOOD: &str = r#"
#include <metal_stdlib>
using namespace metal;
// kernel void decoy(device float* x [[buffer(3)]]) {}
/* kernel void decoy2(threadgroup float* t [[threadgroup(0)]]) {} */
struct Params { uint n; };
template <typename T, int N>
inline T helper(threadgroup T* tile, device const T* src, uint i) {
    threadgroup T* p = tile + i;
    return *p + src[i];
}
namespace wick {
[[max_total_threads_per_threadgroup(256)]]
kernel void good(
    constant Params& p [[buffer(0)]],   // uniform
    device const float* a [[ buffer(1) ]],
    const device half4* b /* [[buffer(9)]] */ [[buffer(2)]],
    device float* out
        [[buffer(3)]],
    uint3 gid [[thread_position_in_grid]],
    ushort lane [[thread_index_in_simdgroup]]) {
    threadgroup float tile[256];
    threadgroup float* t = tile;
    out[gid.x] = helper<float, 4>(t, a, gid.x) + float(b[0].x) + float(p.n + lane);
}
}
"#;

const GOOD_BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];

#[test]
fn signature_checks_accept_a_good_kernel() {
    let parsed = parse_msl(GOOD);
    let names: Vec<&str> = parsed.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(names, ["good"], "the decoys in comments must not count");
    assert_eq!(check_file(GOOD), Vec::<String>::new());
    assert_eq!(
        check_entry(GOOD, "good", &GOOD_BINDINGS, [256, 1, 1]),
        Vec::<String>::new()
    );
}

#[test]
fn signature_checks_reject_bad_kernels() {
    // (what is wrong, text replaced in GOOD, its replacement, words the report must contain)
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "a gap in the slots",
            "\n        [[buffer(3)]]",
            "\n        [[buffer(4)]]",
            "without gaps",
        ),
        (
            "a repeated slot",
            "\n        [[buffer(3)]]",
            "\n        [[buffer(2)]]",
            "without gaps",
        ),
        (
            "a read-only binding declared writable",
            "device const float* a",
            "device float* a",
            "declared as ReadWrite",
        ),
        (
            "a writable binding declared const",
            "device float* out",
            "device const float* out",
            "declared as Read, binding 3 is ReadWrite",
        ),
        (
            "the uniform in device memory",
            "constant Params& p",
            "device const Params& p",
            "declared as Read, binding 0 is Uniform",
        ),
        (
            "a buffer passed by value",
            "constant Params& p",
            "constant Params p",
            "pointer or reference",
        ),
        (
            "slots swapped against the layout",
            "constant Params& p [[buffer(0)]],   // uniform\n    device const float* a [[ buffer(1) ]],",
            "constant Params& p [[buffer(1)]],\n    device const float* a [[ buffer(0) ]],",
            "binding 0 is Uniform",
        ),
        (
            "an extra buffer",
            "ushort lane [[thread_index_in_simdgroup]]",
            "ushort lane [[thread_index_in_simdgroup]], device float* extra [[buffer(4)]]",
            "5 [[buffer]] parameters for 4 bindings",
        ),
        (
            "a missing buffer",
            "    device float* out\n        [[buffer(3)]],\n",
            "",
            "3 [[buffer]] parameters for 4 bindings",
        ),
        (
            "threadgroup memory as a parameter",
            "ushort lane [[thread_index_in_simdgroup]]",
            "ushort lane [[thread_index_in_simdgroup]], threadgroup float* t [[threadgroup(0)]]",
            "takes threadgroup memory as a parameter",
        ),
        (
            "a threadgroup array at file scope",
            "struct Params { uint n; };",
            "struct Params { uint n; };\nthreadgroup float shared_tile[64];",
            "outside a kernel function",
        ),
        (
            "a threadgroup array in a helper",
            "threadgroup T* p = tile + i;",
            "threadgroup T scratch[32];\n    threadgroup T* p = tile + i;",
            "outside a kernel function",
        ),
        (
            "max_total_threads_per_threadgroup below the dispatched size",
            "max_total_threads_per_threadgroup(256)",
            "max_total_threads_per_threadgroup(64)",
            "declares max_total_threads_per_threadgroup(64)",
        ),
        (
            "a built-in of a type MSL rejects",
            "ushort lane [[thread_index_in_simdgroup]]",
            "int lane [[thread_index_in_simdgroup]]",
            "[[thread_index_in_simdgroup]] must be one of",
        ),
        (
            "a misspelt built-in",
            "[[thread_index_in_simdgroup]]",
            "[[thread_index_in_simdgrup]]",
            "unknown attribute [[thread_index_in_simdgrup]]",
        ),
        (
            "a parameter without an attribute",
            "ushort lane [[thread_index_in_simdgroup]]",
            "ushort lane",
            "needs exactly one attribute",
        ),
        (
            "a slot that is not a literal",
            "\n        [[buffer(3)]]",
            "\n        [[buffer(OUT_SLOT)]]",
            "needs a literal index",
        ),
        (
            "an entry written through a template instantiation",
            "namespace wick {",
            "template [[host_name(\"x\")]] kernel decltype(helper<float, 1>) helper<float, 1>;\nnamespace wick {",
            "cannot read",
        ),
        (
            "a renamed entry",
            "kernel void good(",
            "kernel void renamed(",
            "no `kernel void good(...)` found",
        ),
    ];
    for &(what, from, to, expect) in cases {
        assert!(GOOD.contains(from), "{what}: {from:?} is not in GOOD");
        let bad = GOOD.replacen(from, to, 1);
        let problems = check_entry(&bad, "good", &GOOD_BINDINGS, [256, 1, 1]);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: expected a problem containing {expect:?}, got {problems:#?}"
        );
    }
}

#[test]
fn tokenizer_skips_comments_strings_and_preprocessor_lines() {
    let t = tokenize(
        "#define X(a) \\\n  kernel void no()\nint a = 1; // kernel\n/* kernel\n */ \"kernel\" 1e-5f b",
    );
    let toks: Vec<Tok> = t.iter().map(|x| x.tok.clone()).collect();
    assert_eq!(
        toks,
        [
            Tok::Ident("int".into()),
            Tok::Ident("a".into()),
            Tok::Punct('='),
            Tok::Num("1".into()),
            Tok::Punct(';'),
            Tok::Lit,
            Tok::Num("1e-5f".into()),
            Tok::Ident("b".into()),
        ]
    );
    assert_eq!(
        t.last().unwrap().line,
        5,
        "line numbers count continued and commented lines"
    );
}

// ---------------------------------------------------------------------------------------------
// 4. Host emulation: running MSL kernels on the CPU (tests/metal_shim/metal_exec.h)
// ---------------------------------------------------------------------------------------------

/// The C++ expression (a uint3) of a built-in input, from the driver's `grid`, `wg` (sizes),
/// `g` (threadgroup position), `l` (position in it) and `t` (index in it).
fn builtin_expr(attr: &str) -> Option<&'static str> {
    Some(match attr {
        "thread_position_in_grid" => "g * wg + l",
        "thread_position_in_threadgroup" => "l",
        "threadgroup_position_in_grid" => "g",
        "threadgroups_per_grid" => "grid",
        "threads_per_threadgroup" => "wg",
        "threads_per_grid" => "grid * wg",
        "thread_index_in_threadgroup" => "uint3(t, 0u, 0u)",
        "thread_index_in_simdgroup" => "uint3(t % 32u, 0u, 0u)",
        "simdgroup_index_in_threadgroup" => "uint3(t / 32u, 0u, 0u)",
        "threads_per_simdgroup" | "thread_execution_width" => "uint3(32u, 0u, 0u)",
        "simdgroups_per_threadgroup" => "uint3((wg.x * wg.y * wg.z + 31u) / 32u, 0u, 0u)",
        _ => return None,
    })
}

fn tok_text(t: &[Tok]) -> String {
    t.iter()
        .map(|x| match x {
            Tok::Ident(s) | Tok::Num(s) => s.clone(),
            Tok::Punct(c) => c.to_string(),
            Tok::Lit => "\"\"".into(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A C++ program that runs the kernels of `src` on the host: `run ENTRY GX GY GZ WX WY WZ
/// FILE...` reads buffer i from FILE i, runs the grid, and writes every buffer back.
fn exec_program(src: &str) -> Result<(String, String), String> {
    let file = parse_msl(src);
    if !file.problems.is_empty() {
        return Err(file.problems.join("\n"));
    }
    // Kernel-scope threadgroup arrays become statics shared by the threadgroup's threads.
    let mut kernel_src = String::new();
    for (i, ch) in src.chars().enumerate() {
        if file.threadgroup_vars.contains(&i) {
            kernel_src.push_str("static /*threadgroup*/ ");
        }
        kernel_src.push(ch);
    }
    let mut driver = String::from(
        "#include <stdio.h>\n#include <stdlib.h>\n#include <string.h>\n#include <pthread.h>\n\
         #include <metal_stdlib>\n#include \"metal_exec.h\"\n#include \"kernel.metal\"\n\
         static pthread_barrier_t group_barrier;\n\
         void wick_exec::barrier() { pthread_barrier_wait(&group_barrier); }\n\
         typedef void (*entry_fn)(void**, uint3, uint3, uint3, uint);\n",
    );
    let mut table = String::new();
    for k in &file.kernels {
        let mut args = Vec::new();
        for p in &k.params {
            let [a] = p.attrs.as_slice() else {
                return Err(format!("kernel {}: parameter {}", k.name, p.name()));
            };
            let ty = &p.decl[..p.decl.len() - 1];
            if a.name == "buffer" {
                let slot = tok_text(&a.args);
                if ty.last() == Some(&Tok::Punct('&')) {
                    let ptr = tok_text(&ty[..ty.len() - 1]);
                    args.push(format!("*({ptr} *)b[{slot}]"));
                } else {
                    args.push(format!("({})b[{slot}]", tok_text(ty)));
                }
            } else {
                let e = builtin_expr(&a.name).ok_or_else(|| {
                    format!("kernel {}: the emulation lacks [[{}]]", k.name, a.name)
                })?;
                args.push(format!("wick_exec::builtin<{}>({e})", tok_text(ty)));
            }
        }
        driver.push_str(&format!(
            "static void call_{0}(void** b, uint3 grid, uint3 wg, uint3 g, uint t) {{\n\
             (void)grid;\n uint3 l = uint3(t % wg.x, (t / wg.x) % wg.y, t / (wg.x * wg.y));\n\
             (void)l;\n {0}({1});\n}}\n",
            k.name,
            args.join(", ")
        ));
        table.push_str(&format!(
            "    if (!strcmp(argv[1], \"{0}\")) f = call_{0};\n",
            k.name
        ));
    }
    driver.push_str(&format!(
        r#"struct Job {{ entry_fn f; void** b; uint3 grid, wg, g; uint t; }};
static void* run_thread(void* p) {{
    Job* j = (Job*)p;
    j->f(j->b, j->grid, j->wg, j->g, j->t);
    return 0;
}}
int main(int argc, char** argv) {{
    if (argc < 8) return 2;
    entry_fn f = 0;
{table}    if (!f) {{ fprintf(stderr, "no kernel %s\n", argv[1]); return 2; }}
    uint3 grid = uint3(uint(atoi(argv[2])), uint(atoi(argv[3])), uint(atoi(argv[4])));
    uint3 wg = uint3(uint(atoi(argv[5])), uint(atoi(argv[6])), uint(atoi(argv[7])));
    int nb = argc - 8;
    void* b[64];
    long size[64];
    for (int i = 0; i < nb; i++) {{
        FILE* fp = fopen(argv[8 + i], "rb");
        if (!fp) return 3;
        fseek(fp, 0, SEEK_END);
        size[i] = ftell(fp);
        fseek(fp, 0, SEEK_SET);
        b[i] = aligned_alloc(64, (size_t)(size[i] / 64 + 1) * 64);
        if (fread(b[i], 1, (size_t)size[i], fp) != (size_t)size[i]) return 3;
        fclose(fp);
    }}
    uint n = wg.x * wg.y * wg.z;
    pthread_t* th = (pthread_t*)malloc(n * sizeof(pthread_t));
    Job* jobs = (Job*)malloc(n * sizeof(Job));
    for (uint z = 0; z < grid.z; z++)
        for (uint y = 0; y < grid.y; y++)
            for (uint x = 0; x < grid.x; x++) {{
                pthread_barrier_init(&group_barrier, 0, n);
                for (uint t = 0; t < n; t++) {{
                    jobs[t].f = f; jobs[t].b = b; jobs[t].grid = grid; jobs[t].wg = wg;
                    jobs[t].g = uint3(x, y, z); jobs[t].t = t;
                    if (pthread_create(&th[t], 0, run_thread, &jobs[t])) return 4;
                }}
                for (uint t = 0; t < n; t++) pthread_join(th[t], 0);
                pthread_barrier_destroy(&group_barrier);
            }}
    for (int i = 0; i < nb; i++) {{
        FILE* fp = fopen(argv[8 + i], "wb");
        if (!fp || fwrite(b[i], 1, (size_t)size[i], fp) != (size_t)size[i]) return 3;
        fclose(fp);
    }}
    return 0;
}}
"#
    ));
    Ok((kernel_src, driver))
}

/// The host build of a .metal file's kernels.
struct Emulator {
    dir: tempfile::TempDir,
}

impl Emulator {
    fn build(clang: &str, src: &str) -> Emulator {
        let (kernel_src, driver) = exec_program(src).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("kernel.metal"), kernel_src).unwrap();
        std::fs::write(dir.path().join("driver.cpp"), driver).unwrap();
        let out = Command::new(clang)
            .args([
                "-std=c++17",
                "-O2",
                "-DWICK_METAL_EXEC",
                "-Wno-unknown-attributes",
            ])
            .arg("-I")
            .arg(shim_dir())
            .arg("-I")
            .arg(dir.path())
            .arg(dir.path().join("driver.cpp"))
            .arg("-o")
            .arg(dir.path().join("run"))
            .args(["-lpthread", "-lm"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "host build of the kernels failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Emulator { dir }
    }

    /// Runs `entry` over `grid` threadgroups of `wg` threads on `buffers` (slot order), in
    /// place.
    fn run(&self, entry: &str, grid: [u32; 3], wg: [u32; 3], buffers: &mut [Vec<u8>]) {
        let mut cmd = Command::new(self.dir.path().join("run"));
        cmd.arg(entry);
        cmd.args(grid.iter().chain(&wg).map(|v| v.to_string()));
        for (i, b) in buffers.iter().enumerate() {
            let p = self.dir.path().join(format!("buf{i}.bin"));
            std::fs::write(&p, b).unwrap();
            cmd.arg(p);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{entry}: {:?}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        for (i, b) in buffers.iter_mut().enumerate() {
            *b = std::fs::read(self.dir.path().join(format!("buf{i}.bin"))).unwrap();
        }
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u32_bytes(v: &[u32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Rounds to binary16 and back: what the GEMM's half operands hold.
fn to_half(v: f32) -> f64 {
    half::f16::from_f32(v).to_f64()
}

/// gemm.metal on the host emulation against a CPU reference built from the same half-rounded
/// operands, so that what is left is f32 summation order (|d| <= 1e-4 max|want|: a wrong
/// block, row, tile or epilogue is off by order one). Also reports the error against the f32
/// reference, which the GPU test of the native variant must allow.
#[test]
fn gemm_metal_matches_the_reference_in_host_emulation() {
    use rand::Rng;
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let src = read(&root().join("metal_overrides").join("gemm.metal"));
    let emu = Emulator::build(&clang, &src);
    let mut rng = rand::rng();
    // (m, n, k, out_stride - n - out_offset, out_offset): edges in every direction.
    let shapes = [(7, 100, 96, 0, 0), (70, 130, 64, 3, 5), (64, 64, 32, 0, 0)];
    let mut worst_f32 = 0.0f64;
    for f in [
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q8_0,
        WeightFormat::F16,
    ] {
        for &(m, n, kd, extra, off) in &shapes {
            // f16 also with a k that is not a multiple of the 32-wide k step.
            let kd = if f == WeightFormat::F16 && m == 7 {
                36
            } else {
                kd
            };
            for (bias, accumulate) in [(false, false), (true, true)] {
                let vals: Vec<f32> = (0..n * kd).map(|_| rng.random_range(-1.0..1.0)).collect();
                let packed = wick::quant::quantize_and_pack(f, &vals, n, kd).unwrap();
                let w = wick::quant::unpack(&packed);
                let x: Vec<f32> = (0..m * kd).map(|_| rng.random_range(-2.0..2.0)).collect();
                let bias_v: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
                let stride = n + off + extra;
                // A guard of 64 more rows after the output: stray writes past row m show.
                let prior: Vec<f32> = (0..(m + 64) * stride)
                    .map(|_| rng.random_range(-1.0..1.0))
                    .collect();
                let params = [
                    m as u32,
                    n as u32,
                    kd as u32,
                    stride as u32,
                    off as u32,
                    accumulate as u32,
                    0,
                    0,
                ];
                let mut bufs = vec![
                    u32_bytes(&params),
                    u32_bytes(&packed.qs),
                    u32_bytes(&packed.scales),
                    f32_bytes(&x),
                ];
                if bias {
                    bufs.push(f32_bytes(&bias_v));
                }
                bufs.push(f32_bytes(&prior));
                let entry = format!("gemm_{}{}", f.name(), if bias { "_bias" } else { "" });
                let grid = [(n as u32).div_ceil(64), (m as u32).div_ceil(64), 1];
                emu.run(&entry, grid, [128, 1, 1], &mut bufs);
                let got: Vec<f32> = bufs
                    .last()
                    .unwrap()
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect();

                let mut want = prior.iter().map(|&v| v as f64).collect::<Vec<f64>>();
                let mut want_f32 = want.clone();
                for r in 0..m {
                    for j in 0..n {
                        let (mut s, mut s32) = (0.0f64, 0.0f64);
                        for q in 0..kd {
                            let (xv, wv) = (x[r * kd + q], w[j * kd + q]);
                            s += to_half(xv) * to_half(wv);
                            s32 += xv as f64 * wv as f64;
                        }
                        let b = if bias { bias_v[j] as f64 } else { 0.0 };
                        let o = r * stride + off + j;
                        let base = if accumulate { want[o] } else { 0.0 };
                        want[o] = base + s + b;
                        want_f32[o] = base + s32 + b;
                    }
                }
                let max_w = want.iter().fold(0.0f64, |a, v| a.max(v.abs()));
                let (mut worst, mut at) = (0.0f64, 0);
                for (i, (&g, &wv)) in got.iter().zip(&want).enumerate() {
                    let d = (g as f64 - wv).abs();
                    if d.is_nan() || d > worst {
                        worst = if d.is_nan() { f64::INFINITY } else { d };
                        at = i;
                    }
                    worst_f32 = worst_f32.max((g as f64 - want_f32[i]).abs() / max_w);
                }
                assert!(
                    worst <= 1e-4 * max_w,
                    "{entry} m={m} n={n} k={kd} stride={stride} offset={off} acc={accumulate}: \
                     out[{at}] = {} want {} (max |want| {max_w})",
                    got[at],
                    want[at]
                );
            }
        }
    }
    eprintln!(
        "gemm.metal (host emulation): max |d| / max |want| against the f32 reference = \
         {worst_f32:.2e}"
    );
}
