//! Central staff who sign in to the dashboard: a users file of names and salted password hashes
//! (`cuntong staff add NAME --users FILE`; the file format and its checks are the broker's
//! users file's, [`crate::broker::load_users`], with a hash where the password would be), and
//! the sessions of those signed in.
//!
//! A hash is `pbkdf2-sha256$ITERATIONS$SALT$HASH` (hex): PBKDF2-HMAC-SHA256 from `ring`,
//! 600,000 iterations, a random 16-byte salt, compared in constant time. A name not in the file
//! costs the same work as a wrong password, so timing does not tell which names exist. A
//! session is a random 32-byte token in an `HttpOnly`, `SameSite=Strict` cookie, valid for
//! [`SESSION`]; sessions live in central's memory (a restart signs everyone out).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::rand::{SecureRandom, SystemRandom};

use crate::broker::AuthFileError;

/// PBKDF2 iterations of a new hash (OWASP's figure for PBKDF2-HMAC-SHA256).
pub const ITERATIONS: u32 = 600_000;
/// How long a sign-in lasts.
pub const SESSION: Duration = Duration::from_secs(12 * 3600);
const SALT: usize = 16;
const HASH: usize = 32;
const ALGORITHM: ring::pbkdf2::Algorithm = ring::pbkdf2::PBKDF2_HMAC_SHA256;

/// Why a hash in the users file, or a new user, was refused. Never quotes a password.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StaffError {
    #[error("expected name:pbkdf2-sha256$ITERATIONS$SALT$HASH (cuntong staff add)")]
    NotAHash,
    #[error("iterations {0:?} is not a positive number")]
    Iterations(String),
    #[error("the {0} is not hex")]
    NotHex(&'static str),
    #[error("the salt or hash has the wrong length")]
    Length,
    #[error("{0:?}: a name is non-empty, without blanks, controls or ':'")]
    Name(String),
    #[error("a password has at least 8 characters")]
    ShortPassword,
    #[error("no randomness for the salt")]
    NoRandomness,
}

/// One user's stored hash.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Hash {
    iterations: NonZeroU32,
    salt: Vec<u8>,
    hash: Vec<u8>,
}

impl Hash {
    fn parse(text: &str) -> Result<Hash, StaffError> {
        let mut parts = text.split('$');
        let (Some("pbkdf2-sha256"), Some(iter), Some(salt), Some(hash), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(StaffError::NotAHash);
        };
        let iterations = iter
            .parse::<u32>()
            .ok()
            .and_then(NonZeroU32::new)
            .ok_or_else(|| StaffError::Iterations(iter.to_owned()))?;
        let hex = |what: &'static str, s: &str| {
            cuntong_terminal::hex::decode(s).ok_or(StaffError::NotHex(what))
        };
        let (salt, hash) = (hex("salt", salt)?, hex("hash", hash)?);
        if hash.len() != HASH || salt.len() < 8 {
            return Err(StaffError::Length);
        }
        Ok(Hash {
            iterations,
            salt,
            hash,
        })
    }

    fn verify(&self, password: &str) -> bool {
        ring::pbkdf2::verify(
            ALGORITHM,
            self.iterations,
            &self.salt,
            password.as_bytes(),
            &self.hash,
        )
        .is_ok()
    }
}

/// The staff who may sign in.
#[derive(Debug)]
pub struct Users {
    hashes: HashMap<String, Hash>,
    /// What a name not in the file is checked against.
    nobody: Hash,
}

impl Users {
    /// Reads a users file (owner-readable only; errors name the file and the line).
    pub fn load(path: &Path) -> Result<Users, AuthFileError> {
        let lines = crate::broker::load_users(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| AuthFileError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut hashes = HashMap::new();
        for (name, value) in lines {
            let line = text
                .lines()
                .position(|l| l.trim().starts_with(&format!("{name}:")))
                .map_or(0, |i| i + 1);
            let hash = Hash::parse(&value).map_err(|why| AuthFileError::Line {
                path: path.to_owned(),
                line,
                why: format!("user {name:?}: {why}"),
            })?;
            hashes.insert(name, hash);
        }
        let nobody = Hash {
            iterations: NonZeroU32::MIN.saturating_add(ITERATIONS - 1),
            salt: vec![0; SALT],
            hash: vec![0; HASH],
        };
        Ok(Users { hashes, nobody })
    }

    /// Whether `password` is `name`'s (the same work whether or not the name exists).
    pub fn verify(&self, name: &str, password: &str) -> bool {
        match self.hashes.get(name) {
            Some(h) => h.verify(password),
            None => {
                let _ = self.nobody.verify(password);
                false
            }
        }
    }
}

/// A staff member's name: non-empty, without blanks, controls or `:`.
pub fn check_name(name: &str) -> Result<(), StaffError> {
    if name.is_empty()
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ':')
    {
        return Err(StaffError::Name(name.to_owned()));
    }
    Ok(())
}

/// A users-file line for `name` with a new salted hash of `password`.
pub fn line(name: &str, password: &str) -> Result<String, StaffError> {
    check_name(name)?;
    if password.chars().count() < 8 {
        return Err(StaffError::ShortPassword);
    }
    let mut salt = [0u8; SALT];
    SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| StaffError::NoRandomness)?;
    let mut hash = [0u8; HASH];
    let iterations = NonZeroU32::MIN.saturating_add(ITERATIONS - 1);
    ring::pbkdf2::derive(ALGORITHM, iterations, &salt, password.as_bytes(), &mut hash);
    let hex = cuntong_terminal::hex::encode;
    Ok(format!(
        "{name}:pbkdf2-sha256${ITERATIONS}${}${}",
        hex(&salt),
        hex(&hash)
    ))
}

/// Who is signed in: session token to (name, until).
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<String, (String, Instant)>>,
}

impl Sessions {
    /// Opens a session for `name`: its token.
    pub fn open(&self, name: &str) -> Option<String> {
        let mut token = [0u8; 32];
        SystemRandom::new().fill(&mut token).ok()?;
        let token = cuntong_terminal::hex::encode(&token);
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        open.retain(|_, (_, until)| *until > now);
        open.insert(token.clone(), (name.to_owned(), now + SESSION));
        Some(token)
    }

    /// The name signed in under `token`, while its session lasts.
    pub fn who(&self, token: &str) -> Option<String> {
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(name, _)| name.clone())
    }

    pub fn close(&self, token: &str) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(token);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users_file(dir: &Path, text: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("staff");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn a_hashed_password_signs_in_and_nothing_else_does() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!(
            "{}\n{}\n",
            line("duty", "county-office-1").unwrap(),
            line("王工", "另一个更长的密码-2").unwrap()
        );
        assert!(!text.contains("county-office-1"), "no password in the file");
        let users = Users::load(&users_file(dir.path(), &text)).unwrap();
        assert!(users.verify("duty", "county-office-1"));
        assert!(users.verify("王工", "另一个更长的密码-2"));
        assert!(!users.verify("duty", "county-office-2"));
        assert!(!users.verify("duty", ""));
        assert!(!users.verify("nobody", "county-office-1"));
        assert!(line("duty", "short").is_err());
        assert!(line("du ty", "long enough").is_err());
    }

    #[test]
    fn a_bad_hash_is_refused_naming_file_line_and_user() {
        let dir = tempfile::tempdir().unwrap();
        let good = line("duty", "county-office-1").unwrap();
        for bad in [
            "admin:plaintext-password",
            "admin:pbkdf2-sha256$0$00112233445566778899aabbccddeeff$00",
            "admin:pbkdf2-sha256$600000$zz$00",
        ] {
            let path = users_file(dir.path(), &format!("{good}\n{bad}\n"));
            let e = Users::load(&path).unwrap_err().to_string();
            assert!(e.contains(":2:") && e.contains("\"admin\""), "{e}");
            assert!(!e.contains("plaintext-password"), "{e}");
        }
    }

    #[test]
    fn a_session_names_who_signed_in_until_it_is_closed() {
        let sessions = Sessions::default();
        let token = sessions.open("duty").unwrap();
        assert_eq!(token.len(), 64);
        assert_eq!(sessions.who(&token).as_deref(), Some("duty"));
        assert_eq!(sessions.who("forged"), None);
        sessions.close(&token);
        assert_eq!(sessions.who(&token), None);
    }
}
