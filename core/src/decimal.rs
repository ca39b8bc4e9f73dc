//! Exact decimal values.
//!
//! Sensors have a resolution and HJ 212 loggers send decimal strings (sometimes with 15
//! decimal places); neither should be bent through binary floating point on the way to the
//! store. A [`Decimal`] is a signed mantissa and a count of decimal places: `23.45` is
//! `(2345, 2)`. On the wire that is a zigzag varint and one byte, so a typical reading takes
//! three or four bytes.

use core::fmt;
use core::str::FromStr;

/// Largest number of decimal places.
pub const MAX_SCALE: u8 = 18;

const POW10: [i64; 19] = {
    let mut t = [1i64; 19];
    let mut i = 1;
    while i < 19 {
        t[i] = t[i - 1] * 10;
        i += 1;
    }
    t
};

/// `mantissa / 10^scale`, exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decimal {
    mantissa: i64,
    scale: u8,
}

/// Why a decimal string or value was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecimalError {
    Empty,
    /// A character that does not belong in a decimal number, at 0-based byte `pos`.
    BadChar {
        pos: usize,
    },
    /// More digits than fit in 64 bits, or more than 18 decimal places.
    OutOfRange,
}

impl fmt::Display for DecimalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecimalError::Empty => f.write_str("empty number"),
            DecimalError::BadChar { pos } => {
                write!(
                    f,
                    "unexpected character at position {} of the number",
                    pos + 1
                )
            }
            DecimalError::OutOfRange => f.write_str("number out of range"),
        }
    }
}

impl core::error::Error for DecimalError {}

impl Decimal {
    pub const ZERO: Decimal = Decimal {
        mantissa: 0,
        scale: 0,
    };

    pub fn new(mantissa: i64, scale: u8) -> Result<Decimal, DecimalError> {
        if scale > MAX_SCALE {
            return Err(DecimalError::OutOfRange);
        }
        Ok(Decimal { mantissa, scale })
    }

    /// An integer value.
    pub fn from_int(v: i64) -> Decimal {
        Decimal {
            mantissa: v,
            scale: 0,
        }
    }

    /// `v` rounded (half away from zero) to `scale` decimal places; `None` if `v` is not
    /// finite or does not fit.
    pub fn from_f64(v: f64, scale: u8) -> Option<Decimal> {
        if !v.is_finite() || scale > MAX_SCALE {
            return None;
        }
        let scaled = v * POW10[usize::from(scale)] as f64;
        // i64::MAX as f64 rounds up to 2^63, so compare strictly.
        if scaled.abs() >= 9.2e18 {
            return None;
        }
        let rounded = if scaled >= 0.0 {
            scaled + 0.5
        } else {
            scaled - 0.5
        };
        Some(Decimal {
            mantissa: rounded as i64,
            scale,
        })
    }

    pub fn mantissa(&self) -> i64 {
        self.mantissa
    }

    pub fn scale(&self) -> u8 {
        self.scale
    }

    /// The nearest `f64`.
    pub fn to_f64(&self) -> f64 {
        self.mantissa as f64 / POW10[usize::from(self.scale)] as f64
    }
}

impl FromStr for Decimal {
    type Err = DecimalError;

    /// Parses `[+-]digits[.digits]` exactly, e.g. `-0.052` or `235.292750833832`.
    fn from_str(s: &str) -> Result<Decimal, DecimalError> {
        let bytes = s.as_bytes();
        if bytes.is_empty() {
            return Err(DecimalError::Empty);
        }
        let (negative, start) = match bytes[0] {
            b'-' => (true, 1),
            b'+' => (false, 1),
            _ => (false, 0),
        };
        let mut magnitude: u64 = 0;
        let mut scale: Option<u8> = None;
        let mut digits = 0usize;
        for (pos, &b) in bytes.iter().enumerate().skip(start) {
            match b {
                b'0'..=b'9' => {
                    digits += 1;
                    magnitude = magnitude
                        .checked_mul(10)
                        .and_then(|m| m.checked_add(u64::from(b - b'0')))
                        .ok_or(DecimalError::OutOfRange)?;
                    if let Some(sc) = scale.as_mut() {
                        *sc += 1;
                        if *sc > MAX_SCALE {
                            return Err(DecimalError::OutOfRange);
                        }
                    }
                }
                b'.' if scale.is_none() => scale = Some(0),
                _ => return Err(DecimalError::BadChar { pos }),
            }
        }
        if digits == 0 {
            return Err(if bytes.len() > start {
                DecimalError::BadChar { pos: start }
            } else {
                DecimalError::Empty
            });
        }
        let signed = if negative {
            -i128::from(magnitude)
        } else {
            i128::from(magnitude)
        };
        Ok(Decimal {
            mantissa: i64::try_from(signed).map_err(|_| DecimalError::OutOfRange)?,
            scale: scale.unwrap_or(0),
        })
    }
}

impl fmt::Display for Decimal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale == 0 {
            return write!(f, "{}", self.mantissa);
        }
        let p = POW10[usize::from(self.scale)].unsigned_abs();
        let abs = self.mantissa.unsigned_abs();
        let sign = if self.mantissa < 0 { "-" } else { "" };
        write!(
            f,
            "{sign}{}.{:0width$}",
            abs / p,
            abs % p,
            width = usize::from(self.scale)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_and_prints_exactly() {
        for s in ["0", "23.45", "-0.052", "235.292750833832", "7", "-12.0"] {
            assert_eq!(s.parse::<Decimal>().unwrap().to_string(), s);
        }
        assert_eq!("+1.5".parse::<Decimal>().unwrap().to_string(), "1.5");
        assert_eq!(
            "1.2.3".parse::<Decimal>(),
            Err(DecimalError::BadChar { pos: 3 })
        );
        assert_eq!("-".parse::<Decimal>(), Err(DecimalError::Empty));
        assert_eq!("".parse::<Decimal>(), Err(DecimalError::Empty));
        assert_eq!(
            "99999999999999999999".parse::<Decimal>(),
            Err(DecimalError::OutOfRange)
        );
    }

    #[test]
    fn rounds_half_away_from_zero() {
        assert_eq!(Decimal::from_f64(23.456, 2).unwrap().to_string(), "23.46");
        assert_eq!(
            Decimal::from_f64(-23.455001, 2).unwrap().to_string(),
            "-23.46"
        );
        assert_eq!(Decimal::from_f64(f64::NAN, 2), None);
        assert_eq!(Decimal::from_f64(1e30, 0), None);
    }

    proptest::proptest! {
        #[test]
        fn string_round_trip(m in proptest::num::i64::ANY, scale in 0u8..=18) {
            let d = Decimal::new(m, scale).unwrap();
            proptest::prop_assert_eq!(d.to_string().parse::<Decimal>(), Ok(d));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,30}") {
            let _ = s.parse::<Decimal>();
        }
    }
}
