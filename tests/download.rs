//! Downloads against a local HTTPS server whose certificate is signed by a throwaway CA: trust
//! through `SSL_CERT_FILE` / `SSL_CERT_DIR`, a plain error naming the certificate problem and
//! `SSL_CERT_FILE` without it, and nothing corrupt left in the cache after a checksum mismatch
//! or a connection dropped mid-body. No network, no GPU.
//!
//! Trust comes from process-global environment variables, so every in-process case runs in one
//! `#[test]`, in order; the `hf:` cases run the wick binary with its own environment.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};

use wick::model::download::{download_verified, part_path};
use wick::Error;

/// A commit id for the `hf:` responses (hf-hub files downloads under it).
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Proxy variables would send requests for 127.0.0.1 elsewhere.
const PROXY_VARS: [&str; 6] = [
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
];

/// A throwaway CA, written as PEM into a directory of its own (for `SSL_CERT_DIR`) and as a
/// file (for `SSL_CERT_FILE`).
struct TestCa {
    pem_file: PathBuf,
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
    der: CertificateDer<'static>,
}

fn make_ca(name: &str, root: &Path) -> TestCa {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("wick test CA {name}"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key).unwrap();
    let dir = root.join(format!("{name}-dir"));
    std::fs::create_dir_all(&dir).unwrap();
    let pem_file = root.join(format!("{name}.pem"));
    std::fs::write(&pem_file, cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
    TestCa {
        pem_file,
        dir,
        issuer: Issuer::new(params, key),
        der: cert.der().clone(),
    }
}

/// One request the server saw: its path and `Range` header.
#[derive(Debug, Clone, PartialEq)]
struct Seen {
    path: String,
    range: Option<String>,
}

/// An HTTPS server on 127.0.0.1 serving `body` at every path, honouring `Range: bytes=A-[B]`.
/// Paths under `/norange/` ignore ranges; a path under `/drop-once/` ends its first response
/// halfway through the body without closing TLS. Responses carry the headers hf-hub reads.
struct Server {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn start(ca: &TestCa, body: Arc<Vec<u8>>) -> Server {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        let leaf = params.signed_by(&key, &ca.issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone(), ca.der.clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let dropped = Arc::new(Mutex::new(HashMap::<String, bool>::new()));
        {
            let seen = seen.clone();
            std::thread::spawn(move || {
                for tcp in listener.incoming().flatten() {
                    let (config, body, seen, dropped) =
                        (config.clone(), body.clone(), seen.clone(), dropped.clone());
                    std::thread::spawn(move || {
                        // Handshake failures (an untrusting client) end here, as they should.
                        let _ = serve(tcp, config, &body, &seen, &dropped);
                    });
                }
            });
        }
        Server { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.addr)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    body: &[u8],
    seen: &Mutex<Vec<Seen>>,
    dropped: &Mutex<HashMap<String, bool>>,
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte)? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let range = head.lines().find_map(|l| {
        let (name, value) = l.split_once(':')?;
        name.eq_ignore_ascii_case("range")
            .then(|| value.trim().to_string())
    });
    seen.lock().unwrap().push(Seen {
        path: path.clone(),
        range: range.clone(),
    });

    let len = body.len();
    let honoured = range.filter(|_| !path.starts_with("/norange/"));
    let span = honoured.as_deref().and_then(|r| {
        let (a, b) = r.strip_prefix("bytes=")?.split_once('-')?;
        let a: usize = a.parse().ok()?;
        let b: usize = if b.is_empty() {
            len - 1
        } else {
            b.parse().ok()?
        };
        Some((a, b.min(len - 1)))
    });
    let common = format!(
        "ETag: \"{}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n",
        sha_hex(body)
    );
    let (status, start, end) = match span {
        Some((a, _)) if a >= len => {
            let msg = format!(
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n{common}\r\n"
            );
            tls.write_all(msg.as_bytes())?;
            tls.conn.send_close_notify();
            return tls.flush();
        }
        Some((a, b)) => ("206 Partial Content", a, b + 1),
        None => ("200 OK", 0, len),
    };
    let mut msg = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\n{common}",
        end - start
    );
    if span.is_some() {
        msg += &format!("Content-Range: bytes {start}-{}/{len}\r\n", end - 1);
    }
    msg += "\r\n";
    tls.write_all(msg.as_bytes())?;
    let drop_now = path.starts_with("/drop-once/")
        && !dropped
            .lock()
            .unwrap()
            .insert(path.clone(), true)
            .unwrap_or(false);
    if drop_now {
        // Half the body, then the socket closes with no TLS close_notify: a cut connection.
        tls.write_all(&body[start..start + (end - start) / 2])?;
        tls.flush()?;
        return Ok(());
    }
    tls.write_all(&body[start..end])?;
    tls.conn.send_close_notify();
    tls.flush()
}

fn sha_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Trust exactly what is given (the variables replace the system store when set).
fn trust(file: Option<&Path>, dir: Option<&Path>) {
    for (var, value) in [("SSL_CERT_FILE", file), ("SSL_CERT_DIR", dir)] {
        match value {
            Some(v) => std::env::set_var(var, v),
            None => std::env::remove_var(var),
        }
    }
}

fn random_body(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    (0..len).map(|_| rng.random()).collect()
}

fn expect_download_error(r: wick::Result<()>, what: &str) -> String {
    match r {
        Err(Error::Download(msg)) => msg,
        other => panic!("{what}: expected a download error, got {other:?}"),
    }
}

#[test]
fn download_trust_checksum_and_interruption() {
    for var in PROXY_VARS {
        std::env::remove_var(var);
    }
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca("served", tmp.path());
    let other = make_ca("other", tmp.path());
    let seed = rand::rng().random();
    // Several TLS records and several reads of the client's buffer.
    let body = Arc::new(random_body(seed, (3 << 20) + 12345));
    let sha = sha_hex(&body);
    let server = Server::start(&ca, body.clone());
    let cache = tmp.path().join("cache");
    let dest = |name: &str| cache.join(name);

    // 1. The CA is not trusted: a plain certificate error naming SSL_CERT_FILE, and no file.
    trust(Some(&other.pem_file), None);
    let d = dest("untrusted.bin");
    let msg = expect_download_error(
        download_verified(&server.url("/plain/a"), &d, &sha),
        "untrusted CA",
    );
    assert!(
        msg.contains("certificate is not trusted (UnknownIssuer)") && msg.contains("SSL_CERT_FILE"),
        "the error should name the certificate problem and SSL_CERT_FILE: {msg}"
    );
    assert!(!d.exists() && !part_path(&d).exists());

    // 2. The CA in SSL_CERT_FILE: the file arrives whole, with no .part left.
    trust(Some(&ca.pem_file), None);
    let d = dest("trusted-file.bin");
    download_verified(&server.url("/plain/a"), &d, &sha).unwrap();
    assert_eq!(std::fs::read(&d).unwrap(), *body);
    assert!(!part_path(&d).exists());

    // A verified file already in place is kept without a request; a wrong one is replaced.
    server.clear();
    download_verified(&server.url("/plain/a"), &d, &sha).unwrap();
    assert!(server.seen().is_empty());
    std::fs::write(&d, b"not the file").unwrap();
    download_verified(&server.url("/plain/a"), &d, &sha).unwrap();
    assert_eq!(std::fs::read(&d).unwrap(), *body);
    assert_eq!(server.seen().len(), 1);

    // 3. The CA through SSL_CERT_DIR alone.
    trust(None, Some(&ca.dir));
    let d = dest("trusted-dir.bin");
    download_verified(&server.url("/plain/a"), &d, &sha).unwrap();
    assert_eq!(std::fs::read(&d).unwrap(), *body);
    trust(Some(&ca.pem_file), None);

    // 4. A sha256 mismatch leaves nothing behind, not even the .part.
    let d = dest("mismatch.bin");
    let wrong = sha_hex(b"something else");
    let msg = expect_download_error(
        download_verified(&server.url("/plain/a"), &d, &wrong),
        "sha256 mismatch",
    );
    assert!(msg.contains("sha256 mismatch"), "{msg}");
    assert!(!d.exists() && !part_path(&d).exists());

    // 5. A connection cut mid-body: no file in the cache; the next attempt resumes from what
    // arrived and the result is whole.
    server.clear();
    let d = dest("dropped.bin");
    expect_download_error(
        download_verified(&server.url("/drop-once/a"), &d, &sha),
        "cut connection",
    );
    assert!(!d.exists(), "a cut download must not reach the cache");
    let kept = std::fs::metadata(part_path(&d))
        .map(|m| m.len())
        .unwrap_or(0);
    assert!(
        kept > 0 && kept < body.len() as u64,
        "the .part should hold what arrived before the cut: {kept} bytes"
    );
    download_verified(&server.url("/drop-once/a"), &d, &sha).unwrap();
    assert_eq!(std::fs::read(&d).unwrap(), *body);
    assert!(!part_path(&d).exists());
    let seen = server.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].range.as_deref(), Some(&*format!("bytes={kept}-")));

    // 6. A stale .part that is not a prefix of the file (an earlier crash, another file):
    // resumed, found wrong by the checksum, fetched again from the start.
    server.clear();
    let d = dest("stale-garbage.bin");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(part_path(&d), random_body(seed ^ 1, 4096)).unwrap();
    download_verified(&server.url("/plain/b"), &d, &sha).unwrap();
    assert_eq!(std::fs::read(&d).unwrap(), *body);
    let ranges: Vec<_> = server.seen().into_iter().map(|s| s.range).collect();
    assert_eq!(ranges, [Some("bytes=4096-".to_string()), None]);

    // 7. A server that ignores ranges: the .part is rewritten from the start.
    let d = dest("no-range.bin");
    std::fs::write(part_path(&d), &body[..1000]).unwrap();
    download_verified(&server.url("/norange/a"), &d, &sha).unwrap();
    assert_eq!(std::fs::read(&d).unwrap(), *body);

    // 8. A .part that is already whole (a crash before the rename): the server answers 416,
    // the .part verifies and becomes the file.
    server.clear();
    let d = dest("complete-part.bin");
    std::fs::write(part_path(&d), &*body).unwrap();
    download_verified(&server.url("/plain/c"), &d, &sha).unwrap();
    assert_eq!(std::fs::read(&d).unwrap(), *body);
    assert_eq!(server.seen().len(), 1);

    // 9. A malformed digest is refused before any request.
    assert!(matches!(
        download_verified(&server.url("/plain/a"), &dest("x"), "abc"),
        Err(Error::InvalidArgument(_))
    ));
}

/// `hf:` sources go through hf-hub's own client (ureq 2): the same trust and the same error.
/// Runs the wick binary with `HF_ENDPOINT` at the local server; `wick synth --tokenizer-from`
/// resolves the source before anything needs a GPU.
#[test]
fn hf_source_trusts_ssl_cert_file() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = make_ca("served", tmp.path());
    let other = make_ca("other", tmp.path());
    let body = Arc::new(random_body(rand::rng().random(), 200_000));
    let server = Server::start(&ca, body.clone());
    let hf_home = tmp.path().join("hf");
    let wick = |cert_file: &Path| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_wick"));
        cmd.args(["synth", "--preset", "smollm2-135m", "--tokenizer-from"])
            .arg("hf:wick-test/tiny:model.gguf")
            .arg("-o")
            .arg(tmp.path().join("out.gguf"))
            .env("HF_ENDPOINT", server.url(""))
            .env("HF_HOME", &hf_home)
            .env("WICK_CACHE_DIR", tmp.path().join("wick-cache"))
            .env("SSL_CERT_FILE", cert_file)
            .env_remove("SSL_CERT_DIR")
            .env_remove("HF_TOKEN");
        for var in PROXY_VARS {
            cmd.env_remove(var);
        }
        let out = cmd.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let snapshot = hf_home
        .join("hub/models--wick-test--tiny/snapshots")
        .join(COMMIT)
        .join("model.gguf");

    let (ok, stderr) = wick(&other.pem_file);
    assert!(!ok);
    assert!(
        stderr.contains("certificate is not trusted (UnknownIssuer)")
            && stderr.contains("SSL_CERT_FILE"),
        "the error should name the certificate problem and SSL_CERT_FILE: {stderr}"
    );
    assert!(!snapshot.exists());

    // Trusted: the file arrives whole. (wick then rejects the random bytes as a GGUF, which
    // is not what is under test.)
    let (_, stderr) = wick(&ca.pem_file);
    assert!(!stderr.contains("certificate"), "{stderr}");
    assert_eq!(
        std::fs::read(&snapshot).unwrap_or_default(),
        *body,
        "hf: download did not arrive whole: {stderr}"
    );
}
