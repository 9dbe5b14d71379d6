//! Counters behind `GET /metrics`, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

#[derive(Default)]
pub struct Metrics {
    /// Answers by (endpoint, HTTP status).
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    generated: AtomicU64,
    /// Prompt tokens of started generations, and those of them served from the KV cache.
    prompt: AtomicU64,
    prompt_cached: AtomicU64,
    /// Tokens the KV cache holds after the last request (the sequence a next prompt may reuse).
    kv_tokens: AtomicUsize,
    /// Requests whose client went away before they finished.
    pub cancelled: AtomicU64,
    /// Decode tokens/s of the last finished request, as f64 bits.
    decode_rate: AtomicU64,
    /// Requests waiting for the worker.
    pub queued: AtomicUsize,
    /// Requests admitted and not finished (queued or generating).
    pub in_flight: AtomicUsize,
    /// Sequences the worker decodes at most at once (`--parallel`), and those it holds now
    /// (prefilling or decoding).
    pub slots: AtomicUsize,
    pub slots_busy: AtomicUsize,
}

impl Metrics {
    pub fn count_request(&self, endpoint: &str, status: u16) {
        let mut m = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((endpoint.to_string(), status)).or_default() += 1;
    }

    pub fn add_generated(&self, n: usize) {
        self.generated.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_prompt(&self, tokens: usize, cached: usize) {
        self.prompt.fetch_add(tokens as u64, Ordering::Relaxed);
        self.prompt_cached
            .fetch_add(cached as u64, Ordering::Relaxed);
    }

    pub fn set_kv_tokens(&self, n: usize) {
        self.kv_tokens.store(n, Ordering::Relaxed);
    }

    pub fn set_decode_rate(&self, tok_s: f64) {
        self.decode_rate.store(tok_s.to_bits(), Ordering::Relaxed);
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP wick_requests_total HTTP requests answered, by endpoint and status.\n\
             # TYPE wick_requests_total counter"
        );
        let requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        for ((endpoint, status), n) in requests.iter() {
            let _ = writeln!(
                s,
                "wick_requests_total{{endpoint=\"{endpoint}\",status=\"{status}\"}} {n}"
            );
        }
        drop(requests);
        let rows: [(&str, &str, &str, String); 10] = [
            (
                "wick_generated_tokens_total",
                "counter",
                "Tokens generated.",
                self.generated.load(Ordering::Relaxed).to_string(),
            ),
            (
                "wick_prompt_tokens_total",
                "counter",
                "Prompt tokens of the generations started.",
                self.prompt.load(Ordering::Relaxed).to_string(),
            ),
            (
                "wick_prompt_tokens_cached_total",
                "counter",
                "Prompt tokens served from the KV cache (a prefix shared with the previous \
                 request) instead of being prefilled.",
                self.prompt_cached.load(Ordering::Relaxed).to_string(),
            ),
            (
                "wick_kv_cache_tokens",
                "gauge",
                "Tokens held in the KV caches (each session's last sequence).",
                self.kv_tokens.load(Ordering::Relaxed).to_string(),
            ),
            (
                "wick_cancelled_requests_total",
                "counter",
                "Generations cancelled because the client disconnected.",
                self.cancelled.load(Ordering::Relaxed).to_string(),
            ),
            (
                "wick_decode_tokens_per_second",
                "gauge",
                "Decode speed of the last finished request.",
                f64::from_bits(self.decode_rate.load(Ordering::Relaxed)).to_string(),
            ),
            (
                "wick_queue_length",
                "gauge",
                "Requests waiting for the GPU worker.",
                self.queued.load(Ordering::SeqCst).to_string(),
            ),
            (
                "wick_requests_in_flight",
                "gauge",
                "Generation requests admitted and not finished (queued or running).",
                self.in_flight.load(Ordering::SeqCst).to_string(),
            ),
            (
                "wick_parallel_slots",
                "gauge",
                "Sequences decoded together at most (--parallel).",
                self.slots.load(Ordering::Relaxed).to_string(),
            ),
            (
                "wick_parallel_slots_busy",
                "gauge",
                "Sequences being prefilled or decoded now.",
                self.slots_busy.load(Ordering::SeqCst).to_string(),
            ),
        ];
        for (name, kind, help, value) in rows {
            let _ = writeln!(
                s,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        }
        s
    }
}
