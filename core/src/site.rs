//! Administrative division codes: the addresses of cuntong.
//!
//! A site is a 12-digit statistical division code: 2 province, 2 prefecture, 2 county,
//! 3 township and 3 village digits. Its [`Level`] follows from which trailing groups are zero
//! (`130102000000` is a county, `130102001001` a village). A [`Region`] is what a user types to
//! select part of the hierarchy: a code prefix of 2, 4, 6, 9 or 12 digits.

use core::fmt;
use core::str::FromStr;

/// Digit count of each group, from the province down.
const GROUP_WIDTHS: [usize; 5] = [2, 2, 2, 3, 3];
/// Prefix lengths that end on a group boundary.
pub const PREFIX_LENGTHS: [usize; 5] = [2, 4, 6, 9, 12];

/// Level of a site in the administrative hierarchy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Province,
    Prefecture,
    County,
    Township,
    Village,
}

impl Level {
    /// All levels, from the top.
    pub const ALL: [Level; 5] = [
        Level::Province,
        Level::Prefecture,
        Level::County,
        Level::Township,
        Level::Village,
    ];

    /// Depth from the top: province 0 … village 4.
    pub fn depth(self) -> usize {
        self as usize
    }

    /// Number of code digits that are significant at this level (2, 4, 6, 9 or 12).
    pub fn prefix_len(self) -> usize {
        PREFIX_LENGTHS[self.depth()]
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Province => "province",
            Level::Prefecture => "prefecture",
            Level::County => "county",
            Level::Township => "township",
            Level::Village => "village",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a site code or region was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SiteCodeError {
    /// A site code has exactly 12 digits; a region 2, 4, 6, 9 or 12.
    Length {
        found: usize,
        expected: &'static str,
    },
    /// A character that is not an ASCII digit, at 0-based position `pos`.
    NotDigit { pos: usize, found: char },
    /// Province digits `00` do not name a province.
    ZeroProvince,
    /// A non-zero group below a zero group, e.g. a township under prefecture `00`.
    Gap { zero: Level, nonzero: Level },
}

impl fmt::Display for SiteCodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SiteCodeError::Length { found, expected } => {
                write!(f, "has {found} digits, expected {expected}")
            }
            SiteCodeError::NotDigit { pos, found } => {
                write!(
                    f,
                    "character {found:?} at position {} is not a digit",
                    pos + 1
                )
            }
            SiteCodeError::ZeroProvince => f.write_str("province digits 00 name no province"),
            SiteCodeError::Gap { zero, nonzero } => {
                write!(f, "{nonzero} digits are set but the {zero} digits are zero")
            }
        }
    }
}

impl core::error::Error for SiteCodeError {}

/// A 12-digit administrative division code, validated.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SiteCode {
    /// The five digit groups, from the province down.
    groups: [u16; 5],
}

impl SiteCode {
    /// Builds a code from its five groups (province, prefecture, county, township, village).
    pub fn from_groups(groups: [u16; 5]) -> Result<SiteCode, SiteCodeError> {
        for (i, (&g, &w)) in groups.iter().zip(GROUP_WIDTHS.iter()).enumerate() {
            if u32::from(g) >= 10u32.pow(w as u32) {
                return Err(SiteCodeError::Length {
                    found: digits(u64::from(g)),
                    expected: ["2", "2", "2", "3", "3"][i],
                });
            }
        }
        if groups[0] == 0 {
            return Err(SiteCodeError::ZeroProvince);
        }
        let mut first_zero = None;
        for (i, &g) in groups.iter().enumerate() {
            match (g, first_zero) {
                (0, None) => first_zero = Some(i),
                (0, Some(_)) => {}
                (_, Some(z)) => {
                    return Err(SiteCodeError::Gap {
                        zero: Level::ALL[z],
                        nonzero: Level::ALL[i],
                    });
                }
                (_, None) => {}
            }
        }
        Ok(SiteCode { groups })
    }

    /// The five digit groups, from the province down.
    pub fn groups(&self) -> [u16; 5] {
        self.groups
    }

    /// The code as a number (`130102001001`).
    pub fn as_u64(&self) -> u64 {
        self.groups
            .iter()
            .zip(GROUP_WIDTHS)
            .fold(0u64, |acc, (&g, w)| {
                acc * 10u64.pow(w as u32) + u64::from(g)
            })
    }

    /// The level: the lowest group that is not zero.
    pub fn level(&self) -> Level {
        let depth = self.groups.iter().rposition(|&g| g != 0).unwrap_or(0);
        Level::ALL[depth]
    }

    /// The site one level up, or `None` for a province.
    pub fn parent(&self) -> Option<SiteCode> {
        let depth = self.level().depth();
        if depth == 0 {
            return None;
        }
        let mut groups = self.groups;
        groups[depth] = 0;
        Some(SiteCode { groups })
    }

    /// The sites above this one, nearest first, ending with the province.
    pub fn ancestors(&self) -> impl Iterator<Item = SiteCode> + use<> {
        core::iter::successors(self.parent(), SiteCode::parent)
    }

    /// This site at `level`, if this site is at or below that level.
    pub fn at_level(&self, level: Level) -> Option<SiteCode> {
        if level > self.level() {
            return None;
        }
        let mut groups = self.groups;
        for g in &mut groups[level.depth() + 1..] {
            *g = 0;
        }
        Some(SiteCode { groups })
    }

    /// True if `other` is this site or lies below it.
    pub fn contains(&self, other: &SiteCode) -> bool {
        other.at_level(self.level()).as_ref() == Some(self)
    }

    /// Significant groups only: `[13, 1, 2]` for county 130102.
    pub fn significant_groups(&self) -> &[u16] {
        &self.groups[..=self.level().depth()]
    }

    /// Writes the significant groups as topic segments: `13/01/02` for county 130102.
    pub fn write_path(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write_groups(f, self.significant_groups())
    }

    /// Writes all five groups as topic segments: `13/01/02/000/000`.
    pub fn write_full_path(&self, f: &mut impl fmt::Write) -> fmt::Result {
        write_groups(f, &self.groups)
    }
}

fn write_groups(f: &mut impl fmt::Write, groups: &[u16]) -> fmt::Result {
    for (i, (&g, w)) in groups.iter().zip(GROUP_WIDTHS).enumerate() {
        if i > 0 {
            f.write_char('/')?;
        }
        write!(f, "{g:0w$}")?;
    }
    Ok(())
}

fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// Parses a string of ASCII digits into groups; `len` must be on a group boundary.
fn parse_prefix(s: &str, expected: &'static str) -> Result<[u16; 5], SiteCodeError> {
    let len = s.chars().count();
    if !PREFIX_LENGTHS.contains(&len) || (expected == "12" && len != 12) {
        return Err(SiteCodeError::Length {
            found: len,
            expected,
        });
    }
    if let Some((pos, found)) = s.chars().enumerate().find(|(_, c)| !c.is_ascii_digit()) {
        return Err(SiteCodeError::NotDigit { pos, found });
    }
    let bytes = s.as_bytes();
    let mut groups = [0u16; 5];
    let mut start = 0;
    for (g, w) in groups.iter_mut().zip(GROUP_WIDTHS) {
        if start >= bytes.len() {
            break;
        }
        *g = bytes[start..start + w]
            .iter()
            .fold(0u16, |acc, b| acc * 10 + u16::from(b - b'0'));
        start += w;
    }
    Ok(groups)
}

impl FromStr for SiteCode {
    type Err = SiteCodeError;

    fn from_str(s: &str) -> Result<SiteCode, SiteCodeError> {
        SiteCode::from_groups(parse_prefix(s, "12")?)
    }
}

impl fmt::Display for SiteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (&g, w) in self.groups.iter().zip(GROUP_WIDTHS) {
            write!(f, "{g:0w$}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SiteCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteCode({self})")
    }
}

impl serde::Serialize for SiteCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.as_u64())
    }
}

impl<'de> serde::Deserialize<'de> for SiteCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<SiteCode, D::Error> {
        let n = u64::deserialize(d)?;
        let mut groups = [0u16; 5];
        let mut rest = n;
        for (g, w) in groups.iter_mut().zip(GROUP_WIDTHS).rev() {
            let m = 10u64.pow(w as u32);
            *g = (rest % m) as u16;
            rest /= m;
        }
        if rest != 0 {
            return Err(serde::de::Error::custom(
                "site code has more than 12 digits",
            ));
        }
        SiteCode::from_groups(groups).map_err(serde::de::Error::custom)
    }
}

/// A part of the hierarchy selected by a code prefix: `13`, `1301`, `130102`, `130102001` or a
/// full 12-digit code. Trailing zero groups are normalised away (`1300` is province 13).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Region {
    root: SiteCode,
}

impl Region {
    /// The region made of `site` and everything below it.
    pub fn of(site: SiteCode) -> Region {
        Region { root: site }
    }

    /// The site at the top of the region.
    pub fn root(&self) -> SiteCode {
        self.root
    }

    pub fn contains(&self, site: &SiteCode) -> bool {
        self.root.contains(site)
    }

    /// The shortest prefix that names the region (`130102`).
    pub fn prefix(&self) -> alloc::string::String {
        let mut s = alloc::string::ToString::to_string(&self.root);
        s.truncate(self.root.level().prefix_len());
        s
    }
}

impl FromStr for Region {
    type Err = SiteCodeError;

    fn from_str(s: &str) -> Result<Region, SiteCodeError> {
        let groups = parse_prefix(s, "2, 4, 6, 9 or 12")?;
        Ok(Region {
            root: SiteCode::from_groups(groups)?,
        })
    }
}

/// On the wire a region is its root site code.
impl serde::Serialize for Region {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&self.root, s)
    }
}

impl<'de> serde::Deserialize<'de> for Region {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Region, D::Error> {
        <SiteCode as serde::Deserialize>::deserialize(d).map(Region::of)
    }
}

impl fmt::Display for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.prefix())
    }
}

impl fmt::Debug for Region {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Region({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;
    use alloc::vec::Vec;

    fn code(s: &str) -> SiteCode {
        s.parse().unwrap()
    }

    #[test]
    fn level_follows_trailing_zero_groups() {
        assert_eq!(code("130000000000").level(), Level::Province);
        assert_eq!(code("130100000000").level(), Level::Prefecture);
        assert_eq!(code("130102000000").level(), Level::County);
        assert_eq!(code("130102001000").level(), Level::Township);
        assert_eq!(code("130102001001").level(), Level::Village);
    }

    #[test]
    fn ancestors_climb_to_the_province() {
        let chain: Vec<String> = code("130102001001")
            .ancestors()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            chain,
            [
                "130102001000",
                "130102000000",
                "130100000000",
                "130000000000"
            ]
        );
        assert_eq!(code("130000000000").parent(), None);
    }

    #[test]
    fn contains_is_ancestor_or_self() {
        let county = code("130102000000");
        assert!(county.contains(&county));
        assert!(county.contains(&code("130102001001")));
        assert!(!county.contains(&code("130103001001")));
        assert!(!code("130102001001").contains(&county));
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert_eq!(
            "13010200100".parse::<SiteCode>(),
            Err(SiteCodeError::Length {
                found: 11,
                expected: "12"
            })
        );
        assert_eq!(
            "1301020010x1".parse::<SiteCode>(),
            Err(SiteCodeError::NotDigit {
                pos: 10,
                found: 'x'
            })
        );
        assert_eq!(
            "000102001001".parse::<SiteCode>(),
            Err(SiteCodeError::ZeroProvince)
        );
        assert_eq!(
            "130002001001".parse::<SiteCode>(),
            Err(SiteCodeError::Gap {
                zero: Level::Prefecture,
                nonzero: Level::County
            })
        );
        assert_eq!(
            "1301020010x1".parse::<SiteCode>().unwrap_err().to_string(),
            "character 'x' at position 11 is not a digit"
        );
    }

    #[test]
    fn regions_are_prefixes_on_group_boundaries() {
        for (s, level) in [
            ("13", Level::Province),
            ("1301", Level::Prefecture),
            ("130102", Level::County),
            ("130102001", Level::Township),
            ("130102001001", Level::Village),
        ] {
            let r: Region = s.parse().unwrap();
            assert_eq!(r.root().level(), level);
            assert_eq!(r.to_string(), s);
        }
        assert_eq!("1300".parse::<Region>().unwrap().to_string(), "13");
        assert!(matches!(
            "13010".parse::<Region>(),
            Err(SiteCodeError::Length { found: 5, .. })
        ));
        let county: Region = "130102".parse().unwrap();
        assert!(county.contains(&code("130102001001")));
        assert!(!county.contains(&code("130103001001")));
    }

    #[test]
    fn paths_are_topic_segments() {
        let mut s = String::new();
        code("130102001001").write_path(&mut s).unwrap();
        assert_eq!(s, "13/01/02/001/001");
        let mut s = String::new();
        code("130102000000").write_path(&mut s).unwrap();
        assert_eq!(s, "13/01/02");
        let mut s = String::new();
        code("130102000000").write_full_path(&mut s).unwrap();
        assert_eq!(s, "13/01/02/000/000");
    }

    use alloc::string::String;

    proptest::proptest! {
        #[test]
        fn display_parse_round_trip(g in (11u16..=82, 0u16..100, 0u16..100, 0u16..1000, 0u16..1000), cut in 0usize..5) {
            let mut groups = [g.0, g.1, g.2, g.3, g.4];
            for x in &mut groups[cut + 1..] { *x = 0; }
            if let Ok(c) = SiteCode::from_groups(groups) {
                proptest::prop_assert_eq!(c.to_string().parse::<SiteCode>(), Ok(c));
                proptest::prop_assert_eq!(c.as_u64().to_string(), c.to_string());
                for a in c.ancestors() {
                    proptest::prop_assert!(a.contains(&c));
                    proptest::prop_assert!(a.level() < c.level());
                }
            }
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,14}") {
            let _ = s.parse::<SiteCode>();
            let _ = s.parse::<Region>();
        }
    }
}
