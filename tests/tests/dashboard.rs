//! The web dashboard in a real headless browser (Debian's Chromium through ChromeDriver): the
//! page served by `cuntong central --http` loads, shows the simulated fleet, and updates by
//! itself (no reload) when a terminal goes offline; the region tree counts it at the county
//! and reads the official names (长安区, 河北省); a terminal's history is drawn as charts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cuntong_e2e::browser::Browser;
use cuntong_e2e::{Broker, BrokerKind, central_with, sim_fleet, sites, wait_until};
use serde_json::Value;

const ROWS: &str = "return Array.from(document.querySelectorAll('#terminals tr[data-terminal]'))
    .map(r => [r.dataset.terminal, r.dataset.online]);";

fn rows(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r[0].as_str().unwrap().to_owned(),
                        r[1].as_str().unwrap().to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_dashboard_shows_the_fleet_and_updates_when_a_terminal_goes_offline() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let db = d.join("central.db");
    let central = central_with(&broker, &db, d, &["--http", "127.0.0.1:0"]);
    let addr = central.bound("dashboard: ");
    let _township = sim_fleet(&broker.url, "130102001", 3, d, "township");
    let mut village = sim_fleet(&broker.url, "130102001009", 1, d, "village");
    assert!(
        wait_until(Duration::from_secs(30), || {
            sites(&db, None).iter().filter(|s| s.online).count() == 4
        }),
        "the fleet did not come online: {}",
        central.log_text()
    );

    let browser = Browser::start(d);
    browser.open(&format!("http://{addr}/#r=130102001"));
    // The page's own marker: still there at the end means the page was never reloaded.
    browser.eval("window.cuntongTestMarker = 42; return null;");
    let all_online = browser
        .wait_for(Duration::from_secs(20), ROWS, |v| {
            let r = rows(v);
            r.len() == 4 && r.iter().all(|(_, online)| online == "true")
        })
        .unwrap_or_else(|v| panic!("the page did not show 4 online terminals: {v}"));
    let ids: Vec<String> = rows(&all_online).into_iter().map(|(id, _)| id).collect();
    assert!(ids.contains(&"130102001009-main".to_owned()), "{ids:?}");
    let summary = browser.eval(
        "const s = document.getElementById('summary').dataset; return [s.terminals, s.online, s.offline];",
    );
    assert_eq!(summary, serde_json::json!(["4", "4", "0"]));
    assert_eq!(
        browser.eval("return document.getElementById('link').textContent;"),
        serde_json::json!("live")
    );

    // The village's terminal stops: the page shows it offline by itself.
    village.kill();
    let after = browser
        .wait_for(Duration::from_secs(30), ROWS, |v| {
            rows(v)
                .iter()
                .any(|(id, online)| id == "130102001009-main" && online == "false")
        })
        .unwrap_or_else(|v| panic!("the page did not show the village offline: {v}"));
    let offline: Vec<String> = rows(&after)
        .into_iter()
        .filter(|(_, online)| online == "false")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(offline, vec!["130102001009-main".to_owned()]);
    assert_eq!(
        browser.eval("return window.cuntongTestMarker;"),
        serde_json::json!(42),
        "the page was reloaded"
    );

    // Up to the county (in the page, no reload): the township's row counts the offline one.
    browser.eval("location.hash = 'r=130102'; return null;");
    let township = browser
        .wait_for(
            Duration::from_secs(10),
            "const r = document.querySelector('#regions tr[data-region=\"130102001\"]');
             return r ? Array.from(r.cells).slice(3, 6).map(c => c.textContent) : null;",
            |v| v == &serde_json::json!(["4", "3", "1"]),
        )
        .unwrap_or_else(|v| panic!("the county view did not count the township: {v}"));
    assert_eq!(township, serde_json::json!(["4", "3", "1"]));
    // People read names: the township's official name in its row, the county's and the
    // province's in the tree's path and title.
    let names = browser.eval(
        "const r = document.querySelector('#regions tr[data-region=\"130102001\"]');
         return [r.cells[0].textContent, document.getElementById('crumbs').textContent,
                 document.getElementById('tree-title').textContent];",
    );
    assert_eq!(names[0], "建北街道", "{names}");
    let crumbs = names[1].as_str().unwrap();
    assert!(
        crumbs.contains("河北省") && crumbs.contains("石家庄市") && crumbs.contains("长安区"),
        "{crumbs}"
    );
    assert!(names[2].as_str().unwrap().contains("长安区"), "{names}");
    // The whole network: the province by its name.
    browser.eval("location.hash = ''; return null;");
    browser
        .wait_for(
            Duration::from_secs(10),
            "const r = document.querySelector('#regions tr[data-region=\"13\"]');
             return r ? r.cells[0].textContent : null;",
            |v| v == "河北省",
        )
        .unwrap_or_else(|v| panic!("the province is not shown by its name: {v}"));

    // A terminal's history as charts.
    browser.eval("location.hash = 'r=130102001&t=130102001001-main'; return null;");
    // The page fetches the history again every 10 s: allow for one fetch before the samples.
    let charts = browser
        .wait_for(
            Duration::from_secs(30),
            "return Array.from(document.querySelectorAll('#charts figure[data-metric]'))
                .filter(f => f.querySelector('polyline')).map(f => f.dataset.metric);",
            |v| {
                v.as_array()
                    .is_some_and(|a| a.iter().any(|m| m == "env.temp"))
            },
        )
        .unwrap_or_else(|v| panic!("no history charts: {v}"));
    assert!(
        charts.as_array().unwrap().iter().any(|m| m == "cpu.load"),
        "{charts}"
    );
    assert_eq!(
        browser.eval("return window.cuntongTestMarker;"),
        serde_json::json!(42)
    );
}

#[test]
fn the_dashboard_refuses_a_bad_region_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);
    let db = d.join("central.db");
    let central = central_with(&broker, &db, d, &["--http", "127.0.0.1:0"]);
    let addr = central.bound("dashboard: ");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str| {
        agent
            .get(&format!("http://{addr}{path}"))
            .call()
            .ok()
            .map(|mut r| (r.status().as_u16(), r.body_mut().read_to_string().unwrap()))
    };
    assert!(
        wait_until(Duration::from_secs(20), || get("/").is_some()),
        "the dashboard did not listen: {}",
        central.log_text()
    );
    let (status, page) = get("/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("app.js"));
    let (status, body) = get("/api/view?region=12x").unwrap();
    assert_eq!(status, 400);
    assert!(body.contains("12x"), "{body}");
    let (status, body) = get("/api/terminal/130102001001-main").unwrap();
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("130102001001-main"), "{body}");
    let (status, body) = get("/api/terminal/130102001001-main?hours=1000").unwrap();
    assert_eq!(status, 400, "{body}");
}

/// `cuntong staff add NAME --users FILE` with `password` on stdin.
fn add_staff(users: &std::path::Path, name: &str, password: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new(cuntong_e2e::bin("cuntong"))
        .args(["staff", "add", name, "--users", users.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
}

/// Fills the sign-in form with `name` and `password` and sends it.
fn sign_in(browser: &Browser, name: &str, password: &str) {
    let script = format!(
        "document.getElementById('name').value = {name:?};
         document.getElementById('password').value = {password:?};
         document.getElementById('go').click(); return null;"
    );
    browser.eval(&script);
}

#[test]
fn with_a_staff_file_the_dashboard_is_shown_only_after_a_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let users = d.join("staff");
    add_staff(&users, "duty", "县应急值班-2026");
    let stored = std::fs::read_to_string(&users).unwrap();
    assert!(stored.starts_with("duty:pbkdf2-sha256$") && !stored.contains("县应急值班"));
    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let db = d.join("central.db");
    let central = central_with(
        &broker,
        &db,
        d,
        &[
            "--http",
            "127.0.0.1:0",
            "--http-users",
            users.to_str().unwrap(),
        ],
    );
    let addr = central.bound("dashboard: ");
    let _fleet = sim_fleet(&broker.url, "130102001", 2, d, "township");
    assert!(wait_until(Duration::from_secs(30), || {
        sites(&db, None).iter().filter(|s| s.online).count() == 2
    }));

    // Without a session: the API refuses, a page sends the browser to the sign-in.
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .build()
        .into();
    let api = agent
        .get(&format!("http://{addr}/api/view"))
        .call()
        .unwrap();
    assert_eq!(api.status(), 401);
    // The boxes fetch releases without signing in (404: no such release, not 401 or 303).
    let release = agent
        .get(&format!("http://{addr}/releases/{}", "0".repeat(64)))
        .call()
        .unwrap();
    assert_eq!(release.status(), 404);
    let browser = Browser::start(d);
    browser.open(&format!("http://{addr}/"));
    let path = "return location.pathname + location.search;";
    assert_eq!(browser.eval(path), serde_json::json!("/signin"));

    // A wrong password is refused, and the page says so.
    sign_in(&browser, "duty", "not-the-password");
    let refused = browser.wait_for(Duration::from_secs(10), path, |v| {
        v == &serde_json::json!("/signin?refused=1")
    });
    assert!(refused.is_ok(), "{refused:?}");
    assert!(browser.eval("return document.getElementById('refused') !== null;") == true);
    assert_eq!(browser.eval(ROWS), serde_json::json!([]));

    // The right one shows the fleet.
    sign_in(&browser, "duty", "县应急值班-2026");
    let home = browser.wait_for(Duration::from_secs(10), path, |v| {
        v == &serde_json::json!("/")
    });
    assert!(home.is_ok(), "{home:?}");
    browser.open(&format!("http://{addr}/#r=130102001"));
    let shown = browser.wait_for(Duration::from_secs(20), ROWS, |v| rows(v).len() == 2);
    assert!(shown.is_ok(), "{shown:?} {}", central.log_text());
    let log = central.log_text();
    assert!(log.contains("dashboard sign-in refused") && !log.contains("not-the-password"));
}

/// `GET path` over TLS to `addr`, trusting the fleet CA of `ca_dir` and showing the client
/// certificate of `bundle` (`cert.pem`, `key.pem`) if given: the status code, or the TLS
/// error that ended the exchange.
fn https_get(
    addr: std::net::SocketAddr,
    ca: &std::path::Path,
    bundle: Option<&std::path::Path>,
    path: &str,
) -> Result<u16, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match bundle {
        Some(b) => {
            let chain = CertificateDer::pem_file_iter(b.join("cert.pem"))
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_file(b.join("key.pem")).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let tcp = std::net::TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    tls.write_all(request.as_bytes())
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    match tls.read_to_end(&mut answer) {
        Ok(_) => {}
        // A server that closes without TLS's close_notify after its answer.
        Err(e) if !answer.is_empty() && e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP answer: {text:?}"))
}

#[test]
fn over_tls_staff_sign_in_with_their_certificates_and_no_other_certificate_lets_anyone_in() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("ca");
    let cuntong =
        |args: &[&str]| cuntong_e2e::ok(cuntong_e2e::run(&cuntong_e2e::bin("cuntong"), args));
    cuntong(&["ca", "init", "--dir", ca.to_str().unwrap()]);
    let tls = d.join("dashboard-tls");
    let c = ca.to_str().unwrap();
    cuntong(&[
        "ca",
        "issue-server",
        "--ca",
        c,
        "--name",
        "127.0.0.1",
        "--out",
        tls.to_str().unwrap(),
    ]);
    let (wang, li, village) = (d.join("wang"), d.join("li"), d.join("village"));
    cuntong(&[
        "provision",
        "staff",
        "wang",
        "--ca",
        c,
        "--out",
        wang.to_str().unwrap(),
    ]);
    cuntong(&[
        "provision",
        "staff",
        "li",
        "--ca",
        c,
        "--out",
        li.to_str().unwrap(),
    ]);
    cuntong(&[
        "provision",
        "130102001001-main",
        "--ca",
        c,
        "--broker",
        "mqtts://127.0.0.1:8883",
        "--out",
        village.to_str().unwrap(),
    ]);
    // Li leaves: the certificate goes on the CRL, which the dashboard reads at start.
    cuntong(&["ca", "revoke", "staff:li", "--ca", c]);
    std::fs::copy(ca.join("crl.pem"), tls.join("crl.pem")).unwrap();

    let broker = Broker::start(BrokerKind::Mosquitto, d);
    let db = d.join("central.db");
    let central = central_with(
        &broker,
        &db,
        d,
        &["--http", "127.0.0.1:0", "--http-tls", tls.to_str().unwrap()],
    );
    let addr = central.bound("dashboard: ");
    assert!(
        central
            .log_text()
            .contains(&format!("dashboard: https://{addr}/"))
    );
    let ca_pem = tls.join("ca.pem");
    let get = |bundle: Option<&std::path::Path>, path: &str| https_get(addr, &ca_pem, bundle, path);

    // A staff certificate signs its holder in: the page and the API answer.
    assert_eq!(get(Some(&wang), "/api/view"), Ok(200));
    assert_eq!(get(Some(&wang), "/"), Ok(200));
    // Without a certificate: the API refuses, a page sends to the sign-in, which says how.
    assert_eq!(get(None, "/api/view"), Ok(401));
    assert_eq!(get(None, "/"), Ok(303));
    assert_eq!(get(None, "/signin"), Ok(200));
    // A box's certificate of the same CA signs nobody in.
    assert_eq!(get(Some(&village), "/api/view"), Ok(401));
    // A revoked staff certificate is refused at the handshake.
    let revoked = get(Some(&li), "/api/view");
    assert!(
        revoked.as_ref().is_err_and(|e| e.contains("Revoked")),
        "{revoked:?}"
    );
}
