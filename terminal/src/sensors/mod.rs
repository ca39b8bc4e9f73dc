//! Sensors: the environmental instruments wired to a site's box.
//!
//! A terminal reports two kinds of data: its own health (from `/proc`) and what its sensors
//! measure at the site (air temperature, humidity, …). Each sensor is a [`Sensor`]: a name for
//! logs and status, the [`Metric`]s it returns, and a blocking [`Sensor::read`] that yields
//! one `(metric, value)` pair per metric, or a [`SensorError`] that says which sensor failed
//! and how. A failed read never produces a value: the daemon records a fault instead.
//!
//! Drivers are written against the `embedded-hal` 1.0 traits (`I2c`, `DelayNs`), so the same
//! code runs on a Linux I2C bus (`/dev/i2c-N`, feature `linux-i2c`) and on the simulated
//! devices of `cuntong-firmware-sim`.
//!
//! - [`sht3x`]: Sensirion SHT30/SHT31/SHT35 temperature and humidity sensor.

pub mod sht3x;

use cuntong_core::telemetry::Metric;
use embedded_hal::i2c::{ErrorKind, NoAcknowledgeSource};

/// A sensor the terminal polls. Reads are blocking (I2C); the daemon runs them off the async runtime.
pub trait Sensor: Send {
    /// Stable name for logs/status, e.g. "sht3x@0x44".
    fn name(&self) -> &str;
    /// The metrics one read returns.
    fn metrics(&self) -> &[Metric];
    /// One measurement: (metric, value) pairs.
    fn read(&mut self) -> Result<Vec<(Metric, f64)>, SensorError>;
}

/// Why a sensor could not be opened or read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SensorError {
    /// The bus transfer failed: the sensor did not acknowledge (absent, unpowered, wrong
    /// address, busy) or the bus itself misbehaved. `detail` names the step that failed and
    /// the embedded-hal error kind.
    #[error("{sensor}: I2C transfer failed while {detail}")]
    Bus { sensor: String, detail: String },
    /// A data word arrived with a wrong checksum (noise on the bus, a loose wire): the
    /// value is discarded. `expected` is the CRC computed over the received data word,
    /// `found` the CRC byte the sensor sent.
    #[error(
        "{sensor}: CRC mismatch in the {word} word: computed {expected:#04x}, received {found:#04x}; reading discarded"
    )]
    Crc {
        sensor: String,
        word: &'static str,
        expected: u8,
        found: u8,
    },
    /// The bus device could not be opened (missing `/dev/i2c-N`, no permission, kernel
    /// module not loaded).
    #[error("cannot open I2C bus {path}: {detail}")]
    Open { path: String, detail: String },
}

/// Describes an embedded-hal I2C error kind for a person reading a log or the status page.
pub(crate) fn describe_i2c_error(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address) => {
            "no acknowledge of the address (sensor absent, unpowered, at another address, or busy)"
        }
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data) => {
            "no acknowledge of a data byte (the sensor refused the command)"
        }
        ErrorKind::NoAcknowledge(NoAcknowledgeSource::Unknown) => {
            "no acknowledge of the address or a data byte (sensor absent, unpowered, or busy)"
        }
        ErrorKind::Bus => "bus error (misplaced START/STOP: noise or a wiring fault)",
        ErrorKind::ArbitrationLoss => "arbitration lost (another master, or clock line trouble)",
        ErrorKind::Overrun => "receive buffer overrun",
        // Linux adapters often report a NACK as EREMOTEIO ("Remote I/O error"), which
        // embedded-hal cannot classify.
        _ => "other bus error (on Linux, \"Remote I/O error\" usually means no acknowledge)",
    }
}

/// Opens an SHT3x on a Linux I2C bus such as `/dev/i2c-1` at `address` (0x44 or 0x45).
///
/// Only the bus device is opened here; whether a sensor answers at `address` shows on the
/// first read (as [`SensorError::Bus`]).
#[cfg(all(target_os = "linux", feature = "linux-i2c"))]
pub fn open_sht3x(bus_path: &str, address: u8) -> Result<Box<dyn Sensor>, SensorError> {
    let bus = linux_embedded_hal::I2cdev::new(bus_path).map_err(|e| SensorError::Open {
        path: bus_path.to_owned(),
        detail: e.to_string(),
    })?;
    Ok(Box::new(sht3x::Sht3x::new(
        bus,
        linux_embedded_hal::Delay,
        address,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_sensor_and_the_fault() {
        let e = SensorError::Crc {
            sensor: "sht3x@0x44".into(),
            word: "humidity",
            expected: 0x92,
            found: 0x93,
        };
        assert_eq!(
            e.to_string(),
            "sht3x@0x44: CRC mismatch in the humidity word: computed 0x92, received 0x93; reading discarded"
        );
        let e = SensorError::Open {
            path: "/dev/i2c-7".into(),
            detail: "No such file or directory (os error 2)".into(),
        };
        assert!(e.to_string().contains("/dev/i2c-7"));
    }
}
