//! KV-cache reference: f16 packing and the cache write, and the q8_0 cache ([`Q8Cache`]), on
//! the CPU.

use half::f16;

/// f32 to the cache's f16: round to nearest even, clamped to the finite range (as the kernel
/// clamps before packing).
pub fn to_f16(v: f32) -> f16 {
    f16::from_f32(v.clamp(-65504.0, 65504.0))
}

/// Packs f16 pairs into cache words (element `2i` in the low half).
pub fn pack(values: &[f16]) -> Vec<u32> {
    values
        .chunks(2)
        .map(|p| p[0].to_bits() as u32 | (p.get(1).map_or(0, |h| h.to_bits()) as u32) << 16)
        .collect()
}

/// Unpacks cache words into f16 values.
pub fn unpack(words: &[u32]) -> Vec<f16> {
    words
        .iter()
        .flat_map(|&w| [f16::from_bits(w as u16), f16::from_bits((w >> 16) as u16)])
        .collect()
}

/// Writes `new` (f32 `[n_tokens][n_kv_heads * head_dim]`) into `cache` (f16
/// `[n_kv_heads][capacity][head_dim]`) at positions `pos..pos + n_tokens` (those below
/// `capacity`).
pub fn kv_write(
    cache: &mut [f16],
    new: &[f32],
    pos: usize,
    n_kv_heads: usize,
    head_dim: usize,
    capacity: usize,
) {
    for (t, row) in new.chunks(n_kv_heads * head_dim).enumerate() {
        if pos + t >= capacity {
            break;
        }
        for (h, src) in row.chunks(head_dim).enumerate() {
            let dst = (h * capacity + pos + t) * head_dim;
            for (d, &v) in cache[dst..dst + head_dim].iter_mut().zip(src) {
                *d = to_f16(v);
            }
        }
    }
}

/// Values per q8_0 block (one scale each).
pub const Q8_BLOCK: usize = 32;

/// One q8_0 block as the kernels quantise it: values clamped to the finite f16 range, scale
/// `max|x| / 127`, codes `round(x / scale)` (ties to even) within +-127; all zeros give scale 0.
pub fn q8_block(x: &[f32]) -> (f32, [i8; Q8_BLOCK]) {
    assert_eq!(x.len(), Q8_BLOCK);
    let x: Vec<f32> = x.iter().map(|v| v.clamp(-65504.0, 65504.0)).collect();
    let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut codes = [0i8; Q8_BLOCK];
    for (c, v) in codes.iter_mut().zip(&x) {
        *c = (v * inv).round_ties_even().clamp(-127.0, 127.0) as i8;
    }
    (d, codes)
}

/// A q8_0 cache on the CPU: codes `[n_kv_heads][capacity][head_dim]` and one scale per
/// 32-value block of a row, `[n_kv_heads][capacity][head_dim / 32]` (the kernels' two planes,
/// see `kernels::kv_cache`).
#[derive(Debug, Clone, PartialEq)]
pub struct Q8Cache {
    pub codes: Vec<i8>,
    pub scales: Vec<f32>,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub capacity: usize,
}

impl Q8Cache {
    /// All codes 0 and every scale `scale`.
    pub fn filled(n_kv_heads: usize, head_dim: usize, capacity: usize, scale: f32) -> Q8Cache {
        let rows = n_kv_heads * capacity;
        Q8Cache {
            codes: vec![0; rows * head_dim],
            scales: vec![scale; rows * head_dim / Q8_BLOCK],
            n_kv_heads,
            head_dim,
            capacity,
        }
    }

    /// The cache read back from the kernels' words.
    pub fn from_words(
        words: &[u32],
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
    ) -> Q8Cache {
        let n = n_kv_heads * capacity * head_dim;
        let codes = words[..n / 4]
            .iter()
            .flat_map(|w| w.to_le_bytes().map(|b| b as i8))
            .collect();
        let scales = words[n / 4..n / 4 + n / Q8_BLOCK]
            .iter()
            .map(|&w| f32::from_bits(w))
            .collect();
        Q8Cache {
            codes,
            scales,
            n_kv_heads,
            head_dim,
            capacity,
        }
    }

    /// The kernels' words: the code plane, then the scale plane.
    pub fn to_words(&self) -> Vec<u32> {
        let codes = self
            .codes
            .chunks(4)
            .map(|c| u32::from_le_bytes([c[0] as u8, c[1] as u8, c[2] as u8, c[3] as u8]));
        codes
            .chain(self.scales.iter().map(|s| s.to_bits()))
            .collect()
    }

    /// Every value as code x scale, `[n_kv_heads][capacity][head_dim]`.
    pub fn dequantize(&self) -> Vec<f32> {
        self.codes
            .iter()
            .enumerate()
            .map(|(i, &c)| c as f32 * self.scales[i / Q8_BLOCK])
            .collect()
    }

    /// Quantises `new` (f32 `[n_tokens][n_kv_heads * head_dim]`) into positions
    /// `pos..pos + n_tokens` (those below `capacity`), as the kernels' q8_0 write does.
    pub fn write(&mut self, new: &[f32], pos: usize) {
        let (hd, cap) = (self.head_dim, self.capacity);
        for (t, row) in new.chunks(self.n_kv_heads * hd).enumerate() {
            if pos + t >= cap {
                break;
            }
            for (h, src) in row.chunks(hd).enumerate() {
                let r = h * cap + pos + t;
                for (b, block) in src.chunks(Q8_BLOCK).enumerate() {
                    let (d, codes) = q8_block(block);
                    self.scales[r * hd / Q8_BLOCK + b] = d;
                    let at = r * hd + b * Q8_BLOCK;
                    self.codes[at..at + Q8_BLOCK].copy_from_slice(&codes);
                }
            }
        }
    }
}
