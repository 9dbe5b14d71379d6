//! Tokenizer tests: the SmolLM2 goldens from the real GGUF (skipped when the model file is
//! absent unless `WICK_REQUIRE_MODEL=1`), and a tiny hand-built vocabulary that needs no model.

use std::path::PathBuf;

use wick::formats::gguf::GgufFile;
use wick::formats::tokenizer::{GgufVocab, PreTokenizerKind, Tokenizer};
use wick::Error;

pub mod common;
use common::{model_path, require_model, shared_dir};

// ---------------------------------------------------------------------------------------------
// Real model goldens
// ---------------------------------------------------------------------------------------------

/// Returns `None` (after saying why) when the model or goldens are missing and not required.
fn real_inputs() -> Option<(PathBuf, serde_json::Value)> {
    let model = model_path();
    let goldens = shared_dir().map(|d| d.join("goldens/smollm2/tokenizer_cases.json"));
    let missing = match &goldens {
        _ if !model.is_file() => Some(format!("model file {} not found", model.display())),
        None => Some("shared/goldens not found (set WICK_SHARED)".to_string()),
        Some(g) if !g.is_file() => Some(format!("{} not found", g.display())),
        Some(_) => None,
    };
    if let Some(why) = missing {
        assert!(!require_model(), "WICK_REQUIRE_MODEL=1 but {why}");
        eprintln!("skipping SmolLM2 tokenizer goldens: {why}");
        return None;
    }
    let text = std::fs::read_to_string(goldens.unwrap()).expect("read tokenizer goldens");
    Some((
        model,
        serde_json::from_str(&text).expect("parse tokenizer goldens"),
    ))
}

fn ids_of(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("id list")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

#[test]
fn smollm2_goldens() {
    let Some((model, goldens)) = real_inputs() else {
        return;
    };
    let gguf = GgufFile::open(&model).expect("open GGUF");
    let tok = Tokenizer::from_gguf(&gguf).expect("tokenizer from GGUF");
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.token_to_id("<|im_end|>"), Some(2));
    assert!(tok
        .chat_template()
        .is_some_and(|t| t.contains("<|im_start|>assistant")));

    let cases = goldens["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 30);
    let mut failures = Vec::new();
    for case in cases {
        let key = case["key"].as_str().unwrap();
        let text = case["text"].as_str().unwrap();
        // wick follows llama.cpp's `smollm` digit splitting (goldens README, Caveat 1).
        let want_ids = ids_of(&case["ids_with_digit_split"]);
        let want_text = case["decoded"].as_str().unwrap();
        let ids = tok.encode(text).expect("encode");
        if ids != want_ids {
            failures.push(format!("{key}: encode {ids:?}, want {want_ids:?}"));
        }
        let decoded = tok.decode(&want_ids).expect("decode");
        if decoded != want_text {
            failures.push(format!("{key}: decode {decoded:?}, want {want_text:?}"));
        }
        // Streaming path: concatenated token bytes must give the same text.
        let bytes: Vec<u8> = want_ids
            .iter()
            .flat_map(|&id| tok.token_bytes(id).expect("token bytes"))
            .collect();
        if String::from_utf8_lossy(&bytes) != want_text {
            failures.push(format!("{key}: token_bytes do not spell the decoded text"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));

    // The chat prompt's specials are single ids.
    let ids = tok.encode("<|im_start|>user\nHi<|im_end|>\n").unwrap();
    assert_eq!(ids.first(), Some(&1));
    assert!(ids.contains(&2));
    assert!(matches!(tok.decode(&[49152]), Err(Error::Tokenizer(_))));
    assert!(tok.token_bytes(49152).is_none());
}

// ---------------------------------------------------------------------------------------------
// Tiny hand-built vocabulary
// ---------------------------------------------------------------------------------------------

/// GPT-2's byte → char alphabet (printable Latin-1 stands for itself, the rest from U+0100 up).
fn byte_chars() -> Vec<char> {
    let mut next = 0x100u32;
    (0..=255u8)
        .map(|b| {
            if matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF) {
                char::from(b)
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap()
            }
        })
        .collect()
}

const MERGED: &[(&str, &str)] = &[
    ("Ġ", "Ġ"),
    ("Ġ", "1"),
    ("1", "2"),
    ("12", "3"),
    ("a", "b"),
    ("(", "ab"),
    ("Ã", "©"),
    ("Ġ", "ab"),
];
const CONTROL: &str = "<|s|>";
const USER: &str = "<user>";

/// Ids 0-255: the single bytes in byte order; then the merge results in `MERGED` order; then
/// a control and a user-defined token.
fn tiny_vocab(pre: Option<&str>) -> GgufVocab {
    let mut tokens: Vec<String> = byte_chars().iter().map(|c| c.to_string()).collect();
    let mut merges = Vec::new();
    for (a, b) in MERGED {
        tokens.push(format!("{a}{b}"));
        merges.push(format!("{a} {b}"));
    }
    let mut token_types = vec![1; tokens.len()];
    tokens.push(CONTROL.into());
    token_types.push(3);
    tokens.push(USER.into());
    token_types.push(4);
    GgufVocab {
        model: "gpt2".into(),
        pre: pre.map(str::to_string),
        bos: Some(id_of_token(&tokens, CONTROL)),
        eos: Some(id_of_token(&tokens, CONTROL)),
        tokens,
        merges,
        token_types,
        ..Default::default()
    }
}

fn id_of_token(tokens: &[String], s: &str) -> u32 {
    tokens.iter().position(|t| t == s).unwrap() as u32
}

/// Token ids → their vocabulary strings, for readable assertions.
fn pieces(tok: &Tokenizer, text: &str) -> Vec<String> {
    tok.encode(text)
        .unwrap()
        .iter()
        .map(|&id| tok.id_to_token(id).unwrap().to_string())
        .collect()
}

fn tiny(pre: Option<&str>) -> Tokenizer {
    Tokenizer::from_gguf_vocab(&tiny_vocab(pre)).expect("tiny tokenizer")
}

#[test]
fn pre_tokenizer_names() {
    use PreTokenizerKind::*;
    for (name, kind) in [
        (None, Gpt2),
        (Some("gpt2"), Gpt2),
        (Some("default"), Gpt2),
        (Some("smollm"), DigitsThenGpt2),
        (Some("llama-bpe"), Llama3),
        (Some("qwen2"), Qwen2),
    ] {
        assert_eq!(
            PreTokenizerKind::from_gguf_pre(name).unwrap(),
            kind,
            "{name:?}"
        );
    }
    let err = Tokenizer::from_gguf_vocab(&tiny_vocab(Some("martian"))).unwrap_err();
    assert!(
        matches!(&err, Error::Tokenizer(m) if m.contains("martian") && m.contains("smollm")),
        "{err}"
    );
}

#[test]
fn gpt2_pre_tokenizer() {
    let tok = tiny(Some("gpt2"));
    // `\s+(?!\S)` leaves the last space to join the digit run: "Ġ", "Ġ1".
    assert_eq!(pieces(&tok, "x  1"), ["x", "Ġ", "Ġ1"]);
    assert_eq!(pieces(&tok, "123"), ["123"]);
    assert_eq!(pieces(&tok, "(ab"), ["(", "ab"]);
    assert_eq!(pieces(&tok, "e\u{301}"), ["e", "Ì", "ģ"]);
}

#[test]
fn smollm_pre_tokenizer_splits_digits_first() {
    let tok = tiny(Some("smollm"));
    // Digits are cut out before the regex, so both spaces stay one word: "ĠĠ", "1".
    assert_eq!(pieces(&tok, "x  1"), ["x", "ĠĠ", "1"]);
    assert_eq!(pieces(&tok, "123"), ["1", "2", "3"]);
    // Non-ASCII numerals (\p{N}) are split too: " ½" → "Ġ", "½" bytes.
    assert_eq!(pieces(&tok, " \u{bd}"), ["Ġ", "Â", "½"]);
    assert_eq!(pieces(&tok, " ab"), ["Ġab"]);
}

#[test]
fn llama3_pre_tokenizer() {
    let tok = tiny(Some("llama-bpe"));
    // One leading non-letter joins a letter run; digits come in groups of up to three.
    assert_eq!(pieces(&tok, "(ab"), ["(ab"]);
    assert_eq!(pieces(&tok, "1231"), ["123", "1"]);
    // Unlike smollm: the last space is split off but cannot join the digit.
    assert_eq!(pieces(&tok, "x  1"), ["x", "Ġ", "Ġ", "1"]);
}

#[test]
fn qwen2_pre_tokenizer() {
    let tok = tiny(Some("qwen2"));
    assert_eq!(pieces(&tok, "123"), ["1", "2", "3"]);
    assert_eq!(pieces(&tok, "(ab"), ["(ab"]);
    // NFC first: e + U+0301 becomes é = C3 A9 = "Ã©".
    assert_eq!(pieces(&tok, "e\u{301}"), ["Ã©"]);
}

#[test]
fn special_tokens_are_matched_whole() {
    let tok = tiny(Some("smollm"));
    let control = tok.token_to_id(CONTROL).unwrap();
    let user = tok.token_to_id(USER).unwrap();
    let a = tok.token_to_id("a").unwrap();
    let b = tok.token_to_id("b").unwrap();
    assert_eq!(tok.encode("a<|s|>b").unwrap(), [a, control, b]);
    assert_eq!(tok.encode("<user>a<|s|>").unwrap(), [user, a, control]);
    // Near misses are ordinary text.
    let near = tok.encode("<|s |>").unwrap();
    assert!(!near.contains(&control) && near.len() > 1);
    assert_eq!(tok.decode(&[a, control, user, b]).unwrap(), "a<|s|><user>b");
    assert_eq!(tok.token_bytes(control).unwrap(), CONTROL.as_bytes());
    // add_bos is off: nothing is prepended.
    assert_eq!(tok.bos(), Some(control));
    assert_eq!(tok.encode("ab").unwrap(), [tok.token_to_id("ab").unwrap()]);
}

#[test]
fn bos_and_eos_added_when_asked() {
    let mut v = tiny_vocab(None);
    v.add_bos = true;
    v.add_eos = true;
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    let control = tok.token_to_id(CONTROL).unwrap();
    let ab = tok.token_to_id("ab").unwrap();
    assert_eq!(tok.encode("ab").unwrap(), [control, ab, control]);
    assert_eq!(tok.encode("").unwrap(), [control, control]);

    v.bos = None;
    assert!(matches!(
        Tokenizer::from_gguf_vocab(&v),
        Err(Error::Tokenizer(_))
    ));
}

#[test]
fn decode_bytes_and_errors() {
    let tok = tiny(None);
    let n = tok.vocab_size() as u32;
    assert_eq!(n, 256 + MERGED.len() as u32 + 2);
    // Single-byte ids are the bytes themselves (by construction of the tiny vocab).
    assert_eq!(tok.token_bytes(b' ' as u32).unwrap(), b" ");
    assert_eq!(tok.token_bytes(0xC3).unwrap(), [0xC3]);
    assert_eq!(tok.decode(&[0xC3, 0xA9]).unwrap(), "é");
    // A lone lead byte is not UTF-8: replaced, not an error.
    assert_eq!(tok.decode(&[b'a' as u32, 0xC3]).unwrap(), "a\u{FFFD}");
    let all: Vec<u32> = (0..=255).collect();
    let bytes: Vec<u8> = all
        .iter()
        .flat_map(|&i| tok.token_bytes(i).unwrap())
        .collect();
    assert_eq!(bytes, (0..=255u8).collect::<Vec<_>>());

    assert!(matches!(tok.decode(&[1, n]), Err(Error::Tokenizer(_))));
    assert!(matches!(tok.decode(&[u32::MAX]), Err(Error::Tokenizer(_))));
    assert!(tok.token_bytes(n).is_none());
    assert!(tok.id_to_token(n).is_none());
    assert_eq!(tok.decode(&[]).unwrap(), "");

    // Round trip over text whose every byte has a token.
    let text = "x = (ab) 1231 é\n\t<|s|> ☃";
    assert_eq!(tok.decode(&tok.encode(text).unwrap()).unwrap(), text);
}

#[test]
fn duplicate_token_strings_still_decode() {
    let mut v = tiny_vocab(None);
    v.tokens.push("ab".into());
    v.token_types.push(1);
    let tok = Tokenizer::from_gguf_vocab(&v).unwrap();
    let last = v.tokens.len() as u32 - 1;
    let first = id_of_token(&v.tokens, "ab");
    assert!(first < last);
    // The later duplicate wins for encoding (as llama.cpp), the earlier still decodes.
    assert_eq!(tok.encode("ab").unwrap(), [last]);
    assert_eq!(tok.decode(&[first, last]).unwrap(), "abab");
    assert_eq!(tok.id_to_token(first), Some("ab"));
}

#[test]
fn malformed_vocabularies_are_errors() {
    let bad = |f: &dyn Fn(&mut GgufVocab)| {
        let mut v = tiny_vocab(None);
        f(&mut v);
        match Tokenizer::from_gguf_vocab(&v) {
            Err(Error::Tokenizer(_)) => {}
            other => panic!("expected a tokenizer error, got {other:?}"),
        }
    };
    bad(&|v| v.model = "llama".into());
    bad(&|v| v.merges.push("nospace".into()));
    bad(&|v| v.merges.push("zz qq".into()));
    bad(&|v| v.token_types.pop().map(drop).unwrap());
    bad(&|v| v.eos = Some(100_000));
    bad(&|v| v.tokens.clear());
}

/// Writes the tiny vocabulary as a Hugging Face `tokenizer.json` (byte-level BPE, `<s>` and
/// `</s>` as added specials) with a `tokenizer_config.json` and `generation_config.json` into
/// `dir`; returns the path and the id of `<s>`.
fn write_tiny_tokenizer_json(dir: &std::path::Path) -> (PathBuf, u32) {
    let chars = byte_chars();
    let mut vocab = serde_json::Map::new();
    for (i, c) in chars.iter().enumerate() {
        vocab.insert(c.to_string(), i.into());
    }
    let mut merges = Vec::new();
    for (a, b) in MERGED {
        let id = vocab.len();
        vocab.insert(format!("{a}{b}"), id.into());
        merges.push(serde_json::json!([a, b]));
    }
    let bos = vocab.len() as u32;
    vocab.insert("<s>".into(), bos.into());
    vocab.insert("</s>".into(), (bos + 1).into());
    let added = |id: u32, s: &str| {
        serde_json::json!({"id": id, "content": s, "single_word": false, "lstrip": false,
            "rstrip": false, "normalized": false, "special": true})
    };
    let byte_level = serde_json::json!({"type": "ByteLevel", "add_prefix_space": false,
        "trim_offsets": true, "use_regex": true});
    let json = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": [added(bos, "<s>"), added(bos + 1, "</s>")],
        "normalizer": null,
        "pre_tokenizer": byte_level,
        "post_processor": {"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [bos], "tokens": ["<s>"]}}},
        "decoder": byte_level,
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": false,
            "byte_fallback": false, "ignore_merges": false, "vocab": vocab, "merges": merges},
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    std::fs::write(
        dir.join("tokenizer_config.json"),
        r#"{"bos_token": "<s>", "eos_token": {"content": "</s>"}, "chat_template": "{{ x }}"}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("generation_config.json"),
        format!(r#"{{"eos_token_id": [{}, 5]}}"#, bos + 1),
    )
    .unwrap();

    (path, bos)
}

#[test]
fn tokenizer_json_with_config() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bos) = write_tiny_tokenizer_json(dir.path());
    let tok = Tokenizer::from_tokenizer_json(&path).unwrap();
    assert_eq!(tok.vocab_size(), bos as usize + 2);
    assert_eq!(tok.bos(), Some(bos));
    assert_eq!(tok.eos_ids(), &[bos + 1, 5]);
    assert_eq!(tok.chat_template(), Some("{{ x }}"));
    let ab = tok.token_to_id("Ġab").unwrap();
    // The file's post-processor adds <s>; "</s>" in the text is matched whole.
    assert_eq!(tok.encode(" ab</s>").unwrap(), [bos, ab, bos + 1]);
    assert_eq!(tok.decode(&[bos, ab, bos + 1]).unwrap(), "<s> ab</s>");
    assert_eq!(tok.token_bytes(ab).unwrap(), b" ab");
    assert!(matches!(tok.decode(&[bos + 2]), Err(Error::Tokenizer(_))));

    let missing = Tokenizer::from_tokenizer_json(&dir.path().join("nope.json"));
    assert!(matches!(missing, Err(Error::Io { .. })));
}

/// `tokenizer.json` → GGUF vocabulary (what `wick quantize` writes for a Hugging Face
/// directory): same tokens, merges as "a b", added specials as control tokens, ids below the
/// model's vocabulary padded, and the GGUF metadata round-trips and tokenizes identically.
#[test]
fn tokenizer_json_converts_to_gguf_vocab() {
    let dir = tempfile::tempdir().unwrap();
    let (path, bos) = write_tiny_tokenizer_json(dir.path());
    let n = bos as usize + 2;
    let v = GgufVocab::from_tokenizer_json(&path, Some(n + 3)).unwrap();
    assert_eq!(v.model, "gpt2");
    assert_eq!(v.pre.as_deref(), Some("gpt-2"));
    assert_eq!(v.tokens.len(), n + 3);
    assert_eq!(v.tokens[n], format!("[PAD{n}]"));
    assert_eq!(v.token_types[n], 5);
    assert_eq!(v.tokens[bos as usize], "<s>");
    assert_eq!(v.token_types[bos as usize], 3);
    assert_eq!(v.token_types[0], 1);
    assert_eq!(v.merges.len(), MERGED.len());
    assert_eq!(v.merges[0], format!("{} {}", MERGED[0].0, MERGED[0].1));
    assert_eq!((v.bos, v.eos), (Some(bos), Some(bos + 1)));
    assert_eq!(v.chat_template.as_deref(), Some("{{ x }}"));

    // Through GGUF metadata and back.
    let mut w = wick::formats::gguf_writer::GgufWriter::new();
    for (k, val) in v.to_metadata() {
        w.add_meta(k, val);
    }
    let back = GgufVocab::from_gguf(&GgufFile::from_bytes(w.to_bytes()).unwrap()).unwrap();
    assert_eq!(back, v);

    // Same ids as the tokenizers-crate tokenizer of the JSON (without its post-processor's
    // BOS, which GGUF expresses as add_bos_token = false here).
    let from_json = Tokenizer::from_tokenizer_json(&path).unwrap();
    let from_gguf = Tokenizer::from_gguf_vocab(&v).unwrap();
    for text in [" ab", "ab ab</s>", "hello world", "a\nb  c"] {
        let mut want = from_json.encode(text).unwrap();
        want.retain(|&id| id != bos);
        assert_eq!(from_gguf.encode(text).unwrap(), want, "{text:?}");
    }

    // An unrecognised pre-tokenizer is named, not guessed.
    let mut j: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    j["pre_tokenizer"] = serde_json::json!({"type": "Whitespace"});
    std::fs::write(&path, j.to_string()).unwrap();
    let e = GgufVocab::from_tokenizer_json(&path, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("Whitespace"), "{e}");
}

/// The real SmolLM2 vocabulary written out as its Hugging Face `tokenizer.json` would be
/// (digits split, then byte-level) converts back to exactly the GGUF's vocabulary.
#[test]
fn smollm2_vocab_round_trips_through_tokenizer_json() {
    let Some((model, _)) = real_inputs() else {
        return;
    };
    let g = GgufVocab::from_gguf(&GgufFile::open(&model).unwrap()).unwrap();
    let mut vocab = serde_json::Map::new();
    let mut added = Vec::new();
    for (i, t) in g.tokens.iter().enumerate() {
        vocab.insert(t.clone(), i.into());
        if g.token_types[i] == 3 {
            added.push(serde_json::json!({"id": i, "content": t, "special": true}));
        }
    }
    let json = serde_json::json!({
        "added_tokens": added,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true}]},
        "model": {"type": "BPE", "vocab": vocab, "merges": g.merges},
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json.to_string()).unwrap();
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        serde_json::json!({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
            "unk_token": "<|endoftext|>", "pad_token": "<|im_end|>",
            "chat_template": g.chat_template})
        .to_string(),
    )
    .unwrap();
    let v = GgufVocab::from_tokenizer_json(&path, Some(g.tokens.len())).unwrap();
    assert_eq!(v.pre.as_deref(), Some("smollm"));
    assert_eq!(v.tokens, g.tokens);
    assert_eq!(v.merges, g.merges);
    assert_eq!(v.token_types, g.token_types);
    assert_eq!((v.bos, v.eos, v.unk, v.pad), (g.bos, g.eos, g.unk, g.pad));
    assert_eq!(v.chat_template, g.chat_template);
}
