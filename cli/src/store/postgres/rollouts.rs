//! The PostgreSQL side of releases and rollouts (the rows are in [`crate::store`]'s
//! `rollouts` module, with the SQLite side).

use std::collections::BTreeMap;

use cuntong_core::rollout::Site;
use cuntong_core::terminal_id::TerminalId;
use cuntong_core::update::Stage;

use super::PgStore;
use super::state::check_fence;
use crate::store::rollouts::{check_same, count_row, encode_plan, ms, rollout_row, site_row};
use crate::store::{Fence, ReleaseRow, RolloutRow, RolloutSiteRow, StoreError};

/// The size of the pieces an artifact is read in.
const PIECE: i64 = 1 << 20;

impl PgStore {
    pub fn add_release(&mut self, r: &ReleaseRow, artifact: &[u8]) -> Result<bool, StoreError> {
        let err = self.err(&format!("recording release {}", r.version));
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        let stored = tx
            .query_opt(
                "SELECT sha256 FROM releases WHERE version = $1 FOR UPDATE",
                &[&r.version],
            )
            .map_err(&err)?
            .map(|row| row.get::<_, String>(0));
        if !check_same(&r.version, stored, &r.sha256)? {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO releases (version, sha256, size, signed, artifact, added_ms)
             VALUES ($1, $2, $3, $4, $5, $6)",
            &[
                &r.version,
                &r.sha256,
                &ms(r.size),
                &r.signed,
                &artifact,
                &ms(r.added_ms),
            ],
        )
        .map_err(&err)?;
        tx.commit().map_err(&err)?;
        Ok(true)
    }

    pub fn releases(&self) -> Result<Vec<ReleaseRow>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT version, sha256, size, signed, added_ms FROM releases ORDER BY added_ms",
                &[],
            )
            .map_err(self.err("reading the releases"))?;
        Ok(rows
            .iter()
            .map(|r| ReleaseRow {
                version: r.get(0),
                sha256: r.get(1),
                size: r.get::<_, i64>(2).max(0) as u64,
                signed: r.get(3),
                added_ms: r.get::<_, i64>(4).max(0) as u64,
            })
            .collect())
    }

    pub fn release_artifact(
        &self,
        sha256: &str,
        out: &mut dyn std::io::Write,
    ) -> Result<bool, StoreError> {
        let err = self.err(&format!("reading release {sha256}"));
        let mut client = self.client.borrow_mut();
        let Some(size) = client
            .query_opt(
                "SELECT length(artifact)::bigint FROM releases WHERE sha256 = $1 LIMIT 1",
                &[&sha256],
            )
            .map_err(&err)?
            .map(|r| r.get::<_, i64>(0))
        else {
            return Ok(false);
        };
        // Stored uncompressed: each piece is read without the whole.
        let mut at = 0i64;
        while at < size {
            let row = client
                .query_one(
                    "SELECT substring(artifact FROM $2::integer FOR $3::integer)
                     FROM releases WHERE sha256 = $1 LIMIT 1",
                    &[&sha256, &((at + 1) as i32), &(PIECE as i32)],
                )
                .map_err(&err)?;
            let piece: &[u8] = row.get(0);
            if piece.is_empty() {
                break;
            }
            out.write_all(piece).map_err(|source| StoreError::Io {
                path: format!("release {sha256}"),
                source,
            })?;
            at += piece.len() as i64;
        }
        Ok(true)
    }

    pub fn save_rollouts(
        &mut self,
        rollouts: &[RolloutRow],
        sites: &[RolloutSiteRow],
        fence: Option<&Fence>,
    ) -> Result<(), StoreError> {
        let err = self.err("storing rollouts");
        let mut tx = self.client.get_mut().transaction().map_err(&err)?;
        check_fence(&mut tx, fence).map_err(|e| e.or_else(&err))?;
        for r in rollouts {
            tx.execute(
                "INSERT INTO rollouts (id, version, state, plan, reason, command, updated_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET state = excluded.state,
                     reason = excluded.reason, updated_ms = excluded.updated_ms",
                &[
                    &ms(r.plan.id),
                    &r.plan.version,
                    &r.state.as_str(),
                    &encode_plan(&r.plan)?,
                    &r.reason,
                    &r.command,
                    &ms(r.updated_ms),
                ],
            )
            .map_err(&err)?;
        }
        if !sites.is_empty() {
            let stmt = tx
                .prepare(
                    "INSERT INTO rollout_sites
                         (rollout, terminal, stage, bytes, reason, notified_ms, updated_ms)
                     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                                          $5::text[], $6::bigint[], $7::bigint[])
                     ON CONFLICT (rollout, terminal) DO UPDATE SET stage = excluded.stage,
                         bytes = excluded.bytes, reason = excluded.reason,
                         notified_ms = excluded.notified_ms, updated_ms = excluded.updated_ms",
                )
                .map_err(&err)?;
            let ids: Vec<i64> = sites.iter().map(|s| ms(s.0)).collect();
            let terminals: Vec<String> = sites.iter().map(|s| s.1.to_string()).collect();
            let stages: Vec<&str> = sites.iter().map(|s| s.2.stage.as_str()).collect();
            let bytes: Vec<i64> = sites.iter().map(|s| ms(s.2.bytes)).collect();
            let reasons: Vec<&str> = sites.iter().map(|s| s.2.reason.as_str()).collect();
            let notified: Vec<Option<i64>> =
                sites.iter().map(|s| s.2.notified_ms.map(ms)).collect();
            let updated: Vec<i64> = sites.iter().map(|s| ms(s.2.updated_ms)).collect();
            tx.execute(
                &stmt,
                &[
                    &ids, &terminals, &stages, &bytes, &reasons, &notified, &updated,
                ],
            )
            .map_err(&err)?;
        }
        tx.commit().map_err(&err)
    }

    pub fn rollouts(&self) -> Result<Vec<RolloutRow>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT plan, state, reason, command, updated_ms FROM rollouts ORDER BY id",
                &[],
            )
            .map_err(self.err("reading the rollouts"))?;
        rows.iter()
            .map(|r| rollout_row(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
            .collect()
    }

    pub fn rollout_counts(&self) -> Result<Vec<(u64, Stage, usize)>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT rollout, stage, count(*) FROM rollout_sites GROUP BY rollout, stage",
                &[],
            )
            .map_err(self.err("counting the rollouts' boxes"))?;
        rows.iter()
            .map(|r| count_row(r.get(0), r.get(1), r.get(2)))
            .collect()
    }

    pub fn rollout_sites(&self, id: u64) -> Result<BTreeMap<TerminalId, Site>, StoreError> {
        let rows = self
            .client
            .borrow_mut()
            .query(
                "SELECT terminal, stage, bytes, reason, notified_ms, updated_ms
                 FROM rollout_sites WHERE rollout = $1",
                &[&ms(id)],
            )
            .map_err(self.err(&format!("reading rollout {id}")))?;
        let mut out = BTreeMap::new();
        for r in &rows {
            if let Some((t, site)) =
                site_row(r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))?
            {
                out.insert(t, site);
            }
        }
        Ok(out)
    }
}
