//! A simulated Sensirion SHT3x temperature/humidity sensor on an I2C bus.
//!
//! [`SimSht3x`] implements `embedded_hal::i2c::I2c` and answers like the real chip at its
//! address, so the terminal's real driver runs on it unchanged:
//!
//! - Commands are 16-bit words, MSB first. Accepted: single-shot measurements (0x2400,
//!   0x240B, 0x2416 without clock stretching; 0x2C06, 0x2C0D, 0x2C10 with it), soft reset
//!   0x30A2, read status 0xF32D and clear status 0x3041. Any other write is refused with a
//!   NACK on the data and sets the status register's "command not processed" bit.
//! - The simulated measurement completes at once, so a read after a measurement command gets
//!   6 bytes: temperature MSB, LSB, CRC, humidity MSB, LSB, CRC (CRC-8, polynomial 0x31,
//!   init 0xFF). A read after the status command gets the status word and its CRC. Data are
//!   read once: a read with nothing pending is NACKed on the address, as is any transfer to
//!   another address. Bytes read past the end of an answer are 0xFF.
//! - Readings drift slowly and plausibly: temperature is a base (18 °C by default) plus a
//!   daily sine of ±4 °C peaking at 15:00, plus a small mean-reverting random walk and
//!   measurement noise; relative humidity is a base (55 %) that falls as the temperature rises
//!   above its base, plus its own random walk. The simulated clock starts at a time of day
//!   drawn from the seed and advances [`SECONDS_PER_MEASUREMENT`] per measurement command,
//!   so a sim is deterministic: the same seed and the same commands give the same bytes (on
//!   the same platform: `SmallRng`'s algorithm differs between 32- and 64-bit targets).
//!
//! A [`SimSht3xControl`], cloned from the device's creation, changes the device while a
//! driver owns it: [`SimSht3xControl::set_fault`] injects a [`Fault`] and
//! [`SimSht3xControl::set_base`] moves the climate. [`NoDelay`] is a `DelayNs` that returns
//! at once, for drivers running on simulated devices.

use std::f64::consts::TAU;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use embedded_hal::delay::DelayNs;
use embedded_hal::i2c::{ErrorKind, ErrorType, I2c, NoAcknowledgeSource, Operation};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Base temperature of a new device, °C.
pub const DEFAULT_BASE_TEMP_C: f64 = 18.0;
/// Base relative humidity of a new device, %.
pub const DEFAULT_BASE_RH: f64 = 55.0;
/// Half the daily temperature swing, °C.
pub const DAILY_AMPLITUDE_C: f64 = 4.0;
/// Simulated time between two measurements, seconds.
pub const SECONDS_PER_MEASUREMENT: f64 = 60.0;

const DAY_S: f64 = 86_400.0;
/// Time of day of the daily maximum, seconds after midnight.
const WARMEST_AT_S: f64 = 15.0 * 3600.0;
/// How much RH falls per °C above the base temperature.
const RH_PER_C: f64 = 2.5;
/// Random walks: each step keeps this share of the excursion (mean reversion) ...
const WALK_KEEP: f64 = 0.995;
/// ... and adds a uniform step of at most this much (°C, % RH).
const WALK_STEP_C: f64 = 0.05;
const WALK_STEP_RH: f64 = 0.2;
/// Measurement noise, uniform, at most this much (°C, % RH).
const NOISE_C: f64 = 0.02;
const NOISE_RH: f64 = 0.1;

/// Status register after power-up or a reset: alert pending (bit 15), reset detected (bit 4).
const STATUS_AFTER_RESET: u16 = 0x8010;
/// Flags that the clear status command clears: bits 15, 11, 10 and 4.
const STATUS_CLEARABLE: u16 = (1 << 15) | (1 << 11) | (1 << 10) | (1 << 4);
/// Status bit 1: the last command was not processed.
const STATUS_COMMAND_FAILED: u16 = 1 << 1;

const NACK_ADDRESS: ErrorKind = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Address);
const NACK_DATA: ErrorKind = ErrorKind::NoAcknowledge(NoAcknowledgeSource::Data);

/// A fault to inject.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave normally.
    #[default]
    None,
    /// Acknowledge nothing, as if unplugged.
    Nack,
    /// Corrupt the CRC byte of the first word (temperature, or the status word) of every
    /// answer read.
    BadCrc,
}

impl Fault {
    fn to_u8(self) -> u8 {
        match self {
            Fault::None => 0,
            Fault::Nack => 1,
            Fault::BadCrc => 2,
        }
    }

    fn from_u8(v: u8) -> Fault {
        match v {
            1 => Fault::Nack,
            2 => Fault::BadCrc,
            _ => Fault::None,
        }
    }
}

/// What the device and its control handles share.
#[derive(Debug)]
struct Shared {
    fault: AtomicU8,
    base_temp_c: AtomicU64,
    base_rh: AtomicU64,
}

/// Changes a [`SimSht3x`] from outside while a driver owns it. Cheap to clone; every clone
/// controls the same device.
#[derive(Clone, Debug)]
pub struct SimSht3xControl {
    shared: Arc<Shared>,
}

impl SimSht3xControl {
    /// Injects a fault from the next transfer on; [`Fault::None`] clears it.
    pub fn set_fault(&self, fault: Fault) {
        self.shared.fault.store(fault.to_u8(), Ordering::Relaxed);
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        Fault::from_u8(self.shared.fault.load(Ordering::Relaxed))
    }

    /// Moves the climate the readings drift around (from the next measurement on). Values
    /// outside the sensor's range read as its limits.
    pub fn set_base(&self, temp_c: f64, rh: f64) {
        self.shared
            .base_temp_c
            .store(temp_c.to_bits(), Ordering::Relaxed);
        self.shared.base_rh.store(rh.to_bits(), Ordering::Relaxed);
    }

    /// The base (temperature °C, relative humidity %).
    pub fn base(&self) -> (f64, f64) {
        (
            f64::from_bits(self.shared.base_temp_c.load(Ordering::Relaxed)),
            f64::from_bits(self.shared.base_rh.load(Ordering::Relaxed)),
        )
    }
}

/// An answer waiting to be read.
#[derive(Clone, Copy, Debug)]
struct Answer {
    bytes: [u8; 6],
    len: usize,
}

/// A simulated SHT3x at one I2C address.
#[derive(Debug)]
pub struct SimSht3x {
    address: u8,
    shared: Arc<Shared>,
    rng: SmallRng,
    /// Simulated seconds since some midnight.
    clock_s: f64,
    walk_c: f64,
    walk_rh: f64,
    status: u16,
    pending: Option<Answer>,
    measurements: u64,
}

impl SimSht3x {
    /// A device at `address` (0x44 or 0x45 on a real board) whose readings follow `seed`,
    /// and the handle that controls it.
    pub fn new(address: u8, seed: u64) -> (SimSht3x, SimSht3xControl) {
        let control = SimSht3xControl {
            shared: Arc::new(Shared {
                fault: AtomicU8::new(Fault::None.to_u8()),
                base_temp_c: AtomicU64::new(DEFAULT_BASE_TEMP_C.to_bits()),
                base_rh: AtomicU64::new(DEFAULT_BASE_RH.to_bits()),
            }),
        };
        (SimSht3x::controlled_by(&control, address, seed), control)
    }

    /// A device (freshly powered on) controlled by an existing handle: the same sensor after
    /// the simulated box restarted.
    pub fn controlled_by(control: &SimSht3xControl, address: u8, seed: u64) -> SimSht3x {
        let shared = Arc::clone(&control.shared);
        let mut rng = SmallRng::seed_from_u64(seed);
        let clock_s = rng.gen_range(0.0..DAY_S);
        SimSht3x {
            address,
            shared,
            rng,
            clock_s,
            walk_c: 0.0,
            walk_rh: 0.0,
            status: STATUS_AFTER_RESET,
            pending: None,
            measurements: 0,
        }
    }

    /// The address the device answers at.
    pub fn address(&self) -> u8 {
        self.address
    }

    /// How many measurement commands the device has run.
    pub fn measurements(&self) -> u64 {
        self.measurements
    }

    fn fault(&self) -> Fault {
        Fault::from_u8(self.shared.fault.load(Ordering::Relaxed))
    }

    /// Runs one written command.
    fn command(&mut self, bytes: &[u8]) -> Result<(), ErrorKind> {
        let cmd = match *bytes {
            // An address-only write (a probe): acknowledged, nothing to do.
            [] => return Ok(()),
            [msb, lsb] => u16::from_be_bytes([msb, lsb]),
            _ => {
                self.status |= STATUS_COMMAND_FAILED;
                return Err(NACK_DATA);
            }
        };
        match cmd {
            // Single shot, high/medium/low repeatability, without and with clock stretching.
            0x2400 | 0x240B | 0x2416 | 0x2C06 | 0x2C0D | 0x2C10 => {
                let (t, rh) = self.measure();
                let mut bytes = [0u8; 6];
                bytes[..3].copy_from_slice(&triple(t));
                bytes[3..].copy_from_slice(&triple(rh));
                self.pending = Some(Answer { bytes, len: 6 });
            }
            0x30A2 => {
                self.pending = None;
                self.status = STATUS_AFTER_RESET;
            }
            0xF32D => {
                let mut bytes = [0xFF; 6];
                bytes[..3].copy_from_slice(&triple(self.status));
                self.pending = Some(Answer { bytes, len: 3 });
            }
            0x3041 => self.status &= !STATUS_CLEARABLE,
            _ => {
                self.status |= STATUS_COMMAND_FAILED;
                return Err(NACK_DATA);
            }
        }
        self.status &= !STATUS_COMMAND_FAILED;
        Ok(())
    }

    /// Advances the simulated climate one measurement and returns the raw (T, RH) words.
    fn measure(&mut self) -> (u16, u16) {
        self.measurements += 1;
        self.clock_s = (self.clock_s + SECONDS_PER_MEASUREMENT) % DAY_S;
        self.walk_c = self.walk_c * WALK_KEEP + self.rng.gen_range(-WALK_STEP_C..=WALK_STEP_C);
        self.walk_rh = self.walk_rh * WALK_KEEP + self.rng.gen_range(-WALK_STEP_RH..=WALK_STEP_RH);
        let (base_c, base_rh) = (
            f64::from_bits(self.shared.base_temp_c.load(Ordering::Relaxed)),
            f64::from_bits(self.shared.base_rh.load(Ordering::Relaxed)),
        );
        // +1 at WARMEST_AT_S, -1 twelve hours away.
        let daily = DAILY_AMPLITUDE_C * (TAU * (self.clock_s - WARMEST_AT_S) / DAY_S).cos();
        let swing = daily + self.walk_c;
        let temp_c = base_c + swing + self.rng.gen_range(-NOISE_C..=NOISE_C);
        let rh =
            base_rh - RH_PER_C * swing + self.walk_rh + self.rng.gen_range(-NOISE_RH..=NOISE_RH);
        (raw_temperature(temp_c), raw_humidity(rh))
    }

    /// Answers a read of `bufs` (consecutive, one I2C read frame).
    fn answer(&mut self, bufs: &mut [Operation<'_>]) -> Result<(), ErrorKind> {
        let Some(mut answer) = self.pending.take() else {
            return Err(NACK_ADDRESS);
        };
        if self.fault() == Fault::BadCrc {
            answer.bytes[2] ^= 0xFF;
        }
        let mut source = answer.bytes[..answer.len].iter().copied();
        for op in bufs {
            if let Operation::Read(buf) = op {
                for b in buf.iter_mut() {
                    *b = source.next().unwrap_or(0xFF);
                }
            }
        }
        Ok(())
    }
}

impl ErrorType for SimSht3x {
    type Error = ErrorKind;
}

impl I2c for SimSht3x {
    fn transaction(
        &mut self,
        address: u8,
        operations: &mut [Operation<'_>],
    ) -> Result<(), ErrorKind> {
        if address != self.address || self.fault() == Fault::Nack {
            return Err(NACK_ADDRESS);
        }
        // Adjacent operations of one kind form one frame (no repeated start between them).
        let mut start = 0;
        while start < operations.len() {
            let is_read = matches!(operations[start], Operation::Read(_));
            let end = operations[start..]
                .iter()
                .position(|op| matches!(op, Operation::Read(_)) != is_read)
                .map_or(operations.len(), |n| start + n);
            let frame = &mut operations[start..end];
            if is_read {
                self.answer(frame)?;
            } else {
                let mut bytes = Vec::new();
                for op in frame.iter() {
                    if let Operation::Write(w) = op {
                        bytes.extend_from_slice(w);
                    }
                }
                self.command(&bytes)?;
            }
            start = end;
        }
        Ok(())
    }
}

/// A `DelayNs` that returns at once: the simulated devices finish their work instantly.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoDelay;

impl DelayNs for NoDelay {
    fn delay_ns(&mut self, _ns: u32) {}

    fn delay_us(&mut self, _us: u32) {}

    fn delay_ms(&mut self, _ms: u32) {}
}

/// The SHT3x CRC-8 (polynomial 0x31, init 0xFF, no reflection, no final XOR), by table.
fn crc8(data: &[u8]) -> u8 {
    data.iter()
        .fold(0xFF, |crc, &b| CRC_TABLE[usize::from(crc ^ b)])
}

const CRC_TABLE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u8;
        let mut bit = 0;
        while bit < 8 {
            c = if c & 0x80 != 0 {
                (c << 1) ^ 0x31
            } else {
                c << 1
            };
            bit += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// A word followed by its CRC.
fn triple(word: u16) -> [u8; 3] {
    let [msb, lsb] = word.to_be_bytes();
    [msb, lsb, crc8(&[msb, lsb])]
}

/// The raw word for a temperature, clamped to the sensor's -45..130 °C.
fn raw_temperature(temp_c: f64) -> u16 {
    to_raw((temp_c + 45.0) / 175.0)
}

/// The raw word for a relative humidity, clamped to 0..100 %.
fn raw_humidity(rh: f64) -> u16 {
    to_raw(rh / 100.0)
}

fn to_raw(fraction: f64) -> u16 {
    // A float-to-int `as` saturates (and maps NaN to 0), after the clamp it is exact.
    (fraction.clamp(0.0, 1.0) * 65535.0).round() as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(dev: &mut SimSht3x, n: usize) -> Result<Vec<u8>, ErrorKind> {
        let mut buf = vec![0u8; n];
        dev.read(0x44, &mut buf)?;
        Ok(buf)
    }

    #[test]
    fn crc_matches_the_datasheet_example() {
        assert_eq!(crc8(&[0xBE, 0xEF]), 0x92);
    }

    #[test]
    fn answers_a_measurement_once_with_good_crcs() {
        let (mut dev, _ctl) = SimSht3x::new(0x44, 7);
        dev.write(0x44, &[0x24, 0x00]).expect("command");
        let b = read(&mut dev, 6).expect("answer");
        assert_eq!(crc8(&b[0..2]), b[2]);
        assert_eq!(crc8(&b[3..5]), b[5]);
        assert_eq!(read(&mut dev, 6), Err(NACK_ADDRESS), "data are read once");

        dev.write(0x44, &[0x2C, 0x06])
            .expect("clock-stretched command");
        assert!(read(&mut dev, 6).is_ok());
        assert_eq!(dev.measurements(), 2);
    }

    #[test]
    fn refuses_what_the_chip_refuses() {
        let (mut dev, _ctl) = SimSht3x::new(0x44, 7);
        assert_eq!(read(&mut dev, 6), Err(NACK_ADDRESS), "nothing pending");
        let mut buf = [0u8; 6];
        assert_eq!(dev.write(0x45, &[0x24, 0x00]), Err(NACK_ADDRESS));
        assert_eq!(dev.read(0x45, &mut buf), Err(NACK_ADDRESS));
        assert_eq!(dev.write(0x44, &[0x12, 0x34]), Err(NACK_DATA));
        assert_eq!(dev.write(0x44, &[0x24]), Err(NACK_DATA));
        assert_eq!(
            dev.write(0x44, &[]),
            Ok(()),
            "an address probe is acknowledged"
        );
    }

    #[test]
    fn status_reset_and_clear() {
        let (mut dev, _ctl) = SimSht3x::new(0x44, 7);
        let mut status = [0u8; 3];
        dev.write_read(0x44, &[0xF3, 0x2D], &mut status)
            .expect("status");
        assert_eq!(status, triple(0x8010));

        assert!(dev.write(0x44, &[0xAB, 0xCD]).is_err());
        dev.write(0x44, &[0xF3, 0x2D]).expect("status");
        dev.read(0x44, &mut status).expect("status");
        assert_eq!(status, triple(0x8012), "command failed bit set");

        dev.write(0x44, &[0x30, 0x41]).expect("clear");
        dev.write(0x44, &[0xF3, 0x2D]).expect("status");
        dev.read(0x44, &mut status).expect("status");
        assert_eq!(status, triple(0x0000));

        dev.write(0x44, &[0x24, 0x00]).expect("command");
        dev.write(0x44, &[0x30, 0xA2]).expect("reset");
        assert_eq!(
            read(&mut dev, 6),
            Err(NACK_ADDRESS),
            "reset drops the measurement"
        );
        dev.write(0x44, &[0xF3, 0x2D]).expect("status");
        dev.read(0x44, &mut status).expect("status");
        assert_eq!(status, triple(0x8010));
    }

    #[test]
    fn faults_apply_and_clear() {
        let (mut dev, ctl) = SimSht3x::new(0x44, 7);
        ctl.set_fault(Fault::Nack);
        assert_eq!(dev.write(0x44, &[0x24, 0x00]), Err(NACK_ADDRESS));
        ctl.set_fault(Fault::BadCrc);
        dev.write(0x44, &[0x24, 0x00]).expect("command");
        let b = read(&mut dev, 6).expect("answer");
        assert_ne!(crc8(&b[0..2]), b[2]);
        assert_eq!(crc8(&b[3..5]), b[5]);
        ctl.clone().set_fault(Fault::None);
        assert_eq!(ctl.fault(), Fault::None);
        dev.write(0x44, &[0x24, 0x00]).expect("command");
        let b = read(&mut dev, 6).expect("answer");
        assert_eq!(crc8(&b[0..2]), b[2]);
    }

    #[test]
    fn raw_words_round_trip_and_clamp() {
        assert_eq!(raw_temperature(-45.0), 0);
        assert_eq!(raw_temperature(25.0), 0x6666);
        assert_eq!(raw_temperature(500.0), 0xFFFF);
        assert_eq!(raw_humidity(-3.0), 0);
        assert_eq!(raw_humidity(100.0), 0xFFFF);
        assert_eq!(raw_humidity(f64::NAN), 0);
    }
}
