//! Simulated site health: plausible, slowly wandering values for a box that does not exist.

use std::time::Instant;

use cuntong_core::telemetry::Metric;
use cuntong_terminal::health::HealthSource;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Health of a simulated box; deterministic for a given seed (apart from uptime).
#[derive(Debug)]
pub struct SimHealth {
    started: Instant,
    rng: SmallRng,
    load: f64,
    mem: f64,
    disk: f64,
}

impl SimHealth {
    pub fn new(seed: u64) -> SimHealth {
        let mut rng = SmallRng::seed_from_u64(seed);
        SimHealth {
            started: Instant::now(),
            load: rng.gen_range(0.1..0.8),
            mem: rng.gen_range(25.0..55.0),
            disk: rng.gen_range(10.0..40.0),
            rng,
        }
    }
}

impl HealthSource for SimHealth {
    fn read(&mut self) -> Vec<(Metric, f64)> {
        self.load = (self.load + self.rng.gen_range(-0.1..0.1)).clamp(0.0, 4.0);
        self.mem = (self.mem + self.rng.gen_range(-0.5..0.5)).clamp(5.0, 95.0);
        self.disk = (self.disk + self.rng.gen_range(0.0..0.01)).min(99.0);
        vec![
            (Metric::Uptime, self.started.elapsed().as_secs() as f64),
            (Metric::CpuLoad, self.load),
            (
                Metric::CpuTemp,
                42.0 + 8.0 * self.load + self.rng.gen_range(-0.5..0.5),
            ),
            (Metric::MemUsed, self.mem),
            (Metric::DiskUsed, self.disk),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_are_plausible_and_seeded() {
        let (mut a, mut b) = (SimHealth::new(3), SimHealth::new(3));
        for _ in 0..5 {
            // Uptime (first) follows the wall clock; the rest follows the seed.
            assert_eq!(a.read()[1..], b.read()[1..]);
        }
        let r = SimHealth::new(9).read();
        assert!(
            r.iter()
                .any(|(m, v)| *m == Metric::MemUsed && (5.0..=95.0).contains(v))
        );
    }
}
