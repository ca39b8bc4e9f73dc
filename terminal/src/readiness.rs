//! Pre-meeting readiness: what a terminal checks of itself when central asks (`readiness`
//! command) — a camera and a microphone to capture with, a link good enough for full media, a
//! clock that agrees with central's, and room on disk for the outbox.

use std::path::Path;

use cuntong_core::command::Check;
use cuntong_core::meeting::{Tier, TierThresholds};

use crate::link::LinkStatus;

/// The capture devices a media engine has.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaptureDevices {
    pub camera: Option<String>,
    pub microphone: Option<String>,
}

/// The box's own devices: the first V4L2 device, and the first ALSA capture device.
pub fn local_devices() -> CaptureDevices {
    let first = |dir: &str, keep: &dyn Fn(&str) -> bool| -> Option<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| keep(n))
            .collect();
        names.sort();
        names.first().map(|n| format!("{dir}/{n}"))
    };
    CaptureDevices {
        camera: first("/dev", &|n| n.starts_with("video")),
        microphone: first("/dev/snd", &|n| n.starts_with("pcmC") && n.ends_with('c')),
    }
}

/// Clocks further apart than this (after the command's transit) are not ready: schedules,
/// roll-call answer times and command expiry depend on them.
pub const MAX_CLOCK_OFFSET_MS: i64 = 2_000;

/// A readiness command older than this has expired, so a clock this far ahead shows.
pub const MAX_COMMAND_AGE_MS: i64 = 120_000;

/// Disk free for the outbox, at least this many times its budget.
const DISK_BUDGETS: u64 = 2;

/// The checks, in a fixed order.
pub fn checks(
    devices: &CaptureDevices,
    link: &LinkStatus,
    thresholds: &TierThresholds,
    data_dir: &Path,
    outbox_budget: u64,
    issued_ms: u64,
    now_ms: u64,
) -> Vec<Check> {
    let check = |name: &str, ok: bool, detail: String| Check {
        name: name.to_owned(),
        ok,
        detail,
    };
    let device = |name: &str, d: &Option<String>| match d {
        Some(path) => check(name, true, path.clone()),
        None => check(name, false, format!("no {name} found")),
    };
    let tier = thresholds.tier(link.rtt_ms, link.ping_loss_percent);
    let rtt = link
        .rtt_ms
        .map_or("not measured yet".to_owned(), |r| format!("{r:.0} ms"));
    let link_check = check(
        "link",
        link.connected && tier == Tier::Full,
        format!(
            "{}, rtt {rtt}, ping loss {:.0} %, tier {}",
            if link.connected {
                "connected"
            } else {
                "not connected"
            },
            link.ping_loss_percent,
            tier.as_str()
        ),
    );
    // The command was signed at `issued_ms` by central's clock and spent some time on its way
    // (queued while the box was away, even): arriving *before* it was signed is certainly a
    // clock behind; arriving later than a command may live is certainly a clock ahead.
    let offset = now_ms as i64 - issued_ms as i64;
    let clock = check(
        "clock",
        (-MAX_CLOCK_OFFSET_MS..=MAX_COMMAND_AGE_MS).contains(&offset),
        if offset < -MAX_CLOCK_OFFSET_MS {
            format!("{} ms behind central", -offset)
        } else if offset > MAX_COMMAND_AGE_MS {
            format!("{offset} ms ahead of central")
        } else {
            format!("{offset:+} ms from central (transit included)")
        },
    );
    let disk = match rustix::fs::statvfs(data_dir) {
        Ok(st) => {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            let need = outbox_budget.saturating_mul(DISK_BUDGETS);
            check(
                "disk",
                free >= need,
                format!("{} MiB free, {} MiB needed", free >> 20, need >> 20),
            )
        }
        Err(e) => check("disk", false, format!("{}: {e}", data_dir.display())),
    };
    vec![
        device("camera", &devices.camera),
        device("microphone", &devices.microphone),
        link_check,
        clock,
        disk,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_box_without_a_camera_on_a_slow_link_with_a_wrong_clock_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let good = LinkStatus {
            connected: true,
            rtt_ms: Some(40.0),
            ..LinkStatus::default()
        };
        let devices = CaptureDevices {
            camera: Some("/dev/video0".into()),
            microphone: Some("/dev/snd/pcmC0D0c".into()),
        };
        let th = TierThresholds::default();
        let all = checks(&devices, &good, &th, dir.path(), 1 << 20, 10_000, 10_300);
        assert!(all.iter().all(|c| c.ok), "{all:?}");
        assert_eq!(
            all.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["camera", "microphone", "link", "clock", "disk"]
        );
        let slow = LinkStatus {
            rtt_ms: Some(900.0),
            ..good.clone()
        };
        let bad = checks(
            &CaptureDevices::default(),
            &slow,
            &th,
            dir.path(),
            u64::MAX / 4,
            20_000,
            10_000,
        );
        let failed: Vec<&str> = bad
            .iter()
            .filter(|c| !c.ok)
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(failed, ["camera", "microphone", "link", "clock", "disk"]);
        assert!(bad[2].detail.contains("audio-only"), "{:?}", bad[2]);
        assert!(
            bad[3].detail.contains("10000 ms behind central"),
            "{:?}",
            bad[3]
        );
        let late = checks(&devices, &good, &th, dir.path(), 1 << 20, 10_000, 70_000);
        assert!(
            late[3].ok,
            "a command that waited a minute says nothing of the clock"
        );
    }
}
