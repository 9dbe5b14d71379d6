//! RoPE reference: angles and rotation in f64.

/// `theta^(-2i/rot_dim)` in f64.
pub fn inv_freq_f64(theta: f64, rot_dim: usize) -> Vec<f64> {
    (0..rot_dim / 2)
        .map(|i| theta.powf(-2.0 * i as f64 / rot_dim as f64))
        .collect()
}

/// Rotates rows `x[t][n_heads * head_dim]` (token `t` at position `pos + t`) and returns the
/// result; dimensions past `rot_dim` in each head pass through. Rotated pairs are `(i, i +
/// rot_dim/2)` with `half_split`, else `(2i, 2i+1)`.
pub fn rope(
    x: &[f32],
    pos: usize,
    n_heads: usize,
    head_dim: usize,
    inv_freq: &[f64],
    half_split: bool,
) -> Vec<f32> {
    let half = inv_freq.len();
    let mut out = x.to_vec();
    for (t, row) in out.chunks_mut(n_heads * head_dim).enumerate() {
        let p = (pos + t) as f64;
        for head in row.chunks_mut(head_dim) {
            for (i, &f) in inv_freq.iter().enumerate() {
                let (a, b) = if half_split {
                    (i, i + half)
                } else {
                    (2 * i, 2 * i + 1)
                };
                let (s, c) = (p * f).sin_cos();
                let (x0, x1) = (head[a] as f64, head[b] as f64);
                head[a] = (x0 * c - x1 * s) as f32;
                head[b] = (x0 * s + x1 * c) as f32;
            }
        }
    }
    out
}
