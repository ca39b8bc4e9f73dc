//! The day partitions of `messages`: created when a group first has a record of a day,
//! dropped whole by retention, and the new ranges of their BRIN index summarised when the
//! store folds (on a second connection, while the first folds).

use std::collections::BTreeMap;

use ::postgres::error::SqlState;
use ::postgres::{Client, NoTls};

use super::{DDL_LOCK, PgStore, describe};
use crate::store::StoreError;

const DAY_MS: i64 = 86_400_000;
/// Days with a partition of their own: 1970-01-01 up to 9999-12-31; any other time (a clock
/// off by centuries, a wrapped value) goes to the DEFAULT partition.
const LAST_DAY: i64 = 2_932_896;

/// Summarises the new ranges of the BRIN indexes of partitions `parts` of `messages` (and of
/// its DEFAULT partition) in the database `at`, outside any group's transaction.
fn summarise(client: &mut Client, mut parts: Vec<String>, at: &str) -> Result<(), StoreError> {
    parts.push("messages_default".to_owned());
    client
        .query(
            "SELECT brin_summarize_new_values(x.indexrelid::regclass)
             FROM pg_index x JOIN pg_inherits i ON i.inhrelid = x.indexrelid
             WHERE i.inhparent = 'messages_brin'::regclass
               AND x.indrelid IN (SELECT to_regclass(n)::oid FROM unnest($1::text[]) n)",
            &[&parts],
        )
        .map(drop)
        .map_err(|source| StoreError::Postgres {
            at: at.to_owned(),
            source,
        })
}

/// The name and time range of the day partition holding `time_ms`, if a day partition does.
fn day_partition(time_ms: i64) -> Option<(String, i64, i64)> {
    let day = time_ms.div_euclid(DAY_MS);
    if !(0..=LAST_DAY).contains(&day) {
        return None;
    }
    let (y, m, d) = civil_from_days(day);
    Some((
        format!("messages_p{y:04}{m:02}{d:02}"),
        day * DAY_MS,
        (day + 1) * DAY_MS,
    ))
}

/// The day range of a partition named by [`day_partition`].
fn partition_range(name: &str) -> Option<(i64, i64)> {
    let digits = name.strip_prefix("messages_p")?;
    if digits.len() != 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let y: i64 = digits[..4].parse().ok()?;
    let m: u32 = digits[4..6].parse().ok()?;
    let d: u32 = digits[6..].parse().ok()?;
    let day = days_from_civil(y, m, d);
    Some((day * DAY_MS, (day + 1) * DAY_MS))
}

/// (year, month, day) of a day counted from 1970-01-01 (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The inverse of [`civil_from_days`].
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

impl PgStore {
    /// Creates the day partitions of `time_ms` values that have none yet.
    pub(super) fn ensure_partitions(
        &mut self,
        times: impl Iterator<Item = i64>,
    ) -> Result<(), StoreError> {
        let mut wanted: BTreeMap<String, (i64, i64)> = BTreeMap::new();
        let mut last_day = None;
        for t in times {
            let day = t.div_euclid(DAY_MS);
            if last_day == Some(day) {
                continue;
            }
            last_day = Some(day);
            let Some((name, lo, hi)) = day_partition(t) else {
                continue;
            };
            if !self.written.contains(&name) {
                self.written.insert(name.clone());
            }
            if !self.days.contains(&name) {
                wanted.entry(name).or_insert((lo, hi));
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        let err = self.err("creating day partitions of messages");
        let client = self.client.get_mut();
        let names: Vec<&str> = wanted.keys().map(String::as_str).collect();
        let missing: Vec<String> = client
            .query(
                "SELECT n FROM unnest($1::text[]) n WHERE to_regclass(n) IS NULL",
                &[&names],
            )
            .map_err(&err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        if missing.is_empty() {
            self.days.extend(wanted.into_keys());
            return Ok(());
        }
        let mut tx = client.transaction().map_err(&err)?;
        tx.query("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .map_err(&err)?;
        for name in &missing {
            let (lo, hi) = wanted[name];
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {name} PARTITION OF messages FOR VALUES FROM ({lo}) TO ({hi})"
            );
            let mut sp = tx.transaction().map_err(&err)?;
            match sp.batch_execute(&create) {
                Ok(()) => sp.commit().map_err(&err)?,
                // Rows of that day already in the DEFAULT partition (the day was dropped by
                // retention while a late record arrived): they and the day stay there.
                Err(e) if e.code() == Some(&SqlState::CHECK_VIOLATION) => {
                    sp.rollback().map_err(&err)?
                }
                Err(e) => return Err(err(e)),
            }
        }
        tx.commit().map_err(&err)?;
        self.days.extend(wanted.into_keys());
        Ok(())
    }

    /// Drops the day partitions of `messages` entirely before `cut_ms` (and their keys);
    /// returns how many. A day reaching past the cut is kept whole.
    pub fn drop_before(&mut self, cut_ms: u64) -> Result<u64, StoreError> {
        let cut = i64::try_from(cut_ms).unwrap_or(i64::MAX);
        let err = self.err("dropping old partitions of messages");
        let client = self.client.get_mut();
        let mut tx = client.transaction().map_err(&err)?;
        tx.query("SELECT pg_advisory_xact_lock($1)", &[&DDL_LOCK])
            .map_err(&err)?;
        let parts: Vec<String> = tx
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'messages'::regclass ORDER BY 1",
                &[],
            )
            .map_err(&err)?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut dropped = 0;
        for name in parts {
            let Some((_, hi)) = partition_range(&name) else {
                continue;
            };
            if hi > cut {
                continue;
            }
            tx.batch_execute(&format!("DROP TABLE {name}"))
                .map_err(&err)?;
            self.days.remove(&name);
            dropped += 1;
        }
        tx.commit().map_err(&err)?;
        Ok(dropped)
    }

    /// What the store defers, done: folds the journal (if `fold`), and meanwhile, on a
    /// connection of its own (two backends at work), summarises the ranges of pages of the
    /// partitions written since the last time (and the DEFAULT one) that their BRIN index has
    /// no summary of yet (a range without one is read by every query); on this connection
    /// after the fold when no second one can be had. A failure to summarise only leaves those
    /// ranges to be read whole; the fold's is returned.
    pub(super) fn fold_and_summarise(&mut self, fold: bool) -> Result<(), StoreError> {
        let parts: Vec<String> = self.written.drain().collect();
        let fold = |store: &PgStore| if fold { store.fold() } else { Ok(()) };
        if parts.is_empty() {
            return fold(self);
        }
        if self.summariser.is_none() {
            match Client::connect(&self.url, NoTls) {
                Ok(client) => self.summariser = Some(client),
                Err(e) => {
                    tracing::warn!(at = %self.at, error = %describe(&e), "cannot open a second connection to summarise the index of messages; this one does")
                }
            }
        }
        let at = self.at.clone();
        let (folded, summarised) = match self.summariser.take() {
            Some(mut client) => {
                let this = &*self;
                let done = std::thread::scope(|s| {
                    let summary = s.spawn(|| summarise(&mut client, parts, &at));
                    let folded = fold(this);
                    let summarised = summary.join().unwrap_or(Err(StoreError::Crashed));
                    (folded, summarised)
                });
                // A connection that failed is opened again next time.
                if done.1.is_ok() {
                    self.summariser = Some(client);
                }
                done
            }
            None => {
                let folded = fold(self);
                (folded, summarise(self.client.get_mut(), parts, &at))
            }
        };
        if let Err(e) = summarised {
            tracing::warn!(error = %e, "cannot summarise the index of messages");
        }
        folded
    }

    /// The day partitions of `messages`, oldest first (for tests and operators).
    pub fn partitions(&self) -> Result<Vec<String>, StoreError> {
        Ok(self
            .client
            .borrow_mut()
            .query(
                "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                 WHERE i.inhparent = 'messages'::regclass AND c.relname <> 'messages_default'
                 ORDER BY 1",
                &[],
            )
            .map_err(self.err("listing partitions of messages"))?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_partitions_are_named_by_their_utc_date_and_cover_exactly_that_day() {
        // 2025-11-22T08:00:00Z.
        let (name, lo, hi) = day_partition(1_763_798_400_000).unwrap();
        assert_eq!(name, "messages_p20251122");
        assert_eq!((lo, hi), (1_763_769_600_000, 1_763_856_000_000));
        assert_eq!(partition_range(&name), Some((lo, hi)));
        assert_eq!(day_partition(0).unwrap().0, "messages_p19700101");
        assert_eq!(day_partition(lo).unwrap().0, name);
        assert_eq!(day_partition(lo - 1).unwrap().0, "messages_p20251121");
        let (last, _, _) = day_partition(LAST_DAY * DAY_MS).unwrap();
        assert_eq!(last, "messages_p99991231");
        assert!(day_partition((LAST_DAY + 1) * DAY_MS).is_none());
        assert!(day_partition(-1).is_none());
        for day in [0, 59, 60, 365, 10_956, 11_016, 20_414, LAST_DAY] {
            let (name, lo, _) = day_partition(day * DAY_MS).unwrap();
            assert_eq!(partition_range(&name).map(|r| r.0), Some(lo), "{name}");
        }
        assert_eq!(partition_range("messages_default"), None);
    }
}
