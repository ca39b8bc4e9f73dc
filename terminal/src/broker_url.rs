//! Broker addresses as users write them: `mqtt://host[:port]` or `mqtts://host[:port]` (TLS;
//! the link then needs certificates and never falls back to plain text).

use std::fmt;
use std::str::FromStr;

/// Default port of plain MQTT.
pub const MQTT_PORT: u16 = 1883;
/// Default port of MQTT over TLS.
pub const MQTTS_PORT: u16 = 8883;

/// A parsed broker URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    pub host: String,
    pub port: u16,
    pub tls: bool,
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
}

impl FromStr for BrokerUrl {
    type Err = BrokerUrlError;

    fn from_str(s: &str) -> Result<BrokerUrl, BrokerUrlError> {
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
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
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
}
