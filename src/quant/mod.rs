//! GGML block formats: CPU dequantisation and quantisation (bit-exact with ggml), and
//! repacking into the aligned GPU planes the kernels read.
//!
//! GGUF blocks are only 2-byte aligned (18 B Q4_0, 34 B Q8_0, 210 B Q6_K) and WGSL has no
//! 8/16-bit loads, so at load time each matrix is split into two planes of `u32` words,
//! row-major by block, holding the same bytes as the file (formats that pair two blocks'
//! scales in one word — Q8_0, Q4_0, Q5_0, Q6_K — pad an odd last block's partner):
//! - `qs`: the quantised values. Q8_0 8 words (32 bytes) per block, Q4_0/Q4_1/Q5_0/Q5_1 4
//!   words (16 bytes) per block; bytes within a block in GGML order, so for the 32-element
//!   formats word `w` byte `b` holds element `4w+b` in its low nibble and `4w+b+16` in its high.
//!   Float formats: f32 one word per element; f16/bf16 two per word (element 2i in the low half).
//! - `scales`: Q8_0/Q4_0 one f16 `d` per block, two blocks per word (block 2i low half);
//!   Q4_1 one word per block, `d` low half and `m` high half. Empty for float formats.
//!
//! The 5-bit formats keep Q4's nibble plane and move the fifth bits to `scales`:
//! - Q5_0: per pair of blocks (2i, 2i+1) three words: `qh(2i)`, `qh(2i+1)`, `d(2i) | d(2i+1) << 16`
//!   (an odd last block is padded with zeros); `qh` bit `e` is the fifth bit of element `e`.
//!   x = d * (q - 16). 22 bytes per block, as in the file.
//! - Q5_1: two words per block, `qh` then `d | m << 16`; x = d * q + m.
//!
//! K-quants (256-element super-blocks of 8 sub-blocks; one 64-element "pair" `j` covers
//! sub-blocks 2j and 2j+1) share one nibble order in `qs`: byte `32j + l` (l < 32) of a block
//! holds element `64j + l` in its low nibble and `64j + 32 + l` in its high nibble (GGML's own
//! Q4_K/Q5_K order). A GEMV lane can thus take a pair — 32 contiguous bytes, 64 contiguous
//! elements, 2 or 4 scales — as one aligned unit.
//! - Q4_K: `qs` 32 words per block (the 128 nibble bytes); `scales` 4 words per block, the
//!   first 16 bytes of the GGML block unchanged: `d | dmin << 16`, then the 12 bytes of 6-bit
//!   (scale, min) pairs. x = d*sc*q - dmin*m. 144 bytes per block.
//! - Q5_K: `qs` as Q4_K; `scales` 12 words per block: the 4 words of Q4_K, then 8 words of fifth
//!   bits, word `s` for sub-block `s` (bit `l` = element `32s + l`; GGML keeps them transposed,
//!   bit `s` of byte `l`). 176 bytes per block.
//! - Q6_K: `qs` 48 words per block, 12 per pair `j`: words 0..8 the low 4 bits in the nibble
//!   order above, words 8..12 the top 2 bits. Word `8 + i` byte `b` holds, in bits 0-1 / 2-3,
//!   the top bits of the low nibbles of byte `b` of nibble words `i` / `i + 4`, and in bits
//!   4-5 / 6-7 those of their high nibbles; so `hw & 0x33333333` (word i) and
//!   `(hw >> 2) & 0x33333333` (word i + 4) line up with the nibbles, shifted by 4 for the low
//!   ones. `scales`: per pair of blocks (2i, 2i+1) nine words: the 16 signed 8-bit scales of
//!   block 2i (scale `s`, byte `s % 4` of word `s / 4`, covers elements 16s..16s+16), those of
//!   block 2i+1, then `d(2i) | d(2i+1) << 16` (zeros pad an odd last block).
//!   x = d * sc * (q - 32). 210 bytes per block, as in the file.

pub mod kquants;

use half::{bf16, f16};

use crate::error::{Error, Result};

/// GGML tensor types wick knows (ids as in ggml.h / GGUF).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2K,
    Q3K,
    Q4K,
    Q5K,
    Q6K,
    Q8K,
    I8,
    I16,
    I32,
    I64,
    F64,
    Bf16,
    /// Any other id: readable metadata, but no kernel for it.
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> GgmlType {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            7 => GgmlType::Q5_1,
            8 => GgmlType::Q8_0,
            9 => GgmlType::Q8_1,
            10 => GgmlType::Q2K,
            11 => GgmlType::Q3K,
            12 => GgmlType::Q4K,
            13 => GgmlType::Q5K,
            14 => GgmlType::Q6K,
            15 => GgmlType::Q8K,
            24 => GgmlType::I8,
            25 => GgmlType::I16,
            26 => GgmlType::I32,
            27 => GgmlType::I64,
            28 => GgmlType::F64,
            30 => GgmlType::Bf16,
            o => GgmlType::Other(o),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q8_1 => 9,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Q8K => 15,
            GgmlType::I8 => 24,
            GgmlType::I16 => 25,
            GgmlType::I32 => 26,
            GgmlType::I64 => 27,
            GgmlType::F64 => 28,
            GgmlType::Bf16 => 30,
            GgmlType::Other(o) => o,
        }
    }

    /// (elements per block, bytes per block); None for ids whose layout is unknown.
    pub fn block_layout(self) -> Option<(usize, usize)> {
        Some(match self {
            GgmlType::F32 | GgmlType::I32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 | GgmlType::I16 => (1, 2),
            GgmlType::I8 => (1, 1),
            GgmlType::I64 | GgmlType::F64 => (1, 8),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q8_1 => (32, 36),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
            GgmlType::Q8K => (256, 292),
            GgmlType::Other(_) => return None,
        })
    }

    pub fn name(self) -> String {
        match self {
            GgmlType::Other(o) => format!("type#{o}"),
            GgmlType::Bf16 => "BF16".into(),
            GgmlType::Q2K => "Q2_K".into(),
            GgmlType::Q3K => "Q3_K".into(),
            GgmlType::Q4K => "Q4_K".into(),
            GgmlType::Q5K => "Q5_K".into(),
            GgmlType::Q6K => "Q6_K".into(),
            GgmlType::Q8K => "Q8_K".into(),
            t => format!("{t:?}"),
        }
    }

    /// Bytes of a tensor of `elems` elements, or None if not a whole number of blocks.
    pub fn bytes_for(self, elems: u64) -> Option<u64> {
        let (be, bb) = self.block_layout()?;
        if !elems.is_multiple_of(be as u64) {
            return None;
        }
        (elems / be as u64).checked_mul(bb as u64)
    }

    /// The GPU weight format for this type, if wick has kernels for it.
    pub fn weight_format(self) -> Option<WeightFormat> {
        Some(match self {
            GgmlType::F32 => WeightFormat::F32,
            GgmlType::F16 => WeightFormat::F16,
            GgmlType::Bf16 => WeightFormat::Bf16,
            GgmlType::Q8_0 => WeightFormat::Q8_0,
            GgmlType::Q4_0 => WeightFormat::Q4_0,
            GgmlType::Q4_1 => WeightFormat::Q4_1,
            GgmlType::Q5_0 => WeightFormat::Q5_0,
            GgmlType::Q5_1 => WeightFormat::Q5_1,
            GgmlType::Q4K => WeightFormat::Q4K,
            GgmlType::Q5K => WeightFormat::Q5K,
            GgmlType::Q6K => WeightFormat::Q6K,
            _ => return None,
        })
    }
}

/// Weight storage formats the GPU kernels read, as repacked planes.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum WeightFormat {
    F32,
    F16,
    Bf16,
    Q8_0,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    #[serde(rename = "q4_k")]
    Q4K,
    #[serde(rename = "q5_k")]
    Q5K,
    #[serde(rename = "q6_k")]
    Q6K,
}

impl WeightFormat {
    pub const ALL: [WeightFormat; 11] = [
        WeightFormat::F32,
        WeightFormat::F16,
        WeightFormat::Bf16,
        WeightFormat::Q8_0,
        WeightFormat::Q4_0,
        WeightFormat::Q4_1,
        WeightFormat::Q5_0,
        WeightFormat::Q5_1,
        WeightFormat::Q4K,
        WeightFormat::Q5K,
        WeightFormat::Q6K,
    ];

    /// Lower-case name as used in op names (`gemv_q4_0`) and on the CLI.
    pub fn name(self) -> &'static str {
        match self {
            WeightFormat::F32 => "f32",
            WeightFormat::F16 => "f16",
            WeightFormat::Bf16 => "bf16",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::Q4_1 => "q4_1",
            WeightFormat::Q5_0 => "q5_0",
            WeightFormat::Q5_1 => "q5_1",
            WeightFormat::Q4K => "q4_k",
            WeightFormat::Q5K => "q5_k",
            WeightFormat::Q6K => "q6_k",
        }
    }

    /// WGSL define selecting this format's loader (`FMT_Q4_0`).
    pub fn define(self) -> &'static str {
        match self {
            WeightFormat::F32 => "FMT_F32",
            WeightFormat::F16 => "FMT_F16",
            WeightFormat::Bf16 => "FMT_BF16",
            WeightFormat::Q8_0 => "FMT_Q8_0",
            WeightFormat::Q4_0 => "FMT_Q4_0",
            WeightFormat::Q4_1 => "FMT_Q4_1",
            WeightFormat::Q5_0 => "FMT_Q5_0",
            WeightFormat::Q5_1 => "FMT_Q5_1",
            WeightFormat::Q4K => "FMT_Q4_K",
            WeightFormat::Q5K => "FMT_Q5_K",
            WeightFormat::Q6K => "FMT_Q6_K",
        }
    }

    pub fn ggml(self) -> GgmlType {
        match self {
            WeightFormat::F32 => GgmlType::F32,
            WeightFormat::F16 => GgmlType::F16,
            WeightFormat::Bf16 => GgmlType::Bf16,
            WeightFormat::Q8_0 => GgmlType::Q8_0,
            WeightFormat::Q4_0 => GgmlType::Q4_0,
            WeightFormat::Q4_1 => GgmlType::Q4_1,
            WeightFormat::Q5_0 => GgmlType::Q5_0,
            WeightFormat::Q5_1 => GgmlType::Q5_1,
            WeightFormat::Q4K => GgmlType::Q4K,
            WeightFormat::Q5K => GgmlType::Q5K,
            WeightFormat::Q6K => GgmlType::Q6K,
        }
    }

    /// Elements per block (1 for float formats).
    pub fn block_size(self) -> usize {
        self.ggml().block_layout().unwrap().0
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Required divisor of the row length k: a whole number of blocks (quantised: 32, 256
    /// for the K-quants), whole u32 words (f16/bf16: 2), and 4 for f32 so kernels may use
    /// vec4 loads.
    pub fn k_multiple(self) -> usize {
        match self {
            WeightFormat::F32 => 4,
            WeightFormat::F16 | WeightFormat::Bf16 => 4,
            f => f.block_size(),
        }
    }

    /// u32 words of `qs` per row of k elements.
    pub fn qs_words_per_row(self, k: usize) -> usize {
        match self {
            WeightFormat::F32 => k,
            WeightFormat::F16 | WeightFormat::Bf16 => k / 2,
            WeightFormat::Q8_0 => k / 32 * 8,
            WeightFormat::Q4_0 | WeightFormat::Q4_1 | WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
                k / 32 * 4
            }
            WeightFormat::Q4K | WeightFormat::Q5K => k / 256 * 32,
            WeightFormat::Q6K => k / 256 * 48,
        }
    }

    /// u32 words of `scales` for an n x k matrix.
    pub fn scale_words(self, n: usize, k: usize) -> usize {
        if !self.is_quantized() {
            return 0;
        }
        let blocks = n * (k / self.block_size());
        match self {
            WeightFormat::Q8_0 | WeightFormat::Q4_0 => blocks.div_ceil(2),
            WeightFormat::Q4_1 => blocks,
            WeightFormat::Q5_0 => blocks.div_ceil(2) * 3,
            WeightFormat::Q5_1 => blocks * 2,
            WeightFormat::Q4K => blocks * 4,
            WeightFormat::Q5K => blocks * 12,
            WeightFormat::Q6K => blocks.div_ceil(2) * 9,
            WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => 0,
        }
    }
}

impl std::str::FromStr for WeightFormat {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        WeightFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::InvalidArgument(format!("unknown weight format {s:?}")))
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `elems` elements of GGML type `t` from `bytes` (exactly as ggml does).
pub fn dequantize(t: GgmlType, bytes: &[u8], elems: usize) -> Result<Vec<f32>> {
    let need = t.bytes_for(elems as u64).ok_or_else(|| {
        Error::Shape(format!(
            "{elems} elements is not a whole number of {} blocks",
            t.name()
        ))
    })?;
    if (bytes.len() as u64) < need {
        return Err(Error::Shape(format!(
            "{} data of {} bytes, need {need} for {elems} elements",
            t.name(),
            bytes.len()
        )));
    }
    let mut out = Vec::with_capacity(elems);
    match t {
        GgmlType::F32 => out.extend(
            bytes[..elems * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(
            bytes[..elems * 2]
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Bf16 => out.extend(
            bytes[..elems * 2]
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for blk in bytes[..need as usize].chunks_exact(34) {
                let d = f16_at(blk, 0);
                out.extend(blk[2..34].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for blk in bytes[..need as usize].chunks_exact(18) {
                let d = f16_at(blk, 0);
                let qs = &blk[2..18];
                out.extend(qs.iter().map(|&q| d * ((q & 0xF) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for blk in bytes[..need as usize].chunks_exact(20) {
                let d = f16_at(blk, 0);
                let m = f16_at(blk, 2);
                let qs = &blk[4..20];
                out.extend(qs.iter().map(|&q| d * (q & 0xF) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => {
            let (_, bb) = t.block_layout().expect("known layout");
            let f = match t {
                GgmlType::Q5_0 => kquants::dequant_q5_0,
                GgmlType::Q5_1 => kquants::dequant_q5_1,
                GgmlType::Q4K => kquants::dequant_q4_k,
                GgmlType::Q5K => kquants::dequant_q5_k,
                _ => kquants::dequant_q6_k,
            };
            for blk in bytes[..need as usize].chunks_exact(bb) {
                f(blk, &mut out);
            }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "dequantising {} is not implemented",
                other.name()
            )))
        }
    }
    Ok(out)
}

/// Quantises `x` into GGML blocks of type `t` (the reference ggml quantisers).
pub fn quantize(t: GgmlType, x: &[f32]) -> Result<Vec<u8>> {
    let (be, bb) = t
        .block_layout()
        .ok_or_else(|| Error::Unsupported(format!("quantising to {}", t.name())))?;
    if !x.len().is_multiple_of(be) {
        return Err(Error::Shape(format!(
            "{} values is not a whole number of {} blocks",
            x.len(),
            t.name()
        )));
    }
    let mut out = Vec::with_capacity(x.len() / be * bb);
    match t {
        GgmlType::F32 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes())),
        GgmlType::F16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes())),
        GgmlType::Bf16 => x
            .iter()
            .for_each(|v| out.extend_from_slice(&bf16::from_f32(*v).to_le_bytes())),
        GgmlType::Q8_0 => {
            for blk in x.chunks_exact(32) {
                let amax = blk.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend(blk.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for blk in x.chunks_exact(32) {
                // The value of largest magnitude, with its sign, maps to -8.
                let mut amax = 0.0f32;
                let mut max = 0.0f32;
                for &v in blk {
                    if v.abs() > amax {
                        amax = v.abs();
                        max = v;
                    }
                }
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                for j in 0..16 {
                    let q0 = ((blk[j] * id + 8.5) as i8).min(15) as u8;
                    let q1 = ((blk[j + 16] * id + 8.5) as i8).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        GgmlType::Q4_1 => {
            for blk in x.chunks_exact(32) {
                let min = blk.iter().copied().fold(f32::INFINITY, f32::min);
                let max = blk.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let d = (max - min) / 15.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
                out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
                for j in 0..16 {
                    let q0 = (((blk[j] - min) * id + 0.5) as i8).min(15) as u8;
                    let q1 = (((blk[j + 16] - min) * id + 0.5) as i8).min(15) as u8;
                    out.push(q0 | (q1 << 4));
                }
            }
        }
        GgmlType::Q5_0 => x
            .chunks_exact(32)
            .for_each(|b| kquants::quant_q5_0(b, &mut out)),
        GgmlType::Q5_1 => x
            .chunks_exact(32)
            .for_each(|b| kquants::quant_q5_1(b, &mut out)),
        GgmlType::Q4K => x
            .chunks_exact(256)
            .for_each(|b| kquants::quant_q4_k(b, &mut out)),
        GgmlType::Q5K => x
            .chunks_exact(256)
            .for_each(|b| kquants::quant_q5_k(b, &mut out)),
        GgmlType::Q6K => x
            .chunks_exact(256)
            .for_each(|b| kquants::quant_q6_k(b, &mut out)),
        other => {
            return Err(Error::Unsupported(format!(
                "quantising to {} is not implemented",
                other.name()
            )))
        }
    }
    Ok(out)
}

/// Types [`quantize`] can write.
pub const QUANTIZE_TARGETS: [GgmlType; 11] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Bf16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
];

/// Parses a llama.cpp-style type name (`q4_0`, `Q4_K`, `f16`, `bf16`; case-insensitive) into
/// one [`quantize`] can write.
pub fn parse_quant_type(name: &str) -> Result<GgmlType> {
    let want = name.to_ascii_uppercase();
    QUANTIZE_TARGETS
        .into_iter()
        .find(|t| t.name().to_ascii_uppercase() == want)
        .ok_or_else(|| {
            let names: Vec<String> = QUANTIZE_TARGETS
                .iter()
                .map(|t| t.name().to_ascii_lowercase())
                .collect();
            Error::InvalidArgument(format!(
                "unknown quantisation type {name:?} (one of {})",
                names.join(", ")
            ))
        })
}

/// The type a matrix with rows of `k` values is actually stored in when `target` is asked
/// for. K-quants whose rows are not a multiple of 256 fall back to a 32-block type as
/// llama.cpp b10587 does (`tensor_type_fallback` in src/llama-quant.cpp: Q4_K -> Q5_0,
/// Q5_K -> Q5_1, Q6_K -> Q8_0), and that to F16 when rows are not a multiple of 32 either.
/// A 32-block type asked for directly also falls back to F16 (llama.cpp refuses the tensor).
pub fn storage_type_for_rows(target: GgmlType, k: usize) -> GgmlType {
    let fits = |t: GgmlType| t.block_layout().is_some_and(|(be, _)| k.is_multiple_of(be));
    let mut t = target;
    if !fits(t) {
        t = match t {
            GgmlType::Q4K => GgmlType::Q5_0,
            GgmlType::Q5K => GgmlType::Q5_1,
            GgmlType::Q6K => GgmlType::Q8_0,
            other => other,
        };
    }
    if !fits(t) {
        t = GgmlType::F16;
    }
    t
}

/// Converts a tensor of `src` type to `target` through f32 (see [`storage_type_for_rows`]
/// for the type actually written, returned with the bytes). Data already in the target type
/// is copied unchanged rather than re-quantised.
pub fn convert(
    src: GgmlType,
    bytes: &[u8],
    elems: usize,
    row_len: usize,
    target: GgmlType,
) -> Result<(GgmlType, Vec<u8>)> {
    let t = storage_type_for_rows(target, row_len);
    if t == src {
        return Ok((t, bytes.to_vec()));
    }
    let x = dequantize(src, bytes, elems)?;
    Ok((t, quantize(t, &x)?))
}

/// A matrix of n rows by k columns repacked into GPU planes (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct PackedMatrix {
    pub format: WeightFormat,
    pub n: usize,
    pub k: usize,
    pub qs: Vec<u32>,
    pub scales: Vec<u32>,
}

impl PackedMatrix {
    /// Bytes on the GPU (both planes).
    pub fn gpu_bytes(&self) -> u64 {
        (self.qs.len() + self.scales.len()) as u64 * 4
    }
}

fn word(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Repacks an n x k matrix stored as GGML blocks (row-major, as in GGUF) into GPU planes.
pub fn pack(format: WeightFormat, bytes: &[u8], n: usize, k: usize) -> Result<PackedMatrix> {
    if k == 0 || n == 0 || !k.is_multiple_of(format.k_multiple()) {
        return Err(Error::Shape(format!(
            "a {n} x {k} {} matrix: k must be a non-zero multiple of {}",
            format.name(),
            format.k_multiple()
        )));
    }
    let t = format.ggml();
    let need = t
        .bytes_for((n * k) as u64)
        .ok_or_else(|| Error::Shape(format!("{n} x {k} is not whole {} blocks", t.name())))?
        as usize;
    if bytes.len() < need {
        return Err(Error::Shape(format!(
            "{} matrix {n} x {k} needs {need} bytes, got {}",
            t.name(),
            bytes.len()
        )));
    }
    let bytes = &bytes[..need];
    let mut qs = Vec::with_capacity(format.qs_words_per_row(k) * n);
    let mut scales = Vec::with_capacity(format.scale_words(n, k));
    match format {
        WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => {
            qs.extend(bytes.chunks_exact(4).map(word));
        }
        WeightFormat::Q8_0 | WeightFormat::Q4_0 => {
            let (bb, qoff) = if format == WeightFormat::Q8_0 {
                (34, 2)
            } else {
                (18, 2)
            };
            let mut halves: Vec<u16> = Vec::with_capacity(bytes.len() / bb);
            for blk in bytes.chunks_exact(bb) {
                halves.push(u16::from_le_bytes([blk[0], blk[1]]));
                qs.extend(blk[qoff..].chunks_exact(4).map(word));
            }
            if halves.len() % 2 == 1 {
                halves.push(0);
            }
            scales.extend(
                halves
                    .chunks_exact(2)
                    .map(|h| h[0] as u32 | (h[1] as u32) << 16),
            );
        }
        WeightFormat::Q4_1 => {
            for blk in bytes.chunks_exact(20) {
                scales.push(word(&blk[0..4]));
                qs.extend(blk[4..20].chunks_exact(4).map(word));
            }
        }
        WeightFormat::Q5_0 => {
            for pair in bytes.chunks(2 * 22) {
                let mut qh = [0u32; 2];
                let mut ds = 0u32;
                for (i, blk) in pair.chunks_exact(22).enumerate() {
                    ds |= (u16::from_le_bytes([blk[0], blk[1]]) as u32) << (16 * i);
                    qh[i] = word(&blk[2..6]);
                    qs.extend(blk[6..22].chunks_exact(4).map(word));
                }
                scales.extend([qh[0], qh[1], ds]);
            }
        }
        WeightFormat::Q5_1 => {
            for blk in bytes.chunks_exact(24) {
                scales.extend([word(&blk[4..8]), word(&blk[0..4])]);
                qs.extend(blk[8..24].chunks_exact(4).map(word));
            }
        }
        WeightFormat::Q4K => {
            for blk in bytes.chunks_exact(144) {
                scales.extend(blk[0..16].chunks_exact(4).map(word));
                qs.extend(blk[16..144].chunks_exact(4).map(word));
            }
        }
        WeightFormat::Q5K => {
            for blk in bytes.chunks_exact(176) {
                scales.extend(blk[0..16].chunks_exact(4).map(word));
                // Transpose the fifth bits: GGML's bit s of byte l becomes bit l of word s.
                let qh = &blk[16..48];
                scales.extend(
                    (0..8).map(|s| (0..32).fold(0u32, |w, l| w | (((qh[l] >> s) & 1) as u32) << l)),
                );
                qs.extend(blk[48..176].chunks_exact(4).map(word));
            }
        }
        WeightFormat::Q6K => {
            for pair in bytes.chunks(2 * 210) {
                let mut ds = 0u32;
                let mut sc = [0u32; 8];
                for (i, blk) in pair.chunks_exact(210).enumerate() {
                    ds |= (u16::from_le_bytes([blk[208], blk[209]]) as u32) << (16 * i);
                    for (w, c) in blk[192..208].chunks_exact(4).enumerate() {
                        sc[4 * i + w] = word(c);
                    }
                    pack_q6_k_quants(blk, &mut qs);
                }
                scales.extend(sc);
                scales.push(ds);
            }
        }
    }
    Ok(PackedMatrix {
        format,
        n,
        k,
        qs,
        scales,
    })
}

/// The 6-bit value (0..64) of every element of a GGML Q6_K block.
fn q6_k_values(blk: &[u8]) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (e, v) in q.iter_mut().enumerate() {
        // GGML: 128-element halves h; in each, four runs g of 32 share a byte of ql (g and
        // g + 2 as low and high nibble) and a byte of qh (bits 2g, 2g + 1).
        let (h, g, l) = (e / 128, e % 128 / 32, e % 32);
        let ql = blk[64 * h + 32 * (g & 1) + l];
        let nib = if g < 2 { ql & 0xF } else { ql >> 4 };
        let top = (blk[128 + 32 * h + l] >> (2 * g)) & 3;
        *v = nib | top << 4;
    }
    q
}

/// Appends the 48 `qs` words of one Q6_K block in the plane order (module doc).
fn pack_q6_k_quants(blk: &[u8], qs: &mut Vec<u32>) {
    let q = q6_k_values(blk);
    for j in 0..4 {
        let p = &q[64 * j..64 * j + 64];
        let nib: Vec<u8> = (0..32)
            .map(|l| (p[l] & 0xF) | (p[l + 32] & 0xF) << 4)
            .collect();
        qs.extend(nib.chunks_exact(4).map(word));
        for i in 0..4 {
            let top: Vec<u8> = (0..4)
                .map(|b| {
                    let l = 4 * i + b;
                    (p[l] >> 4)
                        | (p[l + 16] >> 4) << 2
                        | (p[l + 32] >> 4) << 4
                        | (p[l + 48] >> 4) << 6
                })
                .collect();
            qs.push(word(&top));
        }
    }
}

/// Quantises an f32 row-major n x k matrix to `format` and repacks it (tests, synthetic models).
pub fn quantize_and_pack(
    format: WeightFormat,
    x: &[f32],
    n: usize,
    k: usize,
) -> Result<PackedMatrix> {
    if x.len() != n * k {
        return Err(Error::Shape(format!(
            "{} values for a {n} x {k} matrix",
            x.len()
        )));
    }
    pack(format, &quantize(format.ggml(), x)?, n, k)
}

/// The values the GPU sees for a packed matrix (dequantised, row-major): the reference input.
pub fn unpack(m: &PackedMatrix) -> Vec<f32> {
    let mut out = Vec::with_capacity(m.n * m.k);
    match m.format {
        WeightFormat::F32 => out.extend(m.qs.iter().map(|w| f32::from_bits(*w))),
        WeightFormat::F16 => {
            for w in &m.qs {
                out.push(f16::from_bits(*w as u16).to_f32());
                out.push(f16::from_bits((*w >> 16) as u16).to_f32());
            }
        }
        WeightFormat::Bf16 => {
            for w in &m.qs {
                out.push(bf16::from_bits(*w as u16).to_f32());
                out.push(bf16::from_bits((*w >> 16) as u16).to_f32());
            }
        }
        WeightFormat::Q8_0 | WeightFormat::Q4_0 | WeightFormat::Q4_1 => {
            let blocks = m.n * m.k / 32;
            let wpb = if m.format == WeightFormat::Q8_0 { 8 } else { 4 };
            for b in 0..blocks {
                let (d, mn) = match m.format {
                    WeightFormat::Q4_1 => {
                        let s = m.scales[b];
                        (
                            f16::from_bits(s as u16).to_f32(),
                            f16::from_bits((s >> 16) as u16).to_f32(),
                        )
                    }
                    _ => {
                        let s = m.scales[b / 2] >> (16 * (b % 2));
                        (f16::from_bits(s as u16).to_f32(), 0.0)
                    }
                };
                let bytes: Vec<u8> = m.qs[b * wpb..(b + 1) * wpb]
                    .iter()
                    .flat_map(|w| w.to_le_bytes())
                    .collect();
                match m.format {
                    WeightFormat::Q8_0 => out.extend(bytes.iter().map(|&q| d * (q as i8) as f32)),
                    WeightFormat::Q4_0 => {
                        out.extend(bytes.iter().map(|&q| d * ((q & 0xF) as i32 - 8) as f32));
                        out.extend(bytes.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
                    }
                    _ => {
                        out.extend(bytes.iter().map(|&q| d * (q & 0xF) as f32 + mn));
                        out.extend(bytes.iter().map(|&q| d * (q >> 4) as f32 + mn));
                    }
                }
            }
        }
        // Below: the arithmetic of the kquants dequantisers, in the same order, so that
        // unpack(pack(b)) == dequantize(b) bit for bit.
        WeightFormat::Q5_0 | WeightFormat::Q5_1 => {
            for b in 0..m.n * m.k / 32 {
                let (qh, d, mn) = if m.format == WeightFormat::Q5_0 {
                    let base = 3 * (b / 2);
                    let d = f16::from_bits((m.scales[base + 2] >> (16 * (b % 2))) as u16);
                    (m.scales[base + b % 2], d.to_f32(), 0.0)
                } else {
                    let dm = m.scales[2 * b + 1];
                    (
                        m.scales[2 * b],
                        f16::from_bits(dm as u16).to_f32(),
                        f16::from_bits((dm >> 16) as u16).to_f32(),
                    )
                };
                let bytes = words_to_bytes(&m.qs[4 * b..4 * b + 4]);
                let value = |e: usize| {
                    let nib = if e < 16 {
                        bytes[e] & 0xF
                    } else {
                        bytes[e - 16] >> 4
                    } as u32;
                    let q = nib | ((qh >> e) & 1) << 4;
                    if m.format == WeightFormat::Q5_0 {
                        d * (q as i32 - 16) as f32
                    } else {
                        d * q as f32 + mn
                    }
                };
                out.extend((0..32).map(value));
            }
        }
        WeightFormat::Q4K | WeightFormat::Q5K => {
            let swpb = if m.format == WeightFormat::Q4K { 4 } else { 12 };
            for b in 0..m.n * m.k / 256 {
                let hdr = words_to_bytes(&m.scales[swpb * b..swpb * b + 4]);
                let d = f16::from_le_bytes([hdr[0], hdr[1]]).to_f32();
                let dmin = f16::from_le_bytes([hdr[2], hdr[3]]).to_f32();
                let nibbles = words_to_bytes(&m.qs[32 * b..32 * b + 32]);
                for s in 0..8 {
                    let (sc, mn) = kquants::scale_min_k4(s, &hdr[4..16]);
                    let (d1, m1) = (d * sc as f32, dmin * mn as f32);
                    let qh = if m.format == WeightFormat::Q5K {
                        m.scales[swpb * b + 4 + s]
                    } else {
                        0
                    };
                    out.extend((0..32).map(|l| {
                        let byte = nibbles[32 * (s / 2) + l];
                        let nib = if s % 2 == 0 { byte & 0xF } else { byte >> 4 } as u32;
                        d1 * (nib | ((qh >> l) & 1) << 4) as f32 - m1
                    }));
                }
            }
        }
        WeightFormat::Q6K => {
            for b in 0..m.n * m.k / 256 {
                let base = 9 * (b / 2);
                let d = f16::from_bits((m.scales[base + 8] >> (16 * (b % 2))) as u16).to_f32();
                let sc = words_to_bytes(&m.scales[base + 4 * (b % 2)..base + 4 * (b % 2) + 4]);
                let mut q = [0u8; 256];
                for j in 0..4 {
                    let w = &m.qs[48 * b + 12 * j..48 * b + 12 * j + 12];
                    let nib = words_to_bytes(&w[..8]);
                    for l in 0..32 {
                        let shift = 2 * (l / 16) + 8 * (l % 4);
                        let top = w[8 + (l / 4) % 4] >> shift;
                        q[64 * j + l] = (nib[l] & 0xF) | ((top & 3) as u8) << 4;
                        q[64 * j + 32 + l] = (nib[l] >> 4) | (((top >> 4) & 3) as u8) << 4;
                    }
                }
                out.extend(
                    (0..256).map(|e| d * (sc[e / 16] as i8) as f32 * (q[e] as i32 - 32) as f32),
                );
            }
        }
    }
    out
}

fn words_to_bytes(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Synthetic GGML data for tests and benchmarks: `elems` elements of a quantised type `t`
/// with uniformly random quantised bytes (values, high bits, packed sub-block scales) and
/// random f16 block scales of either sign, sized so that the weights stay within about ±1.
/// Deterministic in `seed`.
pub fn random_blocks(t: GgmlType, elems: usize, seed: u64) -> Result<Vec<u8>> {
    random_weights(t, elems, seed, 1.0)
}

/// The splitmix64 generator from `seed`: fast, deterministic, good enough for test data.
fn splitmix64(seed: u64) -> impl FnMut() -> u64 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// [`random_blocks`] with the values scaled to about ±`scale`, for any type wick can store:
/// float types get uniform values in ±`scale`. Synthetic benchmark models use it with
/// `scale` = 1/√k so activations stay of order one through many layers.
pub fn random_weights(t: GgmlType, elems: usize, seed: u64, scale: f32) -> Result<Vec<u8>> {
    let mut next = splitmix64(seed);
    let mut uniform = move || ((next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0) * scale;
    match t {
        GgmlType::F32 => {
            return Ok((0..elems).flat_map(|_| uniform().to_le_bytes()).collect());
        }
        GgmlType::F16 => {
            return Ok((0..elems)
                .flat_map(|_| f16::from_f32(uniform()).to_le_bytes())
                .collect());
        }
        GgmlType::Bf16 => {
            return Ok((0..elems)
                .flat_map(|_| bf16::from_f32(uniform()).to_le_bytes())
                .collect());
        }
        _ => {}
    }
    // (offset of each f16 field in the block, its bound)
    let fields: &[(usize, f32)] = match t {
        GgmlType::Q8_0 => &[(0, 1.0 / 127.0)],
        GgmlType::Q4_0 => &[(0, 1.0 / 8.0)],
        GgmlType::Q4_1 => &[(0, 1.0 / 15.0), (2, 0.5)],
        GgmlType::Q5_0 => &[(0, 1.0 / 16.0)],
        GgmlType::Q5_1 => &[(0, 1.0 / 31.0), (2, 0.5)],
        GgmlType::Q4K => &[(0, 1.0 / (63.0 * 15.0)), (2, 1.0 / (63.0 * 15.0))],
        GgmlType::Q5K => &[(0, 1.0 / (63.0 * 31.0)), (2, 1.0 / (63.0 * 31.0))],
        GgmlType::Q6K => &[(208, 1.0 / (128.0 * 32.0))],
        other => {
            return Err(Error::Unsupported(format!(
                "random blocks of {}",
                other.name()
            )))
        }
    };
    let need = t.bytes_for(elems as u64).ok_or_else(|| {
        Error::Shape(format!(
            "{elems} elements is not a whole number of {} blocks",
            t.name()
        ))
    })? as usize;
    let (_, bb) = t.block_layout().expect("known layout");
    let mut next = splitmix64(seed ^ 0xA076_1D64_78BD_642F);
    let mut out = Vec::with_capacity(need);
    while out.len() < need {
        out.extend_from_slice(&next().to_le_bytes());
    }
    out.truncate(need);
    for blk in out.chunks_exact_mut(bb) {
        for &(off, bound) in fields {
            let u = (next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0;
            blk[off..off + 2].copy_from_slice(&f16::from_f32(u * bound * scale).to_le_bytes());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    #[test]
    fn pack_unpack_equals_dequantize() {
        let mut s = 0x1234_5678u64;
        let (n, k) = (5, 512);
        let x: Vec<f32> = (0..n * k).map(|_| lcg(&mut s) * 3.0).collect();
        for f in &WeightFormat::ALL {
            let f = *f;
            let bytes = quantize(f.ggml(), &x).unwrap();
            let deq = dequantize(f.ggml(), &bytes, n * k).unwrap();
            let packed = pack(f, &bytes, n, k).unwrap();
            assert_eq!(unpack(&packed), deq, "{f:?}");
            assert_eq!(packed.qs.len(), f.qs_words_per_row(k) * n);
            assert_eq!(packed.scales.len(), f.scale_words(n, k));
            // The largest quantisation step a block of these inputs (|x| <= 3) can have: the
            // spacing of f16/bf16 values in [2, 4), d = max|x| / 127 (Q8_0), / 8 (Q4_0),
            // / 16 (Q5_0), (max - min) / 15 (Q4_1, Q4_K sub-blocks) or / 31 (Q5_1).
            let step = match f {
                WeightFormat::F32 => 0.0,
                WeightFormat::F16 => 2f32.powi(-9),
                WeightFormat::Bf16 => 2f32.powi(-6),
                WeightFormat::Q8_0 => 3.0 / 127.0,
                WeightFormat::Q4_0 => 3.0 / 8.0,
                WeightFormat::Q4_1 | WeightFormat::Q4K => 6.0 / 15.0,
                WeightFormat::Q5_0 => 3.0 / 16.0,
                WeightFormat::Q5_1 => 6.0 / 31.0,
                WeightFormat::Q5K => 6.0 / 31.0,
                WeightFormat::Q6K => 3.0 / 32.0,
            };
            // Largest error, in steps (measured on these inputs in brackets). Rounding to
            // nearest: half a step (f16, bf16: 0.498), plus for the block formats the f16
            // rounding of d (2^-11 relative) times |q| and of the Q4_1/Q5_1 min (2^-11 of 3):
            // under 0.57 for Q8_0 (0.517), 0.53 for Q4_1 and Q5_1 (0.497, 0.495). The
            // symmetric formats clamp: the value opposite a block's extreme lands on q = 16
            // (Q4_0) or 32 (Q5_0) and is stored one code in, a full step off (plus 8 or 16 x
            // 2^-11): 1.01 (0.984, 0.969).
            let max_steps = match f {
                WeightFormat::F32 | WeightFormat::F16 | WeightFormat::Bf16 => 0.5,
                WeightFormat::Q8_0 => 0.57,
                WeightFormat::Q4_1 | WeightFormat::Q5_1 => 0.53,
                WeightFormat::Q4_0 | WeightFormat::Q5_0 => 1.01,
                // ggml's K-quant fits (make_qkx2_quants / make_qx_quants) search the scale
                // for the lowest weighted squared error and give up the extremes for it; the
                // worst error measured on uniform data (kquants::tests::k_quant_round_trip_
                // error) is 0.115 / 0.065 / 0.022 of the block's amax, i.e. 0.86 / 1.0 / 0.70
                // of these steps.
                WeightFormat::Q4K => 1.2,
                WeightFormat::Q5K => 1.4,
                WeightFormat::Q6K => 1.0,
            };
            let max_err = x
                .iter()
                .zip(&deq)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            // Round to nearest gives errors spread evenly over +-half a step: RMS step /
            // sqrt(12) ~ 0.29 step at most (blocks with a smaller range have smaller steps, and
            // the clamped values are rare); bound it by a third of a step (measured 0.19 to
            // 0.30, Q4_0 the largest).
            let rms = (x
                .iter()
                .zip(&deq)
                .map(|(a, b)| (a - b).powi(2))
                .sum::<f32>()
                / x.len() as f32)
                .sqrt();
            let steps = |e: f32| if step > 0.0 { e / step } else { e };
            eprintln!(
                "{f:?}: max error {:.3} steps (bound {max_steps}), rms {:.3} steps",
                steps(max_err),
                steps(rms)
            );
            assert!(
                max_err <= max_steps * step,
                "{f:?}: max error {max_err} vs {max_steps} x step {step}"
            );
            assert!(
                rms <= step / 3.0,
                "{f:?}: rms {rms} vs a third of the step {step}"
            );
        }
    }

    /// Random blocks (random quant bytes, random f16 scales: every code, including ones no
    /// quantiser writes) must survive pack -> unpack exactly as ggml dequantises them, for an
    /// odd number of blocks (padded pair layouts) and several rows.
    #[test]
    fn pack_unpack_random_blocks() {
        let formats = [
            WeightFormat::Q5_0,
            WeightFormat::Q5_1,
            WeightFormat::Q4K,
            WeightFormat::Q5K,
            WeightFormat::Q6K,
        ];
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64;
        for f in formats {
            for (n, k) in [(1, 256), (3, 768), (4, 512)] {
                let bytes = random_blocks(f.ggml(), n * k, seed ^ k as u64).unwrap();
                let deq = dequantize(f.ggml(), &bytes, n * k).unwrap();
                let packed = pack(f, &bytes, n, k).unwrap();
                assert_eq!(packed.qs.len(), f.qs_words_per_row(k) * n, "{f:?}");
                assert_eq!(packed.scales.len(), f.scale_words(n, k), "{f:?}");
                // Plane bytes equal the file's, up to the scales of one odd block's missing
                // partner (Q6_K 18 bytes, Q5_0 6).
                let file = f.ggml().bytes_for((n * k) as u64).unwrap();
                assert!(
                    file <= packed.gpu_bytes() && packed.gpu_bytes() <= file + 18,
                    "{f:?}"
                );
                let got = unpack(&packed);
                assert_eq!(got.len(), deq.len());
                for (i, (a, b)) in got.iter().zip(&deq).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{f:?} seed {seed} n={n} k={k} element {i}"
                    );
                }
                // The data is not degenerate: many distinct values, finite, of order 1.
                assert!(deq.iter().all(|v| v.is_finite() && v.abs() < 4.0), "{f:?}");
                let mut distinct: Vec<u32> = deq.iter().map(|v| v.to_bits()).collect();
                distinct.sort_unstable();
                distinct.dedup();
                assert!(distinct.len() > n * k / 4, "{f:?}");
            }
        }
    }

    #[test]
    fn format_names_round_trip() {
        for f in WeightFormat::ALL {
            assert_eq!(f.name().parse::<WeightFormat>().unwrap(), f);
            assert_eq!(
                serde_json::to_string(&f).unwrap(),
                format!("\"{}\"", f.name())
            );
            assert_eq!(f.ggml().weight_format(), Some(f));
            assert_eq!(f.k_multiple() % f.ggml().block_layout().unwrap().0, 0);
        }
    }

    #[test]
    fn rejects_bad_shapes() {
        assert!(pack(WeightFormat::Q4_0, &[0u8; 18], 1, 16).is_err());
        assert!(pack(WeightFormat::Q8_0, &[0u8; 10], 1, 32).is_err());
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 19], 32).is_err());
        assert!(quantize(GgmlType::Q8_0, &[0.0; 31]).is_err());
    }
}
