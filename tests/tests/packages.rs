//! Field deployment: the Debian packages hold their files where Debian expects them, with
//! maintainer scripts and units that verify; the daemons speak systemd's service protocol
//! (ready once they can work, a watchdog ping from their main loop, stopping on request).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cuntong_e2e::{Broker, BrokerKind, Proc, bin, ok};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// Runs `program` and returns its stdout; panics with its stderr if it fails.
fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_packages_hold_their_files_where_debian_expects_them_and_their_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("debs");
    let built = ok(Command::new(workspace().join("scripts/package.sh"))
        .args(["--profile", "dev", "--out", out.to_str().unwrap()])
        .args([
            "--bin-dir",
            bin("cuntong").parent().unwrap().to_str().unwrap(),
        ])
        .output()
        .unwrap());
    let arch = sh("dpkg", &["--print-architecture"]).trim().to_owned();
    let version = env!("CARGO_PKG_VERSION");
    for (pkg, binary, unit, enabled) in [
        (
            "cuntong-terminal",
            "cuntong-terminal",
            "cuntong-terminal.service",
            "yes",
        ),
        ("cuntong", "cuntong", "cuntong-central.service", "no"),
    ] {
        let deb = out.join(format!("{pkg}_{version}_{arch}.deb"));
        assert!(built.contains(deb.to_str().unwrap()), "{built}");
        let deb = deb.to_str().unwrap();

        // Files, owned by root, where Debian expects them.
        let contents = sh("dpkg-deb", &["--contents", deb]);
        for want in [
            format!("./usr/bin/{binary}"),
            format!("./lib/systemd/system/{unit}"),
            "./etc/cuntong/".to_owned(),
            format!("./usr/share/doc/{pkg}/copyright"),
        ] {
            let line = contents
                .lines()
                .find(|l| l.ends_with(&want))
                .unwrap_or_else(|| panic!("{pkg}: no {want} in\n{contents}"));
            assert!(line.contains("root/root"), "{pkg}: {line}");
            if want.contains("/usr/bin/") {
                assert!(line.starts_with("-rwxr-xr-x"), "{pkg}: {line}");
            }
        }

        // The control fields, with the libraries the binary links found by dpkg-shlibdeps.
        let field = |f: &str| sh("dpkg-deb", &["--field", deb, f]).trim().to_owned();
        assert_eq!(field("Package"), pkg);
        assert_eq!(field("Version"), version);
        assert_eq!(field("Architecture"), arch);
        let depends = field("Depends");
        assert!(
            depends.contains("adduser") && depends.contains("libc6"),
            "{pkg}: {depends}"
        );
        if pkg == "cuntong-terminal" {
            for p in [
                "libgstreamer1.0-0",
                "gstreamer1.0-plugins-good",
                "gstreamer1.0-alsa",
            ] {
                assert!(
                    depends.contains(p),
                    "{pkg} does not depend on {p}: {depends}"
                );
            }
        }

        // The maintainer scripts: shell that parses, the system user, the unit handled the way
        // Debian's helpers do, nothing left unsubstituted.
        let control = dir.path().join(format!("{pkg}-control"));
        sh("dpkg-deb", &["--control", deb, control.to_str().unwrap()]);
        for script in ["postinst", "prerm", "postrm"] {
            let path = control.join(script);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(
                !text.contains('@'),
                "{pkg} {script} has a placeholder left:\n{text}"
            );
            assert!(text.contains(unit), "{pkg} {script} does not name {unit}");
            sh("sh", &["-n", path.to_str().unwrap()]);
            let mode = std::fs::metadata(&path).unwrap();
            assert!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o111 != 0);
        }
        let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
        assert!(postinst.contains("adduser --system --group"), "{postinst}");
        assert!(postinst.contains("/var/lib/cuntong"), "{postinst}");
        assert!(
            postinst.contains(&format!("\"{enabled}\" = yes")),
            "{postinst}"
        );

        // The unit, as installed, verifies against the binary the package holds.
        let root = dir.path().join(format!("{pkg}-root"));
        sh("dpkg-deb", &["--extract", deb, root.to_str().unwrap()]);
        let installed =
            std::fs::read_to_string(root.join("lib/systemd/system").join(unit)).unwrap();
        let local = dir.path().join(unit);
        std::fs::write(
            &local,
            installed.replace("/usr/bin/", &format!("{}/usr/bin/", root.display())),
        )
        .unwrap();
        let verify = Command::new("systemd-analyze")
            .args(["verify", local.to_str().unwrap()])
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(
            verify.status.success() && !said.contains(unit),
            "{unit} does not verify: {said}"
        );
        assert!(installed.contains("Type=notify") && installed.contains("WatchdogSec="));
        // Its exposure, as systemd rates it: well inside "OK" (below 3).
        let security = Command::new("systemd-analyze")
            .args(["security", "--offline=yes", local.to_str().unwrap()])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&security.stdout);
        let exposure: f64 = text
            .lines()
            .find_map(|l| l.split("exposure level for").nth(1))
            .and_then(|l| l.split(':').nth(1))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no exposure level in {text}"));
        assert!(exposure < 3.0, "{unit}: exposure {exposure}\n{text}");
    }
}

/// The notifications a daemon sends to the service manager's socket, as they come.
struct ServiceManager {
    socket: UnixDatagram,
    path: PathBuf,
    heard: Vec<(Instant, String)>,
}

impl ServiceManager {
    fn new(dir: &Path) -> ServiceManager {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        ServiceManager {
            socket,
            path,
            heard: Vec::new(),
        }
    }

    /// Listens until `want` was heard or `timeout` passed; true if it was.
    fn hear(&mut self, timeout: Duration, want: impl Fn(&[(Instant, String)]) -> bool) -> bool {
        let end = Instant::now() + timeout;
        let mut buf = [0u8; 4096];
        while !want(&self.heard) {
            if Instant::now() >= end {
                return false;
            }
            if let Ok(n) = self.socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in text.lines() {
                    self.heard.push((Instant::now(), line.to_owned()));
                }
            }
        }
        true
    }
}

fn said(heard: &[(Instant, String)], what: &str) -> usize {
    heard.iter().filter(|(_, l)| l == what).count()
}

/// Starts `program` as systemd would with `WatchdogSec=1s`, and checks what it says: ready
/// once, then a ping every half second or so, and stopping at SIGTERM.
fn speaks_the_service_protocol(program: &Path, args: &[&str], dir: &Path, name: &str) {
    let mut manager = ServiceManager::new(dir);
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    // The watchdog is the process's own only if WATCHDOG_PID names it: the shell's pid, which
    // `exec` hands on.
    let child = Command::new("sh")
        .args([
            "-c",
            "WATCHDOG_PID=$$ exec \"$0\" \"$@\"",
            program.to_str().unwrap(),
        ])
        .args(args)
        .env("NOTIFY_SOCKET", &manager.path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut p = Proc { child, log };
    assert!(
        manager.hear(Duration::from_secs(30), |h| said(h, "READY=1") == 1),
        "{name} never said it is ready: {:?}\n{}",
        manager.heard,
        p.log_text()
    );
    let ready_at = manager
        .heard
        .iter()
        .find(|(_, l)| l == "READY=1")
        .unwrap()
        .0;
    assert!(
        manager.hear(Duration::from_secs(5), |h| said(h, "WATCHDOG=1") >= 6),
        "{name} does not ping its watchdog: {:?}",
        manager.heard
    );
    let pings: Vec<Instant> = manager
        .heard
        .iter()
        .filter(|(t, l)| l == "WATCHDOG=1" && *t >= ready_at)
        .map(|(t, _)| *t)
        .collect();
    for pair in pings.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap < Duration::from_millis(900),
            "{name}: a ping {gap:?} after the one before"
        );
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    assert!(
        manager.hear(Duration::from_secs(10), |h| said(h, "STOPPING=1") == 1),
        "{name} did not say it is stopping: {:?}",
        manager.heard
    );
    assert!(
        p.exited_within(Duration::from_secs(20))
            .is_some_and(|s| s.success())
    );
}

#[test]
fn the_daemons_say_when_they_are_ready_ping_their_watchdog_and_say_when_they_stop() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let broker = Broker::start(BrokerKind::Embedded, d);

    // A terminal, and what it says with a configuration it refuses: an error, never ready.
    let cfg = d.join("terminal.toml");
    let data = d.join("data");
    std::fs::write(
        &cfg,
        format!(
            "id = \"130102001001-main\"\nbroker = \"{}\"\ndata_dir = {:?}\n",
            broker.url,
            data.display().to_string()
        ),
    )
    .unwrap();
    let terminal = bin("cuntong-terminal");
    let t = d.join("terminal");
    std::fs::create_dir_all(&t).unwrap();
    speaks_the_service_protocol(
        &terminal,
        &["--config", cfg.to_str().unwrap(), "run"],
        &t,
        "terminal",
    );

    let bad = d.join("bad.toml");
    std::fs::write(&bad, "id = \"130102001001-main\"\nbroker = \"mqtt://x\"\n").unwrap();
    let b = d.join("bad");
    std::fs::create_dir_all(&b).unwrap();
    let mut manager = ServiceManager::new(&b);
    let refused = Command::new(&terminal)
        .args(["--config", bad.to_str().unwrap(), "run"])
        .env("NOTIFY_SOCKET", &manager.path)
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("data_dir"));
    assert!(
        !manager.hear(Duration::from_millis(500), |h| !h.is_empty()),
        "{:?}",
        manager.heard
    );

    // Central.
    let c = d.join("central");
    std::fs::create_dir_all(&c).unwrap();
    let db = c.join("central.db");
    speaks_the_service_protocol(
        &bin("cuntong"),
        &[
            "central",
            "--broker",
            &broker.url,
            "--db",
            db.to_str().unwrap(),
        ],
        &c,
        "central",
    );
}
