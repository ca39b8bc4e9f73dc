//! Site health: what the box itself reports (uptime, CPU, memory, disk).
//!
//! [`HealthSource`] is the seam: [`ProcHealth`] reads Linux's `/proc` and `/sys` on a real box;
//! the simulator supplies its own. Link metrics (RTT, loss, queue depth) come from the link
//! and are added by the daemon.

use std::path::{Path, PathBuf};

use cuntong_core::telemetry::Metric;

/// Something that can report the host's health.
pub trait HealthSource: Send {
    /// Current readings; a metric the host cannot report is left out.
    fn read(&mut self) -> Vec<(Metric, f64)>;
}

/// Health of the Linux host this process runs on.
#[derive(Debug)]
pub struct ProcHealth {
    root: PathBuf,
    disk_path: PathBuf,
}

impl ProcHealth {
    /// Reads `/proc` and `/sys`; disk usage is that of the filesystem holding `disk_path`.
    pub fn new(disk_path: &Path) -> ProcHealth {
        ProcHealth::with_root(Path::new("/"), disk_path)
    }

    /// Reads `proc/…` and `sys/…` below `root` (tests point this at a fixture tree).
    pub fn with_root(root: &Path, disk_path: &Path) -> ProcHealth {
        ProcHealth {
            root: root.to_owned(),
            disk_path: disk_path.to_owned(),
        }
    }

    fn file(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }
}

impl HealthSource for ProcHealth {
    fn read(&mut self) -> Vec<(Metric, f64)> {
        let mut out = Vec::with_capacity(5);
        if let Some(v) = self.file("proc/uptime").as_deref().and_then(first_number) {
            out.push((Metric::Uptime, v.floor()));
        }
        if let Some(v) = self.file("proc/loadavg").as_deref().and_then(first_number) {
            out.push((Metric::CpuLoad, v));
        }
        if let Some(v) = self
            .file("sys/class/thermal/thermal_zone0/temp")
            .as_deref()
            .and_then(first_number)
        {
            out.push((Metric::CpuTemp, v / 1000.0));
        }
        if let Some(v) = self
            .file("proc/meminfo")
            .as_deref()
            .and_then(mem_used_percent)
        {
            out.push((Metric::MemUsed, v));
        }
        if let Some(v) = disk_used_percent(&self.disk_path) {
            out.push((Metric::DiskUsed, v));
        }
        out
    }
}

fn first_number(text: &str) -> Option<f64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `100 · (MemTotal − MemAvailable) / MemTotal` from `/proc/meminfo`.
fn mem_used_percent(meminfo: &str) -> Option<f64> {
    let field = |name: &str| {
        meminfo
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(first_number)
    };
    let total = field("MemTotal")?;
    let available = field("MemAvailable")?;
    (total > 0.0).then(|| 100.0 * (total - available) / total)
}

fn disk_used_percent(path: &Path) -> Option<f64> {
    let st = rustix::fs::statvfs(path).ok()?;
    let total = st.f_blocks as f64;
    let free = st.f_bavail as f64;
    (total > 0.0).then(|| 100.0 * (total - free) / total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_proc_tree() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("proc")).unwrap();
        std::fs::create_dir_all(root.join("sys/class/thermal/thermal_zone0")).unwrap();
        std::fs::write(root.join("proc/uptime"), "12345.67 20000.00\n").unwrap();
        std::fs::write(root.join("proc/loadavg"), "0.52 0.40 0.30 1/123 4567\n").unwrap();
        std::fs::write(root.join("sys/class/thermal/thermal_zone0/temp"), "48500\n").unwrap();
        std::fs::write(
            root.join("proc/meminfo"),
            "MemTotal:        1000 kB\nMemFree:  100 kB\nMemAvailable:     250 kB\n",
        )
        .unwrap();
        let got = ProcHealth::with_root(root, root).read();
        let get = |m: Metric| got.iter().find(|(k, _)| *k == m).map(|(_, v)| *v);
        assert_eq!(get(Metric::Uptime), Some(12345.0));
        assert_eq!(get(Metric::CpuLoad), Some(0.52));
        assert_eq!(get(Metric::CpuTemp), Some(48.5));
        assert_eq!(get(Metric::MemUsed), Some(75.0));
        assert!(get(Metric::DiskUsed).is_some_and(|v| (0.0..=100.0).contains(&v)));
    }

    #[test]
    fn missing_files_are_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nowhere");
        assert!(ProcHealth::with_root(&missing, &missing).read().is_empty());
    }
}
