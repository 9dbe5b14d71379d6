//! The token ring: small mappable buffers that each decode step's chosen `[id, flags]` pair
//! is copied into, so the CPU reads token t while step t+1 already runs.

use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Number of mappable 8-byte slots the token ids are copied into.
pub const RING: usize = 4;

struct Slot {
    buf: wgpu::Buffer,
    rx: Option<mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>,
    /// The submission that fills this slot: waiting for it (not for the latest submission)
    /// keeps the look-ahead step running while the CPU reads this one.
    submission: Option<wgpu::SubmissionIndex>,
}

/// [`RING`] slots, used round-robin by the decode steps.
pub struct TokenRing {
    slots: Vec<Slot>,
}

impl TokenRing {
    pub fn new(gpu: &Gpu) -> Result<TokenRing> {
        let mut slots = Vec::with_capacity(RING);
        for i in 0..RING {
            let buf = gpu.scoped(|| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("token ring {i}")),
                    size: 8,
                    usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                })
            })?;
            slots.push(Slot {
                buf,
                rx: None,
                submission: None,
            });
        }
        Ok(TokenRing { slots })
    }

    /// Records the copy of the 8-byte `token` pair into `slot`.
    pub fn copy_into(&self, enc: &mut wgpu::CommandEncoder, token: &wgpu::Buffer, slot: usize) {
        enc.copy_buffer_to_buffer(token, 0, &self.slots[slot].buf, 0, 8);
    }

    /// Maps `slot` once `submission` (which fills it) completes.
    pub fn map(&mut self, gpu: &Gpu, slot: usize, submission: wgpu::SubmissionIndex) {
        let (tx, rx) = mpsc::channel();
        let s = &mut self.slots[slot];
        s.submission = Some(submission);
        s.buf.map_async(wgpu::MapMode::Read, .., move |r| {
            let _ = tx.send(r);
        });
        s.rx = Some(rx);
        gpu.memory.step_started();
    }

    /// Reads `slot`, blocking only if the GPU has not finished it yet; also says whether the
    /// CPU had to wait.
    pub fn read(&mut self, gpu: &Gpu, slot: usize) -> Result<([u32; 2], bool)> {
        // A failure here after the device was lost is reported as the loss.
        let fail = |m: String| gpu.lost_or(Error::Gpu(m));
        let s = &mut self.slots[slot];
        let rx =
            s.rx.take()
                .ok_or_else(|| Error::Gpu("token ring slot read twice".into()))?;
        gpu.memory.step_finished();
        let _ = gpu.device.poll(wgpu::PollType::Poll);
        let (res, waited) = match rx.try_recv() {
            Ok(r) => (r, false),
            Err(_) => {
                let submission_index = s.submission.take();
                gpu.device
                    .poll(wgpu::PollType::Wait {
                        submission_index,
                        timeout: None,
                    })
                    .map_err(|e| fail(format!("waiting for the GPU: {e}")))?;
                let r = rx
                    .recv_timeout(Duration::from_secs(60))
                    .map_err(|_| fail("the GPU did not return a token".into()))?;
                (r, true)
            }
        };
        res.map_err(|e| fail(format!("reading a token: {e}")))?;
        let pair = {
            let view = s
                .buf
                .get_mapped_range(..)
                .map_err(|e| fail(format!("reading a token: {e}")))?;
            let word =
                |i: usize| u32::from_le_bytes([view[i], view[i + 1], view[i + 2], view[i + 3]]);
            [word(0), word(4)]
        };
        s.buf.unmap();
        gpu.check()?;
        Ok((pair, waited))
    }
}
