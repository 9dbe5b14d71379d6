//! The token ring: small mappable buffers that each decode step's chosen `[id, flags]` pairs
//! (one per sequence of the step) are copied into, so the CPU reads token t while step t+1
//! already runs.

use std::sync::mpsc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::gpu::Gpu;

/// Number of mappable slots the token ids are copied into.
pub const RING: usize = 4;

struct Slot {
    buf: wgpu::Buffer,
    rx: Option<mpsc::Receiver<std::result::Result<(), wgpu::BufferAsyncError>>>,
    /// The submission that fills this slot: waiting for it (not for the latest submission)
    /// keeps the look-ahead step running while the CPU reads this one.
    submission: Option<wgpu::SubmissionIndex>,
}

/// [`RING`] slots of `pairs` `[id, flags]` pairs each, used round-robin by the decode steps.
pub struct TokenRing {
    slots: Vec<Slot>,
    pairs: usize,
}

impl TokenRing {
    /// A ring of one pair per slot (one sequence).
    pub fn new(gpu: &Gpu) -> Result<TokenRing> {
        Self::with_pairs(gpu, 1)
    }

    /// A ring of `pairs` pairs per slot (a batched step's sequences).
    pub fn with_pairs(gpu: &Gpu, pairs: usize) -> Result<TokenRing> {
        let pairs = pairs.max(1);
        let mut slots = Vec::with_capacity(RING);
        for i in 0..RING {
            let buf = gpu.scoped(|| {
                gpu.device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some(&format!("token ring {i}")),
                    size: 8 * pairs as u64,
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
        Ok(TokenRing { slots, pairs })
    }

    /// Records the copy of the 8-byte `token` pair into `slot`.
    pub fn copy_into(&self, enc: &mut wgpu::CommandEncoder, token: &wgpu::Buffer, slot: usize) {
        self.copy_pair_into(enc, token, slot, 0);
    }

    /// Records the copy of the 8-byte `token` pair into pair `index` of `slot`.
    pub fn copy_pair_into(
        &self,
        enc: &mut wgpu::CommandEncoder,
        token: &wgpu::Buffer,
        slot: usize,
        index: usize,
    ) {
        debug_assert!(index < self.pairs);
        enc.copy_buffer_to_buffer(token, 0, &self.slots[slot].buf, 8 * index as u64, 8);
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

    /// Reads pair 0 of `slot`, blocking only if the GPU has not finished it yet; also says
    /// whether the CPU had to wait.
    pub fn read(&mut self, gpu: &Gpu, slot: usize) -> Result<([u32; 2], bool)> {
        let (pairs, waited) = self.read_pairs(gpu, slot)?;
        Ok((pairs[0], waited))
    }

    /// Reads every pair of `slot` (pairs no step wrote hold stale values), blocking only if
    /// the GPU has not finished it yet; also says whether the CPU had to wait.
    pub fn read_pairs(&mut self, gpu: &Gpu, slot: usize) -> Result<(Vec<[u32; 2]>, bool)> {
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
        let pairs = {
            let view = s
                .buf
                .get_mapped_range(..)
                .map_err(|e| fail(format!("reading a token: {e}")))?;
            let word =
                |i: usize| u32::from_le_bytes([view[i], view[i + 1], view[i + 2], view[i + 3]]);
            (0..self.pairs)
                .map(|p| [word(8 * p), word(8 * p + 4)])
                .collect()
        };
        s.buf.unmap();
        gpu.check()?;
        Ok((pairs, waited))
    }
}
