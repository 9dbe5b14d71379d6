//! The attention family's reference checks and bench work (see [`crate::kernels::family`]).

use std::any::Any;
use std::sync::Arc;

use super::{
    attention_decode, attention_prefill, choose_splits, partials_bytes, AttentionBuffers,
    AttentionShape, DecodeForm,
};
use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::family::{
    bench_copies, bench_input, check_copy, poisoned, random_cache, run_checked, BenchCase,
    BenchShapes, BuiltWork, CheckCase, PreparedWork, Rng, Work,
};
use crate::kernels::kv_cache::{KvPair, KvType};
use crate::kernels::{Dispatch, KernelSpec, Kernels, StepParams};
use crate::reference;

/// Bound on max |d| / max |want|: the cache's own values (f16, or q8_0 dequantised) in both,
/// f32 exp2 and sums over a few hundred keys, ~1e-6; a dropped key moves outputs ~1e-3.
const TOL: f64 = 1e-4;
/// The same for the cooperative-matrix prefill: q and the probabilities rounded to f16 (2^-11
/// relative) before their products.
const COOP_TOL: f64 = 4e-3;

/// The checks of one attention pipeline: decode (pass 1, or the merge pass of its split
/// cases) or prefill, each at a few head shapes and lengths, over the cache type the pipeline
/// reads (`KV_Q8`: q8_0).
pub fn checks(spec: &KernelSpec, seed: u64) -> Result<Vec<CheckCase>> {
    let op = spec.op.clone();
    let kv_type = if spec.defines.contains(&"KV_Q8") {
        KvType::Q8_0
    } else {
        KvType::F16
    };
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
                let form = if spec.entry == "attention_decode_lanes" {
                    DecodeForm::Lanes
                } else {
                    DecodeForm::Tiled
                };
                let op = op.clone();
                let heads = Heads {
                    h,
                    kvh,
                    hd,
                    cap,
                    kv_type,
                };
                // The lanes form may run a larger head (see `lanes_heads`).
                let more = if form == DecodeForm::Lanes { "+" } else { "" };
                v.push(CheckCase::new(
                    format!("{h}/{kvh} heads x {hd}{more}, kv {len}, {splits} splits"),
                    TOL,
                    Box::new(move |kr| decode_case(kr, &op, seed, heads, len, (form, splits))),
                ));
            }
        }
        "attention_prefill" => {
            // (heads, kv heads, head_dim, pos, tokens, capacity, q amplitude): a chunk within
            // one key tile, one after a cached prefix, several workgroups of tokens with full
            // and partial tiles (GQA 4), and queries 16x larger, whose scores' maxima jump
            // from tile to tile (the native kernel's rescaling).
            for (h, kvh, hd, pos, toks, cap, amp) in [
                (8, 2, 64, 0, 19, 32, 1.0),
                (4, 2, 128, 40, 9, 64, 1.0),
                (8, 2, 128, 40, 70, 128, 1.0),
                (6, 2, 64, 5, 90, 112, 16.0),
            ] {
                let op = op.clone();
                let heads = Heads {
                    h,
                    kvh,
                    hd,
                    cap,
                    kv_type,
                };
                let mut case = CheckCase::new(
                    format!("{h}/{kvh} heads x {hd}, pos {pos}, {toks} tokens, q x {amp}"),
                    TOL,
                    Box::new(move |kr| prefill_case(kr, &op, seed, heads, (pos, toks), amp)),
                );
                // Scores of magnitude ~30 (log2 units) at amplitude 16 carry f16 errors of
                // ~30 * 2^-11 each: a percent in probability, bounded accordingly (a wrong
                // rescale moves outputs by their own size).
                case.native_tolerance = if amp > 1.0 { 3e-2 } else { COOP_TOL };
                v.push(case);
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
    kv_type: KvType,
}

impl Heads {
    fn shape(&self) -> AttentionShape {
        AttentionShape {
            n_heads: self.h,
            n_kv_heads: self.kvh,
            head_dim: self.hd,
            capacity: self.cap,
            scale: 1.0 / (self.hd as f32).sqrt(),
            kv_type: self.kv_type,
        }
    }
}

/// The CPU copy of a cache's values, as the kernels read them.
enum CacheValues {
    F16 {
        k: Vec<half::f16>,
        v: Vec<half::f16>,
    },
    /// A q8_0 cache dequantised.
    F32 { k: Vec<f32>, v: Vec<f32> },
}

/// Random attention inputs on the GPU: K and V caches holding `pos + toks` positions, queries
/// for `toks` tokens, the step uniform, and a poisoned output.
struct AttentionInputs {
    cache: CacheValues,
    q: Vec<f32>,
    scale: f32,
    ckb: wgpu::Buffer,
    cvb: wgpu::Buffer,
    qb: wgpu::Buffer,
    step: wgpu::Buffer,
    out: wgpu::Buffer,
}

impl AttentionInputs {
    /// The reference's output for query rows of tokens `pos..pos + toks` over the CPU copy of
    /// the cache.
    fn want(&self, s: &Heads, (pos, toks): (usize, usize)) -> Vec<f32> {
        use reference::attention::{attention_prefill, Cache};
        let (n_kv_heads, head_dim, capacity) = (s.kvh, s.hd, s.cap);
        match &self.cache {
            CacheValues::F16 { k, v } => {
                let c = Cache {
                    k,
                    v,
                    n_kv_heads,
                    head_dim,
                    capacity,
                };
                attention_prefill(&self.q, &c, (pos, toks), s.h, self.scale)
            }
            CacheValues::F32 { k, v } => {
                let c = Cache {
                    k,
                    v,
                    n_kv_heads,
                    head_dim,
                    capacity,
                };
                attention_prefill(&self.q, &c, (pos, toks), s.h, self.scale)
            }
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
    q_amp: f32,
) -> Result<AttentionInputs> {
    let mut rng = Rng(seed);
    let len = pos + toks;
    let (cache, kw, vw) = match s.kv_type {
        KvType::F16 => {
            let k = random_cache(&mut rng, s.kvh, s.hd, s.cap, len);
            let v = random_cache(&mut rng, s.kvh, s.hd, s.cap, len);
            let (kw, vw) = (reference::kv_cache::pack(&k), reference::kv_cache::pack(&v));
            (CacheValues::F16 { k, v }, kw, vw)
        }
        KvType::Q8_0 => {
            let k = random_q8_cache(&mut rng, s, len);
            let v = random_q8_cache(&mut rng, s, len);
            let (kw, vw) = (k.to_words(), v.to_words());
            let (k, v) = (k.dequantize(), v.dequantize());
            (CacheValues::F32 { k, v }, kw, vw)
        }
    };
    let q = rng.vec(toks * s.h * s.hd, q_amp);
    Ok(AttentionInputs {
        scale: 1.0 / (s.hd as f32).sqrt(),
        ckb: g.upload("cache k", &kw)?,
        cvb: g.upload("cache v", &vw)?,
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
        cache,
        q,
    })
}

/// A q8_0 cache holding random values quantised at positions below `len`, and NaN scales
/// after, so a read past the live length shows.
fn random_q8_cache(rng: &mut Rng, s: Heads, len: usize) -> reference::kv_cache::Q8Cache {
    let mut c = reference::kv_cache::Q8Cache::filled(s.kvh, s.hd, s.cap, f32::NAN);
    for p in 0..len.min(s.cap) {
        c.write(&rng.vec(s.kvh * s.hd, 1.0), p);
    }
    c
}

fn decode_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    s: Heads,
    len: usize,
    (form, splits): (DecodeForm, usize),
) -> Result<(Vec<f32>, Vec<f32>)> {
    let s = match form {
        DecodeForm::Lanes => lanes_heads(kr, s),
        DecodeForm::Tiled => s,
    };
    let i = attention_inputs(&kr.gpu, seed, s, len - 1, 1, 1.0)?;
    let att = attention_decode(kr, &i.buffers(), &s.shape(), form, splits, None)?;
    let ds: Vec<&Dispatch> = att.dispatches.iter().collect();
    let got = run_checked(kr, &ds, &i.out, op)?;
    Ok((got, i.want(&s, (len - 1, 1))))
}

/// The lanes form splits each cache row over a whole subgroup, so which head sizes it takes
/// depends on the adapter's subgroup size (a q8_0 row of 64 does not split over 32 lanes): the
/// case's head_dim, doubled up to 256 until the adapter takes it. A shape that fits nowhere
/// keeps the case's own and fails with the kernel's reason.
fn lanes_heads(kr: &Kernels, s: Heads) -> Heads {
    let caps = &kr.gpu.caps;
    let mut t = s;
    while super::lanes_unfit(caps, &t.shape()).is_some() && t.hd < 256 {
        t.hd *= 2;
    }
    if super::lanes_unfit(caps, &t.shape()).is_some() {
        s
    } else {
        t
    }
}

fn prefill_case(
    kr: &Kernels,
    op: &str,
    seed: u64,
    s: Heads,
    (pos, toks): (usize, usize),
    q_amp: f32,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let i = attention_inputs(&kr.gpu, seed, s, pos, toks, q_amp)?;
    let d = attention_prefill(kr, &i.buffers(), &s.shape(), toks)?;
    let got = run_checked(kr, &[&d], &i.out, op)?;
    Ok((got, i.want(&s, (pos, toks))))
}

/// The work of one decode attention bench case (pass 1 and, with several splits, the merge).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeWork {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub kv_len: usize,
    pub kv_type: KvType,
}

/// The bench cases of decode attention (pass 1 over either cache type, or the merge): each
/// model's heads at each KV length. Prefill attention is not benchmarked here.
pub fn bench(op: &str, shapes: &BenchShapes) -> Vec<BenchCase> {
    let kv_type = match op {
        "attention_decode" | "attention_merge" => KvType::F16,
        "attention_decode_kv_q8" => KvType::Q8_0,
        _ => return Vec::new(),
    };
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
                    kv_type,
                }),
            });
        }
    }
    out
}

impl Work for DecodeWork {
    fn bytes(&self) -> u64 {
        let w = self;
        2 * w.n_kv_heads as u64 * w.kv_len as u64 * w.kv_type.row_bytes(w.head_dim)
            + (2 * w.n_heads * w.head_dim * 4) as u64
    }

    fn weight_bytes(&self) -> u64 {
        let w = self;
        2 * crate::kernels::kv_cache::cache_bytes(w.kv_type, w.n_kv_heads, w.head_dim, w.kv_len)
    }

    fn flops(&self) -> f64 {
        4.0 * (self.n_heads * self.kv_len * self.head_dim) as f64
    }

    fn shape(&self) -> String {
        let w = self;
        let ty = match w.kv_type {
            KvType::F16 => String::new(),
            t => format!(" {t}"),
        };
        format!(
            "{}/{}x{} kv{}{ty}",
            w.n_heads, w.n_kv_heads, w.head_dim, w.kv_len
        )
    }

    fn prepare(&self, gpu: &Gpu, copies: usize) -> Result<Box<dyn PreparedWork>> {
        let w = *self;
        let copies = copies.max(1);
        let words =
            crate::kernels::kv_cache::cache_bytes(w.kv_type, w.n_kv_heads, w.head_dim, w.kv_len)
                / 4;
        // Small values (f16: 0x2c00 = 0.0625 in both halves; q8_0: codes 0x2c and scales
        // 0x2c002c00, ~1.8e-12): content does not change speed.
        let cache = vec![0x2c00_2c00u32; words as usize];
        let cache_k = bench_copies(gpu, gpu.upload("cache k", &cache)?, copies)?;
        let cache_v = bench_copies(gpu, gpu.upload("cache v", &cache)?, copies)?;
        // One partials buffer for every copy and variant, as a session has one.
        let splits = choose_splits(&gpu.caps, w.n_kv_heads, w.kv_len);
        let partials = if splits > 1 {
            Some(gpu.storage_buffer(
                "attention partials",
                partials_bytes(w.n_heads, w.head_dim, splits),
            )?)
        } else {
            None
        };
        let bufs = vec![
            bench_input(gpu, "q", w.n_heads * w.head_dim)?,
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
        Ok(Box::new(PreparedDecode {
            work: w,
            splits,
            cache_k,
            cache_v,
            partials,
            bufs,
        }))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

struct PreparedDecode {
    work: DecodeWork,
    splits: usize,
    /// The K and V cache copies.
    cache_k: Vec<wgpu::Buffer>,
    cache_v: Vec<wgpu::Buffer>,
    partials: Option<wgpu::Buffer>,
    /// q, step, out.
    bufs: Vec<wgpu::Buffer>,
}

impl PreparedWork for PreparedDecode {
    fn copies(&self) -> usize {
        self.cache_k.len()
    }

    fn build(&self, k: &Kernels, copy: usize) -> Result<BuiltWork> {
        check_copy(copy, self.cache_k.len())?;
        let (w, b) = (&self.work, &self.bufs);
        let io = AttentionBuffers {
            q: &b[0],
            cache: KvPair {
                k: &self.cache_k[copy],
                v: &self.cache_v[copy],
            },
            step: &b[1],
            out: &b[2],
        };
        let shape = AttentionShape {
            n_heads: w.n_heads,
            n_kv_heads: w.n_kv_heads,
            head_dim: w.head_dim,
            capacity: w.kv_len,
            scale: 1.0 / (w.head_dim as f32).sqrt(),
            kv_type: w.kv_type,
        };
        let a = attention_decode(
            k,
            &io,
            &shape,
            DecodeForm::Tiled,
            self.splits,
            self.partials.as_ref(),
        )?;
        Ok(BuiltWork {
            dispatches: a.dispatches,
            scratch: a.scratch,
        })
    }
}
