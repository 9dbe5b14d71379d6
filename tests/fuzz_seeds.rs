//! The fuzzing seeds under `fuzz/seeds/` (see `scripts/fuzz.sh`): checks that the committed
//! seeds are what they claim to be, and (ignored test) regenerates them from the real files'
//! headers, never their weights:
//!
//! ```sh
//! cargo test --release --test fuzz_seeds -- --ignored   # needs the SmolLM2 GGUF and the goldens
//! ```
//!
//! `fuzz/seeds/tokenizer` holds `arbitrary`-encoded inputs instead, kept from a fuzzing run
//! (`tokenizer -merge=1 -set_cover_merge=1 seeds/tokenizer corpus/tokenizer`, the largest 100).

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use wick::formats::chat_template::ChatTemplate;
use wick::formats::gguf::{GgufFile, MetaValue};
use wick::formats::gguf_writer::GgufWriter;
use wick::formats::hf;
use wick::formats::tokenizer::{GgufVocab, Tokenizer};
use wick::model::config::ModelConfig;
use wick::quant::GgmlType;

pub mod common;

fn seeds(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/seeds")
        .join(target)
}

fn seed_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = fs::read_dir(seeds(target))
        .unwrap_or_else(|e| panic!("{}: {e}", seeds(target).display()))
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect();
    v.sort();
    v
}

/// Every committed seed parses as the file it stands for, and the whole seed set stays small.
#[test]
fn committed_seeds_are_valid_and_small() {
    let mut total = 0;
    let mut models = 0;
    for (name, bytes) in seed_files("gguf") {
        total += bytes.len();
        let f = GgufFile::from_bytes(bytes).unwrap_or_else(|e| panic!("gguf/{name}: {e}"));
        Tokenizer::from_gguf(&f).unwrap_or_else(|e| panic!("gguf/{name}: tokenizer: {e}"));
        if !f.tensors.is_empty() {
            let cfg = ModelConfig::from_gguf(&f).unwrap_or_else(|e| panic!("gguf/{name}: {e}"));
            assert!(cfg.n_layers > 0);
            models += 1;
        }
    }
    assert!(models >= 3, "tiny-model GGUF seeds: {models}");
    let mut kinds = [0; 4];
    for (name, bytes) in seed_files("hf") {
        total += bytes.len();
        let (&which, rest) = bytes.split_first().expect("non-empty seed");
        kinds[which as usize % 4] += 1;
        let text = || std::str::from_utf8(rest).unwrap();
        match which {
            0 => {
                let c = hf::parse_json(text(), &name).unwrap();
                ModelConfig::from_hf(&c).unwrap_or_else(|e| panic!("hf/{name}: {e}"));
            }
            // One header seed is the real header without its data: it must fail, and only
            // on the data length.
            1 if name.contains("no_data") => {
                let e = hf::parse_safetensors_header(rest, &name).err().unwrap();
                assert!(
                    e.to_string()
                        .contains("run past the end of the 0-byte data section"),
                    "hf/{name}: {e}"
                );
            }
            1 => {
                let h = hf::parse_safetensors_header(rest, &name)
                    .unwrap_or_else(|e| panic!("hf/{name}: {e}"));
                assert!(!h.meta.tensors().is_empty());
            }
            2 => assert!(!hf::parse_index_json(text(), &name).unwrap().is_empty()),
            3 => {
                hf::parse_json(text(), &name).unwrap();
            }
            other => panic!("hf/{name}: selector byte {other}"),
        }
    }
    assert!(kinds.iter().all(|&k| k > 0), "hf seeds per kind: {kinds:?}");
    for (name, bytes) in seed_files("chat_template") {
        total += bytes.len();
        let (flags, template, bos, eos, messages) = split_chat_seed(&bytes);
        let t = ChatTemplate::new((flags & 2 == 0).then_some(template.as_str()), &bos, &eos);
        let out = t
            .render(&messages, flags & 1 != 0)
            .unwrap_or_else(|e| panic!("chat_template/{name}: {e}"));
        assert!(
            out.contains("Why is the sky blue?"),
            "chat_template/{name}: {out}"
        );
    }
    for (_, bytes) in seed_files("tokenizer") {
        total += bytes.len();
    }
    let vocab = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/data/smollm2_vocab_head.json");
    total += fs::metadata(&vocab).unwrap().len() as usize;
    assert!(total < 200_000, "committed fuzz seeds are {total} bytes");
}

/// The chat_template target's input layout (fuzz/fuzz_targets/chat_template.rs).
fn split_chat_seed(
    bytes: &[u8],
) -> (
    u8,
    String,
    String,
    String,
    Vec<wick::formats::chat_template::ChatMessage>,
) {
    let text = std::str::from_utf8(&bytes[1..]).unwrap();
    let mut fields = text.split('\0');
    let template = fields.next().unwrap().to_string();
    let bos = fields.next().unwrap_or("").to_string();
    let eos = fields.next().unwrap_or("").to_string();
    let messages = fields
        .map(|m| {
            let (role, content) = m.split_once('\u{1}').unwrap();
            wick::formats::chat_template::ChatMessage::new(role, content)
        })
        .collect();
    (bytes[0], template, bos, eos, messages)
}

fn chat_seed(flags: u8, template: &str, bos: &str, eos: &str, msgs: &[(&str, &str)]) -> Vec<u8> {
    let mut s = vec![flags];
    s.extend_from_slice(template.as_bytes());
    for field in [bos, eos] {
        s.push(0);
        s.extend_from_slice(field.as_bytes());
    }
    for (role, content) in msgs {
        s.push(0);
        s.extend_from_slice(format!("{role}\u{1}{content}").as_bytes());
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Regeneration.

/// A Llama 3 style template (header ids, BOS from the caller, trimmed contents).
const LLAMA3_STYLE: &str = "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}";

/// A Qwen2.5 style template: ChatML with a default system prompt when the conversation has
/// none, a namespace and string methods.
const QWEN_STYLE: &str = "{%- set ns = namespace(system=false) -%}\n{%- for message in messages -%}\n  {%- if message.role == 'system' -%}{%- set ns.system = true -%}{%- endif -%}\n{%- endfor -%}\n{%- if not ns.system -%}\n  {{- '<|im_start|>system\\nYou are Qwen, a helpful assistant.<|im_end|>\\n' -}}\n{%- endif -%}\n{%- for message in messages -%}\n  {%- if message.role not in ['system', 'user', 'assistant'] -%}{{ raise_exception('unknown role ' ~ message.role) }}{%- endif -%}\n  {{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>\\n' -}}\n{%- endfor -%}\n{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/// A Mistral style template: roles must alternate, enforced with raise_exception.
const MISTRAL_STYLE: &str = "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";

fn write(target: &str, name: &str, bytes: &[u8]) {
    let dir = seeds(target);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(name), bytes).unwrap();
}

/// The first `n` tokens of SmolLM2's vocabulary with their types, and the merges among them
/// (both halves and the merged token inside the subset).
fn vocab_head(real: &GgufVocab, n: usize) -> GgufVocab {
    let tokens: Vec<String> = real.tokens[..n].to_vec();
    let set: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
    let merges = real
        .merges
        .iter()
        .filter(|m| {
            let (a, b) = m.split_once(' ').unwrap();
            set.contains(a) && set.contains(b) && set.contains(format!("{a}{b}").as_str())
        })
        .cloned()
        .collect();
    GgufVocab {
        tokens,
        merges,
        token_types: real.token_types[..n].to_vec(),
        ..real.clone()
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A tiny model GGUF: `arch` metadata with small dimensions, the given vocabulary, and
/// tensors just large enough for the configuration to be derived (1 layer).
fn tiny_model(arch: &str, vocab: &GgufVocab, extra: &[(&str, MetaValue)], qwen3: bool) -> Vec<u8> {
    let key = |k: &str| format!("{arch}.{k}");
    let mut w = GgufWriter::new()
        .meta("general.architecture", MetaValue::String(arch.into()))
        .meta("general.name", MetaValue::String(format!("tiny {arch}")))
        .meta(key("block_count"), MetaValue::U32(1))
        .meta(key("context_length"), MetaValue::U32(256))
        .meta(key("embedding_length"), MetaValue::U32(32))
        .meta(key("feed_forward_length"), MetaValue::U32(64))
        .meta(key("attention.head_count"), MetaValue::U32(4))
        .meta(key("attention.head_count_kv"), MetaValue::U32(2))
        .meta(key("rope.freq_base"), MetaValue::F32(10000.0))
        .meta(
            key("attention.layer_norm_rms_epsilon"),
            MetaValue::F32(1e-5),
        );
    for (k, v) in extra {
        w.add_meta(key(k), v.clone());
    }
    for (k, v) in vocab.to_metadata() {
        w.add_meta(k, v);
    }
    let rows = 8u64;
    w = w.tensor(
        "token_embd.weight",
        &[32, rows],
        GgmlType::F16,
        vec![0u8; 32 * rows as usize * 2],
    );
    w = w.tensor(
        "output_norm.weight",
        &[32],
        GgmlType::F32,
        f32_bytes(&[1.0; 32]),
    );
    w = w.tensor("blk.0.attn_q.bias", &[32], GgmlType::F32, vec![0u8; 128]);
    if qwen3 {
        w = w.tensor(
            "blk.0.attn_q_norm.weight",
            &[8],
            GgmlType::F32,
            f32_bytes(&[1.0; 8]),
        );
    }
    if arch == "llama" && !extra.is_empty() {
        // Llama 3 scaling as llama.cpp stores it: per-frequency divisors (head_dim 8 → 4).
        w = w.tensor(
            "rope_freqs.weight",
            &[4],
            GgmlType::F32,
            f32_bytes(&[1.0, 1.0, 2.0, 8.0]),
        );
        w = w.tensor(
            "output.weight",
            &[32, rows],
            GgmlType::Q8_0,
            vec![0u8; 34 * rows as usize],
        );
    }
    w.to_bytes()
}

/// A safetensors file with the tensor names, dtypes and metadata of `header` but every
/// dimension cut to at most 2 (zero data), optionally with every dtype replaced.
fn shrunk_safetensors(header: &Value, dtype: Option<&str>) -> Vec<u8> {
    let mut out = serde_json::Map::new();
    let mut offset = 0u64;
    for (name, info) in header.as_object().unwrap() {
        if name == "__metadata__" {
            out.insert(name.clone(), info.clone());
            continue;
        }
        let dt = dtype.unwrap_or(info["dtype"].as_str().unwrap());
        let size = match dt {
            "F32" | "I32" => 4,
            "F16" | "BF16" => 2,
            "I64" => 8,
            _ => 1,
        };
        let shape: Vec<u64> = info["shape"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap().min(2))
            .collect();
        let bytes = shape.iter().product::<u64>() * size;
        out.insert(
            name.clone(),
            json!({"dtype": dt, "shape": shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let text = serde_json::to_string(&Value::Object(out)).unwrap();
    let mut file = (text.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(text.as_bytes());
    file.resize(file.len() + offset as usize, 0);
    file
}

fn safetensors_header(path: &Path) -> (Vec<u8>, Value) {
    use std::io::Read;
    let mut f = fs::File::open(path).unwrap();
    let mut len = [0u8; 8];
    f.read_exact(&mut len).unwrap();
    let mut text = vec![0u8; u64::from_le_bytes(len) as usize];
    f.read_exact(&mut text).unwrap();
    let mut raw = len.to_vec();
    raw.extend_from_slice(&text);
    (raw, serde_json::from_slice(&text).unwrap())
}

#[test]
#[ignore = "regenerates fuzz/seeds from the SmolLM2 GGUF and the goldens"]
fn write_seeds() {
    let _ = fs::remove_dir_all(seeds("gguf"));
    let _ = fs::remove_dir_all(seeds("hf"));
    let _ = fs::remove_dir_all(seeds("chat_template"));

    // --- gguf: the real header without tensors (tokenizer cut to its first 256 tokens), and
    // tiny models of each architecture.
    let real =
        GgufFile::open(&common::model_path()).expect("the SmolLM2 GGUF (scripts/fetch-model.sh)");
    let real_vocab = GgufVocab::from_gguf(&real).unwrap();
    let head = vocab_head(&real_vocab, 256);
    let mut w = GgufWriter::new();
    for (k, v) in &real.metadata {
        if !k.starts_with("tokenizer.") {
            w.add_meta(k.clone(), v.clone());
        }
    }
    for (k, v) in head.to_metadata() {
        w.add_meta(k, v);
    }
    write("gguf", "smollm2_header.gguf", &w.to_bytes());
    let small = vocab_head(&real_vocab, 48);
    write(
        "gguf",
        "llama_tiny.gguf",
        &tiny_model("llama", &small, &[], false),
    );
    let llama3 = GgufVocab {
        pre: Some("llama-bpe".into()),
        ..small.clone()
    };
    let scaling = [
        ("rope.scaling.type", MetaValue::String("linear".into())),
        ("rope.scaling.factor", MetaValue::F32(2.0)),
        ("rope.dimension_count", MetaValue::U32(8)),
    ];
    write(
        "gguf",
        "llama3_tiny.gguf",
        &tiny_model("llama", &llama3, &scaling, false),
    );
    let qwen2 = GgufVocab {
        pre: Some("qwen2".into()),
        add_bos: false,
        ..small.clone()
    };
    write(
        "gguf",
        "qwen2_tiny.gguf",
        &tiny_model("qwen2", &qwen2, &[], false),
    );
    let qwen3_extra = [("attention.key_length", MetaValue::U32(16))];
    write(
        "gguf",
        "qwen3_tiny.gguf",
        &tiny_model("qwen3", &qwen2, &qwen3_extra, true),
    );
    // A version-2 file with only a vocabulary.
    let mut w = GgufWriter::new().version(2);
    for (k, v) in small.to_metadata() {
        w.add_meta(k, v);
    }
    write("gguf", "vocab_only_v2.gguf", &w.to_bytes());

    // The tokenizer target's built-in vocabulary: SmolLM2's first 512 tokens and merges.
    let head512 = vocab_head(&real_vocab, 512);
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/data");
    fs::create_dir_all(&data).unwrap();
    fs::write(
        data.join("smollm2_vocab_head.json"),
        serde_json::to_string(&json!({
            "tokens": head512.tokens, "token_types": head512.token_types, "merges": head512.merges,
        }))
        .unwrap(),
    )
    .unwrap();

    // --- hf: the synthetic checkpoints' config.json / generation_config.json, their
    // safetensors headers on shrunk tensors, and a shard index.
    let synth = common::shared().join("goldens").join("synthetic");
    let mut names: Vec<String> = Vec::new();
    for model in ["llama_gqa", "qwen2_bias_tied", "qwen3_qknorm"] {
        let dir = synth.join(model);
        let with = |b: u8, path: &Path| {
            let mut s = vec![b];
            s.extend(fs::read(path).unwrap());
            s
        };
        write(
            "hf",
            &format!("config_{model}"),
            &with(0, &dir.join("config.json")),
        );
        write(
            "hf",
            &format!("generation_config_{model}"),
            &with(3, &dir.join("generation_config.json")),
        );
        let (raw, header) = safetensors_header(&dir.join("model.safetensors"));
        let mut s = vec![1u8];
        s.extend(shrunk_safetensors(&header, None));
        write("hf", &format!("safetensors_{model}"), &s);
        if model == "llama_gqa" {
            let mut s = vec![1u8];
            s.extend(shrunk_safetensors(&header, Some("BF16")));
            write("hf", "safetensors_llama_gqa_bf16", &s);
            let mut s = vec![1u8];
            s.extend(raw);
            write("hf", "safetensors_llama_gqa_header_no_data", &s);
            names = header
                .as_object()
                .unwrap()
                .keys()
                .filter(|k| *k != "__metadata__")
                .cloned()
                .collect();
        }
    }
    // Llama 3.1 style rope scaling, Mistral sliding window (config.json shapes, small sizes).
    let mut c: Value =
        serde_json::from_slice(&fs::read(synth.join("llama_gqa/config.json")).unwrap()).unwrap();
    c["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
    c["eos_token_id"] = json!([128001, 128008, 128009]);
    let mut s = vec![0u8];
    s.extend(serde_json::to_vec_pretty(&c).unwrap());
    write("hf", "config_llama31_scaling", &s);
    c["architectures"] = json!(["MistralForCausalLM"]);
    c["sliding_window"] = json!(4096);
    c.as_object_mut().unwrap().remove("rope_scaling");
    let mut s = vec![0u8];
    s.extend(serde_json::to_vec_pretty(&c).unwrap());
    write("hf", "config_mistral", &s);
    let weight_map: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let shard = format!("model-0000{}-of-00002.safetensors", 1 + i % 2);
            (n.clone(), Value::String(shard))
        })
        .collect();
    let mut s = vec![2u8];
    s.extend(
        serde_json::to_vec_pretty(
            &json!({"metadata": {"total_size": 2_000_000}, "weight_map": weight_map}),
        )
        .unwrap(),
    );
    write("hf", "index_llama_gqa", &s);
    let mut s = vec![3u8];
    s.extend(
        serde_json::to_vec_pretty(&json!({
            "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
            "add_bos_token": false, "chat_template": QWEN_STYLE,
        }))
        .unwrap(),
    );
    write("hf", "tokenizer_config_qwen_style", &s);

    // --- chat_template: real and real-style templates with a short conversation.
    let conversation = [
        ("system", "You are terse."),
        ("user", "Why is the sky blue?"),
        ("assistant", "Rayleigh scattering."),
        (
            "user",
            "Why is the sky blue? Say more, with <|im_end|> and {{ braces }}.",
        ),
    ];
    let smollm2 = real_vocab.chat_template.clone().unwrap();
    let seeds = [
        (
            "smollm2",
            1,
            smollm2.as_str(),
            "<|im_start|>",
            "<|im_end|>",
            &conversation[..],
        ),
        (
            "smollm2_no_system",
            1,
            smollm2.as_str(),
            "",
            "",
            &conversation[1..],
        ),
        ("chatml_fallback", 3, "", "", "", &conversation[..]),
        (
            "llama3_style",
            1,
            LLAMA3_STYLE,
            "<|begin_of_text|>",
            "<|eot_id|>",
            &conversation[..],
        ),
        (
            "qwen_style",
            1,
            QWEN_STYLE,
            "",
            "<|im_end|>",
            &conversation[1..],
        ),
        (
            "mistral_style",
            0,
            MISTRAL_STYLE,
            "<s>",
            "</s>",
            &conversation[1..],
        ),
    ];
    for (name, flags, t, bos, eos, msgs) in seeds {
        write("chat_template", name, &chat_seed(flags, t, bos, eos, msgs));
    }
}
