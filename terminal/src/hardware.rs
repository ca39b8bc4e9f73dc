//! Turning the configured sensors into drivers on this box's buses.

use cuntong_core::telemetry::Metric;

use crate::config::SensorKind;
use crate::sensors::{Sensor, SensorError};

/// Opens the driver for a configured sensor.
pub fn open(kind: &SensorKind) -> Result<Box<dyn Sensor>, SensorError> {
    match kind {
        #[cfg(all(target_os = "linux", feature = "linux-i2c"))]
        SensorKind::Sht3x { bus, address } => crate::sensors::open_sht3x(bus, *address),
        #[cfg(not(all(target_os = "linux", feature = "linux-i2c")))]
        SensorKind::Sht3x { bus, .. } => Err(SensorError::Open {
            path: bus.clone(),
            detail: "this build has no Linux I2C support (feature linux-i2c)".into(),
        }),
    }
}

/// A sensor that could not be opened yet: every read tries to open it again and reports the
/// error until it succeeds, so a loose cable shows up in status and events instead of
/// stopping the terminal.
#[derive(Debug)]
pub struct Reopening {
    kind: SensorKind,
    name: String,
    metrics: Vec<Metric>,
    inner: Option<Box<dyn Sensor>>,
}

impl std::fmt::Debug for dyn Sensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sensor({})", self.name())
    }
}

/// Opens a sensor, or returns one that keeps trying.
pub fn open_or_retry(kind: &SensorKind) -> Box<dyn Sensor> {
    let metrics = match kind {
        SensorKind::Sht3x { .. } => vec![Metric::AirTemp, Metric::Humidity],
    };
    let inner = match open(kind) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(sensor = %kind.label(), error = %e, "sensor not available; will retry");
            None
        }
    };
    Box::new(Reopening {
        name: kind.label(),
        kind: kind.clone(),
        metrics,
        inner,
    })
}

impl Sensor for Reopening {
    fn name(&self) -> &str {
        &self.name
    }

    fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    fn read(&mut self) -> Result<Vec<(Metric, f64)>, SensorError> {
        if self.inner.is_none() {
            self.inner = Some(open(&self.kind)?);
        }
        match self.inner.as_mut() {
            Some(s) => s.read(),
            None => Err(SensorError::Open {
                path: self.name.clone(),
                detail: "not open".into(),
            }),
        }
    }
}

/// How the box restarts itself when central sends `reboot`. The terminal binary runs the
/// configured system command ([`SystemPower`]); the simulator restarts the simulated box.
pub trait Power: Send {
    /// Starts a restart and says what was done; the daemon answers central with it before
    /// the box goes down.
    fn reboot(&mut self) -> Result<String, RebootError>;
}

/// Why the box could not start a restart.
#[derive(Debug, thiserror::Error)]
pub enum RebootError {
    #[error("no reboot command configured ([commands] reboot)")]
    NotConfigured,
    #[error("reboot command {program} failed: {source}")]
    Command {
        program: String,
        source: std::io::Error,
    },
}

/// Restarts the box with a system command (`[commands] reboot = ["systemctl", "reboot"]`).
#[derive(Clone, Debug, Default)]
pub struct SystemPower {
    pub command: Option<Vec<String>>,
}

impl Power for SystemPower {
    fn reboot(&mut self) -> Result<String, RebootError> {
        let Some((program, args)) = self.command.as_ref().and_then(|c| c.split_first()) else {
            return Err(RebootError::NotConfigured);
        };
        match std::process::Command::new(program).args(args).spawn() {
            Ok(_) => Ok(format!("reboot started: {program} {}", args.join(" "))
                .trim_end()
                .to_owned()),
            Err(source) => Err(RebootError::Command {
                program: program.clone(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reboot_without_a_command_is_refused_and_a_failing_command_says_why() {
        assert!(
            SystemPower::default()
                .reboot()
                .unwrap_err()
                .to_string()
                .contains("no reboot command")
        );
        let mut p = SystemPower {
            command: Some(vec!["/nonexistent/reboot".into()]),
        };
        assert!(
            p.reboot()
                .unwrap_err()
                .to_string()
                .contains("/nonexistent/reboot")
        );
        let mut p = SystemPower {
            command: Some(vec!["true".into(), "now".into()]),
        };
        assert_eq!(p.reboot().unwrap(), "reboot started: true now");
    }
}
