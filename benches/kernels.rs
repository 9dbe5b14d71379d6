//! Portable vs native kernels under criterion, on the available adapter: the cases of
//! `wick kernels bench` (`wick::tools::kernel_bench`) on small shapes, so that
//! `cargo bench --bench kernels -- --quick` finishes on lavapipe in a couple of minutes.
//! Ops without a native variant on this adapter time their portable kernel only.
//!
//! Each sample records `iters` runs of the case into one compute pass and times the submit to
//! completion on the wall clock (criterion's model), on one copy of the weights; `wick
//! kernels bench` has GPU timestamps and rotates runs over weight copies past the L2.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use wick::gpu::Gpu;
use wick::kernels::attention::cases::DecodeWork;
use wick::kernels::family::Work;
use wick::kernels::gemm::cases::GemmWork;
use wick::kernels::gemv::cases::GemvWork;
use wick::kernels::kv_cache::KvType;
use wick::kernels::Variant;
use wick::quant::WeightFormat;
use wick::tools::kernel_bench::{self, BenchCase};

/// Small shapes: SmolLM2-135M's q projection and FFN, a short decode attention, a small GEMM.
fn cases() -> Vec<BenchCase> {
    let case = |op: &str, role: &str, work: Arc<dyn Work>| BenchCase {
        op: op.to_string(),
        model: "small".into(),
        role: role.into(),
        work,
    };
    let mut v = Vec::new();
    for f in [WeightFormat::Q8_0, WeightFormat::Q4_0] {
        let op = format!("gemv_{}", f.name());
        v.push(case(
            &op,
            "q",
            Arc::new(GemvWork::Plain {
                format: f,
                n: 576,
                k: 576,
            }),
        ));
        v.push(case(
            &op,
            "gate/up",
            Arc::new(GemvWork::Plain {
                format: f,
                n: 1536,
                k: 576,
            }),
        ));
    }
    for (op, kv_type) in [
        ("attention_decode", KvType::F16),
        ("attention_decode_kv_q8", KvType::Q8_0),
    ] {
        v.push(case(
            op,
            "attention",
            Arc::new(DecodeWork {
                n_heads: 9,
                n_kv_heads: 3,
                head_dim: 64,
                kv_len: 256,
                kv_type,
            }),
        ));
    }
    v.push(case(
        "gemm_q8_0",
        "q",
        Arc::new(GemmWork {
            format: WeightFormat::Q8_0,
            m: 64,
            n: 576,
            k: 576,
        }),
    ));
    v
}

fn kernels(c: &mut Criterion) {
    let gpu: Arc<Gpu> = match Gpu::new() {
        Ok(g) => g,
        Err(e) => {
            eprintln!("no GPU adapter ({e}); nothing to benchmark");
            return;
        }
    };
    let caps = &gpu.caps;
    eprintln!("{} ({})", caps.adapter_name, caps.backend);
    let mut group = c.benchmark_group("kernels");
    for case in cases() {
        let prepared = match kernel_bench::prepare(&gpu, &case) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{} {}: {e}", case.op, case.work.shape());
                continue;
            }
        };
        let mut variants = vec![Variant::Portable];
        if kernel_bench::native_available(caps, &case.op) {
            variants.push(Variant::Native);
        } else {
            eprintln!(
                "{}: no native variant on this adapter; portable only",
                case.op
            );
        }
        for variant in variants {
            let k = kernel_bench::registry(&gpu, &case.op, variant);
            let built = match prepared.build(&k) {
                Ok(b) if b.variant == variant => b,
                Ok(b) => {
                    eprintln!("{} {variant:?}: ran {:?}; skipped", case.op, b.variant);
                    continue;
                }
                Err(e) => {
                    eprintln!("{} {variant:?}: {e}", case.op);
                    continue;
                }
            };
            // Criterion turns '/' in a parameter into a directory level.
            let id = BenchmarkId::new(
                format!("{}/{variant:?}", case.op).to_lowercase(),
                case.work.shape().replace('/', ":"),
            );
            group.bench_function(id, |b| {
                b.iter_custom(|iters| {
                    let mut enc = gpu.device.create_command_encoder(&Default::default());
                    {
                        let mut pass = enc.begin_compute_pass(&Default::default());
                        for _ in 0..iters {
                            for d in &built.runs[0] {
                                d.record(&mut pass);
                            }
                        }
                    }
                    let t0 = Instant::now();
                    gpu.queue.submit([enc.finish()]);
                    match gpu.wait_idle() {
                        Ok(()) => t0.elapsed(),
                        Err(e) => panic!("GPU error while benchmarking {}: {e}", case.op),
                    }
                })
            });
        }
    }
    group.finish();
}

fn config() -> Criterion {
    // lavapipe runs a GEMV in milliseconds: short windows keep `--quick` within minutes.
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(10)
}

criterion_group! {
    name = benches;
    config = config();
    targets = kernels
}
criterion_main!(benches);
