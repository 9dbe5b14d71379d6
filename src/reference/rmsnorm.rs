//! RMSNorm reference (sum of squares in f64).

/// `x / sqrt(mean(x^2) + eps) * weight` for each row of `n` elements.
pub fn rmsnorm(x: &[f32], weight: &[f32], n: usize, eps: f32) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    for (row, o) in x.chunks(n).zip(out.chunks_mut(n)) {
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = 1.0 / (ss / n as f64 + eps as f64).sqrt();
        for i in 0..n {
            o[i] = (row[i] as f64 * scale * weight[i] as f64) as f32;
        }
    }
    out
}

/// Fused add: returns (new residual, normalised).
pub fn add_rmsnorm(
    x: &[f32],
    residual: &[f32],
    weight: &[f32],
    n: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let res: Vec<f32> = residual.iter().zip(x).map(|(r, v)| r + v).collect();
    let normed = rmsnorm(&res, weight, n, eps);
    (res, normed)
}
