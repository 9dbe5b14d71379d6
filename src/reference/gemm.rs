//! GEMM reference: m independent dot-product rows (f64 accumulation), plus the epilogue.

/// `y[j] = sum_k x[k] * w[j*k + kk]` for one activation row: the GEMV a GEMM row must equal.
pub fn gemv(w: &[f32], x: &[f32], n: usize, k: usize) -> Vec<f32> {
    (0..n)
        .map(|j| {
            w[j * k..(j + 1) * k]
                .iter()
                .zip(x)
                .map(|(&a, &b)| a as f64 * b as f64)
                .sum::<f64>() as f32
        })
        .collect()
}

/// `out[r][j] = x[r] . w[j]` for `m` rows of `x` (f32 [m][k]) against `w` (f32 [n][k]):
/// row by row the GEMV above.
pub fn gemm(w: &[f32], x: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    x[..m * k]
        .chunks(k)
        .flat_map(|row| gemv(w, row, n, k))
        .collect()
}

/// Applies the GEMM epilogue to `out` (f32 [m][stride]): bias (f32[n]) on every row, then
/// write or add at columns `offset..offset + n`; other columns are left as they are.
pub fn epilogue(
    out: &mut [f32],
    result: &[f32],
    n: usize,
    bias: Option<&[f32]>,
    accumulate: bool,
    offset: usize,
    stride: usize,
) {
    for (r, row) in result.chunks(n).enumerate() {
        for (j, &v) in row.iter().enumerate() {
            let v = v as f64 + bias.map_or(0.0, |b| b[j] as f64);
            let o = &mut out[r * stride + offset + j];
            *o = if accumulate {
                (*o as f64 + v) as f32
            } else {
                v as f32
            };
        }
    }
}
