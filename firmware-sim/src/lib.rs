//! Simulated cuntong hardware and fleets.
//!
//! The simulated devices implement the same embedded-hal traits as the real ones and speak
//! their real protocols (an SHT3x answers the real command bytes with correct CRCs), so the
//! terminal's real drivers and daemon run unchanged on top of them. Tests, benchmarks and
//! `cuntong demo` use these same pieces.
//!
//! - [`sht3x`]: a simulated SHT3x temperature/humidity sensor with fault injection.
//! - [`health`]: simulated site health (uptime, CPU, memory, disk).
//! - [`datalogger`]: a simulated HJ 212 data logger.
//! - [`fleet`]: many simulated terminals in one process, spread over a region.
//! - [`proxy`]: a TCP proxy standing for the rural link, to cut or slow on command.
//! - [`ports`]: ports for what must know its port before it starts.

pub mod datalogger;
pub mod divisions;
pub mod fleet;
pub mod health;
pub mod ports;
pub mod proxy;
pub mod sht3x;
