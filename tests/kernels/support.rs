//! The kernel tests' plumbing: one device per test binary, random data, comparisons.

use std::sync::{Arc, OnceLock};

use rand::{Rng, SeedableRng};
use wick::gpu::Gpu;
use wick::kernels::Kernels;

/// The pattern `Gpu::poison` writes: an output element never written reads back as it.
pub use wick::gpu::POISON;

/// The test device (lavapipe in CI). Created once per test binary.
pub fn kernels() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let gpu = Gpu::new().expect("a GPU adapter (in CI: mesa-vulkan-drivers' lavapipe)");
        Kernels::new(gpu)
    })
}

/// A second registry on the same device with SUBGROUP disabled, to test the
/// workgroup-memory fallback paths.
pub fn kernels_no_subgroup() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let gpu = Gpu::with_options(wick::gpu::GpuOptions {
            disable_features: Some(wgpu::Features::SUBGROUP),
            ..Default::default()
        })
        .expect("a GPU adapter");
        Kernels::new(gpu)
    })
}

pub fn gpu() -> &'static Arc<Gpu> {
    &kernels().gpu
}

/// A fresh RNG per test, seeded by [`crate::common::seed`] (from the clock, printed, or
/// `WICK_TEST_SEED` to replay a run).
pub fn rng() -> rand::rngs::StdRng {
    rand::rngs::StdRng::seed_from_u64(crate::common::seed())
}

/// `len` values uniform in [-scale, scale].
pub fn rand_vec(rng: &mut impl Rng, len: usize, scale: f32) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-scale..=scale)).collect()
}

/// An output buffer of `len` f32 on `k`'s device (the no-subgroup registry has its own),
/// poisoned with NaN.
pub fn poisoned_on(k: &Kernels, len: usize) -> wgpu::Buffer {
    let g = &k.gpu;
    let b = g.storage_buffer("test out", (len * 4) as u64).unwrap();
    g.poison(&b);
    b
}

/// An output buffer of `len` f32 on the default test device, poisoned with NaN.
pub fn poisoned(len: usize) -> wgpu::Buffer {
    let g = gpu();
    let b = g.storage_buffer("test out", (len * 4) as u64).unwrap();
    g.poison(&b);
    b
}

/// Asserts `|got - want| <= atol + rtol * |want|` elementwise and reports the worst element.
/// A non-finite value on either side (a NaN never overwritten, an overflow, or a NaN/inf in
/// a reference built from GPU output) fails unless both sides are bit-identical, so it can
/// neither hide in a NaN comparison nor pass as a match. Returns the max relative error over
/// the vector (max |d| / max |want|, both over finite elements).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) -> f32 {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let mut worst = (0usize, 0.0f32);
    let mut max_d = 0.0f32;
    let mut max_w = 0.0f32;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        if !g.is_finite() || !w.is_finite() {
            assert!(
                g.to_bits() == w.to_bits(),
                "{what}: element {i}: got {g} want {w} (a non-finite value matches only a \
                 bit-identical one; NaN output: never written?)"
            );
            continue;
        }
        let d = (g - w).abs();
        let excess = d - (atol + rtol * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
        max_d = max_d.max(d);
        max_w = max_w.max(w.abs());
    }
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i}: got {} want {} (|d| {} > atol {atol} + rtol {rtol} * |want|); max |d| {max_d}",
            got[i],
            want[i],
            (got[i] - want[i]).abs()
        );
    }
    max_d / max_w.max(f32::MIN_POSITIVE)
}

/// The comparison's negative controls: a NaN or infinity on either side fails unless both
/// sides hold the same bits, and an ordinary excess fails; matching values pass.
#[test]
fn assert_close_fails_on_non_finite_values() {
    let fails = |got: &[f32], want: &[f32]| {
        std::panic::catch_unwind(|| assert_close("control", got, want, 1e-5, 1e-5)).is_err()
    };
    let nan = f32::NAN;
    let inf = f32::INFINITY;
    // The hole: NaN in the expected value, finite output.
    assert!(fails(&[1.0, 2.0], &[1.0, nan]), "NaN expected, finite got");
    assert!(fails(&[1.0, 2.0], &[inf, 2.0]), "inf expected, finite got");
    assert!(
        fails(&[nan, 2.0], &[1.0, 2.0]),
        "NaN got (poison never overwritten)"
    );
    assert!(fails(&[-inf], &[inf]), "opposite infinities");
    assert!(fails(&[inf], &[nan]), "inf vs NaN");
    assert!(
        fails(
            &[f32::from_bits(0x7FC0_DEAD)],
            &[f32::from_bits(0x7FC0_0000)]
        ),
        "NaNs of different payloads"
    );
    assert!(fails(&[1.0, 2.1], &[1.0, 2.0]), "finite excess");
    // Positive controls: the same check passes matching values, including identical
    // non-finite ones.
    assert!(!fails(&[1.0, 2.0 + 1e-6], &[1.0, 2.0]), "within tolerance");
    assert!(
        !fails(&[inf, -inf, 3.0], &[inf, -inf, 3.0]),
        "identical infinities"
    );
    assert!(!fails(&[nan], &[nan]), "bit-identical NaN");
}

/// A random n x k matrix in `format`'s GPU planes: quantised from uniform values in [-1, 1]
/// where wick has a quantiser, else random GGML blocks (`quant::random_blocks`: random quant
/// bytes, small random f16 scales). Compare against `quant::unpack` of the result.
pub fn random_matrix(
    rng: &mut impl Rng,
    format: wick::quant::WeightFormat,
    n: usize,
    k: usize,
) -> wick::quant::PackedMatrix {
    use wick::quant;
    let vals = rand_vec(rng, n * k, 1.0);
    match quant::quantize_and_pack(format, &vals, n, k) {
        Ok(p) => p,
        Err(wick::Error::Unsupported(_)) => {
            let bytes = quant::random_blocks(format.ggml(), n * k, rng.random()).unwrap();
            quant::pack(format, &bytes, n, k).unwrap()
        }
        Err(e) => panic!("{format:?} {n} x {k}: {e}"),
    }
}

/// [`random_matrix`] on `k`'s device: its GPU planes and the exact values the GPU sees.
pub fn matrix(
    r: &mut impl Rng,
    k: &Kernels,
    format: wick::quant::WeightFormat,
    n: usize,
    kk: usize,
) -> (wick::kernels::GpuMatrix, Vec<f32>) {
    let packed = random_matrix(r, format, n, kk);
    let gm = wick::kernels::GpuMatrix::upload(&k.gpu, "w", &packed).unwrap();
    (gm, wick::quant::unpack(&packed))
}

/// A registry on the test device that prefers native kernels (SPIR-V on Vulkan) where an op
/// has one; ops without one run their WGSL kernel.
pub fn kernels_native() -> &'static Kernels {
    static K: OnceLock<Kernels> = OnceLock::new();
    K.get_or_init(|| {
        let policy = wick::kernels::KernelPolicy {
            default: wick::kernels::KernelChoice::Native,
            per_op: Default::default(),
        };
        Kernels::with_policy(gpu().clone(), policy)
    })
}

/// `family`'s pipelines, one of each set that runs the same check cases: a family's cases read
/// a spec's op, WGSL file, entry and defines, while the constants are the host's choice for the
/// case's shape (attention lists a decode spec per native head dim, the same cases each).
pub fn family_pipelines(family: &wick::kernels::Family) -> Vec<wick::kernels::KernelSpec> {
    let mut seen = std::collections::HashSet::new();
    (family.pipelines)()
        .into_iter()
        .filter(|s| seen.insert((s.op.clone(), s.family, s.entry, s.pipeline_defines())))
        .collect()
}

/// Runs the reference checks `wick kernels check` runs (each family's check cases,
/// [`wick::kernels::Family::checks`]) over `specs` on the test registries ([`kernels`],
/// [`kernels_native`]: the checks share the pipelines the other tests build), on inputs drawn
/// from the test seed: the portable kernel of every spec, and its native variant where this
/// adapter runs one. Asserts that every case passes both the family's tolerance and
/// `bound(variant)` (a test's own bound on max |got - want| / max |want| where it is tighter
/// on the test device), and that every spec ran as portable; returns the report, whose rows
/// the caller counts (native rows included).
pub fn run_family_checks(
    specs: &[wick::kernels::KernelSpec],
    bound: impl Fn(wick::kernels::Variant) -> f64,
) -> wick::tools::check::CheckReport {
    use wick::kernels::Variant;
    use wick::tools::check::{check_specs_on, CheckOptions, CheckRegistries};
    let opts = CheckOptions {
        seed: Some(crate::common::seed()),
        ..Default::default()
    };
    let registries = CheckRegistries {
        portable: kernels(),
        native: kernels_native(),
    };
    let r = check_specs_on(registries, specs, &opts).unwrap();
    let mut failed = Vec::new();
    for row in &r.rows {
        let b = row.tolerance.min(bound(row.variant));
        let line = format!(
            "{} {:?} [{}] {}: {:.2e} (bound {:.1e}){}",
            row.op,
            row.variant,
            row.pipeline,
            row.shape,
            row.max_rel_err,
            b,
            row.error
                .as_deref()
                .map_or(String::new(), |e| format!(": {e}"))
        );
        eprintln!("{line}");
        if !(row.pass && row.max_rel_err <= b) {
            failed.push(line);
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} checks failed:\n{}",
        failed.len(),
        r.rows.len(),
        failed.join("\n")
    );
    assert!(!specs.is_empty() && !r.rows.is_empty(), "no check ran");
    for s in specs {
        let p = s.pipeline_defines().join(" ");
        assert!(
            r.rows
                .iter()
                .any(|row| row.op == s.op && row.pipeline == p && row.variant == Variant::Portable),
            "{} [{p}]: no portable check ran",
            s.op
        );
    }
    r
}

/// The rows of `r` that ran `variant`.
pub fn rows_of(r: &wick::tools::check::CheckReport, variant: wick::kernels::Variant) -> usize {
    r.rows.iter().filter(|row| row.variant == variant).count()
}
