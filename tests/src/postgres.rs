//! A throwaway PostgreSQL cluster for the tests (and benches) that run the store on
//! PostgreSQL: `initdb` in a temporary directory, the server on a free loopback port with its
//! socket in that directory, as the `postgres` user when running as root (PostgreSQL refuses
//! root), as the current user otherwise.
//!
//! The server runs under a small shell that stops it (immediate shutdown) and removes its
//! directory when its standard input closes, that is when the [`Postgres`] is dropped or the
//! test process ends in any way: a cluster shared by the tests of one binary
//! ([`Postgres::shared`]) is never left behind.
//!
//! The binaries are Debian's (`/usr/lib/postgresql/<version>/bin`, the newest installed;
//! `scripts/test.sh` installs `postgresql`), or those in `$CUNTONG_PG_BIN`.

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ::postgres::{Client, NoTls};

/// A running throwaway cluster; stopped and removed when dropped.
#[derive(Debug)]
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    as_postgres: bool,
    /// The shell holding the server: closing its input stops the server.
    shell: Mutex<Option<(Child, ChildStdin)>>,
    next_db: AtomicU32,
    url: String,
}

/// Settings for a cluster that only lives for a test: no waiting for the disk.
const FAST: &[(&str, &str)] = &[
    ("fsync", "off"),
    ("synchronous_commit", "off"),
    ("full_page_writes", "off"),
];

/// The directory of Debian's PostgreSQL binaries (the newest version installed).
fn bin_dir() -> Result<PathBuf, String> {
    if let Some(dir) = std::env::var_os("CUNTONG_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .map_err(|e| format!("{}: {e} (install Debian's postgresql)", root.display()))?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .ok_or_else(|| format!("no PostgreSQL in {} (install postgresql)", root.display()))
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// The uid and gid of the `postgres` user.
fn postgres_user() -> Result<(u32, u32), String> {
    let id = |flag: &str| -> Result<u32, String> {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|e| format!("id: {e}"))?;
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| "no `postgres` user (install postgresql)".to_owned())
    };
    Ok((id("-u")?, id("-g")?))
}

impl Postgres {
    /// Starts a cluster for tests (no fsync) with one database, [`Postgres::url`].
    pub fn start() -> Postgres {
        Postgres::start_with(FAST).unwrap_or_else(|e| panic!("starting PostgreSQL: {e}"))
    }

    /// The cluster shared by the tests of this process; each test takes
    /// [`Postgres::fresh_database`] of it.
    pub fn shared() -> &'static Postgres {
        static SHARED: OnceLock<Postgres> = OnceLock::new();
        SHARED.get_or_init(Postgres::start)
    }

    /// Starts a cluster with these server settings (`-c name=value`), waiting (bounded) until
    /// it accepts connections, and creates its first database.
    pub fn start_with(settings: &[(&str, &str)]) -> Result<Postgres, String> {
        let bin = bin_dir()?;
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("cuntong-pg")
            .tempdir()
            .map_err(|e| format!("temporary directory: {e}"))?;
        if as_postgres {
            let (uid, gid) = postgres_user()?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
                .map_err(|e| format!("chown {}: {e}", dir.path().display()))?;
        }
        let mut pg = Postgres {
            dir,
            bin,
            port: 0,
            as_postgres,
            shell: Mutex::new(None),
            next_db: AtomicU32::new(0),
            url: String::new(),
        };
        let data = pg.data();
        let out = pg
            .command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-locale"])
            .arg("--no-sync")
            .output()
            .map_err(|e| format!("initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!("initdb: {}", String::from_utf8_lossy(&out.stderr)));
        }
        // The port is free a moment before the server binds it: try again if it was taken.
        let mut last = String::new();
        for _ in 0..3 {
            pg.port = crate::free_port();
            pg.spawn(settings)?;
            match pg.wait_accepting(Duration::from_secs(30)) {
                Ok(()) => {
                    pg.url = pg.fresh_database();
                    return Ok(pg);
                }
                Err(e) => {
                    pg.stop(true);
                    last = e;
                }
            }
        }
        Err(last)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// `program` of the PostgreSQL binaries, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    /// Starts the server under the shell (of the current user, so that it can remove the
    /// directory) that stops it when its input closes.
    fn spawn(&self, settings: &[(&str, &str)]) -> Result<(), String> {
        let dir = self.dir.path().display().to_string();
        let data = self.data().display().to_string();
        let run_as = if self.as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let bin = self.bin.display();
        let mut server = format!(
            "{run_as}'{bin}/postgres' -D '{data}' -p {} -k '{dir}' -c listen_addresses=127.0.0.1",
            self.port
        );
        for (name, value) in settings {
            server.push_str(&format!(" -c {name}={value}"));
        }
        let script = format!(
            "{server} >>'{dir}/server.log' 2>&1 </dev/null & \
             if read line && [ \"$line\" = keep ]; then keep=1; fi; \
             {run_as}'{bin}/pg_ctl' -D '{data}' stop -m immediate >/dev/null 2>&1; wait; \
             [ -n \"$keep\" ] || rm -rf '{dir}'"
        );
        let mut child = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting postgres: {e}"))?;
        let stdin = child.stdin.take().ok_or("no stdin of the server's shell")?;
        *self.shell.lock().unwrap_or_else(|e| e.into_inner()) = Some((child, stdin));
        Ok(())
    }

    /// Polls until the server accepts connections, or says why not.
    fn wait_accepting(&self, timeout: Duration) -> Result<(), String> {
        let end = Instant::now() + timeout;
        loop {
            match self.admin() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() >= end => {
                    return Err(format!(
                        "not accepting connections on port {} after {timeout:?}: {e}\n{}",
                        self.port,
                        self.log()
                    ));
                }
                Err(_) => {}
            }
            let exited = self
                .shell
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_mut()
                .is_none_or(|(c, _)| c.try_wait().ok().flatten().is_some());
            if exited {
                return Err(format!("the server exited:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A connection to the `postgres` database as the superuser.
    fn admin(&self) -> Result<Client, ::postgres::Error> {
        Client::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres connect_timeout=5",
                self.port
            ),
            NoTls,
        )
    }

    /// The URL of the cluster's first database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Creates a new, empty database and gives its URL.
    pub fn fresh_database(&self) -> String {
        let n = self.next_db.fetch_add(1, Ordering::Relaxed);
        let name = format!("cuntong_{n}");
        let mut admin = self
            .admin()
            .unwrap_or_else(|e| panic!("connecting to PostgreSQL: {e}\n{}", self.log()));
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e:?}"));
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// Stops the server at once (`pg_ctl stop -m immediate`, by its shell) and waits (bounded)
    /// for the shell to end; the directory is removed unless `keep` (to start again on another
    /// port).
    fn stop(&self, keep: bool) {
        let shell = self.shell.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some((mut child, mut stdin)) = shell {
            if keep {
                let _ = stdin.write_all(b"keep\n");
            }
            drop(stdin);
            let end = Instant::now() + Duration::from_secs(10);
            while Instant::now() < end && child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop(false);
    }
}
