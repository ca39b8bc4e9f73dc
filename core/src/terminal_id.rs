//! Terminal identities: `<site>-<slug>`, e.g. `130102001001-main`.
//!
//! A site may have several terminals (a meeting-room box and a sensor box); the slug tells them
//! apart. Slugs are 1 to 16 characters of `[a-z0-9]`, so an id is also a valid MQTT topic
//! segment, client id and certificate common name.

use core::fmt;
use core::str::FromStr;

use crate::site::{SiteCode, SiteCodeError};

/// Longest slug, in characters.
pub const MAX_SLUG_LEN: usize = 16;

/// The short name of a terminal within its site: `[a-z0-9]{1,16}`.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Slug {
    bytes: [u8; MAX_SLUG_LEN],
    len: u8,
}

/// Why a slug was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlugError {
    Empty,
    TooLong { len: usize },
    BadChar { pos: usize, found: char },
}

impl fmt::Display for SlugError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SlugError::Empty => f.write_str("slug is empty"),
            SlugError::TooLong { len } => {
                write!(
                    f,
                    "slug has {len} characters, at most {MAX_SLUG_LEN} allowed"
                )
            }
            SlugError::BadChar { pos, found } => write!(
                f,
                "slug character {found:?} at position {} is not a-z or 0-9",
                pos + 1
            ),
        }
    }
}

impl core::error::Error for SlugError {}

impl Slug {
    pub fn as_str(&self) -> &str {
        // Only ASCII bytes are ever stored, so this cannot fail; fall back to "" defensively.
        core::str::from_utf8(&self.bytes[..usize::from(self.len)]).unwrap_or("")
    }
}

impl FromStr for Slug {
    type Err = SlugError;

    fn from_str(s: &str) -> Result<Slug, SlugError> {
        if let Some((pos, found)) = s
            .chars()
            .enumerate()
            .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        {
            return Err(SlugError::BadChar { pos, found });
        }
        let len = s.len();
        if len == 0 {
            return Err(SlugError::Empty);
        }
        if len > MAX_SLUG_LEN {
            return Err(SlugError::TooLong { len });
        }
        let mut bytes = [0u8; MAX_SLUG_LEN];
        bytes[..len].copy_from_slice(s.as_bytes());
        Ok(Slug {
            bytes,
            len: len as u8,
        })
    }
}

impl fmt::Display for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Slug {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Slug({self})")
    }
}

/// Why a terminal id was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TerminalIdError {
    /// No `-` between the site code and the slug.
    MissingDash,
    Site(SiteCodeError),
    Slug(SlugError),
}

impl fmt::Display for TerminalIdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TerminalIdError::MissingDash => {
                f.write_str("expected <12-digit site code>-<slug>, e.g. 130102001001-main")
            }
            TerminalIdError::Site(e) => write!(f, "site code {e}"),
            TerminalIdError::Slug(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for TerminalIdError {}

/// A terminal: its site and its slug.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TerminalId {
    site: SiteCode,
    slug: Slug,
}

impl TerminalId {
    pub fn new(site: SiteCode, slug: Slug) -> TerminalId {
        TerminalId { site, slug }
    }

    pub fn site(&self) -> &SiteCode {
        &self.site
    }

    pub fn slug(&self) -> &Slug {
        &self.slug
    }

    /// A key that orders ids as their text orders (`130102001001-a` before `130102001001-a0`
    /// before `130102001002-a`), compared as two numbers: for sorting many ids quickly.
    pub fn text_order(&self) -> (u64, u128) {
        // The site's digits have fixed widths; a slug's unused bytes are zero, below any
        // character a slug may hold.
        (self.site.as_u64(), u128::from_be_bytes(self.slug.bytes))
    }
}

impl FromStr for TerminalId {
    type Err = TerminalIdError;

    fn from_str(s: &str) -> Result<TerminalId, TerminalIdError> {
        let (site, slug) = s.split_once('-').ok_or(TerminalIdError::MissingDash)?;
        Ok(TerminalId {
            site: site.parse().map_err(TerminalIdError::Site)?,
            slug: slug.parse().map_err(TerminalIdError::Slug)?,
        })
    }
}

impl fmt::Display for TerminalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.site, self.slug)
    }
}

impl fmt::Debug for TerminalId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TerminalId({self})")
    }
}

/// On the wire a slug is a string, checked again when decoded.
impl serde::Serialize for Slug {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Slug {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Slug, D::Error> {
        let s = <alloc::string::String as serde::Deserialize>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// On the wire a terminal id is its site code (a varint) and its slug: about 7 bytes less than
/// the text form.
impl serde::Serialize for TerminalId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde::Serialize::serialize(&(self.site, self.slug), s)
    }
}

impl<'de> serde::Deserialize<'de> for TerminalId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TerminalId, D::Error> {
        let (site, slug) = <(SiteCode, Slug) as serde::Deserialize>::deserialize(d)?;
        Ok(TerminalId { site, slug })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn parses_site_and_slug() {
        let id: TerminalId = "130102001001-main".parse().unwrap();
        assert_eq!(id.site().to_string(), "130102001001");
        assert_eq!(id.slug().as_str(), "main");
        assert_eq!(id.to_string(), "130102001001-main");
    }

    #[test]
    fn refuses_bad_ids_with_a_reason() {
        assert_eq!(
            "130102001001main".parse::<TerminalId>(),
            Err(TerminalIdError::MissingDash)
        );
        assert_eq!(
            "130102001001-".parse::<TerminalId>(),
            Err(TerminalIdError::Slug(SlugError::Empty))
        );
        assert_eq!(
            "130102001001-Main".parse::<TerminalId>(),
            Err(TerminalIdError::Slug(SlugError::BadChar {
                pos: 0,
                found: 'M'
            }))
        );
        assert_eq!(
            "130102001001-abcdefghijklmnopq".parse::<TerminalId>(),
            Err(TerminalIdError::Slug(SlugError::TooLong { len: 17 }))
        );
        assert!(matches!(
            "13010200100-main".parse::<TerminalId>(),
            Err(TerminalIdError::Site(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn round_trips(slug in "[a-z0-9]{1,16}", v in 1u16..1000) {
            let s = alloc::format!("130102001{v:03}-{slug}");
            let id: TerminalId = s.parse().unwrap();
            proptest::prop_assert_eq!(id.to_string(), s);
        }

        #[test]
        fn the_text_order_key_orders_as_the_text(
            a in "[a-z0-9]{1,16}", b in "[a-z0-9]{1,16}", x in 1u16..1000, y in 1u16..1000,
            towns in proptest::sample::select(alloc::vec![1u16, 2, 110]),
        ) {
            let a: TerminalId = alloc::format!("130102{towns:03}{x:03}-{a}").parse().unwrap();
            let b: TerminalId = alloc::format!("1301020{:02}{y:03}-{b}", towns % 100).parse().unwrap();
            proptest::prop_assert_eq!(
                a.text_order().cmp(&b.text_order()),
                a.to_string().cmp(&b.to_string())
            );
            proptest::prop_assert_eq!(a.text_order().cmp(&b.text_order()), a.cmp(&b));
        }

        #[test]
        fn garbage_never_panics(s in "\\PC{0,40}") {
            let _ = s.parse::<TerminalId>();
        }
    }
}
