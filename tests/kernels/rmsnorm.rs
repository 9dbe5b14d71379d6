use crate::common::*;
use wick::kernels::{rmsnorm, Kernels};
use wick::reference;

fn check(k: &Kernels, n: usize, rows: usize, fused: bool) {
    let mut r = rng();
    let g = &k.gpu;
    let x = rand_vec(&mut r, n * rows, 4.0);
    let w = rand_vec(&mut r, n, 1.5);
    let res = rand_vec(&mut r, n * rows, 100.0);
    let xb = g.upload("x", &x).unwrap();
    let wb = g.upload("w", &w).unwrap();
    let out = g.storage_buffer("out", (n * rows * 4) as u64).unwrap();
    g.poison(&out);
    let eps = 1e-5;
    if fused {
        let rb = g.upload("res", &res).unwrap();
        let d = rmsnorm::add_rmsnorm(k, &xb, &rb, (&wb, eps), &out, n, rows).unwrap();
        k.run(&[&d]).unwrap();
        let (want_res, want) = reference::rmsnorm::add_rmsnorm(&x, &res, &w, n, eps);
        assert_close("residual", &g.read_vec(&rb).unwrap(), &want_res, 1e-6, 1e-5);
        // f32 accumulation over n terms vs the f64 reference: a few ulp per element.
        assert_close("add_rmsnorm", &g.read_vec(&out).unwrap(), &want, 1e-5, 1e-5);
    } else {
        let d = rmsnorm::rmsnorm(k, &xb, (&wb, eps), &out, n, rows).unwrap();
        k.run(&[&d]).unwrap();
        let want = reference::rmsnorm::rmsnorm(&x, &w, n, eps);
        assert_close("rmsnorm", &g.read_vec(&out).unwrap(), &want, 1e-5, 1e-5);
    }
}

#[test]
fn rmsnorm_shapes() {
    for &(n, rows) in &[(576, 1), (896, 3), (64, 5), (1000, 2), (4096, 1)] {
        check(kernels(), n, rows, false);
    }
}

#[test]
fn add_rmsnorm_shapes() {
    for &(n, rows) in &[(576, 1), (896, 4), (130, 2)] {
        check(kernels(), n, rows, true);
    }
}

#[test]
fn rmsnorm_without_subgroups() {
    check(kernels_no_subgroup(), 576, 2, false);
    check(kernels_no_subgroup(), 896, 2, true);
}

#[test]
fn rmsnorm_rejects_short_buffers() {
    let k = kernels();
    let g = &k.gpu;
    let x = g.upload("x", &[1.0f32; 8]).unwrap();
    let w = g.upload("w", &[1.0f32; 8]).unwrap();
    let out = g.storage_buffer("o", 32).unwrap();
    assert!(rmsnorm::rmsnorm(k, &x, (&w, 1e-5), &out, 16, 1).is_err());
}
