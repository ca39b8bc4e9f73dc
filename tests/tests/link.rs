//! The MQTT link against a real Mosquitto: an owner busy for longer than the keep-alive (as
//! central is under a province's join storm) neither costs the link its connection nor loses
//! or reorders a message; the link keeps reading and answering the broker meanwhile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cuntong_e2e::{Broker, BrokerKind};
use cuntong_terminal::link::{Link, LinkOptions, Message};

const TOPIC: &str = "ct/v1/test/flood";
const MESSAGES: usize = 3000;

#[test]
fn a_busy_owner_keeps_its_connection_and_every_message_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(BrokerKind::Mosquitto, dir.path());
    let url = broker.url.clone();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let mut opts = LinkOptions::new(
            "busy-owner",
            url.parse::<cuntong_terminal::broker_url::Brokers>()
                .unwrap(),
        );
        // Mosquitto drops a client it has not heard from in 1.5 keep-alives.
        opts.keep_alive = Duration::from_secs(1);
        // Room for the whole flood (3,000 messages of 1 KiB).
        opts.incoming_buffer = 8 << 20;
        opts.subscriptions = vec![TOPIC.into()];

        let (owner, mut incoming) = Link::connect(opts, Duration::from_secs(10)).await.unwrap();
        let (sender, _) = Link::connect(
            LinkOptions::new(
                "flooder",
                url.parse::<cuntong_terminal::broker_url::Brokers>()
                    .unwrap(),
            ),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
        // The owner's subscription is in place once a probe arrives.
        let probe = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let _ = sender.try_publish(Message::new(TOPIC, b"probe".to_vec()));
                if let Ok(Some(m)) =
                    tokio::time::timeout(Duration::from_millis(200), incoming.recv()).await
                {
                    break m;
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(probe.payload.as_ref(), b"probe");
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(300), incoming.recv()).await
        {}

        // A flood of 1 KiB messages while the owner reads nothing for 5 s.
        for n in 0..MESSAGES {
            let mut payload = format!("{n:08}").into_bytes();
            payload.resize(1024, b'.');
            sender.publish(Message::new(TOPIC, payload)).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(5)).await;

        let mut got = Vec::with_capacity(MESSAGES);
        while got.len() < MESSAGES {
            match tokio::time::timeout(Duration::from_secs(20), incoming.recv()).await {
                Ok(Some(m)) => got.push(String::from_utf8_lossy(&m.payload[..8]).into_owned()),
                _ => break,
            }
        }
        let want: Vec<String> = (0..MESSAGES).map(|n| format!("{n:08}")).collect();
        assert_eq!(got.len(), MESSAGES, "messages lost");
        assert!(got == want, "messages out of order");
        let status = owner.status();
        assert_eq!(
            status.connects, 1,
            "the busy owner's link was dropped: {status:?}"
        );
        owner.shutdown();
        sender.shutdown();
    });
}
