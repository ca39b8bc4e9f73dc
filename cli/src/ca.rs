//! The fleet CA: the keys and certificates of the broker, `central` and every terminal, the
//! inventory of what was issued, and the broker's ACLs that follow from it.
//!
//! A CA directory holds `ca.pem`, `ca-key.pem` (mode 0600), the remote-command signing key
//! `command-key.pk8` (Ed25519, 0600) with its public half `command.pub`, and `inventory.json`.
//! A terminal's bundle holds `ca.pem`, `cert.pem` (CN = terminal id), `key.pem` (0600),
//! `command.pub` and `terminal.toml`;
//! it is everything a technician copies onto the box. Broker ACLs are generated from the
//! inventory: each terminal may write only its own uplink topics and read only its own
//! downlinks and its ancestors' broadcasts; `central` reads every site and writes the
//! downlinks.

use std::io::Write;
use std::path::{Path, PathBuf};

use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, PREFIX, Topic, meeting_filters, region_filter};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use serde::{Deserialize, Serialize};

/// The reserved identity of the central service.
pub const CENTRAL: &str = "central";

/// Why a CA operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("{path}: {detail}")]
    Inventory { path: PathBuf, detail: String },
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CaError + use<> {
    let path = path.to_owned();
    move |source| CaError::Io {
        path: path.clone(),
        source,
    }
}

/// What the CA issued.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub issued: Vec<Issued>,
}

/// One issued identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Terminal id, `central`, or a broker host name.
    pub name: String,
    /// `terminal`, `central` or `server`.
    pub kind: String,
    /// Unix ms.
    pub issued_ms: u64,
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        opts.mode(0o600);
    }
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(data).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

fn now_ms() -> u64 {
    cuntong_terminal::link::unix_ms()
}

/// Creates a fleet CA in `dir` (which must not hold one already).
pub fn init(dir: &Path) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    if dir.join("ca.pem").exists() {
        return Err(CaError::Refused(format!(
            "{} already holds a CA; refusing to overwrite it",
            dir.display()
        )));
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "cuntong fleet CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_after = rcgen::date_time_ymd(2046, 1, 1);
    let cert = params.self_signed(&key)?;
    write_file(
        &dir.join("ca-key.pem"),
        key.serialize_pem().as_bytes(),
        true,
    )?;
    write_file(&dir.join("ca.pem"), cert.pem().as_bytes(), false)?;
    // The command key signs remote commands; terminals get its public half in their bundle.
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| CaError::Refused("cannot generate the command key".into()))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| CaError::Refused("cannot read back the command key".into()))?;
    write_file(&dir.join("command-key.pk8"), pkcs8.as_ref(), true)?;
    let public: String = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_file(
        &dir.join("command.pub"),
        format!("{public}\n").as_bytes(),
        false,
    )?;
    save_inventory(dir, &Inventory::default())
}

/// The CA's inventory.
pub fn inventory(dir: &Path) -> Result<Inventory, CaError> {
    let path = dir.join("inventory.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|e| CaError::Inventory {
        path,
        detail: e.to_string(),
    })
}

fn save_inventory(dir: &Path, inv: &Inventory) -> Result<(), CaError> {
    let path = dir.join("inventory.json");
    let text = serde_json::to_string_pretty(inv).map_err(|e| CaError::Inventory {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    write_file(&path, text.as_bytes(), false)
}

/// Issues a certificate signed by the CA in `ca_dir`; returns (cert PEM, key PEM, CA PEM).
fn issue(
    ca_dir: &Path,
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<(String, String, String), CaError> {
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca-key.pem");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let cert = params.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem(), ca_pem))
}

fn record(ca_dir: &Path, name: &str, kind: &str, force: bool) -> Result<(), CaError> {
    let mut inv = inventory(ca_dir)?;
    let existing = inv
        .issued
        .iter()
        .position(|i| i.name == name && i.kind == kind);
    match (existing, force) {
        (Some(_), false) if kind != "server" => {
            return Err(CaError::Refused(format!(
                "{name} was already provisioned (use --force to issue it again)"
            )));
        }
        (Some(i), _) => inv.issued[i].issued_ms = now_ms(),
        (None, _) => inv.issued.push(Issued {
            name: name.to_owned(),
            kind: kind.to_owned(),
            issued_ms: now_ms(),
        }),
    }
    save_inventory(ca_dir, &inv)
}

/// Issues the broker's server certificate for `name` (a host name or IP address) into `out`:
/// `server.pem`, `server-key.pem`, `ca.pem`.
pub fn issue_server(ca_dir: &Path, name: &str, out: &Path) -> Result<(), CaError> {
    let mut sans = vec![name.to_owned()];
    if name != "localhost" && name != "127.0.0.1" {
        sans.push("localhost".to_owned());
    }
    let (cert, key, ca) = issue(ca_dir, name, sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_file(&out.join("server.pem"), cert.as_bytes(), false)?;
    write_file(&out.join("server-key.pem"), key.as_bytes(), true)?;
    write_file(&out.join("ca.pem"), ca.as_bytes(), false)?;
    record(ca_dir, name, "server", true)
}

/// Provisions a terminal (or `central`) into the bundle directory `out`.
pub fn provision(
    ca_dir: &Path,
    id: &str,
    broker: &str,
    out: &Path,
    name: Option<&str>,
    force: bool,
) -> Result<(), CaError> {
    let kind = if id == CENTRAL {
        "central"
    } else {
        id.parse::<TerminalId>()
            .map_err(|e| CaError::Refused(format!("terminal id {id:?}: {e}")))?;
        "terminal"
    };
    if !force
        && inventory(ca_dir)?
            .issued
            .iter()
            .any(|i| i.name == id && i.kind == kind)
    {
        return Err(CaError::Refused(format!(
            "{id} was already provisioned (use --force to issue it again)"
        )));
    }
    let (cert, key, ca) = issue(ca_dir, id, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_file(&out.join("ca.pem"), ca.as_bytes(), false)?;
    write_file(&out.join("cert.pem"), cert.as_bytes(), false)?;
    write_file(&out.join("key.pem"), key.as_bytes(), true)?;
    let label = name.map(|n| format!("# {n}\n")).unwrap_or_default();
    let mut tls = String::from("[tls]\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    let command_pub = ca_dir.join("command.pub");
    if kind == "terminal" && command_pub.exists() {
        std::fs::copy(&command_pub, out.join("command.pub")).map_err(io(&command_pub))?;
        tls.push_str(
            "\n[commands]\nkey = \"command.pub\"\n# reboot = [\"systemctl\", \"reboot\"]\n",
        );
    }
    if kind == "central" {
        let text = format!("{label}broker = \"{broker}\"\n\n{tls}");
        write_file(&out.join("central.toml"), text.as_bytes(), false)?;
    } else {
        let text = format!(
            "{label}id = \"{id}\"\nbroker = \"{broker}\"\ndata_dir = \"/var/lib/cuntong\"\n\n{tls}"
        );
        write_file(&out.join("terminal.toml"), text.as_bytes(), false)?;
    }
    record(ca_dir, id, kind, true)?;
    archive(out)
}

/// Writes `<out>.tar` beside the bundle directory: one file to carry to the site.
fn archive(out: &Path) -> Result<(), CaError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "bundle".into());
    let path = out.with_file_name(format!("{name}.tar"));
    let file = std::fs::File::create(&path).map_err(io(&path))?;
    let mut tar = tar::Builder::new(file);
    // Complete headers keep key.pem at 0600 when the technician unpacks the bundle.
    tar.mode(tar::HeaderMode::Complete);
    tar.append_dir_all(&name, out).map_err(io(&path))?;
    tar.into_inner()
        .and_then(|f| f.sync_all())
        .map_err(io(&path))
}

/// One row of a batch file: `id,name` (name optional; a header row `id,...` is skipped).
pub fn batch_rows(text: &str) -> Result<Vec<(String, Option<String>)>, CaError> {
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || (i == 0 && line.starts_with("id")) {
            continue;
        }
        let (id, name) = match line.split_once(',') {
            Some((id, name)) => (id.trim(), Some(name.trim().trim_matches('"').to_owned())),
            None => (line, None),
        };
        id.parse::<TerminalId>()
            .map_err(|e| CaError::Refused(format!("line {}: terminal id {id:?}: {e}", i + 1)))?;
        rows.push((id.to_owned(), name.filter(|n| !n.is_empty())));
    }
    Ok(rows)
}

/// The Mosquitto `acl_file` for everything in the inventory.
pub fn mosquitto_acl(inv: &Inventory) -> String {
    let all = |c: Channel| region_filter(None, Some(c));
    let mut out =
        String::from("# Generated by `cuntong acl` from the CA inventory. Do not edit.\n");
    out.push_str(&format!("\nuser {CENTRAL}\n"));
    for c in [
        Channel::Presence,
        Channel::Telemetry,
        Channel::Events,
        Channel::MeetingUp,
        Channel::Result,
    ] {
        out.push_str(&format!("topic read {}\n", all(c)));
    }
    for c in [
        Channel::Ack,
        Channel::Command,
        Channel::MeetingDown,
        Channel::Notice,
    ] {
        out.push_str(&format!("topic readwrite {}\n", all(c)));
    }
    out.push_str(&format!(
        "topic write {PREFIX}/b/#\ntopic readwrite {PREFIX}/m/#\ntopic readwrite {PREFIX}/c/#\n"
    ));
    for i in inv.issued.iter().filter(|i| i.kind == "terminal") {
        let Ok(id) = i.name.parse::<TerminalId>() else {
            continue;
        };
        out.push_str(&format!("\nuser {id}\n"));
        for c in Channel::ALL {
            let topic = Topic::terminal(&id, c);
            let access = if c.is_uplink() { "write" } else { "read" };
            out.push_str(&format!("topic {access} {topic}\n"));
        }
        for b in Topic::broadcasts_for(id.site()) {
            out.push_str(&format!("topic read {b}\n"));
        }
        // Only the sessions its regions, or it alone, are invited to.
        for f in meeting_filters(&id) {
            out.push_str(&format!("topic read {f}\n"));
        }
    }
    out
}

/// Writes `acl` and `mosquitto.conf` into `out`: a TLS listener on `port` that requires a
/// client certificate from the fleet CA and uses its CN as the user name.
pub fn write_mosquitto(ca_dir: &Path, port: u16, server: &Path, out: &Path) -> Result<(), CaError> {
    let inv = inventory(ca_dir)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let acl = out.join("acl");
    write_file(&acl, mosquitto_acl(&inv).as_bytes(), false)?;
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(io(p));
    let server = abs(server)?;
    let acl = abs(&acl)?;
    let conf = format!(
        "# Generated by `cuntong acl`.\nper_listener_settings false\nallow_anonymous false\npersistence false\n\
         # central takes every site's answers at once (roll calls, reconnect storms)\n\
         max_queued_messages 100000\nmax_inflight_messages 1000\n\
         listener {port}\ncafile {}\ncertfile {}\nkeyfile {}\nrequire_certificate true\n\
         use_identity_as_username true\nacl_file {}\n",
        server.join("ca.pem").display(),
        server.join("server.pem").display(),
        server.join("server-key.pem").display(),
        acl.display()
    );
    write_file(&out.join("mosquitto.conf"), conf.as_bytes(), false)?;
    give_key_to_broker(&server.join("server-key.pem"))
}

/// Mosquitto started as root drops to the `mosquitto` user before it reads its key, so the
/// server key (mode 0600) must belong to that user. Done when this runs as root and the user
/// exists; otherwise the key stays as it is.
fn give_key_to_broker(key: &Path) -> Result<(), CaError> {
    let Ok(passwd) = std::fs::read_to_string("/etc/passwd") else {
        return Ok(());
    };
    let ids = passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.first() == Some(&"mosquitto") && f.len() > 3)
            .then(|| Some((f[2].parse::<u32>().ok()?, f[3].parse::<u32>().ok()?)))
            .flatten()
    });
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    if let (Some((uid, gid)), true) = (ids, is_root) {
        std::os::unix::fs::chown(key, Some(uid), Some(gid)).map_err(io(key))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_bundle_holds_everything_and_keeps_its_key_private() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, out) = (dir.path().join("ca"), dir.path().join("site"));
        init(&ca).unwrap();
        assert!(init(&ca).is_err(), "an existing CA is never overwritten");
        provision(
            &ca,
            "130102001001-main",
            "mqtts://h:8883",
            &out,
            Some("Xinhua"),
            false,
        )
        .unwrap();
        for f in [
            "ca.pem",
            "cert.pem",
            "key.pem",
            "command.pub",
            "terminal.toml",
        ] {
            assert!(out.join(f).exists(), "{f}");
        }
        let mode = std::fs::metadata(out.join("key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let cfg =
            cuntong_terminal::config::TerminalConfig::load(&out.join("terminal.toml")).unwrap();
        assert_eq!(cfg.id.to_string(), "130102001001-main");
        assert!(cfg.tls.is_some() && cfg.commands.is_some());
        let mut archive =
            tar::Archive::new(std::fs::File::open(dir.path().join("site.tar")).unwrap());
        let key_mode = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap())
            .find(|e| e.path().unwrap().ends_with("key.pem"))
            .map(|e| e.header().mode().unwrap());
        assert_eq!(key_mode.map(|m| m & 0o777), Some(0o600));
        assert!(
            provision(
                &ca,
                "130102001001-main",
                "mqtts://h:8883",
                &out,
                None,
                false
            )
            .is_err()
        );
        assert!(provision(&ca, "130102001001-main", "mqtts://h:8883", &out, None, true).is_ok());
        let acl = mosquitto_acl(&inventory(&ca).unwrap());
        assert!(acl.contains(
            "user 130102001001-main\ntopic write ct/v1/t/13/01/02/001/001/main/presence"
        ));
    }

    #[test]
    fn batch_files_are_checked_row_by_row() {
        let rows =
            batch_rows("id,name\n130102001001-main,\"Xinhua\"\n\n130102002001-main\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].1.as_deref(), Some("Xinhua"));
        assert_eq!(rows[1].1, None);
        let err = batch_rows("130102001001-main\nnot-an-id\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("line 2: terminal id \"not-an-id\""),
            "{err}"
        );
    }
}
