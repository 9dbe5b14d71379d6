//! `wick serve`: an OpenAI-compatible HTTP server (axum on tokio) over one loaded model.
//!
//! Requests wait in a bounded FIFO queue (503 with `Retry-After` beyond it) for the one GPU
//! worker thread ([`worker`]), which owns the model's session and generates for one request
//! at a time, or with `--parallel N` a batch that decodes up to N requests together
//! (continuous batching: one decode step reads the weights once for all of them).
//!
//! Prefix reuse: each session's KV cache holds one sequence, the last request's prompt and
//! answer, and a new prompt that starts with some of those tokens (the same system prompt, a
//! chat's previous turn) prefills only the rest. Answers report the reused count as
//! `usage.prompt_tokens_details.cached_tokens`; `/metrics` sums it in
//! `wick_prompt_tokens_cached_total`. With `--parallel N`, N sequences stay cached (a request
//! takes the slot with the longest shared prefix, else the least recently used); more
//! conversations than that evict each other. A paged KV cache (pages shared between
//! sequences, LRU over pages) is not implemented.
//!
//! Endpoints: `POST /v1/chat/completions`, `POST /v1/completions` (both with server-sent
//! events when `stream` is set), `GET /v1/models`, `GET /health`, `GET /metrics`.
//! This module sits above the runtime, like the CLI; nothing below imports it.

pub mod api;
pub mod metrics;
pub mod worker;

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

use crate::error::{Error, Result};
use crate::model::Model;
use crate::runtime::batch::MAX_SLOTS;
use crate::runtime::{Batch, BatchOptions, Session};
use api::{ApiError, ChatRequest, Common, CompletionRequest, Prompt, Usage};
use metrics::Metrics;
use worker::{Event, Failure, InFlight, Job, Queue};

/// How the server listens and admits requests.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: String,
    /// 0 picks a free port (the bound address is printed on stdout either way).
    pub port: u16,
    /// Sequences decoded together; only 1 until continuous batching exists.
    pub parallel: usize,
    /// When set, `/v1/*` requires `Authorization: Bearer KEY`.
    pub api_key: Option<String>,
    /// Requests that may wait for the worker before new ones get 503.
    pub queue: usize,
    /// Per request, from admission to the last token.
    pub timeout: Duration,
    /// The id `/v1/models` lists and requests may name; default the model file's name.
    pub model_id: Option<String>,
    /// Largest request body accepted (413 beyond it).
    pub body_limit: usize,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            host: "127.0.0.1".into(),
            port: 8080,
            parallel: 1,
            api_key: None,
            queue: 64,
            timeout: Duration::from_secs(600),
            model_id: None,
            body_limit: 1 << 20,
        }
    }
}

impl ServeOptions {
    /// Refuses settings the server cannot honour (before any model is loaded).
    pub fn check(&self) -> Result<()> {
        if self.parallel == 0 || self.parallel > MAX_SLOTS {
            return Err(Error::InvalidArgument(format!(
                "--parallel {}: sequences decoded together, 1 to {MAX_SLOTS}",
                self.parallel
            )));
        }
        if self.queue == 0 {
            return Err(Error::InvalidArgument("--queue must be at least 1".into()));
        }
        if self.api_key.as_deref() == Some("") {
            return Err(Error::InvalidArgument("--api-key must not be empty".into()));
        }
        Ok(())
    }
}

/// The id a model is served under: its file (or directory) name without `.gguf`.
pub fn default_model_id(model: &Model) -> String {
    let p = model.path();
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "wick".into());
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

struct AppState {
    model: Model,
    model_id: String,
    ctx: usize,
    queue: Queue,
    metrics: Arc<Metrics>,
    api_key: Option<String>,
    timeout: Duration,
    created: u64,
    next_id: AtomicU64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Serves `model` until SIGINT or SIGTERM: then it stops accepting connections, lets the
/// requests in flight finish (each bounded by the timeout) and returns.
pub fn serve(model: Model, opts: ServeOptions) -> Result<()> {
    opts.check()?;
    let (decoder, ctx) = if opts.parallel > 1 {
        let batch = Batch::new(&model, BatchOptions::new(opts.parallel, model.context()))?;
        let ctx = batch.capacity();
        (worker::Decoder::Batched(Box::new(batch)), ctx)
    } else {
        let session = Session::new(&model)?;
        let ctx = session.capacity();
        (worker::Decoder::Single(Box::new(session)), ctx)
    };
    let metrics = Arc::new(Metrics::default());
    let (queue, worker) = worker::spawn(decoder, opts.queue, metrics.clone())?;
    let state = Arc::new(AppState {
        model_id: opts
            .model_id
            .clone()
            .unwrap_or_else(|| default_model_id(&model)),
        model,
        ctx,
        queue,
        metrics,
        api_key: opts.api_key.clone(),
        timeout: opts.timeout,
        created: unix_now(),
        next_id: AtomicU64::new(1),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("<tokio runtime>", e))?;
    let where_ = format!("{}:{}", opts.host, opts.port);
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind((opts.host.as_str(), opts.port))
            .await
            .map_err(|e| Error::io(&where_, e))?;
        let addr = listener.local_addr().map_err(|e| Error::io(&where_, e))?;
        let parallel = match opts.parallel {
            1 => "one request at a time".to_string(),
            n => format!("{n} requests decoded together"),
        };
        eprintln!(
            "wick serve: model {} (context {ctx} tokens each), queue {}, {parallel}",
            state.model_id, opts.queue
        );
        // On stdout, for scripts and tests that start the server on port 0.
        println!("wick serve: listening on http://{addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let app = router(state, opts.body_limit);
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await
            .map_err(|e| Error::io(&where_, e))
    })?;
    drop(rt);
    // The router (and with it the queue's sender) is gone: the worker ends after its job.
    let _ = worker.join();
    eprintln!("wick serve: stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    eprintln!("wick serve: shutting down (finishing the requests in flight)");
}

fn router(state: Arc<AppState>, body_limit: usize) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(state.clone(), auth))
        .layer(middleware::from_fn_with_state(state.clone(), count))
        .with_state(state)
}

/// The endpoint label of a path (unknown paths share one label, so clients cannot grow
/// the metrics without bound).
fn endpoint_label(path: &str) -> &'static str {
    match path {
        "/v1/chat/completions" => "/v1/chat/completions",
        "/v1/completions" => "/v1/completions",
        "/v1/models" => "/v1/models",
        "/health" => "/health",
        "/metrics" => "/metrics",
        p if p.starts_with("/v1/models/") => "/v1/models/{id}",
        _ => "other",
    }
}

async fn count(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_label(req.uri().path());
    let r = next.run(req).await;
    s.metrics.count_request(endpoint, r.status().as_u16());
    r
}

/// Compares without an early exit, so the time taken does not reveal a matching prefix.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &s.api_key {
        if req.uri().path().starts_with("/v1/") {
            let given = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            if !given.is_some_and(|g| same_key(g.trim().as_bytes(), key.as_bytes())) {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "missing or incorrect API key: send Authorization: Bearer KEY",
                )
                .code("invalid_api_key")
                .into_response();
            }
        }
    }
    next.run(req).await
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!("no endpoint {} {}", req.method(), req.uri().path()),
    )
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn metrics_text(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
        .into_response()
}

fn model_card(s: &AppState) -> Value {
    json!({"id": s.model_id, "object": "model", "created": s.created, "owned_by": "wick"})
}

async fn models(State(s): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [model_card(&s)]}))
}

async fn model(State(s): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    if id == s.model_id {
        Json(model_card(&s)).into_response()
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("The model `{id}` does not exist"),
        )
        .param("model")
        .code("model_not_found")
        .into_response()
    }
}

/// A body that could not be read: too large (413) or broken.
fn body_error(r: BytesRejection) -> ApiError {
    let status = r.status();
    let message = if status == StatusCode::PAYLOAD_TOO_LARGE {
        "the request body is larger than the server accepts".to_string()
    } else {
        r.body_text()
    };
    ApiError::new(status, message)
}

/// A library error as the client sees it: its own mistakes 400, the rest 500.
fn engine_error(e: Error) -> ApiError {
    match e {
        Error::InvalidArgument(_) | Error::Tokenizer(_) => {
            ApiError::new(StatusCode::BAD_REQUEST, e.to_string())
        }
        e => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Chat,
    Completion,
}

async fn chat(State(s): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    let run = async {
        let body = body.map_err(body_error)?;
        let req: ChatRequest = api::parse(&body)?;
        req.common.check_model(&s.model_id)?;
        let messages = req.chat_messages()?;
        let text = s.model.render_chat(&messages, true).map_err(engine_error)?;
        let ids = s
            .model
            .tokenizer()
            .and_then(|t| t.encode(&text))
            .map_err(engine_error)?;
        start(&s, ids, &req.common, Kind::Chat).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

async fn completions(
    State(s): State<Arc<AppState>>,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let run = async {
        let body = body.map_err(body_error)?;
        let req: CompletionRequest = api::parse(&body)?;
        req.common.check_model(&s.model_id)?;
        let ids = match req.prompt()? {
            Prompt::Text(t) => s
                .model
                .tokenizer()
                .and_then(|tok| tok.encode(&t))
                .map_err(engine_error)?,
            Prompt::Ids(ids) => {
                let vocab = s.model.config().vocab;
                if let Some(bad) = ids.iter().find(|&&i| i as usize >= vocab) {
                    return Err(ApiError::invalid(
                        "prompt",
                        format!("token id {bad} is outside the vocabulary (size {vocab})"),
                    ));
                }
                ids
            }
        };
        start(&s, ids, &req.common, Kind::Completion).await
    };
    run.await.unwrap_or_else(IntoResponse::into_response)
}

/// What every answer of one request carries.
struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
}

impl Meta {
    /// A streamed chunk with one choice (`None` choice: the usage-only chunk).
    fn chunk(&self, choice: Option<Value>, usage: Option<Usage>) -> Value {
        let object = match self.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": choice.map(|c| vec![c]).unwrap_or_default(),
        });
        // OpenAI sends `usage: null` on every chunk but the last when usage is asked for.
        if self.include_usage {
            v["usage"] = json!(usage);
        }
        v
    }

    fn delta(&self, text: Option<&str>, role: bool, finish: Option<&str>) -> Value {
        let choice = match self.kind {
            Kind::Chat => {
                let mut delta = json!({});
                if role {
                    delta["role"] = json!("assistant");
                }
                if let Some(t) = text {
                    delta["content"] = json!(t);
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
            Kind::Completion => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
        };
        self.chunk(Some(choice), None)
    }
}

fn failure_error(f: Failure, timeout: Duration) -> ApiError {
    match f {
        Failure::Timeout => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!(
                "the request did not finish within {} s (--timeout)",
                timeout.as_secs()
            ),
        )
        .code("timeout"),
        Failure::Engine(e) => engine_error(e),
    }
}

/// Checks the prompt against the context, queues the job and answers: a JSON body when it
/// is done, or server-sent events as tokens come.
async fn start(
    s: &Arc<AppState>,
    ids: Vec<u32>,
    common: &Common,
    kind: Kind,
) -> Result<Response, ApiError> {
    let param = match kind {
        Kind::Chat => "messages",
        Kind::Completion => "prompt",
    };
    if ids.is_empty() {
        return Err(ApiError::invalid(param, "the prompt is empty"));
    }
    if ids.len() > s.ctx {
        return Err(ApiError::invalid(
            param,
            format!(
                "the prompt has {} tokens but the context holds {} (start the server with a \
                 larger --ctx)",
                ids.len(),
                s.ctx
            ),
        )
        .code("context_length_exceeded"));
    }
    let params = common.generate_params(s.ctx - ids.len())?;
    let (tx, rx) = unbounded_channel();
    let job = Job {
        prompt: ids,
        params,
        deadline: Instant::now() + s.timeout,
        events: tx,
        slot: InFlight::new(s.metrics.clone()),
    };
    if s.queue.submit(job).is_err() {
        let mut e = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is busy: the request queue is full, retry later",
        )
        .code("queue_full");
        e.retry_after = Some(1);
        return Err(e);
    }
    let n = s.next_id.fetch_add(1, Ordering::Relaxed);
    let meta = Meta {
        kind,
        id: match kind {
            Kind::Chat => format!("chatcmpl-{n}"),
            Kind::Completion => format!("cmpl-{n}"),
        },
        created: unix_now(),
        model: s.model_id.clone(),
        include_usage: common.include_usage(),
    };
    if common.stream {
        Ok(stream(meta, rx, s.timeout).into_response())
    } else {
        collect(meta, rx, s.timeout).await
    }
}

/// Waits for the whole answer (dropping this future, when the client goes away, closes the
/// channel and so cancels the generation).
async fn collect(
    meta: Meta,
    mut rx: UnboundedReceiver<Event>,
    timeout: Duration,
) -> Result<Response, ApiError> {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Delta(t) => text.push_str(&t),
            Event::Failed(f) => return Err(failure_error(f, timeout)),
            Event::Done {
                reason,
                prompt_tokens,
                cached_tokens,
                completion_tokens,
            } => {
                let finish = api::finish_reason(reason);
                let usage = Usage::new(prompt_tokens, cached_tokens, completion_tokens);
                let choice = match meta.kind {
                    Kind::Chat => json!({
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "logprobs": null,
                        "finish_reason": finish,
                    }),
                    Kind::Completion => json!({
                        "index": 0, "text": text, "logprobs": null, "finish_reason": finish,
                    }),
                };
                let object = match meta.kind {
                    Kind::Chat => "chat.completion",
                    Kind::Completion => "text_completion",
                };
                return Ok(Json(json!({
                    "id": meta.id,
                    "object": object,
                    "created": meta.created,
                    "model": meta.model,
                    "choices": [choice],
                    "usage": usage,
                }))
                .into_response());
            }
        }
    }
    Err(ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "the generation worker stopped",
    ))
}

struct StreamState {
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    pending: VecDeque<SseEvent>,
    finished: bool,
    timeout: Duration,
}

fn data(v: &Value) -> SseEvent {
    SseEvent::default().data(v.to_string())
}

/// Server-sent events in OpenAI's chunk format: (chat) a first chunk with the role, one per
/// text delta, one with the finish reason, (`include_usage`) one with the usage, then
/// `[DONE]`. A failure ends the stream with an `{"error": ...}` chunk instead.
fn stream(
    meta: Meta,
    rx: UnboundedReceiver<Event>,
    timeout: Duration,
) -> Sse<impl futures::Stream<Item = std::result::Result<SseEvent, Infallible>>> {
    let mut pending = VecDeque::new();
    if meta.kind == Kind::Chat {
        pending.push_back(data(&meta.delta(Some(""), true, None)));
    }
    let st = StreamState {
        meta,
        rx,
        pending,
        finished: false,
        timeout,
    };
    let events = futures::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.pending.pop_front() {
                return Some((Ok(e), st));
            }
            if st.finished {
                return None;
            }
            st.finished = true;
            match st.rx.recv().await {
                Some(Event::Delta(t)) => {
                    st.finished = false;
                    st.pending
                        .push_back(data(&st.meta.delta(Some(&t), false, None)));
                }
                Some(Event::Done {
                    reason,
                    prompt_tokens,
                    cached_tokens,
                    completion_tokens,
                }) => {
                    let finish = api::finish_reason(reason);
                    let last = match st.meta.kind {
                        Kind::Chat => st.meta.delta(None, false, Some(finish)),
                        Kind::Completion => st.meta.delta(Some(""), false, Some(finish)),
                    };
                    st.pending.push_back(data(&last));
                    if st.meta.include_usage {
                        let usage = Usage::new(prompt_tokens, cached_tokens, completion_tokens);
                        st.pending
                            .push_back(data(&st.meta.chunk(None, Some(usage))));
                    }
                    st.pending.push_back(SseEvent::default().data("[DONE]"));
                }
                Some(Event::Failed(f)) => {
                    let e = failure_error(f, st.timeout);
                    st.pending.push_back(data(&e.body()));
                }
                None => {
                    let e = ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the generation worker stopped",
                    );
                    st.pending.push_back(data(&e.body()));
                }
            }
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}
