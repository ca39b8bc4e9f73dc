//! Received messages on their way from the link to its owner, buffered so that a busy owner
//! does not stop the link reading from the broker.

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Incoming;

/// What a buffered message costs beyond its topic and payload: its place in the queue.
const OVERHEAD: usize = 64;

/// Received messages on their way from the poll task to the owner: the poll task hands each
/// over at once while the bytes waiting fit the buffer; a task of its own feeds the owner's
/// channel at the owner's pace, in the order received.
pub(super) struct Inbox {
    queue: mpsc::UnboundedSender<(Incoming, u32)>,
    /// Room left in the buffer, in bytes.
    room: Arc<tokio::sync::Semaphore>,
    capacity: u32,
}

impl Inbox {
    pub(super) fn start(
        owner: mpsc::Sender<Incoming>,
        bytes: usize,
        stop: CancellationToken,
    ) -> Inbox {
        let capacity = u32::try_from(bytes).unwrap_or(u32::MAX).max(1);
        let room = Arc::new(tokio::sync::Semaphore::new(capacity as usize));
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
            capacity,
        }
    }

    /// Hands `msg` on; waits only while the buffer is full (the link reads nothing from the
    /// broker meanwhile). Each message costs its bytes exactly (with [`OVERHEAD`]): a
    /// province's joins are a few hundred bytes each, and a buffer counted in coarser units
    /// holds a fraction of the messages it was sized for.
    pub(super) async fn put(&self, msg: Incoming) {
        let bytes = msg.payload.len() + msg.topic.len() + OVERHEAD;
        let cost = u32::try_from(bytes).unwrap_or(u32::MAX).min(self.capacity);
        if let Ok(permit) = self.room.acquire_many(cost).await {
            permit.forget();
            if self.queue.send((msg, cost)).is_err() {
                tracing::debug!("incoming receiver gone");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(n: usize) -> Incoming {
        Incoming {
            topic: format!("ct/v1/site/130102001001/md/up/{n:05}"),
            payload: bytes::Bytes::from(vec![0u8; 120]),
            retain: false,
        }
    }

    /// A buffer sized for a storm of small messages holds them all while its owner reads
    /// nothing: the poll task goes on reading from the broker.
    #[tokio::test]
    async fn a_buffer_holds_as_many_small_messages_as_its_bytes_allow() {
        let (owner, mut received) = mpsc::channel(1);
        let one = join(0).topic.len() + 120 + OVERHEAD;
        let count = 1_000;
        let inbox = Inbox::start(owner, one * count, CancellationToken::new());
        // The owner's channel holds one more.
        let put_all = async {
            for n in 0..=count {
                inbox.put(join(n)).await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), put_all)
            .await
            .expect("the buffer took every message without the owner reading");
        // One more waits for room, and gets it once the owner reads.
        let more = inbox.put(join(count + 1));
        tokio::pin!(more);
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut more)
                .await
                .is_err(),
            "a full buffer holds the reader back"
        );
        for n in 0..3 {
            let msg = received.recv().await.expect("a message");
            assert!(
                msg.topic.ends_with(&format!("/{n:05}")),
                "in order: {}",
                msg.topic
            );
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), more)
            .await
            .expect("room once the owner reads");
    }
}
