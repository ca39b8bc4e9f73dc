//! The fleet CA's provisioning, revocation and ACL, on real certificates.

use super::*;
use std::os::unix::fs::PermissionsExt;

#[test]
fn a_bundle_for_a_cluster_names_every_node_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, out) = (dir.path().join("ca"), dir.path().join("site"));
    init(&ca).unwrap();
    let nodes: Brokers = "mqtts://a:8883,mqtts://b:8883,mqtts://c".parse().unwrap();
    provision(&ca, "130102001001-main", &nodes, &out, None, false).unwrap();
    let cfg = cuntong_terminal::config::TerminalConfig::load(&out.join("terminal.toml")).unwrap();
    assert_eq!(cfg.broker, nodes);
}

#[test]
fn a_bundle_holds_everything_and_keeps_its_key_private() {
    let dir = tempfile::tempdir().unwrap();
    let (ca, out) = (dir.path().join("ca"), dir.path().join("site"));
    init(&ca).unwrap();
    assert!(init(&ca).is_err(), "an existing CA is never overwritten");
    provision(
        &ca,
        "130102001001-main",
        &"mqtts://h:8883".parse().unwrap(),
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
        "release.pub",
        "terminal.toml",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let mode = std::fs::metadata(out.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let cfg = cuntong_terminal::config::TerminalConfig::load(&out.join("terminal.toml")).unwrap();
    assert_eq!(cfg.id.to_string(), "130102001001-main");
    assert!(cfg.tls.is_some() && cfg.commands.is_some() && cfg.update.is_some());
    let mut archive = tar::Archive::new(std::fs::File::open(dir.path().join("site.tar")).unwrap());
    let key_mode = archive
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().ends_with("key.pem"))
        .map(|e| e.header().mode().unwrap());
    assert_eq!(key_mode.map(|m| m & 0o777), Some(0o600));
    // The same bundle again: refused, unless forced.
    let again = |force| {
        let broker = "mqtts://h:8883".parse().unwrap();
        provision(&ca, "130102001001-main", &broker, &out, None, force)
    };
    assert!(again(false).is_err());
    assert!(again(true).is_ok());
    let acl = mosquitto_acl(&inventory(&ca).unwrap());
    assert!(
        acl.contains("user 130102001001-main\ntopic write ct/v1/t/13/01/02/001/001/main/presence")
    );
}

#[test]
fn reissuing_or_revoking_puts_the_old_certificate_on_the_crl_and_revoked_ids_leave_the_acl() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    init(&ca).unwrap();
    let empty_crl = std::fs::read_to_string(ca.join(CRL)).unwrap();
    assert!(
        empty_crl.starts_with("-----BEGIN X509 CRL-----"),
        "{empty_crl}"
    );
    let (a, b) = ("130102001001-main", "130102002001-main");
    for id in [a, b, "central", "central-ops"] {
        provision(
            &ca,
            id,
            &"mqtts://h:8883".parse().unwrap(),
            &dir.path().join(id),
            None,
            false,
        )
        .unwrap();
    }
    let serial = |id: &str| {
        inventory(&ca)
            .unwrap()
            .issued
            .iter()
            .find(|i| i.name == id)
            .and_then(|i| i.serial.clone())
            .unwrap()
    };
    let first = serial(a);
    assert_eq!(first.len(), 32, "16 random bytes");
    assert_ne!(first, serial(b));
    provision(
        &ca,
        a,
        &"mqtts://h:8883".parse().unwrap(),
        &dir.path().join("a2"),
        None,
        true,
    )
    .unwrap();
    let inv = inventory(&ca).unwrap();
    assert_ne!(serial(a), first, "a new certificate");
    assert_eq!(inv.revoked.len(), 1);
    assert_eq!(
        (inv.revoked[0].name.as_str(), &inv.revoked[0].serial),
        (a, &first)
    );
    assert!(
        mosquitto_acl(&inv).contains(&format!("user {a}\n")),
        "replaced, not removed"
    );

    revoke(&ca, b).unwrap();
    let inv = inventory(&ca).unwrap();
    assert_eq!(inv.revoked.len(), 2);
    let acl = mosquitto_acl(&inv);
    assert!(!acl.contains(&format!("user {b}")), "{acl}");
    assert!(acl.contains("user central\n") && acl.contains("user central-ops\n"));
    assert!(std::fs::read_to_string(ca.join(CRL)).unwrap() != empty_crl);
    let err = revoke(&ca, b).unwrap_err().to_string();
    assert!(err.contains("never provisioned"), "{err}");
}

#[test]
fn a_central_bundle_holds_its_links_identities_allowed_and_revoked_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca");
    init(&ca).unwrap();
    let out = dir.path().join("central-ops");
    let broker = "mqtts://h:8883".parse().unwrap();
    provision(&ca, "central-ops", &broker, &out, None, false).unwrap();
    check_central_bundle(&out).unwrap();
    let certs: std::collections::BTreeSet<Vec<u8>> =
        ["cert.pem", "meeting/cert.pem", "control/cert.pem"]
            .iter()
            .map(|f| std::fs::read(out.join(f)).unwrap())
            .collect();
    assert_eq!(certs.len(), 3, "a certificate of its own for each link");
    let inv = inventory(&ca).unwrap();
    let names: Vec<&str> = inv.issued.iter().map(|i| i.name.as_str()).collect();
    let links = ["central-ops.meeting", "central-ops.control"];
    assert_eq!(names, [links[0], links[1], "central-ops"]);
    let acl = mosquitto_acl(&inv);
    let users = [
        "central",
        "central.meeting",
        "central.control",
        "central-ops",
    ];
    for user in users.into_iter().chain(links) {
        assert_eq!(
            acl.matches(&format!("user {user}\n")).count(),
            1,
            "{user}: {acl}"
        );
    }

    revoke(&ca, "central-ops").unwrap();
    let inv = inventory(&ca).unwrap();
    let revoked: Vec<&str> = inv.revoked.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(revoked, [links[0], links[1], "central-ops"]);
    let acl = mosquitto_acl(&inv);
    assert!(!acl.contains("central-ops"), "{acl}");

    std::fs::remove_dir_all(out.join("control")).unwrap();
    let err = check_central_bundle(&out).unwrap_err().to_string();
    assert!(
        err.contains("control/ca.pem is missing") && err.contains("--force"),
        "{err}"
    );
}

#[test]
fn central_identities_are_central_or_central_and_a_name() {
    for ok in ["central", "central-ops", "central-2", "central-a-b"] {
        assert!(is_central(ok), "{ok}");
    }
    for not in [
        "central-",
        "central-OPS",
        "centrals",
        "central-x/y",
        "130102001001-main",
    ] {
        assert!(!is_central(not), "{not}");
    }
    assert!(!is_central(&format!("central-{}", "x".repeat(33))));
}

#[test]
fn the_generated_broker_configuration_binds_ids_to_certificates_and_bounds_messages() {
    let conf = mosquitto_conf(
        8883,
        Path::new("/srv/server"),
        Path::new("/srv/b/acl"),
        Path::new("/srv/b/crl.pem"),
        Path::new("/srv/b/data"),
    );
    let lines: Vec<&str> = conf.lines().collect();
    for want in [
        "require_certificate true",
        "use_identity_as_username true",
        "use_username_as_clientid true",
        "crlfile /srv/b/crl.pem",
        "persistence true",
        "persistence_location /srv/b/data/",
        "acl_file /srv/b/acl",
        "allow_anonymous false",
    ] {
        assert!(lines.contains(&want), "{want} missing:\n{conf}");
    }
    let limit = format!(
        "max_packet_size {}",
        cuntong_terminal::link::MAX_BROKER_PACKET
    );
    assert!(lines.contains(&limit.as_str()), "{conf}");
    let limit = format!("message_size_limit {}", cuntong_terminal::link::MAX_PAYLOAD);
    assert!(lines.contains(&limit.as_str()), "{conf}");
    // What a broker we configure delivers never cuts a client's link.
    const {
        assert!(cuntong_core::envelope::MAX_PAYLOAD < cuntong_terminal::link::MAX_BROKER_PACKET);
        assert!(
            cuntong_terminal::link::MAX_BROKER_PACKET < cuntong_terminal::link::MAX_RECEIVED_PACKET
        );
    }
    let embedded = crate::broker::config("127.0.0.1:1883".parse().unwrap(), 10, None);
    let v4 = embedded.v4.unwrap();
    assert_eq!(
        v4["1"].connections.max_payload_size,
        cuntong_terminal::link::MAX_BROKER_PACKET
    );
}

#[test]
fn batch_files_are_checked_row_by_row() {
    let rows = batch_rows("id,name\n130102001001-main,\"Xinhua\"\n\n130102002001-main\n").unwrap();
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
