//! A connection flood on the terminal's HJ 212 listener, under the open-files limit a service
//! manager gives by default (1,024): 1,100 held connections and a steady stream of new ones
//! leave the broker link (which must reconnect after a broker restart meanwhile), the status
//! socket and, once the flood lets go, a real data logger working, and the log small.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cuntong_e2e::{Broker, BrokerKind, Proc, bin, central, free_port, run, telemetry, wait_until};
use serde_json::Value;

const ID: &str = "130102001001-main";

/// The log of a terminal under a flood stays below this (a spinning accept loop wrote 1.4 GB
/// in 25 s).
const LOG_LIMIT: u64 = 256 * 1024;

fn status(data: &Path) -> Option<Value> {
    cuntong_e2e::terminal_status(data, ID)
}

fn confirmed(data: &Path) -> u64 {
    status(data)
        .and_then(|v| v["outbox"]["confirmed"]["telemetry"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_connection_flood_on_the_hj212_listener_leaves_the_link_the_status_socket_and_loggers_working()
{
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (db, data) = (d.join("central.db"), d.join("terminals"));
    let broker = Broker::start(BrokerKind::Embedded, d);
    let port = broker.port;
    let _central = central(&broker, &db, d);
    let hj: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sim = bin("cuntong-sim");
    let terminal = Proc::spawn(
        Path::new("/bin/sh"),
        &[
            "-c",
            "ulimit -n 1024 && exec \"$0\" \"$@\"",
            sim.to_str().unwrap(),
            "terminal",
            "--id",
            ID,
            "--broker",
            &broker.url,
            "--data-dir",
            data.to_str().unwrap(),
            "--interval",
            "200ms",
            "--keep-alive",
            "2s",
            // Records sent while central was not yet back on the new broker go again soon.
            "--resend-after",
            "3s",
            "--hj212-listen",
            &hj.to_string(),
        ],
        d.join("terminal.log"),
    );
    let up = wait_until(Duration::from_secs(20), || {
        TcpStream::connect(hj).is_ok()
            && status(&data).is_some_and(|v| v["link"]["connected"] == true)
    });
    assert!(up, "{}", terminal.log_text());

    // The flood: 1,100 connections held open, and new ones all the time.
    let mut held = Vec::new();
    let flood_end = Instant::now() + Duration::from_secs(30);
    while held.len() < 1_100 && Instant::now() < flood_end {
        if let Ok(s) = TcpStream::connect_timeout(&hj, Duration::from_millis(500)) {
            held.push(s);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = TcpStream::connect_timeout(&hj, Duration::from_millis(200));
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // The status socket answers, every time.
    let answers: Vec<Value> = (0..10).filter_map(|_| status(&data)).collect();
    assert_eq!(
        answers.len(),
        10,
        "the status socket stopped answering: {}",
        terminal.log_text()
    );
    // The link needs a new descriptor to reconnect after a broker restart, and gets one.
    let connects = answers[9]["link"]["connects"].as_u64().unwrap_or(0);
    drop(broker);
    let broker = Broker::start_on(BrokerKind::Embedded, d, port);
    let back = wait_until(Duration::from_secs(30), || {
        status(&data).is_some_and(|v| {
            v["link"]["connected"] == true && v["link"]["connects"].as_u64() > Some(connects)
        })
    });
    assert!(back, "the link did not reconnect: {}", terminal.log_text());
    // Telemetry is still confirmed by central.
    let next = status(&data)
        .and_then(|v| v["outbox"]["next_seq"]["telemetry"].as_u64())
        .expect("the status socket answers");
    assert!(
        wait_until(Duration::from_secs(30), || confirmed(&data) > next),
        "nothing confirmed after the broker restart: {}",
        terminal.log_text()
    );

    // The flood lets go: a real logger is served.
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    assert!(
        held.len() >= 1_000,
        "the flood itself: {} connections",
        held.len()
    );
    drop(held);
    let served = wait_until(Duration::from_secs(20), || {
        run(
            &sim,
            &[
                "datalogger",
                "--connect",
                &hj.to_string(),
                "--interval",
                "100ms",
                "--uploads",
                "3",
            ],
        )
        .status
        .success()
    });
    assert!(served, "{}", terminal.log_text());
    assert!(
        wait_until(Duration::from_secs(30), || {
            telemetry(&db, ID, Some("w01018")).len() >= 3
        }),
        "the logger's values did not reach central"
    );

    let log = std::fs::metadata(&terminal.log).unwrap().len();
    assert!(log < LOG_LIMIT, "the log grew to {log} bytes");
    drop(broker);
}
