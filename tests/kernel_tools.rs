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

/// Tiny batching for lavapipe: a few runs per sample, a few weight copies; no cut by
/// sample time, so the runs per sample are the plan's whatever the machine's load.
fn tiny_batch() -> wick::tools::timing::BatchOptions {
    wick::tools::timing::BatchOptions {
        sample_bytes: 1 << 20,
        max_runs: 4,
        rotate_bytes: 1 << 20,
        max_copy_bytes: 2 << 20,
        max_copies: 4,
        max_sample_secs: f64::INFINITY,
    }
}

/// `wick kernels bench` end to end on small shapes with tiny batching: every row ran batched
/// samples over weight copies as planned, and its rates follow from its time (nothing timed
/// is asserted against a bound).
#[test]
fn bench_runs_batched_over_weight_copies() {
    use wick::tools::kernel_bench::{self, OpBenchOptions};
    let g = gpu();
    let batch = tiny_batch();
    for (filter, kv_lens) in [("gemv_q8_0", vec![]), ("attention_decode", vec![512])] {
        let o = OpBenchOptions {
            filter: Some(filter.into()),
            all: true,
            models: vec!["smollm2-135m".into()],
            kv_lens,
            reps: 2,
            warmup_secs: 0.0,
            ceiling_bytes: 1 << 20,
            batch,
            ..Default::default()
        };
        let cases = kernel_bench::cases(&o).unwrap();
        let r = kernel_bench::run(g, &o).unwrap();
        assert!(r.skipped.is_empty(), "{filter}: skipped {:?}", r.skipped);
        assert!(!r.rows.is_empty(), "{filter}: nothing timed");
        for row in &r.rows {
            let case = &cases[row.index];
            let plan = batch.plan(&g.caps, case.work.bytes(), case.work.weight_bytes());
            assert_eq!(row.runs_per_sample, plan.runs_per_sample, "{row:?}");
            assert_eq!(row.weight_copies, plan.weight_copies, "{row:?}");
            assert!(
                (1..=batch.max_runs).contains(&row.runs_per_sample),
                "{row:?}"
            );
            assert!(
                (1..=batch.max_copies).contains(&row.weight_copies),
                "{row:?}"
            );
            assert!(row.us > 0.0 && row.us.is_finite(), "{row:?}");
            let gb_s = row.bytes as f64 / (row.us * 1e3);
            assert!((row.gb_s - gb_s).abs() <= 1e-9 * gb_s.max(1.0), "{row:?}");
        }
        // The small matrices and caches rotate over several copies in batches of several
        // runs; the SmolLM2 LM head (30 MB) is past the 1 MiB targets alone.
        assert!(
            r.rows
                .iter()
                .any(|x| x.weight_copies > 1 && x.runs_per_sample > 1),
            "{filter}: no row was batched and rotated: {:?}",
            r.rows
        );
        if filter == "gemv_q8_0" {
            let head = r.rows.iter().find(|x| x.role == "lm_head").unwrap();
            assert_eq!((head.runs_per_sample, head.weight_copies), (1, 1));
        }
    }
    // A zero bound is refused by name rather than planned around.
    let o = OpBenchOptions {
        filter: Some("gemv_q8_0".into()),
        batch: wick::tools::timing::BatchOptions {
            max_runs: 0,
            ..batch
        },
        ..Default::default()
    };
    let e = kernel_bench::run(g, &o).expect_err("max_runs 0 refused");
    assert!(e.to_string().contains("max_runs"), "{e}");
}

/// The planner: runs per sample from bytes per run, copies from the rotation target, both
/// within their caps and at least 1.
#[test]
fn batch_plan_bounds() {
    let batch = wick::tools::timing::BatchOptions::default();
    let mut caps = gpu().caps.clone();
    caps.device_memory = Some(80 << 30);
    let mib = 1u64 << 20;
    // k/v of an 8B model in q4_0 (1024 x 4096): ~2.25 MiB.
    let p = batch.plan(&caps, 2 * mib + mib / 4, 2 * mib + mib / 4);
    assert_eq!(p.runs_per_sample, 114);
    assert_eq!(p.weight_copies, 114);
    // A 300 MiB LM head: one run and one copy already exceed both targets.
    let p = batch.plan(&caps, 300 * mib, 300 * mib);
    assert_eq!((p.runs_per_sample, p.weight_copies), (1, 1));
    // No weights (the activation quantiser): one copy; a few bytes: capped runs.
    let p = batch.plan(&caps, 4096, 0);
    assert_eq!((p.runs_per_sample, p.weight_copies), (batch.max_runs, 1));
    // Tiny weights: the copy count cap; little device memory: the memory cap.
    assert_eq!(
        batch.plan(&caps, 4096, 4096).weight_copies,
        batch.max_copies
    );
    caps.device_memory = Some(64 * mib);
    assert_eq!(batch.plan(&caps, 4 * mib, 4 * mib).weight_copies, 4);
}

/// `time_runs` on each timing path this adapter can take (timestamps inside passes, around
/// passes, the wall clock), batched over two weight copies; and a run without dispatches is
/// an error, not a panic.
#[test]
fn time_runs_on_every_timing_path() {
    use wick::kernels::gemv::cases::GemvWork;
    use wick::quant::WeightFormat;
    use wick::tools::kernel_bench::{self, BenchCase};
    use wick::tools::timing::{time_runs, Timing};
    let case = BenchCase {
        op: "gemv_q8_0".into(),
        model: "tiny".into(),
        role: "q".into(),
        work: Arc::new(GemvWork::Plain {
            format: WeightFormat::Q8_0,
            n: 64,
            k: 256,
        }),
    };
    let ts = wgpu::Features::TIMESTAMP_QUERY
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES
        | wgpu::Features::TIMESTAMP_QUERY_INSIDE_ENCODERS;
    let inside = wgpu::Features::TIMESTAMP_QUERY_INSIDE_PASSES;
    for disable in [None, Some(inside), Some(ts)] {
        let g = if disable.is_none() {
            gpu().clone()
        } else {
            Gpu::with_options(wick::gpu::GpuOptions {
                disable_features: disable,
                ..Default::default()
            })
            .unwrap()
        };
        let want = if !g.caps.timestamps {
            Timing::Wall
        } else if !g.caps.timestamps_inside_passes {
            Timing::PassTimestamps
        } else {
            Timing::Timestamps
        };
        if disable == Some(ts) {
            assert_eq!(want, Timing::Wall);
        }
        let prepared = kernel_bench::prepare_copies(&g, &case, 2).unwrap();
        assert_eq!(prepared.copies(), 2);
        let k = kernel_bench::registry(&g, &case.op, Variant::Portable);
        let built = prepared.build(&k).unwrap();
        assert_eq!(built.runs.len(), 2);
        let runs: Vec<Vec<&wick::kernels::Dispatch>> =
            built.runs.iter().map(|r| r.iter().collect()).collect();
        let t = time_runs(&g, &runs, 3, f64::INFINITY, 2, 0.0).unwrap();
        assert_eq!(t.timing, want);
        assert_eq!(t.runs_per_sample, 3);
        assert!(t.ns > 0.0 && t.ns.is_finite(), "{t:?}");
        // A sample cap far below one run cuts the sample to one run.
        let t = time_runs(&g, &runs, 3, 1e-9, 2, 0.0).unwrap();
        assert_eq!(t.runs_per_sample, 1);
        assert!(time_runs(&g, &[], 3, 1.0, 2, 0.0).is_err());
        assert!(time_runs(&g, &[Vec::new()], 3, 1.0, 2, 0.0).is_err());
        assert!(time_runs(&g, &runs, 3, 0.0, 2, 0.0).is_err());
    }
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
