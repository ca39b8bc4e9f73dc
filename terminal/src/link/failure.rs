//! Connection failures told as a person reads them: "connection refused", "TLS failure: …",
//! "the broker refused the connection (…)".

/// The TLS failure behind a connection error, if it is one: rumqttc's own TLS errors, or a
/// rustls error inside an I/O error (how a failed handshake surfaces).
pub(super) fn tls_failure(e: &rumqttc::ConnectionError) -> Option<String> {
    fn rustls_in(e: &std::io::Error) -> Option<String> {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(|r| r.to_string())
    }
    match e {
        // A connection reset during the handshake is the link, not TLS.
        rumqttc::ConnectionError::Tls(rumqttc::TlsError::Io(io))
        | rumqttc::ConnectionError::Io(io) => rustls_in(io),
        rumqttc::ConnectionError::Tls(t) => Some(t.to_string()),
        _ => None,
    }
}

/// A connection failure as a person reads it: "connection refused", "TLS failure: …", "the
/// broker refused the connection (…)".
pub(super) fn describe(e: &rumqttc::ConnectionError, tls: Option<&str>) -> String {
    use rumqttc::ConnectionError as E;
    use std::io::ErrorKind as K;
    if let Some(t) = tls {
        return format!("TLS failure: {t}");
    }
    let io = |io: &std::io::Error| match io.kind() {
        K::ConnectionRefused => "connection refused".to_owned(),
        K::ConnectionReset => "connection reset by the broker".to_owned(),
        K::ConnectionAborted => "connection aborted".to_owned(),
        K::TimedOut => "timed out".to_owned(),
        K::UnexpectedEof => "the broker closed the connection".to_owned(),
        _ => io.to_string(),
    };
    match e {
        E::Io(e) | E::Tls(rumqttc::TlsError::Io(e)) => io(e),
        E::ConnectionRefused(code) => format!("the broker refused the connection ({code:?})"),
        E::NetworkTimeout => "no answer (timed out)".to_owned(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_described_as_a_person_reads_them() {
        use rumqttc::ConnectionError as E;
        let io = |kind| E::Io(std::io::Error::from(kind));
        assert_eq!(
            describe(&io(std::io::ErrorKind::ConnectionRefused), None),
            "connection refused"
        );
        assert_eq!(
            describe(&io(std::io::ErrorKind::ConnectionReset), None),
            "connection reset by the broker"
        );
        let refused = E::ConnectionRefused(rumqttc::ConnectReturnCode::NotAuthorized);
        assert_eq!(
            describe(&refused, None),
            "the broker refused the connection (NotAuthorized)"
        );
        let tls = rumqttc::TlsError::Io(std::io::Error::other(rustls::Error::InvalidCertificate(
            rustls::CertificateError::UnknownIssuer,
        )));
        let tls = E::Tls(tls);
        let failure = tls_failure(&tls);
        assert!(failure.is_some(), "a handshake failure is a TLS failure");
        assert!(
            describe(&tls, failure.as_deref()).starts_with("TLS failure: invalid peer certificate"),
            "{}",
            describe(&tls, failure.as_deref())
        );
    }
}
