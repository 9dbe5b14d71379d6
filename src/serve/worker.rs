//! The GPU worker: one thread owns the model's sessions and runs the queued requests, first
//! in first out. With `--parallel 1` it owns one [`Session`] and runs one request at a time;
//! with `--parallel N` a [`Batch`] of N slots decodes up to N requests together (continuous
//! batching: a request joins at the next step once a slot is free and leaves as soon as it
//! ends; requests beyond N wait in the bounded queue).
//!
//! A session keeps the last request's sequence (prompt and generated tokens) in its KV cache,
//! and [`Session::generate`] prefills only what follows the longest prefix a new prompt
//! shares with it: a repeated system prompt, or a chat's earlier turns, are not
//! recomputed. Nothing else carries over between requests: the sampler, its RNG (seeded per
//! request), the penalty history, the stop-string state and the statistics are set up anew
//! by each generation. A batch does the same per slot: a request goes to the free slot whose
//! cache shares the longest prefix with its prompt, else the least recently used one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::mpsc::UnboundedSender;

use super::metrics::Metrics;
use crate::runtime::{Batch, BatchEvent, GenerateParams, SeqId, Session, StopReason};

/// What the worker decodes with: one session (one request at a time) or a batch.
pub enum Decoder {
    Single(Box<Session>),
    Batched(Box<Batch>),
}

/// What the worker reports back to the request's handler, in order: text deltas, then one
/// `Done` or `Failed`.
#[derive(Debug)]
pub enum Event {
    /// Text that is safe to show (no partial stop string, no split character).
    Delta(String),
    Done {
        reason: Option<StopReason>,
        prompt_tokens: usize,
        /// Prompt tokens whose keys and values came from the cache (not prefilled).
        cached_tokens: usize,
        completion_tokens: usize,
    },
    Failed(Failure),
}

#[derive(Debug)]
pub enum Failure {
    /// The per-request timeout passed (queued or generating).
    Timeout,
    /// The library refused or failed the generation.
    Engine(crate::Error),
}

/// One admitted request.
pub struct Job {
    pub prompt: Vec<u32>,
    pub params: GenerateParams,
    pub deadline: Instant,
    pub events: UnboundedSender<Event>,
    /// Counts the request as in flight until the worker is done with it.
    pub slot: InFlight,
}

/// A request's place among those in flight; released once (explicitly before the last
/// event is sent, so a client that reads the answer sees the gauge already back, or on drop).
pub struct InFlight {
    metrics: Arc<Metrics>,
    released: AtomicBool,
}

impl InFlight {
    pub fn new(metrics: Arc<Metrics>) -> InFlight {
        metrics.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            metrics,
            released: AtomicBool::new(false),
        }
    }

    fn release(&self) {
        if !self.released.swap(true, Ordering::SeqCst) {
            self.metrics.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.release();
    }
}

/// [`Queue::submit`]'s refusal: the queue is full (or the worker has stopped).
#[derive(Debug)]
pub struct QueueFull;

/// The bounded FIFO in front of the worker.
#[derive(Clone)]
pub struct Queue {
    tx: SyncSender<Job>,
    metrics: Arc<Metrics>,
}

impl Queue {
    /// Enqueues a job, or drops it (releasing its in-flight slot) when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), QueueFull> {
        // Counted before the send so the worker's decrement never runs first.
        self.metrics.queued.fetch_add(1, Ordering::SeqCst);
        match self.tx.try_send(job) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.queued.fetch_sub(1, Ordering::SeqCst);
                Err(QueueFull)
            }
        }
    }
}

/// Starts the worker thread on `decoder`; it runs until every [`Queue`] clone is dropped.
pub fn spawn(
    decoder: Decoder,
    capacity: usize,
    metrics: Arc<Metrics>,
) -> crate::Result<(Queue, std::thread::JoinHandle<()>)> {
    let (tx, rx) = std::sync::mpsc::sync_channel(capacity);
    let m = metrics.clone();
    let handle = std::thread::Builder::new()
        .name("wick-gpu".into())
        .spawn(move || match decoder {
            Decoder::Single(session) => run(*session, rx, m),
            Decoder::Batched(batch) => run_batch(*batch, rx, m),
        })
        .map_err(|e| crate::Error::io("<worker thread>", e))?;
    Ok((Queue { tx, metrics }, handle))
}

fn run(mut session: Session, rx: Receiver<Job>, metrics: Arc<Metrics>) {
    metrics.slots.store(1, Ordering::Relaxed);
    while let Ok(job) = rx.recv() {
        metrics.queued.fetch_sub(1, Ordering::SeqCst);
        metrics.slots_busy.store(1, Ordering::SeqCst);
        one(&mut session, job, &metrics);
        metrics.slots_busy.store(0, Ordering::SeqCst);
    }
}

/// Runs one job to its end: finished, stopped, cancelled (its receiver is gone: the client
/// disconnected) or timed out.
fn one(session: &mut Session, job: Job, metrics: &Metrics) {
    let Job {
        prompt,
        params,
        deadline,
        events,
        slot,
    } = job;
    let finish = |e: Event| {
        slot.release();
        let _ = events.send(e);
    };
    if events.is_closed() {
        metrics.cancelled.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if Instant::now() >= deadline {
        return finish(Event::Failed(Failure::Timeout));
    }
    let mut generated = 0;
    let outcome = generate(
        session,
        &prompt,
        params,
        deadline,
        &events,
        metrics,
        &mut generated,
    );
    metrics.add_generated(generated);
    match outcome {
        Err(e) => {
            // A failed step may leave cache entries unwritten that the session counts as
            // held: the next request starts from an empty cache.
            session.reset();
            metrics.set_kv_tokens(0);
            finish(Event::Failed(Failure::Engine(e)))
        }
        Ok(outcome) => {
            metrics.set_kv_tokens(session.tokens().len());
            match outcome {
                Outcome::Cancelled => {
                    metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                }
                Outcome::TimedOut => finish(Event::Failed(Failure::Timeout)),
                Outcome::Done { cached_tokens } => {
                    let st = &session.stats;
                    metrics.set_decode_rate(st.decode_tok_s());
                    finish(Event::Done {
                        reason: st.stop_reason,
                        prompt_tokens: st.prompt_tokens,
                        cached_tokens,
                        completion_tokens: st.generated_tokens,
                    });
                }
            }
        }
    }
}

/// How a generation that did not fail ended.
enum Outcome {
    /// The client went away.
    Cancelled,
    TimedOut,
    /// Finished; `cached_tokens` of the prompt came from the KV cache.
    Done {
        cached_tokens: usize,
    },
}

/// Generates for `prompt`, sending text deltas as they come and counting tokens in
/// `generated`. No reset before it: `generate` reuses the longest prefix of `prompt` the cache
/// holds (the last request's sequence) and prefills the rest.
fn generate(
    session: &mut Session,
    prompt: &[u32],
    params: GenerateParams,
    deadline: Instant,
    events: &UnboundedSender<Event>,
    metrics: &Metrics,
    generated: &mut usize,
) -> crate::Result<Outcome> {
    let mut gen = session.generate(prompt, params)?;
    let cached_tokens = {
        let st = gen.stats();
        metrics.add_prompt(st.prompt_tokens, st.prompt_tokens - st.prefilled_tokens);
        st.prompt_tokens - st.prefilled_tokens
    };
    loop {
        // Returning drops the generation, which settles its in-flight step; the session
        // stays usable.
        if events.is_closed() {
            return Ok(Outcome::Cancelled);
        }
        if Instant::now() >= deadline {
            return Ok(Outcome::TimedOut);
        }
        match gen.next() {
            None => break,
            Some(Err(e)) => return Err(e),
            Some(Ok(t)) => {
                *generated += 1;
                if !t.text.is_empty() {
                    let _ = events.send(Event::Delta(t.text));
                }
            }
        }
    }
    let tail = gen.flush_text();
    if !tail.is_empty() {
        let _ = events.send(Event::Delta(tail));
    }
    Ok(Outcome::Done { cached_tokens })
}

/// A request of the batch: where its events go and what it has produced.
struct Running {
    events: UnboundedSender<Event>,
    deadline: Instant,
    slot: InFlight,
    generated: usize,
}

impl Running {
    fn finish(self, e: Event, metrics: &Metrics) {
        metrics.add_generated(self.generated);
        self.slot.release();
        let _ = self.events.send(e);
    }
}

/// The batched worker: takes queued requests while a slot is free, drops those whose client
/// left or whose time ran out, and runs [`Batch::step`] while anything is in flight.
fn run_batch(mut batch: Batch, rx: Receiver<Job>, metrics: Arc<Metrics>) {
    let mut running: HashMap<SeqId, Running> = HashMap::new();
    let mut open = true;
    metrics.slots.store(batch.slots(), Ordering::Relaxed);
    loop {
        metrics.slots_busy.store(batch.active(), Ordering::SeqCst);
        while open && batch.free_slots() > 0 {
            let job = if batch.is_idle() {
                match rx.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            } else {
                match rx.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                }
            };
            metrics.queued.fetch_sub(1, Ordering::SeqCst);
            let Job {
                prompt,
                params,
                deadline,
                events,
                slot,
            } = job;
            let r = Running {
                events,
                deadline,
                slot,
                generated: 0,
            };
            if r.events.is_closed() {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            if Instant::now() >= deadline {
                r.finish(Event::Failed(Failure::Timeout), &metrics);
                continue;
            }
            match batch.add(&prompt, params) {
                Ok(id) => {
                    running.insert(id, r);
                }
                Err(e) => r.finish(Event::Failed(Failure::Engine(e)), &metrics),
            }
        }
        // Clients that left and requests past their deadline leave the batch now.
        let now = Instant::now();
        let gone: Vec<SeqId> = running
            .iter()
            .filter(|(_, r)| r.events.is_closed() || now >= r.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            batch.cancel(id);
            let r = running.remove(&id).expect("listed");
            if r.events.is_closed() {
                metrics.cancelled.fetch_add(1, Ordering::Relaxed);
                metrics.add_generated(r.generated);
            } else {
                r.finish(Event::Failed(Failure::Timeout), &metrics);
            }
        }
        if batch.is_idle() {
            if !open {
                return;
            }
            continue;
        }
        let stepped = batch.step();
        // Before the events: a client that reads its answer sees the slot already free.
        metrics.slots_busy.store(batch.active(), Ordering::SeqCst);
        metrics.set_kv_tokens(batch.cached_tokens());
        match stepped {
            Ok(events) => {
                for ev in events {
                    route(ev, &mut running, &metrics);
                }
            }
            Err(e) => {
                // The device failed: every request in flight fails with it.
                let msg = e.to_string();
                for (id, r) in running.drain() {
                    batch.cancel(id);
                    let e = crate::Error::Gpu(msg.clone());
                    r.finish(Event::Failed(Failure::Engine(e)), &metrics);
                }
            }
        }
    }
}

/// Hands one batch event to its request.
fn route(ev: BatchEvent, running: &mut HashMap<SeqId, Running>, metrics: &Metrics) {
    match ev {
        BatchEvent::Token { seq, token } => {
            if let Some(r) = running.get_mut(&seq) {
                r.generated += 1;
                if !token.text.is_empty() {
                    let _ = r.events.send(Event::Delta(token.text));
                }
            }
        }
        BatchEvent::Done { seq, text, stats } => {
            let Some(r) = running.remove(&seq) else {
                return;
            };
            if !text.is_empty() {
                let _ = r.events.send(Event::Delta(text));
            }
            let cached_tokens = stats.prompt_tokens - stats.prefilled_tokens;
            metrics.add_prompt(stats.prompt_tokens, cached_tokens);
            metrics.set_decode_rate(stats.decode_tok_s());
            r.finish(
                Event::Done {
                    reason: stats.stop_reason,
                    prompt_tokens: stats.prompt_tokens,
                    cached_tokens,
                    completion_tokens: stats.generated_tokens,
                },
                metrics,
            );
        }
        BatchEvent::Failed { seq, error } => {
            if let Some(r) = running.remove(&seq) {
                r.finish(Event::Failed(Failure::Engine(error)), metrics);
            }
        }
    }
}
