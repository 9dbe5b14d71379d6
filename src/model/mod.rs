//! Models: configuration, validated weights on the GPU, tokenizer and chat template.

pub mod config;
#[cfg(feature = "download")]
pub mod download;
pub mod export;
pub mod quant_mix;
pub mod source;
pub mod synthetic;
pub mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use config::{Arch, ModelConfig, RopeStyle};
pub use quant_mix::{QuantMix, QuantTarget};
use weights::ModelWeights;

use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::formats::chat_template::{ChatMessage, ChatTemplate};
use crate::formats::gguf::GgufFile;
use crate::formats::tokenizer::Tokenizer;
use crate::kernels::kv_cache::KvType;

/// Options for [`Model::load`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// KV-cache capacity of sessions (default: the model's context length, capped at 8192
    /// to keep memory modest; pass the full context explicitly to get it).
    pub ctx: Option<usize>,
    /// Quantise float matrices (f32/f16/bf16 checkpoints) to this type or mix while loading,
    /// as `wick quantize` would write them (`--quantize q8_0|q4_0|q4_k|q4_k_m|...`).
    pub quantize: Option<QuantTarget>,
    /// How sessions' KV caches store keys and values (`--kv-type f16|q8_0`; default f16).
    pub kv_type: KvType,
    /// Called as weights are read, converted and uploaded, with (bytes done, bytes in all)
    /// of the stored tensor data; the CLI draws its progress bar from it.
    pub progress: Option<LoadProgress>,
}

/// A load-progress callback: `(bytes done, bytes in all)` of the stored tensor data.
#[derive(Clone)]
pub struct LoadProgress(pub Arc<dyn Fn(u64, u64) + Send + Sync>);

impl LoadProgress {
    pub fn new(f: impl Fn(u64, u64) + Send + Sync + 'static) -> Self {
        LoadProgress(Arc::new(f))
    }
}

impl std::fmt::Debug for LoadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LoadProgress(..)")
    }
}

/// Default context when the user asks for none: the model's, capped (memory).
pub const DEFAULT_CTX_CAP: usize = 8192;

pub(crate) struct ModelInner {
    pub engine: Engine,
    pub path: PathBuf,
    pub cfg: ModelConfig,
    pub weights: ModelWeights,
    pub tokenizer: Option<Tokenizer>,
    pub inv_freq: wgpu::Buffer,
    pub eos: Vec<u32>,
    pub bos: Option<u32>,
    pub chat_template: Option<String>,
    pub ctx: usize,
    pub kv_type: KvType,
}

/// What a checkpoint brings besides its tensors.
struct TextParts {
    tokenizer: Option<Tokenizer>,
    /// End-of-sequence ids.
    eos: Vec<u32>,
    chat_template: Option<String>,
}

/// A loaded model. Cheap to clone; sessions share its weights.
#[derive(Clone)]
pub struct Model {
    pub(crate) inner: Arc<ModelInner>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("path", &self.inner.path)
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl Model {
    /// Loads a GGUF model file onto the engine's GPU.
    pub fn load(engine: &Engine, path: impl AsRef<Path>, opts: LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        let gpu = engine.gpu();
        let (cfg, weights, text) = if path.is_dir() {
            let ck = crate::formats::hf::HfCheckpoint::open(path)?;
            let cfg = ModelConfig::from_hf(&ck.config)?;
            let tj = path.join("tokenizer.json");
            let tokenizer = if tj.exists() {
                Some(Tokenizer::from_tokenizer_json(&tj)?)
            } else {
                None
            };
            // Checked before the weights are uploaded: ids the embedding cannot look up.
            if let Some(t) = &tokenizer {
                if t.vocab_size() > cfg.vocab {
                    return Err(Error::Model(format!(
                        "{}: tokenizer.json has {} tokens but the embedding only {} rows (vocab_size); ids past it could not be embedded",
                        path.display(),
                        t.vocab_size(),
                        cfg.vocab
                    )));
                }
            }
            let weights =
                ModelWeights::load(gpu, &ck, &cfg, opts.quantize, opts.progress.as_ref())?;
            let mut eos = ck.eos_ids();
            if eos.is_empty() {
                eos = tokenizer
                    .as_ref()
                    .map(|t| t.eos_ids().to_vec())
                    .unwrap_or_default();
            }
            let chat_template = ck.chat_template().or_else(|| {
                tokenizer
                    .as_ref()
                    .and_then(|t| t.chat_template().map(str::to_string))
            });
            let text = TextParts {
                tokenizer,
                eos,
                chat_template,
            };
            (cfg, weights, text)
        } else {
            let gguf = GgufFile::open(path)?;
            let cfg = ModelConfig::from_gguf(&gguf)?;
            let weights =
                ModelWeights::load(gpu, &gguf, &cfg, opts.quantize, opts.progress.as_ref())?;
            let tokenizer = match Tokenizer::from_gguf(&gguf) {
                Ok(t) => Some(t),
                Err(e) => {
                    log::warn!(
                        "{}: no usable tokenizer ({e}); id-level commands still work",
                        path.display()
                    );
                    None
                }
            };
            let eos = tokenizer
                .as_ref()
                .map(|t| t.eos_ids().to_vec())
                .unwrap_or_default();
            let chat_template = tokenizer
                .as_ref()
                .and_then(|t| t.chat_template().map(str::to_string));
            let text = TextParts {
                tokenizer,
                eos,
                chat_template,
            };
            (cfg, weights, text)
        };
        Self::assemble(engine, path, (cfg, weights), text, &opts)
    }

    /// A model from tensors already in memory (synthetic benchmark models): `cfg` must
    /// describe them; `name` stands in for the path in messages.
    pub fn from_store<S: weights::TensorStore + ?Sized>(
        engine: &Engine,
        name: &str,
        cfg: ModelConfig,
        store: &S,
        opts: LoadOptions,
    ) -> Result<Model> {
        let weights = ModelWeights::load(
            engine.gpu(),
            store,
            &cfg,
            opts.quantize,
            opts.progress.as_ref(),
        )?;
        let text = TextParts {
            tokenizer: None,
            eos: Vec::new(),
            chat_template: None,
        };
        Self::assemble(engine, Path::new(name), (cfg, weights), text, &opts)
    }

    fn assemble(
        engine: &Engine,
        path: &Path,
        (cfg, weights): (ModelConfig, ModelWeights),
        text: TextParts,
        opts: &LoadOptions,
    ) -> Result<Model> {
        let TextParts {
            tokenizer,
            eos,
            chat_template,
        } = text;
        let gpu = engine.gpu();
        let bos = tokenizer.as_ref().and_then(|t| t.bos());
        let ctx = match opts.ctx {
            Some(0) => return Err(Error::InvalidArgument("--ctx must be at least 1".into())),
            Some(c) if c > cfg.context_len => {
                return Err(Error::InvalidArgument(format!(
                    "--ctx {c} exceeds the model's context length {}",
                    cfg.context_len
                )))
            }
            Some(c) => c,
            None => cfg.context_len.min(DEFAULT_CTX_CAP),
        };
        if let Some(p) = opts.kv_type.head_dim_problem(cfg.head_dim) {
            return Err(Error::InvalidArgument(format!(
                "--kv-type {}: {p}",
                opts.kv_type
            )));
        }
        if let Some(w) = cfg.sliding_window {
            if ctx > w {
                return Err(Error::InvalidArgument(format!(
                    "the model attends within a sliding window of {w} tokens, which wick does not mask yet; use --ctx {w} or less"
                )));
            }
        }
        let inv_freq = gpu.upload("rope inv_freq", &cfg.rope_inv_freq)?;
        Ok(Model {
            inner: Arc::new(ModelInner {
                engine: engine.clone(),
                path: path.to_path_buf(),
                cfg,
                weights,
                tokenizer,
                inv_freq,
                eos,
                bos,
                chat_template,
                ctx,
                kv_type: opts.kv_type,
            }),
        })
    }

    /// The file or directory the model was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    pub fn config(&self) -> &ModelConfig {
        &self.inner.cfg
    }

    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.inner.tokenizer.as_ref().ok_or_else(|| {
            Error::Tokenizer(format!(
                "{} has no tokenizer: use token ids (--ids) or give a model with one",
                self.inner.path.display()
            ))
        })
    }

    /// End-of-sequence ids from the model's metadata.
    pub fn eos_ids(&self) -> &[u32] {
        &self.inner.eos
    }

    pub fn chat_template(&self) -> Option<&str> {
        self.inner.chat_template.as_deref()
    }

    /// Renders a conversation with the model's chat template (ChatML when it has none).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tok = self.tokenizer()?;
        let name = |id: Option<u32>| id.and_then(|i| tok.id_to_token(i)).unwrap_or_default();
        let t = ChatTemplate::new(
            self.chat_template(),
            name(self.inner.bos),
            name(self.inner.eos.first().copied()),
        );
        t.render(messages, add_generation_prompt)
    }

    /// Context capacity of new sessions.
    pub fn context(&self) -> usize {
        self.inner.ctx
    }

    /// How new sessions' KV caches store keys and values.
    pub fn kv_type(&self) -> KvType {
        self.inner.kv_type
    }

    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// The weights on the GPU (shapes, formats, how matrices were split across bindings).
    pub fn weights(&self) -> &ModelWeights {
        &self.inner.weights
    }

    /// GPU bytes held by the weights.
    pub fn weight_bytes(&self) -> u64 {
        self.inner.weights.gpu_bytes()
    }
}
