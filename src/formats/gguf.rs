//! GGUF reader (versions 2 and 3, little-endian) over a memory map or an owned buffer.
//!
//! Layout: magic `GGUF`, u32 version, u64 tensor count, u64 metadata count, the metadata
//! key/value pairs, the tensor infos, zero padding up to `general.alignment` (default 32),
//! then the data section; every tensor offset is relative to the data section and aligned.
//!
//! Everything is validated in [`GgufFile::open`]: a hostile file yields a named
//! [`GgufError`] with the offset, key or tensor concerned — never a panic, an out-of-bounds
//! read, or an allocation larger than the file warrants (counts are capped by the bytes that
//! remain before anything is allocated). Once open, [`GgufFile::tensor_data`] needs no checks.

use std::fmt;
use std::fs::File;
use std::path::Path;

use crate::quant::GgmlType;

/// `GGUF` as the first four bytes of the file.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of the data section and of every tensor when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// The metadata key that overrides [`DEFAULT_ALIGNMENT`].
pub const ALIGNMENT_KEY: &str = "general.alignment";
/// Dimensions a tensor may have (ggml's GGML_MAX_DIMS).
pub const MAX_DIMS: usize = crate::error::GGUF_MAX_DIMS;
/// Deepest nesting of arrays inside arrays accepted; real files use at most one level, and
/// the limit keeps a crafted file from exhausting the stack.
pub const MAX_ARRAY_DEPTH: usize = 8;

// Smallest encodings, used to cap hostile counts by the bytes that remain.
/// key length (8) + value type (4) + a one-byte value.
const MIN_KV_BYTES: u64 = 13;
/// name length (8) + n_dims (4) + one dim (8) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 32;

pub use crate::error::GgufError;

/// A metadata value. Arrays may nest (each inner array has its own element type).
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<MetaValue>),
}

/// GGUF value type ids (gguf_type in gguf.h).
pub mod value_type {
    pub const U8: u32 = 0;
    pub const I8: u32 = 1;
    pub const U16: u32 = 2;
    pub const I16: u32 = 3;
    pub const U32: u32 = 4;
    pub const I32: u32 = 5;
    pub const F32: u32 = 6;
    pub const BOOL: u32 = 7;
    pub const STRING: u32 = 8;
    pub const ARRAY: u32 = 9;
    pub const U64: u32 = 10;
    pub const I64: u32 = 11;
    pub const F64: u32 = 12;
}

impl MetaValue {
    /// Any unsigned integer, or a signed one that is non-negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetaValue::U8(v) => Some(v as u64),
            MetaValue::U16(v) => Some(v as u64),
            MetaValue::U32(v) => Some(v as u64),
            MetaValue::U64(v) => Some(v),
            MetaValue::I8(v) => u64::try_from(v).ok(),
            MetaValue::I16(v) => u64::try_from(v).ok(),
            MetaValue::I32(v) => u64::try_from(v).ok(),
            MetaValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetaValue::I8(v) => Some(v as i64),
            MetaValue::I16(v) => Some(v as i64),
            MetaValue::I32(v) => Some(v as i64),
            MetaValue::I64(v) => Some(v),
            MetaValue::U8(v) => Some(v as i64),
            MetaValue::U16(v) => Some(v as i64),
            MetaValue::U32(v) => Some(v as i64),
            MetaValue::U64(v) => i64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any float, or any integer (converted, possibly rounded for huge 64-bit values).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v as f64),
            MetaValue::F64(v) => Some(v),
            MetaValue::U64(v) => Some(v as f64),
            MetaValue::I64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The GGUF value type id of this value.
    pub fn type_id(&self) -> u32 {
        use value_type as t;
        match self {
            MetaValue::U8(_) => t::U8,
            MetaValue::I8(_) => t::I8,
            MetaValue::U16(_) => t::U16,
            MetaValue::I16(_) => t::I16,
            MetaValue::U32(_) => t::U32,
            MetaValue::I32(_) => t::I32,
            MetaValue::U64(_) => t::U64,
            MetaValue::I64(_) => t::I64,
            MetaValue::F32(_) => t::F32,
            MetaValue::F64(_) => t::F64,
            MetaValue::Bool(_) => t::BOOL,
            MetaValue::String(_) => t::STRING,
            MetaValue::Array(_) => t::ARRAY,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            MetaValue::U8(_) => "u8",
            MetaValue::I8(_) => "i8",
            MetaValue::U16(_) => "u16",
            MetaValue::I16(_) => "i16",
            MetaValue::U32(_) => "u32",
            MetaValue::I32(_) => "i32",
            MetaValue::U64(_) => "u64",
            MetaValue::I64(_) => "i64",
            MetaValue::F32(_) => "f32",
            MetaValue::F64(_) => "f64",
            MetaValue::Bool(_) => "bool",
            MetaValue::String(_) => "string",
            MetaValue::Array(_) => "array",
        }
    }
}

/// Smallest encoded size of one value of GGUF type `type_id` (None: unknown type).
fn min_value_bytes(type_id: u32) -> Option<u64> {
    use value_type as t;
    Some(match type_id {
        t::U8 | t::I8 | t::BOOL => 1,
        t::U16 | t::I16 => 2,
        t::U32 | t::I32 | t::F32 => 4,
        t::U64 | t::I64 | t::F64 => 8,
        t::STRING => 8,
        t::ARRAY => 12,
        _ => return None,
    })
}

/// One tensor's description from the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: the fastest-varying dimension (the row length) first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset relative to the data section.
    pub offset: u64,
    /// Bytes of data.
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Validated at open not to overflow; saturate for hand-built infos.
        self.dims.iter().fold(1u64, |a, &d| a.saturating_mul(d))
    }
}

enum Storage {
    Mmap(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mmap(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file with its bytes (memory-mapped or owned).
pub struct GgufFile {
    pub version: u32,
    pub alignment: u64,
    /// In file order.
    pub metadata: Vec<(String, MetaValue)>,
    /// In file order (which need not be offset order).
    pub tensors: Vec<TensorInfo>,
    /// Absolute offset of the data section.
    pub data_offset: u64,
    storage: Storage,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("version", &self.version)
            .field("alignment", &self.alignment)
            .field("n_metadata", &self.metadata.len())
            .field("n_tensors", &self.tensors.len())
            .field("data_offset", &self.data_offset)
            .field("file_len", &self.file_len())
            .finish()
    }
}

impl GgufFile {
    /// Memory-maps and parses `path`.
    pub fn open(path: &Path) -> Result<GgufFile, GgufError> {
        let io = |source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; parse it to get the right error.
            return GgufFile::from_bytes(Vec::new());
        }
        // SAFETY: the map is read-only. Another process truncating or rewriting the file while
        // it is mapped is outside what any mmap-based reader can defend against; wick's own
        // writer replaces files by rename, which leaves existing maps intact.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        GgufFile::parse(Storage::Mmap(map))
    }

    /// Parses a GGUF held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
        GgufFile::parse(Storage::Owned(bytes))
    }

    fn parse(storage: Storage) -> Result<GgufFile, GgufError> {
        let h = parse_header(storage.bytes())?;
        Ok(GgufFile {
            version: h.version,
            alignment: h.alignment,
            metadata: h.metadata,
            tensors: h.tensors,
            data_offset: h.data_offset,
            storage,
        })
    }

    /// Size of the whole file in bytes.
    pub fn file_len(&self) -> u64 {
        self.storage.bytes().len() as u64
    }

    /// The whole file.
    pub fn bytes(&self) -> &[u8] {
        self.storage.bytes()
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn typed<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl FnOnce(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<T>, GgufError> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| GgufError::WrongType {
                key: key.to_string(),
                expected,
                found: v.type_name(),
            }),
        }
    }

    fn typed_array<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        conv: impl Fn(&'a MetaValue) -> Option<T>,
    ) -> Result<Option<Vec<T>>, GgufError> {
        let Some(v) = self.get(key) else {
            return Ok(None);
        };
        let wrong = |found| GgufError::WrongType {
            key: key.to_string(),
            expected,
            found,
        };
        let arr = v.as_array().ok_or_else(|| wrong(v.type_name()))?;
        arr.iter()
            .map(|e| conv(e).ok_or_else(|| wrong(e.type_name())))
            .collect::<Result<Vec<T>, _>>()
            .map(Some)
    }

    /// An unsigned (or non-negative signed) integer; Err if present with another type.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.typed(key, "a non-negative integer", MetaValue::as_u64)
    }

    /// Any integer fitting in i64; Err if present with another type.
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>, GgufError> {
        self.typed(key, "an integer", MetaValue::as_i64)
    }

    /// Any number (floats, or integers converted); Err if present with another type.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.typed(key, "a number", MetaValue::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.typed(key, "a bool", MetaValue::as_bool)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.typed(key, "a string", MetaValue::as_str)
    }

    /// An array whose every element is a string.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>, GgufError> {
        self.typed_array(key, "an array of strings", MetaValue::as_str)
    }

    /// An array whose every element is an integer fitting in i64.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        self.typed_array(key, "an array of integers", MetaValue::as_i64)
    }

    /// An array of numbers as f32 (f32 exactly; f64 and integers converted).
    pub fn get_f32_array(&self, key: &str) -> Result<Option<Vec<f32>>, GgufError> {
        self.typed_array(key, "an array of numbers", |v| match *v {
            MetaValue::F32(x) => Some(x),
            _ => v.as_f64().map(|x| x as f32),
        })
    }

    /// `general.architecture`, if present and a string.
    pub fn architecture(&self) -> Option<&str> {
        self.get(ARCHITECTURE_KEY).and_then(MetaValue::as_str)
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The bytes of a tensor of this file (bounds were validated at open). A TensorInfo that
    /// does not describe this file's data gives an empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        self.data_range(t).unwrap_or(&[])
    }

    /// The bytes of the tensor called `name`.
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.data_range(self.tensor(name)?)
    }

    fn data_range(&self, t: &TensorInfo) -> Option<&[u8]> {
        let start = self.data_offset.checked_add(t.offset)?;
        let end = start.checked_add(t.size)?;
        self.bytes()
            .get(usize::try_from(start).ok()?..usize::try_from(end).ok()?)
    }
}

/// The metadata key naming the model architecture.
pub const ARCHITECTURE_KEY: &str = "general.architecture";

struct Header {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<TensorInfo>,
    data_offset: u64,
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> u64 {
        (self.buf.len() - self.pos) as u64
    }

    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::Truncated {
                what: what(),
                offset: self.offset(),
                needed: n,
                file_len: self.buf.len() as u64,
            });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(
        &mut self,
        what: impl FnOnce() -> String,
    ) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64-length-prefixed UTF-8 string; `what` names it in errors.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(|| format!("{} length", what()))?;
        let offset = self.offset();
        if len > self.remaining() {
            return Err(GgufError::StringTooLong {
                what: what(),
                offset,
                len,
                remaining: self.remaining(),
            });
        }
        let bytes = self.take(len, what)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| GgufError::InvalidUtf8 {
                what: what(),
                offset,
            })
    }

    fn value(&mut self, key: &str, type_id: u32, depth: usize) -> Result<MetaValue, GgufError> {
        use value_type as t;
        let what = || format!("value of {key:?}");
        Ok(match type_id {
            t::U8 => MetaValue::U8(self.array::<1>(what)?[0]),
            t::I8 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            t::U16 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            t::I16 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            t::U32 => MetaValue::U32(u32::from_le_bytes(self.array(what)?)),
            t::I32 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            t::U64 => MetaValue::U64(u64::from_le_bytes(self.array(what)?)),
            t::I64 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            t::F32 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            t::F64 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            t::BOOL => {
                let offset = self.offset();
                match self.array::<1>(what)?[0] {
                    0 => MetaValue::Bool(false),
                    1 => MetaValue::Bool(true),
                    value => {
                        return Err(GgufError::InvalidBool {
                            key: key.to_string(),
                            offset,
                            value,
                        })
                    }
                }
            }
            t::STRING => MetaValue::String(self.string(&what)?),
            t::ARRAY => {
                let offset = self.offset();
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::ArrayTooDeep {
                        key: key.to_string(),
                        offset,
                        max: MAX_ARRAY_DEPTH,
                    });
                }
                let elem_type = self.u32(|| format!("array element type of {key:?}"))?;
                let min = min_value_bytes(elem_type).ok_or(GgufError::UnknownValueType {
                    key: key.to_string(),
                    offset,
                    type_id: elem_type,
                })?;
                let len = self.u64(|| format!("array length of {key:?}"))?;
                if len > self.remaining() / min {
                    return Err(GgufError::ArrayTooLong {
                        key: key.to_string(),
                        offset,
                        len,
                        remaining: self.remaining(),
                    });
                }
                let mut items = Vec::with_capacity(len as usize);
                for _ in 0..len {
                    items.push(self.value(key, elem_type, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            other => {
                return Err(GgufError::UnknownValueType {
                    key: key.to_string(),
                    offset: self.offset().saturating_sub(4),
                    type_id: other,
                })
            }
        })
    }
}

fn parse_header(buf: &[u8]) -> Result<Header, GgufError> {
    let mut c = Cursor { buf, pos: 0 };
    let file_len = buf.len() as u64;

    if buf.len() >= 4 && buf[..4] != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            found: buf[..4].to_vec(),
        });
    }
    c.take(4, || "magic".into())?;
    let version = c.u32(|| "version".into())?;
    match version {
        2 | 3 => {}
        // A big-endian writer puts a small version in the high bytes.
        v if v & 0xFFFF == 0 && (1..=3).contains(&v.swap_bytes()) => {
            return Err(GgufError::BigEndian {
                version: v.swap_bytes(),
            })
        }
        v => return Err(GgufError::UnsupportedVersion { version: v }),
    }
    let n_tensors = c.u64(|| "tensor count".into())?;
    let n_kv = c.u64(|| "metadata count".into())?;
    // Every metadata entry and tensor info takes bytes: a count the rest of the file cannot
    // hold is rejected before anything is allocated for it.
    if n_kv > c.remaining() / MIN_KV_BYTES {
        return Err(GgufError::TooManyMetadata {
            count: n_kv,
            remaining: c.remaining(),
        });
    }
    if n_tensors > c.remaining() / MIN_TENSOR_INFO_BYTES {
        return Err(GgufError::TooManyTensors {
            count: n_tensors,
            remaining: c.remaining(),
        });
    }

    let mut metadata: Vec<(String, MetaValue)> = Vec::with_capacity(n_kv as usize);
    let mut keys = std::collections::HashSet::with_capacity(n_kv as usize);
    for i in 0..n_kv {
        let key_offset = c.offset();
        let key = c.string(&|| format!("metadata key #{i}"))?;
        let type_id = c.u32(|| format!("value type of {key:?}"))?;
        let value = c.value(&key, type_id, 0)?;
        if !keys.insert(key.clone()) {
            return Err(GgufError::DuplicateKey {
                key,
                offset: key_offset,
            });
        }
        metadata.push((key, value));
    }

    let alignment = match metadata.iter().find(|(k, _)| k == ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some((_, v)) => {
            let a = v.as_u64().ok_or_else(|| GgufError::WrongType {
                key: ALIGNMENT_KEY.into(),
                expected: "an unsigned integer",
                found: v.type_name(),
            })?;
            if !a.is_power_of_two() {
                return Err(GgufError::BadAlignment { value: a });
            }
            a
        }
    };

    let mut tensors = Vec::with_capacity(n_tensors as usize);
    let mut names = std::collections::HashSet::with_capacity(n_tensors as usize);
    for i in 0..n_tensors {
        let name = c.string(&|| format!("tensor name #{i}"))?;
        let n_dims = c.u32(|| format!("dimension count of tensor {name:?}"))?;
        if n_dims == 0 || n_dims as usize > MAX_DIMS {
            return Err(GgufError::BadDimCount {
                tensor: name,
                n_dims,
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for d in 0..n_dims {
            dims.push(c.u64(|| format!("dimension {d} of tensor {name:?}"))?);
        }
        let type_id = c.u32(|| format!("type of tensor {name:?}"))?;
        let offset = c.u64(|| format!("offset of tensor {name:?}"))?;
        if !names.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        let size = tensor_size(&name, &dims, type_id)?;
        if !offset.is_multiple_of(alignment) {
            return Err(GgufError::MisalignedTensor {
                tensor: name,
                offset,
                alignment,
            });
        }
        tensors.push(TensorInfo {
            name,
            dims,
            ggml_type: GgmlType::from_id(type_id),
            offset,
            size,
        });
    }

    // The data section starts at the next multiple of the alignment.
    let header_end = c.offset();
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or(GgufError::BadAlignment { value: alignment })?;
    if !tensors.is_empty() && data_offset > file_len {
        return Err(GgufError::Truncated {
            what: "padding before the data section".into(),
            offset: header_end,
            needed: data_offset - header_end,
            file_len,
        });
    }
    let data_len = file_len.saturating_sub(data_offset);
    for t in &tensors {
        if t.offset
            .checked_add(t.size)
            .is_none_or(|end| end > data_len)
        {
            return Err(GgufError::TensorOutOfRange {
                tensor: t.name.clone(),
                offset: t.offset,
                size: t.size,
                data_len,
            });
        }
    }
    let mut by_offset: Vec<&TensorInfo> = tensors.iter().collect();
    by_offset.sort_by_key(|t| t.offset);
    for w in by_offset.windows(2) {
        if w[0].offset + w[0].size > w[1].offset {
            return Err(GgufError::OverlappingTensors {
                first: w[0].name.clone(),
                second: w[1].name.clone(),
                offset: w[1].offset,
            });
        }
    }

    Ok(Header {
        version,
        alignment,
        metadata,
        tensors,
        data_offset,
    })
}

/// Bytes of a tensor, validating its dimensions and type.
fn tensor_size(name: &str, dims: &[u64], type_id: u32) -> Result<u64, GgufError> {
    if dims.contains(&0) {
        return Err(GgufError::ZeroDim {
            tensor: name.into(),
            dims: dims.to_vec(),
        });
    }
    let overflow = || GgufError::DimOverflow {
        tensor: name.into(),
        dims: dims.to_vec(),
    };
    // ggml keeps element counts in int64.
    let elems = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .filter(|&n| n <= i64::MAX as u64)
        .ok_or_else(overflow)?;
    let t = GgmlType::from_id(type_id);
    let (block, _) = t.block_layout().ok_or(GgufError::UnknownTensorType {
        tensor: name.into(),
        type_id,
    })?;
    if !dims[0].is_multiple_of(block as u64) {
        return Err(GgufError::PartialBlock {
            tensor: name.into(),
            ggml_type: t.name(),
            ne0: dims[0],
            block: block as u64,
        });
    }
    t.bytes_for(elems).ok_or_else(overflow)
}
