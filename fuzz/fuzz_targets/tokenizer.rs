//! A tokenizer built from fuzzed GGUF vocabulary metadata (tokens, merges, token types, special
//! ids, pre-tokenizer name), then encode / decode of fuzzed text and ids. No GPU.
//!
//! The vocabulary may start from a real one (SmolLM2's first 512 tokens with their types and
//! merges, `fuzz/data/smollm2_vocab_head.json`), to which fuzzed tokens and merges are added.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use wick::formats::tokenizer::{GgufVocab, PreTokenizerKind, Tokenizer};

#[derive(Debug, Arbitrary)]
enum Merge {
    /// Two tokens of the vocabulary by index: a merge the BPE model can use.
    Pair(u16, u16),
    /// Any string (may lack the space, or name unknown tokens).
    Raw(String),
}

#[derive(Debug, Arbitrary)]
struct Input {
    /// Start from the real vocabulary head.
    base: bool,
    tokens: Vec<String>,
    /// Appends the 256 byte-level tokens, so most text is encodable.
    byte_alphabet: bool,
    merges: Vec<Merge>,
    token_types: Vec<i8>,
    /// Index into the supported pre-tokenizer names, or a fuzzed name when out of range.
    pre: Option<u8>,
    pre_raw: String,
    model_gpt2: bool,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    text: String,
    ids: Vec<u32>,
}

/// GPT-2's byte-level alphabet (printable bytes stand for themselves, the rest from U+0100).
fn byte_alphabet() -> Vec<String> {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut next = 256u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                char::from(b).to_string()
            } else {
                next += 1;
                char::from_u32(next - 1).unwrap().to_string()
            }
        })
        .collect()
}

struct Base {
    tokens: Vec<String>,
    token_types: Vec<i32>,
    merges: Vec<String>,
}

fn base() -> &'static Base {
    static BASE: std::sync::OnceLock<Base> = std::sync::OnceLock::new();
    BASE.get_or_init(|| {
        let v: serde_json::Value =
            serde_json::from_str(include_str!("../data/smollm2_vocab_head.json")).unwrap();
        let strings = |k: &str| -> Vec<String> {
            v[k].as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_string())
                .collect()
        };
        Base {
            tokens: strings("tokens"),
            merges: strings("merges"),
            token_types: v["token_types"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_i64().unwrap() as i32)
                .collect(),
        }
    })
}

fuzz_target!(|input: Input| {
    let (mut tokens, base_types, mut merges): (Vec<String>, Vec<i32>, Vec<String>) = if input.base {
        let b = base();
        (b.tokens.clone(), b.token_types.clone(), b.merges.clone())
    } else {
        (Vec::new(), Vec::new(), Vec::new())
    };
    tokens.extend(input.tokens);
    if input.byte_alphabet {
        tokens.extend(byte_alphabet());
    }
    let n = tokens.len();
    merges.extend(input.merges.iter().map(|m| match m {
        Merge::Pair(a, b) if n > 0 => {
            format!("{} {}", tokens[*a as usize % n], tokens[*b as usize % n])
        }
        Merge::Pair(..) => String::new(),
        Merge::Raw(s) => s.clone(),
    }));
    // Fuzzed types repeat cyclically over the tokens after the base (none: all normal).
    let token_types = if input.token_types.is_empty() && base_types.is_empty() {
        Vec::new()
    } else {
        let fuzzed = |i: usize| match input.token_types.len() {
            0 => 1,
            k => i32::from(input.token_types[i % k]),
        };
        let mut t = base_types;
        let start = t.len();
        t.extend((start..n).map(fuzzed));
        t
    };
    let pre = match input.pre {
        None => None,
        Some(i) => Some(
            PreTokenizerKind::SUPPORTED
                .get(i as usize)
                .map_or(input.pre_raw.clone(), |s| s.to_string()),
        ),
    };
    let vocab = GgufVocab {
        model: if input.model_gpt2 { "gpt2" } else { "llama" }.into(),
        pre,
        tokens,
        merges,
        token_types,
        bos: input.bos,
        eos: input.eos,
        eot: input.eot,
        add_bos: input.add_bos,
        add_eos: input.add_eos,
        ..Default::default()
    };
    let Ok(tok) = Tokenizer::from_gguf_vocab(&vocab) else {
        return;
    };
    let size = tok.vocab_size();
    let ids = tok
        .encode(&input.text)
        .expect("a built tokenizer encodes any text");
    for &id in &ids {
        assert!(
            (id as usize) < size,
            "id {id} outside the vocabulary of {size}"
        );
    }
    tok.decode(&ids).expect("decode of encoded ids");
    let in_vocab = input.ids.iter().all(|&id| (id as usize) < size);
    assert_eq!(tok.decode(&input.ids).is_ok(), in_vocab);
    for &id in &input.ids {
        assert_eq!(tok.token_bytes(id).is_some(), (id as usize) < size);
        let _ = tok.id_to_token(id);
    }
    let _ = tok.token_to_id(&input.text);
});
