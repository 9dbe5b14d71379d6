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
