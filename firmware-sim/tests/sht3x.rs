//! The terminal's real SHT3x driver against the simulated SHT3x.

use cuntong_core::telemetry::Metric;
use cuntong_firmware_sim::sht3x::{Fault, NoDelay, SimSht3x, SimSht3xControl};
use cuntong_terminal::sensors::sht3x::Sht3x;
use cuntong_terminal::sensors::{Sensor, SensorError};

fn driver(seed: u64) -> (Sht3x<SimSht3x, NoDelay>, SimSht3xControl) {
    let (device, control) = SimSht3x::new(0x44, seed);
    (Sht3x::new(device, NoDelay, 0x44), control)
}

/// (temperature °C, humidity %) of one read.
fn reading(sensor: &mut dyn Sensor) -> (f64, f64) {
    let r = sensor.read().expect("a good read");
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[0].0, Metric::AirTemp);
    assert_eq!(r[1].0, Metric::Humidity);
    (r[0].1, r[1].1)
}

#[test]
fn normal_reads_are_plausible_and_drift_slowly() {
    let (mut sensor, _control) = driver(1);
    assert_eq!(sensor.name(), "sht3x@0x44");
    let mut last: Option<(f64, f64)> = None;
    for _ in 0..2000 {
        let (t, rh) = reading(&mut sensor);
        assert!((8.0..=28.0).contains(&t), "temperature {t}");
        assert!((25.0..=85.0).contains(&rh), "humidity {rh}");
        if let Some((t0, rh0)) = last {
            assert!((t - t0).abs() < 0.5, "temperature jumped {t0} -> {t}");
            assert!((rh - rh0).abs() < 2.0, "humidity jumped {rh0} -> {rh}");
        }
        last = Some((t, rh));
    }
}

#[test]
fn readings_follow_the_base() {
    let (mut sensor, control) = driver(2);
    control.set_base(30.0, 80.0);
    let (t, rh) = reading(&mut sensor);
    assert!((24.0..=36.0).contains(&t), "temperature {t}");
    assert!((60.0..=100.0).contains(&rh), "humidity {rh}");
}

#[test]
fn nack_is_a_bus_error_and_recovers() {
    let (mut sensor, control) = driver(3);
    reading(&mut sensor);
    control.set_fault(Fault::Nack);
    match sensor.read() {
        Err(SensorError::Bus {
            sensor: name,
            detail,
        }) => {
            assert_eq!(name, "sht3x@0x44");
            assert!(detail.contains("acknowledge"), "{detail}");
        }
        other => panic!("expected a bus error, got {other:?}"),
    }
    control.set_fault(Fault::None);
    reading(&mut sensor);
}

#[test]
fn bad_crc_is_a_crc_error_and_recovers() {
    let (mut sensor, control) = driver(4);
    control.set_fault(Fault::BadCrc);
    for _ in 0..3 {
        match sensor.read() {
            Err(SensorError::Crc {
                sensor: name,
                expected,
                found,
                ..
            }) => {
                assert_eq!(name, "sht3x@0x44");
                assert_ne!(expected, found);
            }
            other => panic!("expected a CRC error, got {other:?}"),
        }
    }
    control.set_fault(Fault::None);
    reading(&mut sensor);
}

#[test]
fn status_and_soft_reset_work_on_the_sim() {
    let (mut sensor, _control) = driver(5);
    let status = sensor.read_status().expect("status");
    assert!(status.reset_detected());
    assert!(!status.command_failed());
    sensor.soft_reset().expect("reset");
    reading(&mut sensor);
}

#[test]
fn a_sensor_at_another_address_is_not_found() {
    let (device, _control) = SimSht3x::new(0x45, 6);
    let mut sensor = Sht3x::new(device, NoDelay, 0x44);
    assert!(matches!(sensor.read(), Err(SensorError::Bus { .. })));
}

#[test]
fn the_same_seed_gives_the_same_readings() {
    let (mut a, _ca) = driver(42);
    let (mut b, _cb) = driver(42);
    let (mut c, _cc) = driver(43);
    let ra: Vec<_> = (0..50).map(|_| reading(&mut a)).collect();
    let rb: Vec<_> = (0..50).map(|_| reading(&mut b)).collect();
    let rc: Vec<_> = (0..50).map(|_| reading(&mut c)).collect();
    assert_eq!(ra, rb);
    assert_ne!(ra, rc);
}
