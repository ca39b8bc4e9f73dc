//! What the commands share: the failure that becomes the exit code, flag parsing that names the
//! flag, the default store, and the two ways a command reaches the fleet: [`Conn`] to the
//! meeting host inside `cuntong central`, [`Signing`] for signed commands to terminals.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use cuntong_core::site::Region;
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::broker_url::Brokers;
use cuntong_terminal::link::QoS;

use crate::commands::meeting::CentralClient;
use crate::store::Database;

/// The broker a command uses without `--broker` (or `$CUNTONG_BROKER`).
pub const DEFAULT_BROKER: &str = "mqtt://127.0.0.1:1883";

/// `--broker`, repeated and/or as a comma list (`$CUNTONG_BROKER` as a comma list): the
/// brokers in order of preference, a cluster's nodes. Each flag that takes brokers has this
/// type, so all of them read a list the same way.
#[derive(Clone, Debug, Args)]
pub struct BrokerArgs {
    /// The broker URL (mqtt:// or mqtts://); a cluster's nodes: repeat the flag or separate
    /// URLs by commas, in order of preference.
    #[arg(
        long = "broker",
        env = "CUNTONG_BROKER",
        default_value = DEFAULT_BROKER,
        value_name = "URL",
        global = true
    )]
    pub urls: Vec<String>,
    /// QoS of the subscriptions: 1, or 0 on a NATS cluster, where each QoS 1 subscription is
    /// a JetStream consumer (docs/operations.md, "Broker cluster").
    #[arg(
        long,
        env = "CUNTONG_SUBSCRIBE_QOS",
        default_value_t = 1,
        value_name = "0|1",
        global = true
    )]
    pub subscribe_qos: u8,
}

impl BrokerArgs {
    /// What was given, as one comma list (URLs with their passwords: not for showing).
    fn text(&self) -> String {
        self.urls.join(",")
    }

    /// The brokers, or a [`Usage`] naming `--broker` and the value (without its password).
    pub fn brokers(&self) -> Result<Brokers, Usage> {
        parse("--broker", &self.text())
    }

    /// `--subscribe-qos`, checked.
    pub fn subscribe_qos(&self) -> Result<QoS, Usage> {
        cuntong_terminal::link::subscribe_qos(self.subscribe_qos)
            .map_err(|e| Usage(format!("--subscribe-qos {e}")))
    }

    /// The brokers, checked to go with `--tls` (given or not): see [`tls_goes_with`].
    pub fn with_tls(&self, tls: bool) -> Result<Brokers, Usage> {
        let brokers = self.brokers()?;
        tls_goes_with(&brokers, tls)?;
        Ok(brokers)
    }
}

/// Bad usage or input: one line naming the value, exit code 2.
#[derive(Debug)]
pub struct Usage(pub String);

/// Why a command failed: bad usage or input (exit code 2) or anything else (exit code 1).
#[derive(Debug)]
pub enum Failure {
    Usage(Usage),
    Runtime(String),
}

impl Failure {
    /// 2 for bad usage or input, 1 for the rest.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            Failure::Usage(_) => ExitCode::from(2),
            Failure::Runtime(_) => ExitCode::FAILURE,
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Usage(Usage(msg)) | Failure::Runtime(msg) => f.write_str(msg),
        }
    }
}

impl From<Usage> for Failure {
    fn from(u: Usage) -> Failure {
        Failure::Usage(u)
    }
}

/// A failure that is not the user's: exit code 1.
pub fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::Runtime(e.to_string())
}

/// A flag's value as `T`, or a [`Usage`] naming the flag and the value.
pub fn parse<T>(flag: &str, value: &str) -> Result<T, Usage>
where
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    // A broker URL's password never reaches the terminal.
    let shown = cuntong_terminal::broker_url::redact(value);
    value
        .parse()
        .map_err(|e| Usage(format!("{flag} {shown:?}: {e}")))
}

/// `--region`, if given.
pub fn region(value: Option<String>) -> Result<Option<Region>, Usage> {
    value.map(|r| parse("--region", &r)).transpose()
}

/// A duration flag (at most 100 years: see `parse_duration`).
pub fn duration(flag: &str, value: &str) -> Result<Duration, Usage> {
    cuntong_terminal::config::parse_duration(value).map_err(|e| Usage(format!("{flag}: {e}")))
}

/// A duration flag for which zero means nothing (a wait, an interval, a window).
pub fn positive(flag: &str, value: &str) -> Result<Duration, Usage> {
    match duration(flag, value)? {
        d if d.is_zero() => Err(Usage(format!("{flag}: {value:?} must be more than zero"))),
        d => Ok(d),
    }
}

/// A text flag that must say something (a title, a name).
pub fn not_empty<'a>(flag: &str, value: &'a str) -> Result<&'a str, Usage> {
    if value.trim().is_empty() {
        Err(Usage(format!("{flag} {value:?}: must not be empty")))
    } else {
        Ok(value)
    }
}

/// The store a command uses without `--db` (or `$CUNTONG_DB`).
pub fn default_db() -> PathBuf {
    dirs::data_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("cuntong")
        .join("central.db")
}

/// The store `--db` (or `$CUNTONG_DB`) names: a file, or a `postgres://` URL; the default file
/// without it.
pub fn database(db: Option<Database>) -> Database {
    db.unwrap_or_else(|| Database::Sqlite(default_db()))
}

/// Runs `f`, which talks to the store, off the async runtime: the PostgreSQL client runs a
/// runtime of its own, which must not be entered from inside another.
pub fn off_runtime<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// An `mqtts://` broker needs a `--tls` bundle, and a bundle needs `mqtts://`: nothing falls
/// back to plain text, and nothing tries TLS on a plain port.
pub fn tls_goes_with(brokers: &Brokers, tls: bool) -> Result<(), Usage> {
    if brokers.tls() == tls {
        return Ok(());
    }
    Err(Usage(format!(
        "--broker {:?} and --tls go together (mqtts:// needs --tls DIR)",
        brokers.to_string()
    )))
}

/// The client TLS configuration of a bundle directory (`--tls DIR`), if one is given.
pub fn tls_bundle(dir: Option<&Path>) -> Result<Option<Arc<rustls::ClientConfig>>, Failure> {
    dir.map(|d| {
        cuntong_terminal::tls::client_config(&cuntong_terminal::tls::TlsFiles::in_dir(d))
            .map_err(fail)
    })
    .transpose()
}

/// How a meeting command reaches the meeting host.
#[derive(Debug, Args)]
pub struct Conn {
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// A central identity's bundle for an mqtts:// broker: one of its own (`central-ops`), not
    /// the running service's, since the broker keeps one session per identity.
    #[arg(long, global = true)]
    pub tls: Option<PathBuf>,
}

impl Conn {
    /// Connects to the broker, for the meeting host.
    pub async fn connect(&self) -> Result<CentralClient, Failure> {
        let brokers = self.broker.with_tls(self.tls.is_some())?;
        let tls = tls_bundle(self.tls.as_deref())?;
        let qos = self.broker.subscribe_qos()?;
        CentralClient::connect(brokers, tls, qos)
            .await
            .map_err(fail)
    }
}

/// How a signed command reaches terminals: signed with the fleet CA's command key, carried by
/// the broker, its targets found in the store for a region.
#[derive(Debug, Args)]
pub struct Signing {
    /// The CA directory with the command key.
    #[arg(long)]
    pub ca: PathBuf,
    #[command(flatten)]
    pub broker: BrokerArgs,
    /// A central identity's bundle for an mqtts:// broker: one of its own (`central-ops`), not
    /// the running service's, since the broker keeps one session per identity.
    #[arg(long)]
    pub tls: Option<PathBuf>,
    #[arg(long, env = "CUNTONG_DB")]
    pub db: Option<Database>,
}

impl Signing {
    /// Refuses a bad `--broker` (or one without its `--tls`) before anything is looked up.
    pub fn check(&self) -> Result<(), Usage> {
        self.broker.with_tls(self.tls.is_some()).map(drop)
    }

    pub fn db(&self) -> Database {
        database(self.db.clone())
    }

    /// Every terminal the store knows in `region`.
    pub fn terminals_in(&self, region: &Region) -> Result<Vec<TerminalId>, Failure> {
        let sites =
            off_runtime(|| self.db().open_read_only()?.sites(Some(region))).map_err(fail)?;
        Ok(sites
            .iter()
            .filter_map(|s| s.terminal.parse().ok())
            .collect())
    }

    /// Signs `action` for `targets`, sends it and collects the answers.
    pub async fn send(
        &self,
        targets: &[TerminalId],
        action: &cuntong_core::command::Action,
        expires: Duration,
        wait: Duration,
    ) -> Result<Vec<crate::cmd::Answer>, Failure> {
        let brokers = self.broker.with_tls(self.tls.is_some())?;
        let tls = tls_bundle(self.tls.as_deref())?;
        let key = crate::cmd::signing_key(&self.ca).map_err(fail)?;
        let qos = self.broker.subscribe_qos()?;
        crate::cmd::send((brokers, qos), tls, &key, targets, action, expires, wait)
            .await
            .map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        broker: BrokerArgs,
    }

    fn brokers(args: &[&str]) -> Result<Brokers, Usage> {
        let cmd = Cmd::try_parse_from(std::iter::once("cmd").chain(args.iter().copied()))
            .map_err(|e| Usage(e.to_string()))?;
        cmd.broker.brokers()
    }

    #[test]
    fn broker_flags_repeated_or_as_a_comma_list_give_the_nodes_in_order() {
        let hosts = |b: Brokers| b.iter().map(|u| u.host.clone()).collect::<Vec<_>>();
        let repeated = brokers(&["--broker", "mqtt://a", "--broker", "mqtt://b:1884"]).unwrap();
        assert_eq!(hosts(repeated.clone()), ["a", "b"]);
        let listed = brokers(&["--broker", "mqtt://a, mqtt://b:1884"]).unwrap();
        assert_eq!(listed, repeated);
        let mixed = brokers(&["--broker", "mqtt://a,mqtt://b:1884", "--broker", "mqtt://c"]);
        assert_eq!(hosts(mixed.unwrap()), ["a", "b", "c"]);
        assert_eq!(brokers(&[]).unwrap().to_string(), DEFAULT_BROKER);
    }

    #[test]
    fn a_bad_or_mixed_broker_list_is_refused_naming_the_flag_and_hiding_passwords() {
        let Err(Usage(e)) = brokers(&["--broker", "mqtts://u:hunter2@a", "--broker", "mqtt://b"])
        else {
            panic!("a list mixing TLS and plain text was taken")
        };
        assert!(
            e.starts_with("--broker ") && e.contains("mqtt://b:1883"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let Err(Usage(e)) = brokers(&["--broker", "mqtt://a,http://b"]) else {
            panic!("a list holding a bad URL was taken")
        };
        assert!(e.starts_with("--broker ") && e.contains("http://b"), "{e}");
    }

    #[test]
    fn a_tls_bundle_goes_with_a_list_of_mqtts_brokers_only() {
        let tls: Brokers = "mqtts://a,mqtts://b".parse().unwrap();
        let plain: Brokers = "mqtt://a,mqtt://b".parse().unwrap();
        assert!(tls_goes_with(&tls, true).is_ok());
        assert!(tls_goes_with(&plain, false).is_ok());
        for (b, given) in [(&tls, false), (&plain, true)] {
            let Err(Usage(e)) = tls_goes_with(b, given) else {
                panic!("{b} with --tls {given} was taken")
            };
            assert!(e.contains("--tls"), "{e}");
        }
    }
}
