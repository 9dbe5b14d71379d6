//! GGUF writer: version 3, little-endian, the layout llama.cpp and gguf-py write (metadata,
//! tensor infos, zero padding to the alignment, then each tensor's data padded to it).
//!
//! [`GgufWriter::to_bytes`] serialises exactly what it was given, without checks, so tests
//! can build malformed files with it; [`GgufWriter::write`] first runs
//! [`GgufWriter::validate`], and replaces the target file atomically.
//!
//! Tensors may be *deferred* ([`GgufWriter::add_deferred_tensor`]): only their name, shape and
//! type are given up front and [`GgufWriter::write_streaming`] asks for each one's bytes when
//! it reaches it, so converting a model holds one tensor in memory at a time.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::Path;

use super::gguf::{MetaValue, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_DIMS};
use crate::error::{Error, Result};
use crate::quant::GgmlType;

/// One tensor to write.
#[derive(Debug, Clone)]
struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    /// None: deferred, produced while writing.
    data: Option<Vec<u8>>,
}

impl PendingTensor {
    /// Bytes the type and dimensions call for (None: unknown type, partial block, overflow).
    fn expected_size(&self) -> Option<u64> {
        match self.ggml_type.block_layout() {
            Some((block, _)) if self.dims.first()?.is_multiple_of(block as u64) => self
                .dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .and_then(|n| self.ggml_type.bytes_for(n)),
            _ => None,
        }
    }

    fn size(&self) -> u64 {
        match &self.data {
            Some(d) => d.len() as u64,
            None => self.expected_size().unwrap_or(0),
        }
    }
}

/// Builds a GGUF file from metadata and tensors, in the order they are added.
#[derive(Debug, Clone)]
pub struct GgufWriter {
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<PendingTensor>,
}

impl Default for GgufWriter {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl GgufWriter {
    pub fn new() -> GgufWriter {
        GgufWriter {
            version: 3,
            metadata: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// The version field to write (default 3; 2 has the same little-endian layout).
    pub fn version(mut self, version: u32) -> Self {
        self.version = version;
        self
    }

    /// Appends a metadata entry (a repeated key is written twice: see [`Self::set_meta`]).
    pub fn meta(mut self, key: impl Into<String>, value: MetaValue) -> Self {
        self.add_meta(key, value);
        self
    }

    /// [`Self::meta`] through a mutable reference, for loops.
    pub fn add_meta(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        self.metadata.push((key.into(), value));
        self
    }

    /// Replaces the value of `key` in place if present, else appends it.
    pub fn set_meta(&mut self, key: impl Into<String>, value: MetaValue) -> &mut Self {
        let key = key.into();
        match self.metadata.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => *v = value,
            None => self.metadata.push((key, value)),
        }
        self
    }

    /// Sets `general.alignment` (written as u32 when it fits, as llama.cpp does).
    pub fn alignment(mut self, alignment: u64) -> Self {
        let v = u32::try_from(alignment)
            .map(MetaValue::U32)
            .unwrap_or(MetaValue::U64(alignment));
        self.set_meta(ALIGNMENT_KEY, v);
        self
    }

    /// Appends a tensor: `dims` in GGUF order (fastest first), `data` its raw GGML bytes.
    pub fn tensor(
        mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> Self {
        self.add_tensor(name, dims, ggml_type, data);
        self
    }

    /// [`Self::tensor`] through a mutable reference, for loops.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
        data: impl Into<Vec<u8>>,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            data: Some(data.into()),
        });
        self
    }

    /// Appends a tensor whose bytes [`Self::write_streaming`] will ask for by name.
    pub fn add_deferred_tensor(
        &mut self,
        name: impl Into<String>,
        dims: &[u64],
        ggml_type: GgmlType,
    ) -> &mut Self {
        self.tensors.push(PendingTensor {
            name: name.into(),
            dims: dims.to_vec(),
            ggml_type,
            data: None,
        });
        self
    }

    /// The alignment the layout uses: `general.alignment` if set (0 is treated as 1 so an
    /// invalid value can still be written for tests), else 32.
    fn layout_alignment(&self) -> u64 {
        self.metadata
            .iter()
            .rev()
            .find(|(k, _)| k == ALIGNMENT_KEY)
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
            .max(1)
    }

    /// Checks that the file would be read back by wick and llama.cpp: unique keys and tensor
    /// names, homogeneous arrays, a power-of-two alignment, 1..=4 non-zero dimensions, and data
    /// of exactly the size the type and dimensions call for.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::InvalidArgument(format!("GGUF writer: {m}")));
        if !matches!(self.version, 2 | 3) {
            return bad(format!("version {} (must be 2 or 3)", self.version));
        }
        let mut keys = HashSet::new();
        for (k, v) in &self.metadata {
            if !keys.insert(k.as_str()) {
                return bad(format!("duplicate metadata key {k:?}"));
            }
            if !homogeneous(v) {
                return bad(format!("metadata {k:?}: an array mixes element types"));
            }
        }
        if let Some((_, v)) = self.metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
            if !v.as_u64().is_some_and(u64::is_power_of_two) {
                return bad(format!("{ALIGNMENT_KEY} {v:?} is not a power of two"));
            }
        }
        let mut names = HashSet::new();
        for t in &self.tensors {
            if !names.insert(t.name.as_str()) {
                return bad(format!("duplicate tensor name {:?}", t.name));
            }
            if t.dims.is_empty() || t.dims.len() > MAX_DIMS || t.dims.contains(&0) {
                return bad(format!("tensor {:?}: dimensions {:?}", t.name, t.dims));
            }
            // Unknown types and rows of partial blocks have no valid size.
            let need = t.expected_size();
            if need.is_none() || (t.data.is_some() && need != Some(t.size())) {
                return bad(format!(
                    "tensor {:?}: {} bytes of data for {} {:?} (needs {need:?})",
                    t.name,
                    t.size(),
                    t.ggml_type.name(),
                    t.dims
                ));
            }
        }
        Ok(())
    }

    /// The file's bytes, exactly as given (no validation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_to(&mut out)
            .expect("writing to a Vec<u8> cannot fail");
        out
    }

    /// Validates, then writes to a temporary file beside `path`, syncs it and renames it over
    /// `path`, so a failure never leaves a partial file or destroys an existing one.
    pub fn write(&self, path: &Path) -> Result<()> {
        self.write_streaming(path, |name| {
            Err(Error::InvalidArgument(format!(
                "GGUF writer: deferred tensor {name:?} written without a producer"
            )))
        })
    }

    /// [`Self::write`], asking `produce` for each deferred tensor's bytes (by name) as the
    /// file reaches it; a wrong size or an error from `produce` abandons the file.
    pub fn write_streaming(
        &self,
        path: &Path,
        mut produce: impl FnMut(&str) -> Result<Vec<u8>>,
    ) -> Result<()> {
        self.validate()?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let file_name = path.file_name().ok_or_else(|| {
            Error::InvalidArgument(format!("{}: not a file path", path.display()))
        })?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(file_name);
        tmp_name.push(format!(".{}.tmp", std::process::id()));
        let tmp = dir.join(tmp_name);

        let result = (|| -> Result<()> {
            let io_err = |e| Error::io(&tmp, e);
            let file = File::create_new(&tmp).map_err(io_err)?;
            let mut w = BufWriter::new(file);
            self.write_with(&mut w, &mut produce)?;
            let file = w.into_inner().map_err(|e| io_err(e.into_error()))?;
            file.sync_all().map_err(io_err)
        })();
        let result = result.and_then(|()| fs::rename(&tmp, path).map_err(|e| Error::io(path, e)));
        if result.is_err() {
            // Best effort: the temporary file is ours and useless now.
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Serialises the file into `w` (deferred tensors are an error here: use
    /// [`Self::write_streaming`]).
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        self.write_with(w, &mut |name| {
            Err(Error::InvalidArgument(format!(
                "deferred tensor {name:?} needs write_streaming"
            )))
        })
        .map_err(|e| match e {
            Error::Io { source, .. } => source,
            other => io::Error::other(other.to_string()),
        })
    }

    fn write_with(
        &self,
        w: &mut impl Write,
        produce: &mut dyn FnMut(&str) -> Result<Vec<u8>>,
    ) -> Result<()> {
        let io = |e: io::Error| Error::Io {
            path: "<gguf output>".into(),
            source: e,
        };
        let align = self.layout_alignment();
        let mut head = Vec::new();
        head.extend_from_slice(&GGUF_MAGIC);
        head.extend_from_slice(&self.version.to_le_bytes());
        head.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_string(&mut head, k);
            head.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut head, v);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.dims.len() as u32).to_le_bytes());
            for d in &t.dims {
                head.extend_from_slice(&d.to_le_bytes());
            }
            head.extend_from_slice(&t.ggml_type.id().to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset += padded(t.size(), align);
        }
        w.write_all(&head).map_err(io)?;
        put_zeros(w, padded(head.len() as u64, align) - head.len() as u64).map_err(io)?;
        for t in &self.tensors {
            let produced;
            let data = match &t.data {
                Some(d) => d.as_slice(),
                None => {
                    produced = produce(&t.name)?;
                    if produced.len() as u64 != t.size() {
                        return Err(Error::InvalidArgument(format!(
                            "GGUF writer: tensor {:?} produced {} bytes, its header says {}",
                            t.name,
                            produced.len(),
                            t.size()
                        )));
                    }
                    produced.as_slice()
                }
            };
            w.write_all(data).map_err(io)?;
            put_zeros(w, padded(data.len() as u64, align) - data.len() as u64).map_err(io)?;
        }
        w.flush().map_err(io)
    }
}

fn padded(n: u64, align: u64) -> u64 {
    n.div_ceil(align) * align
}

/// Writes `n` zero bytes without allocating `n` bytes (the alignment is caller-chosen).
fn put_zeros(w: &mut impl Write, mut n: u64) -> io::Result<()> {
    const ZEROS: [u8; 4096] = [0; 4096];
    while n > 0 {
        let k = n.min(ZEROS.len() as u64);
        w.write_all(&ZEROS[..k as usize])?;
        n -= k;
    }
    Ok(())
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Every array (at any depth) has elements of one type.
fn homogeneous(v: &MetaValue) -> bool {
    match v {
        MetaValue::Array(a) => {
            a.iter().all(homogeneous)
                && a.first()
                    .is_none_or(|f| a.iter().all(|e| e.type_id() == f.type_id()))
        }
        _ => true,
    }
}

/// A value without its type id. An array's element type is its first element's (u8 when
/// empty); a mixed array is written as given, which no reader will accept.
fn put_value(out: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => out.push(*x),
        MetaValue::I8(x) => out.push(*x as u8),
        MetaValue::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => out.push(*x as u8),
        MetaValue::String(s) => put_string(out, s),
        MetaValue::Array(a) => {
            let elem_type = a.first().map_or(0, MetaValue::type_id);
            out.extend_from_slice(&elem_type.to_le_bytes());
            out.extend_from_slice(&(a.len() as u64).to_le_bytes());
            for e in a {
                put_value(out, e);
            }
        }
    }
}
