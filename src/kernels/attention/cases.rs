//! The attention family's reference checks and bench work (see [`crate::kernels::family`]).

use std::any::Any;
use std::sync::Arc;

use super::{attention_decode, attention_prefill, choose_splits, AttentionBuffers, AttentionShape};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::family::{
    bench_input, poisoned, random_cache, run_checked, BenchCase, BenchShapes, BuiltWork, CheckCase,
    PreparedWork, Rng, Work,
};
use crate::kernels::kv_cache::KvPair;
use crate::kernels::{Dispatch, KernelSpec, Kernels, StepParams};
use crate::reference;

/// Bound on max |d| / max |want|: f16 K/V in both, f32 exp2 and sums over a few hundred
/// keys, ~1e-6; a dropped key moves outputs ~1e-3.
const TOL: f64 = 1e-4;

/// The checks of one attention pipeline: decode (pass 1, or the merge pass of its split
/// cases) or prefill, each at a few head shapes and lengths.
pub fn checks(spec: &KernelSpec, seed: u64) -> Result<Vec<CheckCase>> {
    let op = spec.op.clone();
    let mut v = Vec::new();
    match spec.family {
        "attention_decode" => {
            // (heads, kv heads, head_dim, kv_len, capacity, splits): one split writes the
            // output directly, several go through the merge pass.
            for (h, kvh, hd, len, cap, splits) in [
                (8, 2, 64, 100, 128, 1),
                (8, 2, 64, 300, 512, 4),
                (4, 4, 128, 77, 96, 3),
            ] {
                // The merge pass runs only with several splits.
                if spec.entry == "attention_merge" && splits == 1 {
                    continue;
                }
                let op = op.clone();
                let heads = Heads { h, kvh, hd, cap };
                v.push(CheckCase::new(
                    format!("{h}/{kvh} heads x {hd}, kv {len}, {splits} splits"),
                    TOL,
                    Box::new(move |kr| decode_case(kr, &op, seed, heads, len, splits)),
                ));
            }
        }
        "attention_prefill" => {
            for (h, kvh, hd, pos, toks, cap) in [(8, 2, 64, 0, 19, 32), (4, 2, 128, 40, 9, 64)] {
                let op = op.clone();
                let heads = Heads { h, kvh, hd, cap };
                v.push(CheckCase::new(
                    format!("{h}/{kvh} heads x {hd}, pos {pos}, {toks} tokens"),
                    TOL,
                    Box::new(move |kr| prefill_case(kr, &op, seed, heads, pos, toks)),
                ));
            }
        }
        other => {
            return Err(Error::Unsupported(format!(
                "no check for the {other} pipelines of the attention family"
            )))
        }
    }
    Ok(v)
}

/// Head geometry of one check case.
#[derive(Clone, Copy)]
struct Heads {
    h: usize,
    kvh: usize,
    hd: usize,
    cap: usize,
}

impl Heads {
    fn shape(&self) -> AttentionShape {
        AttentionShape {
            n_heads: self.h,
            n_kv_heads: self.kvh,
            head_dim: self.hd,
            capacity: self.cap,
            scale: 1.0 / (self.hd as f32).sqrt(),
        }
    }
}

/// Random attention inputs on the GPU: K and V caches holding `pos + toks` positions, queries
/// for `toks` tokens, the step uniform, and a poisoned output.
struct AttentionInputs {
    ck: Vec<half::f16>,
    cv: Vec<half::f16>,
    q: Vec<f32>,
    scale: f32,
    ckb: wgpu::Buffer,
    cvb: wgpu::Buffer,
    qb: wgpu::Buffer,
    step: wgpu::Buffer,
    out: wgpu::Buffer,
}

impl AttentionInputs {
    /// The CPU copy of the cache, for the reference.
    fn cache(&self, s: &Heads) -> reference::attention::Cache<'_> {
        reference::attention::Cache {
            k: &self.ck,
            v: &self.cv,
            n_kv_heads: s.kvh,
            head_dim: s.hd,
            capacity: s.cap,
        }
    }

    fn buffers(&self) -> AttentionBuffers<'_> {
        AttentionBuffers {
            q: &self.qb,
            cache: KvPair {
                k: &self.ckb,
                v: &self.cvb,
            },
            step: &self.step,
            out: &self.out,
        }
    }
}

fn attention_inputs(
    g: &Gpu,
    seed: u64,
    s: Heads,
    pos: usize,
    toks: usize,
) -> Result<AttentionInputs> {
    let mut rng = Rng(seed);
    let len = pos + toks;
    let ck = random_cache(&mut rng, s.kvh, s.hd, s.cap, len);
    let cv = random_cache(&mut rng, s.kvh, s.hd, s.cap, len);
    let q = rng.vec(toks * s.h * s.hd, 1.0);
    Ok(AttentionInputs {
        scale: 1.0 / (s.hd as f32).sqrt(),
        ckb: g.upload("cache k", &reference::kv_cache::pack(&ck))?,
        cvb: g.upload("cache v", &reference::kv_cache::pack(&cv))?,
        qb: g.upload("q", &q)?,
        step: g.uniform(
            "step",
            &StepParams {
                pos: pos as u32,
                n_tokens: toks as u32,
                kv_len: len as u32,
                ..Default::default()
            },
        )?,
        out: poisoned(g, toks * s.h * s.hd)?,
        ck,
        cv,
        q,
    })
}

fn decode_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    s: Heads,
    len: usize,
    splits: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let i = attention_inputs(&kr.gpu, seed, s, len - 1, 1)?;
    let att = attention_decode(kr, &i.buffers(), &s.shape(), splits, None)?;
    let ds: Vec<&Dispatch> = att.dispatches.iter().collect();
    let got = run_checked(kr, &ds, &i.out, op)?;
    let want = reference::attention::attention_decode(&i.q, &i.cache(&s), len, s.h, i.scale);
    Ok((got, want))
}

fn prefill_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    s: Heads,
    pos: usize,
    toks: usize,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let i = attention_inputs(&kr.gpu, seed, s, pos, toks)?;
    let d = attention_prefill(kr, &i.buffers(), &s.shape(), toks)?;
    let got = run_checked(kr, &[&d], &i.out, op)?;
    let want =
        reference::attention::attention_prefill(&i.q, &i.cache(&s), (pos, toks), s.h, i.scale);
    Ok((got, want))
}

/// The work of one decode attention bench case (pass 1 and, with several splits, the merge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeWork {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub kv_len: usize,
}

/// The bench cases of decode attention (pass 1 or the merge): each model's heads at each KV
/// length. Prefill attention is not benchmarked here.
pub fn bench(op: &str, shapes: &BenchShapes) -> Vec<BenchCase> {
    if !matches!(op, "attention_decode" | "attention_merge") {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in &shapes.decode {
        for &kv_len in &shapes.kv_lens {
            out.push(BenchCase {
                op: op.to_string(),
                model: p.name.clone(),
                role: "attention".into(),
                work: Arc::new(DecodeWork {
                    n_heads: p.n_heads,
                    n_kv_heads: p.n_kv_heads,
                    head_dim: p.head_dim,
                    kv_len,
                }),
            });
        }
    }
    out
}

impl Work for DecodeWork {
    fn bytes(&self) -> u64 {
        let w = self;
        (2 * w.n_kv_heads * w.kv_len * w.head_dim * 2 + 2 * w.n_heads * w.head_dim * 4) as u64
    }

    fn flops(&self) -> f64 {
        4.0 * (self.n_heads * self.kv_len * self.head_dim) as f64
    }

    fn shape(&self) -> String {
        let w = self;
        format!(
            "{}/{}x{} kv{}",
            w.n_heads, w.n_kv_heads, w.head_dim, w.kv_len
        )
    }

    fn prepare(&self, gpu: &Gpu) -> Result<Box<dyn PreparedWork>> {
        let w = *self;
        let words = crate::kernels::kv_cache::cache_bytes(w.n_kv_heads, w.head_dim, w.kv_len) / 4;
        // Small f16 values (0x2c00 = 0.0625 in both halves): content does not change speed.
        let cache = vec![0x2c00_2c00u32; words as usize];
        let bufs = vec![
            bench_input(gpu, "q", w.n_heads * w.head_dim)?,
            gpu.upload("cache k", &cache)?,
            gpu.upload("cache v", &cache)?,
            gpu.uniform(
                "step",
                &StepParams {
                    pos: (w.kv_len - 1) as u32,
                    n_tokens: 1,
                    kv_len: w.kv_len as u32,
                    ..Default::default()
                },
            )?,
            gpu.storage_buffer("out", (w.n_heads * w.head_dim * 4) as u64)?,
        ];
        Ok(Box::new(PreparedDecode { work: w, bufs }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct PreparedDecode {
    work: DecodeWork,
    bufs: Vec<wgpu::Buffer>,
}

impl PreparedWork for PreparedDecode {
    fn build(&self, k: &Kernels) -> Result<BuiltWork> {
        let (w, b) = (&self.work, &self.bufs);
        let splits = choose_splits(&k.gpu.caps, w.n_kv_heads, w.kv_len);
        let io = AttentionBuffers {
            q: &b[0],
            cache: KvPair { k: &b[1], v: &b[2] },
            step: &b[3],
            out: &b[4],
        };
        let shape = AttentionShape {
            n_heads: w.n_heads,
            n_kv_heads: w.n_kv_heads,
            head_dim: w.head_dim,
            capacity: w.kv_len,
            scale: 1.0 / (w.head_dim as f32).sqrt(),
        };
        let a = attention_decode(k, &io, &shape, splits, None)?;
        Ok(BuiltWork {
            dispatches: a.dispatches,
            scratch: a.scratch,
        })
    }
}
