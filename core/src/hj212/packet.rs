//! What the bridge reads from a packet (data time, readings, version) and the answers the
//! standard requires, with China Standard Time as the standard writes it.

use alloc::borrow::ToOwned;
use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;
use core::str::FromStr;

use crate::decimal::Decimal;
use crate::telemetry::Quality;

use super::*;

impl Packet {
    /// The version Flag declares; 2005 when there is no Flag (2005 devices omit it).
    pub fn version(&self) -> Version {
        Version::from_bits(self.flag.unwrap_or(0) >> 2)
    }

    /// Flag bit A: the sender wants an answer.
    pub fn needs_ack(&self) -> bool {
        self.flag.is_some_and(|f| f & flag::ACK != 0)
    }

    /// Flag bit D: this is one part of a split packet (PNUM, PNO).
    pub fn is_split(&self) -> bool {
        self.flag.is_some_and(|f| f & flag::SPLIT != 0)
    }

    /// The first CP value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.cp
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// CP `DataTime` (`YYYYMMDDhhmmss`, China Standard Time, UTC+8) as milliseconds since the
    /// Unix epoch (UTC); `None` without a DataTime. For minute, hourly and daily data it is the
    /// start of the period; for real-time data the sampling instant.
    pub fn data_time(&self) -> Option<Result<u64, Hj212Error>> {
        self.get("DataTime").map(parse_cst)
    }

    /// The measured values: one per CP key `<factor>-<suffix>` with a suffix of
    /// [`VALUE_SUFFIXES`], in CP order, with the factor's data flag as quality.
    ///
    /// The flag is the nearest `<factor>-Flag` after the value, else the nearest before it;
    /// when the factor has none, a bare `Flag` key (some devices write one) is used the same
    /// way. 2005 flags (`P`, `0`–`3`) become [`Quality::Other`]. Values are parsed exactly;
    /// a value that is not a plain decimal ([`Hj212Error::BadValue`]) or a flag that is not
    /// one character ([`Hj212Error::BadFlag`]) fails the whole packet, naming the key.
    pub fn readings(&self) -> Result<Vec<Reading>, Hj212Error> {
        let mut out = Vec::new();
        for (i, (key, value)) in self.cp.iter().enumerate() {
            let Some((factor, suffix)) = key.split_once('-') else {
                continue;
            };
            if factor.is_empty() || !VALUE_SUFFIXES.contains(&suffix) {
                continue;
            }
            let parsed = Decimal::from_str(value).map_err(|_| Hj212Error::BadValue {
                key: key.clone(),
                value: value.clone(),
            })?;
            let own = |k: &str| {
                k.strip_prefix(factor)
                    .and_then(|r| r.strip_prefix('-'))
                    .is_some_and(|s| s == "Flag")
            };
            let flag = match self
                .nearest(i, own)
                .or_else(|| self.nearest(i, |k| k == "Flag"))
            {
                None => None,
                Some((k, v)) => match v.as_bytes() {
                    [c] if c.is_ascii_graphic() => Some(Quality::from_flag(*c)),
                    _ => {
                        return Err(Hj212Error::BadFlag {
                            key: k.clone(),
                            value: v.clone(),
                        });
                    }
                },
            };
            out.push(Reading {
                factor: factor.to_owned(),
                suffix: suffix.to_owned(),
                value: parsed,
                flag,
            });
        }
        Ok(out)
    }

    /// The nearest CP pair after index `i` whose key matches, else the nearest before it.
    fn nearest(&self, i: usize, want: impl Fn(&str) -> bool) -> Option<&(String, String)> {
        self.cp[i + 1..]
            .iter()
            .find(|(k, _)| want(k))
            .or_else(|| self.cp[..i].iter().rev().find(|(k, _)| want(k)))
    }

    /// An answer to this packet with command `cn` and CP `cp`, by the standard's rules: ST=91,
    /// the same PW and MN, Flag with the request's version bits and neither A nor D (Flag=4 for
    /// 2017, 8 for 2025), and the request's QN. A 2005 request (no Flag, or version bits 0) is
    /// answered the 2005 way: its QN, if it has one, is the first CP pair instead of a header
    /// field, and Flag is written only if the request had one (as 0).
    fn answer(&self, cn: &str, cp: Vec<(String, String)>) -> Packet {
        let v2005 = self.version() == Version::V2005;
        let mut all = Vec::with_capacity(cp.len() + 1);
        if v2005 && let Some(qn) = &self.qn {
            all.push(("QN".to_owned(), qn.clone()));
        }
        all.extend(cp);
        Packet {
            qn: if v2005 { None } else { self.qn.clone() },
            st: Some(st::INTERACTION.to_owned()),
            cn: Some(cn.to_owned()),
            pw: self.pw.clone(),
            mn: self.mn.clone(),
            flag: self.flag.map(|f| f & !(flag::ACK | flag::SPLIT)),
            pnum: None,
            pno: None,
            cp: all,
        }
    }

    /// The data acknowledgement (9014, 数据应答) the standard requires when an upload's Flag
    /// asks for an answer: `QN=<same>;ST=91;CN=9014;PW=<same>;MN=<same>;Flag=4;CP=&&&&` for
    /// 2017 (see [`Packet::request_answer`] for the version rules). Each part of a split packet
    /// is answered on its own, with its own QN.
    pub fn data_ack(&self) -> Packet {
        self.answer(cn::DATA_ACK, Vec::new())
    }

    /// The request answer (9011, 请求应答) a field unit sends for a host request:
    /// `QN=<same>;ST=91;CN=9011;PW=<same>;MN=<same>;Flag=4;CP=&&QnRtn=1&&` for 2017. Answers
    /// are built the same way for every version: ST=91, the same PW and MN, Flag with the
    /// request's version bits and neither A nor D (4 for 2017, 8 for 2025), the request's QN.
    /// A 2005 request (no Flag, or version bits 0) gets its QN as the first CP pair
    /// (`CP=&&QN=…;QnRtn=1&&`) and a Flag only if it had one (then 0).
    pub fn request_answer(&self, rtn: QnRtn) -> Packet {
        self.answer(
            cn::REQUEST_ANSWER,
            alloc::vec![("QnRtn".to_owned(), alloc::format!("{}", rtn.code()))],
        )
    }

    /// The execution result (9012, 执行结果): `…;CN=9012;…;CP=&&ExeRtn=1&&`, built like
    /// [`Packet::request_answer`].
    pub fn execution_result(&self, rtn: ExeRtn) -> Packet {
        self.answer(
            cn::EXECUTION_RESULT,
            alloc::vec![("ExeRtn".to_owned(), alloc::format!("{}", rtn.code()))],
        )
    }

    /// The notification answer (9013, 通知应答), with an empty CP, built like
    /// [`Packet::request_answer`].
    pub fn notification_answer(&self) -> Packet {
        self.answer(cn::NOTIFICATION_ANSWER, Vec::new())
    }
}

/// China Standard Time is UTC+8 all year.
pub(super) const CST_OFFSET_S: i64 = 8 * 3600;

pub(super) fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

pub(super) fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to the civil date `y-m-d` (proleptic Gregorian), counting in 400-year
/// eras of 146097 days with years starting in March, so the leap day is the last day of a year.
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (m + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + d - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The civil date of `days` after 1970-01-01: the inverse of [`days_from_civil`].
pub(super) fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let d = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let m = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let y = year_of_era + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Parses `YYYYMMDDhhmmss` in China Standard Time (UTC+8) into milliseconds since the Unix
/// epoch (UTC). Refuses anything but 14 digits, impossible dates and times (no leap seconds),
/// and times before the epoch.
pub fn parse_cst(s: &str) -> Result<u64, Hj212Error> {
    let bad = || Hj212Error::BadDataTime {
        value: s.to_owned(),
    };
    let b = s.as_bytes();
    if b.len() != 14 || !b.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let num = |r: core::ops::Range<usize>| {
        b[r].iter()
            .fold(0i64, |acc, &c| acc * 10 + i64::from(c - b'0'))
    };
    let (y, mo, d) = (num(0..4), num(4..6), num(6..8));
    let (h, mi, sec) = (num(8..10), num(10..12), num(12..14));
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 59
    {
        return Err(bad());
    }
    let secs = days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - CST_OFFSET_S;
    u64::try_from(secs).map(|t| t * 1000).map_err(|_| bad())
}

/// Formats milliseconds since the Unix epoch as China Standard Time: `YYYYMMDDhhmmss`, or the
/// QN form `YYYYMMDDhhmmsszzz` with `millis`. Years after 9999 take more digits.
pub fn format_cst(unix_ms: u64, millis: bool) -> String {
    let secs = (unix_ms / 1000) as i64 + CST_OFFSET_S;
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let rem = secs.rem_euclid(86_400);
    let mut s = String::with_capacity(17);
    let _ = write!(
        s,
        "{y:04}{m:02}{d:02}{:02}{:02}{:02}",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    );
    if millis {
        let _ = write!(s, "{:03}", unix_ms % 1000);
    }
    s
}
