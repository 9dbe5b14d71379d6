//! SwiGLU reference (in f64).

/// `out[r][i] = silu(gu[r][i]) * gu[r][n + i]` for `gu` laid out `[rows][2n]`.
pub fn swiglu(gu: &[f32], n: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(gu.len() / 2);
    for row in gu.chunks(2 * n) {
        let (gate, up) = row.split_at(n);
        out.extend(gate.iter().zip(up).map(|(&g, &u)| {
            let g = g as f64;
            (g / (1.0 + (-g).exp()) * u as f64) as f32
        }));
    }
    out
}
