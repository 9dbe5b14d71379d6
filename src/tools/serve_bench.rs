//! `wick bench serve`: a load generator for an OpenAI-compatible server (`wick serve`, or any
//! other). For each concurrency level C it keeps C streaming chat requests in flight until
//! the level's requests are done, and reports aggregate output tokens/s, time to first token
//! and inter-token latency (p50/p99) and the errors seen.
//!
//! Plain HTTP/1.1 over hyper's client on tokio (one connection per request). Output tokens
//! are the server's own count (`stream_options.include_usage`); inter-token latency is the
//! gap between successive content chunks of a stream, as vLLM's `benchmark_serving` measures
//! it (a chunk carries one token's text, or several when a character spans tokens).
//! Requests set `ignore_eos` (llama.cpp's extension, which `wick serve` takes) so every one
//! generates `max_tokens` tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde_json::{json, Value};

use crate::error::{Error, Result};

/// The prompt sent when none is given.
pub const DEFAULT_PROMPT: &str =
    "Write a short story about a lighthouse keeper who finds a message in a bottle.";

/// What to send, where, and how hard.
#[derive(Debug, Clone)]
pub struct ServeBenchOptions {
    /// The server's root, e.g. `http://127.0.0.1:8080` (a trailing `/v1` is accepted).
    pub url: String,
    /// Clients in flight at once, one level after another.
    pub concurrency: Vec<usize>,
    /// Requests per level; None: 4 per client.
    pub requests: Option<usize>,
    pub max_tokens: usize,
    /// The user message of every request.
    pub prompt: String,
    /// The `model` field (None: omitted, the server's only model).
    pub model: Option<String>,
    /// Sent as `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Per request, from connecting to the end of the stream.
    pub timeout: Duration,
}

impl Default for ServeBenchOptions {
    fn default() -> Self {
        ServeBenchOptions {
            url: "http://127.0.0.1:8080".into(),
            concurrency: vec![1, 4, 16, 64],
            requests: None,
            max_tokens: 128,
            prompt: DEFAULT_PROMPT.into(),
            model: None,
            api_key: None,
            timeout: Duration::from_secs(600),
        }
    }
}

/// The 50th and 99th percentiles of a set of durations, in milliseconds (nearest rank; 0 for
/// an empty set).
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

impl Percentiles {
    pub fn of(values_ms: &mut [f64]) -> Percentiles {
        values_ms.sort_by(f64::total_cmp);
        Percentiles {
            p50: nearest_rank(values_ms, 50.0),
            p99: nearest_rank(values_ms, 99.0),
        }
    }
}

/// The nearest-rank percentile `p` of sorted values (0 when there are none).
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// One concurrency level's results.
#[derive(Debug, Clone, Serialize)]
pub struct LevelReport {
    pub concurrency: usize,
    /// Requests sent, and of them those that streamed to `[DONE]`.
    pub requests: usize,
    pub completed: usize,
    pub errors: usize,
    /// The first error's message (status and body, or what broke).
    pub first_error: Option<String>,
    /// Output tokens of the completed requests (the server's usage counts).
    pub output_tokens: usize,
    /// From the first request sent to the last one finished.
    pub wall_s: f64,
    pub output_tok_s: f64,
    /// Time to first token (first content chunk), over completed requests.
    pub ttft_ms: Percentiles,
    /// Gaps between successive content chunks, over all completed requests.
    pub itl_ms: Percentiles,
    /// Whole request latency, over completed requests.
    pub latency_ms: Percentiles,
}

/// The whole run: settings and one report per level.
#[derive(Debug, Clone, Serialize)]
pub struct ServeBenchReport {
    pub url: String,
    pub max_tokens: usize,
    pub prompt_chars: usize,
    pub levels: Vec<LevelReport>,
}

/// A completed streamed request.
struct Sample {
    ttft: Duration,
    gaps: Vec<Duration>,
    latency: Duration,
    tokens: usize,
}

/// Where requests go: host:port for the socket and the chat endpoint's path.
struct Target {
    authority: String,
    chat_path: String,
    health_path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target> {
        let bad = |why: &str| Error::InvalidArgument(format!("--url {url:?}: {why}"));
        let uri: Uri = url.parse().map_err(|e| bad(&format!("{e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some(s) => return Err(bad(&format!("scheme {s} is not supported (only http://)"))),
            None => return Err(bad("expected http://HOST:PORT")),
        }
        let host = uri.host().ok_or_else(|| bad("no host"))?;
        let port = uri.port_u16().unwrap_or(80);
        let base = uri.path().trim_end_matches('/');
        let base = base.strip_suffix("/v1").unwrap_or(base);
        Ok(Target {
            authority: format!("{host}:{port}"),
            chat_path: format!("{base}/v1/chat/completions"),
            health_path: format!("{base}/health"),
        })
    }
}

/// Runs every level in order against a server that is already up.
pub fn run(opts: &ServeBenchOptions) -> Result<ServeBenchReport> {
    if opts.concurrency.is_empty() || opts.concurrency.contains(&0) {
        return Err(Error::InvalidArgument(
            "--concurrency: give one or more levels, each at least 1".into(),
        ));
    }
    if opts.requests == Some(0) {
        return Err(Error::InvalidArgument(
            "--requests must be at least 1".into(),
        ));
    }
    if opts.max_tokens == 0 {
        return Err(Error::InvalidArgument(
            "--max-tokens must be at least 1".into(),
        ));
    }
    let target = Arc::new(Target::parse(&opts.url)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))?;
    rt.block_on(async {
        check_health(&target, opts).await?;
        let mut levels = Vec::new();
        for &c in &opts.concurrency {
            let n = opts.requests.unwrap_or(4 * c);
            levels.push(level(&target, opts, c, n).await);
        }
        Ok(ServeBenchReport {
            url: opts.url.clone(),
            max_tokens: opts.max_tokens,
            prompt_chars: opts.prompt.chars().count(),
            levels,
        })
    })
}

/// Fails early, with the address in the message, when nothing answers there.
async fn check_health(target: &Target, opts: &ServeBenchOptions) -> Result<()> {
    let req = Request::get(target.health_path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .body(Full::new(Bytes::new()))
        .map_err(|e| Error::InvalidArgument(format!("--url {:?}: {e}", opts.url)))?;
    let check = async {
        let (status, body) = send(target, req).await?;
        if status != StatusCode::OK {
            return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
        }
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(30), check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(Error::InvalidArgument(format!(
            "the server at {} is not healthy ({}): {e}",
            opts.url, target.health_path
        ))),
        Err(_) => Err(Error::InvalidArgument(format!(
            "the server at {} did not answer {} within 30 s",
            opts.url, target.health_path
        ))),
    }
}

/// One level: `clients` tasks take requests from a shared count until `n` are sent.
async fn level(
    target: &Arc<Target>,
    opts: &ServeBenchOptions,
    clients: usize,
    n: usize,
) -> LevelReport {
    let mut body = json!({
        "messages": [{"role": "user", "content": opts.prompt}],
        "max_tokens": opts.max_tokens,
        "temperature": 0,
        "ignore_eos": true,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(m) = &opts.model {
        body["model"] = json!(m);
    }
    let body = Bytes::from(body.to_string());
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.min(n) {
        let (target, body, next) = (target.clone(), body.clone(), next.clone());
        let (key, timeout) = (opts.api_key.clone(), opts.timeout);
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                let r = tokio::time::timeout(
                    timeout,
                    stream_one(&target, body.clone(), key.as_deref()),
                )
                .await
                .unwrap_or_else(|_| Err(format!("no end of stream within {timeout:?}")));
                out.push(r);
            }
            out
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => results.extend(r),
            Err(e) => results.push(Err(format!("client task failed: {e}"))),
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    summarize(clients, results, wall)
}

fn summarize(
    concurrency: usize,
    results: Vec<std::result::Result<Sample, String>>,
    wall_s: f64,
) -> LevelReport {
    let ms = |d: &Duration| d.as_secs_f64() * 1e3;
    let mut ttft = Vec::new();
    let mut itl = Vec::new();
    let mut latency = Vec::new();
    let mut output_tokens = 0;
    let mut errors = 0;
    let mut first_error = None;
    let requests = results.len();
    for r in results {
        match r {
            Ok(s) => {
                ttft.push(ms(&s.ttft));
                itl.extend(s.gaps.iter().map(ms));
                latency.push(ms(&s.latency));
                output_tokens += s.tokens;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    LevelReport {
        concurrency,
        requests,
        completed: requests - errors,
        errors,
        first_error,
        output_tokens,
        wall_s,
        output_tok_s: if wall_s > 0.0 {
            output_tokens as f64 / wall_s
        } else {
            0.0
        },
        ttft_ms: Percentiles::of(&mut ttft),
        itl_ms: Percentiles::of(&mut itl),
        latency_ms: Percentiles::of(&mut latency),
    }
}

/// Sends one request on a fresh connection and returns the status with the whole body.
async fn send(
    target: &Target,
    req: Request<Full<Bytes>>,
) -> std::result::Result<(StatusCode, Bytes), String> {
    let resp = connect_and_send(target, req).await?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?
        .to_bytes();
    Ok((status, body))
}

async fn connect_and_send(
    target: &Target,
    req: Request<Full<Bytes>>,
) -> std::result::Result<hyper::Response<hyper::body::Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect(target.authority.as_str())
        .await
        .map_err(|e| format!("connecting to {}: {e}", target.authority))?;
    let _ = tcp.set_nodelay(true);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| format!("HTTP handshake: {e}"))?;
    // The connection task ends when the response is read (or the request dropped).
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("sending the request: {e}"))
}

/// One streaming chat request, timed from just before connecting.
async fn stream_one(
    target: &Target,
    body: Bytes,
    api_key: Option<&str>,
) -> std::result::Result<Sample, String> {
    let mut req = Request::post(target.chat_path.as_str())
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(hyper::header::ACCEPT, "text/event-stream");
    if let Some(k) = api_key {
        req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {k}"));
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    let resp = connect_and_send(target, req).await?;
    let status = resp.status();
    let mut body = resp.into_body();
    if status != StatusCode::OK {
        let text = body
            .collect()
            .await
            .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
            .unwrap_or_default();
        return Err(format!("HTTP {status}: {}", text.trim()));
    }
    let mut events = SseParser::default();
    let mut chunks: Vec<Instant> = Vec::new();
    let mut tokens = None;
    let mut done = false;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the stream: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let now = Instant::now();
        for ev in events.push(&data) {
            if ev == "[DONE]" {
                done = true;
                continue;
            }
            let v: Value = serde_json::from_str(&ev)
                .map_err(|e| format!("a stream event is not JSON ({e}): {ev}"))?;
            if let Some(err) = v.get("error") {
                return Err(format!("error event: {err}"));
            }
            let content = v["choices"][0]["delta"]["content"].as_str();
            if content.is_some_and(|c| !c.is_empty()) {
                chunks.push(now);
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                tokens = Some(n as usize);
            }
        }
    }
    let latency = t0.elapsed();
    if !done {
        return Err("the stream ended without data: [DONE]".into());
    }
    let tokens = tokens.ok_or("the stream carried no usage chunk")?;
    let Some(&first) = chunks.first() else {
        return Err("the stream carried no content".into());
    };
    Ok(Sample {
        ttft: first - t0,
        gaps: chunks.windows(2).map(|w| w[1] - w[0]).collect(),
        latency,
        tokens,
    })
}

/// Server-sent events from a byte stream: the `data` of each event, its lines joined.
#[derive(Default)]
struct SseParser {
    buf: Vec<u8>,
    data: Vec<String>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        self.buf.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buf.drain(..=i).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() {
                    out.push(std::mem::take(&mut self.data).join("\n"));
                }
            } else if let Some(d) = line.strip_prefix("data:") {
                self.data.push(d.strip_prefix(' ').unwrap_or(d).to_string());
            }
            // Comments (`:` keep-alives) and other fields are ignored.
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(
            Percentiles::of(&mut v),
            Percentiles {
                p50: 50.0,
                p99: 99.0
            }
        );
        assert_eq!(
            Percentiles::of(&mut [7.0]),
            Percentiles { p50: 7.0, p99: 7.0 }
        );
        assert_eq!(Percentiles::of(&mut []), Percentiles::default());
    }

    #[test]
    fn sse_events_split_across_reads() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: {\"a\"").is_empty());
        assert_eq!(
            p.push(b":1}\r\n\r\n: keep-alive\n\ndata:x\n"),
            vec!["{\"a\":1}"]
        );
        assert_eq!(
            p.push(b"data: y\n\ndata: [DONE]\n\n"),
            vec!["x\ny", "[DONE]"]
        );
    }

    #[test]
    fn urls_name_the_server_root() {
        let t = Target::parse("http://127.0.0.1:8080").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.chat_path.as_str()),
            ("127.0.0.1:8080", "/v1/chat/completions")
        );
        let t = Target::parse("http://localhost/v1/").unwrap();
        assert_eq!(
            (t.authority.as_str(), t.health_path.as_str()),
            ("localhost:80", "/health")
        );
        assert!(Target::parse("https://example.com").is_err());
        assert!(Target::parse("127.0.0.1:8080").is_err());
    }

    #[test]
    fn summary_counts_errors_and_tokens() {
        let ok = |ttft, gaps: &[u64], tokens| {
            Ok(Sample {
                ttft: Duration::from_millis(ttft),
                gaps: gaps.iter().map(|&g| Duration::from_millis(g)).collect(),
                latency: Duration::from_millis(ttft + gaps.iter().sum::<u64>()),
                tokens,
            })
        };
        let r = summarize(
            2,
            vec![ok(10, &[5, 5], 3), Err("HTTP 503".into()), ok(30, &[7], 2)],
            2.0,
        );
        assert_eq!((r.requests, r.completed, r.errors), (3, 2, 1));
        assert_eq!(r.first_error.as_deref(), Some("HTTP 503"));
        assert_eq!((r.output_tokens, r.output_tok_s), (5, 2.5));
        assert_eq!(
            r.ttft_ms,
            Percentiles {
                p50: 10.0,
                p99: 30.0
            }
        );
        assert_eq!(r.itl_ms, Percentiles { p50: 5.0, p99: 7.0 });
    }
}
