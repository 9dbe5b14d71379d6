//! CPU dequantisation and quantisation of GGML's 5-bit legacy formats (Q5_0, Q5_1) and the
//! K-quants (Q4_K, Q5_K, Q6_K), following the block layouts of ggml-common.h.
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

// The K-quant quantisers follow the algorithms of ggml's reference quantisers (ggml-quants.c
// of llama.cpp b10587: `quantize_row_q4_K_ref` / `quantize_row_q5_K_ref` with
// `make_qkx2_quants`, `quantize_row_q6_K_ref` with `make_qx_quants`), with the same search
// parameters and the same f32 operation order, so that a float input gives the bytes
// llama-quantize writes (without an importance matrix). Checked against ggml's own output
// while this was written; the tests here check the format and the error bounds.

/// ggml's `nearest_int`: round to nearest, ties to even.
fn nearest(v: f32) -> i32 {
    v.round_ties_even() as i32
}

/// Fits one sub-block `x` as `scale * q - min` with codes q in 0..=nmax and min ≥ 0 (an
/// offset that is never positive), minimising the `w`-weighted squared error: codes from the
/// range first, then `nstep + 1` trial scales `(nmax + rmin + rdelta * i) / range`, each
/// refitted by weighted least squares on its codes, keeping the best. As in ggml, a trial
/// that wins moves the offset, and later trials code against it (and the range above it).
/// Writes the codes of the fit kept to `codes` and returns (scale, min). A constant
/// non-negative block is (0, 0).
fn fit_scale_min(
    x: &[f32],
    w: &[f32],
    nmax: i32,
    (rmin, rdelta, nstep): (f32, f32, i32),
    codes: &mut [u8],
) -> (f32, f32) {
    let mut lo = x[0];
    let mut hi = x[0];
    let mut sum_w = w[0];
    let mut sum_x = w[0] * x[0];
    for i in 1..x.len() {
        lo = lo.min(x[i]);
        hi = hi.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    // The offset may only lower values: a block of positive values starts at zero.
    let mut offset = lo.min(0.0);
    if hi == offset {
        codes.fill(0);
        return (0.0, -offset);
    }
    let code =
        |v: f32, iscale: f32, offset: f32| nearest(iscale * (v - offset)).clamp(0, nmax) as u8;
    let iscale = nmax as f32 / (hi - offset);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..x.len() {
        codes[i] = code(x[i], iscale, offset);
        let diff = scale * codes[i] as f32 + offset - x[i];
        best += w[i] * (diff * diff);
    }
    let mut trial = [0u8; 32];
    let trial = &mut trial[..x.len()];
    for step in 0..=nstep {
        let iscale = (rmin + rdelta * step as f32 + nmax as f32) / (hi - offset);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..x.len() {
            trial[i] = code(x[i], iscale, offset);
            let l = trial[i] as f32;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det > 0.0 {
            let mut s = (sum_w * sum_xl - sum_x * sum_l) / det;
            let mut o = (sum_l2 * sum_x - sum_l * sum_xl) / det;
            if o > 0.0 {
                // Only a non-positive offset is representable: refit the scale through zero.
                o = 0.0;
                s = sum_xl / sum_l2;
            }
            let mut err = 0.0f32;
            for i in 0..x.len() {
                let diff = s * trial[i] as f32 + o - x[i];
                err += w[i] * (diff * diff);
            }
            if err < best {
                codes.copy_from_slice(trial);
                best = err;
                scale = s;
                offset = o;
            }
        }
    }
    (scale, -offset)
}

/// Q4_K / Q5_K (`bits` 4 or 5): eight sub-blocks of 32 fitted on their own (weights
/// rms(x) + |x|: large values matter more), their scales and mins coded in 6 bits under two
/// f16 super-scales, then every value re-coded against the coded (scale, min). Returns
/// (d, dmin, the 12 packed scale bytes, the 256 codes).
fn quant_k_affine(blk: &[f32], bits: u32) -> (f16, f16, [u8; 12], [u8; 256]) {
    let nmax = (1i32 << bits) - 1;
    // ggml's search parameters for Q4_K and Q5_K.
    let search = if bits == 4 {
        (-1.0, 0.1, 20)
    } else {
        (-0.5, 0.1, 15)
    };
    let mut codes = [0u8; 256];
    let mut fits = [(0.0f32, 0.0f32); 8];
    let mut weights = [0.0f32; 32];
    for (s, x) in blk.chunks_exact(32).enumerate() {
        let sum_x2: f32 = x.iter().fold(0.0, |a, v| a + v * v);
        let rms = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(x) {
            *w = rms + v.abs();
        }
        fits[s] = fit_scale_min(x, &weights, nmax, search, &mut codes[32 * s..32 * s + 32]);
    }
    let max_scale = fits
        .iter()
        .fold(0.0f32, |a, f| if f.0 > a { f.0 } else { a });
    let max_min = fits
        .iter()
        .fold(0.0f32, |a, f| if f.1 > a { f.1 } else { a });
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut scales = [0u8; 12];
    for (j, f) in fits.iter().enumerate() {
        let ls = (nearest(inv_scale * f.0) as u8).min(63);
        let lm = (nearest(inv_min * f.1) as u8).min(63);
        if j < 4 {
            scales[j] = ls;
            scales[j + 4] = lm;
        } else {
            scales[j + 4] = (ls & 0xF) | ((lm & 0xF) << 4);
            scales[j - 4] |= (ls >> 4) << 6;
            scales[j] |= (lm >> 4) << 6;
        }
    }
    let d = f16::from_f32(max_scale / 63.0);
    let dmin = f16::from_f32(max_min / 63.0);
    for s in 0..8 {
        let (sc, m) = scale_min_k4(s, &scales);
        let step = d.to_f32() * sc as f32;
        // A zero scale decodes every value to -min whatever the codes: keep the fit's.
        if step == 0.0 {
            continue;
        }
        let off = dmin.to_f32() * m as f32;
        for l in 0..32 {
            codes[32 * s + l] = nearest((blk[32 * s + l] + off) / step).clamp(0, nmax) as u8;
        }
    }
    (d, dmin, scales, codes)
}

/// Q4_K: eight sub-blocks of 32 with 6-bit scales and mins under two f16 super-scales.
pub fn quant_q4_k(blk: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, scales, codes) = quant_k_affine(blk, 4);
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&scales);
    // Pair j: byte l holds element 64j + l (low nibble) and 64j + 32 + l (high).
    for pair in codes.chunks_exact(64) {
        out.extend((0..32).map(|l| pair[l] | pair[l + 32] << 4));
    }
}

/// Q5_K: Q4_K's layout with a fifth bit per value (bit s of byte l: element 32s + l).
pub fn quant_q5_k(blk: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, scales, codes) = quant_k_affine(blk, 5);
    out.extend_from_slice(&d.to_le_bytes());
    out.extend_from_slice(&dmin.to_le_bytes());
    out.extend_from_slice(&scales);
    out.extend((0..32).map(|l| (0..8).fold(0u8, |b, s| b | (codes[32 * s + l] >> 4) << s)));
    for pair in codes.chunks_exact(64) {
        out.extend((0..32).map(|l| (pair[l] & 0xF) | (pair[l + 32] & 0xF) << 4));
    }
}

/// Fits 16 values as `scale * q` with signed codes q in -nmax..nmax-1, minimising the error
/// weighted by x² (large values matter most): the scale that maps the value of largest
/// magnitude to -nmax, then 18 nearby trial scales, each refitted by weighted least squares,
/// keeping the best. Writes the codes plus `nmax` to `codes`; returns the scale (0 for a block
/// of zeros).
fn fit_scale_signed(x: &[f32], nmax: i32, codes: &mut [u8]) -> f32 {
    let mut amax = 0.0f32;
    let mut max = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < 1e-15 {
        codes.fill(0);
        return 0.0;
    }
    let code = |v: f32, iscale: f32| nearest(iscale * v).clamp(-nmax, nmax - 1);
    // Weighted sums (Σ w·x·q, Σ w·q²) of the codes at `iscale`.
    let sums = |iscale: f32| {
        x.iter().fold((0.0f32, 0.0f32), |(lx, l2), &v| {
            let (w, l) = (v * v, code(v, iscale) as f32);
            (lx + w * v * l, l2 + w * l * l)
        })
    };
    let mut iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = sums(iscale);
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    let mut best_iscale = iscale;
    for step in (-9..=9).filter(|&s| s != 0) {
        iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        // The fit's error falls as Σ(w·x·q)² / Σ(w·q²) rises.
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            scale = sumlx / suml2;
            best = scale * sumlx;
            best_iscale = iscale;
        }
    }
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = (code(v, best_iscale) + nmax) as u8;
    }
    scale
}

/// Q6_K: sixteen sub-blocks of 16 with signed 8-bit scales under one f16 super-scale, 6-bit
/// values stored as a low-nibble plane and a 2-bit plane.
pub fn quant_q6_k(blk: &[f32], out: &mut Vec<u8>) {
    let mut codes = [0u8; 256];
    let mut fits = [0.0f32; 16];
    let (mut max_scale, mut max_abs) = (0.0f32, 0.0f32);
    for (s, x) in blk.chunks_exact(16).enumerate() {
        fits[s] = fit_scale_signed(x, 32, &mut codes[16 * s..16 * s + 16]);
        if fits[s].abs() > max_abs {
            max_abs = fits[s].abs();
            max_scale = fits[s];
        }
    }
    if max_abs < 1e-15 {
        out.extend_from_slice(&[0u8; 210]);
        return;
    }
    // The sub-block scale of largest magnitude codes as -128.
    let iscale = -128.0 / max_scale;
    let d = f16::from_f32(1.0 / iscale);
    let mut scales = [0i8; 16];
    for (sc, f) in scales.iter_mut().zip(&fits) {
        *sc = nearest(iscale * f).min(127) as i8;
    }
    for s in 0..16 {
        let step = d.to_f32() * scales[s] as f32;
        // A zero scale decodes to 0 whatever the codes: keep the fit's.
        if step == 0.0 {
            continue;
        }
        for l in 0..16 {
            codes[16 * s + l] = (nearest(blk[16 * s + l] / step).clamp(-32, 31) + 32) as u8;
        }
    }
    // GGML order, per 128-element half h: ql bytes l and 32 + l hold elements (l, 64 + l) and
    // (32 + l, 96 + l) as low/high nibbles; qh byte l holds the top 2 bits of elements l,
    // 32 + l, 64 + l, 96 + l in bits 0-1, 2-3, 4-5, 6-7.
    let mut ql = [0u8; 128];
    let mut qh = [0u8; 64];
    for h in 0..2 {
        let q = &codes[128 * h..128 * h + 128];
        for l in 0..32 {
            ql[64 * h + l] = (q[l] & 0xF) | (q[l + 64] & 0xF) << 4;
            ql[64 * h + 32 + l] = (q[l + 32] & 0xF) | (q[l + 96] & 0xF) << 4;
            qh[32 * h + l] =
                q[l] >> 4 | (q[l + 32] >> 4) << 2 | (q[l + 64] >> 4) << 4 | (q[l + 96] >> 4) << 6;
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(scales.iter().map(|&s| s as u8));
    out.extend_from_slice(&d.to_le_bytes());
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

    /// splitmix64 -> uniform in [0, 1).
    fn rng(seed: u64) -> impl FnMut() -> f32 {
        let mut state = seed;
        move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z >> 40) as f32 / (1u64 << 24) as f32
        }
    }

    /// `blocks` super-blocks in eight shapes that reach the fits' edge cases (uniform, all
    /// positive, near-Gaussian, rare outliers, one tiny sub-block, leading zeros, all
    /// negative, smooth or all-zero), at magnitudes from 1e-5 to 1e5.
    fn varied_blocks(blocks: usize, seed: u64) -> Vec<f32> {
        let mut next = rng(seed);
        let mut x = Vec::with_capacity(blocks * 256);
        for b in 0..blocks {
            let mag = 10f32.powi((b % 11) as i32 - 5);
            for e in 0..256 {
                let u = next() * 2.0 - 1.0;
                let v = match b % 8 {
                    0 => u,
                    1 => u * 1e-3 + 0.5,
                    2 => ((0..4).map(|_| next()).sum::<f32>() - 2.0) * 0.02,
                    3 if e % 37 == 0 => u * 40.0,
                    3 => u * 0.01,
                    4 if e / 32 == 3 => u * 1e-4,
                    4 => u,
                    5 if e < 16 => 0.0,
                    5 => u * 3.0,
                    6 => -u.abs() - 0.1,
                    _ if b % 16 == 7 => 0.0,
                    _ => (e as f32 * 0.37).sin(),
                };
                x.push(v * mag);
            }
        }
        x
    }

    type Quantiser = fn(&[f32], &mut Vec<u8>);
    type Dequantiser = fn(&[u8], &mut Vec<f32>);
    /// The K-quant quantisers with their block bytes and wick's existing dequantisers.
    const K_QUANTS: [(&str, Quantiser, usize, Dequantiser); 3] = [
        ("Q4_K", quant_q4_k, 144, dequant_q4_k),
        ("Q5_K", quant_q5_k, 176, dequant_q5_k),
        ("Q6_K", quant_q6_k, 210, dequant_q6_k),
    ];

    fn round_trip(q: Quantiser, bb: usize, dq: Dequantiser, x: &[f32]) -> Vec<f32> {
        let mut bytes = Vec::new();
        for blk in x.chunks_exact(256) {
            q(blk, &mut bytes);
        }
        assert_eq!(bytes.len(), x.len() / 256 * bb);
        let mut out = Vec::new();
        for blk in bytes.chunks_exact(bb) {
            dq(blk, &mut out);
        }
        out
    }

    /// The quantisers write the bytes of llama.cpp b10587's reference quantisers
    /// (`quantize_row_q{4,5,6}_K_ref`, what llama-quantize uses without an importance matrix).
    /// The hashes are of ggml's output for `varied_blocks(512, 0x5EED_0001)`, produced by a
    /// scratch C program that linked ggml-quants.c (not part of this repository).
    #[test]
    fn k_quantisers_match_ggml_reference() {
        let want = [
            ("Q4_K", 0x0740_474c_d2ac_10a7u64),
            ("Q5_K", 0xb466_82dd_d2a0_d848u64),
            ("Q6_K", 0xefc2_71ac_63d9_4020u64),
        ];
        let x = varied_blocks(512, 0x5EED_0001);
        for ((name, q, _, _), (_, hash)) in K_QUANTS.iter().zip(want) {
            let mut bytes = Vec::new();
            for blk in x.chunks_exact(256) {
                q(blk, &mut bytes);
            }
            // FNV-1a, 64-bit.
            let got = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
            });
            assert_eq!(got, hash, "{name}: {got:#018x}");
        }
    }

    /// Blocks that each format represents exactly come back exactly, with the scales one can
    /// work out by hand.
    #[test]
    fn exactly_representable_blocks_round_trip_exactly() {
        // Q4_K/Q5_K: sub-block s is c_s * 2^-10 * q - 63 * 2^-9 with every code 0..=nmax
        // present (so the range fixes the fit), c_s in 1..=63 with 63 the largest: d = 2^-10,
        // dmin = 2^-9, 6-bit scales c_s, mins 63.
        let c = [63u8, 1, 17, 40, 63, 5, 32, 9];
        for (name, q, bb, dq) in &K_QUANTS[..2] {
            let nmax = if *name == "Q4_K" { 15 } else { 31 };
            let x: Vec<f32> = (0..256)
                .map(|e| {
                    let code = (e % 32 * 7 % 32).min(nmax) as f32;
                    c[e / 32] as f32 * (2f32).powi(-10) * code - 63.0 * (2f32).powi(-9)
                })
                .collect();
            let mut bytes = Vec::new();
            q(&x, &mut bytes);
            assert_eq!(bytes.len(), *bb);
            assert_eq!(h(&bytes, 0), (2f32).powi(-10), "{name} d");
            assert_eq!(h(&bytes, 2), (2f32).powi(-9), "{name} dmin");
            for (s, &cs) in c.iter().enumerate() {
                assert_eq!(
                    scale_min_k4(s, &bytes[4..16]),
                    (cs, 63),
                    "{name} sub-block {s}"
                );
            }
            let mut out = Vec::new();
            dq(&bytes, &mut out);
            assert_eq!(out, x, "{name}");
        }
        // Q6_K: x = 2^-4 * q with q in -32..=31 and -32 in every sub-block: every sub-block
        // scale is the largest, coded -128 under d = -2^-4 / 128 = -2^-11.
        let x: Vec<f32> = (0..256)
            .map(|e| {
                let q = if e % 16 == 0 { -32 } else { e * 13 % 63 - 31 };
                (2f32).powi(-4) * q as f32
            })
            .collect();
        let mut bytes = Vec::new();
        quant_q6_k(&x, &mut bytes);
        assert_eq!(h(&bytes, 208), -(2f32).powi(-11), "Q6_K d");
        assert!(
            bytes[192..208].iter().all(|&s| s as i8 == -128),
            "Q6_K scales"
        );
        let mut out = Vec::new();
        dequant_q6_k(&bytes, &mut out);
        assert_eq!(out, x, "Q6_K");
        // All-zero blocks decode to zeros (no division by a zero scale).
        for (name, q, bb, dq) in &K_QUANTS {
            assert_eq!(
                round_trip(*q, *bb, *dq, &[0.0; 256]),
                vec![0.0; 256],
                "{name}"
            );
        }
    }

    /// Quantise -> dequantise error on fresh random data, uniform in [-1, 1) and
    /// near-Gaussian (sum of 12 uniforms), 256 super-blocks each: the RMS error relative to
    /// the data's RMS, and the largest error relative to the largest magnitude of its
    /// super-block. Measured over 20 seeds (range; the bounds leave 10% on the RMS, which
    /// barely varies, and about 40% on the maximum):
    ///
    /// | format | RMS, uniform | RMS, Gaussian | max / block amax | bounds |
    /// |---|---:|---:|---:|---|
    /// | Q4_K | 0.0543-0.0548 | 0.0702-0.0711 | 0.072-0.115 | 0.060, 0.078, 0.16 |
    /// | Q5_K | 0.0275-0.0277 | 0.0355-0.0359 | 0.041-0.065 | 0.0305, 0.0395, 0.09 |
    /// | Q6_K | 0.0132-0.0133 | 0.0174-0.0176 | 0.016-0.022 | 0.0147, 0.0194, 0.031 |
    ///
    /// A wrong bit or nibble order lands near 1.
    #[test]
    fn k_quant_round_trip_error() {
        let seed = std::env::var("WICK_TEST_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        // (RMS bound uniform, RMS bound Gaussian, max bound) per format, as K_QUANTS.
        let bounds = [
            (0.060, 0.078, 0.16),
            (0.0305, 0.0395, 0.09),
            (0.0147, 0.0194, 0.031),
        ];
        for ((name, q, bb, dq), (rms_u, rms_g, max_bound)) in K_QUANTS.into_iter().zip(bounds) {
            for (dist, gauss) in [("uniform", false), ("Gaussian", true)] {
                let mut next = rng(seed ^ bb as u64 ^ gauss as u64);
                let x: Vec<f32> = (0..256 * 256)
                    .map(|_| {
                        if gauss {
                            (0..12).map(|_| next()).sum::<f32>() - 6.0
                        } else {
                            next() * 2.0 - 1.0
                        }
                    })
                    .collect();
                let y = round_trip(q, bb, dq, &x);
                let (mut se, mut sx, mut worst) = (0.0f64, 0.0f64, 0.0f32);
                for (xb, yb) in x.chunks_exact(256).zip(y.chunks_exact(256)) {
                    let amax = xb.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    for (a, b) in xb.iter().zip(yb) {
                        se += ((a - b) as f64).powi(2);
                        sx += (*a as f64).powi(2);
                        worst = worst.max((a - b).abs() / amax);
                    }
                }
                let rel = (se / sx).sqrt();
                let rms_bound = if gauss { rms_g } else { rms_u };
                assert!(
                    rel <= rms_bound && worst <= max_bound,
                    "{name}, {dist} data, seed {seed}: relative RMS error {rel:.5} (bound {rms_bound}), max error {worst:.5} of the block's amax (bound {max_bound})"
                );
            }
        }
    }
}
