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
