//! temporary
use super::{Sensor, SensorError};
use cuntong_core::telemetry::Metric;
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;
#[derive(Debug)]
pub struct Sht3x<I, D> {
    i2c: I,
    delay: D,
    address: u8,
    name: String,
}
impl<I: I2c, D: DelayNs> Sht3x<I, D> {
    pub fn new(i2c: I, delay: D, address: u8) -> Self {
        Sht3x {
            i2c,
            delay,
            address,
            name: format!("sht3x@{address:#04x}"),
        }
    }
}
impl<I: I2c + Send, D: DelayNs + Send> Sensor for Sht3x<I, D> {
    fn name(&self) -> &str {
        &self.name
    }
    fn metrics(&self) -> &[Metric] {
        &[Metric::AirTemp, Metric::Humidity]
    }
    fn read(&mut self) -> Result<Vec<(Metric, f64)>, SensorError> {
        let bus = |e: I::Error| SensorError::Bus {
            sensor: String::new(),
            detail: format!("{:?}", embedded_hal::i2c::Error::kind(&e)),
        };
        self.i2c.write(self.address, &[0x24, 0x00]).map_err(bus)?;
        self.delay.delay_ms(16);
        let mut b = [0u8; 6];
        self.i2c.read(self.address, &mut b).map_err(bus)?;
        let t = -45.0 + 175.0 * f64::from(u16::from_be_bytes([b[0], b[1]])) / 65535.0;
        let h = 100.0 * f64::from(u16::from_be_bytes([b[3], b[4]])) / 65535.0;
        Ok(vec![(Metric::AirTemp, t), (Metric::Humidity, h)])
    }
}
