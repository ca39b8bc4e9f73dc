//! Deciding which readings become samples, and grouping samples into batches.
//!
//! A [`Sampler`] applies each metric's policy to raw readings: a minimum interval between
//! samples, a deadband (a change smaller than it is not worth the bytes), and a maximum
//! silence after which a value is sent anyway so central can tell "unchanged" from "stale".
//! A [`Batcher`] collects samples until a batch is full or its oldest sample is old enough; a
//! batch holds the samples of one window (from its oldest sample, as long as the age allowed),
//! so a reading taken as the window closes opens the next batch, whichever of the two the
//! caller's timers deliver first.
//! Both are pure: the caller passes the time in.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use crate::decimal::Decimal;
use crate::telemetry::{Metric, Quality, Sample, TelemetryBatch};

/// How one metric is sampled.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricPolicy {
    /// Readings closer together than this (less an eighth, for timer jitter) are skipped.
    pub interval_ms: u64,
    /// A reading within this distance of the last sample is skipped (0 sends every reading).
    pub deadband: f64,
    /// A value is sent at least this often, even when it has not moved.
    pub max_silence_ms: u64,
    /// Decimal places kept.
    pub scale: u8,
}

impl MetricPolicy {
    /// Every reading at least `interval_ms` apart, no deadband, the metric's own resolution.
    pub fn every(metric: &Metric, interval_ms: u64) -> MetricPolicy {
        MetricPolicy {
            interval_ms,
            deadband: 0.0,
            max_silence_ms: interval_ms,
            scale: metric.default_scale(),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Last {
    time_ms: u64,
    value: f64,
}

/// Applies per-metric policies to readings.
#[derive(Clone, Debug)]
pub struct Sampler {
    policies: BTreeMap<Metric, MetricPolicy>,
    default_interval_ms: u64,
    last: BTreeMap<Metric, Last>,
}

impl Sampler {
    /// A sampler that uses `default_interval_ms` for metrics without a policy of their own.
    pub fn new(default_interval_ms: u64) -> Sampler {
        Sampler {
            policies: BTreeMap::new(),
            default_interval_ms,
            last: BTreeMap::new(),
        }
    }

    pub fn set_policy(&mut self, metric: Metric, policy: MetricPolicy) {
        self.policies.insert(metric, policy);
    }

    pub fn policy(&self, metric: &Metric) -> MetricPolicy {
        self.policies
            .get(metric)
            .cloned()
            .unwrap_or_else(|| MetricPolicy::every(metric, self.default_interval_ms))
    }

    /// The value to record for this reading, or `None` if the policy skips it.
    pub fn offer(&mut self, metric: &Metric, value: f64, now_ms: u64) -> Option<Decimal> {
        let policy = self.policy(metric);
        let decimal = Decimal::from_f64(value, policy.scale)?;
        if let Some(last) = self.last.get(metric) {
            let since = now_ms.saturating_sub(last.time_ms);
            // Readings come from timers that fire a little early or late; one that is due
            // within an eighth of the interval counts as on time.
            if since + policy.interval_ms / 8 < policy.interval_ms {
                return None;
            }
            let moved = (decimal.to_f64() - last.value).abs();
            if moved < policy.deadband && since < policy.max_silence_ms {
                return None;
            }
        }
        self.last.insert(
            metric.clone(),
            Last {
                time_ms: now_ms,
                value: decimal.to_f64(),
            },
        );
        Some(decimal)
    }
}

/// Collects samples into batches bounded in count and age.
#[derive(Clone, Debug)]
pub struct Batcher {
    max_samples: usize,
    max_age_ms: u64,
    pending: Vec<(u64, Metric, Decimal, Option<Quality>)>,
}

impl Batcher {
    pub fn new(max_samples: usize, max_age_ms: u64) -> Batcher {
        Batcher {
            max_samples: max_samples.max(1),
            max_age_ms,
            pending: Vec::new(),
        }
    }

    pub fn push(&mut self, time_ms: u64, metric: Metric, value: Decimal, quality: Option<Quality>) {
        self.pending.push((time_ms, metric, value, quality));
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the pending batch must go out, if anything is pending.
    pub fn deadline(&self) -> Option<u64> {
        let oldest = self.pending.iter().map(|p| p.0).min()?;
        Some(oldest.saturating_add(self.max_age_ms))
    }

    /// True if a batch should be taken now.
    pub fn is_due(&self, now_ms: u64) -> bool {
        self.pending.len() >= self.max_samples || self.deadline().is_some_and(|d| now_ms >= d)
    }

    /// Takes a batch with its base time (the earliest sample's): the oldest pending samples,
    /// up to `max_samples`, of the window that starts at the earliest and lasts the age
    /// allowed, less its last eighth (samples taken at the same instant as the earliest always
    /// go with it); `None` if nothing is pending. The last eighth is timer jitter: the next
    /// period's reading, taken a few milliseconds early as the window closes, opens the next
    /// batch instead of doubling this one.
    pub fn take(&mut self) -> Option<(u64, TelemetryBatch)> {
        self.pending.sort_by_key(|p| p.0);
        let base = self.pending.first()?.0;
        let end = base.saturating_add(self.max_age_ms - self.max_age_ms / 8);
        let n = self
            .pending
            .iter()
            .take(self.max_samples)
            .take_while(|p| p.0 < end || p.0 == base)
            .count();
        let taken: Vec<_> = self.pending.drain(..n).collect();
        let samples = taken
            .into_iter()
            .map(|(t, metric, value, quality)| Sample {
                offset_ms: u32::try_from(t - base).unwrap_or(u32::MAX),
                metric,
                value,
                quality,
            })
            .collect();
        Some((base, TelemetryBatch { samples }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadband_skips_small_changes_until_max_silence() {
        let mut s = Sampler::new(1_000);
        s.set_policy(
            Metric::AirTemp,
            MetricPolicy {
                interval_ms: 1_000,
                deadband: 0.5,
                max_silence_ms: 10_000,
                scale: 1,
            },
        );
        let t = Metric::AirTemp;
        assert_eq!(s.offer(&t, 20.04, 0), Some("20.0".parse().unwrap()));
        assert_eq!(s.offer(&t, 20.6, 500), None, "inside the interval");
        assert_eq!(s.offer(&t, 20.6, 874), None, "early by more than an eighth");
        assert_eq!(s.offer(&t, 20.3, 1_000), None, "inside the deadband");
        assert_eq!(s.offer(&t, 20.6, 2_000), Some("20.6".parse().unwrap()));
        assert_eq!(s.offer(&t, 20.6, 11_999), None);
        assert_eq!(
            s.offer(&t, 20.6, 12_000),
            Some("20.6".parse().unwrap()),
            "max silence reached"
        );
    }

    #[test]
    fn metrics_without_a_policy_use_the_default_interval() {
        let mut s = Sampler::new(5_000);
        assert!(s.offer(&Metric::CpuLoad, 0.5, 0).is_some());
        assert!(s.offer(&Metric::CpuLoad, 0.5, 4_000).is_none());
        assert!(
            s.offer(&Metric::CpuLoad, 0.5, 4_990).is_some(),
            "a timer firing early"
        );
        assert!(s.offer(&Metric::CpuLoad, f64::NAN, 10_000).is_none());
    }

    #[test]
    fn batches_close_on_count_or_age() {
        let mut b = Batcher::new(2, 1_000);
        assert_eq!(b.deadline(), None);
        b.push(100, Metric::Uptime, Decimal::from_int(1), None);
        assert!(!b.is_due(1_099));
        assert!(b.is_due(1_100));
        b.push(50, Metric::CpuLoad, Decimal::from_int(2), None);
        b.push(300, Metric::CpuTemp, Decimal::from_int(3), None);
        let (base, batch) = b.take().unwrap();
        assert_eq!(base, 50);
        let offsets: Vec<u32> = batch.samples.iter().map(|s| s.offset_ms).collect();
        assert_eq!(offsets, [0, 50]);
        assert_eq!(b.len(), 1);
        assert_eq!(b.deadline(), Some(1_300));
    }

    /// A box reads its health every minute and sends a minute's samples together: the reading
    /// of the next minute, taken as the window closes (a little early or late, its timer
    /// jittering), goes in the next message, in whichever order its timer and the batch's
    /// deadline fire.
    #[test]
    fn a_reading_taken_as_its_batch_closes_opens_the_next_batch() {
        let minute = |b: &mut Batcher, at: u64| {
            for (metric, v) in [
                (Metric::Uptime, 1),
                (Metric::CpuLoad, 2),
                (Metric::CpuTemp, 3),
            ] {
                b.push(at, metric, Decimal::from_int(v), None);
            }
        };
        for (pushed_first, early) in [(false, 0), (true, 0), (true, 3), (true, 7_000)] {
            let mut b = Batcher::new(64, 60_000);
            minute(&mut b, 1_000);
            let mut sent = Vec::new();
            for at in [61_000 - early, 121_000, 181_000] {
                // The batch's deadline and the next reading fall due at the same instant.
                if pushed_first {
                    minute(&mut b, at);
                }
                while b.is_due(at) {
                    let (base, batch) = b.take().unwrap();
                    sent.push((base, batch.samples.len()));
                }
                if !pushed_first {
                    minute(&mut b, at);
                }
            }
            assert_eq!(
                sent,
                [(1_000, 3), (61_000 - early, 3), (121_000, 3)],
                "reading pushed before the flush: {pushed_first}, {early} ms early"
            );
            assert_eq!(b.deadline(), Some(241_000));
        }
        // A window's samples out of order are still one batch; a later one waits.
        let mut b = Batcher::new(64, 60_000);
        b.push(30_000, Metric::Uptime, Decimal::from_int(1), None);
        b.push(61_000, Metric::Uptime, Decimal::from_int(2), None);
        b.push(1_000, Metric::CpuLoad, Decimal::from_int(3), None);
        let (base, batch) = b.take().unwrap();
        assert_eq!((base, batch.samples.len()), (1_000, 2));
        assert_eq!(b.take().map(|(base, _)| base), Some(61_000));
        // With no age allowed, samples of one instant still go together.
        let mut b = Batcher::new(64, 0);
        minute(&mut b, 5);
        b.push(6, Metric::Uptime, Decimal::from_int(1), None);
        assert_eq!(b.take().map(|(_, batch)| batch.samples.len()), Some(3));
        assert_eq!(b.take().map(|(base, _)| base), Some(6));
        assert!(b.take().is_none());
    }
}
