//! Reading a group's terminals as stored: their rows in `terminals` (runs, watermarks,
//! newest values, revision) and the drops and numbering starts ahead of their watermarks.

use ::postgres::Client;

use super::{Prepared, Rows, Runs, Take};

/// Reads the rows in `terminals` of the group's terminals (the runs and watermarks of their
/// streams, their newest values, the revision), and the drops and numbering starts ahead of
/// those watermarks. [`Take::Locked`] first creates the rows missing and locks them all in
/// terminal order, so that no other group writes them before this one commits.
pub(super) fn read_state(
    tx: &mut Client,
    prepared: &mut Prepared,
    rows: &mut Rows,
    take: Take,
) -> Result<(), ::postgres::Error> {
    for (topic, received, reason, payload) in &rows.rejected {
        let statement = prepared.get(
            tx,
            "INSERT INTO rejected (topic, received_ms, reason, payload) VALUES ($1, $2, $3, $4)",
        )?;
        tx.execute(&statement, &[topic, received, reason, payload])?;
    }
    if rows.terminals.is_empty() {
        return Ok(());
    }
    let names = rows.unknown();
    if names.is_empty() {
        return Ok(());
    }
    if take == Take::Locked {
        let unknown = rows.terminals.iter().filter(|(_, t)| !t.known);
        let sites: Vec<String> = unknown.clone().map(|(_, t)| t.site()).collect();
        let levels: Vec<&str> = unknown.map(|(_, t)| t.id.site().level().as_str()).collect();
        let statement = prepared.get(
            tx,
            "INSERT INTO terminals (terminal, site, level)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[])
             ON CONFLICT (terminal) DO NOTHING",
        )?;
        tx.execute(&statement, &[&names, &sites, &levels])?;
    }
    let lock = match take {
        Take::Read => "",
        Take::Locked => "ORDER BY terminal FOR UPDATE",
    };
    let statement = prepared.get(
        tx,
        &format!(
            "SELECT terminal, revision, telemetry_wm, telemetry_runs, events_wm, events_runs,
                metrics, ts_ms, vals
             FROM terminals WHERE terminal = ANY($1) {lock}"
        ),
    )?;
    let state = tx.query(&statement, &[&names])?;
    let touched: Vec<&str> = rows
        .terminals
        .iter()
        .filter(|(_, t)| t.touched && !t.known)
        .map(|(name, _)| &**name)
        .collect();
    let gaps = if touched.is_empty() {
        Vec::new()
    } else {
        let statement = prepared.get(
            tx,
            "SELECT d.terminal, d.stream, d.first, d.last FROM dropped d
         LEFT JOIN terminals t ON t.terminal = d.terminal
         WHERE d.terminal = ANY($1) AND d.last > CASE d.stream
            WHEN 0 THEN coalesce(t.telemetry_wm, 0) ELSE coalesce(t.events_wm, 0) END
         UNION ALL
         SELECT n.terminal, n.stream, n.first, NULL FROM numbering n
         LEFT JOIN terminals t ON t.terminal = n.terminal
         WHERE n.terminal = ANY($1) AND n.first - 1 > CASE n.stream
            WHEN 0 THEN coalesce(t.telemetry_wm, 0) ELSE coalesce(t.events_wm, 0) END",
        )?;
        tx.query(&statement, &[&touched])?
    };
    for r in &state {
        let Some(i) = rows.position(r.get(0)) else {
            continue;
        };
        let t = &mut rows.terminals[i].1;
        t.exists = true;
        t.revision = r.get(1);
        for (sid, col) in [(0, 2), (1, 4)] {
            t.streams[sid].watermark = r.get(col);
            t.streams[sid].runs = Runs::from_flat(&r.get::<_, Vec<i64>>(col + 1));
        }
        let metrics: Option<Vec<String>> = r.get(6);
        let ts: Option<Vec<i64>> = r.get(7);
        let vals: Option<Vec<f64>> = r.get(8);
        if let (Some(metrics), Some(ts), Some(vals)) = (metrics, ts, vals) {
            t.stored = metrics.into_iter().zip(ts.into_iter().zip(vals)).collect();
        }
    }
    for r in &gaps {
        let (Some(i), Ok(sid)) = (rows.position(r.get(0)), usize::try_from(r.get::<_, i16>(1)))
        else {
            continue;
        };
        if let Some(pair) = rows.terminals[i].1.streams.get_mut(sid) {
            let first: i64 = r.get(2);
            match r.get::<_, Option<i64>>(3) {
                Some(last) => pair.drops.push((first, last)),
                None => pair.numbering = Some(pair.numbering.map_or(first, |n| n.max(first))),
            }
        }
    }
    Ok(())
}
