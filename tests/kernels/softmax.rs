use crate::support::*;
use wick::kernels::{softmax, Kernels};
use wick::reference;

/// Tolerance: 1e-5 relative per probability, against an f64 reference. Vulkan bounds f32 exp
/// by 3 + 2|x| ulp; inputs here keep |x - max| <= 24, so up to 51 ulp (~3e-6, which lavapipe
/// reaches on the vocabulary row), plus the f32 sum's rounding. The absolute part is only
/// 1e-9: a vocabulary row's probabilities are ~1e-5 and below, so a 1e-6 slack would hide
/// errors of 10% and more there.
fn check(k: &Kernels, n: usize, rows: usize, scale: f32, offset: f32, inplace: bool) {
    let mut r = rng();
    let g = &k.gpu;
    // The offset pushes exp(x) past f32 range: only a max-subtracted softmax survives it.
    let x: Vec<f32> = rand_vec(&mut r, n * rows, scale)
        .into_iter()
        .map(|v| v + offset)
        .collect();
    let want = reference::softmax::softmax(&x, n);
    let xb = g.upload("x", &x).unwrap();
    let got: Vec<f32> = if inplace {
        let d = softmax::softmax_inplace(k, &xb, n, rows).unwrap();
        k.run(&[&d]).unwrap();
        g.read_vec(&xb).unwrap()
    } else {
        // On k's device: `poisoned` allocates on the default registry's.
        let out = g.storage_buffer("out", (n * rows * 4) as u64).unwrap();
        g.poison(&out);
        let d = softmax::softmax(k, &xb, &out, n, rows).unwrap();
        k.run(&[&d]).unwrap();
        assert_eq!(g.read_vec::<f32>(&xb).unwrap(), x, "input modified");
        g.read_vec(&out).unwrap()
    };
    assert_close(
        &format!("softmax n={n} rows={rows}"),
        &got,
        &want,
        1e-5,
        1e-9,
    );
}

#[test]
fn softmax_vocabulary_row() {
    check(kernels(), 151936, 1, 12.0, 0.0, false);
    check(kernels(), 49152, 1, 8.0, 100.0, true);
}

#[test]
fn softmax_small_rows() {
    for &(n, rows) in &[(1, 3), (7, 5), (64, 3), (300, 4), (1000, 2), (257, 6)] {
        check(kernels(), n, rows, 6.0, 95.0, false);
        check(kernels(), n, rows, 3.0, -50.0, true);
    }
}

#[test]
fn softmax_without_subgroups() {
    check(kernels_no_subgroup(), 1000, 3, 6.0, 95.0, false);
    check(kernels_no_subgroup(), 151936, 1, 12.0, 0.0, true);
}

#[test]
fn softmax_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let x = g.upload("x", &[1.0f32; 16]).unwrap();
    let out = g.storage_buffer("o", 32).unwrap();
    assert!(softmax::softmax(k, &x, &out, 16, 1).is_err());
    assert!(softmax::softmax(k, &x, &out, 8, 1).is_ok());
    assert!(softmax::softmax_inplace(k, &x, 8, 3).is_err());
    assert!(softmax::softmax_inplace(k, &x, 0, 1).is_err());
}
