//! Received messages on their way from the link to its owner, buffered so that a busy owner
//! does not stop the link reading from the broker, the urgent topics first.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Incoming;

/// Received messages on their way from the poll task to the owner: the poll task hands each
/// over at once while the bytes waiting fit the buffer; a task of its own feeds the owner's
/// channel at the owner's pace, messages of the urgent topics first.
pub(super) struct Inbox {
    queue: mpsc::UnboundedSender<(Incoming, u32)>,
    urgent: mpsc::UnboundedSender<(Incoming, u32)>,
    urgent_topics: Vec<String>,
    /// Room left in the buffer, in KiB.
    room: Arc<tokio::sync::Semaphore>,
    capacity_kib: u32,
}

impl Inbox {
    pub(super) fn start(
        owner: mpsc::Sender<Incoming>,
        (bytes, urgent_topics): (usize, Vec<String>),
        stop: CancellationToken,
    ) -> Inbox {
        let capacity_kib = u32::try_from(bytes / 1024).unwrap_or(u32::MAX).max(1);
        let room = Arc::new(tokio::sync::Semaphore::new(capacity_kib as usize));
        let (queue, mut waiting) = mpsc::unbounded_channel::<(Incoming, u32)>();
        let (urgent, mut urgent_waiting) = mpsc::unbounded_channel::<(Incoming, u32)>();
        let freed = room.clone();
        tokio::spawn(async move {
            loop {
                let (msg, cost) = tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    Some(m) = urgent_waiting.recv() => m,
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
            urgent,
            urgent_topics,
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
            let urgent = self.urgent_topics.iter().any(|p| msg.topic.starts_with(p));
            let lane = if urgent { &self.urgent } else { &self.queue };
            if lane.send((msg, cost)).is_err() {
                tracing::debug!("incoming receiver gone");
            }
        }
    }
}
