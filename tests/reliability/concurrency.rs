//! One `Engine` serving several sessions of two models from several threads. Greedy decoding
//! is deterministic, so every session's tokens must equal what the same prompt produces on a
//! fresh session with nothing else running (computed first, sequentially): any cross-talk
//! between sessions — a shared KV cache, uniform, scratch or token buffer, a token read from
//! another session's ring — changes them. Also: dropping a generation mid-stream releases
//! what it holds (counted by the engine) and leaves the other sessions untouched.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use crate::support::golden;
use rand::{Rng, SeedableRng};
use wick::runtime::Generation;
use wick::{Engine, GenerateParams, LoadOptions, Model, Session};

/// The public types' thread-safety, checked at compile time.
#[test]
fn engine_and_model_are_send_sync_session_is_send() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<Engine>();
    send_sync::<Model>();
    send_sync::<wick::gpu::Gpu>();
    send::<Session>();
    send::<Generation<'static>>();
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

fn load(engine: &Engine, name: &str) -> Model {
    Model::load(
        engine,
        golden(name),
        LoadOptions {
            ctx: Some(128),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Greedy tokens of `prompt` on a fresh session.
fn solo(model: &Model, prompt: &[u32], n: usize) -> Vec<u32> {
    let mut s = Session::new(model).unwrap();
    s.generate(prompt, greedy(n))
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect()
}

/// Prompts of different lengths (so sessions sit at different positions); some share a
/// prefix, so a reused session's cache is partly valid for the next prompt.
fn prompts() -> Vec<Vec<u32>> {
    let base: Vec<u32> = (0..24).map(|i| (i * 37 + 11) % 500 + 3).collect();
    vec![
        base[..3].to_vec(),
        base.clone(),
        base[..9].iter().copied().chain([400, 401, 402]).collect(),
        vec![77],
        (0..40).map(|i| (i * 53 + 5) % 500 + 3).collect(),
    ]
}

/// Two models loaded at once (Llama with GQA; Qwen2 with q/k/v biases and a tied head).
fn two_models(engine: &Engine) -> [Model; 2] {
    [load(engine, "llama_gqa"), load(engine, "qwen2_bias_tied")]
}

/// Four threads, each with its own session (two per model, different prompts), step in
/// lockstep (a barrier before every token) so their GPU work interleaves token by token;
/// then each continues its own conversation on the same session. Everything must equal the
/// sequential references.
#[test]
fn threads_interleaving_sessions_of_two_models_match_solo_runs() {
    let engine = Engine::new().unwrap();
    let models = two_models(&engine);
    let p = prompts();
    const N: usize = 12;
    let jobs: Vec<(usize, Vec<u32>)> = vec![
        (0, p[0].clone()),
        (0, p[1].clone()),
        (1, p[1].clone()),
        (1, p[4].clone()),
    ];
    // References, and for the second turn the whole conversation plus two new tokens.
    let refs: Vec<(Vec<u32>, Vec<u32>, Vec<u32>)> = jobs
        .iter()
        .map(|(m, prompt)| {
            let first = solo(&models[*m], prompt, N);
            let mut turn2: Vec<u32> = prompt.iter().chain(&first).copied().collect();
            turn2.extend([42, 43]);
            let second = solo(&models[*m], &turn2, N / 2);
            (first, turn2, second)
        })
        .collect();
    let barrier = Arc::new(Barrier::new(jobs.len()));
    let handles: Vec<_> = jobs
        .into_iter()
        .zip(refs)
        .map(|((m, prompt), (first, turn2, second))| {
            let model = models[m].clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut s = Session::new(&model).unwrap();
                let mut g = s.generate(&prompt, greedy(N)).unwrap();
                let mut got = Vec::new();
                for _ in 0..N {
                    barrier.wait();
                    got.push(g.next().unwrap().unwrap().id);
                }
                assert!(g.next().is_none());
                drop(g);
                assert_eq!(got, first, "first turn of {prompt:?}");
                // The next turn reuses the cached conversation: only the last answer token (never fed)
                // and the 2 new ones are prefilled.
                let again: Vec<u32> = s
                    .generate(&turn2, greedy(N / 2))
                    .unwrap()
                    .map(|t| t.unwrap().id)
                    .collect();
                assert_eq!(s.stats.prefilled_tokens, 3);
                assert_eq!(again, second, "second turn of {prompt:?}");
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let usage = engine.gpu().memory_usage();
    assert_eq!(
        (usage.models, usage.sessions, usage.in_flight_steps),
        (2, 0, 0)
    );
}

/// Two generations alive at once on one thread, alternating token by token: same model,
/// different positions, so any shared per-step state (uniforms, token buffer, ring) would mix.
#[test]
fn two_generations_alternating_on_one_thread() {
    let engine = Engine::new().unwrap();
    let model = load(&engine, "qwen3_qknorm");
    let p = prompts();
    const N: usize = 12;
    let (ra, rb) = (solo(&model, &p[4], N), solo(&model, &p[0], N));
    let mut sa = Session::new(&model).unwrap();
    let mut sb = Session::new(&model).unwrap();
    let mut ga = sa.generate(&p[4], greedy(N)).unwrap();
    let mut gb = sb.generate(&p[0], greedy(N)).unwrap();
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..N {
        a.push(ga.next().unwrap().unwrap().id);
        b.push(gb.next().unwrap().unwrap().id);
    }
    assert_eq!(a, ra);
    assert_eq!(b, rb);
}

/// Dropping a generation mid-stream settles its in-flight steps (the engine's count returns
/// to zero), leaves its session usable, and leaves a session generating on another thread
/// untouched; dropping the session gives its memory back.
#[test]
fn dropping_a_generation_mid_stream_releases_its_resources() {
    let engine = Engine::new().unwrap();
    let [llama, qwen] = two_models(&engine);
    let p = prompts();
    const N: usize = 14;
    let (ref_main, ref_other) = (solo(&llama, &p[1], N), solo(&qwen, &p[2], N));
    let base = engine.gpu().memory_usage();
    assert_eq!((base.models, base.sessions, base.session_bytes), (2, 0, 0));

    let mut s = Session::new(&llama).unwrap();
    let usage = engine.gpu().memory_usage();
    let want = wick::runtime::kv_cache::session_memory(
        &engine.gpu().caps,
        llama.config(),
        128,
        wick::KvType::F16,
    );
    assert_eq!(usage.sessions, 1);
    assert_eq!(usage.session_bytes, want.total());

    // The other thread steps in lockstep with this one until this one drops its generation.
    let barrier = Arc::new(Barrier::new(2));
    let other = {
        let (barrier, qwen, prompt) = (barrier.clone(), qwen.clone(), p[2].clone());
        std::thread::spawn(move || {
            let mut s = Session::new(&qwen).unwrap();
            let mut g = s.generate(&prompt, greedy(N)).unwrap();
            let mut got = Vec::new();
            for i in 0..N {
                if i < 4 {
                    barrier.wait();
                }
                got.push(g.next().unwrap().unwrap().id);
            }
            got
        })
    };
    let mut g = s.generate(&p[1], greedy(N)).unwrap();
    let mut first = Vec::new();
    for _ in 0..4 {
        barrier.wait();
        first.push(g.next().unwrap().unwrap().id);
    }
    assert_eq!(first, ref_main[..4]);
    // Greedy decoding keeps the next step queued: this generation holds one in flight.
    assert!(engine.gpu().memory_usage().in_flight_steps >= 1);
    drop(g);
    assert_eq!(other.join().unwrap(), ref_other);
    assert_eq!(engine.gpu().memory_usage().in_flight_steps, 0);

    // The session still works (its cache holds the 4 accepted tokens, reused by prefix).
    let again: Vec<u32> = s
        .generate(&p[1], greedy(N))
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect();
    assert_eq!(again, ref_main);
    drop(s);
    let end = engine.gpu().memory_usage();
    assert_eq!(end, base, "every session's memory returned");
}

/// Bounded stress: threads run randomly chosen work on two shared models — fresh sessions,
/// reused sessions (prefix-sharing and unrelated prompts), generations dropped mid-stream —
/// for at most `ITERS` iterations each or `SECS` seconds (whichever ends first), checking
/// every token against the sequential references.
#[test]
fn stress_sessions_on_two_models_from_four_threads() {
    const THREADS: usize = 4;
    const ITERS: usize = 16;
    const SECS: u64 = 5;
    const N: usize = 10;
    let engine = Engine::new().unwrap();
    let models = two_models(&engine);
    let p = prompts();
    let mut refs = HashMap::new();
    for (m, model) in models.iter().enumerate() {
        for (i, prompt) in p.iter().enumerate() {
            refs.insert((m, i), solo(model, prompt, N));
        }
    }
    let refs = Arc::new(refs);
    let seed = crate::common::seed();
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(SECS);
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let (models, p, refs) = (models.clone(), p.clone(), refs.clone());
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ (t as u64 * 0x9E37));
                // One kept session per model, reused three times in four.
                let mut kept: Vec<Option<Session>> = models.iter().map(|_| None).collect();
                let (mut iters, mut tokens, mut dropped) = (0, 0, 0);
                while iters < ITERS && Instant::now() < deadline {
                    iters += 1;
                    let m = rng.random_range(0..models.len());
                    let i = rng.random_range(0..p.len());
                    let n = rng.random_range(1..=N);
                    let mut s = match kept[m].take() {
                        Some(s) if rng.random_bool(0.75) => s,
                        _ => Session::new(&models[m]).unwrap(),
                    };
                    let want = &refs[&(m, i)][..n];
                    let mut g = s.generate(&p[i], greedy(n)).unwrap();
                    let stop_at = if rng.random_bool(0.25) {
                        rng.random_range(0..n)
                    } else {
                        n
                    };
                    let mut got = Vec::new();
                    while got.len() < stop_at {
                        got.push(g.next().unwrap().unwrap().id);
                    }
                    if stop_at == n {
                        assert!(g.next().is_none());
                    } else {
                        dropped += 1;
                    }
                    drop(g);
                    assert_eq!(
                        got,
                        want[..stop_at],
                        "thread {t}: model {m}, prompt {i}, {n} tokens"
                    );
                    tokens += got.len();
                    kept[m] = Some(s);
                }
                (iters, tokens, dropped)
            })
        })
        .collect();
    let (mut iters, mut tokens, mut dropped) = (0, 0, 0);
    for h in handles {
        let (i, t, d) = h.join().unwrap();
        assert!(i > 0);
        iters += i;
        tokens += t;
        dropped += d;
    }
    println!(
        "stress: {THREADS} threads, {iters} iterations, {tokens} tokens checked, {dropped} generations dropped mid-stream, {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    let usage = engine.gpu().memory_usage();
    assert_eq!((usage.sessions, usage.in_flight_steps), (0, 0));
}
