//! Text ↔ token ids, built on the `tokenizers` crate.
//!
//! Two sources:
//! - a GGUF file's `tokenizer.ggml.*` metadata ([`GgufVocab`]): only `tokenizer.ggml.model =
//!   "gpt2"` (byte-level BPE) is supported. The pre-tokenizer comes from `tokenizer.ggml.pre`
//!   (see [`PreTokenizerKind`]); an unknown name is an error rather than a guess, because a
//!   wrong split regex silently yields different ids.
//! - a Hugging Face `tokenizer.json` ([`Tokenizer::from_tokenizer_json`]), with the BOS/EOS ids
//!   and chat template taken from `tokenizer_config.json` / `generation_config.json` beside it
//!   when present.
//!
//! Control (type 3) and user-defined (type 4) GGUF tokens become added special tokens, matched
//! whole inside the text as Hugging Face does: `"<|im_start|>"` in a prompt is one id.

use std::collections::HashMap;
use std::path::Path;

use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, MetaValue};

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp's `llama_token_type`).
pub const TOKEN_TYPE_NORMAL: i32 = 1;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_UNUSED: i32 = 5;

/// The Llama 3 split regex (numbers in groups of up to three digits).
pub const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// The Qwen2 split regex (like Llama 3 but every digit on its own).
pub const QWEN2_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(format!("{context}: {e}"))
}

/// The tokenizer metadata of a GGUF file, as plain values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model` (`"gpt2"` for byte-level BPE).
    pub model: String,
    /// `tokenizer.ggml.pre`, the pre-tokenizer name.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// `"left right"` pairs, highest priority first.
    pub merges: Vec<String>,
    /// One per token; empty means every token is normal.
    pub token_types: Vec<i32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub unk: Option<u32>,
    pub pad: Option<u32>,
    /// End-of-turn / end-of-message ids: generation also stops on them.
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the `tokenizer.*` keys of `f`. Missing `add_bos_token` / `add_eos_token` mean
    /// false (the llama.cpp default for BPE vocabularies).
    pub fn from_gguf(f: &GgufFile) -> Result<Self> {
        let model = f
            .get_str("tokenizer.ggml.model")?
            .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.model".into()))?
            .to_string();
        let tokens: Vec<String> = f
            .get_str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| Error::Tokenizer("GGUF has no tokenizer.ggml.tokens".into()))?
            .into_iter()
            .map(str::to_string)
            .collect();
        let merges = f
            .get_str_array("tokenizer.ggml.merges")?
            .unwrap_or_default()
            .into_iter()
            .map(str::to_string)
            .collect();
        let token_types = f
            .get_i64_array("tokenizer.ggml.token_type")?
            .unwrap_or_default()
            .into_iter()
            .map(|t| {
                i32::try_from(t)
                    .map_err(|_| Error::Tokenizer(format!("token type {t} out of range")))
            })
            .collect::<Result<Vec<i32>>>()?;
        let id = |key: &str| -> Result<Option<u32>> {
            match f.get_u64(key)? {
                None => Ok(None),
                Some(v) => u32::try_from(v)
                    .map(Some)
                    .map_err(|_| Error::Tokenizer(format!("{key} = {v} is not a token id"))),
            }
        };
        let flag = |key: &str| -> Result<bool> { Ok(f.get_bool(key)?.unwrap_or(false)) };
        Ok(GgufVocab {
            model,
            pre: f.get_str("tokenizer.ggml.pre")?.map(str::to_string),
            tokens,
            merges,
            token_types,
            bos: id("tokenizer.ggml.bos_token_id")?,
            eos: id("tokenizer.ggml.eos_token_id")?,
            unk: id("tokenizer.ggml.unknown_token_id")?,
            pad: id("tokenizer.ggml.padding_token_id")?,
            eot: id("tokenizer.ggml.eot_token_id")?,
            eom: id("tokenizer.ggml.eom_token_id")?,
            add_bos: flag("tokenizer.ggml.add_bos_token")?,
            add_eos: flag("tokenizer.ggml.add_eos_token")?,
            chat_template: f.get_str("tokenizer.chat_template")?.map(str::to_string),
        })
    }

    /// The GGUF metadata entries (`tokenizer.*`) describing this vocabulary, as llama.cpp's
    /// converter writes them (the pre-tokenizer under the name llama.cpp knows,
    /// [`llama_cpp_pre_name`]).
    pub fn to_metadata(&self) -> Vec<(String, MetaValue)> {
        let mut m = vec![(
            "tokenizer.ggml.model".to_string(),
            MetaValue::String(self.model.clone()),
        )];
        if let Some(pre) = &self.pre {
            let pre = llama_cpp_pre_name(pre).to_string();
            m.push(("tokenizer.ggml.pre".into(), MetaValue::String(pre)));
        }
        let strings =
            |v: &[String]| MetaValue::Array(v.iter().cloned().map(MetaValue::String).collect());
        m.push(("tokenizer.ggml.tokens".into(), strings(&self.tokens)));
        if !self.token_types.is_empty() {
            m.push((
                "tokenizer.ggml.token_type".into(),
                MetaValue::Array(
                    self.token_types
                        .iter()
                        .map(|&t| MetaValue::I32(t))
                        .collect(),
                ),
            ));
        }
        if !self.merges.is_empty() {
            m.push(("tokenizer.ggml.merges".into(), strings(&self.merges)));
        }
        for (key, id) in [
            ("bos_token_id", self.bos),
            ("eos_token_id", self.eos),
            ("unknown_token_id", self.unk),
            ("padding_token_id", self.pad),
            ("eot_token_id", self.eot),
            ("eom_token_id", self.eom),
        ] {
            if let Some(id) = id {
                m.push((format!("tokenizer.ggml.{key}"), MetaValue::U32(id)));
            }
        }
        m.push((
            "tokenizer.ggml.add_bos_token".into(),
            MetaValue::Bool(self.add_bos),
        ));
        m.push((
            "tokenizer.ggml.add_eos_token".into(),
            MetaValue::Bool(self.add_eos),
        ));
        if let Some(t) = &self.chat_template {
            m.push((
                "tokenizer.chat_template".into(),
                MetaValue::String(t.clone()),
            ));
        }
        m
    }

    /// Reads a Hugging Face byte-level BPE `tokenizer.json` (with `tokenizer_config.json` and
    /// `generation_config.json` beside it when present) into GGUF vocabulary form, as
    /// llama.cpp's converter does: added special tokens become control tokens, other added
    /// tokens user-defined, ids missing below `vocab_size` become `[PAD<id>]` (unused, type 5).
    /// The pre-tokenizer is recognised from its definition; an unknown one is an error.
    pub fn from_tokenizer_json(path: &Path, vocab_size: Option<usize>) -> Result<GgufVocab> {
        let ctx = path.display().to_string();
        let j = read_json_opt(path)?.ok_or_else(|| {
            Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such tokenizer file"),
            )
        })?;
        let model = &j["model"];
        if model["type"].as_str() != Some("BPE") {
            return Err(tok_err(
                &ctx,
                format!(
                    "model type {} is not supported for GGUF export (byte-level BPE only)",
                    model["type"]
                ),
            ));
        }
        let vocab = model["vocab"]
            .as_object()
            .ok_or_else(|| tok_err(&ctx, "model.vocab is not an object"))?;
        let mut by_id: HashMap<u32, (String, i32)> = HashMap::new();
        for (tok, id) in vocab {
            let id =
                json_u32(id).ok_or_else(|| tok_err(&ctx, format!("token {tok:?} has a bad id")))?;
            by_id.insert(id, (tok.clone(), TOKEN_TYPE_NORMAL));
        }
        for a in j["added_tokens"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let (Some(id), Some(content)) = (json_u32(&a["id"]), a["content"].as_str()) else {
                return Err(tok_err(&ctx, "an added token lacks id or content"));
            };
            let ty = if a["special"].as_bool().unwrap_or(false) {
                TOKEN_TYPE_CONTROL
            } else {
                TOKEN_TYPE_USER_DEFINED
            };
            by_id.insert(id, (content.to_string(), ty));
        }
        let n = by_id
            .keys()
            .map(|&i| i as usize + 1)
            .max()
            .unwrap_or(0)
            .max(vocab_size.unwrap_or(0));
        let mut tokens = Vec::with_capacity(n);
        let mut token_types = Vec::with_capacity(n);
        for i in 0..n as u32 {
            let (t, ty) = by_id
                .remove(&i)
                .unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_TYPE_UNUSED));
            tokens.push(t);
            token_types.push(ty);
        }
        let merges = model["merges"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
            .iter()
            .map(|m| match m {
                serde_json::Value::String(s) => Some(s.clone()),
                serde_json::Value::Array(p) => {
                    Some(format!("{} {}", p.first()?.as_str()?, p.get(1)?.as_str()?))
                }
                _ => None,
            })
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| tok_err(&ctx, "a merge is neither \"a b\" nor [a, b]"))?;
        let pre = pre_tokenizer_name(&j).ok_or_else(|| {
            tok_err(&ctx, format!(
                "pre-tokenizer {} is not one wick can name in GGUF (gpt-2, smollm, llama-bpe, qwen2)",
                j["pre_tokenizer"]
            ))
        })?;

        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?.unwrap_or_default();
        let generation = read_json_opt(&dir.join("generation_config.json"))?.unwrap_or_default();
        let id_of = |field: &str| -> Option<u32> {
            let v = config.get(field)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            tokens.iter().position(|t| t == s).map(|i| i as u32)
        };
        let first_id = |v: &serde_json::Value| match v {
            serde_json::Value::Array(a) => a.first().and_then(json_u32),
            other => json_u32(other),
        };
        let chat_template = match config.get("chat_template") {
            Some(serde_json::Value::String(s)) => Some(s.clone()),
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|e| e["name"].as_str() == Some("default"))
                .or_else(|| list.first())
                .and_then(|e| e["template"].as_str().map(str::to_string)),
            _ => None,
        };
        Ok(GgufVocab {
            model: "gpt2".into(),
            pre: Some(pre.to_string()),
            bos: id_of("bos_token").or_else(|| generation.get("bos_token_id").and_then(first_id)),
            eos: id_of("eos_token").or_else(|| generation.get("eos_token_id").and_then(first_id)),
            unk: id_of("unk_token"),
            pad: id_of("pad_token"),
            eot: None,
            eom: None,
            add_bos: config["add_bos_token"].as_bool().unwrap_or(false),
            add_eos: config["add_eos_token"].as_bool().unwrap_or(false),
            chat_template,
            tokens,
            merges,
            token_types,
        })
    }
}

/// The `tokenizer.ggml.pre` name to write for a name wick reads: the same name, except the
/// spelling `gpt2` (written by wick before, still read), which llama.cpp (b10587) does not
/// know: its GPT-2 pre-tokenizer is `gpt-2`.
pub fn llama_cpp_pre_name(pre: &str) -> &str {
    match pre {
        "gpt2" => "gpt-2",
        other => other,
    }
}

/// The llama.cpp `tokenizer.ggml.pre` name of a `tokenizer.json`'s pre-tokenizer, recognised
/// from its definition (the split regexes wick implements).
fn pre_tokenizer_name(j: &serde_json::Value) -> Option<&'static str> {
    let pre = &j["pre_tokenizer"];
    let kind = |v: &serde_json::Value| v["type"].as_str().unwrap_or("").to_string();
    let byte_level_regex =
        |v: &serde_json::Value| kind(v) == "ByteLevel" && v["use_regex"].as_bool() != Some(false);
    if byte_level_regex(pre) {
        return Some("gpt-2");
    }
    if kind(pre) != "Sequence" {
        return None;
    }
    let parts = pre["pretokenizers"].as_array()?;
    match parts.as_slice() {
        [d, b]
            if kind(d) == "Digits"
                && d["individual_digits"].as_bool() == Some(true)
                && byte_level_regex(b) =>
        {
            Some("smollm")
        }
        [s, b] if kind(s) == "Split" && kind(b) == "ByteLevel" => {
            match s["pattern"]["Regex"].as_str()? {
                LLAMA3_REGEX => Some("llama-bpe"),
                QWEN2_REGEX => Some("qwen2"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// How text is split into words before BPE, chosen by GGUF `tokenizer.ggml.pre`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizerKind {
    /// The GPT-2 regex. Also used when `tokenizer.ggml.pre` is absent (as Hugging Face does).
    Gpt2,
    /// Every `\p{N}` character on its own first, then the GPT-2 regex (llama.cpp `smollm`,
    /// `starcoder`, `refact`).
    DigitsThenGpt2,
    /// The Llama 3 regex; BPE skips merging words already in the vocabulary.
    Llama3,
    /// The Qwen2 regex after NFC normalisation (as Qwen2's `tokenizer.json`).
    Qwen2,
}

impl PreTokenizerKind {
    /// Names accepted by [`PreTokenizerKind::from_gguf_pre`].
    pub const SUPPORTED: &'static [&'static str] = &[
        "default",
        "gpt2",
        "gpt-2",
        "smollm",
        "starcoder",
        "refact",
        "llama-bpe",
        "llama3",
        "llama-v3",
        "qwen2",
        "deepseek-r1-qwen",
    ];

    pub fn from_gguf_pre(pre: Option<&str>) -> Result<Self> {
        Ok(match pre {
            None | Some("default" | "gpt2" | "gpt-2") => Self::Gpt2,
            Some("smollm" | "starcoder" | "refact") => Self::DigitsThenGpt2,
            Some("llama-bpe" | "llama3" | "llama-v3") => Self::Llama3,
            Some("qwen2" | "deepseek-r1-qwen") => Self::Qwen2,
            Some(other) => {
                return Err(Error::Tokenizer(format!(
                    "unsupported tokenizer.ggml.pre {other:?} (supported: {})",
                    Self::SUPPORTED.join(", ")
                )))
            }
        })
    }

    fn pre_tokenizer(self) -> Result<PreTokenizerWrapper> {
        let regex_then_bytes = |regex: &str| -> Result<PreTokenizerWrapper> {
            let split = Split::new(
                SplitPattern::Regex(regex.to_string()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| tok_err("split regex", e))?;
            Ok(Sequence::new(vec![
                split.into(),
                ByteLevel::new(false, true, false).into(),
            ])
            .into())
        };
        Ok(match self {
            Self::Gpt2 => ByteLevel::new(false, true, true).into(),
            Self::DigitsThenGpt2 => Sequence::new(vec![
                Digits::new(true).into(),
                ByteLevel::new(false, true, true).into(),
            ])
            .into(),
            Self::Llama3 => regex_then_bytes(LLAMA3_REGEX)?,
            Self::Qwen2 => regex_then_bytes(QWEN2_REGEX)?,
        })
    }
}

/// GPT-2's reversible byte ↔ printable-char table: printable Latin-1 bytes stand for
/// themselves, the other 68 bytes take the code points 256, 257, ... in byte order.
fn byte_level_chars() -> (Vec<char>, HashMap<char, u8>) {
    let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
    let mut to_char = Vec::with_capacity(256);
    let mut next = 256u32;
    for b in 0..=255u8 {
        if printable(b) {
            to_char.push(char::from(b));
        } else {
            to_char.push(char::from_u32(next).expect("256..324 are valid chars"));
            next += 1;
        }
    }
    let to_byte = to_char
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    (to_char, to_byte)
}

/// How a token's text maps to output bytes.
#[derive(Debug, Clone)]
enum TokenText {
    /// GPT-2 byte-level alphabet.
    ByteLevel(HashMap<char, u8>),
    /// SentencePiece style: `▁` is a space, `<0xAB>` is a raw byte when byte fallback is on.
    SentencePiece { byte_fallback: bool },
    /// Anything else: ask the inner decoder, one token at a time.
    Other,
}

/// A tokenizer with the BOS/EOS conventions and chat template of its model.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Token text by id; `None` where no token has that id. Kept beside `inner` because a GGUF
    /// vocabulary may hold the same string twice, and the inner BPE model keeps only one id.
    tokens: Vec<Option<String>>,
    text: TokenText,
    /// `Some((add_bos, add_eos))`: this wrapper adds them (GGUF); `None`: the inner
    /// post-processor does (tokenizer.json).
    manual_specials: Option<(bool, bool)>,
    bos: Option<u32>,
    eos_ids: Vec<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos_ids", &self.eos_ids)
            .finish_non_exhaustive()
    }
}

impl Tokenizer {
    /// Builds a byte-level BPE tokenizer from GGUF metadata.
    pub fn from_gguf_vocab(v: &GgufVocab) -> Result<Tokenizer> {
        if v.model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "unsupported tokenizer.ggml.model {:?} (only \"gpt2\" byte-level BPE)",
                v.model
            )));
        }
        let n = v.tokens.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(Error::Tokenizer(format!("vocabulary size {n} is unusable")));
        }
        if !v.token_types.is_empty() && v.token_types.len() != n {
            return Err(Error::Tokenizer(format!(
                "{} token types for {n} tokens",
                v.token_types.len()
            )));
        }
        for (name, id) in [
            ("bos", v.bos),
            ("eos", v.eos),
            ("unk", v.unk),
            ("pad", v.pad),
            ("eot", v.eot),
            ("eom", v.eom),
        ] {
            if let Some(id) = id.filter(|&id| id as usize >= n) {
                return Err(Error::Tokenizer(format!(
                    "{name} id {id} is outside the vocabulary (size {n})"
                )));
            }
        }
        if v.add_bos && v.bos.is_none() {
            return Err(Error::Tokenizer("add_bos_token set but no BOS id".into()));
        }
        if v.add_eos && v.eos.is_none() {
            return Err(Error::Tokenizer("add_eos_token set but no EOS id".into()));
        }
        let kind = PreTokenizerKind::from_gguf_pre(v.pre.as_deref())?;

        // Later duplicates win, as in llama.cpp's token → id map.
        let vocab: tokenizers::models::bpe::Vocab = v
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let merges = v
            .merges
            .iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("merge {m:?} has no space")))
            })
            .collect::<Result<Vec<_>>>()?;
        // No unk token: as in Hugging Face, a byte with no token is dropped (GGUF Caveat 2).
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .ignore_merges(kind == PreTokenizerKind::Llama3)
            .build()
            .map_err(|e| tok_err("building BPE", e))?;

        let mut inner = tokenizers::Tokenizer::new(bpe);
        if kind == PreTokenizerKind::Qwen2 {
            inner.with_normalizer(Some(NFC));
        }
        inner.with_pre_tokenizer(Some(kind.pre_tokenizer()?));
        inner.with_decoder(Some(ByteLevel::default()));
        let specials: Vec<AddedToken> = v
            .token_types
            .iter()
            .zip(&v.tokens)
            .filter(|(&t, _)| t == TOKEN_TYPE_CONTROL || t == TOKEN_TYPE_USER_DEFINED)
            .map(|(_, s)| AddedToken::from(s.clone(), true))
            .collect();
        inner.add_special_tokens(&specials);

        let mut eos_ids: Vec<u32> = Vec::new();
        for id in [v.eos, v.eot, v.eom].into_iter().flatten() {
            if !eos_ids.contains(&id) {
                eos_ids.push(id);
            }
        }
        Ok(Tokenizer {
            inner,
            tokens: v.tokens.iter().cloned().map(Some).collect(),
            text: TokenText::ByteLevel(byte_level_chars().1),
            manual_specials: Some((v.add_bos, v.add_eos)),
            bos: v.bos,
            eos_ids,
            chat_template: v.chat_template.clone(),
        })
    }

    /// Builds the tokenizer described by a GGUF file's metadata.
    pub fn from_gguf(f: &GgufFile) -> Result<Tokenizer> {
        Self::from_gguf_vocab(&GgufVocab::from_gguf(f)?)
    }

    /// Loads a Hugging Face `tokenizer.json`. BOS/EOS/chat template come from
    /// `tokenizer_config.json` and `generation_config.json` in the same folder when they exist;
    /// BOS/EOS insertion is left to the file's own post-processor.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer> {
        if !path.is_file() {
            return Err(Error::io(
                path,
                std::io::Error::new(std::io::ErrorKind::NotFound, "no such tokenizer file"),
            ));
        }
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| tok_err(&path.display().to_string(), e))?;
        let vocab = inner.get_vocab(true);
        let size = vocab.values().map(|&id| id as usize + 1).max().unwrap_or(0);
        if size > crate::formats::MAX_DIM {
            return Err(Error::Tokenizer(format!(
                "{}: token id {} exceeds wick's vocabulary limit of {}",
                path.display(),
                size - 1,
                crate::formats::MAX_DIM
            )));
        }
        let mut tokens = vec![None; size];
        for (s, id) in vocab {
            tokens[id as usize] = Some(s);
        }
        let text = classify_decoder(&inner);

        let dir = path.parent().unwrap_or(Path::new("."));
        let config = read_json_opt(&dir.join("tokenizer_config.json"))?;
        let generation = read_json_opt(&dir.join("generation_config.json"))?;
        let token_id = |field: &str| -> Option<u32> {
            let v = config.as_ref()?.get(field)?;
            let s = v.as_str().or_else(|| v.get("content")?.as_str())?;
            inner.token_to_id(s)
        };
        let bos = token_id("bos_token");
        let mut eos_ids: Vec<u32> = token_id("eos_token").into_iter().collect();
        if let Some(ids) = generation.as_ref().and_then(|g| g.get("eos_token_id")) {
            let extra: Vec<u32> = match ids {
                serde_json::Value::Array(a) => a.iter().filter_map(json_u32).collect(),
                other => json_u32(other).into_iter().collect(),
            };
            for id in extra {
                if !eos_ids.contains(&id) {
                    eos_ids.push(id);
                }
            }
        }
        let chat_template = config
            .as_ref()
            .and_then(|c| c.get("chat_template"))
            .and_then(|t| match t {
                serde_json::Value::String(s) => Some(s.clone()),
                // A list of named templates: take "default", else the first.
                serde_json::Value::Array(list) => list
                    .iter()
                    .find(|e| e.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .or_else(|| list.first())
                    .and_then(|e| e.get("template")?.as_str().map(str::to_string)),
                _ => None,
            });
        Ok(Tokenizer {
            inner,
            tokens,
            text,
            manual_specials: None,
            bos,
            eos_ids,
            chat_template,
        })
    }

    /// Token ids for `text`. Special tokens written in the text are recognised; BOS/EOS are
    /// added as the model's metadata asks.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let with_post = self.manual_specials.is_none();
        let enc = self
            .inner
            .encode_fast(text, with_post)
            .map_err(|e| tok_err("encode", e))?;
        let ids = enc.get_ids();
        let Some((add_bos, add_eos)) = self.manual_specials else {
            return Ok(ids.to_vec());
        };
        let mut out = Vec::with_capacity(ids.len() + 2);
        if add_bos {
            out.extend(self.bos);
        }
        out.extend_from_slice(ids);
        if add_eos {
            out.extend(self.eos_ids.first().copied());
        }
        Ok(out)
    }

    /// The text of `ids`, special tokens rendered as their text. Bytes that do not form valid
    /// UTF-8 become U+FFFD. An id outside the vocabulary is an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        for &id in ids {
            self.check_id(id)?;
        }
        match &self.text {
            TokenText::ByteLevel(_) if self.manual_specials.is_some() => {
                // Our own table, not the inner decoder: it also covers ids whose string is
                // duplicated in the vocabulary.
                let mut bytes = Vec::new();
                for &id in ids {
                    bytes.extend(self.token_bytes(id).unwrap_or_default());
                }
                Ok(String::from_utf8_lossy(&bytes).into_owned())
            }
            _ => self
                .inner
                .decode(ids, false)
                .map_err(|e| tok_err("decode", e)),
        }
    }

    /// The raw bytes one token stands for (possibly an incomplete UTF-8 sequence), for
    /// streaming detokenisation. `None` for an id outside the vocabulary.
    ///
    /// For SentencePiece-style vocabularies the leading space of a word token is kept (the
    /// whole-sequence decoder strips it from the first token only).
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        let token = self.tokens.get(id as usize)?.as_deref()?;
        Some(match &self.text {
            // As Hugging Face's ByteLevel decoder: a token with any char outside the byte
            // alphabet (an added token such as "<|im start|>") is taken as plain UTF-8.
            TokenText::ByteLevel(to_byte) => token
                .chars()
                .map(|c| to_byte.get(&c).copied())
                .collect::<Option<Vec<u8>>>()
                .unwrap_or_else(|| token.as_bytes().to_vec()),
            TokenText::SentencePiece { byte_fallback } => {
                match parse_byte_token(token).filter(|_| *byte_fallback) {
                    Some(b) => vec![b],
                    None => token.replace('\u{2581}', " ").into_bytes(),
                }
            }
            TokenText::Other => self.inner.decode(&[id], false).ok()?.into_bytes(),
        })
    }

    /// One past the largest token id.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// Whether [`Self::encode`] starts the ids with BOS: the GGUF's `add_bos_token`, or what
    /// the `tokenizer.json` post-processor does.
    pub fn adds_bos(&self) -> bool {
        let Some(bos) = self.bos else {
            return false;
        };
        match self.manual_specials {
            Some((add_bos, _)) => add_bos,
            None => self
                .inner
                .encode_fast("a", true)
                .is_ok_and(|e| e.get_ids().first() == Some(&bos)),
        }
    }

    /// Ids that end generation (EOS, and end-of-turn where the model names one).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    pub fn token_to_id(&self, s: &str) -> Option<u32> {
        self.inner.token_to_id(s)
    }

    /// The token's string as stored in the vocabulary (byte-level alphabet, not decoded).
    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize)?.as_deref()
    }

    fn check_id(&self, id: u32) -> Result<()> {
        match self.tokens.get(id as usize) {
            Some(Some(_)) => Ok(()),
            _ => Err(Error::Tokenizer(format!(
                "token id {id} is outside the vocabulary (size {})",
                self.tokens.len()
            ))),
        }
    }
}

fn json_u32(v: &serde_json::Value) -> Option<u32> {
    v.as_u64().and_then(|x| u32::try_from(x).ok())
}

fn read_json_opt(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| tok_err(&path.display().to_string(), e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// `"<0xAB>"` → 0xAB.
fn parse_byte_token(token: &str) -> Option<u8> {
    let hex = token.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// Reads which decoder steps the tokenizer.json uses, through its serialised form (the
/// wrapper enums do not expose nested sequences).
fn classify_decoder(inner: &tokenizers::Tokenizer) -> TokenText {
    let Some(decoder) = inner.get_decoder() else {
        return TokenText::Other;
    };
    let Ok(json) = serde_json::to_value(decoder) else {
        return TokenText::Other;
    };
    let mut types = Vec::new();
    collect_types(&json, &mut types);
    let has = |t: &str| types.iter().any(|x| x == t);
    if has("ByteLevel") {
        TokenText::ByteLevel(byte_level_chars().1)
    } else if has("Metaspace") || has("ByteFallback") || json.to_string().contains('\u{2581}') {
        TokenText::SentencePiece {
            byte_fallback: has("ByteFallback"),
        }
    } else {
        TokenText::Other
    }
}

fn collect_types(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            if let Some(t) = map.get("type").and_then(|t| t.as_str()) {
                out.push(t.to_string());
            }
            map.values().for_each(|x| collect_types(x, out));
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| collect_types(x, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_table_is_a_bijection() {
        let (to_char, to_byte) = byte_level_chars();
        assert_eq!(to_byte.len(), 256);
        for (b, c) in to_char.iter().enumerate() {
            assert_eq!(to_byte[c] as usize, b);
        }
        assert_eq!(to_char[b' ' as usize], 'Ġ');
        assert_eq!(to_char[b'\n' as usize], 'Ċ');
        assert_eq!(to_char[b'A' as usize], 'A');
        assert_eq!(to_char[0], '\u{100}');
    }

    #[test]
    fn byte_token_parsing() {
        assert_eq!(parse_byte_token("<0x0A>"), Some(0x0A));
        assert_eq!(parse_byte_token("<0xff>"), Some(0xFF));
        assert_eq!(parse_byte_token("<0x1>"), None);
        assert_eq!(parse_byte_token("<0xZZ>"), None);
        assert_eq!(parse_byte_token("0x0A"), None);
    }
}
