//! The fleet CA: the keys and certificates of the broker, `central` and every terminal, the
//! inventory of what was issued, and the broker's ACLs that follow from it.
//!
//! A CA directory holds `ca.pem`, `ca-key.pem` (mode 0600), the remote-command signing key
//! `command-key.pk8` (Ed25519, 0600) with its public half `command.pub`, the release signing
//! key `release-key.pk8` with `release.pub`, and `inventory.json`.
//! A terminal's bundle holds `ca.pem`, `cert.pem` (CN = terminal id), `key.pem` (0600),
//! `command.pub`, `release.pub` and `terminal.toml`;
//! it is everything a technician copies onto the box. Broker ACLs are generated from the
//! inventory: each terminal may write only its own uplink topics and read only its own
//! downlinks and its ancestors' broadcasts; `central` reads every site and writes the
//! downlinks.
//!
//! Every certificate gets a random serial number, recorded in the inventory. Revoking an
//! identity (`cuntong ca revoke`, or issuing it again with `--force`) puts the serial on the
//! CA's certificate revocation list `crl.pem`, which the generated broker configuration uses.
//! Each process that connects needs an identity of its own, since the broker takes the client
//! id from the certificate: `central` for the service, `central-NAME` for each further
//! instance or operator's workstation. A central connects three times (its ingest, meeting and
//! control links, [`crate::central`]), so a central identity's bundle holds two more
//! certificates, its link identities `NAME.meeting` in `meeting/` and `NAME.control` in
//! `control/`, allowed in the ACL and revoked with it.

use std::path::{Path, PathBuf};

use cuntong_core::terminal_id::TerminalId;
use cuntong_core::topic::{Channel, PREFIX, Topic, meeting_filters, region_filter};
use cuntong_terminal::broker_url::Brokers;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SerialNumber,
};
use serde::{Deserialize, Serialize};

/// The reserved identity of the central service.
pub const CENTRAL: &str = "central";

/// Central's links beyond the first (ingest), each with an identity of its own: a central
/// identity's bundle holds each one's `ca.pem`, `cert.pem` and `key.pem` in a directory of
/// the link's name.
pub const LINKS: [&str; 2] = ["meeting", "control"];

/// The identity of central identity `name`'s link `link` (one of [`LINKS`]). `.` is never in
/// a central identity or a terminal id, so it names no other identity.
pub fn link_identity(name: &str, link: &str) -> String {
    format!("{name}.{link}")
}

/// Whether `name` is a central identity or the identity of one of its links.
fn is_central_or_link(name: &str) -> bool {
    is_central(name)
        || name
            .rsplit_once('.')
            .is_some_and(|(c, link)| is_central(c) && LINKS.contains(&link))
}

/// Checks that central's bundle `dir` holds the identities of all its links, naming what is
/// missing.
pub fn check_central_bundle(dir: &Path) -> Result<(), CaError> {
    let dirs = std::iter::once(dir.to_path_buf()).chain(LINKS.map(|l| dir.join(l)));
    for d in dirs {
        for file in ["ca.pem", "cert.pem", "key.pem"] {
            let path = d.join(file);
            if !path.is_file() {
                return Err(CaError::Refused(format!(
                    "{} is missing: central's bundle holds an identity for each of its links \
                     (in {}/ besides its own; a bundle provisioned before central had them \
                     lacks them): provision it again with `cuntong provision NAME --force`",
                    path.display(),
                    LINKS.join("/, ")
                )));
            }
        }
    }
    Ok(())
}

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

/// What the CA issued, and what it revoked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub issued: Vec<Issued>,
    /// Certificates no longer valid (on the CRL).
    #[serde(default)]
    pub revoked: Vec<Revoked>,
}

/// One issued identity.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Issued {
    /// Terminal id, `central` (or `central-NAME`), or a broker host name.
    pub name: String,
    /// `terminal`, `central` or `server`.
    pub kind: String,
    /// Unix ms.
    pub issued_ms: u64,
    /// The certificate's serial number in hex (absent for certificates issued before serials
    /// were recorded; those cannot be revoked one by one).
    #[serde(default)]
    pub serial: Option<String>,
}

/// One revoked certificate.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub name: String,
    /// Serial number in hex.
    pub serial: String,
    /// Unix ms.
    pub revoked_ms: u64,
}

/// Whether `name` is an identity of the central office: `central`, or `central-NAME` (NAME of
/// 1 to 32 characters `a-z0-9-`) for each further instance or workstation.
pub fn is_central(name: &str) -> bool {
    name == CENTRAL
        || name.strip_prefix("central-").is_some_and(|n| {
            (1..=32).contains(&n.len())
                && n.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

fn write_file(path: &Path, data: &[u8], secret: bool) -> Result<(), CaError> {
    use cuntong_terminal::atomic;
    if secret {
        atomic::write_secret(path, data)
    } else {
        atomic::write(path, data)
    }
    .map_err(io(path))
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
    write_crl(dir, &Inventory::default())?;
    // The command key signs remote commands, the release key signs releases: two keys, so
    // that one can be kept apart from the other. Terminals get their public halves.
    signing_key_pair(dir, "command-key.pk8", "command.pub")?;
    signing_key_pair(dir, RELEASE_KEY, RELEASE_PUB)?;
    save_inventory(dir, &Inventory::default())
}

/// The release signing key in a CA directory, and its public half.
pub const RELEASE_KEY: &str = "release-key.pk8";
pub const RELEASE_PUB: &str = "release.pub";

/// Makes an Ed25519 signing key (`secret`, 0600) and its public half (`public`, 64 hex digits).
fn signing_key_pair(dir: &Path, secret: &str, public: &str) -> Result<(), CaError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| CaError::Refused(format!("cannot generate {secret}")))?;
    let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| CaError::Refused(format!("cannot read back {secret}")))?;
    write_file(&dir.join(secret), pkcs8.as_ref(), true)?;
    let hex: String = ring::signature::KeyPair::public_key(&pair)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    write_file(&dir.join(public), format!("{hex}\n").as_bytes(), false)
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

/// The CA in `ca_dir` as an issuer, and its certificate's PEM.
fn issuer(ca_dir: &Path) -> Result<(Issuer<'static, KeyPair>, String), CaError> {
    let ca_pem_path = ca_dir.join("ca.pem");
    let ca_key_path = ca_dir.join("ca-key.pem");
    let ca_pem = std::fs::read_to_string(&ca_pem_path).map_err(io(&ca_pem_path))?;
    let ca_key_pem = std::fs::read_to_string(&ca_key_path).map_err(io(&ca_key_path))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem)?;
    Ok((Issuer::from_ca_cert_pem(&ca_pem, ca_key)?, ca_pem))
}

/// A certificate issued by the CA: its PEM, its key's PEM, the CA's PEM, its serial in hex.
struct IssuedCert {
    cert: String,
    key: String,
    ca: String,
    serial: String,
}

/// Issues a certificate signed by the CA in `ca_dir`, with a fresh random serial number.
fn issue(
    ca_dir: &Path,
    common_name: &str,
    sans: Vec<String>,
    usage: ExtendedKeyUsagePurpose,
) -> Result<IssuedCert, CaError> {
    let (issuer, ca) = issuer(ca_dir)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(sans)?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_after = rcgen::date_time_ymd(2036, 1, 1);
    let mut serial = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial)
        .map_err(|_| CaError::Refused("no randomness for a serial number".into()))?;
    serial[0] &= 0x7f; // a positive number, as RFC 5280 asks
    serial[0] |= 0x40; // and always 16 bytes long
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let cert = params.signed_by(&key, &issuer)?;
    Ok(IssuedCert {
        cert: cert.pem(),
        key: key.serialize_pem(),
        ca,
        serial: cuntong_terminal::hex::encode(&serial),
    })
}

/// Records a new certificate for `name`; one it replaces goes on the CRL.
fn record(ca_dir: &Path, name: &str, kind: &str, serial: String) -> Result<(), CaError> {
    let mut inv = inventory(ca_dir)?;
    let now = now_ms();
    let entry = Issued {
        name: name.to_owned(),
        kind: kind.to_owned(),
        issued_ms: now,
        serial: Some(serial),
    };
    match inv
        .issued
        .iter()
        .position(|i| i.name == name && i.kind == kind)
    {
        Some(i) => {
            let old = std::mem::replace(&mut inv.issued[i], entry);
            if let Some(serial) = old.serial {
                inv.revoked.push(Revoked {
                    name: old.name,
                    serial,
                    revoked_ms: now,
                });
            }
        }
        None => inv.issued.push(entry),
    }
    save_inventory(ca_dir, &inv)?;
    write_crl(ca_dir, &inv)
}

/// Revokes every certificate issued to `name` (a terminal id or a central identity, with its
/// links' identities): they go on the CRL, and the identity leaves the inventory (and so the
/// generated ACL).
pub fn revoke(ca_dir: &Path, name: &str) -> Result<(), CaError> {
    let mut inv = inventory(ca_dir)?;
    let links = LINKS.map(|l| link_identity(name, l));
    let (gone, kept): (Vec<Issued>, Vec<Issued>) = inv
        .issued
        .into_iter()
        .partition(|i| (i.name == name || links.contains(&i.name)) && i.kind != "server");
    inv.issued = kept;
    if gone.is_empty() {
        return Err(CaError::Refused(format!(
            "{name} was never provisioned by this CA"
        )));
    }
    let now = now_ms();
    let mut unknown = false;
    for i in gone {
        match i.serial {
            Some(serial) => inv.revoked.push(Revoked {
                name: i.name,
                serial,
                revoked_ms: now,
            }),
            None => unknown = true,
        }
    }
    save_inventory(ca_dir, &inv)?;
    write_crl(ca_dir, &inv)?;
    if unknown {
        return Err(CaError::Refused(format!(
            "{name}: a certificate issued before serial numbers were recorded cannot be put on \
             the CRL; {name} is out of the ACL, but replace the CA to lock that certificate out"
        )));
    }
    Ok(())
}

/// The CA's certificate revocation list.
pub const CRL: &str = "crl.pem";

/// Writes the CA's CRL (`crl.pem`) listing every revoked serial. It stays valid until the CA
/// expires: a broker refuses every client once its CRL is out of date.
fn write_crl(ca_dir: &Path, inv: &Inventory) -> Result<(), CaError> {
    let (issuer, _) = issuer(ca_dir)?;
    // Midnight (UTC) of the day of `ms`: CRL times, never in the future.
    let date_of = |ms: u64| {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
        let text = humantime::format_rfc3339_seconds(at).to_string();
        let num = |r: std::ops::Range<usize>| text.get(r).and_then(|t| t.parse::<u16>().ok());
        let day = |r| num(r).and_then(|n| u8::try_from(n).ok()).unwrap_or(1);
        rcgen::date_time_ymd(i32::from(num(0..4).unwrap_or(1970)), day(5..7), day(8..10))
    };
    let mut revoked_certs = Vec::new();
    for r in &inv.revoked {
        let Some(serial) = cuntong_terminal::hex::decode(&r.serial) else {
            return Err(CaError::Inventory {
                path: ca_dir.join("inventory.json"),
                detail: format!("revoked serial {:?} of {} is not hex", r.serial, r.name),
            });
        };
        revoked_certs.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(&serial),
            revocation_time: date_of(r.revoked_ms),
            reason_code: None,
            invalidity_date: None,
        });
    }
    let params = CertificateRevocationListParams {
        this_update: date_of(now_ms()),
        next_update: rcgen::date_time_ymd(2046, 1, 1),
        crl_number: SerialNumber::from(now_ms()),
        issuing_distribution_point: None,
        revoked_certs,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(&issuer)?;
    write_file(&ca_dir.join(CRL), crl.pem()?.as_bytes(), false)
}

/// Issues the broker's server certificate for `name` (a host name or IP address) into `out`:
/// `server.pem`, `server-key.pem`, `ca.pem`.
pub fn issue_server(ca_dir: &Path, name: &str, out: &Path) -> Result<(), CaError> {
    let mut sans = vec![name.to_owned()];
    if name != "localhost" && name != "127.0.0.1" {
        sans.push("localhost".to_owned());
    }
    let c = issue(ca_dir, name, sans, ExtendedKeyUsagePurpose::ServerAuth)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_file(&out.join("server.pem"), c.cert.as_bytes(), false)?;
    write_file(&out.join("server-key.pem"), c.key.as_bytes(), true)?;
    write_file(&out.join("ca.pem"), c.ca.as_bytes(), false)?;
    record(ca_dir, name, "server", c.serial)
}

/// The common name of staff member `name`'s certificate: a terminal id or a central identity
/// never has a colon, so a box's certificate is never taken for a person's.
pub fn staff_identity(name: &str) -> String {
    format!("{STAFF_PREFIX}{name}")
}

/// What starts the common name of a staff certificate.
pub const STAFF_PREFIX: &str = "staff:";

/// Issues staff member `name` a client certificate for the dashboard (`cuntong central
/// --http-tls`) into `out`: `cert.pem`, `key.pem` and the CA's `ca.pem`. The broker's ACL
/// gives it nothing; `cuntong ca revoke staff:NAME` puts it on the CRL.
pub fn provision_staff(ca_dir: &Path, name: &str, out: &Path, force: bool) -> Result<(), CaError> {
    crate::staff::check_name(name).map_err(|e| CaError::Refused(e.to_string()))?;
    let cn = staff_identity(name);
    if !force
        && inventory(ca_dir)?
            .issued
            .iter()
            .any(|i| i.name == cn && i.kind == "staff")
    {
        return Err(CaError::Refused(format!(
            "{cn} was already provisioned (use --force to issue it again)"
        )));
    }
    let c = issue(ca_dir, &cn, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    write_file(&out.join("ca.pem"), c.ca.as_bytes(), false)?;
    write_file(&out.join("cert.pem"), c.cert.as_bytes(), false)?;
    write_file(&out.join("key.pem"), c.key.as_bytes(), true)?;
    record(ca_dir, &cn, "staff", c.serial)
}

/// Provisions a terminal (or `central`) into the bundle directory `out`; its config names
/// `broker` (a cluster's nodes as a list).
pub fn provision(
    ca_dir: &Path,
    id: &str,
    broker: &Brokers,
    out: &Path,
    name: Option<&str>,
    force: bool,
) -> Result<(), CaError> {
    let kind = if is_central(id) {
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
    let c = issue(ca_dir, id, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)?;
    write_identity(out, &c)?;
    if kind == "central" {
        for link in LINKS {
            let name = link_identity(id, link);
            let l = issue(
                ca_dir,
                &name,
                Vec::new(),
                ExtendedKeyUsagePurpose::ClientAuth,
            )?;
            write_identity(&out.join(link), &l)?;
            record(ca_dir, &name, kind, l.serial)?;
        }
    }
    let label = name.map(|n| format!("# {n}\n")).unwrap_or_default();
    let broker = match broker.len() {
        1 => format!("\"{}\"", broker.first()),
        _ => format!(
            "[{}]",
            broker
                .iter()
                .map(|b| format!("\"{b}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let mut tls = String::from("[tls]\nca = \"ca.pem\"\ncert = \"cert.pem\"\nkey = \"key.pem\"\n");
    let command_pub = ca_dir.join("command.pub");
    if kind == "terminal" && command_pub.exists() {
        std::fs::copy(&command_pub, out.join("command.pub")).map_err(io(&command_pub))?;
        tls.push_str(
            "\n[commands]\nkey = \"command.pub\"\n# reboot = [\"systemctl\", \"reboot\"]\n",
        );
    }
    let release_pub = ca_dir.join(RELEASE_PUB);
    if kind == "terminal" && release_pub.exists() {
        std::fs::copy(&release_pub, out.join(RELEASE_PUB)).map_err(io(&release_pub))?;
        tls.push_str("\n[update]\nkey = \"release.pub\"\n# max_rate = \"64KiB\"\n");
    }
    if kind == "central" {
        let text = format!("{label}broker = {broker}\n\n{tls}");
        write_file(&out.join("central.toml"), text.as_bytes(), false)?;
    } else {
        let text = format!(
            "{label}id = \"{id}\"\nbroker = {broker}\ndata_dir = \"/var/lib/cuntong\"\n\n{tls}"
        );
        write_file(&out.join("terminal.toml"), text.as_bytes(), false)?;
    }
    record(ca_dir, id, kind, c.serial)?;
    archive(out)
}

/// Writes a certificate, its key (mode 0600) and the CA's certificate into `dir`.
fn write_identity(dir: &Path, c: &IssuedCert) -> Result<(), CaError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    write_file(&dir.join("ca.pem"), c.ca.as_bytes(), false)?;
    write_file(&dir.join("cert.pem"), c.cert.as_bytes(), false)?;
    write_file(&dir.join("key.pem"), c.key.as_bytes(), true)
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
    let mut centrals = vec![CENTRAL.to_owned()];
    centrals.extend(LINKS.map(|l| link_identity(CENTRAL, l)));
    for i in &inv.issued {
        if i.kind == "central" && is_central_or_link(&i.name) && !centrals.contains(&i.name) {
            centrals.push(i.name.clone());
        }
    }
    for name in centrals {
        out.push_str(&format!("\nuser {name}\n"));
        // Every channel: central reads the uplinks (and clears retained junk on them) and
        // writes the downlinks.
        for c in Channel::ALL {
            out.push_str(&format!("topic readwrite {}\n", all(c)));
        }
        out.push_str(&format!(
            "topic write {PREFIX}/b/#\ntopic readwrite {PREFIX}/m/#\ntopic readwrite {PREFIX}/s/#\ntopic readwrite {PREFIX}/c/#\n"
        ));
    }
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

/// The `mosquitto.conf` of a TLS listener on `port`: a client certificate from the fleet CA
/// is required, not revoked (`crl`), and its CN is both the user name (for the ACL) and the
/// client id (so no one takes over another's session); messages larger than the protocol
/// allows are refused; retained messages and queued commands survive a restart (`data`).
pub fn mosquitto_conf(port: u16, server: &Path, acl: &Path, crl: &Path, data: &Path) -> String {
    format!(
        "# Generated by `cuntong acl`. Reload (SIGHUP) after regenerating: ACL and CRL.\n\
         per_listener_settings false\nallow_anonymous false\n\
         persistence true\npersistence_location {}/\nautosave_interval 60\n\
         # central takes every site's answers at once (roll calls, reconnect storms)\n\
         max_queued_messages 100000\nmax_inflight_messages 1000\n\
         # nothing in the protocol is larger: a bigger message is dropped, not retained or\n\
         # delivered (Mosquitto notes that it prefers max_packet_size; that one is for packets)\n\
         message_size_limit {max_payload}\n\
         # a client sending a bigger packet is disconnected\n\
         max_packet_size {max_packet}\n\
         listener {port}\ncafile {}\ncertfile {}\nkeyfile {}\ncrlfile {}\n\
         require_certificate true\nuse_identity_as_username true\nuse_username_as_clientid true\n\
         acl_file {}\n",
        data.display(),
        server.join("ca.pem").display(),
        server.join("server.pem").display(),
        server.join("server-key.pem").display(),
        crl.display(),
        acl.display(),
        max_packet = cuntong_terminal::link::MAX_BROKER_PACKET,
        max_payload = cuntong_terminal::link::MAX_PAYLOAD,
    )
}

/// Writes `acl`, `crl.pem` (the CA's revocation list), `mosquitto.conf` and the persistence
/// directory `data/` into `out`.
pub fn write_mosquitto(ca_dir: &Path, port: u16, server: &Path, out: &Path) -> Result<(), CaError> {
    let inv = inventory(ca_dir)?;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let acl = out.join("acl");
    write_file(&acl, mosquitto_acl(&inv).as_bytes(), false)?;
    // A CA made before revocation existed has no CRL yet.
    let ca_crl = ca_dir.join(CRL);
    if !ca_crl.exists() {
        write_crl(ca_dir, &inv)?;
    }
    let crl = out.join(CRL);
    std::fs::copy(&ca_crl, &crl).map_err(io(&ca_crl))?;
    let data = out.join("data");
    std::fs::create_dir_all(&data).map_err(io(&data))?;
    let abs = |p: &Path| std::fs::canonicalize(p).map_err(io(p));
    let server = abs(server)?;
    let conf = mosquitto_conf(port, &server, &abs(&acl)?, &abs(&crl)?, &abs(&data)?);
    write_file(&out.join("mosquitto.conf"), conf.as_bytes(), false)?;
    give_to_broker(&server.join("server-key.pem"))?;
    give_to_broker(&data)
}

/// Mosquitto started as root drops to the `mosquitto` user before it reads its key and writes
/// its state, so the server key (mode 0600) and the persistence directory must belong to that
/// user. Done when this runs as root and the user exists; otherwise they stay as they are.
fn give_to_broker(key: &Path) -> Result<(), CaError> {
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
mod tests;
