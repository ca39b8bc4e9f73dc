//! Broker addresses as users write them: `mqtt://[user:password@]host[:port]` or
//! `mqtts://…` (TLS; the link then needs certificates and never falls back to plain text).
//!
//! The user name and password (percent-encoded where they hold `@`, `:`, `/` or `%`) are sent
//! in MQTT CONNECT. They never leave this module in text: a URL displays, debugs and reports
//! errors as `mqtt://user:***@host:port`.

use std::fmt;
use std::str::FromStr;

/// Default port of plain MQTT.
pub const MQTT_PORT: u16 = 1883;
/// Default port of MQTT over TLS.
pub const MQTTS_PORT: u16 = 8883;

/// A parsed broker URL.
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    /// The user name and password to log in with, if the URL gives them.
    pub credentials: Option<Credentials>,
}

/// An MQTT user name and password. Shown without the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:***", self.username)
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// `text` with the password of a `scheme://user:password@…` URL replaced by `***`, so an
/// error message can quote what the user typed.
pub fn redact(text: &str) -> String {
    let Some((scheme, rest)) = text.split_once("://") else {
        return text.to_owned();
    };
    // Up to the last '@', so a password holding '/' or '@' is hidden whole.
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return text.to_owned();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => text.to_owned(),
    }
}

/// Decodes `%XX` escapes; None for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Why a broker URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerUrlError {
    #[error("broker URL {0:?} must start with mqtt:// or mqtts://")]
    Scheme(String),
    #[error("broker URL {0:?} has no host")]
    NoHost(String),
    #[error("broker URL {url:?} has a bad port {port:?}")]
    Port { url: String, port: String },
    #[error("broker URL {0:?} must not have a path")]
    Path(String),
    #[error("broker URL {0:?} must give user:password@ (percent-encoded, non-empty user)")]
    Credentials(String),
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(text: &str) -> Result<BrokerUrl, BrokerUrlError> {
        // Errors quote the URL without its password.
        let shown = redact(text);
        let s = shown.as_str();
        let (tls, rest) = if let Some(r) = s.strip_prefix("mqtt://") {
            (false, r)
        } else if let Some(r) = s.strip_prefix("mqtts://") {
            (true, r)
        } else {
            return Err(BrokerUrlError::Scheme(s.to_owned()));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') {
            return Err(BrokerUrlError::Path(s.to_owned()));
        }
        let (credentials, rest) = match rest.rsplit_once('@') {
            None => (None, rest),
            Some((userinfo, host)) => {
                // The password as typed, from the unredacted text.
                let typed = text
                    .split_once("://")
                    .and_then(|(_, r)| r.rsplit_once('@'))
                    .map_or(userinfo, |(u, _)| u);
                let bad = || BrokerUrlError::Credentials(s.to_owned());
                let (user, password) = typed.split_once(':').ok_or_else(bad)?;
                let username = percent_decode(user)
                    .filter(|u| !u.is_empty())
                    .ok_or_else(bad)?;
                let password = percent_decode(password).ok_or_else(bad)?;
                (Some(Credentials { username, password }), host)
            }
        };
        // [v6]:port, host:port or host
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or_else(|| BrokerUrlError::NoHost(s.to_owned()))?;
            (h, after.strip_prefix(':'))
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(BrokerUrlError::NoHost(s.to_owned()));
        }
        let port = match port {
            Some(p) => p
                .parse()
                .ok()
                .filter(|&p| p != 0)
                .ok_or_else(|| BrokerUrlError::Port {
                    url: s.to_owned(),
                    port: p.to_owned(),
                })?,
            None if tls => MQTTS_PORT,
            None => MQTT_PORT,
        };
        Ok(BrokerUrl {
            host: host.to_owned(),
            port,
            tls,
            credentials,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        write!(f, "{scheme}://")?;
        if let Some(c) = &self.credentials {
            write!(f, "{c:?}@")?;
        }
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// The brokers a client may use, in order of preference: one, or the nodes of a cluster (a
/// client moves to the next when the one it uses fails). Written as one URL, as URLs separated
/// by commas, or (TOML) as a list. All use TLS or none does: a list never falls back to plain
/// text.
#[derive(Clone, PartialEq, Eq)]
pub struct Brokers(Vec<BrokerUrl>);

/// Why a list of brokers was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokersError {
    #[error("no broker given")]
    Empty,
    #[error(transparent)]
    Url(#[from] BrokerUrlError),
    #[error("brokers {tls} and {plain}: either every broker is mqtts:// or none is")]
    MixedTls { tls: String, plain: String },
}

impl Brokers {
    pub fn new(list: Vec<BrokerUrl>) -> Result<Brokers, BrokersError> {
        let first = list.first().ok_or(BrokersError::Empty)?;
        if let Some(other) = list.iter().find(|b| b.tls != first.tls) {
            let (tls, plain) = if first.tls {
                (first, other)
            } else {
                (other, first)
            };
            return Err(BrokersError::MixedTls {
                tls: tls.to_string(),
                plain: plain.to_string(),
            });
        }
        Ok(Brokers(list))
    }

    /// The preferred broker.
    pub fn first(&self) -> &BrokerUrl {
        &self.0[0]
    }

    /// Broker `i`, counting round the list.
    pub fn get(&self, i: usize) -> &BrokerUrl {
        &self.0[i % self.0.len()]
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether the brokers use TLS (all do, or none).
    pub fn tls(&self) -> bool {
        self.first().tls
    }

    pub fn iter(&self) -> impl Iterator<Item = &BrokerUrl> {
        self.0.iter()
    }
}

impl From<BrokerUrl> for Brokers {
    fn from(url: BrokerUrl) -> Brokers {
        Brokers(vec![url])
    }
}

impl FromStr for Brokers {
    type Err = BrokersError;

    fn from_str(text: &str) -> Result<Brokers, BrokersError> {
        let list = text
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .collect::<Result<Vec<BrokerUrl>, _>>()?;
        Brokers::new(list)
    }
}

impl fmt::Display for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            b.fmt(f)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Brokers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        let u: BrokerUrl = "mqtt://127.0.0.1:1884".parse().unwrap();
        assert_eq!((u.host.as_str(), u.port, u.tls), ("127.0.0.1", 1884, false));
        let u: BrokerUrl = "mqtts://broker.example".parse().unwrap();
        assert_eq!((u.port, u.tls), (8883, true));
        let u: BrokerUrl = "mqtt://[::1]:1883".parse().unwrap();
        assert_eq!(u.host, "::1");
        assert_eq!(u.to_string(), "mqtt://[::1]:1883");
    }

    #[test]
    fn refuses_bad_urls_naming_them() {
        assert!(matches!(
            "http://x".parse::<BrokerUrl>(),
            Err(BrokerUrlError::Scheme(_))
        ));
        assert!(matches!(
            "mqtt://:1883".parse::<BrokerUrl>(),
            Err(BrokerUrlError::NoHost(_))
        ));
        assert_eq!(
            "mqtt://h:99999"
                .parse::<BrokerUrl>()
                .unwrap_err()
                .to_string(),
            "broker URL \"mqtt://h:99999\" has a bad port \"99999\""
        );
    }

    #[test]
    fn takes_user_and_password_and_never_shows_the_password() {
        let u: BrokerUrl = "mqtt://central:s3cr%40t%3Ax@[::1]:1884".parse().unwrap();
        let c = u.credentials.clone().unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("central", "s3cr@t:x")
        );
        assert_eq!((u.host.as_str(), u.port), ("::1", 1884));
        // '@' in a raw password works too (the host follows the last '@').
        let raw: BrokerUrl = "mqtt://u:p@ss@h".parse().unwrap();
        assert_eq!(raw.credentials.unwrap().password, "p@ss");
        for shown in [u.to_string(), format!("{u:?}"), format!("{c:?}")] {
            assert!(!shown.contains("s3cr"), "{shown}");
        }
        assert_eq!(u.to_string(), "mqtt://central:***@[::1]:1884");
    }

    #[test]
    fn errors_about_a_url_with_a_password_do_not_quote_the_password() {
        for bad in [
            "mqtt://u:hunter2@h:0",
            "mqtt://u:hunter2@h/path",
            "http://u:hunter2@h",
            "mqtt://u:hunter2@",
            "mqtt://:hunter2@h",
            "mqtt://u:hunter2%zz@h",
            "mqtt://u:hun/ter2@h:99999",
        ] {
            let e = bad.parse::<BrokerUrl>().unwrap_err().to_string();
            assert!(!e.contains("hunter2"), "{bad}: {e}");
            assert!(e.contains("u:***@") || e.contains(":***@"), "{bad}: {e}");
        }
        assert!(matches!(
            "mqtt://nopassword@h".parse::<BrokerUrl>(),
            Err(BrokerUrlError::Credentials(_))
        ));
        assert_eq!(redact("mqtt://h:1883"), "mqtt://h:1883");
    }

    #[test]
    fn a_list_of_brokers_parses_in_order_and_shows_no_password() {
        let b: Brokers = "mqtts://u:secret@a:8883, mqtts://b".parse().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b.first().host, "a");
        assert_eq!(b.get(1).host, "b");
        assert_eq!(b.get(2).host, "a", "round the list");
        assert!(b.tls());
        assert_eq!(b.to_string(), "mqtts://u:***@a:8883,mqtts://b:8883");
        let one: Brokers = "mqtt://h:1883".parse().unwrap();
        assert_eq!(
            one,
            Brokers::from("mqtt://h:1883".parse::<BrokerUrl>().unwrap())
        );
    }

    #[test]
    fn a_list_mixing_tls_and_plain_or_holding_a_bad_url_or_nothing_is_refused_naming_it() {
        let e = "mqtts://a, mqtt://b"
            .parse::<Brokers>()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("mqtts://a:8883") && e.contains("mqtt://b:1883"),
            "{e}"
        );
        let e = "mqtt://a, http://b"
            .parse::<Brokers>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("http://b"), "{e}");
        assert_eq!(" , ".parse::<Brokers>(), Err(BrokersError::Empty));
    }
}
