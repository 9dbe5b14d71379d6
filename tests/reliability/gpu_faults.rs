//! GPU faults surface as errors from the call that caused them, never as panics, aborts or
//! hangs: memory that does not fit (checked before allocating), validation errors (returned
//! by the call, and only to the thread that made it), device loss; and an engine that saw
//! errors still loads and runs models. Also the context limits: a prompt longer than the
//! context, and generation reaching its end.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use crate::support::Tiny;
use wick::formats::gguf::MetaValue;
use wick::gpu::GpuOptions;
use wick::runtime::session::StopReason;
use wick::{
    Engine, EngineOptions, Error, GenerateParams, LoadOptions, Model, SamplingParams, Session,
};

fn engine_with_budget(budget: Option<u64>) -> Engine {
    Engine::with_options(EngineOptions {
        gpu: GpuOptions {
            memory_budget: budget,
            ..Default::default()
        },
        ..Default::default()
    })
    .expect("GPU")
}

fn tiny_file(dir: &Path, t: &Tiny) -> PathBuf {
    let p = dir.join("tiny.gguf");
    std::fs::write(&p, t.gguf().to_bytes()).unwrap();
    p
}

fn greedy(n: usize) -> GenerateParams {
    GenerateParams {
        max_tokens: n,
        ignore_eos: true,
        ..Default::default()
    }
}

fn generate(s: &mut Session, prompt: &[u32], n: usize) -> Vec<u32> {
    s.generate(prompt, greedy(n))
        .unwrap()
        .map(|t| t.unwrap().id)
        .collect()
}

fn session_err(r: wick::Result<Session>) -> Error {
    match r {
        Ok(_) => panic!("the session was created"),
        Err(e) => {
            println!("{e}");
            e
        }
    }
}

/// Runs `f` on its own thread and fails (instead of hanging CI) if it has not returned after
/// `secs` — a bound on a hang, not a performance assertion.
fn within<T: Send + 'static>(secs: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    let h = std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(Duration::from_secs(secs)) {
        Ok(v) => {
            h.join().unwrap();
            v
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The closure panicked: re-raise its panic here.
            std::panic::resume_unwind(h.join().unwrap_err())
        }
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("still running after {secs} s: hung"),
    }
}

/// A session whose KV cache exceeds the memory budget is refused before any buffer exists;
/// a smaller one on the same model then works, and the counters follow.
#[test]
fn session_larger_than_the_memory_budget() {
    let engine = engine_with_budget(Some(8 << 20));
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny {
        layers: 2,
        context: 1 << 16,
        ..Tiny::default()
    };
    let model = Model::load(&engine, tiny_file(dir.path(), &t), LoadOptions::default()).unwrap();
    let before = engine.gpu().memory_usage();
    assert_eq!((before.models, before.sessions), (1, 0));
    // 2 layers x (K + V) x 32768 positions x 32 dims x 2 bytes = 8 MiB of cache alone.
    let e = session_err(Session::with_context(&model, 1 << 15));
    match &e {
        Error::OutOfMemory(m) => {
            assert!(
                m.contains("a session with a context of 32768 tokens (8388608 bytes of KV cache"),
                "{m}"
            );
            assert!(m.contains("does not fit"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        engine.gpu().memory_usage(),
        before,
        "a refused session holds nothing"
    );
    let mut s = Session::with_context(&model, 64).unwrap();
    let usage = engine.gpu().memory_usage();
    let want = wick::runtime::kv_cache::session_memory(
        &engine.gpu().caps,
        model.config(),
        64,
        wick::KvType::F16,
    );
    assert_eq!(usage.sessions, 1);
    assert_eq!(usage.session_bytes, want.total());
    assert_eq!(want.kv, s.kv_bytes());
    assert_eq!(generate(&mut s, &[1, 2, 3], 4).len(), 4);
    drop(s);
    assert_eq!(engine.gpu().memory_usage(), before);
}

/// The same against the device's own memory figure: a context whose cache is larger than
/// the device (a block count chosen from the adapter's memory and binding limit) is an
/// error, not an allocation the driver may grant lazily and fail on first touch.
#[test]
fn session_larger_than_the_device() {
    let engine = engine_with_budget(None);
    let gpu = engine.gpu();
    let Some(budget) = gpu.memory_usage().budget else {
        println!("this backend reports no device memory: covered by the budget test");
        return;
    };
    // One KV head of 32 dims: 64 bytes per position per layer and cache.
    let ctx = (gpu.caps.max_storage_buffer_binding_size / 64).min(1 << 24) as usize;
    let per_layer = 2 * 64 * ctx as u64;
    let layers = (budget / per_layer + 1) as usize;
    assert!(layers <= 4096, "{layers} layers");
    let t = Tiny {
        layers,
        context: ctx,
        ..Tiny::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("deep.gguf");
    t.write_sparse_gguf(&p, |_, _| {}, |_| {});
    let model = Model::load(
        &engine,
        &p,
        LoadOptions {
            ctx: Some(64),
            ..Default::default()
        },
    )
    .unwrap();
    let e = session_err(Session::with_context(&model, ctx));
    assert!(
        matches!(&e, Error::OutOfMemory(m) if m.contains(&format!("a session with a context of {ctx} tokens")) && m.contains("does not fit")),
        "{e:?}"
    );
    assert_eq!(gpu.memory_usage().sessions, 0);
}

/// A bind group that puts a uniform buffer where the kernel writes storage: the validation
/// error is the `Err` of the call that built it, and nothing is left behind for later calls.
#[test]
fn validation_error_is_returned_by_the_call_that_caused_it() {
    let engine = engine_with_budget(None);
    let gpu = engine.gpu();
    let gu = gpu.upload("gu", &[0.5f32; 128]).unwrap();
    let wrong = gpu.uniform("not storage", &[0f32; 64]).unwrap();
    let e = wick::kernels::swiglu::swiglu(engine.kernels(), &gu, &wrong, 1, 64).unwrap_err();
    println!("{e}");
    match &e {
        Error::Gpu(m) => assert!(m.to_lowercase().contains("usage"), "{m}"),
        other => panic!("{other:?}"),
    }
    gpu.check().unwrap();
    // The right buffer on the same engine works.
    let out = gpu.storage_buffer("out", 256).unwrap();
    let d = wick::kernels::swiglu::swiglu(engine.kernels(), &gu, &out, 1, 64).unwrap();
    engine.kernels().run(&[&d]).unwrap();
}

/// An error raised outside any error scope (here a misaligned queue write) is reported to
/// the thread that raised it, by its next check, and never to another thread's calls.
#[test]
fn errors_stay_with_the_thread_that_raised_them() {
    let engine = engine_with_budget(None);
    let buf = engine.gpu().storage_buffer("target", 64).unwrap();
    let (raised_tx, raised_rx) = mpsc::channel();
    let (checked_tx, checked_rx) = mpsc::channel::<()>();
    let gpu = engine.gpu().clone();
    let other = std::thread::spawn(move || {
        gpu.queue.write_buffer(&buf, 2, &[1u8; 4]);
        raised_tx.send(()).unwrap();
        checked_rx.recv().unwrap();
        let e = gpu.check().unwrap_err();
        gpu.check().unwrap();
        e
    });
    raised_rx.recv().unwrap();
    engine.gpu().check().unwrap();
    checked_tx.send(()).unwrap();
    let e = other.join().unwrap();
    println!("{e}");
    assert!(
        matches!(&e, Error::Gpu(m) if m.contains("write_buffer") || m.contains("Queue")),
        "{e:?}"
    );
}

/// The device destroyed mid-generation (wgpu's `Device::destroy`, as a driver reset would
/// leave it): the generation's next call, new sessions and new loads return `DeviceLost`;
/// nothing panics or hangs.
#[test]
fn device_loss_is_an_error_not_a_panic() {
    within(120, || {
        let engine = engine_with_budget(None);
        let dir = tempfile::tempdir().unwrap();
        let p = tiny_file(dir.path(), &Tiny::default());
        let model = Model::load(&engine, &p, LoadOptions::default()).unwrap();
        let mut s = Session::with_context(&model, 64).unwrap();
        let mut g = s.generate(&[1, 2, 3], greedy(16)).unwrap();
        g.next().unwrap().unwrap();
        g.next().unwrap().unwrap();
        engine.gpu().destroy();
        let rest: Vec<wick::Result<wick::Token>> = g.by_ref().collect();
        println!("after destroy: {rest:?}");
        assert!(
            rest.len() < 14,
            "generation went on after the device was lost"
        );
        assert!(
            matches!(rest.last(), Some(Err(Error::DeviceLost(_)))),
            "{rest:?}"
        );
        drop(g);
        let e = s
            .generate(&[1, 2, 3, 4], greedy(4))
            .map(|_| ())
            .unwrap_err();
        assert!(matches!(e, Error::DeviceLost(_)), "{e:?}");
        let e = session_err(Session::with_context(&model, 64));
        assert!(matches!(e, Error::DeviceLost(_)), "{e:?}");
        let e = Model::load(&engine, &p, LoadOptions::default()).unwrap_err();
        assert!(matches!(e, Error::DeviceLost(_)), "{e:?}");
        drop(s);
        drop(model);
        assert_eq!(engine.gpu().memory_usage().reserved, 0);
    });
}

/// After a refused file, a session over budget, a validation error, and bad prompts, the same
/// engine loads the model again and generates exactly what it did before the errors.
#[test]
fn engine_still_loads_and_runs_models_after_errors() {
    let engine = engine_with_budget(Some(8 << 20));
    let dir = tempfile::tempdir().unwrap();
    let t = Tiny {
        context: 1 << 16,
        ..Tiny::default()
    };
    let p = tiny_file(dir.path(), &t);
    let prompt = [5u32, 9, 13, 2];
    let reference = {
        let m = Model::load(&engine, &p, LoadOptions::default()).unwrap();
        generate(&mut Session::with_context(&m, 64).unwrap(), &prompt, 12)
    };
    assert_eq!(engine.gpu().memory_usage().reserved, 0);

    // A hostile file.
    let mut w = t.gguf();
    w.set_meta("llama.attention.head_count", MetaValue::U32(0));
    let bad = dir.path().join("bad.gguf");
    std::fs::write(&bad, w.to_bytes()).unwrap();
    assert!(matches!(
        Model::load(&engine, &bad, LoadOptions::default()),
        Err(Error::Model(_))
    ));
    let m = Model::load(&engine, &p, LoadOptions::default()).unwrap();
    // A session over the budget (8 MiB of cache).
    assert!(matches!(
        session_err(Session::with_context(&m, 1 << 16)),
        Error::OutOfMemory(_)
    ));
    // A validation error.
    let gpu = engine.gpu();
    let wrong = gpu.uniform("not storage", &[0f32; 64]).unwrap();
    let gu = gpu.upload("gu", &[0.5f32; 128]).unwrap();
    assert!(wick::kernels::swiglu::swiglu(engine.kernels(), &gu, &wrong, 1, 64).is_err());
    // Bad prompts on a live session.
    let mut s = Session::with_context(&m, 64).unwrap();
    let e = s.generate(&[1; 65], greedy(1)).map(|_| ()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("the prompt has 65 tokens but the context holds 64")),
        "{e}"
    );
    let e = s.generate(&[1, 64], greedy(1)).map(|_| ()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("token id 64 is outside the vocabulary (size 64)")),
        "{e}"
    );
    drop(s);
    drop(m);
    let m = Model::load(&engine, &p, LoadOptions::default()).unwrap();
    let again = generate(&mut Session::with_context(&m, 64).unwrap(), &prompt, 12);
    assert_eq!(again, reference);
}

/// Overflow at the context's end: a prompt longer than the context is refused by name;
/// generation that fills the context stops with `ContextFull` after exactly the tokens whose
/// keys fit (the last emitted token needs no slot).
#[test]
fn context_overflow() {
    let engine = engine_with_budget(None);
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(
        &engine,
        tiny_file(dir.path(), &Tiny::default()),
        LoadOptions::default(),
    )
    .unwrap();
    let mut s = Session::with_context(&m, 16).unwrap();
    let prompt: Vec<u32> = (1..=10).collect();
    // Greedy, sampled on the GPU, sampled on the CPU: the same count.
    let sampled = |on_cpu: bool| GenerateParams {
        sampling: SamplingParams {
            temperature: 0.8,
            seed: 7,
            ..Default::default()
        },
        sample_on_cpu: on_cpu,
        ..greedy(100)
    };
    let mut out = Vec::new();
    for params in [sampled(false), sampled(true), greedy(100)] {
        s.reset();
        let mut g = s.generate(&prompt, params).unwrap();
        out = g.by_ref().map(|t| t.unwrap().id).collect();
        assert_eq!(g.stats().stop_reason, Some(StopReason::ContextFull));
        drop(g);
        assert_eq!(out.len(), 16 - 10 + 1);
        assert_eq!(s.tokens().len(), 16);
    }
    // Continuing the conversation past the context is refused, naming both sizes.
    let mut longer = s.tokens().to_vec();
    longer.push(out[out.len() - 1]);
    let e = s.generate(&longer, greedy(1)).map(|_| ()).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("the prompt has 17 tokens but the context holds 16")),
        "{e}"
    );
    // A prompt that exactly fills the context still yields its one next token.
    let full: Vec<u32> = (0..16).collect();
    let mut g = s.generate(&full, greedy(5)).unwrap();
    assert_eq!(g.by_ref().count(), 1);
    assert_eq!(g.stats().stop_reason, Some(StopReason::ContextFull));
}

/// A real allocation failure from the driver (not wick's up-front check): buffers allocated
/// directly until the device refuses. Ignored by default: it fills the whole GPU, and on a
/// CPU driver that over-commits (lavapipe) allocations never fail. Run on a real GPU with
/// `cargo test --release --test gpu_faults -- --ignored`.
#[test]
#[ignore]
fn driver_out_of_memory_is_an_error() {
    let engine = engine_with_budget(None);
    let gpu = engine.gpu();
    let chunk = gpu.caps.max_buffer_size.min(1 << 30);
    let limit = gpu.memory_usage().budget.unwrap_or(256 << 30) / chunk * 2 + 8;
    let mut held = Vec::new();
    let e = loop {
        match gpu.storage_buffer("filler", chunk) {
            Ok(b) => held.push(b),
            Err(e) => break e,
        }
        assert!(
            (held.len() as u64) < limit,
            "{} bytes allocated without an error",
            held.len() as u64 * chunk
        );
    };
    println!("refused after {} bytes: {e}", held.len() as u64 * chunk);
    assert!(matches!(e, Error::OutOfMemory(_)), "{e:?}");
    drop(held);
    gpu.check().unwrap();
    // The engine recovers once the memory is free again.
    let dir = tempfile::tempdir().unwrap();
    let m = Model::load(
        &engine,
        tiny_file(dir.path(), &Tiny::default()),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(
        generate(&mut Session::with_context(&m, 32).unwrap(), &[1, 2], 3).len(),
        3
    );
}
