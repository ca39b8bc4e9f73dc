//! What a group adds besides its terminals' rows: the new messages, binary-COPied into
//! `messages`, and the drops and numbering starts, upserted.

use std::io::Write;

use ::postgres::{Client, CopyInWriter, GenericClient, Statement};

use super::{Prepared, Rows};

/// Writes the drops and numbering starts the group brought, each table by one statement in
/// key order.
pub(super) fn write_gaps(
    tx: &mut Client,
    prepared: &mut Prepared,
    rows: &Rows,
) -> Result<(), ::postgres::Error> {
    if !rows.dropped.is_empty() {
        let (mut t, mut s, mut f, mut l) = (vec![], vec![], vec![], vec![]);
        for ((terminal, stream, first), last) in &rows.dropped {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
            l.push(*last);
        }
        let statement = prepared.get(
            tx,
            "INSERT INTO dropped (terminal, stream, first, last)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[], $4::bigint[])
             ON CONFLICT (terminal, stream, first)
             DO UPDATE SET last = greatest(dropped.last, excluded.last)",
        )?;
        tx.execute(&statement, &[&t, &s, &f, &l])?;
    }
    if !rows.numbering.is_empty() {
        let (mut t, mut s, mut f) = (vec![], vec![], vec![]);
        for ((terminal, stream), first) in &rows.numbering {
            t.push(terminal.as_str());
            s.push(*stream);
            f.push(*first);
        }
        let statement = prepared.get(
            tx,
            "INSERT INTO numbering (terminal, stream, first)
             SELECT * FROM unnest($1::text[], $2::smallint[], $3::bigint[])
             ON CONFLICT (terminal, stream)
             DO UPDATE SET first = greatest(numbering.first, excluded.first)",
        )?;
        tx.execute(&statement, &[&t, &s, &f])?;
    }
    Ok(())
}

/// Rows of `messages` (or a table shaped like it) in PostgreSQL's binary COPY format: each row
/// encoded here and handed to the driver's COPY writer, which sends them in pieces of about
/// 4 KiB (its typed writer waits on the connection for every row instead). Without a COPY
/// ([`MessageCopy::none`]) nothing is written.
pub struct MessageCopy<'a> {
    writer: Option<CopyInWriter<'a>>,
    row: Vec<u8>,
}

impl std::fmt::Debug for MessageCopy<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageCopy")
            .field("copying", &self.writer.is_some())
            .finish()
    }
}

/// The group's new messages, binary-COPied into `messages` as they are found (each lands in
/// its day's partition), if it holds any (`messages`).
pub(super) fn copy_messages<'a>(
    tx: &'a mut Client,
    prepared: &mut Prepared,
    messages: bool,
) -> Result<MessageCopy<'a>, ::postgres::Error> {
    if !messages {
        return Ok(MessageCopy::none());
    }
    let statement = prepared.get(tx, &MessageCopy::statement("messages"))?;
    MessageCopy::open(tx, &statement)
}

/// The binary COPY format's signature, flags and header extension length.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

impl<'a> MessageCopy<'a> {
    /// The statement of a binary COPY into `table` (terminal, stream, seq, time_ms,
    /// received_ms, payload): prepared once a connection, each COPY is then one round trip.
    pub fn statement(table: &str) -> String {
        format!(
            "COPY {table} (terminal, stream, seq, time_ms, received_ms, payload) FROM STDIN BINARY"
        )
    }

    /// Starts a COPY by `statement` (prepared from [`MessageCopy::statement`]).
    pub fn open(
        client: &'a mut impl GenericClient,
        statement: &Statement,
    ) -> Result<MessageCopy<'a>, ::postgres::Error> {
        let writer = client.copy_in(statement)?;
        let mut row = Vec::with_capacity(256);
        row.extend_from_slice(HEADER);
        Ok(MessageCopy {
            writer: Some(writer),
            row,
        })
    }

    /// Copies nothing.
    pub fn none() -> MessageCopy<'a> {
        MessageCopy {
            writer: None,
            row: Vec::new(),
        }
    }

    /// Copies one row.
    pub fn write(
        &mut self,
        terminal: &str,
        stream: i16,
        seq: i64,
        time_ms: i64,
        received_ms: i64,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let Some(w) = &mut self.writer else {
            return Ok(());
        };
        let row = &mut self.row;
        row.extend_from_slice(&6i16.to_be_bytes());
        put(row, terminal.as_bytes())?;
        put(row, &stream.to_be_bytes())?;
        for n in [seq, time_ms, received_ms] {
            put(row, &n.to_be_bytes())?;
        }
        put(row, payload)?;
        w.write_all(row)?;
        row.clear();
        Ok(())
    }

    /// Ends the COPY once the server has stored every row; how many it stored.
    pub fn finish(mut self) -> std::io::Result<u64> {
        let Some(mut w) = self.writer.take() else {
            return Ok(0);
        };
        self.row.extend_from_slice(&(-1i16).to_be_bytes());
        w.write_all(&self.row)?;
        w.finish().map_err(std::io::Error::other)
    }
}

/// Appends a field: its length, then its bytes (integers big-endian).
fn put(row: &mut Vec<u8>, value: &[u8]) -> std::io::Result<()> {
    let len = i32::try_from(value.len())
        .map_err(|_| std::io::Error::other(format!("a field of {} bytes", value.len())))?;
    row.extend_from_slice(&len.to_be_bytes());
    row.extend_from_slice(value);
    Ok(())
}
