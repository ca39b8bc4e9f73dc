//! The meeting host under a province's join storm, without I/O: N sites of region `13` join a
//! started session, are laid out (as central does, once per batch of joins), then answer a
//! roll call. Beside it, in the same run, the least any host does with the same messages:
//! decoding them from the wire.
//!
//! ```sh
//! cargo run --release -p cuntong-benches --bin host-storm -- --sites 54145 --batch 1000
//! ```

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use cuntong_core::envelope::{decode, encode};
use cuntong_core::meeting::host::{ChairOp, Host, HostConfig, HostOutput, Operator};
use cuntong_core::meeting::{
    Answer, Downlink, Hand, Kind, MediaProfile, MeetingId, MeetingSpec, Uplink,
};
use cuntong_core::terminal_id::TerminalId;

#[derive(Parser)]
struct Args {
    /// Sites in the province meeting.
    #[arg(long, default_value_t = 54_145)]
    sites: usize,
    /// Joins between two layouts (central lays out when its queue runs empty, and every
    /// 200 ms in a storm).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
}

/// Village terminals spread over region 13 the way the division codes are (11 prefectures,
/// counties, townships, villages).
fn site(k: usize) -> anyhow::Result<TerminalId> {
    let prefecture = k % 11 + 1;
    let county = (k / 11) % 20 + 1;
    let township = (k / 220) % 20 + 1;
    let village = k / 4400 + 1;
    Ok(format!("13{prefecture:02}{county:02}{township:03}{village:03}-main").parse()?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let n = args.sites;
    let meeting: MeetingId = "province".parse()?;
    let spec = MeetingSpec {
        id: meeting,
        kind: Kind::Meeting,
        title: "全省防汛工作视频会议".into(),
        chair: Some("130000000000-hall".parse()?),
        invitees: vec!["13".parse().map_err(anyhow::Error::msg)?],
        starts_ms: None,
        profile: MediaProfile::named("sd").context("the sd profile")?,
        floor_mutes_others: true,
        heartbeat_ms: 10_000,
    };
    let sites: Vec<TerminalId> = (0..n).map(site).collect::<Result<_, _>>()?;
    let joins: Vec<Vec<u8>> = sites.iter().map(|_| cuntong_e2e::join(meeting)).collect();

    // Baseline: decoding every join and every answer, nothing else.
    let t = Instant::now();
    let mut decoded = 0usize;
    for bytes in &joins {
        let up: Uplink = decode(bytes)?;
        decoded += usize::from(matches!(up, Uplink::Join { .. }));
    }
    let decode_joins = t.elapsed();

    let (mut host, _) = Host::new(spec, HostConfig::default(), vec![7; 30], 0);
    host.expect(sites.iter().copied());
    host.op(&Operator::Chair, ChairOp::Start, 1)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    host.media_updates(1);
    let mut plans = 0usize;
    let mut count_plans = |out: &[HostOutput]| {
        plans += out
            .iter()
            .filter(|o| matches!(o, HostOutput::Send(_, Downlink::Admitted { .. })))
            .count();
    };
    let t = Instant::now();
    for (k, (id, bytes)) in sites.iter().zip(&joins).enumerate() {
        let up: Uplink = decode(bytes)?;
        let out = host.uplink(*id, up, 2);
        count_plans(&out);
        if (k + 1) % args.batch.max(1) == 0 {
            count_plans(&host.media_updates(2));
        }
    }
    count_plans(&host.media_updates(2));
    let join_storm = t.elapsed();
    if plans != n {
        bail!("{plans} plans for {n} joined sites");
    }

    let out = host
        .op(&Operator::Chair, ChairOp::RollCall, 3)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let (number, version) = match host.state().roll_call {
        Some(rc) => (rc.number, host.state().version),
        None => bail!("no roll call open ({} outputs)", out.len()),
    };
    let answers: Vec<Vec<u8>> = sites
        .iter()
        .map(|_| {
            encode(&Uplink::Status {
                meeting,
                seen: version,
                muted: false,
                hand: Hand::default(),
                answer: Some(Answer {
                    number,
                    answered_ms: 4,
                }),
            })
        })
        .collect::<Result<_, _>>()?;
    let t = Instant::now();
    for bytes in &answers {
        let up: Uplink = decode(bytes)?;
        decoded += usize::from(matches!(up, Uplink::Status { .. }));
    }
    let decode_answers = t.elapsed();
    let t = Instant::now();
    for (id, bytes) in sites.iter().zip(&answers) {
        let up: Uplink = decode(bytes)?;
        host.uplink(*id, up, 5);
    }
    let roll_call = t.elapsed();
    let answered = host
        .sites()
        .values()
        .filter(|r| r.answer.is_some_and(|a| a.number == number))
        .count();
    if answered != n || decoded != 2 * n {
        bail!("{answered} of {n} answers recorded");
    }

    println!("sites: {n}, a layout every {} joins", args.batch);
    report("join storm", "a site", "joins", join_storm, decode_joins, n);
    report(
        "roll call",
        "an answer",
        "answers",
        roll_call,
        decode_answers,
        n,
    );
    Ok(())
}

/// One line: the host's time for `n` messages against decoding them alone.
fn report(what: &str, each: &str, messages: &str, host: Duration, decoding: Duration, n: usize) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{what}: {:.1} ms ({:.2} µs {each}); decoding the {messages} alone {:.1} ms; ratio {:.1}",
        ms(host),
        ms(host) * 1000.0 / n as f64,
        ms(decoding),
        host.as_secs_f64() / decoding.as_secs_f64()
    );
}
