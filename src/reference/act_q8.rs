//! Reference of the 8-bit activation blocks of the integer-dot GEMV (`wgsl/act_q8.wgsl`,
//! `kernels::gemv_dot`): GGML's Q8_1 quantisation of one activation row, and the values a
//! packed row stands for.

/// Elements per activation block.
pub const BLOCK: usize = 32;

/// u32 words of a packed row of `k` elements: k/4 words of int8, then (d, d * sum(q)) per
/// block, padded to whole vec4s (the GEMV loads the pairs two blocks at a time).
pub fn packed_words(k: usize) -> usize {
    k / 4 + 4 * (k / BLOCK).div_ceil(2)
}

/// GGML's `quantize_row_q8_1` (round half away from zero; the GPU rounds half to even and
/// may differ by one step where x / d is a tie): per block of 32, d = max|x| / 127,
/// q = round(x / d), and the pair (d, d * sum(q)). Returns the packed words.
pub fn quantize(x: &[f32]) -> Vec<u32> {
    assert!(x.len().is_multiple_of(BLOCK), "act_q8 reference: k % 32");
    let k = x.len();
    let mut out = vec![0u32; packed_words(k)];
    for (b, blk) in x.chunks_exact(BLOCK).enumerate() {
        let amax = blk.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for (i, c) in blk.chunks_exact(4).enumerate() {
            let mut w = 0u32;
            for (e, v) in c.iter().enumerate() {
                let q = (v * id).round().clamp(-127.0, 127.0) as i32;
                sum += q;
                w |= ((q as i8) as u8 as u32) << (8 * e);
            }
            out[8 * b + i] = w;
        }
        out[k / 4 + 2 * b] = d.to_bits();
        out[k / 4 + 2 * b + 1] = (d * sum as f32).to_bits();
    }
    out
}

/// The int8 values, per-block d and per-block d * sum(q) of a packed row of `k` elements.
pub fn unpack_parts(words: &[u32], k: usize) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let q = words[..k / 4]
        .iter()
        .flat_map(|w| w.to_le_bytes().map(|b| b as i8))
        .collect();
    let nb = k / BLOCK;
    let d = (0..nb)
        .map(|b| f32::from_bits(words[k / 4 + 2 * b]))
        .collect();
    let s = (0..nb)
        .map(|b| f32::from_bits(words[k / 4 + 2 * b + 1]))
        .collect();
    (q, d, s)
}

/// The activations a packed row stands for: d * q per element.
pub fn dequantize(words: &[u32], k: usize) -> Vec<f32> {
    let (q, d, _) = unpack_parts(words, k);
    q.iter()
        .enumerate()
        .map(|(i, &v)| d[i / BLOCK] * v as f32)
        .collect()
}

/// Per block, the bound on |w · x - w · dequantize(quantize(x))| of one row w: each element
/// moves by at most d/2 (round to nearest, d = max|x| / 127 of its block), so a block adds at
/// most d/2 * sum |w| over the block. Returns, for each row of the row-major n x k matrix,
/// the sum over its blocks of that bound (`d` the per-block steps of the row that was used).
pub fn rounding_bound(w: &[f32], k: usize, d: &[f32]) -> Vec<f64> {
    w.chunks_exact(k)
        .map(|row| {
            row.chunks_exact(BLOCK)
                .zip(d)
                .map(|(blk, &db)| db as f64 / 2.0 * blk.iter().map(|v| v.abs() as f64).sum::<f64>())
                .sum()
        })
        .collect()
}
