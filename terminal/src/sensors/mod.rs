//! Sensors (temporary interface until the driver lands).
pub mod sht3x;
use cuntong_core::telemetry::Metric;
pub trait Sensor: Send {
    fn name(&self) -> &str;
    fn metrics(&self) -> &[Metric];
    fn read(&mut self) -> Result<Vec<(Metric, f64)>, SensorError>;
}
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SensorError {
    #[error("{sensor}: bus error: {detail}")]
    Bus { sensor: String, detail: String },
    #[error("{sensor}: CRC mismatch in {word} word: expected {expected:#04x}, found {found:#04x}")]
    Crc {
        sensor: String,
        word: &'static str,
        expected: u8,
        found: u8,
    },
    #[error("cannot open {path}: {detail}")]
    Open { path: String, detail: String },
}
pub fn open_sht3x(bus_path: &str, _address: u8) -> Result<Box<dyn Sensor>, SensorError> {
    Err(SensorError::Open {
        path: bus_path.into(),
        detail: "temporary".into(),
    })
}
