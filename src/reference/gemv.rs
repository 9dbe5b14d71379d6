//! GEMV reference (dot products accumulated in f64).

/// `w · x` for a row-major n x k matrix `w` (the dequantised values the GPU sees).
pub fn gemv(w: &[f32], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    assert_eq!(w.len(), n * k, "gemv reference: matrix size");
    assert_eq!(x.len(), k, "gemv reference: vector size");
    w.chunks_exact(k)
        .map(|row| {
            row.iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

/// [`gemv`] with the kernel's epilogue: `+ bias[i]`, then `+ prev[i]` (accumulate).
pub fn gemv_epilogue(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    bias: Option<&[f32]>,
    prev: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = gemv(w, n, k, x);
    for (i, v) in y.iter_mut().enumerate() {
        let mut t = *v as f64;
        if let Some(b) = bias {
            t += b[i] as f64;
        }
        if let Some(p) = prev {
            t += p[i] as f64;
        }
        *v = t as f32;
    }
    y
}

/// `silu(gate · x) * (up · x)`, silu(g) = g / (1 + exp(-g)).
pub fn gemv_swiglu(gate: &[f32], up: &[f32], n: usize, k: usize, x: &[f32]) -> Vec<f32> {
    let g = gemv(gate, n, k, x);
    let u = gemv(up, n, k, x);
    g.iter()
        .zip(&u)
        .map(|(&g, &u)| {
            let g = g as f64;
            (g / (1.0 + (-g).exp()) * u as f64) as f32
        })
        .collect()
}

/// The batched GEMV: [`gemv_epilogue`] of each of the `batch` rows of `x` (f32[batch][k]),
/// `prev` (f32[batch][n], accumulate) per row; the result is f32[batch][n].
pub fn gemv_batch(
    w: &[f32],
    n: usize,
    k: usize,
    x: &[f32],
    batch: usize,
    bias: Option<&[f32]>,
    prev: Option<&[f32]>,
) -> Vec<f32> {
    assert_eq!(x.len(), batch * k, "gemv_batch reference: activation size");
    if let Some(p) = prev {
        assert_eq!(
            p.len(),
            batch * n,
            "gemv_batch reference: previous output size"
        );
    }
    (0..batch)
        .flat_map(|b| {
            let prev_b = prev.map(|p| &p[b * n..(b + 1) * n]);
            gemv_epilogue(w, n, k, &x[b * k..(b + 1) * k], bias, prev_b)
        })
        .collect()
}
