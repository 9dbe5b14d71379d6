//! Argument checks every family shares.

use crate::error::{Error, Result};

/// Errors unless `buf` holds at least `bytes`, naming the op and the buffer: the one
/// buffer-size check of every host wrapper.
pub fn need_bytes(op: &str, name: &str, buf: &wgpu::Buffer, bytes: u64) -> Result<()> {
    if buf.size() < bytes {
        return Err(Error::Shape(format!(
            "{op}: buffer {name} holds {} bytes, needs {bytes}",
            buf.size()
        )));
    }
    Ok(())
}
