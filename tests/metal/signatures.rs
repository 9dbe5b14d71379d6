//! Binding slots and shape rules of passthrough MSL (checks 2 and 3 of the crate docs): every
//! native Metal entry against its spec's layout, and the checks against hand-written bad
//! kernels.

use wick::kernels::gemm::{self, GemmTiling};
use wick::kernels::{self, Binding};

use std::collections::{BTreeMap, BTreeSet};

use crate::lexer::{tok_text, Tok};
use crate::parser::{parse_msl, Attr, KernelFn, Param};
use crate::sources::{clang_or_skip, metal_files, read, root, shim_dir};
use crate::syntax::clang_preprocess;

/// Built-in input attributes wick may use, with the parameter types MSL allows for them.
pub(crate) fn builtin_types(attr: &str) -> Option<&'static [&'static str]> {
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
pub(crate) fn declared_binding(p: &Param) -> Result<Binding, String> {
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
pub(crate) fn kernel_shape(k: &KernelFn) -> (Vec<(u32, Param)>, Vec<String>) {
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

pub(crate) fn max_threads(a: &Attr) -> Option<u32> {
    match a.args.as_slice() {
        [Tok::Num(n)] => n.trim_end_matches(['u', 'U']).parse().ok(),
        _ => None,
    }
}

/// Problems of the entry `entry` of `src` as the native variant of a spec with `bindings`,
/// dispatched with `workgroup_size` threads.
pub(crate) fn check_entry(
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
pub(crate) fn check_file(src: &str) -> Vec<String> {
    let file = parse_msl(src);
    let mut problems = file.problems.clone();
    for k in &file.kernels {
        problems.extend(kernel_shape(k).1);
    }
    problems
}

#[test]
pub(crate) fn metal_kernels_have_passthrough_compatible_signatures() {
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
pub(crate) fn native_metal_specs_match_their_msl_signatures() {
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

/// The entries each MSL file defines, after its macros are expanded, are exactly the Metal
/// entries of the native specs of its family: none missing, none the host never dispatches (so
/// none goes unchecked against a layout).
#[test]
pub(crate) fn metal_entries_are_the_native_spec_entries() {
    let mut by_family: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for spec in kernels::native_specs() {
        if let Some(n) = spec.native_metal {
            by_family
                .entry(n.family.to_string())
                .or_default()
                .insert(n.entry.to_string());
        }
    }
    let mut failures = Vec::new();
    for f in metal_files() {
        let family = f.file_stem().unwrap().to_string_lossy().into_owned();
        let defined: BTreeSet<String> = parse_msl(&read(&f))
            .kernels
            .into_iter()
            .map(|k| k.name)
            .collect();
        let specified = by_family.remove(&family).unwrap_or_default();
        if defined.is_empty() || defined != specified {
            failures.push(format!(
                "{}: defines {defined:?}, the native specs of family {family} name {specified:?}",
                f.display()
            ));
        }
    }
    for (family, entries) in by_family {
        failures.push(format!(
            "native Metal family {family} ({entries:?}) has no metal_overrides/{family}.metal"
        ));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A kernel's signature as text, without line numbers: its name, function attributes, and
/// each parameter's declaration and attributes.
pub(crate) fn signature_text(k: &KernelFn) -> String {
    let attrs = |a: &[Attr]| {
        a.iter()
            .map(|a| format!("[[{}({})]]", a.name, tok_text(&a.args)))
            .collect::<String>()
    };
    let params: Vec<String> = k
        .params
        .iter()
        .map(|p| format!("{} {}", tok_text(&p.decl), attrs(&p.attrs)))
        .collect();
    format!(
        "{}kernel {}({})",
        attrs(&k.attrs),
        k.name,
        params.join(", ")
    )
}

/// The signature checks read entry points generated by macros as the compiler does: every
/// kernel signature this crate's preprocessor expands from each MSL file (and from
/// GOOD_MACROS) is the one clang's preprocessor expands.
#[test]
pub(crate) fn macro_generated_entries_expand_as_clang_expands_them() {
    let Some(clang) = clang_or_skip() else {
        return;
    };
    let mut sources: Vec<(String, String)> = metal_files()
        .iter()
        .map(|f| (f.display().to_string(), read(f)))
        .collect();
    sources.push(("GOOD_MACROS".into(), GOOD_MACROS.into()));
    let mut failures = Vec::new();
    for (name, src) in &sources {
        let ours: Vec<String> = parse_msl(src).kernels.iter().map(signature_text).collect();
        let expanded = match clang_preprocess(&clang, src) {
            Ok(e) => e,
            Err(e) => {
                failures.push(format!("{name}: clang -E failed:\n{e}"));
                continue;
            }
        };
        let theirs: Vec<String> = parse_msl(&expanded)
            .kernels
            .iter()
            .map(signature_text)
            .collect();
        if ours.is_empty() || ours != theirs {
            failures.push(format!(
                "{name}: this check reads\n  {}\nclang -E gives\n  {}",
                ours.join("\n  "),
                theirs.join("\n  ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The GEMM entries against `gemm::spec`'s layouts, whether or not the host has wired them as
/// native variants yet (then the test above covers them too).
#[test]
pub(crate) fn gemm_metal_entries_bind_the_gemm_layouts() {
    let src = read(&root().join("metal_overrides").join("gemm.metal"));
    let tiling = GemmTiling {
        wg_m: 16,
        wg_n: 16,
        pad: 1,
    };
    let mut failures = Vec::new();
    for f in gemm::METAL_NATIVE_FORMATS {
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
pub(crate) const GOOD: &str = r#"
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

pub(crate) const GOOD_BINDINGS: [Binding; 4] = [
    Binding::Uniform,
    Binding::Read,
    Binding::Read,
    Binding::ReadWrite,
];

#[test]
pub(crate) fn signature_checks_accept_a_good_kernel() {
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
pub(crate) fn signature_checks_reject_bad_kernels() {
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

/// Entry points generated by macros, as kernel files may write them.
pub(crate) const GOOD_MACROS: &str = r#"
#include <metal_stdlib>
using namespace metal;
struct Params { uint n; };
#define COMMON_ARGS \
    constant Params& p [[buffer(0)]], device const float* a [[buffer(1)]]
#define LANE_ARGS uint3 gid [[thread_position_in_grid]]
#ifdef NOT_DEFINED
kernel void hidden(device float* z [[buffer(7)]]) {}
#else
#define OUT_ARG(NAME) device float* NAME [[buffer(2)]]
#endif
// An optional last buffer: the pasted name is itself a macro (as in gemv.metal).
#define EXTRA_false(SLOT)
#define EXTRA_true(SLOT) , device const float* extra [[buffer(SLOT)]]
#define MAKE_KERNEL(NAME, SCALE, EXTRA)                                         \
    kernel void scale_##NAME(COMMON_ARGS, OUT_ARG(out) EXTRA_##EXTRA(3),       \
                             LANE_ARGS) {                                       \
        threadgroup float tile[32];                                             \
        tile[0] = a[gid.x];                                                     \
        out[gid.x] = tile[0] * SCALE + float(p.n);                              \
    }
// Two entries per use, the second named by pasting twice.
#define MAKE_PAIR(NAME, SCALE)                                                  \
    MAKE_KERNEL(NAME, SCALE, false)                                             \
    MAKE_KERNEL(NAME##_extra, SCALE, true)
MAKE_PAIR(one, 1.0f)
MAKE_PAIR(two, 2.0f)
"#;

#[test]
pub(crate) fn signature_checks_read_macro_generated_kernels() {
    let bindings = [Binding::Uniform, Binding::Read, Binding::ReadWrite];
    let extra_bindings = [
        Binding::Uniform,
        Binding::Read,
        Binding::ReadWrite,
        Binding::Read,
    ];
    let parsed = parse_msl(GOOD_MACROS);
    assert_eq!(parsed.problems, Vec::<String>::new());
    let names: Vec<&str> = parsed.kernels.iter().map(|k| k.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "scale_one",
            "scale_one_extra",
            "scale_two",
            "scale_two_extra"
        ]
    );
    for k in ["scale_one", "scale_two"] {
        assert_eq!(
            check_entry(GOOD_MACROS, k, &bindings, [64, 1, 1]),
            Vec::<String>::new()
        );
        assert_eq!(
            check_entry(
                GOOD_MACROS,
                &format!("{k}_extra"),
                &extra_bindings,
                [64, 1, 1]
            ),
            Vec::<String>::new()
        );
    }
    // (what is wrong, the entry checked, text replaced, its replacement, words the report
    // must contain)
    let cases: &[(&str, &str, &str, &str, &str)] = &[
        (
            "a wrong slot inside a macro",
            "scale_two",
            "NAME [[buffer(2)]]",
            "NAME [[buffer(3)]]",
            "without gaps",
        ),
        (
            "a read-only binding made writable by a macro",
            "scale_two",
            "device const float* a",
            "device float* a",
            "declared as ReadWrite",
        ),
        (
            "a threadgroup parameter from a macro",
            "scale_two",
            "#define LANE_ARGS uint3",
            "#define LANE_ARGS threadgroup float* t [[threadgroup(0)]], uint3",
            "takes threadgroup memory as a parameter",
        ),
        (
            "an #if",
            "scale_two",
            "#ifdef NOT_DEFINED",
            "#if 0",
            "not understood",
        ),
        (
            "a wrong slot passed to a pasted macro name",
            "scale_two_extra",
            "EXTRA_##EXTRA(3)",
            "EXTRA_##EXTRA(4)",
            "without gaps",
        ),
        (
            "an optional buffer declared writable",
            "scale_two_extra",
            "device const float* extra",
            "device float* extra",
            "declared as ReadWrite",
        ),
        (
            "the optional buffer left out",
            "scale_two_extra",
            "MAKE_KERNEL(NAME##_extra, SCALE, true)",
            "MAKE_KERNEL(NAME##_extra, SCALE, false)",
            "3 [[buffer]] parameters for 4 bindings",
        ),
    ];
    for &(what, entry, from, to, expect) in cases {
        assert!(
            GOOD_MACROS.contains(from),
            "{what}: {from:?} is not in the source"
        );
        let bad = GOOD_MACROS.replacen(from, to, 1);
        let b: &[Binding] = if entry.ends_with("_extra") {
            &extra_bindings
        } else {
            &bindings
        };
        let problems = check_entry(&bad, entry, b, [64, 1, 1]);
        assert!(
            problems.iter().any(|p| p.contains(expect)),
            "{what}: expected a problem containing {expect:?}, got {problems:#?}"
        );
    }
}
