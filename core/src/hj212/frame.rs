//! Framing: cutting a byte stream into frames, and the standard's CRC.

/// Largest data segment, in bytes.
pub const MAX_DATA_LEN: usize = 1024;

/// Bytes of a frame around its data segment: `##`, length, CRC, CR LF.
pub const OVERHEAD: usize = 12;

/// Largest frame, in bytes.
pub const MAX_FRAME_LEN: usize = MAX_DATA_LEN + OVERHEAD;

/// The result of looking for a frame at the start of a stream buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// The buffer holds (at most) the beginning of a frame: read more.
    NeedMore,
    /// The buffer starts with a frame of this total length, `##` and CR LF included. It is
    /// framed (header, length, trailer) but not checked: pass it to [`super::decode`].
    Frame(usize),
    /// The first `n` bytes (n ≥ 1) cannot start a frame: discard them and look again.
    Skip(usize),
}

/// Finds the next frame in `buf`, the bytes read so far from a stream transport.
///
/// A frame starts at `##`; its 4-digit length says where the trailer must be. Anything before
/// the first `##`, or a `##` whose length is not 4 digits, above 1024, or not followed by CR LF
/// where the length says, is skipped up to the next `##`. A final lone `#` is kept, since it
/// may begin the next header. Never panics; `Frame(n)` and `Skip(n)` have `n <= buf.len()`.
pub fn next_frame(buf: &[u8]) -> Framing {
    if !buf.starts_with(b"##") {
        return skip_to_header(buf, 0);
    }
    let len_field = buf.get(2..buf.len().min(6)).unwrap_or_default();
    if len_field.iter().any(|b| !b.is_ascii_digit()) {
        return skip_to_header(buf, 1);
    }
    if buf.len() < 6 {
        return Framing::NeedMore;
    }
    let declared = digits_value(len_field);
    if declared > MAX_DATA_LEN {
        return skip_to_header(buf, 1);
    }
    let total = declared + OVERHEAD;
    match buf.get(total - 2..total) {
        None => Framing::NeedMore,
        Some(b"\r\n") => Framing::Frame(total),
        Some(_) => skip_to_header(buf, 1),
    }
}

/// `Skip` to the first `##` at or after `from` (which is never at 0), keeping a final `#`.
pub(super) fn skip_to_header(buf: &[u8], from: usize) -> Framing {
    let found = buf
        .get(from..)
        .and_then(|rest| rest.windows(2).position(|w| w == b"##"))
        .map(|p| p + from);
    match found {
        Some(p) if p > 0 => Framing::Skip(p),
        _ => {
            let keep = usize::from(buf.last() == Some(&b'#'));
            match buf.len() - keep {
                0 => Framing::NeedMore,
                n => Framing::Skip(n),
            }
        }
    }
}

/// The value of ASCII decimal digits (the caller checked them).
pub(super) fn digits_value(d: &[u8]) -> usize {
    d.iter()
        .fold(0usize, |acc, &b| acc * 10 + usize::from(b - b'0'))
}

pub(super) const CRC_TABLE: [u16; 256] = {
    let mut t = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut reg = i as u16;
        let mut bit = 0;
        while bit < 8 {
            reg = if reg & 1 == 1 {
                (reg >> 1) ^ 0xA001
            } else {
                reg >> 1
            };
            bit += 1;
        }
        t[i] = reg;
        i += 1;
    }
    t
};

/// The CRC of HJ 212 Appendix A over `data` (the data segment only): initial `0xFFFF`, each
/// step `reg = T[(reg >> 8) ^ byte]` with the reflected 0x8005 table, no final XOR.
/// `crc16(b"123456789") == 0x2F80`; the empty segment gives `0xFFFF`.
pub fn crc16(data: &[u8]) -> u16 {
    data.iter().fold(0xFFFF, |reg, &b| {
        CRC_TABLE[usize::from((reg >> 8) as u8 ^ b)]
    })
}
