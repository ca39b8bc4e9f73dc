//! Sensirion SHT3x (SHT30, SHT31, SHT35): air temperature and relative humidity over I2C.
//!
//! What the driver relies on, from the datasheet:
//!
//! - 7-bit address [`ADDRESS_DEFAULT`] 0x44 (ADDR pin low) or [`ADDRESS_ALT`] 0x45 (ADDR high).
//! - Commands are 16-bit words sent MSB first, without a checksum.
//! - A single-shot measurement with high repeatability and clock stretching disabled is
//!   command 0x2400. It takes at most 15.5 ms; while it runs the sensor does not acknowledge
//!   a read, so the driver waits [`MEASUREMENT_WAIT_MS`] (16 ms) before reading 6 bytes:
//!   temperature MSB, LSB, CRC, humidity MSB, LSB, CRC.
//! - Every 16-bit data word is followed by a CRC-8: polynomial 0x31, initial value 0xFF, no
//!   reflection, no final XOR ([`crc8`]; the datasheet's example: 0xBEEF gives 0x92).
//! - T = -45 + 175 · S_T / 65535 °C and RH = 100 · S_RH / 65535 %.
//! - Soft reset is 0x30A2 (the sensor is ready again within 1.5 ms); reading the status
//!   register is 0xF32D followed by a 3-byte read (word and CRC).
//!
//! A missing acknowledge or a checksum mismatch is an error: the driver never returns a value
//! it did not receive intact.

use cuntong_core::telemetry::Metric;
use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::I2c;

use super::{Sensor, SensorError, describe_i2c_error};

/// Address with the ADDR pin low (the usual wiring).
pub const ADDRESS_DEFAULT: u8 = 0x44;
/// Address with the ADDR pin high.
pub const ADDRESS_ALT: u8 = 0x45;

/// Single shot, high repeatability, clock stretching disabled.
pub const CMD_MEASURE_HIGH: u16 = 0x2400;
/// Soft reset.
pub const CMD_SOFT_RESET: u16 = 0x30A2;
/// Read the status register.
pub const CMD_READ_STATUS: u16 = 0xF32D;

/// Wait between the measurement command and the read: the datasheet's 15.5 ms maximum for
/// high repeatability, rounded up.
pub const MEASUREMENT_WAIT_MS: u32 = 16;
/// Wait after a soft reset: the datasheet's 1.5 ms maximum, rounded up.
pub const SOFT_RESET_WAIT_MS: u32 = 2;

const METRICS: [Metric; 2] = [Metric::AirTemp, Metric::Humidity];

/// CRC-8 of the SHT3x: polynomial 0x31 (x⁸ + x⁵ + x⁴ + 1), initial value 0xFF, no reflection,
/// no final XOR.
pub fn crc8(data: &[u8]) -> u8 {
    let mut crc = 0xFFu8;
    for &byte in data {
        crc ^= byte;
        for _ in 0..8 {
            crc = if crc & 0x80 != 0 {
                (crc << 1) ^ 0x31
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Temperature in °C from the raw 16-bit signal.
pub fn temperature_c(raw: u16) -> f64 {
    -45.0 + 175.0 * f64::from(raw) / 65535.0
}

/// Relative humidity in % from the raw 16-bit signal.
pub fn humidity_pct(raw: u16) -> f64 {
    100.0 * f64::from(raw) / 65535.0
}

/// One measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Measurement {
    pub temperature_c: f64,
    pub humidity_pct: f64,
}

/// The status register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Status(pub u16);

impl Status {
    /// Bit 15: at least one alert is pending.
    pub fn alert_pending(self) -> bool {
        self.0 & (1 << 15) != 0
    }
    /// Bit 13: the heater is on.
    pub fn heater_on(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Bit 11: humidity tracking alert.
    pub fn humidity_alert(self) -> bool {
        self.0 & (1 << 11) != 0
    }
    /// Bit 10: temperature tracking alert.
    pub fn temperature_alert(self) -> bool {
        self.0 & (1 << 10) != 0
    }
    /// Bit 4: a reset (power-up, soft reset, reset pin) happened since the flags were cleared.
    pub fn reset_detected(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// Bit 1: the last command was not processed (unknown, or its checksum was wrong).
    pub fn command_failed(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// Bit 0: the checksum of the last write transfer was wrong.
    pub fn write_checksum_failed(self) -> bool {
        self.0 & 1 != 0
    }
}

/// An SHT3x on an I2C bus.
#[derive(Debug)]
pub struct Sht3x<I, D> {
    i2c: I,
    delay: D,
    address: u8,
    name: String,
}

impl<I: I2c, D: DelayNs> Sht3x<I, D> {
    /// A driver for the sensor at `address` (normally [`ADDRESS_DEFAULT`] or
    /// [`ADDRESS_ALT`]). Nothing is sent until the first command.
    pub fn new(i2c: I, delay: D, address: u8) -> Self {
        Sht3x {
            i2c,
            delay,
            address,
            name: format!("sht3x@{address:#04x}"),
        }
    }

    /// The 7-bit address the driver talks to.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// Gives the bus and the delay back.
    pub fn release(self) -> (I, D) {
        (self.i2c, self.delay)
    }

    /// One single-shot measurement at high repeatability (about 16 ms, blocking).
    pub fn measure(&mut self) -> Result<Measurement, SensorError> {
        self.command(
            CMD_MEASURE_HIGH,
            "sending the single-shot measurement command 0x2400",
        )?;
        self.delay.delay_ms(MEASUREMENT_WAIT_MS);
        let mut buf = [0u8; 6];
        self.read_into(&mut buf, "reading the measurement")?;
        let t = self.checked_word(&buf[0..3], "temperature")?;
        let rh = self.checked_word(&buf[3..6], "humidity")?;
        Ok(Measurement {
            temperature_c: temperature_c(t),
            humidity_pct: humidity_pct(rh),
        })
    }

    /// Soft reset: the sensor reloads its calibration and returns to idle.
    pub fn soft_reset(&mut self) -> Result<(), SensorError> {
        self.command(CMD_SOFT_RESET, "sending the soft reset command 0x30a2")?;
        self.delay.delay_ms(SOFT_RESET_WAIT_MS);
        Ok(())
    }

    /// Reads the status register.
    pub fn read_status(&mut self) -> Result<Status, SensorError> {
        self.command(CMD_READ_STATUS, "sending the read status command 0xf32d")?;
        let mut buf = [0u8; 3];
        self.read_into(&mut buf, "reading the status register")?;
        Ok(Status(self.checked_word(&buf, "status")?))
    }

    fn command(&mut self, cmd: u16, step: &str) -> Result<(), SensorError> {
        self.i2c
            .write(self.address, &cmd.to_be_bytes())
            .map_err(|e| bus_error(&self.name, step, &e))
    }

    fn read_into(&mut self, buf: &mut [u8], step: &str) -> Result<(), SensorError> {
        self.i2c
            .read(self.address, buf)
            .map_err(|e| bus_error(&self.name, step, &e))
    }

    /// The word of a (MSB, LSB, CRC) triple, if its CRC matches.
    fn checked_word(&self, triple: &[u8], word: &'static str) -> Result<u16, SensorError> {
        let (data, found) = (&triple[..2], triple[2]);
        let expected = crc8(data);
        if expected != found {
            return Err(SensorError::Crc {
                sensor: self.name.clone(),
                word,
                expected,
                found,
            });
        }
        Ok(u16::from_be_bytes([data[0], data[1]]))
    }
}

fn bus_error(sensor: &str, step: &str, e: &impl embedded_hal::i2c::Error) -> SensorError {
    let kind = e.kind();
    SensorError::Bus {
        sensor: sensor.to_owned(),
        detail: format!("{step}: {} [{e:?}]", describe_i2c_error(kind)),
    }
}

impl<I: I2c + Send, D: DelayNs + Send> Sensor for Sht3x<I, D> {
    fn name(&self) -> &str {
        &self.name
    }

    fn metrics(&self) -> &[Metric] {
        &METRICS
    }

    fn read(&mut self) -> Result<Vec<(Metric, f64)>, SensorError> {
        let m = self.measure()?;
        Ok(vec![
            (Metric::AirTemp, m.temperature_c),
            (Metric::Humidity, m.humidity_pct),
        ])
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use embedded_hal::i2c::{ErrorKind, ErrorType, NoAcknowledgeSource, Operation};

    use super::*;

    /// One expected bus operation, in its own transaction.
    #[derive(Debug)]
    enum Step {
        /// Expect a write of exactly these bytes to the address.
        Write(u8, Vec<u8>, Result<(), ErrorKind>),
        /// Expect a read of this many bytes from the address; answer with them.
        Read(u8, Vec<u8>, Result<(), ErrorKind>),
    }

    fn write(addr: u8, bytes: &[u8]) -> Step {
        Step::Write(addr, bytes.to_vec(), Ok(()))
    }

    fn read(addr: u8, bytes: &[u8]) -> Step {
        Step::Read(addr, bytes.to_vec(), Ok(()))
    }

    /// A scripted bus: each transaction must be the next step of the script.
    #[derive(Debug)]
    struct FakeI2c {
        script: VecDeque<Step>,
    }

    impl FakeI2c {
        fn new(script: Vec<Step>) -> Self {
            FakeI2c {
                script: script.into(),
            }
        }
    }

    impl ErrorType for FakeI2c {
        type Error = ErrorKind;
    }

    impl I2c for FakeI2c {
        fn transaction(
            &mut self,
            address: u8,
            operations: &mut [Operation<'_>],
        ) -> Result<(), ErrorKind> {
            assert_eq!(operations.len(), 1, "one operation per transaction");
            let step = self
                .script
                .pop_front()
                .expect("a transaction past the script");
            match (&mut operations[0], step) {
                (Operation::Write(bytes), Step::Write(addr, expected, result)) => {
                    assert_eq!(address, addr, "write address");
                    assert_eq!(*bytes, &expected[..], "written bytes");
                    result
                }
                (Operation::Read(buf), Step::Read(addr, answer, result)) => {
                    assert_eq!(address, addr, "read address");
                    assert_eq!(buf.len(), answer.len(), "read length");
                    if result.is_ok() {
                        buf.copy_from_slice(&answer);
                    }
                    result
                }
                (op, step) => panic!("expected {step:?}, got {op:?}"),
            }
        }
    }

    /// Records how long the driver waited.
    #[derive(Debug, Default)]
    struct FakeDelay {
        ns: u64,
    }

    impl DelayNs for FakeDelay {
        fn delay_ns(&mut self, ns: u32) {
            self.ns += u64::from(ns);
        }
    }

    fn sensor(script: Vec<Step>) -> Sht3x<FakeI2c, FakeDelay> {
        Sht3x::new(FakeI2c::new(script), FakeDelay::default(), ADDRESS_DEFAULT)
    }

    fn assert_done(s: Sht3x<FakeI2c, FakeDelay>) -> FakeDelay {
        let (bus, delay) = s.release();
        assert!(bus.script.is_empty(), "steps left: {:?}", bus.script);
        delay
    }

    /// (MSB, LSB, CRC) of a word.
    fn triple(word: u16) -> [u8; 3] {
        let [m, l] = word.to_be_bytes();
        [m, l, crc8(&[m, l])]
    }

    fn answer(t: u16, rh: u16) -> Vec<u8> {
        [triple(t), triple(rh)].concat()
    }

    #[test]
    fn crc_matches_the_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
        assert_eq!(crc8(&[]), 0xFF);
    }

    #[test]
    fn conversions_span_the_datasheet_ranges() {
        assert_eq!(temperature_c(0), -45.0);
        assert_eq!(temperature_c(0xFFFF), 130.0);
        assert_eq!(humidity_pct(0), 0.0);
        assert_eq!(humidity_pct(0xFFFF), 100.0);
    }

    #[test]
    fn measures_with_the_single_shot_command_and_converts() {
        let mut s = sensor(vec![
            write(0x44, &[0x24, 0x00]),
            read(0x44, &answer(0x6666, 0x8000)),
        ]);
        assert_eq!(s.name(), "sht3x@0x44");
        assert_eq!(s.metrics(), &[Metric::AirTemp, Metric::Humidity]);
        let readings = s.read().expect("a good read");
        assert_eq!(readings.len(), 2);
        assert_eq!(readings[0].0, Metric::AirTemp);
        assert!((readings[0].1 - 25.0).abs() < 0.01, "{readings:?}");
        assert_eq!(readings[1].0, Metric::Humidity);
        assert!((readings[1].1 - 50.0).abs() < 0.01, "{readings:?}");
        let delay = assert_done(s);
        assert!(
            delay.ns >= 15_500_000,
            "waited only {} ns for the measurement",
            delay.ns
        );
    }

    #[test]
    fn uses_the_configured_address() {
        let mut s = Sht3x::new(
            FakeI2c::new(vec![
                write(0x45, &[0x24, 0x00]),
                read(0x45, &answer(0x0000, 0xFFFF)),
            ]),
            FakeDelay::default(),
            ADDRESS_ALT,
        );
        assert_eq!(s.name(), "sht3x@0x45");
        let m = s.measure().expect("a good read");
        assert_eq!(m.temperature_c, -45.0);
        assert_eq!(m.humidity_pct, 100.0);
        assert_done(s);
    }

    #[test]
    fn crc_error_names_the_word() {
        let mut bytes = answer(0x6666, 0x8000);
        let good = bytes[5];
        bytes[5] ^= 0x01;
        let mut s = sensor(vec![write(0x44, &[0x24, 0x00]), read(0x44, &bytes)]);
        let e = s.read().expect_err("a bad humidity CRC");
        assert_eq!(
            e,
            SensorError::Crc {
                sensor: "sht3x@0x44".into(),
                word: "humidity",
                expected: good,
                found: good ^ 0x01,
            }
        );
        assert!(e.to_string().contains("humidity"), "{e}");
        assert_done(s);

        let mut bytes = answer(0x6666, 0x8000);
        bytes[2] = !bytes[2];
        let mut s = sensor(vec![write(0x44, &[0x24, 0x00]), read(0x44, &bytes)]);
        assert!(matches!(
            s.read(),
            Err(SensorError::Crc {
                word: "temperature",
                ..
            })
        ));
        assert_done(s);
    }

    #[test]
    fn nack_is_a_bus_error() {
        let nack = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
        let mut s = sensor(vec![Step::Write(0x44, vec![0x24, 0x00], Err(nack))]);
        let e = s.read().expect_err("a NACK");
        match &e {
            SensorError::Bus { sensor, detail } => {
                assert_eq!(sensor, "sht3x@0x44");
                assert!(detail.contains("0x2400"), "{detail}");
                assert!(detail.contains("no acknowledge of the address"), "{detail}");
            }
            other => panic!("expected a bus error, got {other:?}"),
        }
        assert!(e.to_string().starts_with("sht3x@0x44: "), "{e}");
        assert_done(s);

        // The sensor answers the command but not the read (still measuring, or gone).
        let mut s = sensor(vec![
            write(0x44, &[0x24, 0x00]),
            Step::Read(0x44, vec![0; 6], Err(nack)),
        ]);
        match s.read() {
            Err(SensorError::Bus { detail, .. }) => {
                assert!(detail.contains("reading the measurement"), "{detail}");
            }
            other => panic!("expected a bus error, got {other:?}"),
        }
        assert_done(s);
    }

    #[test]
    fn soft_reset_and_status() {
        let mut s = sensor(vec![
            write(0x44, &[0x30, 0xA2]),
            write(0x44, &[0xF3, 0x2D]),
            read(0x44, &triple(0x8010)),
            write(0x44, &[0xF3, 0x2D]),
            read(0x44, &[0x80, 0x10, 0x00]),
        ]);
        s.soft_reset().expect("reset");
        let status = s.read_status().expect("status");
        assert_eq!(status, Status(0x8010));
        assert!(status.alert_pending() && status.reset_detected());
        assert!(!status.heater_on() && !status.command_failed());
        assert!(matches!(
            s.read_status(),
            Err(SensorError::Crc {
                word: "status",
                found: 0x00,
                ..
            })
        ));
        let delay = assert_done(s);
        assert!(delay.ns >= 1_500_000);
    }
}
