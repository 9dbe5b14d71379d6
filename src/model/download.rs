//! HTTPS downloads that land in the cache only complete and verified.
//!
//! Trust: the platform's certificate store (the system bundle on Linux, the keychain on macOS,
//! the certificate store on Windows), replaced by `SSL_CERT_FILE` / `SSL_CERT_DIR` when either
//! is set, as OpenSSL, curl and pip do — so a network whose proxy re-signs TLS with its own CA
//! works once that CA is in the system store or in `SSL_CERT_FILE`.

use std::error::Error as StdError;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Downloads `url` to `dest`, which appears (by an atomic rename) only when complete and
/// hashing to `sha256` (hex); a `dest` that already hashes so is kept without a request, one
/// that does not is replaced. Bytes go to `dest` + `.part` first. A `.part` left by an
/// interrupted run is resumed with a range request (restarted when the server ignores
/// ranges); if the result then fails the checksum, it is fetched once more from the start. On
/// a checksum failure nothing is left behind; on a network failure the `.part` stays for the
/// next attempt to resume.
pub fn download_verified(url: &str, dest: &Path, sha256: &str) -> Result<()> {
    let expected = sha256.trim().to_ascii_lowercase();
    if expected.len() != 64 || !expected.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidArgument(format!(
            "{sha256:?} is not a sha256 digest (64 hex digits)"
        )));
    }
    if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    // Already there and whole (say, a crash came after the rename): nothing to fetch.
    if let Ok(len) = std::fs::metadata(dest).map(|m| m.len()) {
        if hash_existing(dest, len)?.digest == expected {
            return Ok(());
        }
    }
    let part = part_path(dest);
    let agent = http_agent()?;
    let mut fetched = fetch_into(&agent, url, &part, true)?;
    if fetched.digest != expected && fetched.resumed_from > 0 {
        // The stale .part was not a prefix of this file: start over.
        remove_if_present(&part)?;
        fetched = fetch_into(&agent, url, &part, false)?;
    }
    if fetched.digest != expected {
        remove_if_present(&part)?;
        return Err(Error::Download(format!(
            "{url}: sha256 mismatch: expected {expected}, got {} ({} bytes); nothing was kept",
            fetched.digest, fetched.len
        )));
    }
    std::fs::rename(&part, dest).map_err(|e| Error::io(dest, e))
}

/// GETs `url`, asking for the media type `accept`, and parses the body as JSON (for small
/// index documents such as PyPI's).
pub fn get_json(url: &str, accept: &str) -> Result<serde_json::Value> {
    let agent = http_agent()?;
    let body = agent
        .get(url)
        .header("Accept", accept)
        .call()
        .map_err(|e| transfer_error(url, &e))?
        .body_mut()
        .read_to_string()
        .map_err(|e| transfer_error(url, &e))?;
    serde_json::from_str(&body).map_err(|e| Error::Download(format!("{url}: not JSON: {e}")))
}

/// `dest` with `.part` appended to its file name.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

/// Describes a failed transfer for a user: a certificate problem says so and names
/// `SSL_CERT_FILE`; anything else is the client's own message.
pub fn transfer_error(url: &str, err: &(dyn StdError + 'static)) -> Error {
    let detail = match tls_error(err) {
        Some(rustls::Error::InvalidCertificate(problem)) => format!(
            "the server's certificate is not trusted ({problem:?}); if your network uses a \
             proxy with its own CA, point SSL_CERT_FILE at a PEM file holding that CA (wick \
             trusts the system's certificate store, or SSL_CERT_FILE / SSL_CERT_DIR when set)"
        ),
        Some(tls) => format!("TLS: {tls}"),
        None => err.to_string(),
    };
    Error::Download(format!("{url}: {detail}"))
}

/// The TLS error somewhere in a client error's chain: ureq 3 keeps it in its `Rustls` and
/// `Io` variants, ureq 2 (under hf-hub) in its source chain, both often inside an
/// `io::Error`, whose `source()` skips the error it wraps.
fn tls_error<'a>(err: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        next = if let Some(u) = e.downcast_ref::<ureq::Error>() {
            match u {
                ureq::Error::Rustls(tls) => return Some(tls),
                ureq::Error::Io(io) => Some(io as &(dyn StdError + 'static)),
                _ => None,
            }
        } else if let Some(io) = e.downcast_ref::<std::io::Error>() {
            match io.get_ref() {
                Some(inner) => Some(inner as &(dyn StdError + 'static)),
                None => None,
            }
        } else {
            e.source()
        };
    }
    None
}

/// A client that trusts the platform store (or `SSL_CERT_FILE` / `SSL_CERT_DIR`), read now,
/// so a changed environment applies to the next download.
fn http_agent() -> Result<ureq::Agent> {
    let found = rustls_native_certs::load_native_certs();
    let roots: Vec<ureq::tls::Certificate<'static>> = found
        .certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if roots.is_empty() {
        let why: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
        return Err(Error::Download(format!(
            "no trusted certificates found in the system's certificate store or in \
             SSL_CERT_FILE / SSL_CERT_DIR{}; point SSL_CERT_FILE at a PEM bundle of CA \
             certificates",
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({})", why.join("; "))
            }
        )));
    }
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&roots))
        .build();
    // Time limits for a stalled network, not for a slow one: each read may wait a minute.
    Ok(ureq::Agent::config_builder()
        .tls_config(tls)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent())
}

/// What one transfer left in the `.part` file.
struct Fetched {
    digest: String,
    len: u64,
    resumed_from: u64,
}

/// Fetches `url` into `part`, appending to what is there when `resume` and the server honours
/// the range; otherwise from the start. Returns the sha256 of the whole file.
fn fetch_into(agent: &ureq::Agent, url: &str, part: &Path, resume: bool) -> Result<Fetched> {
    let have = match std::fs::metadata(part) {
        Ok(m) if resume => m.len(),
        _ => 0,
    };
    // Identity encoding: range offsets then count the bytes that land in the file.
    let get = |range: Option<String>| {
        let request = agent.get(url).header("Accept-Encoding", "identity");
        match range {
            Some(r) => request.header("Range", r).call(),
            None => request.call(),
        }
    };
    let mut response = match get((have > 0).then(|| format!("bytes={have}-"))) {
        // The .part is already the whole file (or longer than it): verify it as it is, and
        // let the checksum decide.
        Err(ureq::Error::StatusCode(416)) if have > 0 => {
            return hash_existing(part, have);
        }
        r => r.map_err(|e| transfer_error(url, &e))?,
    };
    let resumed = have > 0
        && response.status() == 206
        && response
            .headers()
            .get("content-range")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(&format!("bytes {have}-")));
    if !resumed && response.status() == 206 {
        // A part other than the one asked for: ask for the whole file instead.
        response = get(None).map_err(|e| transfer_error(url, &e))?;
    }
    let (mut file, mut hasher, resumed_from) = if resumed {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .open(part)
            .map_err(|e| Error::io(part, e))?;
        let hasher = hash_prefix(&mut file, part, have)?;
        (file, hasher, have)
    } else {
        let file = File::create(part).map_err(|e| Error::io(part, e))?;
        (file, Sha256::new(), 0)
    };
    let body_len = response.body().content_length();
    let bar = indicatif::ProgressBar::new(resumed_from + body_len.unwrap_or(0));
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_position(resumed_from);
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 20];
    let mut len = resumed_from;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) => {
                bar.abandon();
                // What arrived is kept for the next attempt to resume.
                file.flush().map_err(|e| Error::io(part, e))?;
                return Err(transfer_error(url, &e));
            }
        };
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| Error::io(part, e))?;
        len += n as u64;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    file.sync_all().map_err(|e| Error::io(part, e))?;
    if let Some(expected) = body_len.filter(|&b| b != len - resumed_from) {
        return Err(Error::Download(format!(
            "{url}: the connection ended after {} of {expected} bytes; run again to resume",
            len - resumed_from
        )));
    }
    Ok(Fetched {
        digest: hex(hasher),
        len,
        resumed_from,
    })
}

/// Hashes the first `len` bytes of `file` and leaves it positioned at its end.
fn hash_prefix(file: &mut File, path: &Path, len: u64) -> Result<Sha256> {
    file.seek(SeekFrom::Start(0))
        .map_err(|e| Error::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut prefix = Read::take(&mut *file, len);
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    loop {
        let n = prefix.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        copied += n as u64;
    }
    if copied != len {
        return Err(Error::io(
            path,
            std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "shrank while resuming"),
        ));
    }
    Ok(hasher)
}

fn hash_existing(path: &Path, len: u64) -> Result<Fetched> {
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let hasher = hash_prefix(&mut file, path, len)?;
    Ok(Fetched {
        digest: hex(hasher),
        len,
        resumed_from: len,
    })
}

fn hex(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn remove_if_present(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(Error::io(path, e)),
        _ => Ok(()),
    }
}
