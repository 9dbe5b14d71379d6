//! Every WGSL uniform (and immediate) struct against the Rust `#[repr(C)]` struct the host
//! writes into it, by reflection: each WGSL variant the registry builds is preprocessed and
//! parsed with naga, and for every uniform global its struct's size and each member's offset,
//! size and scalar type are compared with the Rust struct's (`offset_of!`, `size_of_val`).
//! Members named `_...` are padding; a Rust field may sit on WGSL padding (a field only the
//! native kernels read), but must still match its size and place. The Rust fields of each
//! struct are listed by hand below, so the list is checked to cover the struct exactly, and
//! every listed struct must be met in some kernel.

use std::collections::{BTreeMap, BTreeSet};

use naga::{AddressSpace, Scalar, ScalarKind, TypeInner};
use wick::kernels::{
    argmax, attention, embedding, gemm, gemv, gemv_batch, gemv_dot, kv_cache, native_specs,
    pipeline_specs, preprocess, rmsnorm, rope, sample, softmax, swiglu, StepParams,
};
use wick::tools::bandwidth;

#[derive(Debug, Clone, PartialEq)]
struct Field {
    name: String,
    offset: usize,
    size: usize,
    /// `u32`, `f32`, `i32`, or a description of anything else (`[u32; 2]`, a naga type).
    ty: String,
}

#[derive(Debug, Clone)]
struct Layout {
    what: String,
    size: usize,
    fields: Vec<Field>,
}

fn type_name_of<F>(_: &F) -> &'static str {
    std::any::type_name::<F>()
}

/// The layout of Rust struct `$t`, whose fields are listed in declaration order.
macro_rules! host {
    ($t:ty { $($f:ident),* $(,)? }) => {{
        let z: $t = bytemuck::Zeroable::zeroed();
        Layout {
            what: stringify!($t).replace(' ', ""),
            size: std::mem::size_of::<$t>(),
            fields: vec![$(Field {
                name: stringify!($f).into(),
                offset: std::mem::offset_of!($t, $f),
                size: std::mem::size_of_val(&z.$f),
                ty: type_name_of(&z.$f).into(),
            }),*],
        }
    }};
}

/// The Rust mirror of each WGSL uniform struct, by (WGSL family, struct name).
fn host_layouts() -> BTreeMap<(&'static str, &'static str), Layout> {
    let step = || {
        host!(StepParams {
            pos,
            n_tokens,
            kv_len,
            _pad
        })
    };
    let attention = || {
        host!(attention::AttentionParams {
            n_heads,
            n_splits,
            capacity,
            max_tokens,
            scale_log2e,
            flags,
            group,
            _pad,
        })
    };
    let gemv = || {
        host!(gemv::GemvParams {
            n,
            upr,
            out_offset,
            eps_bits,
            k4,
            nk,
            nv,
            flags,
            lanes_per_row,
            _pad,
        })
    };
    // The q8_0-cache kernels share the f16 ones' parameter structs.
    let kv_write = || {
        host!(kv_cache::KvWriteParams {
            n_kv_heads,
            half_dim,
            capacity,
            max_tokens,
        })
    };
    let rope_kv = || {
        host!(rope::RopeKvParams {
            n_heads,
            n_kv_heads,
            head_dim,
            half_split,
            capacity,
            max_tokens,
            _pad,
        })
    };
    BTreeMap::from([
        (
            ("argmax", "Params"),
            host!(argmax::ArgmaxParams {
                n,
                n_partials,
                chunk,
                out_index
            }),
        ),
        (("attention_decode", "Params"), attention()),
        (("attention_decode", "Step"), step()),
        (("attention_prefill", "Params"), attention()),
        (("attention_prefill", "Step"), step()),
        (("attention_prefill_coop", "Params"), attention()),
        (("attention_prefill_coop", "Step"), step()),
        (
            ("embedding", "Params"),
            host!(embedding::EmbeddingParams {
                n_rows,
                k,
                row_offset,
                ids_offset,
                n_tokens,
                words_per_row,
                blocks_per_row,
                _pad,
            }),
        ),
        (
            ("gemm", "Params"),
            host!(gemm::GemmParams {
                m,
                n,
                k,
                out_stride,
                out_offset,
                accumulate,
                _pad,
            }),
        ),
        (
            ("gemm_input", "Params"),
            host!(gemm::GemmInputParams { n4, _pad }),
        ),
        (("gemv", "Params"), gemv()),
        (("gemv_dot", "Params"), gemv()),
        (
            ("gemv_batch", "Params"),
            host!(gemv_batch::GemvBatchParams {
                n,
                upr,
                out_offset,
                out_stride,
                k4,
                _pad,
            }),
        ),
        (
            ("act_q8", "Params"),
            host!(gemv_dot::ActParams { k, eps_bits, _pad }),
        ),
        (("kv_cache", "Params"), kv_write()),
        (("kv_cache", "Step"), step()),
        (("kv_cache_q8", "Params"), kv_write()),
        (("kv_cache_q8", "Step"), step()),
        (
            ("rmsnorm", "Params"),
            host!(rmsnorm::RmsNormParams { n, rows, eps, _pad }),
        ),
        (
            ("rope", "Params"),
            host!(rope::RopeParams {
                n_heads,
                head_dim,
                half_rot,
                half_split,
                max_tokens,
                _pad,
            }),
        ),
        (("rope", "Step"), step()),
        (("rope_kv", "Params"), rope_kv()),
        (("rope_kv", "Step"), step()),
        (("rope_kv_q8", "Params"), rope_kv()),
        (("rope_kv_q8", "Step"), step()),
        (
            ("sample", "Level"),
            host!(sample::Level { n, n_groups, k, n0 }),
        ),
        (
            ("sample", "Step"),
            host!(sample::SampleStep {
                temperature,
                top_k,
                top_p,
                min_p,
                penalty,
                hist_start,
                hist_end,
                hist_out,
                u,
                full_norm,
                vocab,
                _pad,
            }),
        ),
        (
            ("softmax", "Params"),
            host!(softmax::SoftmaxParams { n, rows, _pad }),
        ),
        (
            ("swiglu", "Params"),
            host!(swiglu::SwigluParams {
                n,
                rows,
                total,
                _pad
            }),
        ),
        (
            ("bandwidth", "Params"),
            host!(bandwidth::Params { n, magic, _pad }),
        ),
    ])
}

fn wgsl_type(inner: &TypeInner) -> String {
    match inner {
        TypeInner::Scalar(Scalar { kind, width: 4 }) => match kind {
            ScalarKind::Uint => "u32".into(),
            ScalarKind::Sint => "i32".into(),
            ScalarKind::Float => "f32".into(),
            k => format!("{k:?}"),
        },
        other => format!("{other:?}"),
    }
}

/// The layout naga gives struct type `ty` of `module`.
fn wgsl_layout(module: &naga::Module, ty: naga::Handle<naga::Type>, what: String) -> Layout {
    let TypeInner::Struct { members, span } = &module.types[ty].inner else {
        panic!("{what}: a uniform that is not a struct");
    };
    Layout {
        what,
        size: *span as usize,
        fields: members
            .iter()
            .map(|m| {
                let inner = &module.types[m.ty].inner;
                Field {
                    name: m.name.clone().unwrap_or_default(),
                    offset: m.offset as usize,
                    size: inner.size(module.to_ctx()) as usize,
                    ty: wgsl_type(inner),
                }
            })
            .collect(),
    }
}

/// What differs between a WGSL struct and its Rust mirror (empty: they agree).
fn compare(wgsl: &Layout, host: &Layout) -> Vec<String> {
    let mut problems = Vec::new();
    let (w, h) = (&wgsl.what, &host.what);
    if wgsl.size != host.size {
        problems.push(format!(
            "{w} is {} bytes, {h} {} bytes",
            wgsl.size, host.size
        ));
    }
    // The hand-written field list must cover the Rust struct exactly (a field left out
    // leaves a gap; repr(C) structs of 4-byte fields have no padding of their own).
    let mut by_offset: Vec<&Field> = host.fields.iter().collect();
    by_offset.sort_by_key(|f| f.offset);
    let mut at = 0;
    for f in by_offset {
        if f.offset != at {
            problems.push(format!(
                "{h}: the listed fields leave bytes {at}..{} uncovered",
                f.offset
            ));
        }
        at = f.offset + f.size;
    }
    if at != host.size {
        problems.push(format!(
            "{h}: the listed fields end at byte {at} of {}",
            host.size
        ));
    }
    for m in wgsl.fields.iter().filter(|m| !m.name.starts_with('_')) {
        match host.fields.iter().find(|f| f.name == m.name) {
            None => problems.push(format!("{w}.{} has no field in {h}", m.name)),
            Some(f) if f != m => problems.push(format!(
                "{w}.{} (offset {}, {} bytes, {}) differs from {h}.{} (offset {}, {} bytes, {})",
                m.name, m.offset, m.size, m.ty, f.name, f.offset, f.size, f.ty
            )),
            Some(_) => {}
        }
    }
    for f in host.fields.iter().filter(|f| !f.name.starts_with('_')) {
        let here = wgsl.fields.iter().find(|m| m.offset == f.offset);
        if here.is_none_or(|m| m.size != f.size) {
            problems.push(format!(
                "{h}.{} (offset {}, {} bytes) has no WGSL member of its size there",
                f.name, f.offset, f.size
            ));
        }
    }
    problems
}

/// Every WGSL variant the registry builds: (family, defines). Uniform structs do not depend
/// on the device's defines, but the variants are taken with and without them all the same.
fn variants() -> BTreeSet<(&'static str, Vec<&'static str>)> {
    let mut specs: Vec<(&'static str, Vec<&'static str>)> = pipeline_specs()
        .into_iter()
        .map(|s| (s.family, s.defines))
        .collect();
    specs.push((bandwidth::spec().family, bandwidth::spec().defines));
    // Native kernels written in WGSL (the cooperative-matrix GEMM).
    for s in native_specs() {
        if let Some(n) = s.native_vulkan.filter(|n| !n.wgsl_defines.is_empty()) {
            let mut d = s.defines.clone();
            d.extend(n.wgsl_defines);
            specs.push((n.family, d));
        }
    }
    let mut out = BTreeSet::new();
    for (family, defines) in specs {
        for device in [&[][..], &["SUBGROUP", "F16"]] {
            let mut d = defines.clone();
            d.extend(device);
            d.sort();
            d.dedup();
            out.insert((family, d));
        }
    }
    out
}

#[test]
fn every_uniform_struct_matches_its_rust_mirror() {
    let hosts = host_layouts();
    let mut met = BTreeSet::new();
    let mut problems = BTreeSet::new();
    let mut checked = 0;
    for (family, defines) in variants() {
        let what = format!("{family} {defines:?}");
        let src = preprocess(family, &defines).unwrap_or_else(|e| panic!("{what}: {e}"));
        let module = naga::front::wgsl::parse_str(&src)
            .unwrap_or_else(|e| panic!("{what}: {}", e.emit_to_string(&src)));
        for (_, g) in module.global_variables.iter() {
            if !matches!(g.space, AddressSpace::Uniform | AddressSpace::Immediate) {
                continue;
            }
            let name = module.types[g.ty].name.clone().unwrap_or_default();
            let key = hosts
                .keys()
                .find(|(f, s)| *f == family && *s == name)
                .unwrap_or_else(|| {
                    panic!("{what}: uniform struct {name} has no Rust mirror in host_layouts")
                });
            met.insert(*key);
            let wgsl = wgsl_layout(&module, g.ty, format!("wgsl/{family} {name}"));
            problems.extend(compare(&wgsl, &hosts[key]));
            checked += 1;
        }
    }
    assert!(
        problems.is_empty(),
        "uniform layouts differ:\n{}",
        problems.into_iter().collect::<Vec<_>>().join("\n")
    );
    let unmet: Vec<_> = hosts.keys().filter(|k| !met.contains(*k)).collect();
    assert!(unmet.is_empty(), "mirrors of no uniform: {unmet:?}");
    eprintln!(
        "{checked} uniform bindings of {} WGSL variants agree with {} Rust structs",
        variants().len(),
        hosts.len()
    );
}

/// The comparison fails on a reordered field, a size that differs, a type that differs, a
/// field the list leaves out and a native-only field off the WGSL padding.
#[test]
fn layout_comparison_catches_mismatches() {
    let f = |name: &str, offset: usize, ty: &str| Field {
        name: name.into(),
        offset,
        size: 4,
        ty: ty.into(),
    };
    let layout = |fields: Vec<Field>| Layout {
        what: "s".into(),
        size: fields.iter().map(|f| f.size).sum(),
        fields,
    };
    let wgsl = layout(vec![
        f("a", 0, "u32"),
        f("b", 4, "f32"),
        f("_pad0", 8, "u32"),
        f("_pad1", 12, "u32"),
    ]);
    let good = layout(vec![
        f("a", 0, "u32"),
        f("b", 4, "f32"),
        f("native_only", 8, "u32"),
        f("_pad", 12, "[u32; 1]"),
    ]);
    assert_eq!(compare(&wgsl, &good), Vec::<String>::new());
    let swapped = layout(vec![
        f("b", 0, "f32"),
        f("a", 4, "u32"),
        f("native_only", 8, "u32"),
        f("_pad", 12, "u32"),
    ]);
    let retyped = layout(vec![
        f("a", 0, "u32"),
        f("b", 4, "u32"),
        f("_pad", 8, "u32"),
        f("_pad2", 12, "u32"),
    ]);
    let mut short = good.clone();
    short.fields.truncate(3);
    let mut left_out = good.clone();
    left_out.fields.remove(1);
    let mut wider = good.clone();
    wider.fields[2].size = 8;
    wider.fields.pop();
    let mut shrunk = wgsl.clone();
    shrunk.size = 12;
    shrunk.fields.pop();
    for (what, w, h) in [
        ("swapped", &wgsl, &swapped),
        ("retyped", &wgsl, &retyped),
        ("field list short", &wgsl, &short),
        ("field left out", &wgsl, &left_out),
        ("native field wider than the padding", &wgsl, &wider),
        ("sizes differ", &shrunk, &good),
    ] {
        assert!(!compare(w, h).is_empty(), "{what}: not caught");
    }
}
