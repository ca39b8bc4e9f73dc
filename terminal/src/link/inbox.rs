//! Received messages on their way from the link to its owner, buffered so that a busy owner
//! does not stop the link reading from the broker.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Incoming;

/// Received messages on their way from the poll task to the owner: the poll task hands each
/// over at once while the bytes waiting fit the buffer; a task of its own feeds the owner's
/// channel at the owner's pace, in the order received.
pub(super) struct Inbox {
    queue: mpsc::UnboundedSender<(Incoming, u32)>,
    /// Room left in the buffer, in KiB.
    room: Arc<tokio::sync::Semaphore>,
    capacity_kib: u32,
}

impl Inbox {
    pub(super) fn start(
        owner: mpsc::Sender<Incoming>,
        bytes: usize,
        stop: CancellationToken,
    ) -> Inbox {
        let capacity_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        let room = Arc::new(tokio::sync::Semaphore::new(capacity_kib as usize));
        let (queue, mut waiting) = mpsc::unbounded_channel::<(Incoming, u32)>();
        let freed = room.clone();
        tokio::spawn(async move {
            loop {
                let (msg, cost) = tokio::select! {
                    _ = stop.cancelled() => break,
                    m = waiting.recv() => match m {
                        Some(m) => m,
                        None => break,
                    },
                };
                tokio::select! {
                    _ = stop.cancelled() => break,
                    r = owner.send(msg) => if r.is_err() { break },
                }
                freed.add_permits(cost as usize);
            }
        });
        Inbox {
            queue,
            room,
            capacity_kib,
        }
    }

    /// Hands `msg` on; waits only while the buffer is full.
    pub(super) async fn put(&self, msg: Incoming) {
        let bytes = msg.payload.len() + msg.topic.len() + 64;
        let cost = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.capacity_kib);
        if let Ok(permit) = self.room.acquire_many(cost).await {
            permit.forget();
            if self.queue.send((msg, cost)).is_err() {
                tracing::debug!("incoming receiver gone");
            }
        }
    }
}
