//! Buffer helpers: creation with errors returned (not panics), uploads, poisoning, and
//! blocking readback (for tests and one-off reads; the decode loop never blocks on these).

use bytemuck::Pod;

use super::Gpu;
use crate::error::{Error, Result};

/// Storage buffers wick creates can be bound, copied into and copied out of.
pub const STORAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_DST)
    .union(wgpu::BufferUsages::COPY_SRC);

/// The bit pattern written into outputs before a kernel runs: a quiet NaN as f32, and an
/// implausible id as u32, so an element the kernel forgot to write fails the comparison.
pub const POISON: u32 = 0x7FC0_DEAD;

impl Gpu {
    fn check_size(&self, label: &str, size: u64) -> Result<()> {
        if size > self.caps.max_buffer_size {
            return Err(Error::Gpu(format!(
                "buffer {label:?} of {size} bytes does not fit: the device allows at most {} bytes per buffer",
                self.caps.max_buffer_size
            )));
        }
        Ok(())
    }

    /// An uninitialised storage buffer of `size` bytes (rounded up to 4).
    pub fn storage_buffer(&self, label: &str, size: u64) -> Result<wgpu::Buffer> {
        let size = size.max(4).next_multiple_of(4);
        self.check_size(label, size)?;
        self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage: STORAGE,
                mapped_at_creation: false,
            })
        })
    }

    /// A storage buffer holding `data` (padded with zeros to a multiple of 4 bytes).
    pub fn upload<T: Pod>(&self, label: &str, data: &[T]) -> Result<wgpu::Buffer> {
        let bytes: &[u8] = bytemuck::cast_slice(data);
        self.check_size(label, bytes.len() as u64)?;
        if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
            let mut padded = bytes.to_vec();
            padded.resize(bytes.len().max(4).next_multiple_of(4), 0);
            return self.upload_bytes(label, &padded);
        }
        self.upload_bytes(label, bytes)
    }

    fn upload_bytes(&self, label: &str, bytes: &[u8]) -> Result<wgpu::Buffer> {
        self.buffer_init(label, bytes, STORAGE)
    }

    /// A buffer created mapped and filled with `bytes` (a multiple of 4, non-empty). wgpu's
    /// `create_buffer_init` panics when the mapping fails (the device is lost, or the
    /// allocation failed); this returns that failure as the error it is.
    fn buffer_init(
        &self,
        label: &str,
        bytes: &[u8],
        usage: wgpu::BufferUsages,
    ) -> Result<wgpu::Buffer> {
        let buffer = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: bytes.len() as u64,
                usage,
                mapped_at_creation: true,
            })
        })?;
        {
            let mut view = buffer
                .get_mapped_range_mut(..)
                .map_err(|e| self.lost_or(Error::Gpu(format!("filling buffer {label:?}: {e}"))))?;
            view.copy_from_slice(bytes);
        }
        self.scoped(|| buffer.unmap())?;
        Ok(buffer)
    }

    /// A uniform buffer holding `value`, writable later with [`Gpu::write`].
    pub fn uniform<T: Pod>(&self, label: &str, value: &T) -> Result<wgpu::Buffer> {
        let bytes = bytemuck::bytes_of(value);
        let mut padded = bytes.to_vec();
        padded.resize(bytes.len().max(16).next_multiple_of(16), 0);
        self.buffer_init(
            label,
            &padded,
            wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// Queues a write of `data` at `offset` (bytes) into `buffer`.
    pub fn write<T: Pod>(&self, buffer: &wgpu::Buffer, offset: u64, data: &[T]) {
        self.queue
            .write_buffer(buffer, offset, bytemuck::cast_slice(data));
    }

    /// Fills a whole buffer with the [`POISON`] pattern.
    pub fn poison(&self, buffer: &wgpu::Buffer) {
        let words = (buffer.size() / 4) as usize;
        self.queue
            .write_buffer(buffer, 0, bytemuck::cast_slice(&vec![POISON; words]));
    }

    /// Copies `size` bytes at `offset` out of `buffer` and blocks until they are on the CPU.
    pub fn read_bytes(&self, buffer: &wgpu::Buffer, offset: u64, size: u64) -> Result<Vec<u8>> {
        let padded = size.next_multiple_of(4).max(4);
        let staging = self.scoped(|| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("wick readback"),
                size: padded,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        })?;
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buffer, offset, &staging, 0, padded);
        self.queue.submit([enc.finish()]);
        let (tx, rx) = std::sync::mpsc::channel();
        staging.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        self.wait_idle()?;
        rx.recv()
            .map_err(|_| self.lost_or(Error::Gpu("readback callback never ran".into())))?
            .map_err(|e| self.lost_or(Error::Gpu(format!("mapping a readback buffer: {e}"))))?;
        let view = staging
            .get_mapped_range(..)
            .map_err(|e| self.lost_or(Error::Gpu(format!("mapping a readback buffer: {e}"))))?;
        let out = view[..size as usize].to_vec();
        drop(view);
        staging.unmap();
        Ok(out)
    }

    /// Reads the whole buffer as a vector of `T`.
    pub fn read_vec<T: Pod>(&self, buffer: &wgpu::Buffer) -> Result<Vec<T>> {
        let n = buffer.size() as usize / std::mem::size_of::<T>();
        self.read_range(buffer, 0, n)
    }

    /// Reads `count` elements of `T` starting at element `first`.
    pub fn read_range<T: Pod>(
        &self,
        buffer: &wgpu::Buffer,
        first: usize,
        count: usize,
    ) -> Result<Vec<T>> {
        let sz = std::mem::size_of::<T>();
        let bytes = self.read_bytes(buffer, (first * sz) as u64, (count * sz) as u64)?;
        Ok(bytemuck::pod_collect_to_vec(&bytes))
    }
}
