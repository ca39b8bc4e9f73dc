//! What a group adds besides its terminals' rows: the new messages, binary-COPied into
//! `messages`, and the drops and numbering starts, upserted.

use ::postgres::Transaction;
use ::postgres::binary_copy::BinaryCopyInWriter;
use ::postgres::types::Type;

use super::{Prepared, Rows};
use crate::store::stream_id;

/// Writes the drops and numbering starts the group brought, each table by one statement in
/// key order.
pub(super) fn write_gaps(
    tx: &mut Transaction<'_>,
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

/// The types of a row of `messages` as it is COPied: terminal, stream, seq, time, reception,
/// payload.
pub const MESSAGE_TYPES: [Type; 6] = [
    Type::TEXT,
    Type::INT2,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::BYTEA,
];

/// The group's new messages, binary-COPied into `messages` as they are found (each lands in
/// its day's partition): the server stores one while the group decides on the next.
pub(super) struct MessageCopy<'a>(Option<BinaryCopyInWriter<'a>>);

impl<'a> MessageCopy<'a> {
    /// Starts the COPY if the group holds any message (`messages`), else copies nothing.
    pub(super) fn open(
        tx: &'a mut Transaction<'_>,
        messages: bool,
    ) -> Result<MessageCopy<'a>, ::postgres::Error> {
        if !messages {
            return Ok(MessageCopy(None));
        }
        let sink = tx.copy_in(
            "COPY messages (terminal, stream, seq, time_ms, received_ms, payload) FROM STDIN BINARY",
        )?;
        Ok(MessageCopy(Some(BinaryCopyInWriter::new(
            sink,
            &MESSAGE_TYPES,
        ))))
    }

    /// Copies `terminal`'s new message `m`.
    pub(super) fn write(
        &mut self,
        terminal: &str,
        m: &crate::store::Message<'_>,
    ) -> Result<(), ::postgres::Error> {
        let Some(w) = &mut self.0 else {
            return Ok(());
        };
        w.write(&[
            &terminal,
            &(stream_id(m.stream) as i16),
            &(m.seq as i64),
            &(m.time_ms as i64),
            &(m.received_ms as i64),
            &m.raw,
        ])
    }

    /// Ends the COPY once the server has stored every row.
    pub(super) fn finish(self) -> Result<(), ::postgres::Error> {
        if let Some(w) = self.0 {
            w.finish()?;
        }
        Ok(())
    }
}
