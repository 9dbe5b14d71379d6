use crate::support::*;
use rand::Rng;
use wick::kernels::{argmax, Kernels};
use wick::reference;

/// The bit pattern `Gpu::poison` writes (its constant is private to the crate).
fn poison_bits() -> u32 {
    let b = poisoned(1);
    gpu().read_vec::<u32>(&b).unwrap()[0]
}

/// Runs the GPU argmax of `x` into slot 2 of a poisoned 4-slot id buffer and checks it against
/// the reference (exact: an index), and that the other slots are untouched.
fn run(k: &Kernels, x: &[f32], what: &str) -> u32 {
    let g = &k.gpu;
    let xb = g.upload("x", x).unwrap();
    let ids = g.storage_buffer("ids", 16).unwrap();
    g.poison(&ids);
    let a = argmax::argmax(k, &xb, x.len(), &ids, 2).unwrap();
    k.run(&a.dispatches.iter().collect::<Vec<_>>()).unwrap();
    let got: Vec<u32> = g.read_vec(&ids).unwrap();
    let want = reference::argmax::argmax(x).unwrap();
    assert_eq!(got[2], want, "{what}: n = {}", x.len());
    let poison = poison_bits();
    for i in [0, 1, 3] {
        assert_eq!(got[i], poison, "{what}: slot {i} written");
    }
    want
}

/// Random values with the maximum planted at several indices (ties), plus NaNs that would
/// win if NaN compared as large.
fn check(k: &Kernels, n: usize) {
    let mut r = rng();
    let mut x = rand_vec(&mut r, n, 30.0);
    run(k, &x, "random");
    let top = 31.0;
    let ties: Vec<usize> = (0..4.min(n)).map(|_| r.random_range(0..n)).collect();
    for &i in &ties {
        x[i] = top;
    }
    // NaNs before and after the planted maxima.
    for _ in 0..3.min(n.saturating_sub(1)) {
        let i = r.random_range(0..n);
        if !ties.contains(&i) {
            x[i] = f32::NAN;
        }
    }
    let got = run(k, &x, "ties");
    assert_eq!(got as usize, *ties.iter().min().unwrap(), "lowest tie wins");
    if n > 1 {
        // Ties in the last element and the first: the first wins.
        x[n - 1] = 40.0;
        x[0] = 40.0;
        assert_eq!(run(k, &x, "ends"), 0);
    }
}

#[test]
fn argmax_sizes() {
    for n in [1, 7, 1000, 49152, 151936] {
        check(kernels(), n);
    }
}

#[test]
fn argmax_ties_across_workgroups() {
    let k = kernels();
    // All equal: index 0; equal maxima only in later workgroups; +0.0 vs -0.0 tie.
    assert_eq!(run(k, &vec![0.5; 5000], "all equal"), 0);
    let mut x = vec![-1.0f32; 5000];
    // 2300 is lane 252's first element, 2305 lane 1's second: the lower lane holds the
    // higher index.
    for i in [4999, 3000, 2305, 2300] {
        x[i] = 2.0;
    }
    assert_eq!(run(k, &x, "late ties"), 2300);
    let mut z = vec![-1.0f32; 3000];
    z[2500] = 0.0;
    z[1700] = -0.0;
    assert_eq!(run(k, &z, "signed zeros"), 1700);
    // -inf below everything but NaN; all NaN gives 0.
    let mut inf = vec![f32::NEG_INFINITY; 2000];
    inf[10] = f32::NAN;
    inf[1500] = -3e38;
    assert_eq!(run(k, &inf, "-inf"), 1500);
    let mut nan = vec![f32::NAN; 1500];
    assert_eq!(run(k, &nan, "all NaN"), 0);
    nan[1234] = f32::NEG_INFINITY;
    assert_eq!(run(k, &nan, "-inf among NaN"), 1234);
}

#[test]
fn argmax_without_subgroups() {
    check(kernels_no_subgroup(), 49152);
    check(kernels_no_subgroup(), 7);
}

#[test]
fn argmax_reduce_of_external_partials() {
    let k = kernels();
    let g = &k.gpu;
    let vals = [3.0f32, 7.5, f32::NAN, 7.5, -2.0];
    let idx = [10u32, 900, 5, 20, 1];
    let pairs: Vec<u32> = vals
        .iter()
        .zip(idx)
        .flat_map(|(v, i)| [argmax::order_key(*v), i])
        .collect();
    let pb = g.upload("partials", &pairs).unwrap();
    let ids = poisoned(1);
    let d = argmax::argmax_reduce(k, &pb, vals.len(), &ids, 0).unwrap();
    k.run(&[&d]).unwrap();
    assert_eq!(g.read_vec::<u32>(&ids).unwrap()[0], 20);

    // More partials than reduce lanes, indices falling with position, equal maxima at
    // positions 3, 259, 515 (one lane's three partials): the last holds the lowest index.
    let mut r = rng();
    let n = 600;
    let mut vals = rand_vec(&mut r, n, 5.0);
    for p in [3, 259, 515] {
        vals[p] = 6.0;
    }
    let pairs: Vec<u32> = (0..n)
        .flat_map(|p| [argmax::order_key(vals[p]), 10_000 - p as u32])
        .collect();
    let pb = g.upload("partials", &pairs).unwrap();
    let d = argmax::argmax_reduce(k, &pb, n, &ids, 0).unwrap();
    k.run(&[&d]).unwrap();
    assert_eq!(g.read_vec::<u32>(&ids).unwrap()[0], 10_000 - 515);
}

#[test]
fn argmax_order_key_is_monotone() {
    let v = [
        f32::NEG_INFINITY,
        -3e38,
        -1.0,
        -1e-40,
        0.0,
        1e-40,
        1.0,
        3e38,
        f32::INFINITY,
    ];
    for w in v.windows(2) {
        assert!(argmax::order_key(w[0]) < argmax::order_key(w[1]), "{w:?}");
    }
    assert_eq!(argmax::order_key(0.0), argmax::order_key(-0.0));
    assert!(argmax::order_key(f32::NAN) < argmax::order_key(f32::NEG_INFINITY));
    assert!(argmax::order_key(-f32::NAN) < argmax::order_key(f32::NEG_INFINITY));
}

#[test]
fn argmax_rejects_bad_shapes() {
    let k = kernels();
    let g = &k.gpu;
    let x = g.upload("x", &[1.0f32; 8]).unwrap();
    let ids = g.storage_buffer("ids", 8).unwrap();
    assert!(argmax::argmax(k, &x, 9, &ids, 0).is_err());
    assert!(argmax::argmax(k, &x, 0, &ids, 0).is_err());
    assert!(argmax::argmax(k, &x, 8, &ids, 2).is_err());
    assert!(argmax::argmax(k, &x, 8, &ids, 1).is_ok());
}

/// The checked argmax (the decode step's greedy choice): the plain index while every element
/// is finite; `NON_FINITE | i` for the lowest non-finite i otherwise; the status clears, so
/// the same dispatches give a plain index again once the input is clean.
#[test]
fn argmax_checked_reports_the_first_non_finite() {
    let k = kernels();
    let g = &k.gpu;
    let mut r = rng();
    for n in [9, 5000, 151936] {
        let mut x = rand_vec(&mut r, n, 10.0);
        let xb = g.upload("x", &x).unwrap();
        let ids = g.storage_buffer("ids", 8).unwrap();
        let status = g.storage_buffer("status", 4).unwrap();
        let a = argmax::argmax_checked(k, &xb, n, &ids, 1, &status).unwrap();
        let go = |x: &[f32]| -> u32 {
            g.write(&xb, 0, x);
            g.poison(&ids);
            k.run(&a.dispatches.iter().collect::<Vec<_>>()).unwrap();
            g.read_vec::<u32>(&ids).unwrap()[1]
        };
        assert_eq!(
            go(&x),
            reference::argmax::argmax(&x).unwrap(),
            "n {n} clean"
        );
        let i = r.random_range(0..n);
        let j = r.random_range(0..n);
        x[i] = f32::NAN;
        x[j] = [f32::INFINITY, f32::NEG_INFINITY][r.random_range(0..2)];
        let want = argmax::NON_FINITE | i.min(j) as u32;
        assert_eq!(go(&x), want, "n {n}: NaN at {i}, inf at {j}");
        x[i] = 0.0;
        x[j] = 0.0;
        assert_eq!(
            go(&x),
            reference::argmax::argmax(&x).unwrap(),
            "n {n} after"
        );
    }
}
