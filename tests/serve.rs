//! `wick serve` end to end: the built binary on a free port with the real SmolLM2 model,
//! driven over HTTP. Greedy answers must equal `wick run`'s for the same prompt; streaming,
//! `stop`, `max_tokens`, the error codes, the API key, client disconnects, /metrics and a
//! clean exit on SIGTERM are checked on one server; the official `openai` Python client on
//! another (tests/serve_openai.py).
//!
//! Without the model the tests pass vacuously unless `WICK_REQUIRE_MODEL=1` (as in CI); the
//! Python test also needs python3 with the `openai` package (`$WICK_PYTHON`, else `python3`),
//! required under the same variable.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub mod common;

const KEY: &str = "test-key";
const CTX: usize = 256;
const QUESTION: &str = "What is the capital of France?";

/// A `wick serve` child process, killed on drop (a failing test leaves nothing behind).
struct Server {
    child: Child,
    /// host:port
    addr: String,
    log: PathBuf,
    _stdout: BufReader<ChildStdout>,
    _dir: tempfile::TempDir,
}

impl Server {
    fn start(model: &Path, extra: &[&str]) -> Server {
        Server::start_with_ctx(model, CTX, extra)
    }

    fn start_with_ctx(model: &Path, ctx: usize, extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_wick"))
            .args([
                "serve",
                "-q",
                "--port",
                "0",
                "--ctx",
                &ctx.to_string(),
                "-m",
            ])
            .arg(model)
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start wick serve");
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let addr = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap_or(0) == 0 {
                let _ = child.kill();
                panic!(
                    "wick serve exited before listening: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if let Some(a) = line.trim().strip_prefix("wick serve: listening on http://") {
                break a.to_string();
            }
        };
        Server {
            child,
            addr,
            log,
            _stdout: stdout,
            _dir: dir,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(300)))
        .build()
        .into()
}

/// A response: status, headers we look at, body text.
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

fn send(req: Result<ureq::http::Response<ureq::Body>, ureq::Error>) -> Reply {
    let r = req.expect("HTTP request");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    let body = r.into_body().read_to_string().unwrap();
    Reply {
        status,
        retry_after,
        body,
    }
}

fn get(s: &Server, path: &str, key: Option<&str>) -> Reply {
    let mut r = agent().get(s.url(path));
    if let Some(k) = key {
        r = r.header("Authorization", format!("Bearer {k}"));
    }
    send(r.call())
}

fn post_raw(s: &Server, path: &str, body: &str, key: Option<&str>) -> Reply {
    let mut r = agent()
        .post(s.url(path))
        .header("Content-Type", "application/json");
    if let Some(k) = key {
        r = r.header("Authorization", format!("Bearer {k}"));
    }
    send(r.send(body))
}

fn post(s: &Server, path: &str, body: &Value) -> Reply {
    post_raw(s, path, &body.to_string(), Some(KEY))
}

/// A successful JSON answer.
fn ok(s: &Server, path: &str, body: &Value) -> Value {
    let r = post(s, path, body);
    assert_eq!(r.status, 200, "{body} -> {} (log: {})", r.body, s.log());
    r.json()
}

/// The `data:` payloads of a server-sent event stream, in order.
fn sse(s: &Server, path: &str, body: &Value) -> Vec<String> {
    let r = post(s, path, body);
    assert_eq!(r.status, 200, "{}", r.body);
    r.body
        .lines()
        .filter_map(|l| l.strip_prefix("data: ").or(l.strip_prefix("data:")))
        .map(str::to_string)
        .collect()
}

/// The text and finish reasons a chat (or completion) stream carries; checks the chunks'
/// shape and the closing `[DONE]`.
fn stream_text(events: &[String], chat: bool) -> (String, Vec<String>, Vec<Value>) {
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
        .collect();
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let mut text = String::new();
    let mut finish = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c["object"], object, "{c}");
        assert!(c["id"].is_string() && c["created"].is_u64(), "{c}");
        let Some(choice) = c["choices"].as_array().and_then(|a| a.first()) else {
            continue;
        };
        if chat && i == 0 {
            assert_eq!(choice["delta"]["role"], "assistant", "first chunk: {c}");
        }
        let t = if chat {
            &choice["delta"]["content"]
        } else {
            &choice["text"]
        };
        text.push_str(t.as_str().unwrap_or(""));
        if let Some(f) = choice["finish_reason"].as_str() {
            finish.push(f.to_string());
        }
    }
    (text, finish, chunks)
}

fn chat_body(extra: Value) -> Value {
    let mut b = json!({
        "model": null,
        "messages": [{"role": "user", "content": QUESTION}],
        "temperature": 0,
        "max_tokens": 8,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

/// `wick run --json`'s greedy answer to QUESTION (same template, context, token count).
fn wick_run(model: &Path, n: usize) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args([
            "run",
            "-q",
            "--json",
            "--ctx",
            &CTX.to_string(),
            "-n",
            &n.to_string(),
            "-m",
        ])
        .arg(model)
        .arg(QUESTION)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn error_of(r: &Reply, status: u16) -> Value {
    assert_eq!(r.status, status, "{}", r.body);
    let e = r.json()["error"].clone();
    assert!(e["message"].is_string() && e["type"].is_string(), "{e}");
    assert!(e.get("param").is_some() && e.get("code").is_some(), "{e}");
    e
}

fn cached_tokens(answer: &Value) -> u64 {
    answer["usage"]["prompt_tokens_details"]["cached_tokens"]
        .as_u64()
        .unwrap_or_else(|| panic!("no usage.prompt_tokens_details.cached_tokens: {answer}"))
}

fn chat_text(answer: &Value) -> String {
    answer["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_else(|| panic!("no content: {answer}"))
        .to_string()
}

/// Prefix reuse: a prompt sharing a prefix with the previous request's reuses its cache
/// entries, and greedy answers stay those of a cold start. `content` is the fresh answer to
/// QUESTION (`wick run`'s, in another process) and `prompt_tokens` its prompt length.
fn prefix_reuse_changes_no_answer(s: &Server, content: &str, prompt_tokens: u64) {
    // A: another question (same template, system prompt and opening words), then QUESTION.
    let other = json!({
        "messages": [{"role": "user", "content": "What is the capital of Spain?"}],
        "max_tokens": 1,
    });
    ok(s, "/v1/chat/completions", &chat_body(other));
    let b = ok(s, "/v1/chat/completions", &chat_body(json!({})));
    let cached = cached_tokens(&b);
    assert!(
        cached > 0 && cached < prompt_tokens - 1,
        "shared prefix {cached} of {prompt_tokens}: {b}"
    );
    assert_eq!(chat_text(&b), content, "after another request: {b}");

    // The chat's next turn: the whole previous prompt (and more) comes from the cache.
    let turn = chat_body(json!({"messages": [
        {"role": "user", "content": QUESTION},
        {"role": "assistant", "content": content},
        {"role": "user", "content": "And of Italy?"},
    ], "max_tokens": 4}));
    let warm = ok(s, "/v1/chat/completions", &turn);
    assert!(cached_tokens(&warm) >= prompt_tokens, "{warm}");
    // Something sharing no token with it empties the cache; the turn again, computed cold.
    let unrelated = json!({"prompt": "Once upon a time", "max_tokens": 1, "temperature": 0});
    let u = ok(s, "/v1/completions", &unrelated);
    assert_eq!(cached_tokens(&u), 0, "{u}");
    let cold = ok(s, "/v1/chat/completions", &turn);
    assert_eq!(cached_tokens(&cold), 0, "{cold}");
    assert_eq!(
        chat_text(&warm),
        chat_text(&cold),
        "warm {warm} vs cold {cold}"
    );
    assert_eq!(
        warm["usage"]["completion_tokens"],
        cold["usage"]["completion_tokens"]
    );
}

/// Polls /metrics until no request is queued or in flight (or a minute passes).
fn settled_metrics(s: &Server) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let m = get(s, "/metrics", None).body;
        let idle =
            metric(&m, "wick_requests_in_flight") == 0.0 && metric(&m, "wick_queue_length") == 0.0;
        if idle || Instant::now() > deadline {
            return m;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// How a client of [`concurrent_clients_with_random_disconnects`] leaves.
#[derive(Debug, Clone, Copy)]
enum Leave {
    /// Right after sending the request.
    AfterSending,
    /// After the response's first bytes.
    AfterHeaders,
    /// After the first content chunk.
    AfterContent,
    /// Reads the stream to `[DONE]`.
    AtTheEnd,
}

/// One streamed chat over a raw socket, left as `leave` says; returns what was read.
fn streaming_client(addr: &str, leave: Leave, req: &StreamRequest) -> String {
    let (path, body) = (req.path, &req.body);
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let done = match leave {
            Leave::AfterSending => true,
            Leave::AfterHeaders => !seen.is_empty(),
            Leave::AfterContent => seen.matches(req.content.0).count() >= req.content.1,
            Leave::AtTheEnd => false,
        };
        if done {
            return seen;
        }
        let n = c.read(&mut buf).expect("read the stream");
        if n == 0 {
            return seen;
        }
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
}

/// Several streaming clients at once, some leaving at random points: every one that stays
/// gets its whole answer, and afterwards nothing is left queued or in flight.
/// A streamed request of [`concurrent_clients_with_random_disconnects`] and the answer it
/// gets when read to the end.
#[derive(Clone)]
struct StreamRequest {
    path: &'static str,
    /// A streaming body with a small max_tokens.
    body: String,
    /// Seen this many times, the stream has sent content.
    content: (&'static str, usize),
    /// The same request without `stream` (and maybe a larger max_tokens), and its text.
    check: (&'static str, Value, String),
}

impl StreamRequest {
    /// QUESTION as a chat, whose prompt the cache holds: each request prefills one token.
    fn question(content: &str) -> StreamRequest {
        StreamRequest {
            path: "/v1/chat/completions",
            body: chat_body(json!({"stream": true, "max_tokens": 2})).to_string(),
            // The first chunk's content is the empty role chunk's.
            content: ("\"content\"", 2),
            check: (
                "/v1/chat/completions",
                chat_body(json!({})),
                content.to_string(),
            ),
        }
    }
}

fn concurrent_clients_with_random_disconnects(s: &Server, req: &StreamRequest, clients: usize) {
    use rand::{Rng, SeedableRng};
    let seed: u64 = rand::rng().random();
    eprintln!("concurrent clients: seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let leaves = [
        Leave::AfterSending,
        Leave::AfterHeaders,
        Leave::AfterContent,
        Leave::AtTheEnd,
    ];
    let plan: Vec<Leave> = (0..clients)
        .map(|i| match i {
            // At least two read to the end.
            0 | 1 => Leave::AtTheEnd,
            _ => leaves[rng.random_range(0..leaves.len())],
        })
        .collect();
    let threads: Vec<_> = plan
        .iter()
        .map(|&leave| {
            let addr = s.addr.clone();
            let req = req.clone();
            std::thread::spawn(move || (leave, streaming_client(&addr, leave, &req)))
        })
        .collect();
    for t in threads {
        let (leave, seen) = t.join().unwrap();
        if let Leave::AtTheEnd = leave {
            assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
            assert!(seen.contains("\"finish_reason\":\""), "{seen}");
            assert!(seen.contains("data: [DONE]"), "{seen}");
        }
    }
    let m = settled_metrics(s);
    assert_eq!(metric(&m, "wick_requests_in_flight"), 0.0, "{plan:?}\n{m}");
    assert_eq!(metric(&m, "wick_queue_length"), 0.0, "{plan:?}\n{m}");
    assert_eq!(get(s, "/health", None).json()["status"], "ok");
    let (path, body, want) = &req.check;
    let after = ok(s, path, body);
    let text = match *path {
        "/v1/chat/completions" => chat_text(&after),
        _ => after["choices"][0]["text"].as_str().unwrap().to_string(),
    };
    assert_eq!(&text, want, "{plan:?}: {after}");
}

/// `wick bench serve` against the running server: two small levels, counts that add up.
fn bench_serve_reports(s: &Server) {
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(["bench", "serve", "--url"])
        .arg(format!("http://{}", s.addr))
        .args([
            "--api-key",
            KEY,
            "--concurrency",
            "1,2",
            "--requests",
            "2",
            "--max-tokens",
            "4",
            "--prompt",
            QUESTION,
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let levels = r["levels"].as_array().unwrap();
    assert_eq!(levels.len(), 2, "{r}");
    for (l, c) in levels.iter().zip([1, 2]) {
        assert_eq!(l["concurrency"], c, "{l}");
        assert_eq!(
            (&l["requests"], &l["completed"], &l["errors"]),
            (&json!(2), &json!(2), &json!(0)),
            "{l}"
        );
        // ignore_eos: exactly max_tokens each.
        assert_eq!(l["output_tokens"], 8, "{l}");
        let f = |k: &str, p: &str| l[k][p].as_f64().unwrap();
        let wall_ms = l["wall_s"].as_f64().unwrap() * 1e3;
        assert!(l["output_tok_s"].as_f64().unwrap() > 0.0, "{l}");
        assert!(f("ttft_ms", "p50") > 0.0, "{l}");
        assert!(f("ttft_ms", "p50") <= f("ttft_ms", "p99"), "{l}");
        assert!(f("ttft_ms", "p99") <= f("latency_ms", "p99"), "{l}");
        assert!(f("latency_ms", "p99") <= wall_ms, "{l}");
        assert!(f("itl_ms", "p50") <= f("itl_ms", "p99"), "{l}");
        assert!(f("itl_ms", "p99") <= f("latency_ms", "p99"), "{l}");
    }
}

/// A streamed request over a raw socket, dropped after the first content chunks: the
/// server must cancel the generation, stay healthy and count the request out of flight.
fn disconnect_mid_stream(s: &Server) {
    let body =
        chat_body(json!({"stream": true, "max_tokens": 200, "ignore_eos": true})).to_string();
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        s.addr,
        body.len()
    )
    .unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while seen.matches("\"content\"").count() < 3 {
        let n = c.read(&mut buf).expect("read the stream");
        assert!(n > 0, "stream ended early: {seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    drop(c);
}

#[test]
fn serve_answers_like_wick_run_and_speaks_openai() {
    let Some(model) = common::model_or_skip() else {
        return;
    };
    let reference = wick_run(&model, 8);
    let s = Server::start(&model, &["--api-key", KEY]);

    // Open endpoints, the key on /v1/*.
    assert_eq!(get(&s, "/health", None).json()["status"], "ok");
    error_of(&get(&s, "/v1/models", None), 401);
    error_of(&get(&s, "/v1/models", Some("wrong")), 401);
    let models = get(&s, "/v1/models", Some(KEY)).json();
    let id = models["data"][0]["id"].as_str().unwrap().to_string();
    assert_eq!(models["object"], "list");
    assert_eq!(id, "SmolLM2-135M-Instruct.Q4_1", "{models}");
    let r = post_raw(
        &s,
        "/v1/chat/completions",
        &chat_body(json!({})).to_string(),
        None,
    );
    error_of(&r, 401);

    // Greedy chat: the same text, prompt and token counts as `wick run`.
    let full = ok(&s, "/v1/chat/completions", &chat_body(json!({"model": id})));
    assert_eq!(full["object"], "chat.completion");
    let content = full["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(content, reference["text"].as_str().unwrap(), "{full}");
    assert_eq!(full["choices"][0]["message"]["role"], "assistant");
    let usage = &full["usage"];
    let prompt_tokens = reference["prompt_ids"].as_array().unwrap().len() as u64;
    let generated = reference["stats"]["generated_tokens"].as_u64().unwrap();
    assert_eq!(usage["prompt_tokens"], prompt_tokens, "{usage}");
    assert_eq!(usage["completion_tokens"], generated, "{usage}");
    assert_eq!(usage["total_tokens"], prompt_tokens + generated);
    // The server's first generation: nothing cached yet.
    assert_eq!(
        usage["prompt_tokens_details"]["cached_tokens"], 0,
        "{usage}"
    );
    let finish = match reference["stats"]["stop_reason"].as_str().unwrap() {
        "max_tokens" => "length",
        _ => "stop",
    };
    assert_eq!(full["choices"][0]["finish_reason"], finish);
    assert!(
        content.chars().count() >= 4,
        "too short for the stop test: {content:?}"
    );

    // Streamed: the same text, a role chunk first, one finish reason, usage on request.
    let events = sse(
        &s,
        "/v1/chat/completions",
        &chat_body(json!({"stream": true, "stream_options": {"include_usage": true}})),
    );
    let (text, finishes, chunks) = stream_text(&events, true);
    assert_eq!(text, content);
    assert_eq!(finishes, vec![finish.to_string()]);
    let streamed = &chunks.last().unwrap()["usage"];
    for k in ["prompt_tokens", "completion_tokens", "total_tokens"] {
        assert_eq!(streamed[k], usage[k], "{events:?}");
    }
    // The same prompt again: all of it but the last token (always recomputed) is reused.
    assert_eq!(
        streamed["prompt_tokens_details"]["cached_tokens"],
        prompt_tokens - 1,
        "{streamed}"
    );

    prefix_reuse_changes_no_answer(&s, &content, prompt_tokens);

    // max_tokens / max_completion_tokens: cut with finish_reason "length".
    for field in ["max_tokens", "max_completion_tokens"] {
        let short = ok(
            &s,
            "/v1/chat/completions",
            &chat_body(json!({"max_tokens": null, field: 3})),
        );
        assert_eq!(short["choices"][0]["finish_reason"], "length", "{short}");
        assert_eq!(short["usage"]["completion_tokens"], 3);
        assert_eq!(short["usage"]["total_tokens"], prompt_tokens + 3);
    }

    // stop: the answer ends right before the stop text, streamed or not (no partial leak).
    let chars: Vec<char> = content.chars().collect();
    let mid = chars.len() / 2;
    let stop: String = chars[mid..mid + 2].iter().collect();
    let expect = &content[..content.find(&stop).unwrap()];
    let stopped = ok(
        &s,
        "/v1/chat/completions",
        &chat_body(json!({"stop": [stop.clone(), "zzzz"]})),
    );
    assert_eq!(
        stopped["choices"][0]["message"]["content"], expect,
        "stop {stop:?}"
    );
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    let events = sse(
        &s,
        "/v1/chat/completions",
        &chat_body(json!({"stop": stop.clone(), "stream": true})),
    );
    let (text, finishes, _) = stream_text(&events, true);
    assert_eq!(text, expect, "streamed stop {stop:?}");
    assert_eq!(finishes, vec!["stop".to_string()]);

    // Text completion, streamed and not.
    let body = json!({"prompt": "The capital of France is", "max_tokens": 4, "temperature": 0});
    let done = ok(&s, "/v1/completions", &body);
    assert_eq!(done["object"], "text_completion");
    let ctext = done["choices"][0]["text"].as_str().unwrap().to_string();
    assert!(!ctext.is_empty(), "{done}");
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    let (text, _, _) = stream_text(&sse(&s, "/v1/completions", &sbody), false);
    assert_eq!(text, ctext);

    // Errors: OpenAI's JSON, the right status.
    error_of(
        &post_raw(&s, "/v1/chat/completions", "{\"messages\": [", Some(KEY)),
        400,
    );
    let e = error_of(
        &post(
            &s,
            "/v1/chat/completions",
            &chat_body(json!({"model": "gpt-4o"})),
        ),
        404,
    );
    assert_eq!(e["code"], "model_not_found");
    let e = error_of(
        &post(&s, "/v1/chat/completions", &chat_body(json!({"n": 2}))),
        400,
    );
    assert_eq!(e["param"], "n");
    let e = error_of(
        &post(
            &s,
            "/v1/chat/completions",
            &chat_body(json!({"frequency_penalty": 0.5})),
        ),
        400,
    );
    assert_eq!(e["param"], "frequency_penalty");
    let long = "word ".repeat(2 * CTX);
    let e = error_of(
        &post(
            &s,
            "/v1/chat/completions",
            &json!({"messages": [{"role": "user", "content": long}]}),
        ),
        400,
    );
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains(&format!("holds {CTX}")) && m.contains("tokens"),
        "{m}"
    );
    // Just over the 1 MiB limit: the server rejects it once it has read (nearly) all of it,
    // so the client is not left writing into a closed connection (a broken pipe).
    let huge = format!("{{\"prompt\": \"{}\"}}", "a".repeat((1 << 20) + 64));
    error_of(&post_raw(&s, "/v1/completions", &huge, Some(KEY)), 413);
    error_of(&get(&s, "/v1/nothing", Some(KEY)), 404);
    let r = post(&s, "/v1/chat/completions", &json!({"messages": "hi"}));
    error_of(&r, 400);
    assert!(r.retry_after.is_none());

    // A client that goes away mid-stream cancels its generation; the server carries on.
    disconnect_mid_stream(&s);
    let again = ok(&s, "/v1/chat/completions", &chat_body(json!({})));
    assert_eq!(again["choices"][0]["message"]["content"], content.as_str());
    let deadline = Instant::now() + Duration::from_secs(60);
    let metrics = loop {
        let m = get(&s, "/metrics", None).body;
        if metric(&m, "wick_cancelled_requests_total") >= 1.0 || Instant::now() > deadline {
            break m;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(
        metric(&metrics, "wick_cancelled_requests_total"),
        1.0,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "wick_requests_in_flight"),
        0.0,
        "{metrics}"
    );
    assert_eq!(metric(&metrics, "wick_queue_length"), 0.0, "{metrics}");
    assert!(
        metric(&metrics, "wick_generated_tokens_total") >= 20.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "wick_decode_tokens_per_second") > 0.0,
        "{metrics}"
    );
    let cached = metric(&metrics, "wick_prompt_tokens_cached_total");
    assert!(
        cached > 0.0 && cached < metric(&metrics, "wick_prompt_tokens_total"),
        "{metrics}"
    );
    assert!(metric(&metrics, "wick_kv_cache_tokens") > 0.0, "{metrics}");
    for line in [
        "wick_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}",
        "wick_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}",
        "wick_requests_total{endpoint=\"/v1/chat/completions\",status=\"401\"}",
        "wick_requests_total{endpoint=\"/v1/completions\",status=\"413\"}",
        "wick_requests_total{endpoint=\"/v1/models\",status=\"200\"}",
        "# TYPE wick_requests_total counter",
    ] {
        assert!(metrics.contains(line), "{line} missing from\n{metrics}");
    }

    concurrent_clients_with_random_disconnects(&s, &StreamRequest::question(&content), 8);
    bench_serve_reports(&s);
    let m = settled_metrics(&s);
    assert_eq!(metric(&m, "wick_requests_in_flight"), 0.0, "{m}");

    // SIGTERM: stop accepting, exit 0.
    let mut s = s;
    stop_with_sigterm(&mut s);
}

/// A small queue and a short timeout: a request beyond the queue gets 503 with
/// `Retry-After`, requests that outlive the timeout get 504 (or, streamed, an error event),
/// and the server answers normally afterwards.
#[test]
fn a_full_queue_is_503_and_a_timeout_504() {
    let Some(model) = common::model_or_skip() else {
        return;
    };
    // A context long enough that the first request cannot finish within the timeout.
    let s = Server::start_with_ctx(&model, 2048, &["--queue", "1", "--timeout", "5"]);
    let long = chat_body(json!({"max_tokens": 2000, "ignore_eos": true}));

    // 1: streamed, running on the worker.
    let mut running = TcpStream::connect(&s.addr).unwrap();
    running
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let mut b = long.clone();
    b["stream"] = json!(true);
    let b = b.to_string();
    write!(
        running,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{b}",
        s.addr,
        b.len()
    )
    .unwrap();
    let wait_for = |what: &str, ok: &dyn Fn(&str) -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let m = get(&s, "/metrics", None).body;
            if ok(&m) {
                return;
            }
            assert!(Instant::now() < deadline, "never {what}:\n{m}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for("running", &|m| {
        metric(m, "wick_requests_in_flight") == 1.0 && metric(m, "wick_queue_length") == 0.0
    });
    // 2: waits in the queue (not streamed: its timeout is a 504).
    let addr = s.addr.clone();
    let queued = std::thread::spawn(move || {
        let r = agent()
            .post(format!("http://{addr}/v1/chat/completions"))
            .header("Content-Type", "application/json")
            .send(long.to_string());
        send(r)
    });
    wait_for("queued", &|m| metric(m, "wick_queue_length") == 1.0);
    // 3: no room.
    let r = post(&s, "/v1/chat/completions", &chat_body(json!({})));
    let e = error_of(&r, 503);
    assert_eq!(e["code"], "queue_full", "{e}");
    assert_eq!(r.retry_after.as_deref(), Some("1"));

    // The running one ends with an error event after 5 s, the queued one with a 504.
    let mut streamed = String::new();
    running.read_to_string(&mut streamed).unwrap();
    assert!(streamed.starts_with("HTTP/1.1 200"), "{streamed}");
    assert!(
        streamed.contains("\"code\":\"timeout\"") && !streamed.contains("[DONE]"),
        "{streamed}"
    );
    let r = queued.join().unwrap();
    let e = error_of(&r, 504);
    assert_eq!(e["code"], "timeout", "{e}");

    let m = settled_metrics(&s);
    assert_eq!(metric(&m, "wick_requests_in_flight"), 0.0, "{m}");
    assert_eq!(metric(&m, "wick_queue_length"), 0.0, "{m}");
    // The worker is free again: a one-token answer (its prompt is cached but for the last
    // token, so it is quick even on a slow machine, well inside the timeout).
    let again = ok(
        &s,
        "/v1/chat/completions",
        &chat_body(json!({"max_tokens": 1})),
    );
    assert_eq!(again["usage"]["completion_tokens"], 1, "{again}");
}

#[cfg(unix)]
fn stop_with_sigterm(s: &mut Server) {
    let ok = Command::new("kill")
        .args(["-TERM", &s.child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = s.child.try_wait().unwrap() {
            assert!(status.success(), "exit {status}: {}", s.log());
            assert!(s.log().contains("wick serve: stopped"), "{}", s.log());
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no exit after SIGTERM: {}",
            s.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(not(unix))]
fn stop_with_sigterm(_: &mut Server) {}

#[test]
fn parallel_out_of_range_is_refused_before_loading() {
    for n in ["0", "9"] {
        let out = Command::new(env!("CARGO_BIN_EXE_wick"))
            .args(["serve", "--parallel", n, "-m", "/nonexistent.gguf"])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--parallel") && err.contains("1 to 8"),
            "{err}"
        );
    }
}

/// Continuous batching over HTTP (`--parallel 4`): four greedy completions sent together get
/// the answers they get one at a time; then 32 streaming clients leaving at random points (8
/// per slot, the rest queued) leave nothing in flight or queued, the server healthy and the next
/// answer unchanged. Short raw
/// prompts: lavapipe prefills fewer than 8 new tokens through the decode step, while a GEMM
/// chunk costs it ~20 s (the engine-level comparison with single-sequence decoding is
/// tests/smollm2.rs's batched test).
#[test]
fn parallel_requests_answer_as_they_do_alone() {
    let Some(model) = common::model_or_skip() else {
        return;
    };
    let s = Server::start(&model, &["--api-key", KEY, "--parallel", "4"]);
    assert!(
        s.log().contains("4 requests decoded together"),
        "{}",
        s.log()
    );
    let prompts = [
        "The capital of France is",
        "Once upon a time",
        "1, 2, 3, 4,",
        "def add(a, b):",
    ];
    let body = |p: &str, n: usize| json!({"prompt": p, "max_tokens": n, "temperature": 0});
    let text = |a: &Value| a["choices"][0]["text"].as_str().unwrap().to_string();
    let alone: Vec<Value> = prompts
        .iter()
        .map(|p| ok(&s, "/v1/completions", &body(p, 8)))
        .collect();
    let threads: Vec<_> = prompts
        .iter()
        .map(|p| {
            let (addr, b) = (s.addr.clone(), body(p, 8));
            std::thread::spawn(move || {
                let r = agent()
                    .post(format!("http://{addr}/v1/completions"))
                    .header("Content-Type", "application/json")
                    .header("Authorization", format!("Bearer {KEY}"))
                    .send(b.to_string());
                send(r)
            })
        })
        .collect();
    for ((t, a), p) in threads.into_iter().zip(&alone).zip(prompts) {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.body);
        let together = r.json();
        assert_eq!(text(&together), text(a), "{p:?}: {together} vs {a}");
        assert_eq!(
            together["usage"]["completion_tokens"],
            a["usage"]["completion_tokens"]
        );
    }
    let mut stream = body(prompts[0], 2);
    stream["stream"] = json!(true);
    let req = StreamRequest {
        path: "/v1/completions",
        body: stream.to_string(),
        content: ("\"text\"", 1),
        check: ("/v1/completions", body(prompts[0], 8), text(&alone[0])),
    };
    concurrent_clients_with_random_disconnects(&s, &req, 32);
    let m = settled_metrics(&s);
    assert_eq!(metric(&m, "wick_parallel_slots"), 4.0, "{m}");
    assert_eq!(metric(&m, "wick_parallel_slots_busy"), 0.0, "{m}");
    assert!(metric(&m, "wick_kv_cache_tokens") > 0.0, "{m}");
}

/// python3 (or `$WICK_PYTHON`) when it imports `openai`. Otherwise a panic under
/// `WICK_REQUIRE_MODEL=1`, else None after saying why (the caller skips).
fn python_with_openai() -> Option<String> {
    let python = std::env::var("WICK_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = Command::new(&python)
        .args(["-c", "import openai"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if has {
        return Some(python);
    }
    assert!(
        !common::require_model(),
        "WICK_REQUIRE_MODEL=1 but {python} cannot import openai (pip install openai, or set \
         WICK_PYTHON to a python that can)"
    );
    eprintln!("skipping: {python} cannot import openai (set WICK_PYTHON)");
    None
}

#[test]
fn the_openai_python_client_works_against_it() {
    let Some(model) = common::model_or_skip() else {
        return;
    };
    let Some(python) = python_with_openai() else {
        return;
    };
    let s = Server::start(&model, &["--api-key", KEY]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/serve_openai.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("http://{}", s.addr))
        .arg(KEY)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "serve_openai.py failed:\n{}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
}
