//! The kernel tooling behind `wick kernels list|check|bench`: the catalog agrees with the
//! registry, the native-vs-reference check passes on this adapter and fails on a wrong
//! reference, and `--kernels auto` follows the tuning cache's measured winners.

use std::sync::{Arc, OnceLock};

use wick::gpu::Gpu;
use wick::kernels::tuning::{TuningTable, VariantEntry};
use wick::kernels::{native_specs, KernelChoice, KernelPolicy, Kernels, Variant};
use wick::tools::catalog;
use wick::tools::check::{self, CheckOptions};

pub mod common;

fn gpu() -> &'static Arc<Gpu> {
    static G: OnceLock<Arc<Gpu>> = OnceLock::new();
    G.get_or_init(|| Gpu::new().expect("a GPU adapter (in CI: mesa-vulkan-drivers' lavapipe)"))
}

#[test]
fn catalog_names_every_op_and_native_spec() {
    let cat = catalog::catalog();
    for op in [
        "embedding_q8_0",
        "rmsnorm",
        "add_rmsnorm",
        "rope",
        "kv_write",
        "attention_decode",
        "attention_merge",
        "attention_prefill",
        "gemv_q4_0",
        "gemv_swiglu_q4_1",
        "gemv_qkv_q8_0",
        "gemm_q4_k",
        "softmax",
        "swiglu",
        "argmax_partial",
        "sample_topk",
    ] {
        assert!(cat.iter().any(|o| o.op == op), "catalog lacks {op}");
    }
    let mut names: Vec<&str> = cat.iter().map(|o| o.op.as_str()).collect();
    names.sort();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len(), "an op is listed twice");
    // Every native spec's native kernels are in its op's entry.
    for spec in native_specs() {
        let o = cat
            .iter()
            .find(|o| o.op == spec.op)
            .unwrap_or_else(|| panic!("native spec {} not in the catalog", spec.op));
        for (backend, n) in spec.natives() {
            assert!(
                o.native
                    .iter()
                    .any(|i| i.backend == backend && i.kernel == *n),
                "{}: {backend} {} missing from the catalog",
                spec.op,
                n.family
            );
        }
    }
    assert_eq!(
        catalog::op_format("gemv_swiglu_bf16"),
        Some(wick::quant::WeightFormat::Bf16)
    );
    assert_eq!(catalog::op_format("rmsnorm"), None);
}

/// What `wick kernels list` says must agree with `Kernels::native_for` (what the registry
/// does) on this adapter: both ask `kernels::native_unavailable`.
#[test]
fn list_availability_matches_the_registry() {
    let k = Kernels::new(gpu().clone());
    let caps = &gpu().caps;
    let list = catalog::list(caps);
    assert_eq!(list.adapter.backend, caps.backend.to_string());
    for spec in native_specs() {
        let registry = k.native_for(&spec).is_some();
        let defines = spec.pipeline_defines();
        let o = catalog::op_info(&spec.op).unwrap();
        let listed = o.native_here(caps, Some(&defines));
        assert_eq!(listed, registry, "{}: list says {listed}", spec.op);
        let shown = list.ops.iter().find(|l| l.op == spec.op).unwrap();
        assert!(shown
            .variants
            .iter()
            .any(|v| v.variant == Variant::Portable && v.available));
        for v in shown.variants.iter().filter(|v| !v.available) {
            assert!(
                v.reason.is_some(),
                "{}: unavailable without a reason",
                spec.op
            );
        }
    }
}

/// Every native pipeline and its portable twin pass against the CPU reference here; with a
/// native variant on this adapter, native rows must be among them.
#[test]
fn check_passes_on_this_adapter() {
    let r = check::check(
        gpu(),
        &CheckOptions {
            seed: Some(common::seed()),
            ..Default::default()
        },
    )
    .unwrap();
    for row in &r.rows {
        eprintln!(
            "{} {:?} {} {}: {:.2e} (tol {:.0e}) {:?}",
            row.op, row.variant, row.pipeline, row.shape, row.max_rel_err, row.tolerance, row.error
        );
    }
    eprintln!("{}", r.summary());
    assert!(!native_specs().is_empty(), "no native spec to check");
    assert!(!r.rows.is_empty(), "nothing checked");
    assert_eq!(r.failures(), 0, "failed checks (see above)");
    // The cooperative-matrix GEMM (the default prefill path on NVIDIA) is checked numerically
    // wherever the adapter can run it: four formats, with and without bias, three shapes.
    let caps = &gpu().caps;
    if caps.backend == wgpu::Backend::Vulkan && wick::kernels::cooperative_matrix_usable(caps) {
        let coop = r
            .rows
            .iter()
            .filter(|r| r.variant == Variant::Native && r.op.starts_with("gemm_"))
            .count();
        assert_eq!(coop, 24, "cooperative-matrix GEMM rows checked");
    }
    let k = Kernels::new(gpu().clone());
    let natives_here = native_specs().iter().any(|s| k.native_for(s).is_some());
    let native_rows = r.rows.iter().any(|r| r.variant == Variant::Native);
    if natives_here {
        assert!(
            native_rows,
            "a native variant exists here but none was checked"
        );
    } else {
        eprintln!(
            "no native variant on {} ({}): only portable rows checked",
            r.adapter, r.backend
        );
    }
}

/// The same check against a wrong reference fails every row: the comparison can fail.
#[test]
fn check_fails_on_a_wrong_reference() {
    let r = check::check(
        gpu(),
        &CheckOptions {
            seed: Some(common::seed()),
            corrupt_reference: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(!r.rows.is_empty());
    for row in &r.rows {
        assert!(
            !row.pass,
            "{} {:?} {} passed against a wrong reference (err {:.2e})",
            row.op, row.variant, row.shape, row.max_rel_err
        );
        assert!(row.error.is_none(), "{}: {:?}", row.op, row.error);
    }
}

#[test]
fn check_filter_selects_ops() {
    let r = check::check(
        gpu(),
        &CheckOptions {
            filter: Some("no_such_op".into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.rows.is_empty());
}

/// The registries a check is handed must run what each row names: a portable row on a registry
/// whose policy picks the native kernel fails without running, and registries on two devices
/// are refused.
#[test]
fn check_rows_follow_their_registry_policy() {
    let native = Kernels::with_policy(
        gpu().clone(),
        KernelPolicy {
            default: KernelChoice::Native,
            per_op: Default::default(),
        },
    );
    let spec = native_specs()
        .into_iter()
        .find(|s| s.op.starts_with("gemv_"))
        .unwrap();
    let wrong = check::CheckRegistries {
        portable: &native,
        native: &native,
    };
    let r = check::check_specs_on(wrong, std::slice::from_ref(&spec), &Default::default()).unwrap();
    let portable: Vec<_> = r
        .rows
        .iter()
        .filter(|r| r.variant == Variant::Portable)
        .collect();
    assert!(!portable.is_empty());
    for row in portable {
        assert!(!row.pass, "{} {}: passed", row.op, row.shape);
        let e = row.error.as_deref().unwrap_or_default();
        assert!(e.contains("policy runs"), "{}: {e}", row.op);
    }
    let other = Kernels::new(Gpu::new().unwrap());
    let split = check::CheckRegistries {
        portable: &other,
        native: &native,
    };
    assert!(check::check_specs_on(split, &[spec], &Default::default()).is_err());
}

fn auto_kernels(table: Option<TuningTable>) -> Kernels {
    let policy = KernelPolicy {
        default: KernelChoice::Auto,
        per_op: Default::default(),
    };
    Kernels::with_policy(gpu().clone(), policy).with_tuning(table)
}

/// `--kernels auto`: native where present unless the tuning table measured it slower; an
/// entry never conjures a native variant where there is none.
#[test]
fn auto_follows_the_tuning_table() {
    let caps = &gpu().caps;
    let spec = native_specs()
        .into_iter()
        .next()
        .expect("at least one native spec");
    let op = spec.op.clone();
    let mut table = TuningTable::for_device(caps);
    let has_native = auto_kernels(None).native_for(&spec).is_some();
    let expect_native = if has_native {
        Variant::Native
    } else {
        eprintln!("{op} has no native variant on this adapter: auto must stay portable");
        Variant::Portable
    };
    // No table, or a table without this op: native where present (the old behaviour).
    assert_eq!(
        auto_kernels(None).variant_for(&spec).unwrap(),
        expect_native
    );
    table.set_variant(VariantEntry::from_times("some_other_op", 1.0, 2.0, 1));
    assert_eq!(
        auto_kernels(Some(table.clone()))
            .variant_for(&spec)
            .unwrap(),
        expect_native
    );
    // Native measured slower: portable.
    table.set_variant(VariantEntry::from_times(&op, 10.0, 12.5, 3));
    assert_eq!(table.variant_winner(&op), Some(Variant::Portable));
    assert_eq!(
        auto_kernels(Some(table.clone()))
            .variant_for(&spec)
            .unwrap(),
        Variant::Portable
    );
    // Native measured not slower (a tie counts for native): native where present.
    table.set_variant(VariantEntry::from_times(&op, 10.0, 10.0, 3));
    assert_eq!(table.variant_winner(&op), Some(Variant::Native));
    assert_eq!(table.variants.iter().filter(|v| v.op == op).count(), 1);
    assert_eq!(
        auto_kernels(Some(table.clone()))
            .variant_for(&spec)
            .unwrap(),
        expect_native
    );
    // Explicit choices ignore the table.
    table.set_variant(VariantEntry::from_times(&op, 1.0, 9.0, 1));
    let native = KernelPolicy {
        default: KernelChoice::Native,
        per_op: Default::default(),
    };
    let k = Kernels::with_policy(gpu().clone(), native).with_tuning(Some(table));
    assert_eq!(k.variant_for(&spec).unwrap(), expect_native);
}

/// The tuning file keeps its GEMV splits and variant winners through a save and load, and
/// reads files written before the winners existed.
#[test]
fn tuning_file_round_trip() {
    let caps = &gpu().caps;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tune.json");
    let mut t = TuningTable::for_device(caps);
    t.set_variant(VariantEntry::from_times("gemv_q8_0", 5.0, 4.0, 2));
    t.save(&path).unwrap();
    let back = TuningTable::load(&path, caps).unwrap();
    assert_eq!(back, t);
    let old = serde_json::json!({
        "adapter": caps.adapter_name,
        "backend": caps.backend.to_string(),
        "driver": caps.driver_info,
        "entries": [],
    });
    std::fs::write(&path, old.to_string()).unwrap();
    let back = TuningTable::load(&path, caps).unwrap();
    assert!(back.variants.is_empty());
    assert_eq!(back.variant_winner("gemv_q8_0"), None);
}

/// The bench's case list covers the model shapes of the selected ops and its winners follow
/// the summed times.
#[test]
fn bench_cases_and_winners() {
    use wick::kernels::gemm::cases::GemmWork;
    use wick::kernels::gemv::cases::GemvWork;
    use wick::tools::kernel_bench::{self, OpBenchOptions};
    let o = OpBenchOptions {
        filter: Some("gemv_q8_0".into()),
        all: true,
        ..Default::default()
    };
    let cases = kernel_bench::cases(&o).unwrap();
    assert!(cases.iter().all(|c| c.op == "gemv_q8_0"));
    // SmolLM2: q and o share 576x576; the 8B LM head is 128256 x 4096.
    assert!(cases
        .iter()
        .any(|c| c.model == "smollm2-135m" && c.role == "q,o"));
    assert!(cases.iter().any(|c| matches!(
        c.work.downcast_ref::<GemvWork>(),
        Some(GemvWork::Plain {
            n: 128256,
            k: 4096,
            ..
        })
    )));
    let o = OpBenchOptions {
        filter: Some("gemm_q4_0".into()),
        all: true,
        ..Default::default()
    };
    let gemm = kernel_bench::cases(&o).unwrap();
    assert_eq!(gemm.len(), 4);
    assert!(gemm.iter().all(|c| matches!(
        c.work.downcast_ref::<GemmWork>(),
        Some(GemmWork {
            m: 512,
            k: 4096 | 14336,
            ..
        })
    )));
}

/// Pipelines of every family the check knows, whether or not a native variant exists yet, so
/// each family's check is known to fail on a wrong reference before a native kernel depends on
/// it (that every family's checks pass, on all its pipelines, is tests/kernels' job).
fn every_family_specs() -> Vec<wick::kernels::KernelSpec> {
    use wick::kernels::gemm::{self, GemmTiling};
    use wick::kernels::gemv;
    use wick::kernels::KernelSpec;
    use wick::quant::WeightFormat;
    let split = gemv::native_config(&gemv::GemvConfig {
        lanes_per_row: 32,
        rows_per_group: 1,
        workgroup_size: 256,
        subgroup_reduce: false,
    });
    let tiling = GemmTiling {
        wg_m: 16,
        wg_n: 16,
        pad: 0,
    };
    let f = WeightFormat::Q4_1;
    vec![
        gemv::spec(f, &split, false, false, false),
        gemv::spec(f, &split, false, false, true),
        gemv::swiglu_spec(f, &split, false),
        gemv::swiglu_spec(f, &split, true),
        KernelSpec::new("gemv_qkv_q4_1", "gemv", "gemv", &[])
            .define("QKV")
            .define(f.define()),
        KernelSpec::new("gemv_qkv_q4_1", "gemv", "gemv", &[])
            .define("QKV")
            .define("NORM")
            .define(f.define()),
        KernelSpec::new(
            "attention_decode",
            "attention_decode",
            "attention_decode",
            &[],
        ),
        wick::kernels::attention::merge_spec(64),
        KernelSpec::new(
            "attention_prefill",
            "attention_prefill",
            "attention_prefill",
            &[],
        ),
        gemm::spec(WeightFormat::Q8_0, false, tiling),
        gemm::spec(WeightFormat::Q8_0, true, tiling),
    ]
}

#[test]
fn check_covers_every_family() {
    let specs = every_family_specs();
    let opts = CheckOptions {
        seed: Some(common::seed()),
        corrupt_reference: true,
        ..Default::default()
    };
    let bad = check::check_specs(gpu(), &specs, &opts).unwrap();
    for s in &specs {
        let p = s.pipeline_defines().join(" ");
        assert!(
            bad.rows
                .iter()
                .any(|row| row.op == s.op && row.pipeline == p),
            "{} ({p}) not checked",
            s.op
        );
    }
    // Every case ran and its comparison failed.
    for row in &bad.rows {
        assert!(
            !row.pass && row.error.is_none(),
            "{} {:?} {} {}: passed against a wrong reference or did not run ({:?})",
            row.op,
            row.variant,
            row.pipeline,
            row.shape,
            row.error
        );
    }
    // A family the check does not know is a failure, not a skip.
    let unknown = wick::kernels::KernelSpec::new("rmsnorm", "rmsnorm", "rmsnorm", &[]);
    let r = check::check_specs(gpu(), &[unknown], &Default::default()).unwrap();
    assert_eq!(r.failures(), 1);
    assert!(r.rows[0].error.as_deref().unwrap().contains("no check"));
}
