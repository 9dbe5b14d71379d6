//! Continuous batching: up to [`MAX_SLOTS`] sequences decoded together. Each sequence lives
//! in a slot that owns a [`Session`] (its KV cache, position, cached tokens and prefill); one
//! batched decode step advances every decoding slot by a token and reads each weight once for
//! all of them ([`gemv_batch`]), while the embedding gather, RoPE, the cache write, attention
//! and the token choice run per slot on that slot's row of the batch's activations
//! ([`Kernels::rebind`] moves a dispatch built on a one-row template onto the row).
//!
//! [`Batch::step`] is the scheduler: it admits waiting requests into free slots (the free
//! slot whose cache shares the longest prefix with the prompt: a repeated system prompt or a
//! chat's earlier turns are not recomputed), prefills at most one chunk of one prompt (so a
//! long prompt delays the running sequences by one chunk per step, not by the whole prompt),
//! and submits one decode step for the decoding slots. Like [`Session`], it keeps the CPU a
//! step ahead: step t+1 is submitted before the tokens of step t are read, so a sequence that
//! stops is seen one step late and its surplus step is discarded. A finished or cancelled
//! sequence leaves the batch at once.
//!
//! The batched step is the plain sequence (RMSNorm, q/k/v, RoPE and cache write, attention, o,
//! RMSNorm, gate and up, SwiGLU, down) on float activations: none of the single-sequence
//! step's fusions or integer-dot GEMVs, so one sequence alone decodes faster through
//! [`Session`] than through a batch of one. Tokens are picked on the GPU (argmax or the
//! sampling chain); the CPU sampler ([`GenerateParams::sample_on_cpu`], a top-k the chain does
//! not take) is refused.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::kernels::attention::{self, AttentionBuffers, DecodeForm};
use crate::kernels::gemv_batch::{self, BatchEpilogue};
use crate::kernels::kv_cache::KvPair;
use crate::kernels::rope::RopeTables;
use crate::kernels::sample::{self, SampleBuffers, SampleChain};
use crate::kernels::{argmax, embedding, rmsnorm, swiglu, Dispatch, Kernels};
use crate::model::weights::SplitMatrix;
use crate::model::Model;
use crate::runtime::forward::{check_split_bias, post_qkv, DecodeFusion, PostQkvTarget, QkvRows};
use crate::runtime::sampling::Rng;
use crate::runtime::session::{picked, sample_step, Picker, SessionOptions};
use crate::runtime::stream::TextStream;
use crate::runtime::token_ring::{TokenRing, RING};
use crate::runtime::{GenerateParams, Session, Stats, StopReason, Token};

/// The most sequences one batch decodes together (the batched GEMV's row limit).
pub const MAX_SLOTS: usize = gemv_batch::MAX_BATCH;

/// A sequence of a [`Batch`], from [`Batch::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

/// What a [`Batch::step`] reports, per sequence, in order.
#[derive(Debug)]
pub enum BatchEvent {
    /// A generated token (its text may be empty while a character or a possible stop string
    /// is pending).
    Token { seq: SeqId, token: Token },
    /// The sequence ended; `text` is what was still held back (a partial character or stop
    /// string that never completed). `stats` counts its prompt, cached and generated tokens
    /// and says why it stopped.
    Done {
        seq: SeqId,
        text: String,
        stats: Stats,
    },
    /// The sequence failed (the model produced a non-finite logit, a GPU error); it has left
    /// the batch.
    Failed { seq: SeqId, error: Error },
}

/// How a batch is built.
#[derive(Debug, Clone, Copy)]
pub struct BatchOptions {
    /// Sequences decoded together, 1..=[`MAX_SLOTS`].
    pub slots: usize,
    /// KV-cache capacity of each slot in tokens.
    pub ctx: usize,
    /// Most prompt tokens prefilled between two decode steps (a long prompt is prefilled in
    /// pieces of this many, interleaved with the running sequences' steps); 0: the largest
    /// prefill chunk.
    pub prefill_piece: usize,
}

impl BatchOptions {
    /// `slots` sequences of `ctx` tokens each, prefill pieces of the largest chunk.
    pub fn new(slots: usize, ctx: usize) -> BatchOptions {
        BatchOptions {
            slots,
            ctx,
            prefill_piece: 0,
        }
    }
}

/// One step's op list: shared dispatches over the batch rows, and the places where each
/// decoding slot's own dispatches go.
enum Op {
    Shared(Dispatch),
    /// Each slot's embedding gather of its current token into its row of `h`.
    Embed,
    /// Each slot's post-projection work of layer i (q/k norms, RoPE, cache write, attention).
    Layer(usize),
    /// Each slot's token choice from its row of the logits.
    Pick,
}

/// The batch's activations: row b of each belongs to slot b.
struct BatchActivations {
    h: wgpu::Buffer,
    normed: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    qn: wgpu::Buffer,
    kn: wgpu::Buffer,
    attn: wgpu::Buffer,
    gu: wgpu::Buffer,
    act: wgpu::Buffer,
    /// `slots x logits_stride` (rows padded to the storage-offset alignment).
    logits: wgpu::Buffer,
    logits_stride: usize,
    partials: wgpu::Buffer,
}

impl BatchActivations {
    /// Slot `b`'s `vocab` logits (rows are `logits_stride` apart).
    fn logits_row(&self, b: usize, vocab: usize) -> wgpu::BufferBinding<'_> {
        wgpu::BufferBinding {
            size: std::num::NonZeroU64::new((vocab * 4) as u64),
            ..view(&self.logits, b, self.logits_stride)
        }
    }
}

/// One-row buffers the per-slot dispatches are built on before [`Kernels::rebind`] moves them
/// onto a slot's row.
struct Templates {
    h: wgpu::Buffer,
    q: wgpu::Buffer,
    k: wgpu::Buffer,
    v: wgpu::Buffer,
    qn: wgpu::Buffer,
    kn: wgpu::Buffer,
    attn: wgpu::Buffer,
    logits: wgpu::Buffer,
}

/// A slot's attention for one layer: dispatches per split count.
struct SlotLayer {
    post: Vec<Dispatch>,
    attention: Vec<(usize, Vec<Dispatch>)>,
    _scratch: Vec<attention::DecodeAttention>,
}

struct Slot {
    session: Session,
    embed: Vec<Dispatch>,
    layers: Vec<SlotLayer>,
    argmax: Vec<Dispatch>,
    _argmax: (argmax::Argmax, wgpu::Buffer),
    /// GPU sampling chains on this slot's logits row, by candidate count.
    chains: HashMap<usize, (Vec<Dispatch>, SampleChain)>,
    seq: Option<Sequence>,
    /// Submitted steps of this slot whose tokens are not read yet.
    in_flight: usize,
    /// When the slot last took a sequence (the batch's admission count then).
    used: u64,
}

/// Where a sequence is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Prompt tokens `..done` are in the cache.
    Prefill {
        done: usize,
    },
    Decode,
    /// Ended (event sent); the slot frees once its in-flight steps are read.
    Finished,
}

struct Sequence {
    id: SeqId,
    prompt: Vec<u32>,
    params: GenerateParams,
    picker: Picker,
    rng: Rng,
    decoder: Option<TextStream>,
    phase: Phase,
    emitted: usize,
    stats: Stats,
    t_decode: Instant,
    /// Indices into the session's tokens of ids consumed by submitted steps but not read yet.
    unfilled: VecDeque<usize>,
    /// The last id read that no submitted step has consumed yet.
    next: Option<u32>,
}

/// A submitted step: its ring slot and the (slot, sequence) rows it decoded.
struct Flight {
    ring: usize,
    rows: Vec<(usize, SeqId)>,
}

/// Up to [`MAX_SLOTS`] sequences decoded together; see the module docs.
pub struct Batch {
    model: Model,
    slots: Vec<Slot>,
    act: BatchActivations,
    /// A one-row logits buffer the sampling chains are built on (then moved onto a row).
    row_logits: wgpu::Buffer,
    /// The step's op list for `n` batch rows at index `n - 1`.
    steps: Vec<Vec<Op>>,
    ring: TokenRing,
    flights: VecDeque<Flight>,
    /// Added sequences waiting for a free slot, oldest first.
    waiting: VecDeque<Sequence>,
    next_id: u64,
    /// Sequences admitted into slots so far.
    admitted: u64,
    /// Largest prefill piece: the session's largest chunk.
    piece: usize,
    /// Decode steps submitted, and dispatches recorded in them.
    pub steps_run: usize,
    pub dispatches_run: usize,
    /// The batch activations' share of the device memory.
    _reservation: crate::gpu::MemoryReservation,
}

impl Batch {
    pub fn new(model: &Model, o: BatchOptions) -> Result<Batch> {
        if o.slots == 0 || o.slots > MAX_SLOTS {
            return Err(Error::InvalidArgument(format!(
                "a batch of {} sequences (1 to {MAX_SLOTS})",
                o.slots
            )));
        }
        let inner = model.inner.clone();
        let (cfg, w) = (&inner.cfg, &inner.weights);
        let k: &Kernels = inner.engine.kernels();
        let gpu = k.gpu.clone();
        let n = o.slots;
        // Rows at offsets a binding may start at: the per-slot dispatches bind row b.
        let align = (gpu.caps.min_storage_buffer_offset_alignment.max(4) / 4) as usize;
        for (what, len) in [
            ("hidden size", cfg.hidden),
            ("query width", cfg.q_dim()),
            ("key/value width", cfg.kv_dim()),
        ] {
            if n > 1 && !len.is_multiple_of(align) {
                return Err(Error::Unsupported(format!(
                    "batched decode binds each sequence's row of the activations, which this \
                     device allows at multiples of {align} floats; the model's {what} is {len}"
                )));
            }
        }
        let session_opts = SessionOptions {
            ctx: o.ctx,
            kv_type: model.kv_type(),
            fusion: DecodeFusion::for_adapter(&gpu.caps, cfg.hidden)?,
        };
        let mut sessions = Vec::with_capacity(n);
        for _ in 0..n {
            sessions.push(Session::with_options(model, session_opts)?);
        }
        let heads = *sessions[0].forward().attention_shape();
        let rope_shape = *sessions[0].forward().rope_shape();
        let max_splits = sessions[0]
            .forward()
            .split_counts()
            .into_iter()
            .max()
            .unwrap_or(1);
        let f32b = |label: &str, len: usize| gpu.storage_buffer(label, (len.max(1) * 4) as u64);
        let logits_stride = cfg.vocab.next_multiple_of(align);
        // The batch's own activations (each slot's session reserved its cache and chunk).
        let floats = n * (3 * cfg.hidden + 3 * cfg.q_dim() + 4 * cfg.kv_dim() + 3 * cfg.ffn)
            + n * logits_stride;
        let bytes =
            4 * floats as u64 + attention::partials_bytes(cfg.n_heads, cfg.head_dim, max_splits);
        let reservation = gpu.reserve(
            crate::gpu::MemoryKind::Session,
            &format!("the activations of a batch of {n} sequences ({bytes} bytes)"),
            bytes,
        )?;
        let act = BatchActivations {
            h: f32b("batch h", n * cfg.hidden)?,
            normed: f32b("batch normed", n * cfg.hidden)?,
            q: f32b("batch q", n * cfg.q_dim())?,
            k: f32b("batch k", n * cfg.kv_dim())?,
            v: f32b("batch v", n * cfg.kv_dim())?,
            qn: f32b("batch q normed", n * cfg.q_dim())?,
            kn: f32b("batch k normed", n * cfg.kv_dim())?,
            attn: f32b("batch attn", n * cfg.q_dim())?,
            gu: f32b("batch gate_up", n * 2 * cfg.ffn)?,
            act: f32b("batch ffn_act", n * cfg.ffn)?,
            logits: f32b("batch logits", n * logits_stride)?,
            logits_stride,
            partials: gpu.storage_buffer(
                "batch attention partials",
                attention::partials_bytes(cfg.n_heads, cfg.head_dim, max_splits),
            )?,
        };
        let t = Templates {
            h: f32b("row h", cfg.hidden)?,
            q: f32b("row q", cfg.q_dim())?,
            k: f32b("row k", cfg.kv_dim())?,
            v: f32b("row v", cfg.kv_dim())?,
            qn: f32b("row q normed", cfg.q_dim())?,
            kn: f32b("row k normed", cfg.kv_dim())?,
            attn: f32b("row attn", cfg.q_dim())?,
            logits: f32b("row logits", cfg.vocab)?,
        };
        let mut slots = Vec::with_capacity(n);
        for (b, session) in sessions.into_iter().enumerate() {
            let fwd = session.forward();
            let kv = session.kv_cache();
            let row_swaps = [
                (&t.h, view(&act.h, b, cfg.hidden)),
                (&t.q, view(&act.q, b, cfg.q_dim())),
                (&t.k, view(&act.k, b, cfg.kv_dim())),
                (&t.v, view(&act.v, b, cfg.kv_dim())),
                (&t.qn, view(&act.qn, b, cfg.q_dim())),
                (&t.kn, view(&act.kn, b, cfg.kv_dim())),
                (&t.attn, view(&act.attn, b, cfg.q_dim())),
                (&t.logits, act.logits_row(b, cfg.vocab)),
            ];
            let moved = |d: Dispatch| k.rebind(&d, &row_swaps);
            let mut embed = Vec::new();
            for (row0, chunk) in &w.embed.chunks {
                let d = embedding::embedding(k, chunk, &fwd.token, &t.h, 1, 0, *row0)?;
                embed.push(moved(d)?);
            }
            let rows = QkvRows {
                q: &t.q,
                k: &t.k,
                v: &t.v,
                qn: &t.qn,
                kn: &t.kn,
            };
            let (q, _) = rows.attended(cfg.qk_norm);
            let mut layers = Vec::with_capacity(cfg.n_layers);
            for (i, l) in w.layers.iter().enumerate() {
                let cache = KvPair {
                    k: &kv.k[i],
                    v: &kv.v[i],
                };
                let at = PostQkvTarget {
                    cache,
                    tables: RopeTables {
                        step: &fwd.step,
                        inv_freq: &inner.inv_freq,
                    },
                    heads: &heads,
                    rope: &rope_shape,
                };
                let post = post_qkv(k, cfg, l, &rows, at, 1, true)?
                    .into_iter()
                    .map(moved)
                    .collect::<Result<Vec<_>>>()?;
                let io = AttentionBuffers {
                    q,
                    cache,
                    step: &fwd.step,
                    out: &t.attn,
                };
                let mut attention = Vec::new();
                let mut scratch = Vec::new();
                for splits in fwd.split_counts() {
                    let partials = (splits > 1).then_some(&act.partials);
                    let a = attention::attention_decode(
                        k,
                        &io,
                        &heads,
                        DecodeForm::Tiled,
                        splits,
                        partials,
                    )?;
                    let list = a
                        .dispatches
                        .iter()
                        .map(|d| moved(d.clone()))
                        .collect::<Result<Vec<_>>>()?;
                    attention.push((splits, list));
                    scratch.push(a);
                }
                layers.push(SlotLayer {
                    post,
                    attention,
                    _scratch: scratch,
                });
            }
            let status = gpu.storage_buffer("batch argmax status", 4)?;
            let am = argmax::argmax_checked(k, &t.logits, cfg.vocab, &fwd.token, 0, &status)?;
            let argmax = am
                .dispatches
                .iter()
                .map(|d| moved(d.clone()))
                .collect::<Result<Vec<_>>>()?;
            slots.push(Slot {
                session,
                embed,
                layers,
                argmax,
                _argmax: (am, status),
                chains: HashMap::new(),
                seq: None,
                in_flight: 0,
                used: 0,
            });
        }
        let mut steps = Vec::with_capacity(n);
        for rows in 1..=n {
            steps.push(shared_ops(k, &inner, &act, rows)?);
        }
        let largest = slots[0].session.forward().chunks.last().copied();
        let piece = match o.prefill_piece {
            0 => largest.unwrap_or(512),
            p => p,
        };
        let ring = TokenRing::with_pairs(&gpu, n)?;
        Ok(Batch {
            model: model.clone(),
            slots,
            act,
            row_logits: t.logits.clone(),
            steps,
            ring,
            flights: VecDeque::new(),
            waiting: VecDeque::new(),
            next_id: 0,
            admitted: 0,
            piece,
            steps_run: 0,
            dispatches_run: 0,
            _reservation: reservation,
        })
    }
}

/// The shared part of a step over `rows` batch rows: every matmul once for all rows, the
/// norms and SwiGLU over all rows, with [`Op`] markers where each slot's own work goes.
fn shared_ops(
    k: &Kernels,
    inner: &crate::model::ModelInner,
    a: &BatchActivations,
    rows: usize,
) -> Result<Vec<Op>> {
    let (cfg, w) = (&inner.cfg, &inner.weights);
    let eps = cfg.rms_eps;
    let mut ops = vec![Op::Embed];
    let matmul = |ops: &mut Vec<Op>,
                  m: &SplitMatrix,
                  x: &wgpu::Buffer,
                  out: &wgpu::Buffer,
                  epi: BatchEpilogue|
     -> Result<()> {
        check_split_bias(m, epi.bias.is_some())?;
        for (row0, chunk) in &m.chunks {
            let e = BatchEpilogue {
                out_offset: epi.out_offset + row0,
                out_stride: Some(epi.out_stride.unwrap_or(m.n)),
                ..epi
            };
            ops.push(Op::Shared(gemv_batch::gemv_batch(
                k, chunk, x, rows, out, e,
            )?));
        }
        Ok(())
    };
    let plain = |bias| BatchEpilogue {
        bias,
        accumulate: false,
        out_offset: 0,
        out_stride: None,
    };
    let residual = BatchEpilogue {
        accumulate: true,
        ..plain(None)
    };
    for (i, l) in w.layers.iter().enumerate() {
        let norm = rmsnorm::rmsnorm(k, &a.h, (&l.attn_norm, eps), &a.normed, cfg.hidden, rows)?;
        ops.push(Op::Shared(norm));
        matmul(&mut ops, &l.wq, &a.normed, &a.q, plain(l.bq.as_ref()))?;
        matmul(&mut ops, &l.wk, &a.normed, &a.k, plain(l.bk.as_ref()))?;
        matmul(&mut ops, &l.wv, &a.normed, &a.v, plain(l.bv.as_ref()))?;
        ops.push(Op::Layer(i));
        matmul(&mut ops, &l.wo, &a.attn, &a.h, residual)?;
        let norm = rmsnorm::rmsnorm(k, &a.h, (&l.ffn_norm, eps), &a.normed, cfg.hidden, rows)?;
        ops.push(Op::Shared(norm));
        let ffn = cfg.ffn;
        let half = |out_offset| BatchEpilogue {
            out_offset,
            out_stride: Some(2 * ffn),
            ..plain(None)
        };
        matmul(&mut ops, &l.w_gate, &a.normed, &a.gu, half(0))?;
        matmul(&mut ops, &l.w_up, &a.normed, &a.gu, half(ffn))?;
        ops.push(Op::Shared(swiglu::swiglu(k, &a.gu, &a.act, rows, ffn)?));
        matmul(&mut ops, &l.w_down, &a.act, &a.h, residual)?;
    }
    let norm = rmsnorm::rmsnorm(k, &a.h, (&w.output_norm, eps), &a.normed, cfg.hidden, rows)?;
    ops.push(Op::Shared(norm));
    let head = BatchEpilogue {
        out_stride: Some(a.logits_stride),
        ..plain(None)
    };
    matmul(&mut ops, w.lm_head(), &a.normed, &a.logits, head)?;
    ops.push(Op::Pick);
    Ok(ops)
}

impl Batch {
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Slots (sequences decoded together at most).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// KV-cache capacity of each slot in tokens.
    pub fn capacity(&self) -> usize {
        self.slots[0].session.capacity()
    }

    /// Slots holding no sequence (nor a finished one's in-flight steps), less the sequences
    /// waiting for one.
    pub fn free_slots(&self) -> usize {
        let free = self
            .slots
            .iter()
            .filter(|s| s.seq.is_none() && s.in_flight == 0)
            .count();
        free.saturating_sub(self.waiting.len())
    }

    /// Sequences added and not yet ended (waiting, prefilling or decoding).
    pub fn active(&self) -> usize {
        let running = self
            .slots
            .iter()
            .filter(|s| s.seq.as_ref().is_some_and(|q| q.phase != Phase::Finished))
            .count();
        running + self.waiting.len()
    }

    /// Sequences waiting for a slot or prefilling their prompt.
    pub fn prefilling(&self) -> usize {
        let prefilling = self
            .slots
            .iter()
            .filter(|s| matches!(s.seq.as_ref().map(|q| q.phase), Some(Phase::Prefill { .. })))
            .count();
        prefilling + self.waiting.len()
    }

    /// Nothing to do: no sequence and no step in flight.
    pub fn is_idle(&self) -> bool {
        self.active() == 0 && self.flights.is_empty()
    }

    /// Tokens held in the slots' caches, all together.
    pub fn cached_tokens(&self) -> usize {
        self.slots.iter().map(|s| s.session.tokens().len()).sum()
    }

    /// Adds a sequence: `prompt` (checked now: empty, ids outside the vocabulary, longer than
    /// a slot's context) to be generated after with `params`. It starts at a later
    /// [`Self::step`], when a slot is free.
    pub fn add(&mut self, prompt: &[u32], params: GenerateParams) -> Result<SeqId> {
        self.slots[0].session.check_prompt(prompt)?;
        let vocab = self.model.inner.cfg.vocab;
        let picker = Picker::for_params(&params, vocab);
        if picker == Picker::Cpu {
            return Err(Error::Unsupported(format!(
                "batched decoding samples on the GPU, which keeps at most {} candidates: top_k \
                 {} (or sampling on the CPU) needs a single sequence",
                sample::K_MAX,
                params.sampling.top_k
            )));
        }
        let id = SeqId(self.next_id);
        self.next_id += 1;
        let decoder = TextStream::for_model(&self.model, &params.stop);
        self.waiting.push_back(Sequence {
            id,
            prompt: prompt.to_vec(),
            rng: Rng::new(params.sampling.seed),
            params,
            picker,
            decoder,
            phase: Phase::Prefill { done: 0 },
            emitted: 0,
            stats: Stats {
                prompt_tokens: prompt.len(),
                sampler: Some(picker),
                ..Default::default()
            },
            t_decode: Instant::now(),
            unfilled: VecDeque::new(),
            next: None,
        });
        Ok(id)
    }

    /// Ends a sequence without an event (its client went away); its slot frees once its
    /// in-flight steps are read. Unknown or ended ids are ignored.
    pub fn cancel(&mut self, id: SeqId) {
        self.waiting.retain(|q| q.id != id);
        for s in &mut self.slots {
            if let Some(q) = s.seq.as_mut().filter(|q| q.id == id) {
                q.phase = Phase::Finished;
            }
        }
    }

    /// One round of scheduling: admits waiting sequences into free slots, prefills one chunk
    /// of one prompt, submits a decode step for the decoding slots and reads the previous
    /// one. Returns the tokens and ends it saw, in order.
    pub fn step(&mut self) -> Result<Vec<BatchEvent>> {
        let mut events = Vec::new();
        self.release_finished();
        self.admit();
        self.prefill_one(&mut events);
        let submitted = self.submit_decode(&mut events)?;
        // Read the oldest step once a newer one keeps the GPU busy, or when nothing new went.
        if self.flights.len() > 1 || (!submitted && !self.flights.is_empty()) {
            self.read_flight(&mut events)?;
        }
        self.release_finished();
        Ok(events)
    }

    /// Frees the slots of ended sequences whose steps are all read.
    fn release_finished(&mut self) {
        for s in &mut self.slots {
            let ended = s.seq.as_ref().is_some_and(|q| q.phase == Phase::Finished);
            if ended && s.in_flight == 0 {
                if let Some(q) = s.seq.take() {
                    // Ids consumed by steps whose tokens were never read are unknown: the
                    // cache is trusted only up to them.
                    if let Some(&first) = q.unfilled.front() {
                        s.session.tokens_mut().truncate(first);
                    }
                }
            }
        }
    }

    /// Moves waiting sequences into free slots, each into the free slot whose cache shares
    /// the longest prefix with its prompt, else the least recently used one (whose cached
    /// sequence is the least likely to be continued).
    fn admit(&mut self) {
        while let Some(q) = self.waiting.front() {
            let best = self
                .slots
                .iter()
                .enumerate()
                .filter(|(_, s)| s.seq.is_none() && s.in_flight == 0)
                .map(|(i, s)| (common_prefix(s.session.tokens(), &q.prompt), s.used, i))
                .max_by_key(|&(c, used, i)| (c, std::cmp::Reverse((used, i))));
            let Some((_, _, i)) = best else {
                return;
            };
            let mut q = self.waiting.pop_front().expect("front exists");
            self.admitted += 1;
            let s = &mut self.slots[i];
            s.used = self.admitted;
            // The last prompt token is always recomputed: its logits pick the first token.
            let reused = common_prefix(s.session.tokens(), &q.prompt).min(q.prompt.len() - 1);
            q.stats.prefilled_tokens = q.prompt.len() - reused;
            q.phase = Phase::Prefill { done: reused };
            s.seq = Some(q);
        }
    }

    /// Prefills one piece of the oldest prefilling sequence; on its last piece, its first
    /// token is picked and read (one blocking read per sequence).
    fn prefill_one(&mut self, events: &mut Vec<BatchEvent>) {
        let piece = self.piece;
        let eos = self.model.eos_ids();
        let Some(s) = self
            .slots
            .iter_mut()
            .filter(|s| matches!(s.seq.as_ref().map(|q| q.phase), Some(Phase::Prefill { .. })))
            .min_by_key(|s| s.seq.as_ref().map(|q| q.id))
        else {
            return;
        };
        let Slot { session, seq, .. } = s;
        let q = seq.as_mut().expect("filtered");
        let Phase::Prefill { done } = q.phase else {
            return;
        };
        let n = q.prompt.len();
        let t0 = Instant::now();
        let result = if n - done > piece {
            // A middle piece: its head's greedy pick is not used.
            let upto = done + piece;
            let r = session.prefill(&q.prompt[..upto]);
            if r.is_ok() {
                q.phase = Phase::Prefill { done: upto };
            }
            r
        } else {
            let sampling = q.params.sampling.clone();
            let r = session
                .prefill_picking(&q.prompt, &sampling, q.picker, &mut q.rng)
                .and_then(|()| session.picked_after_prefill());
            r.map(|id| {
                q.phase = Phase::Decode;
                q.t_decode = Instant::now();
                q.stats.truncated_draws += session.stats.truncated_draws;
                if q.params.max_tokens == 0 {
                    finish(q, StopReason::MaxTokens, events);
                    return;
                }
                q.next = Some(id);
                emit(q, eos, id, events);
            })
        };
        q.stats.prefill_secs += t0.elapsed().as_secs_f64();
        if let Err(error) = result {
            // The cache may hold part of the piece: trust none of this prompt's new tokens.
            let keep = common_prefix(session.tokens(), &q.prompt[..done]);
            session.tokens_mut().truncate(keep);
            q.phase = Phase::Finished;
            events.push(BatchEvent::Failed { seq: q.id, error });
        }
    }

    /// Submits one decode step for every decoding slot that wants another token. Returns
    /// whether it submitted one.
    fn submit_decode(&mut self, events: &mut Vec<BatchEvent>) -> Result<bool> {
        let inner = self.model.inner.clone();
        let vocab = inner.cfg.vocab;
        let k = inner.engine.kernels();
        let gpu = k.gpu.clone();
        let mut rows = Vec::new();
        for (i, s) in self.slots.iter_mut().enumerate() {
            let capacity = s.session.capacity();
            let pos = s.session.tokens().len();
            let in_flight = s.in_flight;
            let Some(q) = s.seq.as_mut().filter(|q| q.phase == Phase::Decode) else {
                continue;
            };
            // Tokens already on their way cover max_tokens: no more steps.
            if q.emitted + in_flight >= q.params.max_tokens {
                continue;
            }
            if pos >= capacity {
                if in_flight == 0 {
                    finish(q, StopReason::ContextFull, events);
                }
                continue;
            }
            let fwd = s.session.forward();
            fwd.write_decode_step(pos);
            if q.picker == Picker::Gpu {
                let sp = &q.params.sampling;
                let step = sample_step(sp, pos + 1, vocab, q.rng.next_f64());
                fwd.write_sample_step(&step);
                let n = sample::chain_k(sp.temperature, sp.top_k);
                if let Entry::Vacant(vacant) = s.chains.entry(n) {
                    let chain = sample::sample_chain(
                        k,
                        &SampleBuffers {
                            logits: &self.row_logits,
                            step: fwd.sample_step_buffer(),
                            history: &fwd.history,
                            token: &fwd.token,
                            probs: &fwd.probs,
                        },
                        vocab,
                        n,
                    );
                    let chain = chain.and_then(|c| {
                        let swap = [(&self.row_logits, self.act.logits_row(i, vocab))];
                        let list = c
                            .dispatches
                            .iter()
                            .map(|d| k.rebind(d, &swap))
                            .collect::<Result<Vec<_>>>()?;
                        Ok((list, c))
                    });
                    match chain {
                        Ok(c) => {
                            vacant.insert(c);
                        }
                        Err(error) => {
                            q.phase = Phase::Finished;
                            events.push(BatchEvent::Failed { seq: q.id, error });
                            continue;
                        }
                    }
                }
            }
            let tokens = s.session.tokens_mut();
            match q.next.take() {
                Some(id) => tokens.push(id),
                None => {
                    q.unfilled.push_back(tokens.len());
                    tokens.push(u32::MAX);
                }
            }
            s.in_flight += 1;
            rows.push((i, q.id));
        }
        let Some(&(last, _)) = rows.last() else {
            return Ok(false);
        };
        let ring = self.steps_run % RING;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let mut dispatches = 0;
        {
            let mut pass = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("batched decode"),
                timestamp_writes: None,
            });
            let mut record = |d: &Dispatch| {
                d.record(&mut pass);
                dispatches += 1;
            };
            for op in &self.steps[last] {
                if let Op::Shared(d) = op {
                    record(d);
                    continue;
                }
                for &(i, _) in &rows {
                    let s = &self.slots[i];
                    match op {
                        Op::Shared(_) => {}
                        Op::Embed => s.embed.iter().for_each(&mut record),
                        Op::Layer(l) => {
                            let layer = &s.layers[*l];
                            layer.post.iter().for_each(&mut record);
                            let kv_len = s.session.tokens().len();
                            let splits = s.session.forward().splits_for(kv_len);
                            let att = layer.attention.iter().find(|(n, _)| *n == splits);
                            let att = att.or(layer.attention.last()).map(|(_, l)| l);
                            att.into_iter().flatten().for_each(&mut record);
                        }
                        Op::Pick => {
                            let q = s.seq.as_ref().expect("a decoding row");
                            let list = match q.picker {
                                Picker::Gpu => {
                                    let sp = &q.params.sampling;
                                    let n = sample::chain_k(sp.temperature, sp.top_k);
                                    &s.chains[&n].0
                                }
                                Picker::Greedy | Picker::Cpu => &s.argmax,
                            };
                            list.iter().for_each(&mut record);
                        }
                    }
                }
            }
        }
        for &(i, _) in &rows {
            let token = &self.slots[i].session.forward().token;
            self.ring.copy_pair_into(&mut enc, token, ring, i);
        }
        let submission = gpu.queue.submit([enc.finish()]);
        self.ring.map(&gpu, ring, submission);
        self.steps_run += 1;
        self.dispatches_run += dispatches;
        for &(i, _) in &rows {
            if let Some(q) = self.slots[i].seq.as_mut() {
                q.stats.decode_steps += 1;
                q.stats.decode_submits += 1;
            }
        }
        self.flights.push_back(Flight { ring, rows });
        Ok(true)
    }

    /// Reads the oldest submitted step's tokens and hands them to their sequences.
    fn read_flight(&mut self, events: &mut Vec<BatchEvent>) -> Result<()> {
        let Some(f) = self.flights.pop_front() else {
            return Ok(());
        };
        let gpu = self.model.inner.engine.kernels().gpu.clone();
        let eos = self.model.eos_ids();
        let read = self.ring.read_pairs(&gpu, f.ring);
        let (pairs, _) = match read {
            Ok(r) => r,
            Err(e) => {
                // The device failed: every sequence of the batch ends with the error.
                for &(i, _) in &f.rows {
                    self.slots[i].in_flight -= 1;
                }
                return Err(e);
            }
        };
        for &(i, id) in &f.rows {
            let s = &mut self.slots[i];
            s.in_flight -= 1;
            let Some(q) = s.seq.as_mut().filter(|q| q.id == id) else {
                continue;
            };
            let token = match picked(pairs[i], &mut q.stats) {
                Ok(t) => t,
                Err(error) => {
                    if q.phase != Phase::Finished {
                        q.phase = Phase::Finished;
                        events.push(BatchEvent::Failed { seq: q.id, error });
                    }
                    continue;
                }
            };
            let tokens = s.session.tokens_mut();
            match q.unfilled.pop_front() {
                Some(at) => tokens[at] = token,
                None => q.next = Some(token),
            }
            if q.phase == Phase::Decode {
                emit(q, eos, token, events);
            }
        }
        Ok(())
    }
}

/// Hands a generated `id` to its sequence as a Token event; end-of-sequence, a stop string or
/// max tokens end it (with its Done event). A full cache ends it when the next step would
/// need a position ([`Batch::step`]).
fn emit(q: &mut Sequence, eos: &[u32], id: u32, events: &mut Vec<BatchEvent>) {
    if !q.params.ignore_eos && eos.contains(&id) {
        return finish(q, StopReason::Eos, events);
    }
    q.emitted += 1;
    q.stats.generated_tokens = q.emitted;
    let (text, stop) = match &mut q.decoder {
        Some(d) => d.push(id),
        None => (String::new(), false),
    };
    events.push(BatchEvent::Token {
        seq: q.id,
        token: Token { id, text },
    });
    if stop {
        finish(q, StopReason::StopString, events);
    } else if q.emitted >= q.params.max_tokens {
        finish(q, StopReason::MaxTokens, events);
    }
}

/// Ends a sequence with `reason` and its Done event.
fn finish(q: &mut Sequence, reason: StopReason, events: &mut Vec<BatchEvent>) {
    if q.phase == Phase::Finished {
        return;
    }
    q.phase = Phase::Finished;
    q.stats.stop_reason = Some(reason);
    q.stats.decode_secs = q.t_decode.elapsed().as_secs_f64();
    let text = q.decoder.as_mut().map(|d| d.flush()).unwrap_or_default();
    events.push(BatchEvent::Done {
        seq: q.id,
        text,
        stats: q.stats.clone(),
    });
}

/// Row `row` of `len` f32 values of `buf`, as a binding.
fn view(buf: &wgpu::Buffer, row: usize, len: usize) -> wgpu::BufferBinding<'_> {
    wgpu::BufferBinding {
        buffer: buf,
        offset: (row * len * 4) as u64,
        size: std::num::NonZeroU64::new((len * 4) as u64),
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
