//! `cuntong ca …`, `cuntong provision` and `cuntong acl`: the fleet CA, the bundles it issues
//! and the broker configuration that follows from its inventory. The CA itself is
//! [`crate::ca`].

use std::path::PathBuf;

use clap::{Args, Subcommand};
use cuntong_core::terminal_id::TerminalId;
use cuntong_terminal::broker_url::Brokers;
use cuntong_terminal::println;

use super::common::{Failure, Usage, database, fail, not_empty, parse};
use crate::ca;
use crate::store::Database;

#[derive(Debug, Subcommand)]
pub enum CaAction {
    /// Create a fleet CA (key, self-signed certificate, inventory) in DIR.
    Init {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue the broker's server certificate for a host name or IP address.
    IssueServer {
        #[arg(long)]
        ca: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        out: PathBuf,
    },
    /// Revoke a terminal's (or a central identity's) certificates: they go on the CA's CRL
    /// and the identity leaves the ACL. Then run `cuntong acl` and reload the broker.
    Revoke {
        /// Terminal id, `central`, `central-NAME` or `staff:NAME`.
        id: String,
        #[arg(long)]
        ca: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct ProvisionArgs {
    /// Terminal id, `central`, or `central-NAME` for each further process of the central
    /// office that connects (a second instance, the operator's commands); `staff NAME` for a
    /// member of central's staff signing in to the dashboard (`central --http-tls`); or use
    /// --batch.
    #[arg(required_unless_present = "batch")]
    id: Option<String>,
    /// After `staff`: the staff member's name.
    #[arg(value_name = "NAME")]
    staff: Option<String>,
    /// A CSV of `id,name` rows: one bundle per terminal in `--out/<id>`.
    #[arg(long, conflicts_with = "id")]
    batch: Option<PathBuf>,
    #[arg(long)]
    ca: PathBuf,
    /// The broker the terminal will use (mqtts://host:port); a cluster's nodes: repeat the
    /// flag or separate URLs by commas, in order of preference. Not for staff.
    #[arg(long, value_name = "URL")]
    broker: Vec<String>,
    #[arg(long)]
    out: PathBuf,
    /// The terminal's name, shown instead of its site's official name wherever central
    /// shows it (kept in the store at --db) and written into the config.
    #[arg(long)]
    name: Option<String>,
    /// Issue again an id that was already provisioned.
    #[arg(long)]
    force: bool,
    /// The store that keeps the terminals' names.
    #[arg(long, env = "CUNTONG_DB")]
    db: Option<Database>,
}

#[derive(Debug, Args)]
pub struct AclArgs {
    #[arg(long)]
    ca: PathBuf,
    /// Only `mosquitto` for now.
    #[arg(long, default_value = "mosquitto")]
    format: String,
    /// The TLS port the broker listens on.
    #[arg(long, default_value_t = 8883)]
    listen: u16,
    /// The directory `ca issue-server` wrote.
    #[arg(long)]
    server: PathBuf,
    #[arg(long)]
    out: PathBuf,
}

/// An identity a certificate may be issued to: a terminal id, `central` or `central-NAME`.
fn identity(id: &str) -> Result<(), Usage> {
    if !ca::is_central(id) {
        let _: TerminalId = parse("id", id)?;
    }
    Ok(())
}

pub fn run_ca(action: CaAction) -> Result<(), Failure> {
    match action {
        CaAction::Init { dir } => {
            ca::init(&dir).map_err(fail)?;
            println!("fleet CA created in {}", dir.display());
        }
        CaAction::IssueServer {
            ca: ca_dir,
            name,
            out,
        } => {
            not_empty("--name", &name)?;
            ca::issue_server(&ca_dir, &name, &out).map_err(fail)?;
            println!("server certificate for {name} in {}", out.display());
        }
        CaAction::Revoke { id, ca: ca_dir } => {
            match id.strip_prefix(ca::STAFF_PREFIX) {
                Some(name) => crate::staff::check_name(name).map_err(|e| Usage(e.to_string()))?,
                None => identity(&id)?,
            }
            ca::revoke(&ca_dir, &id).map_err(fail)?;
            println!(
                "{id} revoked: {} updated; run `cuntong acl` and reload the broker (SIGHUP)",
                ca_dir.join(ca::CRL).display()
            );
        }
    }
    Ok(())
}

pub fn run_provision(args: ProvisionArgs) -> Result<(), Failure> {
    let ProvisionArgs {
        id,
        staff,
        batch,
        ca: ca_dir,
        broker,
        out,
        name,
        force,
        db,
    } = args;
    match (id.as_deref(), staff) {
        (Some("staff"), Some(who)) => {
            if !broker.is_empty() {
                return Err(Usage("provision staff: staff need no --broker".into()).into());
            }
            ca::provision_staff(&ca_dir, &who, &out, force).map_err(fail)?;
            println!(
                "certificate of {} in {}: import cert.pem with key.pem into the browser                  (e.g. `openssl pkcs12 -export -in cert.pem -inkey key.pem -out {who}.p12`)",
                ca::staff_identity(&who),
                out.display()
            );
            return Ok(());
        }
        (Some("staff"), None) => {
            return Err(Usage("provision staff NAME: name the staff member".into()).into());
        }
        (_, Some(extra)) => {
            return Err(Usage(format!(
                "provision: unexpected {extra:?} (a second name only after `staff`)"
            ))
            .into());
        }
        _ => {}
    }
    if broker.is_empty() {
        return Err(Usage("provision: --broker URL is required for a terminal".into()).into());
    }
    let db = database(db);
    let url: Brokers = parse("--broker", &broker.join(","))?;
    if let Some(n) = &name {
        not_empty("--name", n)?;
    }
    if !url.tls() {
        return Err(Usage(format!(
            "--broker {url}: provisioned terminals use mqtts://"
        ))
        .into());
    }
    if let Some(file) = batch {
        let text = std::fs::read_to_string(&file)
            .map_err(|e| Usage(format!("--batch {}: {e}", file.display())))?;
        let rows =
            ca::batch_rows(&text).map_err(|e| Usage(format!("--batch {}: {e}", file.display())))?;
        let bar = indicatif::ProgressBar::new(rows.len() as u64);
        let mut failed = 0;
        for (id, label) in &rows {
            let r = ca::provision(&ca_dir, id, &url, &out.join(id), label.as_deref(), force);
            if let Err(e) = r {
                bar.suspend(|| eprintln!("error: {id}: {e}"));
                failed += 1;
            }
            bar.inc(1);
        }
        bar.finish();
        remember_names(&db, &rows);
        println!(
            "{} bundles in {}, {failed} failed",
            rows.len() - failed,
            out.display()
        );
        return if failed == 0 {
            Ok(())
        } else {
            Err(Failure::Runtime(format!(
                "{failed} terminals not provisioned"
            )))
        };
    }
    let Some(id) = id else {
        return Err(Usage("give a terminal id or --batch FILE".into()).into());
    };
    identity(&id)?;
    ca::provision(&ca_dir, &id, &url, &out, name.as_deref(), force).map_err(fail)?;
    remember_names(&db, &[(id.clone(), name)]);
    println!("bundle for {id} in {}", out.display());
    if force {
        println!(
            "any earlier certificate of {id} is on {}: run `cuntong acl` and reload the broker (SIGHUP)",
            ca_dir.join(ca::CRL).display()
        );
    }
    Ok(())
}

pub fn run_acl(args: AclArgs) -> Result<(), Failure> {
    let AclArgs {
        ca: ca_dir,
        format,
        listen,
        server,
        out,
    } = args;
    if listen == 0 {
        return Err(Usage("--listen 0: the broker needs a port (1 to 65535)".into()).into());
    }
    if format != "mosquitto" {
        return Err(Usage(format!("--format {format:?}: only mosquitto is supported")).into());
    }
    ca::write_mosquitto(&ca_dir, listen, &server, &out).map_err(fail)?;
    println!(
        "{}/acl and {}/mosquitto.conf written",
        out.display(),
        out.display()
    );
    Ok(())
}

/// Keeps the names terminals were provisioned with in the store, for every view of central;
/// a store that cannot be written is reported, not fatal (the bundles are made).
fn remember_names(db: &Database, rows: &[(String, Option<String>)]) {
    let named: Vec<(TerminalId, &str)> = rows
        .iter()
        .filter_map(|(id, name)| Some((id.parse().ok()?, name.as_deref()?)))
        .collect();
    if named.is_empty() {
        return;
    }
    let saved = db.open().and_then(|mut store| {
        named
            .iter()
            .try_for_each(|(id, name)| store.set_terminal_name(id, name))
    });
    if let Err(e) = saved {
        eprintln!("warning: the names were not kept in the store: {e}");
    }
}
