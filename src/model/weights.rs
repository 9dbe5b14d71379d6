//! Model weights on the GPU: every tensor validated against the configuration, repacked into
//! the kernels' planes and uploaded once. A matrix larger than one storage binding is split
//! by rows into chunks that the kernels address through row/output offsets.

use crate::error::{Error, Result};
use crate::gpu::Gpu;
use crate::kernels::GpuMatrix;
use crate::model::config::ModelConfig;
use crate::model::quant_mix::QuantTarget;
use crate::quant::{self, GgmlType, WeightFormat};

/// A weight matrix of `n` rows by `k` columns, possibly split by rows across bindings.
#[derive(Debug)]
pub struct SplitMatrix {
    pub n: usize,
    pub k: usize,
    pub format: WeightFormat,
    /// (first row, chunk) in row order; chunks cover 0..n exactly.
    pub chunks: Vec<(usize, GpuMatrix)>,
}

impl SplitMatrix {
    /// Rows per chunk when an `n` x `k` matrix of `format` is split to fit the device's
    /// storage-binding limit, and the GPU bytes the chunks will take (both planes). Checked
    /// before anything is packed or allocated.
    pub fn plan(
        caps: &crate::gpu::Capabilities,
        label: &str,
        format: WeightFormat,
        n: usize,
        k: usize,
    ) -> Result<(usize, u64)> {
        // The largest plane per row decides the split (qs; every format's scales are smaller).
        let plane_row_bytes = (format.qs_words_per_row(k) * 4).max(1) as u64;
        let limit = caps
            .max_storage_buffer_binding_size
            .min(caps.max_buffer_size);
        let mut rows_per_chunk = ((limit / plane_row_bytes) as usize).min(n).max(1);
        // Packed half-word scales must start a chunk on a word boundary: even block count.
        if format.is_quantized() && (k / 32) % 2 == 1 && rows_per_chunk < n {
            rows_per_chunk = (rows_per_chunk & !1).max(2);
        }
        if (rows_per_chunk as u64) * plane_row_bytes > limit {
            return Err(Error::Model(format!(
                "{label}: one row ({plane_row_bytes} bytes) does not fit the device's {limit}-byte binding limit"
            )));
        }
        let mut bytes = 0u64;
        let mut r = 0;
        while r < n {
            let rows = rows_per_chunk.min(n - r);
            let qs = rows as u64 * plane_row_bytes;
            let scales = (format.scale_words(rows, k) as u64 * 4).max(4);
            bytes += qs + scales;
            r += rows;
        }
        Ok((rows_per_chunk, bytes))
    }

    /// Repacks GGML bytes (row-major, `n` rows of `k`) and uploads them in as few chunks as
    /// the device's binding limit allows.
    pub fn upload(
        gpu: &Gpu,
        label: &str,
        format: WeightFormat,
        bytes: &[u8],
        n: usize,
        k: usize,
    ) -> Result<SplitMatrix> {
        let t = format.ggml();
        let row_bytes = t.bytes_for(k as u64).ok_or_else(|| {
            Error::Model(format!(
                "{label}: row of {k} is not whole {} blocks",
                t.name()
            ))
        })? as usize;
        let (rows_per_chunk, _) = Self::plan(&gpu.caps, label, format, n, k)?;
        if bytes.len() < n * row_bytes {
            return Err(Error::Model(format!(
                "{label}: {} bytes of data for {n} rows of {row_bytes}",
                bytes.len()
            )));
        }
        let mut chunks = Vec::new();
        let mut r = 0;
        while r < n {
            let rows = rows_per_chunk.min(n - r);
            let packed = quant::pack(
                format,
                &bytes[r * row_bytes..(r + rows) * row_bytes],
                rows,
                k,
            )?;
            let name = if rows == n {
                label.to_string()
            } else {
                format!("{label}[{r}..{}]", r + rows)
            };
            chunks.push((r, GpuMatrix::upload(gpu, &name, &packed)?));
            r += rows;
        }
        Ok(SplitMatrix {
            n,
            k,
            format,
            chunks,
        })
    }

    pub fn gpu_bytes(&self) -> u64 {
        self.chunks
            .iter()
            .map(|(_, m)| m.qs.size() + m.scales.size())
            .sum()
    }
}

/// One decoder block's weights.
#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: wgpu::Buffer,
    pub wq: SplitMatrix,
    pub wk: SplitMatrix,
    pub wv: SplitMatrix,
    pub bq: Option<wgpu::Buffer>,
    pub bk: Option<wgpu::Buffer>,
    pub bv: Option<wgpu::Buffer>,
    pub q_norm: Option<wgpu::Buffer>,
    pub k_norm: Option<wgpu::Buffer>,
    pub wo: SplitMatrix,
    pub ffn_norm: wgpu::Buffer,
    pub w_gate: SplitMatrix,
    pub w_up: SplitMatrix,
    pub w_down: SplitMatrix,
}

/// All weights of a model on the GPU.
#[derive(Debug)]
pub struct ModelWeights {
    pub embed: SplitMatrix,
    pub layers: Vec<LayerWeights>,
    pub output_norm: wgpu::Buffer,
    /// None when tied: the LM head is `embed`.
    pub output: Option<SplitMatrix>,
    /// The device memory the weights hold (given back when the model is dropped).
    reservation: crate::gpu::MemoryReservation,
}

impl ModelWeights {
    pub fn lm_head(&self) -> &SplitMatrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// GPU bytes held by the weight matrices.
    pub fn gpu_bytes(&self) -> u64 {
        let mut b = self.embed.gpu_bytes() + self.output.as_ref().map_or(0, |o| o.gpu_bytes());
        for l in &self.layers {
            b += [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .iter()
                .map(|m| m.gpu_bytes())
                .sum::<u64>();
        }
        b
    }

    /// GPU bytes held by every weight buffer (matrices, norms, biases): what the model has
    /// reserved of the device's memory.
    pub fn total_bytes(&self) -> u64 {
        let mut b = self.gpu_bytes() + self.output_norm.size();
        for l in &self.layers {
            b += l.attn_norm.size() + l.ffn_norm.size();
            for v in [&l.bq, &l.bk, &l.bv, &l.q_norm, &l.k_norm]
                .into_iter()
                .flatten()
            {
                b += v.size();
            }
        }
        b
    }

    /// The bytes reserved for these weights in the device's memory accounting.
    pub fn reserved_bytes(&self) -> u64 {
        self.reservation.bytes()
    }
}

/// One tensor as a loader sees it, named and shaped the GGUF way (dims fastest first).
#[derive(Debug, Clone)]
pub struct TensorRef<'a> {
    pub name: String,
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    pub data: &'a [u8],
}

impl TensorRef<'_> {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A source of model tensors under GGUF names (GGUF files directly, Hugging Face
/// checkpoints through a name map).
pub trait TensorStore {
    fn tensor(&self, name: &str) -> Option<TensorRef<'_>>;
    /// Tokenizer vocabulary size, when the store knows it (checked against the embedding).
    fn tokenizer_vocab(&self) -> Option<usize>;
}

impl TensorStore for crate::formats::gguf::GgufFile {
    fn tensor(&self, name: &str) -> Option<TensorRef<'_>> {
        let t = crate::formats::gguf::GgufFile::tensor(self, name)?;
        Some(TensorRef {
            name: t.name.clone(),
            dims: t.dims.clone(),
            ggml_type: t.ggml_type,
            data: self.tensor_data(t),
        })
    }

    fn tokenizer_vocab(&self) -> Option<usize> {
        self.get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
    }
}

/// Every tensor a model of `cfg` has: GGUF name, dims (fastest first, so a matrix of n rows
/// of k values is `[k, n]`), and whether it is a matrix (quantisable) rather than a vector.
pub fn tensor_manifest(cfg: &ModelConfig) -> Vec<(String, Vec<usize>, bool)> {
    let (h, qd, kvd, ffn, vocab) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn, cfg.vocab);
    let mut m = vec![("token_embd.weight".to_string(), vec![h, vocab], true)];
    for i in 0..cfg.n_layers {
        let mut t = |s: &str, dims: Vec<usize>| {
            let matrix = dims.len() == 2;
            m.push((format!("blk.{i}.{s}"), dims, matrix));
        };
        t("attn_norm.weight", vec![h]);
        t("attn_q.weight", vec![h, qd]);
        t("attn_k.weight", vec![h, kvd]);
        t("attn_v.weight", vec![h, kvd]);
        if cfg.qkv_bias {
            t("attn_q.bias", vec![qd]);
            t("attn_k.bias", vec![kvd]);
            t("attn_v.bias", vec![kvd]);
        }
        if cfg.qk_norm {
            t("attn_q_norm.weight", vec![cfg.head_dim]);
            t("attn_k_norm.weight", vec![cfg.head_dim]);
        }
        t("attn_output.weight", vec![qd, h]);
        t("ffn_norm.weight", vec![h]);
        t("ffn_gate.weight", vec![h, ffn]);
        t("ffn_up.weight", vec![h, ffn]);
        t("ffn_down.weight", vec![ffn, h]);
    }
    m.push(("output_norm.weight".to_string(), vec![h], false));
    if !cfg.tied_output {
        m.push(("output.weight".to_string(), vec![h, vocab], true));
    }
    m
}

/// Expected tensors, checked all at once so one error lists every problem.
struct Checker<'a, S: TensorStore + ?Sized> {
    f: &'a S,
    problems: Vec<String>,
}

/// Problems listed in one error before the check stops (a corrupt block count must not make
/// the loader list millions of missing tensors).
const MAX_PROBLEMS: usize = 16;

impl<'a, S: TensorStore + ?Sized> Checker<'a, S> {
    fn full(&self) -> bool {
        self.problems.len() >= MAX_PROBLEMS
    }

    fn tensor(&mut self, name: &str, dims: &[usize], matrix: bool) -> Option<TensorRef<'a>> {
        let Some(t) = self.f.tensor(name) else {
            self.problems.push(format!("missing tensor {name}"));
            return None;
        };
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != want {
            self.problems.push(format!(
                "{name} has shape {:?}, expected {:?}",
                t.dims, want
            ));
            return None;
        }
        let ok = if matrix {
            t.ggml_type.weight_format().is_some()
        } else {
            matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16)
        };
        if !ok {
            self.problems.push(format!(
                "{name} has unsupported type {}",
                t.ggml_type.name()
            ));
            return None;
        }
        Some(t)
    }
}

fn upload_vector(gpu: &Gpu, t: &TensorRef) -> Result<wgpu::Buffer> {
    let v = quant::dequantize(t.ggml_type, t.data, t.n_elements() as usize)?;
    gpu.upload(&t.name, &v)
}

/// The type `--quantize` gives matrix `t` of a model of `cfg` (its target resolved for this
/// tensor), or None when it is kept as stored.
fn quantize_type(
    t: &TensorRef,
    cfg: &ModelConfig,
    quantize: Option<QuantTarget>,
) -> Option<GgmlType> {
    quantize.map(|q| q.matrix_type(cfg, &t.name, t.dims[0] as usize))
}

/// Uploads a matrix, quantising it first when `quantize` names a type and the stored data is
/// float (quantised tensors are kept as they are: re-quantising only loses precision).
fn upload_matrix(gpu: &Gpu, t: &TensorRef, quantize: Option<GgmlType>) -> Result<SplitMatrix> {
    let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
    let is_float = matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16);
    let converted = match quantize {
        Some(target) if is_float => {
            let (ty, bytes) = quant::convert(t.ggml_type, t.data, n * k, k, target)?;
            Some((ty, bytes))
        }
        _ => None,
    };
    let (ty, data) = match &converted {
        Some((ty, bytes)) => (*ty, bytes.as_slice()),
        None => (t.ggml_type, t.data),
    };
    let format = ty
        .weight_format()
        .ok_or_else(|| Error::Model(format!("{}: type {} has no GPU kernel", t.name, ty.name())))?;
    SplitMatrix::upload(gpu, &t.name, format, data, n, k)
}

/// The format a matrix will be uploaded in (after `--quantize`), as [`upload_matrix`] decides.
fn upload_format(t: &TensorRef, quantize: Option<GgmlType>) -> Result<WeightFormat> {
    let is_float = matches!(t.ggml_type, GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16);
    let ty = match quantize {
        Some(target) if is_float => quant::storage_type_for_rows(target, t.dims[0] as usize),
        _ => t.ggml_type,
    };
    ty.weight_format()
        .ok_or_else(|| Error::Model(format!("{}: type {} has no GPU kernel", t.name, ty.name())))
}

/// Checks that every tensor fits the device (per binding, per buffer, and all together in
/// what is left of wick's memory budget) before anything is allocated, and reserves the total.
fn reserve_weights(
    gpu: &Gpu,
    cfg: &ModelConfig,
    tensors: &[&TensorRef],
    quantize: Option<QuantTarget>,
) -> Result<crate::gpu::MemoryReservation> {
    let mut sizes: Vec<(&str, String, u64)> = Vec::with_capacity(tensors.len());
    for t in tensors {
        if t.dims.len() == 2 {
            let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
            let format = upload_format(t, quantize_type(t, cfg, quantize))?;
            let (_, bytes) = SplitMatrix::plan(&gpu.caps, &t.name, format, n, k)?;
            let desc = format!("{n} x {k} {}", format.name());
            sizes.push((&t.name, desc, bytes));
        } else {
            let bytes = (t.n_elements() * 4).max(4).next_multiple_of(4);
            if bytes > gpu.caps.max_buffer_size {
                return Err(Error::OutOfMemory(format!(
                    "{} ({bytes} bytes) does not fit: the device allows at most {} bytes per buffer",
                    t.name, gpu.caps.max_buffer_size
                )));
            }
            sizes.push((&t.name, format!("{} f32", t.n_elements()), bytes));
        }
    }
    let total = sizes.iter().map(|s| s.2).sum::<u64>();
    let usage = gpu.memory_usage();
    if let Some(budget) = usage.budget {
        let free = budget.saturating_sub(usage.reserved);
        // Name the tensor that cannot fit on its own (typically the embedding).
        if let Some((name, desc, bytes)) = sizes.iter().max_by_key(|s| s.2) {
            if *bytes > free {
                return Err(Error::OutOfMemory(format!(
                    "{name} ({desc}) needs {bytes} bytes on the GPU, which does not fit: {free} of wick's {budget}-byte budget on this device are free (the whole model needs {total})"
                )));
            }
        }
    }
    let what = format!(
        "the weights of this {:?} model ({} tensors)",
        cfg.arch,
        sizes.len()
    );
    gpu.reserve(crate::gpu::MemoryKind::Model, &what, total)
}

impl ModelWeights {
    /// Validates every expected tensor, then uploads them; float matrices are quantised to
    /// `quantize` (a type, or a mix resolved per tensor) on the way when it is given.
    pub fn load<S: TensorStore + ?Sized>(
        gpu: &Gpu,
        f: &S,
        cfg: &ModelConfig,
        quantize: Option<QuantTarget>,
        progress: Option<&super::LoadProgress>,
    ) -> Result<ModelWeights> {
        if let Some(q) = quantize {
            q.check()?;
        }
        let (h, qd, kvd, ffn, vocab) = (cfg.hidden, cfg.q_dim(), cfg.kv_dim(), cfg.ffn, cfg.vocab);
        let mut c = Checker {
            f,
            problems: Vec::new(),
        };
        let embed = c.tensor("token_embd.weight", &[h, vocab], true);
        let out_norm = c.tensor("output_norm.weight", &[h], false);
        let output = if cfg.tied_output {
            None
        } else {
            c.tensor("output.weight", &[h, vocab], true)
        };
        let mut layer_infos = Vec::new();
        for i in 0..cfg.n_layers {
            if c.full() {
                c.problems.push("...".into());
                break;
            }
            let p = |s: &str| format!("blk.{i}.{s}");
            let li = (
                c.tensor(&p("attn_norm.weight"), &[h], false),
                c.tensor(&p("attn_q.weight"), &[h, qd], true),
                c.tensor(&p("attn_k.weight"), &[h, kvd], true),
                c.tensor(&p("attn_v.weight"), &[h, kvd], true),
                c.tensor(&p("attn_output.weight"), &[qd, h], true),
                c.tensor(&p("ffn_norm.weight"), &[h], false),
                c.tensor(&p("ffn_gate.weight"), &[h, ffn], true),
                c.tensor(&p("ffn_up.weight"), &[h, ffn], true),
                c.tensor(&p("ffn_down.weight"), &[ffn, h], true),
            );
            let bias = if cfg.qkv_bias {
                Some((
                    c.tensor(&p("attn_q.bias"), &[qd], false),
                    c.tensor(&p("attn_k.bias"), &[kvd], false),
                    c.tensor(&p("attn_v.bias"), &[kvd], false),
                ))
            } else {
                None
            };
            let qkn = if cfg.qk_norm {
                Some((
                    c.tensor(&p("attn_q_norm.weight"), &[cfg.head_dim], false),
                    c.tensor(&p("attn_k_norm.weight"), &[cfg.head_dim], false),
                ))
            } else {
                None
            };
            layer_infos.push((li, bias, qkn));
        }
        if let Some(t) = f.tokenizer_vocab() {
            if t > vocab {
                c.problems.push(format!(
                    "the tokenizer has {t} tokens but the embedding only {vocab} rows"
                ));
            }
        }
        if !c.problems.is_empty() {
            return Err(Error::Model(format!(
                "the model file does not match its {:?} configuration: {}",
                cfg.arch,
                c.problems.join("; ")
            )));
        }
        // Everything is present and well-shaped: check it fits the device, then upload.
        let mut all: Vec<&TensorRef> = [&embed, &out_norm, &output].into_iter().flatten().collect();
        for ((an, q, k, v, o, fnorm, g, u, d), bias, qkn) in &layer_infos {
            all.extend([an, q, k, v, o, fnorm, g, u, d].into_iter().flatten());
            if let Some((a, b, c)) = bias {
                all.extend([a, b, c].into_iter().flatten());
            }
            if let Some((a, b)) = qkn {
                all.extend([a, b].into_iter().flatten());
            }
        }
        let reservation = reserve_weights(gpu, cfg, &all, quantize)?;
        // Progress counts stored bytes: reading the mapped file, converting and uploading
        // all happen inside each tensor's upload.
        let total_bytes: u64 = all.iter().map(|t| t.data.len() as u64).sum();
        drop(all);
        let done = std::cell::Cell::new(0u64);
        let tick = |t: &TensorRef| {
            done.set(done.get() + t.data.len() as u64);
            if let Some(p) = progress {
                (p.0)(done.get(), total_bytes);
            }
        };
        let vec = |t: Option<TensorRef>| {
            let t = t.unwrap();
            let b = upload_vector(gpu, &t);
            tick(&t);
            b
        };
        let mat = |t: Option<TensorRef>| {
            let t = t.unwrap();
            let m = upload_matrix(gpu, &t, quantize_type(&t, cfg, quantize));
            tick(&t);
            m
        };
        let embed = mat(embed)?;
        let output_norm = vec(out_norm)?;
        let output = output.map(|t| mat(Some(t))).transpose()?;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for ((an, q, k, v, o, fnorm, g, u, d), bias, qkn) in layer_infos {
            let (bq, bk, bv) = match bias {
                Some((a, b, c)) => (Some(vec(a)?), Some(vec(b)?), Some(vec(c)?)),
                None => (None, None, None),
            };
            let (q_norm, k_norm) = match qkn {
                Some((a, b)) => (Some(vec(a)?), Some(vec(b)?)),
                None => (None, None),
            };
            layers.push(LayerWeights {
                attn_norm: vec(an)?,
                wq: mat(q)?,
                wk: mat(k)?,
                wv: mat(v)?,
                bq,
                bk,
                bv,
                q_norm,
                k_norm,
                wo: mat(o)?,
                ffn_norm: vec(fnorm)?,
                w_gate: mat(g)?,
                w_up: mat(u)?,
                w_down: mat(d)?,
            });
        }
        let mut weights = ModelWeights {
            embed,
            layers,
            output_norm,
            output,
            reservation,
        };
        // The plan matches the buffers made; correct any difference so the count is exact.
        let total = weights.total_bytes();
        weights.reservation.resize("the model's weights", total)?;
        Ok(weights)
    }
}
