//! The fleet these tests attack: a CA, the broker's certificate, central's and the
//! operator's identities and two terminals, provisioned with `cuntong`, and a real Mosquitto
//! running the TLS and ACL configuration `cuntong acl` generates; and the MQTT clients
//! (`mosquitto_pub`, `mosquitto_sub`) that play the other side.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use cuntong_e2e::{Proc, bin, free_port, mosquitto, run, wait_until};

pub const A: &str = "130102001001-main";
pub const B: &str = "130102002001-main";
pub const B_TM: &str = "ct/v1/t/13/01/02/002/001/main/tm";
pub const B_CMD: &str = "ct/v1/t/13/01/02/002/001/main/cmd";
pub const A_CMD: &str = "ct/v1/t/13/01/02/001/001/main/cmd";
pub const A_RES: &str = "ct/v1/t/13/01/02/001/001/main/res";
pub const A_PRESENCE: &str = "ct/v1/t/13/01/02/001/001/main/presence";
pub const A_EVENTS: &str = "ct/v1/t/13/01/02/001/001/main/ev";
/// A meeting topic every terminal of county 130102 reads.
pub const COUNTY_MEETING: &str = "ct/v1/m/13/01/02/x";
/// Central's second identity, for the operator's commands while the service runs.
pub const OPS: &str = "central-ops";

pub fn cuntong(args: &[&str]) {
    let out = run(&bin("cuntong"), args);
    assert!(
        out.status.success(),
        "cuntong {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn client(tool: &str, port: u16, ca: &Path, bundle: Option<&Path>, args: &[&str]) -> Output {
    let port = port.to_string();
    let mut all = vec![
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "--cafile",
        ca.to_str().unwrap(),
    ];
    let (cert, key);
    if let Some(b) = bundle {
        cert = b.join("cert.pem");
        key = b.join("key.pem");
        all.extend([
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
    }
    all.extend_from_slice(args);
    run(Path::new(tool), &all)
}

pub struct Fleet {
    pub dir: tempfile::TempDir,
    pub port: u16,
    pub broker: Proc,
}

impl Fleet {
    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn d(&self, p: &str) -> String {
        self.path(p).to_str().unwrap().to_owned()
    }

    pub fn ca(&self) -> PathBuf {
        self.path("ca/ca.pem")
    }

    pub fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    /// A terminal's bundle config (`a` or `b`), as a technician would use it, with this
    /// test's data directory and a fast sampling pace.
    pub fn terminal_config(&self, bundle: &str) -> PathBuf {
        let cfg = self.path(&format!("{bundle}/terminal.toml"));
        let text = std::fs::read_to_string(&cfg).unwrap().replace(
            "data_dir = \"/var/lib/cuntong\"",
            &format!("data_dir = {:?}", self.path(&format!("{bundle}-data"))),
        );
        std::fs::write(
            &cfg,
            // Resent after 3 s: what a box sent before central subscribed arrives soon.
            format!(
                "{text}\n[telemetry]\nhealth_interval = \"1s\"\nbatch_age = \"1s\"\n\n[delivery]\nresend_after = \"3s\"\n"
            ),
        )
        .unwrap();
        cfg
    }

    /// A terminal's daemon (simulated hardware) running its bundle's config.
    pub fn terminal(&self, bundle: &str, log: &str) -> Proc {
        let cfg = self.terminal_config(bundle);
        Proc::spawn(
            &bin("cuntong-sim"),
            &["terminal", "--config", cfg.to_str().unwrap()],
            self.path(log),
        )
    }

    /// A terminal's status report (`null` while its daemon does not answer).
    pub fn status(&self, bundle: &str) -> serde_json::Value {
        let socket = self.path(&format!("{bundle}-data/status.sock"));
        let out = run(
            &bin("cuntong-terminal"),
            &["status", "--json", "--socket", socket.to_str().unwrap()],
        );
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    /// `cuntong central` with its own bundle.
    pub fn central(&self, db: &Path) -> Proc {
        Proc::spawn(
            &bin("cuntong"),
            &[
                "central",
                "--broker",
                &self.url(),
                "--tls",
                &self.d("central"),
                "--db",
                db.to_str().unwrap(),
            ],
            self.path("central.log"),
        )
    }

    /// `cuntong cmd TERMINAL WORDS…` from the operator's identity; (success, first output).
    pub fn cmd(&self, terminal: &str, words: &[&str], wait: &str) -> (bool, String) {
        let mut args = vec!["cmd", terminal];
        args.extend_from_slice(words);
        let (ca, ops, url) = (self.d("ca"), self.d(OPS), self.url());
        args.extend([
            "--ca", &ca, "--broker", &url, "--tls", &ops, "--wait", wait, "--json",
        ]);
        let out = run(&bin("cuntong"), &args);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        (
            out.status.success(),
            v[0]["output"].as_str().unwrap_or("").to_owned(),
        )
    }

    /// `cuntong provision ID` from this fleet's CA into the bundle directory `out`.
    pub fn provision_as(&self, id: &str, out: &str, extra: &[&str]) {
        let (ca, url, out) = (self.d("ca"), self.url(), self.d(out));
        let mut args = vec![
            "provision",
            id,
            "--ca",
            &ca,
            "--broker",
            &url,
            "--out",
            &out,
        ];
        args.extend_from_slice(extra);
        cuntong(&args);
    }

    /// Regenerates the broker's ACL and CRL from the CA (after provisioning or revoking).
    pub fn regenerate(&self) {
        regenerate(self.dir.path(), self.port);
    }

    /// Mosquitto as generated, on this fleet's port (each run logs to a file of its own).
    pub fn start_broker(dir: &Path, port: u16) -> Proc {
        let conf = dir.join("broker/mosquitto.conf");
        let runs = std::fs::read_dir(dir).unwrap().count();
        let broker = Proc::spawn(
            &mosquitto(),
            &["-c", conf.to_str().unwrap()],
            dir.join(format!("mosquitto-{runs}.log")),
        );
        assert!(
            wait_until(Duration::from_secs(10), || std::net::TcpStream::connect((
                "127.0.0.1",
                port
            ))
            .is_ok()),
            "{}",
            broker.log_text()
        );
        broker
    }

    /// Stops Mosquitto in order (as a service manager does) and starts it again.
    pub fn restart_broker(&mut self) {
        assert!(self.broker.terminate(Duration::from_secs(10)).is_some());
        self.broker = Fleet::start_broker(self.dir.path(), self.port);
    }

    /// Asks Mosquitto to reload its configuration, ACL and CRL (SIGHUP).
    /// Has Mosquitto reload its configuration, ACL and CRL (as `systemctl reload` does), and
    /// returns once it has: Mosquitto logs "Reloading config." on its single loop just before
    /// it reloads, so a connection made after the line is judged by the new files.
    pub fn reload_broker(&self) {
        const RELOADING: &str = "Reloading config.";
        let before = self.broker.log_text().matches(RELOADING).count();
        let pid = self.broker.child.id().to_string();
        assert!(run(Path::new("kill"), &["-HUP", &pid]).status.success());
        assert!(
            wait_until(Duration::from_secs(10), || {
                self.broker.log_text().matches(RELOADING).count() > before
            }),
            "Mosquitto did not reload: {}",
            self.broker.log_text()
        );
    }

    /// A CA, the broker's certificate, central (and the operator's second central identity)
    /// and two terminals, the generated Mosquitto configuration, and Mosquitto running it as
    /// generated.
    pub fn provision() -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        // Mosquitto drops to its own user: it must be able to reach its files.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let d = |p: &str| dir.path().join(p).to_str().unwrap().to_owned();
        let port = free_port();
        let url = format!("mqtts://127.0.0.1:{port}");
        cuntong(&["ca", "init", "--dir", &d("ca")]);
        cuntong(&[
            "ca",
            "issue-server",
            "--ca",
            &d("ca"),
            "--name",
            "127.0.0.1",
            "--out",
            &d("server"),
        ]);
        for (id, out) in [("central", "central"), (OPS, OPS), (A, "a"), (B, "b")] {
            cuntong(&[
                "provision",
                id,
                "--ca",
                &d("ca"),
                "--broker",
                &url,
                "--out",
                &d(out),
            ]);
        }
        regenerate(dir.path(), port);
        let broker = Fleet::start_broker(dir.path(), port);
        Fleet { dir, port, broker }
    }

    /// Publishes with a bundle's certificate (`-i ID` etc. in `args`); true if it went through.
    pub fn publish(&self, bundle: &str, args: &[&str]) -> bool {
        client(
            "mosquitto_pub",
            self.port,
            &self.ca(),
            Some(&self.path(bundle)),
            args,
        )
        .status
        .success()
    }
}

/// `cuntong acl` into `dir/broker`, from the CA in `dir/ca`, for a listener on `port`.
pub fn regenerate(dir: &Path, port: u16) {
    let d = |p: &str| dir.join(p).to_str().unwrap().to_owned();
    cuntong(&[
        "acl",
        "--ca",
        &d("ca"),
        "--format",
        "mosquitto",
        "--listen",
        &port.to_string(),
        "--server",
        &d("server"),
        "--out",
        &d("broker"),
    ]);
}

/// A `mosquitto_sub` running in the background, its output in a file.
pub struct Listener {
    out: PathBuf,
    _proc: Proc,
}

impl Listener {
    pub fn start(f: &Fleet, bundle: &str, topics: &[&str], name: &str) -> Listener {
        let out = f.path(&format!("{name}.out"));
        let (port, ca, bundle) = (f.port.to_string(), f.ca(), f.path(bundle));
        let (cert, key) = (bundle.join("cert.pem"), bundle.join("key.pem"));
        let mut args = vec!["-h", "127.0.0.1", "-p", &port, "-q", "1"];
        args.extend(["--cafile", ca.to_str().unwrap()]);
        args.extend([
            "--cert",
            cert.to_str().unwrap(),
            "--key",
            key.to_str().unwrap(),
        ]);
        for t in topics {
            args.extend(["-t", t]);
        }
        let proc = Proc::spawn(Path::new("mosquitto_sub"), &args, out.clone());
        Listener { out, _proc: proc }
    }

    /// What arrived so far (binary payloads included, lossily).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.out).unwrap_or_default()).into_owned()
    }

    /// Publishes `marker` (with a bundle allowed to) until this listener has received it, so
    /// everything published before has been through the broker too.
    pub fn sync(&self, f: &Fleet, bundle: &str, topic: &str, marker: &str) {
        let got = wait_until(Duration::from_secs(10), || {
            f.publish(bundle, &["-t", topic, "-m", marker, "-q", "1"]);
            self.text().contains(marker)
        });
        assert!(got, "{marker} never arrived: {}", self.text());
    }
}
