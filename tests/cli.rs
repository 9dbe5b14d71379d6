//! The `wick` binary as a newcomer meets it: `wick run TEXT` answers through the model's chat
//! template, `--raw` completes the text as given, `--system` adds a system turn, `--kv-type`
//! picks the KV cache (and names itself when given a bad value), and no loader noise reaches
//! stderr on a machine without `XDG_RUNTIME_DIR`.
//!
//! The prompt tests need the real SmolLM2-135M-Instruct (it has a chat template); without it
//! they pass vacuously unless `WICK_REQUIRE_MODEL=1` (as in CI).

use std::process::{Command, Output};

use serde_json::Value;
use wick::formats::gguf::GgufFile;
use wick::formats::tokenizer::Tokenizer;

pub mod common;

fn wick(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .output()
        .expect("run the wick binary")
}

/// `wick run --json` on the model: the JSON report, after checking the command succeeded.
fn run_json(model: &str, n: &str, extra: &[&str]) -> Value {
    let mut args = vec!["run", "-m", model, "--json", "--ctx", "256", "-n", n];
    args.extend_from_slice(extra);
    let out = wick(&args);
    assert!(
        out.status.success(),
        "wick {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("--json prints one JSON object")
}

fn ids(v: &Value, key: &str) -> Vec<u32> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} in {v}"))
        .iter()
        .map(|i| i.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn run_wraps_the_prompt_in_the_chat_template_unless_raw() {
    let Some(path) = common::model_or_skip() else {
        return;
    };
    let model = path.to_str().unwrap();
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let prompt = "What is the capital of France?";

    // Default: the model has a template, so the prompt is a user turn and the answer follows
    // the assistant header. SmolLM2 answers a bare prompt with end-of-turn at once; through
    // the template it answers.
    let chat = run_json(model, "6", &[prompt]);
    assert_eq!(chat["prompt_mode"], "chat");
    let rendered = tok.decode(&ids(&chat, "prompt_ids")).unwrap();
    println!("default prompt: {rendered:?}\nanswer: {:?}", chat["text"]);
    assert!(
        rendered.contains(&format!("<|im_start|>user\n{prompt}<|im_end|>")),
        "{rendered:?}"
    );
    assert!(
        rendered.ends_with("<|im_start|>assistant\n"),
        "{rendered:?}"
    );
    assert!(
        !chat["text"].as_str().unwrap().trim().is_empty(),
        "the default path printed no answer: {chat}"
    );

    // --raw: exactly the tokens of the text.
    let raw = run_json(model, "1", &["--raw", prompt]);
    assert_eq!(raw["prompt_mode"], "raw");
    assert_eq!(ids(&raw, "prompt_ids"), tok.encode(prompt).unwrap());

    // --system: a system turn before the user's, in place of the template's default one.
    let sys = run_json(model, "1", &["--system", "Answer in one word.", prompt]);
    let rendered = tok.decode(&ids(&sys, "prompt_ids")).unwrap();
    assert!(
        rendered
            .starts_with("<|im_start|>system\nAnswer in one word.<|im_end|>\n<|im_start|>user\n"),
        "{rendered:?}"
    );
}

#[test]
fn raw_and_system_together_are_refused() {
    let out = wick(&["run", "--raw", "--system", "x", "hello"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--raw") && err.contains("--system"),
        "stderr: {err}"
    );
}

/// Mesa's device-select layer prints a libwayland error on every Vulkan enumeration when
/// `XDG_RUNTIME_DIR` is unset; wick's stderr must carry only its own lines.
#[test]
fn no_loader_noise_without_xdg_runtime_dir() {
    let out = Command::new(env!("CARGO_BIN_EXE_wick"))
        .arg("info")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .expect("run wick info");
    assert!(out.status.success(), "wick info failed");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("XDG_RUNTIME_DIR"), "stderr: {err}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("adapter 0"),
        "wick info listed no adapter"
    );
}

/// `--kv-type` takes f16 or q8_0 on `run`, `chat` and `bench`; anything else is refused
/// before any model is loaded, with the flag, the value and the accepted ones named.
#[test]
fn unknown_kv_type_is_refused_naming_the_flag() {
    let llama = common::shared().join("goldens/synthetic/llama_gqa");
    let llama = llama.to_str().unwrap();
    for args in [
        &["run", "-m", llama, "--ids", "1,2", "--kv-type", "q4_0"][..],
        &["chat", "-m", llama, "--kv-type", "int8"],
        &["bench", "--synthetic", "smollm2-135m", "--kv-type", "fp8"],
    ] {
        let out = wick(args);
        assert!(!out.status.success(), "wick {args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        let value = args.last().unwrap();
        assert!(
            err.contains("--kv-type")
                && err.contains(&format!("\"{value}\""))
                && err.contains("f16 or q8_0"),
            "wick {args:?}: stderr: {err}"
        );
    }
}

/// `wick run --kv-type q8_0` decodes with the q8_0 cache and says so (JSON and the summary).
#[test]
fn run_with_a_q8_0_kv_cache() {
    let llama = common::shared().join("goldens/synthetic/llama_gqa");
    let args = [
        "run",
        "-m",
        llama.to_str().unwrap(),
        "--ids",
        "1,2,3",
        "-n",
        "4",
        "--ignore-eos",
        "--ctx",
        "64",
        "--json",
    ];
    let mut kv = Vec::new();
    for kv_type in ["f16", "q8_0"] {
        let mut a = args.to_vec();
        a.extend(["--kv-type", kv_type]);
        let out = wick(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "wick {a:?} failed: {err}");
        assert!(err.contains(&format!("{kv_type} KV cache")), "{err}");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["stats"]["kv_type"], kv_type);
        assert_eq!(ids(&v, "ids").len(), 4);
        kv.push(v["stats"]["gpu_memory"].clone());
    }
    // The session reserves the cache it holds: llama_gqa has 4 layers of 2 KV heads of 32,
    // so K and V at 64 positions take 64 bytes a row as f16, 32 codes + one f32 scale as q8_0.
    let session = |v: &Value| v["session_bytes"].as_u64().unwrap();
    assert_eq!(
        session(&kv[0]) - session(&kv[1]),
        2 * 4 * 2 * 64 * (64 - 36),
        "gpu_memory f16: {}, q8_0: {}",
        kv[0],
        kv[1]
    );
}

/// `wick bench -p N1,N2`: bad length lists are refused before any weight is loaded, naming the
/// length (and the context it does not fit); a two-length run reports both lengths in JSON,
/// and `wick bench compare` lines up prefill rows by length, an older one-length report too.
#[test]
fn bench_takes_several_prompt_lengths() {
    let llama = common::shared().join("goldens/synthetic/llama_gqa");
    let llama = llama.to_str().unwrap();
    for (args, says) in [
        (&["-m", llama, "-p", "8,8"][..], "prompt length 8 is given twice"),
        (&["-m", llama, "-p", "0,16"], "above 0"),
        // llama_gqa declares 2048 positions.
        (&["-m", llama, "-p", "8,4000"], "-p 4000: the prefill test needs a context of 4000 tokens; the model's context length is 2048"),
        (&["-m", llama, "-p", "1000", "-d", "1500"], "-p 1000 at depth 1500"),
        (&["--synthetic", "smollm2-135m", "-p", "512,9000"], "smollm2-135m's context length is 8192"),
    ] {
        let mut a = vec!["bench"];
        a.extend_from_slice(args);
        let out = wick(&a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "wick {a:?} succeeded");
        assert!(err.contains(says) && !err.contains("panicked"), "wick {a:?}: stderr: {err}");
    }

    let out = wick(&[
        "bench",
        "-m",
        llama,
        "-p",
        "8,16",
        "-n",
        "2",
        "-r",
        "2",
        "--discard",
        "0",
        "--warmup",
        "0",
        "--slope",
        "0",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "two-length bench failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let after: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entries = after["prefill_by_length"].as_array().unwrap();
    let lengths: Vec<u64> = entries
        .iter()
        .map(|e| e["prompt_tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(lengths, [8, 16]);
    assert_eq!(after["prompt_tokens"], 8);
    assert_eq!(after["prefill_tok_s"], entries[0]["tok_s"]);

    // The same report as an older wick wrote it: one length, no array.
    let mut before = after.clone();
    before.as_object_mut().unwrap().remove("prefill_by_length");
    let tmp = tempfile::tempdir().unwrap();
    let (b, a) = (
        tmp.path().join("before.json"),
        tmp.path().join("after.json"),
    );
    std::fs::write(&b, before.to_string()).unwrap();
    std::fs::write(&a, after.to_string()).unwrap();
    let compare = |x: &std::path::Path, y: &std::path::Path| -> String {
        let out = wick(&["bench", "compare", x.to_str().unwrap(), y.to_str().unwrap()]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "compare failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let old_new = compare(&b, &a);
    assert!(old_new.contains("| prefill_tok_s@8 |"), "{old_new}");
    assert!(!old_new.contains("@16"), "{old_new}");
    assert!(
        old_new.contains("prompt lengths (8 before, 8,16 after)"),
        "{old_new}"
    );
    let new_new = compare(&a, &a);
    assert!(new_new.contains("| prefill_tok_s@16 |"), "{new_new}");
    if !entries[1]["profile"].as_array().unwrap().is_empty() {
        assert!(new_new.contains("| prefill_profile_us@16["), "{new_new}");
    }
}
