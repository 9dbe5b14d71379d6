use crate::support::*;
use wick::kernels::{rmsnorm, Kernels};
use wick::reference;

/// Odd rows are scaled down to |x| <= 1e-3 (mean square ~3e-7, under the epsilon of 1e-5):
/// there the epsilon sets the scale (a missing one scales the outputs ~5.6x, 1e-6 instead of
/// 1e-5 ~2.8x, and even a 10% wrong epsilon moves them by ~5%), while on the even rows (mean
/// square ~5) it changes outputs by ~1e-6 relative, under the tolerance.
fn check(k: &Kernels, n: usize, rows: usize, fused: bool) {
    let mut r = rng();
    let g = &k.gpu;
    let small = |v: &mut Vec<f32>, scale: f32| {
        for (i, x) in v.iter_mut().enumerate() {
            if (i / n) % 2 == 1 {
                *x *= scale;
            }
        }
    };
    let mut x = rand_vec(&mut r, n * rows, 4.0);
    small(&mut x, 2.5e-4);
    let w = rand_vec(&mut r, n, 1.5);
    let mut res = rand_vec(&mut r, n * rows, 100.0);
    small(&mut res, 1e-5);
    let xb = g.upload("x", &x).unwrap();
    let wb = g.upload("w", &w).unwrap();
    let out = g.storage_buffer("out", (n * rows * 4) as u64).unwrap();
    g.poison(&out);
    let eps = 1e-5;
    let what = |name: &str| format!("{name} n={n} rows={rows} (odd rows |x| <= 1e-3)");
    if fused {
        let rb = g.upload("res", &res).unwrap();
        let d = rmsnorm::add_rmsnorm(k, &xb, &rb, (&wb, eps), &out, n, rows).unwrap();
        k.run(&[&d]).unwrap();
        let (want_res, want) = reference::rmsnorm::add_rmsnorm(&x, &res, &w, n, eps);
        assert_close(
            &what("residual"),
            &g.read_vec(&rb).unwrap(),
            &want_res,
            1e-6,
            1e-5,
        );
        // f32 accumulation over n terms vs the f64 reference: a few ulp per element.
        assert_close(
            &what("add_rmsnorm"),
            &g.read_vec(&out).unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    } else {
        let d = rmsnorm::rmsnorm(k, &xb, (&wb, eps), &out, n, rows).unwrap();
        k.run(&[&d]).unwrap();
        let want = reference::rmsnorm::rmsnorm(&x, &w, n, eps);
        assert_close(
            &what("rmsnorm"),
            &g.read_vec(&out).unwrap(),
            &want,
            1e-5,
            1e-5,
        );
    }
}

#[test]
fn rmsnorm_shapes() {
    for &(n, rows) in &[(576, 2), (896, 3), (64, 5), (1000, 2), (4096, 2)] {
        check(kernels(), n, rows, false);
    }
}

#[test]
fn add_rmsnorm_shapes() {
    for &(n, rows) in &[(576, 2), (896, 4), (130, 3)] {
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

/// `Kernels::rebind` (batched decode's per-sequence dispatches): an RMSNorm built on one-row
/// templates, moved onto row 1 of three-row buffers, normalises that row of the input into
/// that row of the output and writes nothing else; a range that is misaligned or not the
/// template's size is refused.
#[test]
fn rebind_moves_a_dispatch_onto_a_row() {
    let k = kernels();
    let g = &k.gpu;
    let mut r = rng();
    // One row of 64 f32 = 256 bytes: offsets at any alignment up to 256.
    let n = 64;
    let x = rand_vec(&mut r, 3 * n, 3.0);
    let w = rand_vec(&mut r, n, 1.5);
    let (xb, wb) = (g.upload("x", &x).unwrap(), g.upload("w", &w).unwrap());
    let out = poisoned(3 * n);
    let (tx, tout) = (poisoned(n), poisoned(n));
    let d = rmsnorm::rmsnorm(k, &tx, (&wb, 1e-5), &tout, n, 1).unwrap();
    let row = |buf, at: usize, len: usize| wgpu::BufferBinding {
        buffer: buf,
        offset: (at * 4) as u64,
        size: std::num::NonZeroU64::new((len * 4) as u64),
    };
    let moved = k
        .rebind(&d, &[(&tx, row(&xb, n, n)), (&tout, row(&out, n, n))])
        .unwrap();
    k.run(&[&moved]).unwrap();
    let got = g.read_vec(&out).unwrap();
    let want = reference::rmsnorm::rmsnorm(&x[n..2 * n], &w, n, 1e-5);
    assert_close("rebound rmsnorm, row 1", &got[n..2 * n], &want, 1e-5, 1e-5);
    for (i, v) in got
        .iter()
        .enumerate()
        .filter(|(i, _)| !(n..2 * n).contains(i))
    {
        assert_eq!(
            v.to_bits(),
            POISON,
            "element {i} outside the row was written"
        );
    }
    let template: Vec<f32> = g.read_vec(&tout).unwrap();
    assert!(
        template.iter().all(|v| v.to_bits() == POISON),
        "the template was written"
    );
    let misaligned = wgpu::BufferBinding {
        offset: 2,
        ..row(&out, 0, n)
    };
    assert!(k.rebind(&d, &[(&tout, misaligned)]).is_err(), "misaligned");
    assert!(
        k.rebind(&d, &[(&tout, row(&out, n, n - 4))]).is_err(),
        "short"
    );
}
