//! Writing a [`Packet`] as a frame, refusing what the standard's syntax cannot carry.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use super::*;

/// Writes `p` as a frame: fields in the standard order `QN;ST;CN;PW;MN;Flag;[PNUM;PNO;]CP=&&…&&`
/// (absent ones left out), CP sub-items of one factor joined by `,` and items by `;`, the
/// length as 4 digits and the CRC as 4 uppercase hex digits. Writes whatever it is given, so
/// only for packets built by code from checked parts; see [`try_encode`] for the checked
/// version.
pub fn encode(p: &Packet) -> Vec<u8> {
    let mut w = Writer::new(false);
    w.packet(p);
    w.finish()
}

/// Like [`encode`], but refuses a packet that [`decode`] would not read back identically or
/// that the standard does not allow: a header value or CP key or plain value with `;`, `,`,
/// `=`, `&`, `#`, anything but printable ASCII, or spaces at either end, a plain value starting
/// with `//`, a text value (`//…//`) with `//`, `#` or a control character inside, an empty key,
/// inconsistent PNUM/PNO/Flag, or a data segment over 1024 bytes. Offsets in the error are
/// those of the frame that would have been written. Use it for anything from outside (a
/// technician's JSON, a configuration).
pub fn try_encode(p: &Packet) -> Result<Vec<u8>, Hj212Error> {
    let mut w = Writer::new(true);
    w.packet(p);
    if let Some(e) = w.error.take() {
        return Err(e);
    }
    if w.data.len() > MAX_DATA_LEN {
        return Err(Hj212Error::LengthTooLarge {
            declared: w.data.len(),
        });
    }
    Ok(w.finish())
}

/// Builds a data segment; when checking, remembers the first reason it would not decode back.
pub(super) struct Writer {
    data: String,
    check: bool,
    error: Option<Hj212Error>,
}

/// What the frame syntax reserves: the separators `;` and `,`, `=`, the CP marker `&`, and `#`,
/// which starts a frame (a receiver hunting for the next frame must not find one inside a
/// value).
pub(super) const RESERVED: [char; 5] = [';', ',', '=', '&', '#'];

/// A CP key that reads back as itself: not empty, printable ASCII (the standard's codes are),
/// nothing reserved, no spaces at its ends.
pub(super) fn key_ok(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| b == b' ' || b.is_ascii_graphic())
        && !s.contains(RESERVED)
        && !s.starts_with(' ')
        && !s.ends_with(' ')
}

/// A header value or plain CP value that reads back as itself: as a key (but may be empty),
/// and not starting with `//` (that would make it text).
pub(super) fn plain_ok(s: &str) -> bool {
    (s.is_empty() || key_ok(s)) && !s.starts_with("//")
}

/// A `//text//` value (the one place non-ASCII text, `;`, `,`, `=` and `&` may go) that reads
/// back as itself: no `//` inside, no `#`, no control characters (CR LF end a frame for
/// line-based tools).
pub(super) fn text_ok(s: &str) -> bool {
    s.len() >= 4
        && s.starts_with("//")
        && s[2..].find("//") == Some(s.len() - 4)
        && !s.contains('#')
        && !s.chars().any(char::is_control)
}

/// Joins CP pairs: `,` between sub-items of the same factor (`w01018-Rtd`, `w01018-Flag`),
/// `;` between items.
pub(super) fn same_item(a: &str, b: &str) -> bool {
    match (a.split_once('-'), b.split_once('-')) {
        (Some((fa, _)), Some((fb, _))) => fa == fb,
        _ => false,
    }
}

impl Writer {
    fn new(check: bool) -> Writer {
        Writer {
            data: String::with_capacity(128),
            check,
            error: None,
        }
    }

    /// Frame offset of the next byte written.
    fn at(&self) -> usize {
        6 + self.data.len()
    }

    fn fail(&mut self, e: Hj212Error) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    fn field(&mut self, name: &str, value: &str) {
        if self.check && !plain_ok(value) {
            let at = self.at();
            self.fail(Hj212Error::BadField {
                at,
                field: alloc::format!("{name}={value}"),
                reason: "';', ',', '=', '&', '#', a character other than printable ASCII, a leading or trailing space, or a leading // in the value",
            });
        }
        let _ = write!(self.data, "{name}={value};");
    }

    fn packet(&mut self, p: &Packet) {
        let text = [
            ("QN", &p.qn),
            ("ST", &p.st),
            ("CN", &p.cn),
            ("PW", &p.pw),
            ("MN", &p.mn),
        ];
        for (name, value) in text {
            if let Some(v) = value {
                self.field(name, v);
            }
        }
        if let Some(f) = p.flag {
            if self.check && f & flag::SPLIT != 0 && (p.pnum.is_none() || p.pno.is_none()) {
                let at = self.at();
                self.fail(bad_field(
                    at,
                    "Flag",
                    "Flag says split (bit D) but PNUM and PNO are missing",
                ));
            }
            let _ = write!(self.data, "Flag={f};");
        }
        if self.check {
            let at = self.at();
            match (p.pnum, p.pno) {
                (Some(_), None) => self.fail(bad_field(at, "PNUM", "PNUM without PNO")),
                (None, Some(_)) => self.fail(bad_field(at, "PNO", "PNO without PNUM")),
                (Some(num), Some(no)) if no == 0 || no > num => {
                    self.fail(bad_field(at, "PNO", "PNO is not between 1 and PNUM"));
                }
                _ => {}
            }
        }
        if let Some(n) = p.pnum {
            let _ = write!(self.data, "PNUM={n};");
        }
        if let Some(n) = p.pno {
            let _ = write!(self.data, "PNO={n};");
        }
        self.data.push_str("CP=&&");
        let mut prev: Option<&str> = None;
        for (key, value) in &p.cp {
            if let Some(prev) = prev {
                self.data.push(if same_item(prev, key) { ',' } else { ';' });
            }
            prev = Some(key.as_str());
            if self.check {
                let at = self.at();
                if !key_ok(key) {
                    self.fail(Hj212Error::BadCp {
                        at,
                        detail: "empty key, or ';', ',', '=', '&', '#', a character other than printable ASCII, or a leading or trailing space in a key",
                    });
                }
                let ok = if value.starts_with("//") {
                    text_ok(value)
                } else {
                    plain_ok(value)
                };
                if !ok {
                    self.fail(Hj212Error::BadCp {
                        at: at + key.len() + 1,
                        detail: "value with ';', ',', '=', '&', '#', a character other than printable ASCII or spaces at its ends (only a //text// may hold those but '#'), or a //text// with // or a control character inside",
                    });
                }
            }
            self.data.push_str(key);
            self.data.push('=');
            self.data.push_str(value);
        }
        self.data.push_str("&&");
    }

    fn finish(self) -> Vec<u8> {
        let mut out = String::with_capacity(self.data.len() + OVERHEAD);
        let _ = write!(
            out,
            "##{:04}{}{:04X}\r\n",
            self.data.len(),
            self.data,
            crc16(self.data.as_bytes())
        );
        out.into_bytes()
    }
}
