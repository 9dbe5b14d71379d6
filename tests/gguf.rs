//! GGUF reader and writer: round trips, malformed files (each must give its named error), the
//! real SmolLM2 file against the goldens, and Q4_1/Q8_0 dequantisation against gguf-py.

use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use wick::formats::gguf::{GgufError, GgufFile, MetaValue, MAX_ARRAY_DEPTH};
use wick::formats::gguf_writer::GgufWriter;
use wick::quant::{dequantize, quantize, GgmlType};

pub mod common;

fn rng() -> rand::rngs::StdRng {
    let seed: u64 = rand::rng().random();
    println!("seed {seed}");
    rand::rngs::StdRng::seed_from_u64(seed)
}

fn random_bytes(r: &mut impl RngCore, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    r.fill_bytes(&mut v);
    v
}

fn random_f32(r: &mut impl Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| r.random_range(-2.0f32..2.0)).collect()
}

/// A small valid file: a few metadata entries and three tensors.
fn small_writer() -> GgufWriter {
    let mut r = rng();
    GgufWriter::new()
        .meta("general.architecture", MetaValue::String("llama".into()))
        .meta("llama.block_count", MetaValue::U32(2))
        .meta(
            "tokenizer.ggml.tokens",
            MetaValue::Array(vec![
                MetaValue::String("a".into()),
                MetaValue::String("bc".into()),
            ]),
        )
        .tensor(
            "a.weight",
            &[64, 2],
            GgmlType::Q8_0,
            quantize(GgmlType::Q8_0, &random_f32(&mut r, 128)).unwrap(),
        )
        .tensor("b.weight", &[5], GgmlType::F32, random_bytes(&mut r, 20))
        .tensor(
            "c.weight",
            &[32, 3],
            GgmlType::Q4_1,
            random_bytes(&mut r, 3 * 20),
        )
}

fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    GgufFile::from_bytes(bytes)
}

fn parse_err(bytes: Vec<u8>) -> GgufError {
    match parse(bytes) {
        Ok(f) => panic!("malformed file was accepted: {f:?}"),
        Err(e) => {
            println!("{e}");
            e
        }
    }
}

/// Byte position just after the first occurrence of `needle` as a u64-length-prefixed string.
fn after_string(bytes: &[u8], needle: &str) -> usize {
    let mut pat = (needle.len() as u64).to_le_bytes().to_vec();
    pat.extend_from_slice(needle.as_bytes());
    let at = bytes
        .windows(pat.len())
        .position(|w| w == pat.as_slice())
        .unwrap_or_else(|| panic!("{needle:?} not in file"));
    at + pat.len()
}

/// Position of a tensor info's offset field.
fn tensor_offset_pos(bytes: &[u8], name: &str, n_dims: usize) -> usize {
    after_string(bytes, name) + 4 + 8 * n_dims + 4
}

fn put_u32(bytes: &mut [u8], at: usize, v: u32) {
    bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(bytes: &mut [u8], at: usize, v: u64) {
    bytes[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn round_trip_every_value_type() {
    let mut r = rng();
    let nested = MetaValue::Array(vec![
        MetaValue::Array(vec![MetaValue::I16(-3), MetaValue::I16(4)]),
        MetaValue::Array(vec![]),
        MetaValue::Array(vec![MetaValue::Array(vec![MetaValue::String(
            "deep".into(),
        )])]),
    ]);
    let meta: Vec<(&str, MetaValue)> = vec![
        ("t.u8", MetaValue::U8(r.random())),
        ("t.i8", MetaValue::I8(r.random())),
        ("t.u16", MetaValue::U16(r.random())),
        ("t.i16", MetaValue::I16(r.random())),
        ("t.u32", MetaValue::U32(r.random())),
        ("t.i32", MetaValue::I32(r.random())),
        ("t.u64", MetaValue::U64(r.random())),
        ("t.i64", MetaValue::I64(r.random())),
        ("t.f32", MetaValue::F32(r.random_range(-1e6..1e6))),
        ("t.f64", MetaValue::F64(r.random_range(-1e300..1e300))),
        ("t.f32_special", MetaValue::F32(f32::NEG_INFINITY)),
        ("t.bool_t", MetaValue::Bool(true)),
        ("t.bool_f", MetaValue::Bool(false)),
        ("t.str", MetaValue::String("héllo ✓ 日本".into())),
        ("t.str_empty", MetaValue::String(String::new())),
        ("t.arr_empty", MetaValue::Array(vec![])),
        (
            "t.arr_u8",
            MetaValue::Array(
                random_bytes(&mut r, 7)
                    .into_iter()
                    .map(MetaValue::U8)
                    .collect(),
            ),
        ),
        (
            "t.arr_i32",
            MetaValue::Array((0..9).map(|_| MetaValue::I32(r.random())).collect()),
        ),
        (
            "t.arr_f32",
            MetaValue::Array((0..5).map(|i| MetaValue::F32(i as f32 * 0.25)).collect()),
        ),
        (
            "t.arr_f64",
            MetaValue::Array(vec![MetaValue::F64(1.5), MetaValue::F64(-0.0)]),
        ),
        (
            "t.arr_bool",
            MetaValue::Array(vec![MetaValue::Bool(true), MetaValue::Bool(false)]),
        ),
        (
            "t.arr_str",
            MetaValue::Array(vec![
                MetaValue::String("x".into()),
                MetaValue::String("".into()),
                MetaValue::String("Ġthe".into()),
            ]),
        ),
        (
            "t.arr_u64",
            MetaValue::Array(vec![MetaValue::U64(u64::MAX), MetaValue::U64(0)]),
        ),
        (
            "t.arr_i64",
            MetaValue::Array(vec![MetaValue::I64(i64::MIN), MetaValue::I64(7)]),
        ),
        (
            "t.arr_u16",
            MetaValue::Array(vec![MetaValue::U16(65535), MetaValue::U16(1)]),
        ),
        (
            "t.arr_i8",
            MetaValue::Array(vec![MetaValue::I8(-128), MetaValue::I8(127)]),
        ),
        (
            "t.arr_u32",
            MetaValue::Array(vec![MetaValue::U32(u32::MAX)]),
        ),
        ("t.nested", nested),
    ];

    // Tensors of every writable float/quant type, 1 to 4 dims, with an alignment of 64.
    let x = random_f32(&mut r, 2 * 3 * 64);
    let tensors: Vec<(&str, Vec<u64>, GgmlType, Vec<u8>)> = vec![
        (
            "f32",
            vec![7],
            GgmlType::F32,
            quantize(GgmlType::F32, &x[..7]).unwrap(),
        ),
        (
            "f16",
            vec![3, 5],
            GgmlType::F16,
            quantize(GgmlType::F16, &x[..15]).unwrap(),
        ),
        (
            "bf16",
            vec![2, 2, 2],
            GgmlType::Bf16,
            quantize(GgmlType::Bf16, &x[..8]).unwrap(),
        ),
        (
            "q8_0",
            vec![64, 3, 1, 2],
            GgmlType::Q8_0,
            quantize(GgmlType::Q8_0, &x).unwrap(),
        ),
        (
            "q4_0",
            vec![32, 2],
            GgmlType::Q4_0,
            quantize(GgmlType::Q4_0, &x[..64]).unwrap(),
        ),
        (
            "q4_1",
            vec![64],
            GgmlType::Q4_1,
            quantize(GgmlType::Q4_1, &x[..64]).unwrap(),
        ),
        ("i8", vec![3], GgmlType::I8, random_bytes(&mut r, 3)),
    ];

    let mut w = GgufWriter::new().alignment(64);
    for (k, v) in &meta {
        w.add_meta(*k, v.clone());
    }
    for (name, dims, t, data) in &tensors {
        w.add_tensor(*name, dims, *t, data.clone());
    }
    w.validate().unwrap();
    let bytes = w.to_bytes();
    let f = parse(bytes.clone()).unwrap();

    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    assert_eq!(f.file_len(), bytes.len() as u64);
    assert_eq!(f.metadata.len(), meta.len() + 1);
    assert_eq!(f.metadata[0].0, "general.alignment");
    assert_eq!(f.get("general.alignment"), Some(&MetaValue::U32(64)));
    for ((k, v), (rk, rv)) in meta.iter().zip(&f.metadata[1..]) {
        assert_eq!(k, rk);
        assert_eq!(v, rv, "{k}");
        assert_eq!(f.get(k), Some(v));
    }
    assert_eq!(f.tensors.len(), tensors.len());
    for (name, dims, t, data) in &tensors {
        let info = f.tensor(name).unwrap();
        assert_eq!(&info.dims, dims);
        assert_eq!(info.ggml_type, *t);
        assert_eq!(info.size, data.len() as u64);
        assert_eq!(info.n_elements(), dims.iter().product::<u64>());
        assert_eq!(info.offset % 64, 0, "{name}");
        assert_eq!(f.tensor_data(info), data.as_slice(), "{name}");
        assert_eq!(f.tensor_bytes(name), Some(data.as_slice()));
    }
    // Q8_0 dequantises identically from the file.
    let q = f.tensor("q8_0").unwrap();
    assert_eq!(
        dequantize(q.ggml_type, f.tensor_data(q), q.n_elements() as usize).unwrap(),
        dequantize(GgmlType::Q8_0, &tensors[3].3, x.len()).unwrap()
    );

    // Version 2 has the same layout.
    let v2 = parse(w.clone().version(2).to_bytes()).unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(v2.metadata, f.metadata);
    assert_eq!(v2.tensors, f.tensors);
}

#[test]
fn typed_accessors() {
    let f = parse(
        GgufWriter::new()
            .meta("general.architecture", MetaValue::String("qwen2".into()))
            .meta("a.u32", MetaValue::U32(7))
            .meta("a.neg", MetaValue::I32(-5))
            .meta("a.f32", MetaValue::F32(0.5))
            .meta("a.bool", MetaValue::Bool(true))
            .meta(
                "a.strs",
                MetaValue::Array(vec![
                    MetaValue::String("p".into()),
                    MetaValue::String("q".into()),
                ]),
            )
            .meta(
                "a.ints",
                MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::U8(3)]),
            )
            .meta(
                "a.mixed",
                MetaValue::Array(vec![MetaValue::String("p".into())]),
            )
            .meta(
                "a.floats",
                MetaValue::Array(vec![MetaValue::F32(-1.25), MetaValue::F32(2.0)]),
            )
            .to_bytes(),
    );
    // "a.ints" mixes types: the writer wrote it anyway and the reader must refuse the file
    // rather than misread it (here the u8 is read as the second i32's bytes: truncation or junk).
    assert!(f.is_err());

    let f = parse(
        GgufWriter::new()
            .meta("general.architecture", MetaValue::String("qwen2".into()))
            .meta("a.u32", MetaValue::U32(7))
            .meta("a.neg", MetaValue::I32(-5))
            .meta("a.f32", MetaValue::F32(0.5))
            .meta("a.bool", MetaValue::Bool(true))
            .meta(
                "a.strs",
                MetaValue::Array(vec![
                    MetaValue::String("p".into()),
                    MetaValue::String("q".into()),
                ]),
            )
            .meta(
                "a.ints",
                MetaValue::Array(vec![MetaValue::I32(-1), MetaValue::I32(3)]),
            )
            .meta(
                "a.floats",
                MetaValue::Array(vec![MetaValue::F32(-1.25), MetaValue::F32(2.0)]),
            )
            .to_bytes(),
    )
    .unwrap();
    assert_eq!(f.architecture(), Some("qwen2"));
    assert_eq!(f.get_u64("a.u32").unwrap(), Some(7));
    assert_eq!(f.get_u64("missing").unwrap(), None);
    assert!(matches!(
        f.get_u64("a.neg"),
        Err(GgufError::WrongType { ref key, found: "i32", .. }) if key == "a.neg"
    ));
    assert_eq!(f.get_i64("a.neg").unwrap(), Some(-5));
    assert_eq!(f.get_f64("a.f32").unwrap(), Some(0.5));
    assert_eq!(f.get_f64("a.u32").unwrap(), Some(7.0));
    assert!(matches!(
        f.get_f64("a.strs"),
        Err(GgufError::WrongType { found: "array", .. })
    ));
    assert_eq!(f.get_bool("a.bool").unwrap(), Some(true));
    assert_eq!(f.get_str("general.architecture").unwrap(), Some("qwen2"));
    assert!(matches!(
        f.get_str("a.u32"),
        Err(GgufError::WrongType { found: "u32", .. })
    ));
    assert_eq!(f.get_str_array("a.strs").unwrap(), Some(vec!["p", "q"]));
    assert!(matches!(
        f.get_str_array("a.ints"),
        Err(GgufError::WrongType { found: "i32", .. })
    ));
    assert_eq!(f.get_i64_array("a.ints").unwrap(), Some(vec![-1, 3]));
    assert_eq!(f.get_f32_array("a.floats").unwrap(), Some(vec![-1.25, 2.0]));
    assert!(matches!(
        f.get_f32_array("a.strs"),
        Err(GgufError::WrongType {
            found: "string",
            ..
        })
    ));
    assert!(matches!(
        f.get_i64_array("a.u32"),
        Err(GgufError::WrongType { found: "u32", .. })
    ));
    assert_eq!(f.get_str_array("nope").unwrap(), None);
    assert_eq!(MetaValue::I8(-1).as_u64(), None);
    assert_eq!(MetaValue::I64(4).as_u64(), Some(4));
    assert_eq!(MetaValue::U64(u64::MAX).as_i64(), None);
    assert_eq!(MetaValue::String("x".into()).type_name(), "string");
    assert!(f.tensors.is_empty());
}

#[test]
fn write_replaces_atomically_and_validates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.gguf");
    let w = small_writer();
    w.write(&path).unwrap();
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.bytes(), w.to_bytes().as_slice());
    assert_eq!(f.tensors.len(), 3);
    let before = std::fs::read(&path).unwrap();

    // An invalid writer fails before touching the existing file.
    let bad = small_writer().tensor("short", &[4], GgmlType::F32, vec![0u8; 15]);
    assert!(bad.write(&path).is_err());
    let dup = small_writer().meta("llama.block_count", MetaValue::U32(3));
    assert!(dup.write(&path).is_err());
    let mixed = GgufWriter::new().meta(
        "x",
        MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]),
    );
    assert!(mixed.write(&path).is_err());
    assert_eq!(std::fs::read(&path).unwrap(), before);
    // Nothing but the file itself is left in the directory.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    // A path in a missing directory is an I/O error, not a panic.
    assert!(small_writer()
        .write(&dir.path().join("missing/x.gguf"))
        .is_err());

    // Overwriting replaces the content.
    let w2 = GgufWriter::new().meta("k", MetaValue::U8(1));
    w2.write(&path).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), w2.to_bytes());
    // `open` on an empty file and a missing file: named errors.
    std::fs::write(dir.path().join("empty.gguf"), b"").unwrap();
    assert!(matches!(
        GgufFile::open(&dir.path().join("empty.gguf")),
        Err(GgufError::Truncated { .. })
    ));
    assert!(matches!(
        GgufFile::open(&dir.path().join("nope.gguf")),
        Err(GgufError::Io { .. })
    ));
}

// ---- malformed files ----

#[test]
fn truncated_at_every_stage() {
    let bytes = small_writer().to_bytes();
    let f = parse(bytes.clone()).unwrap();
    let data_start = f.data_offset as usize;
    // The final tensor's trailing padding is not needed.
    let data_end = f.tensors.iter().map(|t| t.offset + t.size).max().unwrap() as usize;
    for cut in data_start + data_end..bytes.len() {
        assert!(parse(bytes[..cut].to_vec()).is_ok(), "cut at {cut}");
    }
    for cut in 0..data_start + data_end {
        let e = parse_err(bytes[..cut].to_vec());
        let ok = match e {
            // Inside the header: short reads, or lengths/counts that no longer fit.
            GgufError::Truncated { .. }
            | GgufError::StringTooLong { .. }
            | GgufError::ArrayTooLong { .. }
            | GgufError::TooManyMetadata { .. }
            | GgufError::TooManyTensors { .. } => cut < data_start,
            GgufError::TensorOutOfRange { .. } => cut >= data_start,
            _ => false,
        };
        assert!(ok, "cut at {cut} of {}: {e:?}", bytes.len());
    }
    assert!(matches!(
        parse_err(bytes[..3].to_vec()),
        GgufError::Truncated { offset: 0, .. }
    ));
    assert!(matches!(
        parse_err(bytes[..6].to_vec()),
        GgufError::Truncated { offset: 4, .. }
    ));
    assert!(matches!(
        parse_err(bytes[..data_start + data_end - 1].to_vec()),
        GgufError::TensorOutOfRange { .. }
    ));
}

#[test]
fn bad_magic() {
    let mut b = small_writer().to_bytes();
    b[..4].copy_from_slice(b"GGML");
    assert!(matches!(parse_err(b), GgufError::BadMagic { found } if found == b"GGML"));
}

#[test]
fn unsupported_versions() {
    let e = parse_err(small_writer().version(1).to_bytes());
    assert!(matches!(e, GgufError::UnsupportedVersion { version: 1 }));
    let e = parse_err(small_writer().version(4).to_bytes());
    assert!(matches!(e, GgufError::UnsupportedVersion { version: 4 }));
    // A big-endian file stores the version byte-swapped.
    let mut b = small_writer().to_bytes();
    b[4..8].copy_from_slice(&3u32.to_be_bytes());
    assert!(matches!(parse_err(b), GgufError::BigEndian { version: 3 }));
}

#[test]
fn string_length_beyond_file() {
    let mut b = small_writer().to_bytes();
    // The first key's length field sits right after the 24-byte header.
    put_u64(&mut b, 24, 1 << 40);
    assert!(matches!(
        parse_err(b),
        GgufError::StringTooLong { offset: 32, len, .. } if len == 1 << 40
    ));
    // A string value's length, near u64::MAX (must not overflow).
    let mut b = small_writer().to_bytes();
    let at = after_string(&b, "general.architecture") + 4;
    put_u64(&mut b, at, u64::MAX);
    assert!(matches!(
        parse_err(b),
        GgufError::StringTooLong { len: u64::MAX, .. }
    ));
}

#[test]
fn invalid_utf8() {
    let mut b = small_writer().to_bytes();
    let at = after_string(&b, "llama.block_count") - 5; // inside the key
    b[at] = 0xFF;
    assert!(matches!(parse_err(b), GgufError::InvalidUtf8 { .. }));
    let mut b = small_writer().to_bytes();
    let at = after_string(&b, "llama") - 1; // inside the architecture value
    b[at] = 0xC3;
    assert!(
        matches!(parse_err(b), GgufError::InvalidUtf8 { what, .. } if what.contains("general.architecture"))
    );
    let mut b = small_writer().to_bytes();
    let at = after_string(&b, "a.weight") - 1; // inside a tensor name
    b[at] = 0x80;
    assert!(matches!(parse_err(b), GgufError::InvalidUtf8 { what, .. } if what.contains("tensor")));
}

#[test]
fn unknown_value_type() {
    let mut b = small_writer().to_bytes();
    let at = after_string(&b, "llama.block_count");
    put_u32(&mut b, at, 13);
    assert!(matches!(
        parse_err(b),
        GgufError::UnknownValueType { key, type_id: 13, offset } if key == "llama.block_count" && offset == at as u64
    ));
    // Unknown element type of an array.
    let mut b = small_writer().to_bytes();
    let at = after_string(&b, "tokenizer.ggml.tokens") + 4;
    put_u32(&mut b, at, 0xDEAD);
    assert!(matches!(
        parse_err(b),
        GgufError::UnknownValueType {
            type_id: 0xDEAD,
            ..
        }
    ));
}

#[test]
fn invalid_bool() {
    let mut b = GgufWriter::new()
        .meta("flag", MetaValue::Bool(true))
        .to_bytes();
    let at = after_string(&b, "flag") + 4;
    b[at] = 2;
    assert!(matches!(
        parse_err(b),
        GgufError::InvalidBool { value: 2, .. }
    ));
}

#[test]
fn nested_array_depth_bomb() {
    // Allowed depth reads fine.
    let mut v = MetaValue::Array(vec![MetaValue::U8(1)]);
    for _ in 1..MAX_ARRAY_DEPTH {
        v = MetaValue::Array(vec![v]);
    }
    let ok = parse(GgufWriter::new().meta("deep", v.clone()).to_bytes()).unwrap();
    assert_eq!(ok.get("deep"), Some(&v));
    // One more level is refused; so is a hand-made bomb of 100,000 nested array headers.
    let e = parse_err(
        GgufWriter::new()
            .meta("deep", MetaValue::Array(vec![v]))
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::ArrayTooDeep { key, .. } if key == "deep"));
    let mut b = GgufWriter::new()
        .meta("bomb", MetaValue::Array(vec![]))
        .to_bytes();
    let at = after_string(&b, "bomb") + 4;
    b.truncate(at);
    for _ in 0..100_000 {
        b.extend_from_slice(&9u32.to_le_bytes());
        b.extend_from_slice(&1u64.to_le_bytes());
    }
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    assert!(matches!(parse_err(b), GgufError::ArrayTooDeep { .. }));
}

#[test]
fn absurd_counts() {
    let b = small_writer().to_bytes();
    let mut k = b.clone();
    put_u64(&mut k, 16, u64::MAX);
    assert!(matches!(
        parse_err(k),
        GgufError::TooManyMetadata {
            count: u64::MAX,
            ..
        }
    ));
    let mut t = b.clone();
    put_u64(&mut t, 8, 1 << 50);
    assert!(matches!(
        parse_err(t),
        GgufError::TooManyTensors { count, .. } if count == 1 << 50
    ));
    // An array length that the rest of the file cannot hold.
    let mut a = b.clone();
    let at = after_string(&a, "tokenizer.ggml.tokens") + 8;
    put_u64(&mut a, at, u64::MAX / 2);
    assert!(matches!(
        parse_err(a),
        GgufError::ArrayTooLong { key, .. } if key == "tokenizer.ggml.tokens"
    ));
}

#[test]
fn bad_dimension_counts() {
    let e = parse_err(
        GgufWriter::new()
            .tensor("t5", &[1, 1, 1, 1, 32], GgmlType::F32, vec![0u8; 128])
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::BadDimCount { tensor, n_dims: 5 } if tensor == "t5"));
    let e = parse_err(
        GgufWriter::new()
            .tensor("t0", &[], GgmlType::F32, vec![0u8; 4])
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::BadDimCount { n_dims: 0, .. }));
}

#[test]
fn zero_and_overflowing_dimensions() {
    let e = parse_err(
        GgufWriter::new()
            .tensor("z", &[32, 0], GgmlType::F32, vec![])
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::ZeroDim { tensor, .. } if tensor == "z"));
    let e = parse_err(
        GgufWriter::new()
            .tensor("o", &[1 << 32, 1 << 32], GgmlType::F32, vec![0u8; 4])
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::DimOverflow { tensor, .. } if tensor == "o"));
    // Elements fit but bytes do not.
    let e = parse_err(
        GgufWriter::new()
            .tensor("b", &[1 << 31, 1 << 31], GgmlType::F64, vec![0u8; 8])
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::DimOverflow { .. }));
}

#[test]
fn unknown_tensor_type_and_partial_block() {
    assert_eq!(GgmlType::from_id(99), GgmlType::Other(99));
    let e = parse_err(
        GgufWriter::new()
            .tensor("iq", &[256], GgmlType::Other(99), vec![0u8; 64])
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::UnknownTensorType { tensor, type_id: 99 } if tensor == "iq"));
    let e = parse_err(
        GgufWriter::new()
            .tensor("p", &[16, 2], GgmlType::Q4_0, vec![0u8; 18])
            .to_bytes(),
    );
    assert!(matches!(
        e,
        GgufError::PartialBlock {
            ne0: 16,
            block: 32,
            ..
        }
    ));
}

#[test]
fn tensor_out_of_range_and_misaligned() {
    let b = small_writer().to_bytes();
    let mut o = b.clone();
    let at = tensor_offset_pos(&o, "c.weight", 2);
    put_u64(&mut o, at, 1 << 20);
    assert!(matches!(
        parse_err(o),
        GgufError::TensorOutOfRange { tensor, offset, .. } if tensor == "c.weight" && offset == 1 << 20
    ));
    // Offset + size overflowing u64 (aligned, so the range check is what catches it).
    let mut o = b.clone();
    put_u64(&mut o, at, u64::MAX - 31);
    assert!(matches!(parse_err(o), GgufError::TensorOutOfRange { .. }));
    let mut m = b.clone();
    let at = tensor_offset_pos(&m, "b.weight", 1);
    put_u64(&mut m, at, 96 + 4);
    assert!(matches!(
        parse_err(m),
        GgufError::MisalignedTensor { tensor, offset: 100, alignment: 32 } if tensor == "b.weight"
    ));
}

#[test]
fn overlapping_tensors() {
    let mut b = small_writer().to_bytes();
    // a.weight occupies [0, 68); move b.weight to 64.
    let at = tensor_offset_pos(&b, "b.weight", 1);
    put_u64(&mut b, at, 64);
    assert!(matches!(
        parse_err(b),
        GgufError::OverlappingTensors { first, second, offset: 64 } if first == "a.weight" && second == "b.weight"
    ));
}

#[test]
fn duplicate_keys_and_tensor_names() {
    let e = parse_err(
        small_writer()
            .meta("general.architecture", MetaValue::String("x".into()))
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::DuplicateKey { key, .. } if key == "general.architecture"));
    let e = parse_err(
        small_writer()
            .tensor("a.weight", &[1], GgmlType::F32, vec![0u8; 4])
            .to_bytes(),
    );
    assert!(matches!(e, GgufError::DuplicateTensor { tensor } if tensor == "a.weight"));
}

#[test]
fn bad_alignment() {
    let e = parse_err(small_writer().alignment(48).to_bytes());
    assert!(matches!(e, GgufError::BadAlignment { value: 48 }));
    let e = parse_err(small_writer().alignment(0).to_bytes());
    assert!(matches!(e, GgufError::BadAlignment { value: 0 }));
    let e = parse_err(
        small_writer()
            .meta("general.alignment", MetaValue::String("32".into()))
            .to_bytes(),
    );
    assert!(
        matches!(e, GgufError::WrongType { key, found: "string", .. } if key == "general.alignment")
    );
    // A valid non-default alignment is honoured.
    let f = parse(small_writer().alignment(256).to_bytes()).unwrap();
    assert_eq!(f.alignment, 256);
    assert!(f.tensors.iter().all(|t| t.offset % 256 == 0));
}

/// Random corruption of a valid file: any outcome but a panic (or a huge allocation).
#[test]
fn random_corruption_never_panics() {
    let mut r = rng();
    let base = small_writer().to_bytes();
    let header_len = parse(base.clone()).unwrap().data_offset as usize;
    let mut errors = 0;
    for _ in 0..3000 {
        let mut b = base.clone();
        for _ in 0..r.random_range(1..4) {
            let i = r.random_range(0..header_len);
            b[i] = r.random();
        }
        if r.random_bool(0.2) {
            b.truncate(r.random_range(0..b.len()));
        }
        if let Ok(f) = parse(b) {
            for t in &f.tensors {
                assert_eq!(f.tensor_data(t).len() as u64, t.size);
            }
        } else {
            errors += 1;
        }
    }
    assert!(errors > 0);
}

// ---- the real model ----

fn golden(name: &str) -> Value {
    let path = common::shared().join("goldens/smollm2").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

/// gguf-py's type name for a value ("UINT32", "ARRAY+STRING").
fn gguf_py_type(v: &MetaValue) -> String {
    let scalar = |v: &MetaValue| match v {
        MetaValue::U8(_) => "UINT8",
        MetaValue::I8(_) => "INT8",
        MetaValue::U16(_) => "UINT16",
        MetaValue::I16(_) => "INT16",
        MetaValue::U32(_) => "UINT32",
        MetaValue::I32(_) => "INT32",
        MetaValue::U64(_) => "UINT64",
        MetaValue::I64(_) => "INT64",
        MetaValue::F32(_) => "FLOAT32",
        MetaValue::F64(_) => "FLOAT64",
        MetaValue::Bool(_) => "BOOL",
        MetaValue::String(_) => "STRING",
        MetaValue::Array(_) => "ARRAY",
    };
    match v {
        MetaValue::Array(a) => format!("ARRAY+{}", a.first().map_or("?", scalar)),
        s => scalar(s).into(),
    }
}

fn meta_matches_json(v: &MetaValue, j: &Value) -> bool {
    match v {
        MetaValue::String(s) => j.as_str() == Some(s.as_str()),
        MetaValue::Bool(b) => j.as_bool() == Some(*b),
        // gguf-py widened f32 to double: compare exactly.
        MetaValue::F32(x) => j.as_f64() == Some(*x as f64),
        MetaValue::F64(x) => j.as_f64() == Some(*x),
        MetaValue::Array(a) => j.as_array().is_some_and(|ja| {
            ja.len() <= a.len() && ja.iter().zip(a).all(|(j, v)| meta_matches_json(v, j))
        }),
        int => {
            int.as_i64().is_some_and(|i| j.as_i64() == Some(i))
                || int.as_u64().is_some_and(|u| j.as_u64() == Some(u))
        }
    }
}

#[test]
fn smollm2_matches_inspect_golden() {
    let Some(path) = common::model_or_skip() else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let g = golden("gguf_inspect.json");
    assert_eq!(f.file_len(), g["file_size"].as_u64().unwrap());
    assert_eq!(f.version as u64, g["gguf_version"].as_u64().unwrap());
    assert_eq!(f.alignment, 32);
    assert_eq!(f.architecture(), Some("llama"));

    let gm = g["metadata"].as_object().unwrap();
    assert_eq!(
        gm["GGUF.kv_count"]["value"].as_u64().unwrap(),
        f.metadata.len() as u64
    );
    assert_eq!(
        gm["GGUF.tensor_count"]["value"].as_u64().unwrap(),
        f.tensors.len() as u64
    );
    // serde_json's map is not ordered here, so compare as sets: every golden key is present.
    let n_real = gm.keys().filter(|k| !k.starts_with("GGUF.")).count();
    assert_eq!(n_real, f.metadata.len());
    for (k, v) in &f.metadata {
        assert!(gm.contains_key(k.as_str()), "{k} not in the golden");
        let e = &gm[k.as_str()];
        assert_eq!(gguf_py_type(v), e["type"].as_str().unwrap(), "{k}");
        if let Some(len) = e.get("len") {
            assert_eq!(
                v.as_array().unwrap().len() as u64,
                len.as_u64().unwrap(),
                "{k}"
            );
            assert!(meta_matches_json(v, &e["first"]), "{k}");
        } else {
            assert!(
                meta_matches_json(v, &e["value"]),
                "{k}: {v:?} vs {}",
                e["value"]
            );
            if let MetaValue::Array(a) = v {
                assert_eq!(a.len(), e["value"].as_array().unwrap().len(), "{k}");
            }
        }
    }
    assert_eq!(f.get_u64("llama.embedding_length").unwrap(), Some(576));
    assert_eq!(
        f.get_f64("llama.attention.layer_norm_rms_epsilon").unwrap(),
        Some(9.999999747378752e-06)
    );
    assert_eq!(
        f.get_str_array("tokenizer.ggml.merges")
            .unwrap()
            .unwrap()
            .len(),
        48900
    );
    let types = f
        .get_i64_array("tokenizer.ggml.token_type")
        .unwrap()
        .unwrap();
    assert_eq!(types.iter().filter(|&&t| t == 3).count(), 17);

    let gt = g["tensors"].as_array().unwrap();
    assert_eq!(gt.len(), f.tensors.len());
    for (t, e) in f.tensors.iter().zip(gt) {
        assert_eq!(t.name, e["name"].as_str().unwrap());
        assert_eq!(
            t.ggml_type.name(),
            e["ggml_type"].as_str().unwrap(),
            "{}",
            t.name
        );
        let ne: Vec<u64> = e["ne"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, ne, "{}", t.name);
        assert_eq!(t.n_elements(), e["n_elements"].as_u64().unwrap());
        assert_eq!(t.size, e["n_bytes"].as_u64().unwrap());
        assert_eq!(
            f.data_offset + t.offset,
            e["data_offset"].as_u64().unwrap(),
            "{}",
            t.name
        );
    }
    assert!(
        f.tensor("output.weight").is_none(),
        "SmolLM2 ties its LM head"
    );
}

/// Reading the real file and writing it back with the writer gives the same bytes: the
/// writer's layout is the one the llama.cpp converter produced.
#[test]
fn smollm2_rewrites_byte_identical() {
    let Some(path) = common::model_or_skip() else {
        return;
    };
    let f = GgufFile::open(&path).unwrap();
    let mut w = GgufWriter::new().version(f.version);
    for (k, v) in &f.metadata {
        w.add_meta(k.clone(), v.clone());
    }
    for t in &f.tensors {
        w.add_tensor(t.name.clone(), &t.dims, t.ggml_type, f.tensor_data(t));
    }
    w.validate().unwrap();
    let out = w.to_bytes();
    assert_eq!(out.len(), f.bytes().len());
    let first_diff = out.iter().zip(f.bytes()).position(|(a, b)| a != b);
    assert_eq!(first_diff, None);
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// gguf-py's dequantisation of real Q4_1/Q8_0 blocks, bit for bit; the raw bytes are in the
/// golden, so this runs without the model (with it, the bytes are also checked against it).
#[test]
fn smollm2_dequant_blocks_exact() {
    let g = golden("dequant_blocks.json");
    let model = common::model_or_skip().map(|p| GgufFile::open(&p).unwrap());
    let samples = g["samples"].as_array().unwrap();
    assert!(samples.len() >= 4);
    for s in samples {
        let name = s["tensor"].as_str().unwrap();
        let t = match s["ggml_type"].as_str().unwrap() {
            "Q4_1" => GgmlType::Q4_1,
            "Q8_0" => GgmlType::Q8_0,
            other => panic!("unexpected type {other}"),
        };
        let (be, bb) = t.block_layout().unwrap();
        assert_eq!(s["block_elems"].as_u64().unwrap() as usize, be);
        assert_eq!(s["block_bytes"].as_u64().unwrap() as usize, bb);
        let n_blocks = s["n_blocks"].as_u64().unwrap() as usize;
        let raw = hex(s["raw_hex"].as_str().unwrap());
        assert_eq!(raw.len(), n_blocks * bb);
        let want: Vec<f32> = s["dequantized"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(want.len(), n_blocks * be);
        let got = dequantize(t, &raw, n_blocks * be).unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name} element {i}: {a} vs {b}");
        }
        if let Some(f) = &model {
            let info = f.tensor(name).unwrap();
            assert_eq!(info.ggml_type, t);
            let row_elems = s["row_elems"].as_u64().unwrap();
            assert_eq!(info.dims[0], row_elems);
            let row_bytes = (row_elems as usize / be) * bb;
            let start = s["first_row"].as_u64().unwrap() as usize * row_bytes;
            assert_eq!(
                &f.tensor_data(info)[start..start + raw.len()],
                raw.as_slice(),
                "{name}"
            );
        }
    }
}

/// Hand-built Q4_0 blocks against the values gguf-py's `dequantize` (and ggml's
/// `dequantize_row_q4_0`) give them, worked out by hand from the format: an f16 `d`, then 16
/// bytes whose low nibbles are elements 0..15 and high nibbles elements 16..31, each value
/// `d * (q - 8)`. (The SmolLM2 file has no Q4_0 tensor for a golden; a quantise/dequantise
/// round trip alone would pass a convention error shared by both.) Checked bit for bit through
/// `dequantize` and through the GPU planes (`pack` / `unpack`) in two row layouts.
#[test]
fn q4_0_hand_built_blocks_dequantize_as_ggml() {
    let blocks: [(u16, [u8; 16]); 4] = [
        // d = 0.5; byte j = j | (15 - j) << 4.
        (
            0x3800,
            [
                0xF0, 0xE1, 0xD2, 0xC3, 0xB4, 0xA5, 0x96, 0x87, 0x78, 0x69, 0x5A, 0x4B, 0x3C, 0x2D,
                0x1E, 0x0F,
            ],
        ),
        // d = -5.0 (0 * d is -0.0).
        (
            0xC500,
            [
                0x08, 0x80, 0x00, 0xFF, 0x7F, 0xF7, 0x19, 0x91, 0x2E, 0xE2, 0x3C, 0xC3, 0x4A, 0xA4,
                0x5B, 0xB5,
            ],
        ),
        // d = 2^-24, the smallest subnormal f16.
        (
            0x0001,
            [
                0x0F, 0xF0, 0x0F, 0xF0, 0x0F, 0xF0, 0x0F, 0xF0, 0x0F, 0xF0, 0x0F, 0xF0, 0x0F, 0xF0,
                0x0F, 0xF0,
            ],
        ),
        // d = 0x3555 = 1365/4096 = 0.333251953125.
        (
            0x3555,
            [
                0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC, 0xFE, 0x10, 0x32, 0x54, 0x76, 0x98, 0xBA,
                0xDC, 0xFE,
            ],
        ),
    ];
    // 7 d and -8 d for d = 2^-24.
    let (s, t) = (7.0 / 16_777_216.0f32, -8.0 / 16_777_216.0f32);
    // Block 3's d = 1365/4096 times q - 8 of its low nibbles 0 2 4 .. E and high 1 3 5 .. F.
    let third = |qs: [i32; 8]| qs.map(|q| q as f32 * (1365.0 / 4096.0));
    let (third, third_hi) = (
        third([-8, -6, -4, -2, 0, 2, 4, 6]),
        third([-7, -5, -3, -1, 1, 3, 5, 7]),
    );
    let want: Vec<f32> = [
        // Block 0: low nibbles 0..15, high nibbles 15..0, times 0.5.
        vec![
            -4.0, -3.5, -3.0, -2.5, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5,
            3.5, 3.0, 2.5, 2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -2.5, -3.0, -3.5, -4.0,
        ],
        // Block 1: q - 8 of the low nibbles 8 0 0 F F 7 9 1 E 2 C 3 A 4 B 5, then of the high
        // nibbles 0 8 0 F 7 F 1 9 2 E 3 C 4 A 5 B, times -5.
        vec![
            -0.0, 40.0, 40.0, -35.0, -35.0, 5.0, -5.0, 35.0, -30.0, 30.0, -20.0, 25.0, -10.0, 20.0,
            -15.0, 15.0, 40.0, -0.0, 40.0, -35.0, 5.0, -35.0, 35.0, -5.0, 30.0, -30.0, 25.0, -20.0,
            20.0, -10.0, 15.0, -15.0,
        ],
        // Block 2: 7 d, -8 d alternating, then -8 d, 7 d.
        [s, t]
            .repeat(8)
            .into_iter()
            .chain([t, s].repeat(8))
            .collect(),
        // Block 3: low nibbles 0 2 4 .. E, high 1 3 5 .. F, twice each.
        third
            .repeat(2)
            .into_iter()
            .chain(third_hi.repeat(2))
            .collect(),
    ]
    .concat();
    let mut bytes = Vec::new();
    for (d, qs) in &blocks {
        bytes.extend(d.to_le_bytes());
        bytes.extend(qs);
    }
    assert_eq!(bytes.len(), 4 * 18);
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let got = dequantize(GgmlType::Q4_0, &bytes, 128).unwrap();
    assert_eq!(bits(&got), bits(&want), "dequantize: {got:?}");
    // The GPU planes: d pairs per scales word, across rows.
    for (n, k) in [(1, 128), (2, 64), (4, 32)] {
        let packed = wick::quant::pack(wick::quant::WeightFormat::Q4_0, &bytes, n, k).unwrap();
        let planes = wick::quant::unpack(&packed);
        assert_eq!(bits(&planes), bits(&want), "pack/unpack {n} x {k}");
    }
}
