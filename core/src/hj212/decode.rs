//! Reading one frame into a [`Packet`], strictly where a frame is not a frame otherwise and
//! leniently where loggers in the field differ.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;

use super::*;

/// Checks one whole frame (`##LLLL…CCCC\r\n`) and parses it. Framing and CRC are strict, the
/// fields lenient as the module documentation says. Never panics.
pub fn decode(frame: &[u8]) -> Result<Packet, Hj212Error> {
    for (at, &b) in frame.iter().enumerate().take(2) {
        if b != b'#' {
            return Err(Hj212Error::BadHeader { at });
        }
    }
    for (at, &found) in frame.iter().enumerate().take(6).skip(2) {
        if !found.is_ascii_digit() {
            return Err(Hj212Error::BadLength { at, found });
        }
    }
    if frame.len() < OVERHEAD {
        return Err(Hj212Error::Truncated { len: frame.len() });
    }
    let declared = digits_value(&frame[2..6]);
    if declared > MAX_DATA_LEN {
        return Err(Hj212Error::LengthTooLarge { declared });
    }
    let actual = frame.len() - OVERHEAD;
    if actual != declared {
        return Err(Hj212Error::LengthMismatch { declared, actual });
    }
    let end = frame.len();
    if frame[end - 2] != b'\r' {
        return Err(Hj212Error::BadTrailer { at: end - 2 });
    }
    if frame[end - 1] != b'\n' {
        return Err(Hj212Error::BadTrailer { at: end - 1 });
    }
    let crc_at = 6 + declared;
    let mut found = 0u16;
    for (i, &b) in frame[crc_at..crc_at + 4].iter().enumerate() {
        let digit = (b as char).to_digit(16).ok_or(Hj212Error::BadCrcDigit {
            at: crc_at + i,
            found: b,
        })?;
        found = (found << 4) | digit as u16;
    }
    let data = &frame[6..crc_at];
    let expected = crc16(data);
    if found != expected {
        return Err(Hj212Error::BadCrc {
            at: crc_at,
            expected,
            found,
        });
    }
    let text = core::str::from_utf8(data).map_err(|e| Hj212Error::BadText {
        at: 6 + e.valid_up_to(),
    })?;
    parse_data(text, 6)
}

pub(super) fn bad_field(at: usize, field: &str, reason: &'static str) -> Hj212Error {
    Hj212Error::BadField {
        at,
        field: field.to_owned(),
        reason,
    }
}

/// A number of at most `max_digits` decimal digits, at most `max`.
pub(super) fn parse_number(s: &str, max_digits: usize, max: u32) -> Option<u32> {
    if s.is_empty() || s.len() > max_digits || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let v = s
        .bytes()
        .fold(0u32, |acc, b| acc * 10 + u32::from(b - b'0'));
    (v <= max).then_some(v)
}

/// Parses the data segment `text`, which starts at frame byte `base`.
pub(super) fn parse_data(text: &str, base: usize) -> Result<Packet, Hj212Error> {
    let cp_at = text.find("CP=&&").ok_or(Hj212Error::BadCp {
        at: base + text.len(),
        detail: "no CP=&& in the data segment",
    })?;
    if cp_at > 0 && !matches!(text.as_bytes()[cp_at - 1], b';' | b',') {
        return Err(bad_field(base + cp_at, "CP", "no ';' before CP"));
    }
    let mut p = Packet::default();
    // Offsets of Flag, PNUM and PNO, for the consistency errors below.
    let (mut flag_at, mut pnum_at, mut pno_at) = (0, 0, 0);
    let mut start = 0;
    for piece in text[..cp_at].split([';', ',']) {
        let lead = piece.len() - piece.trim_start_matches(' ').len();
        let at = base + start + lead;
        start += piece.len() + 1;
        let item = piece.trim_matches(' ');
        if item.is_empty() {
            continue;
        }
        let Some((name, value)) = item.split_once('=') else {
            return Err(bad_field(at, item, "no '=' in the field"));
        };
        let (name, value) = (name.trim_matches(' '), value.trim_matches(' '));
        if !plain_ok(value) {
            return Err(bad_field(
                at,
                item,
                "'=' or '&' in the value, or a value starting with //",
            ));
        }
        let text_field = match name {
            "QN" => Some(&mut p.qn),
            "ST" => Some(&mut p.st),
            "CN" => Some(&mut p.cn),
            "PW" => Some(&mut p.pw),
            "MN" => Some(&mut p.mn),
            _ => None,
        };
        if let Some(slot) = text_field {
            if slot.is_some() {
                return Err(bad_field(at, item, "repeated field"));
            }
            *slot = Some(value.to_owned());
            continue;
        }
        match name {
            "Flag" => {
                if p.flag.is_some() {
                    return Err(bad_field(at, item, "repeated field"));
                }
                let v = parse_number(value, 3, 255)
                    .ok_or_else(|| bad_field(at, item, "Flag is not a number 0-255"))?;
                p.flag = Some(v as u8);
                flag_at = at;
            }
            "PNUM" | "PNO" => {
                let (slot, slot_at) = if name == "PNUM" {
                    (&mut p.pnum, &mut pnum_at)
                } else {
                    (&mut p.pno, &mut pno_at)
                };
                if slot.is_some() {
                    return Err(bad_field(at, item, "repeated field"));
                }
                let v = parse_number(value, 5, 65535)
                    .ok_or_else(|| bad_field(at, item, "not a number 0-65535"))?;
                *slot = Some(v as u16);
                *slot_at = at;
            }
            _ => return Err(bad_field(at, item, "unknown header field")),
        }
    }
    match (p.pnum, p.pno) {
        (Some(_), None) => return Err(bad_field(pnum_at, "PNUM", "PNUM without PNO")),
        (None, Some(_)) => return Err(bad_field(pno_at, "PNO", "PNO without PNUM")),
        (Some(num), Some(no)) if no == 0 || no > num => {
            return Err(bad_field(pno_at, "PNO", "PNO is not between 1 and PNUM"));
        }
        (None, None) if p.flag.is_some_and(|f| f & flag::SPLIT != 0) => {
            return Err(bad_field(
                flag_at,
                "Flag",
                "Flag says split (bit D) but PNUM and PNO are missing",
            ));
        }
        _ => {}
    }
    let body_start = cp_at + 5;
    if !text.ends_with("&&") || text.len() - 2 < body_start {
        return Err(Hj212Error::BadCp {
            at: base + cp_at,
            detail: "CP does not end with && at the end of the data segment",
        });
    }
    p.cp = parse_cp(&text[body_start..text.len() - 2], base + body_start)?;
    Ok(p)
}

/// Parses the CP body (between `CP=&&` and the final `&&`), which starts at frame byte `base`.
pub(super) fn parse_cp(body: &str, base: usize) -> Result<Vec<(String, String)>, Hj212Error> {
    let b = body.as_bytes();
    let n = b.len();
    let bad = |i: usize, detail: &'static str| Hj212Error::BadCp {
        at: base + i,
        detail,
    };
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        while i < n && matches!(b[i], b' ' | b';' | b',') {
            i += 1;
        }
        if i == n {
            return Ok(out);
        }
        let key_start = i;
        while i < n && !matches!(b[i], b'=' | b';' | b',' | b'&') {
            i += 1;
        }
        match b.get(i) {
            Some(b'=') => {}
            Some(b'&') => return Err(bad(i, "'&' in a key")),
            _ => return Err(bad(key_start, "no '=' after the key")),
        }
        let key = body[key_start..i].trim_end_matches(' ');
        if key.is_empty() {
            return Err(bad(key_start, "empty key"));
        }
        i += 1;
        while i < n && b[i] == b' ' {
            i += 1;
        }
        let value_start = i;
        let value = if body[i..].starts_with("//") {
            let Some(close) = body[i + 2..].find("//") else {
                return Err(bad(value_start, "text value without its closing //"));
            };
            i += 2 + close + 2;
            let value = &body[value_start..i];
            while i < n && b[i] == b' ' {
                i += 1;
            }
            if i < n && !matches!(b[i], b';' | b',') {
                return Err(bad(i, "text value not followed by ';' or ','"));
            }
            value
        } else {
            while i < n && !matches!(b[i], b';' | b',') {
                if matches!(b[i], b'=' | b'&') {
                    return Err(bad(i, "'=' or '&' in a value"));
                }
                i += 1;
            }
            body[value_start..i].trim_end_matches(' ')
        };
        out.push((key.to_owned(), value.to_owned()));
    }
}
