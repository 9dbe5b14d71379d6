use crate::support::*;
use wick::kernels::{swiglu, Kernels};
use wick::reference;

fn check(k: &Kernels, rows: usize, n: usize) {
    let mut r = rng();
    let g = &k.gpu;
    // Gates in [-12, 12] reach silu's saturated tails on both sides.
    let mut gu = rand_vec(&mut r, rows * 2 * n, 3.0);
    for row in gu.chunks_mut(2 * n) {
        row[..n].iter_mut().for_each(|v| *v *= 4.0);
    }
    let gb = g.upload("gu", &gu).unwrap();
    let out = poisoned(rows * n);
    let d = swiglu::swiglu(k, &gb, &out, rows, n).unwrap();
    k.run(&[&d]).unwrap();
    let want = reference::swiglu::swiglu(&gu, n);
    // Relative 4e-6 against f64: exp(-|g|) with |g| <= 12 may be off by 3 + 2|g| = 27 ulp
    // (Vulkan's bound), plus an add, a divide and two multiplies: <= 31 ulp < 4e-6.
    // lavapipe measures ~1.1e-6.
    assert_close(
        &format!("swiglu {rows}x{n}"),
        &g.read_vec(&out).unwrap(),
        &want,
        4e-6,
        0.0,
    );
}

#[test]
fn swiglu_shapes() {
    for &(rows, n) in &[(1, 1), (3, 7), (5, 1536), (17, 4864), (2, 8960)] {
        check(kernels(), rows, n);
    }
}

#[test]
fn swiglu_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let gu = g.upload("gu", &[1.0f32; 16]).unwrap();
    let out = g.storage_buffer("o", 32).unwrap();
    assert!(swiglu::swiglu(k, &gu, &out, 1, 8).is_ok());
    assert!(swiglu::swiglu(k, &gu, &out, 2, 8).is_err());
    assert!(swiglu::swiglu(k, &gu, &out, 0, 8).is_err());
}
