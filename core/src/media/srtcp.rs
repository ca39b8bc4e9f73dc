//! SRTCP (RFC 3711 §3.4) under a session's SRTP master key, with the default transforms the
//! media pipelines use: AES-128 in counter mode and HMAC-SHA1 with an 80-bit tag, session keys
//! derived with key derivation rate 0.
//!
//! The feedback a site sends about a stream (receiver report, picture loss) goes out
//! authenticated but not encrypted (the E flag clear: SDES's `UNENCRYPTED_SRTCP`, RFC 4568
//! §6.3.2; libsrtp opens it under a null SRTCP cipher): it carries no secret, and
//! the relays on the way read whom it is about to send it back the way the stream came. Only a
//! member of the session (who holds the key) can make a sender act on it. [`Srtcp::unprotect`]
//! reads encrypted packets too.

use aes::Aes128;
use aes::cipher::{KeyIvInit, StreamCipher};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::fmt;
use hmac::{Hmac, KeyInit, Mac};
use sha1::Sha1;

type AesCm = ctr::Ctr128BE<Aes128>;

/// The master key and salt of a session: 16 + 14 bytes.
pub const MASTER_LEN: usize = 30;
const SALT_LEN: usize = 14;
const TAG_LEN: usize = 10;
/// E flag and SRTCP index.
const TRAILER_LEN: usize = 4;
/// Indexes at or below the highest seen are accepted once each within this window.
const REPLAY_WINDOW: u32 = 64;
/// Senders whose replay windows are kept, at most (the oldest goes first).
const MAX_SENDERS: usize = 4_096;

/// Why a packet was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrtcpError {
    /// The master key and salt are not 30 bytes.
    KeyLength { found: usize },
    /// Shorter than an RTCP header with its trailer and tag.
    TooShort { len: usize },
    /// The authentication tag does not match: not made under this session's key, or altered.
    Authentication,
    /// The same packet (sender and index) was taken before, or is too old to tell.
    Replayed { ssrc: u32, index: u32 },
}

impl fmt::Display for SrtcpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SrtcpError::KeyLength { found } => {
                write!(
                    f,
                    "SRTP master key and salt of {found} bytes, expected {MASTER_LEN}"
                )
            }
            SrtcpError::TooShort { len } => write!(f, "{len}-byte datagram is not SRTCP"),
            SrtcpError::Authentication => f.write_str("SRTCP authentication failed"),
            SrtcpError::Replayed { ssrc, index } => {
                write!(f, "SRTCP packet {index} of {ssrc:#010x} replayed")
            }
        }
    }
}

impl core::error::Error for SrtcpError {}

/// Keystream of AES-CM with `key` from the 16-byte counter block `iv`, XORed into `data`.
fn aes_cm(key: &[u8; 16], iv: &[u8; 16], data: &mut [u8]) {
    AesCm::new(key.into(), iv.into()).apply_keystream(data);
}

/// The session key of `label` (RFC 3711 §4.3.1, key derivation rate 0), `N` bytes.
pub fn derive<const N: usize>(master_key: &[u8; 16], master_salt: &[u8; 14], label: u8) -> [u8; N] {
    let mut iv = [0u8; 16];
    iv[..SALT_LEN].copy_from_slice(master_salt);
    iv[7] ^= label;
    let mut out = [0u8; N];
    aes_cm(master_key, &iv, &mut out);
    out
}

/// The SRTCP context of one session: its session keys, the index of the next packet sent,
/// and the replay windows of the senders heard.
#[derive(Clone)]
pub struct Srtcp {
    key: [u8; 16],
    salt: [u8; 14],
    auth: [u8; 20],
    next_index: u32,
    /// Per sender: the highest index taken and a bitmap of the `REPLAY_WINDOW` below it.
    seen: BTreeMap<u32, (u32, u64)>,
}

impl fmt::Debug for Srtcp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Srtcp")
            .field("keys", &"(hidden)")
            .field("next_index", &self.next_index)
            .finish()
    }
}

impl Srtcp {
    /// A context under the session's master key and salt; the first packet sent takes index
    /// `first_index` (31 bits; a sender that starts again under the same SSRC starts above
    /// where it was, e.g. from its clock, or its receivers take the new packets for replays).
    pub fn new(master: &[u8], first_index: u32) -> Result<Srtcp, SrtcpError> {
        if master.len() != MASTER_LEN {
            return Err(SrtcpError::KeyLength {
                found: master.len(),
            });
        }
        let mut mk = [0u8; 16];
        let mut ms = [0u8; 14];
        mk.copy_from_slice(&master[..16]);
        ms.copy_from_slice(&master[16..]);
        Ok(Srtcp {
            key: derive(&mk, &ms, 3),
            auth: derive(&mk, &ms, 4),
            salt: derive(&mk, &ms, 5),
            next_index: first_index & 0x7fff_ffff,
            seen: BTreeMap::new(),
        })
    }

    fn iv(&self, ssrc: u32, index: u32) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..SALT_LEN].copy_from_slice(&self.salt);
        for (i, b) in ssrc.to_be_bytes().into_iter().enumerate() {
            iv[4 + i] ^= b;
        }
        for (i, b) in index.to_be_bytes().into_iter().enumerate() {
            iv[10 + i] ^= b;
        }
        iv
    }

    fn tag(&self, authenticated: &[u8]) -> [u8; TAG_LEN] {
        // Any key length suits HMAC.
        let mut mac = <Hmac<Sha1> as KeyInit>::new_from_slice(&self.auth)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        mac.update(authenticated);
        let full = mac.finalize().into_bytes();
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full[..TAG_LEN]);
        tag
    }

    /// Protects a compound RTCP packet (at least its 8-byte header): encrypted if `encrypt`,
    /// authenticated always.
    pub fn protect(&mut self, rtcp: &[u8], encrypt: bool) -> Result<Vec<u8>, SrtcpError> {
        if rtcp.len() < 8 {
            return Err(SrtcpError::TooShort { len: rtcp.len() });
        }
        let index = self.next_index;
        self.next_index = (self.next_index + 1) & 0x7fff_ffff;
        let mut out = Vec::with_capacity(rtcp.len() + TRAILER_LEN + TAG_LEN);
        out.extend_from_slice(rtcp);
        if encrypt {
            let ssrc = u32::from_be_bytes([rtcp[4], rtcp[5], rtcp[6], rtcp[7]]);
            let iv = self.iv(ssrc, index);
            aes_cm(&self.key, &iv, &mut out[8..]);
        }
        let e = if encrypt { 0x8000_0000 } else { 0 };
        out.extend_from_slice(&(e | index).to_be_bytes());
        let tag = self.tag(&out);
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Checks and opens a protected packet: the compound RTCP packet inside, once.
    pub fn unprotect(&mut self, srtcp: &[u8]) -> Result<Vec<u8>, SrtcpError> {
        let len = srtcp.len();
        if len < 8 + TRAILER_LEN + TAG_LEN {
            return Err(SrtcpError::TooShort { len });
        }
        let (authenticated, tag) = srtcp.split_at(len - TAG_LEN);
        let want = self.tag(authenticated);
        // In constant time: a tag is not to be guessed a byte at a time.
        let diff = want.iter().zip(tag).fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 {
            return Err(SrtcpError::Authentication);
        }
        let (body, trailer) = authenticated.split_at(authenticated.len() - TRAILER_LEN);
        let word = u32::from_be_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let (encrypted, index) = (word & 0x8000_0000 != 0, word & 0x7fff_ffff);
        let ssrc = u32::from_be_bytes([body[4], body[5], body[6], body[7]]);
        self.take(ssrc, index)?;
        let mut out = body.to_vec();
        if encrypted {
            let iv = self.iv(ssrc, index);
            aes_cm(&self.key, &iv, &mut out[8..]);
        }
        Ok(out)
    }

    /// Takes index `index` of sender `ssrc` unless it was taken before or is too old.
    fn take(&mut self, ssrc: u32, index: u32) -> Result<(), SrtcpError> {
        let replayed = Err(SrtcpError::Replayed { ssrc, index });
        match self.seen.get_mut(&ssrc) {
            Some((top, bits)) => {
                if index > *top {
                    let shift = index - *top;
                    *bits = if shift >= REPLAY_WINDOW {
                        0
                    } else {
                        (*bits << shift) | (1 << (shift - 1))
                    };
                    *top = index;
                } else {
                    let back = *top - index;
                    if back == 0 || back > REPLAY_WINDOW || *bits & (1 << (back - 1)) != 0 {
                        return replayed;
                    }
                    *bits |= 1 << (back - 1);
                }
            }
            None => {
                if self.seen.len() >= MAX_SENDERS
                    && let Some(oldest) = self.seen.keys().next().copied()
                {
                    self.seen.remove(&oldest);
                }
                self.seen.insert(ssrc, (index, 0));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn session_keys_are_derived_as_rfc_3711_appendix_b3_shows() {
        let mk: [u8; 16] = hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap();
        let ms: [u8; 14] = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        let key: [u8; 16] = derive(&mk, &ms, 0);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let salt: [u8; 14] = derive(&mk, &ms, 2);
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let auth: [u8; 20] = derive(&mk, &ms, 1);
        assert_eq!(
            auth.to_vec(),
            hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4")
        );
    }

    /// A receiver report of 0x1234 (no blocks).
    const RR: [u8; 8] = [0x80, 201, 0, 1, 0, 0, 0x12, 0x34];

    #[test]
    fn a_protected_packet_opens_once_and_only_under_its_key() {
        let key = [7u8; 30];
        let mut tx = Srtcp::new(&key, 5).unwrap();
        let mut rx = Srtcp::new(&key, 0).unwrap();
        for encrypt in [false, true] {
            let p = tx.protect(&RR, encrypt).unwrap();
            assert_eq!(p.len(), RR.len() + 14);
            // The header stays readable; encrypted, the rest does not.
            assert_eq!(p[..8], RR);
            assert_eq!(rx.unprotect(&p).unwrap(), RR);
            assert!(matches!(rx.unprotect(&p), Err(SrtcpError::Replayed { .. })));
        }
        // Altered, or under another key: refused.
        let mut p = tx.protect(&RR, false).unwrap();
        p[3] ^= 1;
        assert_eq!(rx.unprotect(&p), Err(SrtcpError::Authentication));
        let p = Srtcp::new(&[8u8; 30], 100)
            .unwrap()
            .protect(&RR, false)
            .unwrap();
        assert_eq!(rx.unprotect(&p), Err(SrtcpError::Authentication));
        assert!(Srtcp::new(&[0u8; 16], 0).is_err());
        assert_eq!(
            rx.unprotect(&[0x80; 21]),
            Err(SrtcpError::TooShort { len: 21 })
        );
    }

    #[test]
    fn late_packets_are_taken_once_within_the_window() {
        let key = [1u8; 30];
        let mut tx = Srtcp::new(&key, 1_000).unwrap();
        let mut rx = Srtcp::new(&key, 0).unwrap();
        let packets: Vec<Vec<u8>> = (0..100).map(|_| tx.protect(&RR, false).unwrap()).collect();
        assert!(rx.unprotect(&packets[90]).is_ok());
        // Within the window: each once, in any order.
        assert!(rx.unprotect(&packets[89]).is_ok());
        assert!(rx.unprotect(&packets[40]).is_ok());
        assert!(rx.unprotect(&packets[40]).is_err());
        // Older than the window: refused.
        assert!(rx.unprotect(&packets[10]).is_err());
        assert!(rx.unprotect(&packets[99]).is_ok());
        assert!(rx.unprotect(&packets[91]).is_ok());
    }
}
