//! A session: one KV cache and its position, with generation as an iterator and a
//! `futures::Stream` of tokens.
//!
//! Decode keeps the CPU one token ahead: the chosen id (argmax, or the GPU sampling chain's
//! draw) stays on the GPU, where the next step's embedding gather reads it, and is copied
//! into a ring of small mappable buffers; the CPU submits step t+1 before it reads token t,
//! so stop conditions are seen one token late and the surplus step is discarded. No logits
//! leave the GPU unless the CPU sampler is asked for (`GenerateParams::sample_on_cpu`, or a
//! top-k the GPU chain does not support).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::kernels::kv_cache::KvType;
use crate::kernels::sample::{self, SampleStep};
use crate::kernels::{Dispatch, StepParams};
use crate::model::Model;
use crate::runtime::forward::{DecodeFusion, Forward};
use crate::runtime::kv_cache::KvCache;
use crate::runtime::plan;
use crate::runtime::sampling::{self, Rng, SamplingParams};
use crate::runtime::stream::TextStream;
use crate::runtime::token_ring::{TokenRing, RING};

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_tokens: usize,
    pub sampling: SamplingParams,
    /// Stop when one of these strings appears in the output (it is not emitted).
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence ids.
    pub ignore_eos: bool,
    /// Sample on the CPU from read-back logits (the reference path: one blocking read per
    /// token) instead of the GPU sampling chain.
    pub sample_on_cpu: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 256,
            sampling: SamplingParams::default(),
            stop: Vec::new(),
            ignore_eos: false,
            sample_on_cpu: false,
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Token {
    pub id: u32,
    /// Text completed by this token (may be empty while a multi-byte character is pending,
    /// or hold more than the token's own bytes when it completes one).
    pub text: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StopReason {
    Eos,
    StopString,
    MaxTokens,
    ContextFull,
}

/// Counters of the last prefill/generation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Tokens actually prefilled (the rest came from the reused KV cache).
    pub prefilled_tokens: usize,
    pub generated_tokens: usize,
    pub prefill_secs: f64,
    pub decode_secs: f64,
    /// Decode steps submitted (including the discarded look-ahead step).
    pub decode_steps: usize,
    pub decode_submits: usize,
    pub decode_dispatches: usize,
    /// Times the CPU waited for a token while no further step was queued: a wait that
    /// drains the GPU pipeline (the fast path has none).
    pub decode_blocking_waits: usize,
    /// Times the CPU waited for token t while step t+1 was already queued: the GPU stayed
    /// busy, so these only show that decoding is GPU-bound.
    pub decode_gpu_bound_waits: usize,
    /// How tokens were chosen: greedy argmax, the GPU sampling chain, or the CPU sampler.
    pub sampler: Option<Picker>,
    /// GPU-sampled tokens drawn with top-k off from the best `K_MAX` candidates although
    /// the top-p/min-p set reached past them (a very flat distribution).
    pub truncated_draws: usize,
    pub stop_reason: Option<StopReason>,
}

impl Stats {
    pub fn prefill_tok_s(&self) -> f64 {
        rate(self.prefilled_tokens, self.prefill_secs)
    }
    pub fn decode_tok_s(&self) -> f64 {
        rate(self.generated_tokens.saturating_sub(1), self.decode_secs)
    }
    fn per_step(&self, n: usize) -> f64 {
        if self.decode_steps == 0 {
            0.0
        } else {
            n as f64 / self.decode_steps as f64
        }
    }
    pub fn submits_per_token(&self) -> f64 {
        self.per_step(self.decode_submits)
    }
    pub fn dispatches_per_token(&self) -> f64 {
        self.per_step(self.decode_dispatches)
    }
    pub fn blocking_waits_per_token(&self) -> f64 {
        self.per_step(self.decode_blocking_waits)
    }
    pub fn gpu_bound_waits_per_token(&self) -> f64 {
        self.per_step(self.decode_gpu_bound_waits)
    }
}

fn rate(n: usize, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

/// How a generation picks each token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Picker {
    /// Argmax on the GPU.
    Greedy,
    /// The GPU sampling chain (`kernels::sample`).
    Gpu,
    /// The CPU sampler on read-back logits.
    Cpu,
}

impl Picker {
    pub(crate) fn for_params(p: &GenerateParams, vocab: usize) -> Picker {
        let s = &p.sampling;
        if s.is_greedy() {
            Picker::Greedy
        } else if p.sample_on_cpu || !sample::supports(s.top_k, vocab) {
            Picker::Cpu
        } else {
            Picker::Gpu
        }
    }
}

/// The sampling chain's settings for the token after `len` tokens of history, with the
/// uniform number `u` of its draw.
pub(crate) fn sample_step(p: &SamplingParams, len: usize, vocab: usize, u: f64) -> SampleStep {
    let window = if p.repeat_penalty == 1.0 {
        0
    } else {
        len.min(p.repeat_last_n)
    };
    SampleStep {
        temperature: p.temperature,
        top_k: p.top_k as u32,
        top_p: p.top_p,
        min_p: p.min_p,
        penalty: p.repeat_penalty,
        hist_start: (len - window) as u32,
        hist_end: len as u32,
        hist_out: len as u32,
        // Below 1 after rounding to f32, so the draw stays inside the kept mass.
        u: (u as f32).min(1.0 - f32::EPSILON / 2.0),
        full_norm: (p.top_k == 0 || p.top_k >= vocab) as u32,
        vocab: vocab as u32,
        _pad: 0,
    }
}

/// The token id in a `[id, flags]` pair the GPU picked, or the error it reports.
pub(crate) fn picked(pair: [u32; 2], stats: &mut Stats) -> Result<u32> {
    let [id, flags] = pair;
    if id & sample::NON_FINITE != 0 {
        return Err(Error::Model(format!(
            "the model produced a non-finite logit at vocabulary index {} (NaN or infinite \
             weights or activations)",
            id & !sample::NON_FINITE
        )));
    }
    if flags & sample::FLAG_TRUNCATED != 0 {
        stats.truncated_draws += 1;
    }
    Ok(id)
}

/// Prompt chunks shorter than this run through the decode step (GEMV) token by token.
const GEMV_PREFILL_BELOW: usize = 8;

/// A conversation state on one model: KV cache, position and the tokens it holds.
pub struct Session {
    model: Model,
    kv: KvCache,
    fwd: Forward,
    /// Tokens whose keys/values are in the cache, in order (positions 0..len).
    tokens: Vec<u32>,
    ring: TokenRing,
    pub stats: Stats,
}

/// How a session is built ([`Session::with_options`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// KV-cache capacity in tokens.
    pub ctx: usize,
    /// How the KV cache stores keys and values.
    pub kv_type: KvType,
    /// The decode step's fusions.
    pub fusion: DecodeFusion,
}

impl SessionOptions {
    /// The model's defaults: its context and KV type ([`crate::LoadOptions`]), the fusions of
    /// [`DecodeFusion::for_adapter`].
    pub fn of(model: &Model) -> Result<SessionOptions> {
        let caps = &model.inner.engine.kernels().gpu.caps;
        Ok(SessionOptions {
            ctx: model.context(),
            kv_type: model.kv_type(),
            fusion: DecodeFusion::for_adapter(caps, model.inner.cfg.hidden)?,
        })
    }
}

impl Session {
    /// A fresh session with the model's default context and KV type.
    pub fn new(model: &Model) -> Result<Session> {
        Self::with_options(model, SessionOptions::of(model)?)
    }

    pub fn with_context(model: &Model, ctx: usize) -> Result<Session> {
        Self::with_options(
            model,
            SessionOptions {
                ctx,
                ..SessionOptions::of(model)?
            },
        )
    }

    /// A session whose decode step uses only the given fusions (tests and kernel authors
    /// compare the fused step against the plain sequence with it).
    pub fn with_decode_fusion(model: &Model, ctx: usize, fusion: DecodeFusion) -> Result<Session> {
        Self::with_options(
            model,
            SessionOptions {
                ctx,
                kv_type: model.kv_type(),
                fusion,
            },
        )
    }

    /// A session of `o.ctx` tokens with a cache of `o.kv_type` (whatever the model's default)
    /// and the decode fusions `o.fusion`.
    pub fn with_options(model: &Model, o: SessionOptions) -> Result<Session> {
        let (ctx, fusion) = (o.ctx, o.fusion);
        let m = &model.inner;
        let k = m.engine.kernels();
        let gpu = &k.gpu;
        let kv = KvCache::new(gpu, &m.cfg, ctx, o.kv_type)?;
        let fwd = Forward::new(k, &m.cfg, &m.weights, &kv, &m.inv_freq, fusion)?;
        let ring = TokenRing::new(gpu)?;
        Ok(Session {
            model: model.clone(),
            kv,
            fwd,
            tokens: Vec::new(),
            ring,
            stats: Stats::default(),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// KV-cache capacity in tokens.
    pub fn capacity(&self) -> usize {
        self.kv.capacity
    }

    /// How the KV cache stores keys and values.
    pub fn kv_type(&self) -> KvType {
        self.kv.kv_type
    }

    /// Tokens currently held in the KV cache.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the conversation (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.tokens.clear();
    }

    pub fn kv_bytes(&self) -> u64 {
        self.kv.bytes()
    }

    fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let vocab = self.model.inner.cfg.vocab;
        if let Some(bad) = ids.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {bad} is outside the vocabulary (size {vocab})"
            )));
        }
        Ok(())
    }

    /// Refuses an empty prompt, ids outside the vocabulary and a prompt longer than the
    /// context.
    pub(crate) fn check_prompt(&self, prompt: &[u32]) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::InvalidArgument(
                "the prompt is empty: give at least one token".into(),
            ));
        }
        self.check_ids(prompt)?;
        if prompt.len() > self.kv.capacity {
            return Err(Error::InvalidArgument(format!(
                "the prompt has {} tokens but the context holds {} (use --ctx, up to the model's {})",
                prompt.len(),
                self.kv.capacity,
                self.model.inner.cfg.context_len
            )));
        }
        Ok(())
    }

    /// Runs the prompt through the model, reusing the longest cached prefix. Afterwards the
    /// GPU holds the greedy next token and the logits of the last prompt position.
    pub fn prefill(&mut self, prompt: &[u32]) -> Result<()> {
        let k = self.model.inner.engine.kernels().clone();
        self.fwd.set_sampler(&k, None)?;
        self.prefill_inner(prompt)
    }

    /// [`Self::prefill`] with whatever token picker the forward pass has.
    fn prefill_inner(&mut self, prompt: &[u32]) -> Result<()> {
        self.check_prompt(prompt)?;
        // Reuse the cached prefix, but always recompute the last prompt token so its logits
        // (and greedy id) are produced.
        let common = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count();
        let start = common.min(prompt.len() - 1);
        self.tokens.truncate(start);
        let t0 = Instant::now();
        let gpu = self.fwd.gpu.clone();
        let mut chunks = Vec::new();
        let mut rest = &prompt[start..];
        for c in self.chunk_lengths(rest.len()) {
            let (chunk, tail) = rest.split_at(c);
            chunks.push(chunk);
            rest = tail;
        }
        let n_chunks = chunks.len();
        for (ci, chunk) in chunks.into_iter().enumerate() {
            let pos = self.tokens.len();
            let last_chunk = ci + 1 == n_chunks;
            if chunk.len() < GEMV_PREFILL_BELOW {
                // A few tokens: the decode step's GEMVs read each weight once per token,
                // cheaper than a GEMM tile padded to the whole chunk.
                for (i, &t) in chunk.iter().enumerate() {
                    gpu.write(&self.fwd.token, 0, &[t]);
                    self.fwd.write_decode_step(pos + i);
                    let mut enc = gpu.device.create_command_encoder(&Default::default());
                    let head = last_chunk && i + 1 == chunk.len();
                    self.fwd.record_decode(&mut enc, pos + i + 1, head);
                    gpu.queue.submit([enc.finish()]);
                }
                self.tokens.extend_from_slice(chunk);
                continue;
            }
            gpu.write(&self.fwd.ids, 0, chunk);
            self.fwd.write_step(&StepParams {
                pos: pos as u32,
                n_tokens: chunk.len() as u32,
                kv_len: (pos + chunk.len()) as u32,
                ..Default::default()
            });
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            self.fwd.record_prefill(&mut enc, chunk.len(), last_chunk);
            gpu.queue.submit([enc.finish()]);
            self.tokens.extend_from_slice(chunk);
        }
        gpu.wait_idle()?;
        self.stats = Stats {
            prompt_tokens: prompt.len(),
            prefilled_tokens: prompt.len() - start,
            prefill_secs: t0.elapsed().as_secs_f64(),
            ..Default::default()
        };
        Ok(())
    }

    /// How prefill splits `n` fresh prompt tokens into chunks ([`plan::chunk_lengths`]).
    fn chunk_lengths(&self, n: usize) -> Vec<usize> {
        plan::chunk_lengths(&self.fwd.chunks, n, self.fwd.round_up_chunks)
    }

    /// Logits of the last processed position (blocking read; for `logits`, sampling, tests).
    pub fn logits(&self) -> Result<Vec<f32>> {
        self.fwd.gpu.read_vec(self.fwd.logits())
    }

    /// Logits at every position of `ids` (each position run as its own step; for tests and
    /// `wick logits --all-positions`).
    pub fn logits_all(&mut self, ids: &[u32]) -> Result<Vec<Vec<f32>>> {
        self.reset();
        let mut out = Vec::with_capacity(ids.len());
        for n in 1..=ids.len() {
            self.prefill(&ids[..n])?;
            out.push(self.logits()?);
        }
        Ok(out)
    }

    /// Runs `ids` through the model from an empty cache as prefill chunks and hands
    /// `visit(pos, logits)` the logits at every position `pos >= first` (those predicting
    /// token `pos + 1`), in order: one prefill and one LM-head GEMM per chunk, where
    /// [`Self::logits_all`] runs a decode step per position. For perplexity. Afterwards
    /// the cache holds `ids`.
    pub fn prefill_with_logits(
        &mut self,
        ids: &[u32],
        first: usize,
        mut visit: impl FnMut(usize, &[f32]) -> Result<()>,
    ) -> Result<()> {
        self.check_prompt(ids)?;
        let inner = self.model.inner.clone();
        let k = inner.engine.kernels().clone();
        let rows = self.fwd.rows_head(&k, &inner.weights)?.rows;
        let vocab = inner.cfg.vocab;
        let gpu = self.fwd.gpu.clone();
        let t0 = Instant::now();
        self.tokens.clear();
        for (ci, chunk) in ids.chunks(rows).enumerate() {
            let pos = ci * rows;
            // Every chunk through the prefill GEMMs, even a short tail: the head reads the
            // hidden rows of all its positions.
            gpu.write(&self.fwd.ids, 0, chunk);
            self.fwd.write_step(&StepParams {
                pos: pos as u32,
                n_tokens: chunk.len() as u32,
                kv_len: (pos + chunk.len()) as u32,
                ..Default::default()
            });
            let mut enc = gpu.device.create_command_encoder(&Default::default());
            self.fwd.record_prefill(&mut enc, chunk.len(), false);
            let from = first.saturating_sub(pos).min(chunk.len());
            if from < chunk.len() {
                self.fwd.record_rows_head(&mut enc);
            }
            gpu.queue.submit([enc.finish()]);
            self.tokens.extend_from_slice(chunk);
            if from == chunk.len() {
                continue;
            }
            let head = self.fwd.rows_head(&k, &inner.weights)?;
            let logits: Vec<f32> =
                gpu.read_range(&head.logits, from * vocab, (chunk.len() - from) * vocab)?;
            for (i, row) in logits.chunks_exact(vocab).enumerate() {
                visit(pos + from + i, row)?;
            }
        }
        gpu.wait_idle()?;
        self.stats = Stats {
            prompt_tokens: ids.len(),
            prefilled_tokens: ids.len(),
            prefill_secs: t0.elapsed().as_secs_f64(),
            ..Default::default()
        };
        Ok(())
    }

    /// Greedy decode of `steps` tokens after `prompt`, one blocking decode step at a time,
    /// returning each chosen id with the logits it was chosen from (tests and debugging:
    /// compares decode-step variants on the same token sequence).
    pub fn greedy_trace(&mut self, prompt: &[u32], steps: usize) -> Result<Vec<(u32, Vec<f32>)>> {
        // No reset: prefill keeps only the cached prefix `prompt` starts with.
        let mut ids = prompt.to_vec();
        let mut out = Vec::with_capacity(steps);
        for _ in 0..steps {
            // Only the new token runs (the cached prefix is reused): the decode step.
            self.prefill(&ids)?;
            let logits = self.logits()?;
            let id = self.fwd.gpu.read_range::<u32>(&self.fwd.token, 0, 2)?;
            let id = picked([id[0], id[1]], &mut self.stats)?;
            ids.push(id);
            out.push((id, logits));
        }
        Ok(out)
    }

    /// Hidden state (residual stream) rows of the last step, for debugging against goldens.
    pub fn hidden_rows(&self, rows: usize) -> Result<Vec<f32>> {
        let h = self.model.inner.cfg.hidden;
        self.fwd.gpu.read_range(self.fwd.hidden(), 0, rows * h)
    }

    /// Generates after `prompt`: an iterator (and `futures::Stream`) of tokens. Dropping it
    /// cancels generation; the session keeps every token whose KV entry was written.
    pub fn generate(&mut self, prompt: &[u32], params: GenerateParams) -> Result<Generation<'_>> {
        let picker = Picker::for_params(&params, self.model.inner.cfg.vocab);
        let mut rng = Rng::new(params.sampling.seed);
        self.prefill_picking(prompt, &params.sampling, picker, &mut rng)?;
        let decoder = TextStream::for_model(&self.model, &params.stop);
        let mut g = Generation {
            session: self,
            params,
            picker,
            decoder,
            rng,
            pending: VecDeque::new(),
            emitted: 0,
            done: false,
            t_start: Instant::now(),
            history: prompt.to_vec(),
        };
        if g.params.max_tokens == 0 {
            g.done = true;
            g.session.stats.stop_reason = Some(StopReason::MaxTokens);
        }
        Ok(g)
    }

    /// Prefills `prompt` (reusing the cached prefix) with `picker` choosing the first
    /// generated token, which stays in the GPU token buffer: the GPU sampling chain set up
    /// for `sampling` (its first draw from `rng`), or argmax.
    pub(crate) fn prefill_picking(
        &mut self,
        prompt: &[u32],
        sampling: &SamplingParams,
        picker: Picker,
        rng: &mut Rng,
    ) -> Result<()> {
        let vocab = self.model.inner.cfg.vocab;
        let k = self.model.inner.engine.kernels().clone();
        match picker {
            Picker::Gpu => {
                self.check_prompt(prompt)?;
                self.fwd.set_sampler(
                    &k,
                    Some(sample::chain_k(sampling.temperature, sampling.top_k)),
                )?;
                // The penalty window reads the prompt from the GPU history; the chain
                // appends each drawn id after it.
                self.fwd.gpu.write(&self.fwd.history, 0, prompt);
                let step = sample_step(sampling, prompt.len(), vocab, rng.next_f64());
                self.fwd.write_sample_step(&step);
            }
            Picker::Greedy | Picker::Cpu => self.fwd.set_sampler(&k, None)?,
        }
        self.prefill_inner(prompt)?;
        self.stats.sampler = Some(picker);
        Ok(())
    }

    /// The token the last prefill picked (a blocking read of the GPU token buffer).
    pub(crate) fn picked_after_prefill(&mut self) -> Result<u32> {
        let t = self.fwd.gpu.read_range::<u32>(&self.fwd.token, 0, 2)?;
        picked([t[0], t[1]], &mut self.stats)
    }

    /// The recorded forward pass (batched decode binds its buffers).
    pub(crate) fn forward(&self) -> &Forward {
        &self.fwd
    }

    pub(crate) fn kv_cache(&self) -> &KvCache {
        &self.kv
    }

    /// The cached tokens, for batched decode, which writes the cache itself.
    pub(crate) fn tokens_mut(&mut self) -> &mut Vec<u32> {
        &mut self.tokens
    }

    /// Tooling hook: picks the token of the steps [`Self::probe_decode_step`] prepares with
    /// the GPU sampling chain for `sampling`, when the chain supports those settings (returns
    /// whether it does), else with argmax.
    pub fn probe_sampler(&mut self, sampling: Option<&SamplingParams>) -> Result<bool> {
        let vocab = self.model.inner.cfg.vocab;
        let sampling = sampling.filter(|p| !p.is_greedy() && sample::supports(p.top_k, vocab));
        let k = self.model.inner.engine.kernels().clone();
        let chain = sampling.map(|p| sample::chain_k(p.temperature, p.top_k));
        self.fwd.set_sampler(&k, chain)?;
        Ok(sampling.is_some())
    }

    /// The most dispatches one decode step records (LM head and token choice included).
    pub fn max_decode_dispatches(&self) -> usize {
        self.fwd
            .decode_dispatches(usize::MAX)
            .max(self.fwd.decode_dispatches(1))
    }

    /// Tooling hook: prepares the decode step that consumes the last cached token (its step
    /// uniform and, with `sample`, the GPU sampling chain's settings for draw `u`) and
    /// returns its dispatches in recording order, LM head and token choice included, for the
    /// caller to record and submit itself (profilers time each dispatch). None when the cache
    /// is full. The step's token stays on the GPU, where the next step reads it:
    /// [`Self::probe_step_done`] counts its position as filled.
    pub fn probe_decode_step(
        &mut self,
        sample: Option<(&SamplingParams, f64)>,
    ) -> Result<Option<Vec<&Dispatch>>> {
        let pos = self.tokens.len();
        if pos >= self.kv.capacity {
            return Ok(None);
        }
        if self.tokens.is_empty() {
            return Err(Error::InvalidArgument(
                "a probed decode step needs a prefilled prompt".into(),
            ));
        }
        self.fwd.write_decode_step(pos);
        if let Some((p, u)) = sample {
            let vocab = self.model.inner.cfg.vocab;
            self.fwd.gpu.write(&self.fwd.history, 0, &self.tokens);
            self.fwd
                .write_sample_step(&sample_step(p, pos + 1, vocab, u));
        }
        Ok(Some(self.fwd.decode_step(pos + 1, true).collect()))
    }

    /// Counts the step [`Self::probe_decode_step`] prepared as run (its token, never read
    /// back, holds the next position).
    pub fn probe_step_done(&mut self) {
        self.tokens.push(0);
    }

    /// Tooling hook: the token counts of the steps [`Self::prefill`] submits for `n` fresh
    /// prompt tokens, in order: one per chunk, and one per token of a chunk short enough to
    /// run through the decode step. [`Self::probe_prefill_step`] takes them one by one.
    pub fn prefill_steps(&self, n: usize) -> Vec<usize> {
        self.chunk_lengths(n)
            .into_iter()
            .flat_map(|c| match c < GEMV_PREFILL_BELOW {
                true => vec![1; c],
                false => vec![c],
            })
            .collect()
    }

    /// Tooling hook: prepares one prefill step of `ids` after the cached tokens, as
    /// [`Self::prefill`] would submit it (a step of [`Self::prefill_steps`]): writes its ids and
    /// step uniform, counts its tokens as cached and returns its dispatches (the LM head
    /// excluded) for the caller to record and submit before the next probe (the next step's
    /// uniform overwrites this one's).
    pub fn probe_prefill_step(&mut self, ids: &[u32]) -> Result<Vec<&Dispatch>> {
        self.check_ids(ids)?;
        let pos = self.tokens.len();
        if ids.is_empty() || pos + ids.len() > self.kv.capacity {
            return Err(Error::InvalidArgument(format!(
                "a prefill step of {} tokens after {pos} cached does not fit the context of {}",
                ids.len(),
                self.kv.capacity
            )));
        }
        let max_chunk = self.fwd.chunks.last().copied().unwrap_or(0);
        if (ids.len() > 1 && ids.len() < GEMV_PREFILL_BELOW) || ids.len() > max_chunk {
            return Err(Error::InvalidArgument(format!(
                "prefill takes no step of {} tokens (see prefill_steps)",
                ids.len()
            )));
        }
        self.tokens.extend_from_slice(ids);
        let gpu = &self.fwd.gpu;
        if ids.len() < GEMV_PREFILL_BELOW {
            gpu.write(&self.fwd.token, 0, ids);
            self.fwd.write_decode_step(pos);
            return Ok(self.fwd.decode_step(pos + 1, false).collect());
        }
        gpu.write(&self.fwd.ids, 0, ids);
        self.fwd.write_step(&StepParams {
            pos: pos as u32,
            n_tokens: ids.len() as u32,
            kv_len: (pos + ids.len()) as u32,
            ..Default::default()
        });
        Ok(self.fwd.prefill_list(ids.len()).iter().collect())
    }

    /// Submits the decode step that consumes the token at position `pos` (already in the GPU
    /// token buffer, or written there from `token` first).
    /// With `token` the id is written into the GPU token buffer first (CPU-sampled path) and
    /// the step's choice is not read back; without it, the id is already on the GPU and the
    /// step's choice (argmax, or the sampling chain with `sample`'s settings) is copied into
    /// the next ring slot, whose index is returned.
    fn submit_decode(
        &mut self,
        pos: usize,
        token_in_gpu: Option<u32>,
        sample: Option<SampleStep>,
    ) -> Result<usize> {
        let gpu = self.fwd.gpu.clone();
        if let Some(t) = token_in_gpu {
            gpu.write(&self.fwd.token, 0, &[t]);
        }
        if let Some(s) = &sample {
            self.fwd.write_sample_step(s);
        }
        self.fwd.write_decode_step(pos);
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.fwd.record_decode(&mut enc, pos + 1, true);
        let slot = self.stats.decode_steps % RING;
        let greedy = token_in_gpu.is_none();
        if greedy {
            self.ring.copy_into(&mut enc, &self.fwd.token, slot);
        }
        let submission = gpu.queue.submit([enc.finish()]);
        if greedy {
            self.ring.map(&gpu, slot, submission);
        }
        self.stats.decode_steps += 1;
        self.stats.decode_submits += 1;
        self.stats.decode_dispatches += self.fwd.decode_dispatches(pos + 1);
        Ok(slot)
    }

    /// Reads a ring slot, blocking only if the GPU has not finished it yet. `queued_behind`
    /// says whether a later step is already submitted (then a wait keeps the GPU busy).
    fn read_slot(&mut self, slot: usize, queued_behind: Option<bool>) -> Result<[u32; 2]> {
        let gpu = self.fwd.gpu.clone();
        let (pair, waited) = self.ring.read(&gpu, slot)?;
        if waited {
            match queued_behind {
                Some(true) => self.stats.decode_gpu_bound_waits += 1,
                Some(false) => self.stats.decode_blocking_waits += 1,
                // Settling a discarded look-ahead step after generation ended.
                None => {}
            }
        }
        Ok(pair)
    }
}

/// An in-progress generation; see [`Session::generate`].
pub struct Generation<'s> {
    session: &'s mut Session,
    params: GenerateParams,
    picker: Picker,
    decoder: Option<TextStream>,
    rng: Rng,
    /// Ring slots of submitted greedy steps whose token is not read yet.
    pending: VecDeque<usize>,
    emitted: usize,
    done: bool,
    t_start: Instant,
    history: Vec<u32>,
}

impl Generation<'_> {
    pub fn stats(&self) -> &Stats {
        &self.session.stats
    }

    fn finish(&mut self, reason: StopReason) {
        self.done = true;
        self.session.stats.stop_reason = Some(reason);
        // Wait for the discarded look-ahead step so the cache state is settled.
        for slot in std::mem::take(&mut self.pending) {
            let _ = self.session.read_slot(slot, None);
        }
        self.session.stats.decode_secs = self.t_start.elapsed().as_secs_f64();
    }

    /// Whether a token after the one being emitted now will be wanted (so the step that
    /// consumes the current one is worth submitting).
    fn wants_more(&self) -> bool {
        self.emitted + 1 < self.params.max_tokens
            && self.session.tokens.len() < self.session.kv.capacity
    }

    /// The GPU sampling settings for the step that consumes position `pos` (None: argmax).
    fn gpu_sample_step(&mut self, pos: usize) -> Option<SampleStep> {
        (self.picker == Picker::Gpu).then(|| {
            let vocab = self.session.model.inner.cfg.vocab;
            sample_step(&self.params.sampling, pos + 1, vocab, self.rng.next_f64())
        })
    }

    /// Greedy or GPU-sampled: the id stays on the GPU; the step consuming token e is
    /// submitted before the CPU reads token e, so the GPU always has the next step queued.
    fn next_on_gpu(&mut self) -> Result<u32> {
        if self.emitted == 0 {
            // The prefill left the first id in the token buffer (and waited for it).
            let t = self
                .session
                .fwd
                .gpu
                .read_range::<u32>(&self.session.fwd.token, 0, 2)?;
            let id = picked([t[0], t[1]], &mut self.session.stats)?;
            if self.wants_more() {
                self.session.tokens.push(id);
                let pos = self.session.tokens.len() - 1;
                let s = self.gpu_sample_step(pos);
                let slot = self.session.submit_decode(pos, None, s)?;
                self.pending.push_back(slot);
            }
            return Ok(id);
        }
        let slot = self
            .pending
            .pop_front()
            .ok_or_else(|| Error::Gpu("no decode step in flight".into()))?;
        let lookahead = if self.wants_more() {
            let at = self.session.tokens.len();
            self.session.tokens.push(u32::MAX);
            let s = self.gpu_sample_step(at);
            let next = self.session.submit_decode(at, None, s)?;
            self.pending.push_back(next);
            Some(at)
        } else {
            None
        };
        // Without a look-ahead this is the last token: nothing is left to overlap with.
        let pair = self.session.read_slot(slot, lookahead.map(|_| true))?;
        let id = picked(pair, &mut self.session.stats)?;
        if let Some(at) = lookahead {
            self.session.tokens[at] = id;
        }
        Ok(id)
    }

    /// Sampling: logits are read back and the token drawn on the CPU, then fed.
    fn next_sampled(&mut self) -> Result<u32> {
        let s = &mut *self.session;
        let logits = s.logits()?;
        if let Some(i) = logits.iter().position(|v| !v.is_finite()) {
            return Err(Error::Model(format!(
                "the model produced a non-finite logit ({}) at vocabulary index {i}",
                logits[i]
            )));
        }
        let id = sampling::sample(&logits, &self.history, &self.params.sampling, &mut self.rng)
            .ok_or_else(|| Error::Model("no token could be sampled".into()))?;
        if self.wants_more() {
            let s = &mut *self.session;
            s.tokens.push(id);
            s.submit_decode(s.tokens.len() - 1, Some(id), None)?;
            // The CPU needs this step's logits before it can pick the next token.
            s.fwd.gpu.wait_idle()?;
            s.stats.decode_blocking_waits += 1;
        }
        Ok(id)
    }

    fn step(&mut self) -> Result<Option<Token>> {
        if self.done {
            return Ok(None);
        }
        let fed = self.session.tokens.len();
        let id = match self.picker {
            Picker::Greedy | Picker::Gpu => self.next_on_gpu()?,
            Picker::Cpu => self.next_sampled()?,
        };
        // A step consuming this token was submitted: the next token is on its way.
        let stepped = self.session.tokens.len() > fed;
        if !self.params.ignore_eos && self.session.model.eos_ids().contains(&id) {
            self.finish(StopReason::Eos);
            return Ok(None);
        }
        self.emitted += 1;
        self.history.push(id);
        self.session.stats.generated_tokens = self.emitted;
        let text = match &mut self.decoder {
            Some(d) => {
                let (text, hit_stop) = d.push(id);
                if hit_stop {
                    self.finish(StopReason::StopString);
                    return Ok(Some(Token { id, text }));
                }
                text
            }
            None => String::new(),
        };
        if self.emitted >= self.params.max_tokens {
            self.finish(StopReason::MaxTokens);
        } else if !stepped {
            // The cache is full: this token needed no slot, but the next would.
            self.finish(StopReason::ContextFull);
        }
        Ok(Some(Token { id, text }))
    }

    /// Text still held back at the end (an incomplete character, a partial stop string).
    pub fn flush_text(&mut self) -> String {
        self.decoder.as_mut().map(|d| d.flush()).unwrap_or_default()
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Token>;
    fn next(&mut self) -> Option<Result<Token>> {
        match self.step() {
            Ok(Some(t)) => Some(Ok(t)),
            Ok(None) => None,
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

impl futures::Stream for Generation<'_> {
    type Item = Result<Token>;
    fn poll_next(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        // Each step completes (or fails) before returning, so the stream is always ready.
        Poll::Ready(self.get_mut().next())
    }
}

impl Drop for Generation<'_> {
    fn drop(&mut self) {
        // Cancelled (or stopped by an error): settle in-flight steps so the ring is unmapped
        // and reusable by the session's next generation.
        for slot in std::mem::take(&mut self.pending) {
            let _ = self.session.read_slot(slot, None);
        }
    }
}
