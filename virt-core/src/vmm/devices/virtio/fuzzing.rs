//! Bodies of the cargo-fuzz targets for virtio devices (`fuzz/fuzz_targets/`), here so the stable
//! property tests run exactly the same code.

use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::net::{features, NetWorker};
use super::VirtioInterrupt;
use crate::net::{NetBackend, NetPair, MAX_FRAME_LEN};

/// Guest memory of the virtio-net target: the input fills it.
const MEM: usize = 0x1_0000;

fn queue(mem: &GuestMemoryMmap, base: u64, size: u16, event_idx: bool) -> Option<Queue> {
    let mut q = Queue::new(256).ok()?;
    q.set_size(size);
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q.is_valid(mem).then_some(q)
}

/// virtio-net with hostile rings: the input's first four bytes choose the features, the queue size
/// and the frames the backend delivers; the rest is guest memory (descriptor tables, rings,
/// buffers). Both queues are processed; nothing may panic, hang or allocate without bound.
pub fn virtio_net(data: &[u8]) {
    let Some((ctl, rest)) = data.split_first_chunk::<4>() else { return };
    let mrg = ctl[0] & 1 != 0;
    let event_idx = ctl[0] & 2 != 0;
    let mut acked = 0u64;
    if mrg {
        acked |= 1 << features::MRG_RXBUF;
    }
    if event_idx {
        acked |= 1 << super::VIRTIO_RING_F_EVENT_IDX;
    }
    let size = 1u16 << (ctl[1] % 9);
    let Ok(mem) = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM)]) else { return };
    let _ = mem.write_slice(&rest[..rest.len().min(MEM)], GuestAddress(0));
    let (Some(rx), Some(tx)) = (queue(&mem, 0, size, event_idx), queue(&mem, 0x4000, size, event_idx)) else {
        return;
    };
    let Ok((ours, peer)) = NetPair::new("fuzz", "peer") else { return };
    let frames = usize::from(ctl[2] % 4);
    let mut frame = vec![0u8; MAX_FRAME_LEN];
    for i in 0..frames {
        let len = (usize::from(ctl[3]) * 263 * (i + 1)) % MAX_FRAME_LEN;
        let _ = peer.send(&frame[..len.max(crate::net::VNET_HDR_LEN)]);
    }
    let Ok(irq) = EventFd::new(libc::EFD_NONBLOCK) else { return };
    let mut w = NetWorker::new(Arc::new(ours), mem, rx, tx, VirtioInterrupt::new(Arc::new(irq)), acked);
    w.process_tx();
    w.process_rx();
    w.process_rx();
    while let Ok(Some(_)) = peer.recv(&mut frame) {}
}
