//! Ports for what must know its port before it starts: a simulated box's media ports, a
//! broker's configuration file, a program that cannot be told port 0. They are free on loopback
//! for TCP and UDP when handed out, and come from below the kernel's ephemeral range, so that no
//! connection's source port takes one between the check and its use. Each process walks that
//! range from its own starting point and never hands a port out twice.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOWEST: u32 = 10_000;

/// The first of `n` consecutive ports free for TCP and UDP on loopback, the first a multiple
/// of `align` (RTP wants an even port); `None` if none are left below the ephemeral range.
pub fn free_ports(n: u16, align: u16) -> Option<u16> {
    static HANDED_OUT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = ephemeral_start();
    let size = ephemeral.checked_sub(LOWEST).filter(|s| *s > 1_000)?;
    let (n, align) = (u32::from(n.max(1)), u32::from(align.max(1)));
    let start = std::process::id().wrapping_mul(7_919) % size;
    let free = |port: u16| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
    };
    for _ in 0..size / n {
        let at = HANDED_OUT.fetch_add(n + align - 1, Ordering::Relaxed);
        let first = (LOWEST + (start + at) % size).next_multiple_of(align);
        let Ok(first) = u16::try_from(first) else {
            continue;
        };
        if u32::from(first) + n <= ephemeral && (first..first + n as u16).all(free) {
            return Some(first);
        }
    }
    None
}

/// The first port of the kernel's ephemeral range (Linux's default where it cannot be read).
fn ephemeral_start() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_handed_out_are_free_aligned_below_the_ephemeral_range_and_never_twice() {
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50 {
            let first = free_ports(4, 2).expect("ports below the ephemeral range");
            assert_eq!(first % 2, 0);
            assert!(u32::from(first) >= LOWEST && u32::from(first) + 4 <= ephemeral_start());
            for p in first..first + 4 {
                assert!(seen.insert(p), "port {p} handed out twice");
                assert!(UdpSocket::bind(("127.0.0.1", p)).is_ok());
            }
        }
    }
}
