//! CPU dequantisation of GGML's 5-bit legacy formats (Q5_0, Q5_1) and the K-quants (Q4_K,
//! Q5_K, Q6_K), following the block layouts of ggml-common.h.
//!
//! Q5_0 (22 B / 32): f16 d, u32 qh (bit j = high bit of element j), 16 B of nibbles (element j
//! low nibble, j+16 high nibble); x = d * (q - 16). Q5_1 (24 B / 32): f16 d, f16 m, qh, qs;
//! x = d * q + m.
//! Q4_K (144 B / 256): f16 d, f16 dmin, 12 B of 6-bit (scale, min) pairs for 8 sub-blocks of
//! 32, 128 B of nibbles; sub-block s covers elements 32s..32s+32, taking the low nibbles of
//! bytes 32(s/2).. for even s and the high nibbles for odd s; x = d*sc*q - dmin*m.
//! Q5_K (176 B / 256): as Q4_K plus 32 B of high bits (bit s of byte l is the fifth bit of
//! element 32s + l).
//! Q6_K (210 B / 256): 128 B low nibbles, 64 B of 2-bit highs, 16 signed 8-bit scales (one per
//! 16 elements), f16 d; x = d * sc * (q - 32).

use half::f16;

fn h(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// The 6-bit scale and min of sub-block `j` (0..8) from a K-quant's 12 scale bytes.
pub fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

pub fn dequant_q5_0(blk: &[u8], out: &mut Vec<f32>) {
    let d = h(blk, 0);
    let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
    let qs = &blk[6..22];
    let lo: Vec<f32> = (0..16)
        .map(|j| d * (((qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as i32 - 16) as f32)
        .collect();
    let hi: Vec<f32> = (0..16)
        .map(|j| d * (((qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - 16) as f32)
        .collect();
    out.extend(lo);
    out.extend(hi);
}

pub fn dequant_q5_1(blk: &[u8], out: &mut Vec<f32>) {
    let d = h(blk, 0);
    let m = h(blk, 2);
    let qh = u32::from_le_bytes([blk[4], blk[5], blk[6], blk[7]]);
    let qs = &blk[8..24];
    out.extend((0..16).map(|j| d * ((qs[j] & 0xF) as u32 | ((qh >> j) & 1) << 4) as f32 + m));
    out.extend((0..16).map(|j| d * ((qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as f32 + m));
}

pub fn dequant_q4_k(blk: &[u8], out: &mut Vec<f32>) {
    let d = h(blk, 0);
    let dmin = h(blk, 2);
    let scales = &blk[4..16];
    let qs = &blk[16..144];
    for s in 0..8 {
        let (sc, m) = scale_min_k4(s, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let bytes = &qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = if s % 2 == 0 { 0 } else { 4 };
        out.extend(bytes.iter().map(|&q| d1 * ((q >> shift) & 0xF) as f32 - m1));
    }
}

pub fn dequant_q5_k(blk: &[u8], out: &mut Vec<f32>) {
    let d = h(blk, 0);
    let dmin = h(blk, 2);
    let scales = &blk[4..16];
    let qh = &blk[16..48];
    let qs = &blk[48..176];
    for s in 0..8 {
        let (sc, m) = scale_min_k4(s, scales);
        let (d1, m1) = (d * sc as f32, dmin * m as f32);
        let bytes = &qs[32 * (s / 2)..32 * (s / 2) + 32];
        let shift = if s % 2 == 0 { 0 } else { 4 };
        out.extend((0..32).map(|l| {
            let q = ((bytes[l] >> shift) & 0xF) as u32 | (((qh[l] >> s) & 1) as u32) << 4;
            d1 * q as f32 - m1
        }));
    }
}

pub fn dequant_q6_k(blk: &[u8], out: &mut Vec<f32>) {
    let ql = &blk[0..128];
    let qh = &blk[128..192];
    let sc = &blk[192..208];
    let d = h(blk, 208);
    let base = out.len();
    out.resize(base + 256, 0.0);
    for half in 0..2 {
        let (ql, qh, sc) = (&ql[64 * half..], &qh[32 * half..], &sc[8 * half..]);
        let y = &mut out[base + 128 * half..base + 128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

// --- Quantisers (reference, CPU) ---------------------------------------------------------

/// Q5_0 as ggml's `quantize_row_q5_0_ref`: the value of largest magnitude maps to -16.
pub fn quant_q5_0(blk: &[f32], out: &mut Vec<u8>) {
    let (mut amax, mut max) = (0.0f32, 0.0f32);
    for &v in blk {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let q0 = ((blk[j] * id + 16.5) as i8).min(31) as u8;
        let q1 = ((blk[j + 16] * id + 16.5) as i8).min(31) as u8;
        qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
        qh |= ((q0 as u32 >> 4) & 1) << j;
        qh |= ((q1 as u32 >> 4) & 1) << (j + 16);
    }
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend_from_slice(&qs);
}

/// Q5_1 as ggml's `quantize_row_q5_1_ref`: 32 steps from the block minimum to its maximum.
pub fn quant_q5_1(blk: &[f32], out: &mut Vec<u8>) {
    let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
    let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 31.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut qh = 0u32;
    let mut qs = [0u8; 16];
    for j in 0..16 {
        let q0 = (((blk[j] - min) * id + 0.5) as u8).min(31);
        let q1 = (((blk[j + 16] - min) * id + 0.5) as u8).min(31);
        qs[j] = (q0 & 0xF) | ((q1 & 0xF) << 4);
        qh |= ((q0 as u32 >> 4) & 1) << j;
        qh |= ((q1 as u32 >> 4) & 1) << (j + 16);
    }
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend_from_slice(&qs);
}

/// The (scale, min) of one 32-value sub-block with 4-bit codes: x ≈ scale * q - min, min ≥ 0.
/// Starts from the range, then refits scale and min by least squares on the chosen codes
/// (one step of what ggml's `make_qkx2_quants` iterates), keeping the better of the two.
fn fit_sub_block(x: &[f32]) -> (f32, f32) {
    let lo = x.iter().copied().fold(0.0f32, f32::min);
    let hi = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    if hi <= lo {
        return (0.0, -lo);
    }
    let err = |scale: f32, min: f32| -> f32 {
        x.iter()
            .map(|&v| {
                let q = ((v + min) / scale).round().clamp(0.0, 15.0);
                (scale * q - min - v).powi(2)
            })
            .sum()
    };
    let (scale0, min0) = ((hi - lo) / 15.0, -lo);
    // Least-squares refit of y = scale * q - min on the codes of the first guess.
    let qs: Vec<f32> = x
        .iter()
        .map(|&v| ((v + min0) / scale0).round().clamp(0.0, 15.0))
        .collect();
    let n = x.len() as f32;
    let (sq, sqq) = (
        qs.iter().sum::<f32>(),
        qs.iter().map(|q| q * q).sum::<f32>(),
    );
    let sx: f32 = x.iter().sum();
    let sqx: f32 = qs.iter().zip(x).map(|(q, v)| q * v).sum();
    let det = n * sqq - sq * sq;
    if det > 0.0 {
        let scale = (n * sqx - sq * sx) / det;
        let min = -(sx - scale * sq) / n;
        if scale > 0.0 && min >= 0.0 && err(scale, min) < err(scale0, min0) {
            return (scale, min);
        }
    }
    (scale0, min0)
}

/// Q4_K: eight sub-blocks of 32 with 6-bit scales and mins under two f16 super-scales.
pub fn quant_q4_k(blk: &[f32], out: &mut Vec<u8>) {
    let fits: Vec<(f32, f32)> = blk.chunks_exact(32).map(fit_sub_block).collect();
    let max_scale = fits.iter().fold(0.0f32, |a, f| a.max(f.0));
    let max_min = fits.iter().fold(0.0f32, |a, f| a.max(f.1));
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    let (df, dminf) = (d.to_f32(), dmin.to_f32());
    let code = |v: f32, step: f32| -> u8 {
        if step > 0.0 {
            (v / step).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let ls: Vec<u8> = fits.iter().map(|f| code(f.0, df)).collect();
    let lm: Vec<u8> = fits.iter().map(|f| code(f.1, dminf)).collect();
    let mut scales = [0u8; 12];
    for j in 0..8 {
        if j < 4 {
            scales[j] = ls[j];
            scales[j + 4] = lm[j];
        } else {
            scales[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
            scales[j - 4] |= (ls[j] >> 4) << 6;
            scales[j] |= (lm[j] >> 4) << 6;
        }
    }
    let mut qs = [0u8; 128];
    for s in 0..8 {
        let (d1, m1) = (df * ls[s] as f32, dminf * lm[s] as f32);
        let inv = if d1 > 0.0 { 1.0 / d1 } else { 0.0 };
        let shift = if s % 2 == 0 { 0 } else { 4 };
        for l in 0..32 {
            let q = ((blk[32 * s + l] + m1) * inv).round().clamp(0.0, 15.0) as u8;
            qs[32 * (s / 2) + l] |= q << shift;
        }
    }
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&scales);
    out.extend_from_slice(&qs);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f16b(v: f32) -> [u8; 2] {
        f16::from_f32(v).to_le_bytes()
    }

    #[test]
    fn q5_0_hand_block() {
        // d = 0.5; element 0: nibble 3, high bit 1 -> 19 - 16 = 3 -> 1.5;
        // element 16: nibble 15, high bit 0 -> -1 -> -0.5; element 17: nibble 0, high 1 -> 0.
        let mut b = vec![0u8; 22];
        b[0..2].copy_from_slice(&f16b(0.5));
        let qh: u32 = 1 | (1 << 17);
        b[2..6].copy_from_slice(&qh.to_le_bytes());
        b[6] = 3 | (15 << 4);
        b[7] = 0;
        let mut out = Vec::new();
        dequant_q5_0(&b, &mut out);
        assert_eq!(out[0], 1.5);
        assert_eq!(out[16], -0.5);
        assert_eq!(out[17], 0.0);
        assert_eq!(out[1], -8.0); // nibble 0, no high bit: -16 * 0.5
    }

    #[test]
    fn q5_1_hand_block() {
        let mut b = vec![0u8; 24];
        b[0..2].copy_from_slice(&f16b(0.25));
        b[2..4].copy_from_slice(&f16b(-1.0));
        let qh: u32 = 1 << 31; // element 31 gets +16
        b[4..8].copy_from_slice(&qh.to_le_bytes());
        b[8 + 15] = 2 << 4; // element 31: nibble 2
        let mut out = Vec::new();
        dequant_q5_1(&b, &mut out);
        assert_eq!(out[31], 0.25 * 18.0 - 1.0);
        assert_eq!(out[0], -1.0);
    }

    #[test]
    fn k4_scales_unpack() {
        // Sub-blocks 0..3 use the low 6 bits; 4..7 combine nibbles with the top 2 bits.
        let mut q = [0u8; 12];
        q[0] = 0b11_000101; // sc0 = 5, top bits 3 -> high bits of sc4
        q[4] = 0b10_000111; // m0 = 7, top bits 2 -> high bits of m4
        q[8] = 0x9A; // sc4 low nibble 0xA, m4 low nibble 0x9
        assert_eq!(scale_min_k4(0, &q), (5, 7));
        assert_eq!(scale_min_k4(4, &q), (0xA | (3 << 4), 0x9 | (2 << 4)));
    }

    #[test]
    fn q4_k_hand_block() {
        let mut b = vec![0u8; 144];
        b[0..2].copy_from_slice(&f16b(2.0));
        b[2..4].copy_from_slice(&f16b(0.5));
        b[4] = 3; // sc0 = 3
        b[8] = 4; // m0 = 4
        b[5] = 1; // sc1 = 1, m1 = 0
        b[16] = 0x57; // element 0 (sub-block 0) nibble 7; element 32 (sub-block 1) nibble 5
        let mut out = Vec::new();
        dequant_q4_k(&b, &mut out);
        assert_eq!(out.len(), 256);
        assert_eq!(out[0], 2.0 * 3.0 * 7.0 - 0.5 * 4.0);
        assert_eq!(out[1], -2.0);
        assert_eq!(out[32], 2.0 * 5.0);
        assert_eq!(out[64], 0.0);
    }

    #[test]
    fn q5_k_hand_block() {
        let mut b = vec![0u8; 176];
        b[0..2].copy_from_slice(&f16b(1.0));
        b[5] = 2; // sc1 = 2
        b[16 + 3] = 1 << 1; // element 32 + 3 (sub-block 1) high bit
        b[48 + 3] = 0x60; // its nibble (high nibble of byte 3) = 6
        let mut out = Vec::new();
        dequant_q5_k(&b, &mut out);
        assert_eq!(out[35], 2.0 * 22.0);
        assert_eq!(out[3], 0.0);
    }

    #[test]
    fn q6_k_hand_block() {
        let mut b = vec![0u8; 210];
        b[208..210].copy_from_slice(&f16b(0.5));
        b[192] = 2; // scale of elements 0..16
        b[192 + 4] = (-3i8) as u8; // scale of elements 64..80
        b[0] = 0x21; // element 0 low nibble 1, element 64 low nibble 2
        b[128] = 0b00_01_00_10; // element 0 high 2 bits = 2, element 64 high bits = 1
        let mut out = Vec::new();
        dequant_q6_k(&b, &mut out);
        assert_eq!(out[0], 0.5 * 2.0 * ((1 | (2 << 4)) - 32) as f32);
        assert_eq!(out[64], 0.5 * -3.0 * ((2 | (1 << 4)) - 32) as f32);
        assert_eq!(out[1], 0.5 * 2.0 * -32.0);
    }
}
