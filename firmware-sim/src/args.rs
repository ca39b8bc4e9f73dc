//! The command line of `cuntong-sim` checked and turned into what the simulated terminals
//! and data loggers run with; every refusal names its flag and the value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cuntong_core::meeting::participant::AcceptPolicy;
use cuntong_core::site::{Region, SiteCodeError};
use cuntong_core::terminal_id::{Slug, SlugError, TerminalId, TerminalIdError};
use cuntong_firmware_sim::datalogger;
use cuntong_firmware_sim::divisions::{ImportError, Part};
use cuntong_firmware_sim::fleet::{
    FILES_PER_TERMINAL, MAX_FLEET, SimOptions, TooManyForOpenFiles, default_data_root, fleet_ids,
    make_room_for, relay_ids,
};
use cuntong_terminal::broker_url::{Brokers, BrokersError, redact};
use cuntong_terminal::config::{parse_duration, parse_size};

use crate::{Command, Common};

/// A command-line value refused: each names its flag, the value and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ArgError {
    /// A value the flag's parser refused (a duration or a size), with its words.
    #[error("{flag}: {problem}")]
    Value {
        flag: &'static str,
        problem: cuntong_terminal::config::BadValue,
    },
    /// A duration of zero where time must pass.
    #[error("{flag}: {value:?} must be more than zero")]
    ZeroDuration { flag: &'static str, value: String },
    /// Not an address (`host:port` as an IP address and a port).
    #[error("{flag} {value:?}: {source}")]
    Addr {
        flag: &'static str,
        value: String,
        source: std::net::AddrParseError,
    },
    /// Not a terminal id.
    #[error("{flag} {value:?}: {source}")]
    TerminalId {
        flag: &'static str,
        value: String,
        source: TerminalIdError,
    },
    /// `--region` is not a region code.
    #[error("--region {value:?}: {source}")]
    Region {
        value: String,
        source: SiteCodeError,
    },
    /// `--broker` is not a list of broker URLs (shown without passwords).
    #[error("--broker {shown:?}: {source}")]
    Broker { shown: String, source: BrokersError },
    /// `--subscribe-qos` is not a QoS the terminals subscribe with.
    #[error("--subscribe-qos {0}")]
    SubscribeQos(cuntong_terminal::link::LinkError),
    /// `--keep-alive` is beyond what MQTT can say.
    #[error("--keep-alive {0:?}: from 1s to 65535s")]
    KeepAlive(String),
    /// `--update-rate 0`.
    #[error("--update-rate: more than 0")]
    ZeroUpdateRate,
    /// `--outbox-budget` below the smallest budget.
    #[error("--outbox-budget {0:?}: at least 4KiB")]
    SmallOutbox(String),
    /// `--accept` is not a policy.
    #[error("--accept {0:?}: use all, scheduled or manual")]
    Accept(String),
    /// A share of the fleet above 100 percent.
    #[error("{flag} {percent}: at most 100")]
    Percent { flag: &'static str, percent: u8 },
    /// `--version` is not an edition of HJ 212.
    #[error("--version {0:?}: use 2017 or 2005")]
    Edition(String),
    /// `--mn` or `--password` holds more than letters and digits.
    #[error("{flag} {value:?}: letters and digits only")]
    NotAlphanumeric { flag: &'static str, value: String },
    /// A fleet larger than the process's open files allow.
    #[error("--count: {0}")]
    OpenFiles(#[from] TooManyForOpenFiles),
    /// `--count` outside the fleet sizes.
    #[error("--count {0}: 1 to {max}", max = MAX_FLEET)]
    Count(usize),
    /// The `--codes` list could not be read.
    #[error("--codes {0}")]
    Codes(#[source] ImportError),
    /// The `--codes` list (or the part of it) has no village in the region.
    #[error(
        "--codes {}: no village of region {region} in the list{}",
        file.display(),
        part.map(|p| format!(" (part {p})")).unwrap_or_default()
    )]
    NoVillages {
        file: PathBuf,
        region: Region,
        part: Option<Part>,
    },
    /// `terminal` without `--config` needs both.
    #[error("--id and --data-dir are needed without --config")]
    NeedIdAndDataDir,
    /// The slug every fleet terminal has was refused (a bug).
    #[error("internal: slug main: {0}")]
    MainSlug(#[source] SlugError),
    /// A command that runs no terminals was taken for one (a bug).
    #[error("internal: not a terminal command")]
    NotTerminalCommand,
}

pub(crate) fn duration(flag: &'static str, s: &str) -> Result<Duration, ArgError> {
    let d = parse_duration(s).map_err(|problem| ArgError::Value { flag, problem })?;
    if d.is_zero() {
        return Err(ArgError::ZeroDuration {
            flag,
            value: s.to_owned(),
        });
    }
    Ok(d)
}

/// `flag`'s value as a socket address.
pub(crate) fn socket_addr(flag: &'static str, value: &str) -> Result<SocketAddr, ArgError> {
    value.parse().map_err(|source| ArgError::Addr {
        flag,
        value: value.to_owned(),
        source,
    })
}

pub(crate) fn logger_options(
    connect: String,
    mn: String,
    password: String,
    interval: &str,
    version: &str,
) -> Result<datalogger::LoggerOptions, ArgError> {
    let connect = socket_addr("--connect", &connect)?;
    let edition = match version {
        "2017" => datalogger::Edition::V2017,
        "2005" => datalogger::Edition::V2005,
        other => return Err(ArgError::Edition(other.to_owned())),
    };
    for (flag, value) in [("--mn", &mn), ("--password", &password)] {
        if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ArgError::NotAlphanumeric {
                flag,
                value: value.clone(),
            });
        }
    }
    Ok(datalogger::LoggerOptions {
        connect,
        mn,
        password,
        interval: duration("--interval", interval)?,
        edition,
        split_every: 0,
        corrupt_every: 0,
        uploads: None,
        seed: 1,
    })
}

fn options(common: &Common, data_root: PathBuf) -> Result<SimOptions, ArgError> {
    let text = common.broker.join(",");
    let broker: Brokers = text.parse().map_err(|source| ArgError::Broker {
        shown: redact(&text),
        source,
    })?;
    let mut opts = SimOptions::new(broker, data_root, duration("--interval", &common.interval)?);
    opts.keep_alive = duration("--keep-alive", &common.keep_alive)?;
    opts.subscribe_qos = cuntong_terminal::link::subscribe_qos(common.subscribe_qos)
        .map_err(ArgError::SubscribeQos)?;
    // What MQTT can say (whole seconds, 16 bits), as a terminal's config allows.
    if !(Duration::from_secs(1)..=Duration::from_secs(65_535)).contains(&opts.keep_alive) {
        return Err(ArgError::KeepAlive(common.keep_alive.clone()));
    }
    opts.delivery.resend_after_ms =
        duration("--resend-after", &common.resend_after)?.as_millis() as u64;
    opts.delivery.rate_per_s = common.rate;
    let size = |flag: &'static str, value: &str| {
        parse_size(value).map_err(|problem| ArgError::Value { flag, problem })
    };
    opts.outbox_budget = size("--outbox-budget", &common.outbox_budget)?;
    opts.command_key = common.command_key.clone();
    opts.release_key = common.release_key.clone();
    opts.update_rate = size("--update-rate", &common.update_rate)?;
    if opts.update_rate == 0 {
        return Err(ArgError::ZeroUpdateRate);
    }
    opts.meeting_accept = match common.accept.as_str() {
        "all" => AcceptPolicy::All,
        "scheduled" => AcceptPolicy::Scheduled,
        "manual" => AcceptPolicy::Manual,
        other => return Err(ArgError::Accept(other.to_owned())),
    };
    for (flag, percent) in [
        ("--decline-percent", common.decline_percent),
        ("--hands-percent", common.hands_percent),
    ] {
        if percent > 100 {
            return Err(ArgError::Percent { flag, percent });
        }
    }
    opts.decline_percent = common.decline_percent;
    opts.hands_percent = common.hands_percent;
    // Zero is a power-on too: every box at the same instant.
    opts.power_on = parse_duration(&common.power_on).map_err(|problem| ArgError::Value {
        flag: "--power-on",
        problem,
    })?;
    opts.media = common.media;
    opts.rooms = common.rooms.clone();
    opts.rooms_of = common
        .rooms_of
        .iter()
        .map(|t| {
            t.parse().map_err(|source| ArgError::TerminalId {
                flag: "--room",
                value: t.clone(),
                source,
            })
        })
        .collect::<Result<_, ArgError>>()?;
    opts.status_socket = common.status_sockets;
    if opts.outbox_budget < 4096 {
        return Err(ArgError::SmallOutbox(common.outbox_budget.clone()));
    }
    Ok(opts)
}

/// One terminal for each village code of `file` inside `region` (in code order), only those of
/// `part` if given, at most `count`.
fn listed_villages(
    file: &Path,
    region: &Region,
    part: Option<Part>,
    count: Option<usize>,
) -> Result<Vec<TerminalId>, ArgError> {
    let rows = cuntong_firmware_sim::divisions::read(file).map_err(ArgError::Codes)?;
    let main: Slug = "main".parse().map_err(ArgError::MainSlug)?;
    let villages = rows.villages(region);
    let mut sites = match part {
        Some(p) => p.of(&villages).to_vec(),
        None => villages,
    };
    if sites.is_empty() {
        return Err(ArgError::NoVillages {
            file: file.to_owned(),
            region: *region,
            part,
        });
    }
    sites.truncate(count.unwrap_or(usize::MAX));
    Ok(sites
        .into_iter()
        .map(|site| TerminalId::new(site, main))
        .collect())
}

pub(crate) fn terminals(cmd: Command) -> Result<(Vec<TerminalId>, SimOptions), ArgError> {
    match cmd {
        Command::Terminal {
            id,
            data_dir,
            hj212_listen,
            duty_button,
            common,
            ..
        } => {
            let (Some(id), Some(data_dir)) = (id, data_dir) else {
                return Err(ArgError::NeedIdAndDataDir);
            };
            let id: TerminalId = id.parse().map_err(|source| ArgError::TerminalId {
                flag: "--id",
                value: id.clone(),
                source,
            })?;
            // The terminal keeps its state in <data-dir>/<id>, the same layout as a fleet's.
            let mut opts = options(&common, data_dir)?;
            opts.status_socket = true;
            opts.duty_button = duty_button;
            opts.hj212_listen = hj212_listen
                .map(|a| socket_addr("--hj212-listen", &a))
                .transpose()?;
            Ok((vec![id], opts))
        }
        Command::Fleet {
            region,
            count,
            codes,
            part,
            data_dir,
            common,
        } => {
            let r: Region = region.parse().map_err(|source| ArgError::Region {
                value: region.clone(),
                source,
            })?;
            if let Some(c) = count.filter(|c| !(1..=MAX_FLEET).contains(c)) {
                return Err(ArgError::Count(c));
            }
            let opts = options(&common, data_dir.unwrap_or_else(default_data_root))?;
            let ids = match codes {
                Some(file) => listed_villages(&file, &r, part, count)?,
                None => fleet_ids(&r, count.unwrap_or(10)),
            };
            let ids: Vec<TerminalId> = if opts.media {
                relay_ids(&r, &ids).into_iter().chain(ids).collect()
            } else {
                ids
            };
            make_room_for(ids.len(), FILES_PER_TERMINAL)?;
            Ok((ids, opts))
        }
        Command::Proxy { .. } | Command::Link { .. } | Command::Datalogger { .. } => {
            Err(ArgError::NotTerminalCommand)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_defaults_of_a_terminal_and_a_fleet_are_taken_and_a_power_on_may_be_zero() {
        use clap::Parser;
        let fleet = |extra: &[&str]| {
            let mut argv = vec!["cuntong-sim", "fleet", "--region", "130102", "--count", "3"];
            argv.extend_from_slice(extra);
            super::terminals(crate::Cli::try_parse_from(argv).unwrap().command)
        };
        let (ids, opts) = fleet(&[]).unwrap();
        assert_eq!((ids.len(), opts.power_on), (3, std::time::Duration::ZERO));
        let (_, opts) = fleet(&["--power-on", "20s"]).unwrap();
        assert_eq!(opts.power_on, std::time::Duration::from_secs(20));
        assert!(fleet(&["--power-on", "soon"]).is_err());
        let one = crate::Cli::try_parse_from([
            "cuntong-sim",
            "terminal",
            "--id",
            "130102001001-main",
            "--data-dir",
            "/nonexistent",
        ])
        .unwrap();
        assert_eq!(super::terminals(one.command).unwrap().0.len(), 1);
    }
}
