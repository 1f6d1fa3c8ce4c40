//! Address classification: which IP addresses a delivery may reach (DESIGN 2.5).
//!
//! An address is allowed only if it is globally routable per IANA's special-purpose address
//! registries. Private, loopback, link-local, shared (CGNAT) and unique-local addresses become
//! allowed when the operator sets `allow_private_targets`; cloud metadata addresses and
//! addresses that are never a real destination (unspecified, documentation, multicast,
//! reserved, transition prefixes that embed another address) stay blocked whatever the flag.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an address is blocked, as the API and the delivery log say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blocked {
    /// Loopback, private, link-local, shared or unique-local: allowed with the flag.
    Private(&'static str),
    /// A cloud metadata service: never.
    Metadata,
    /// Not a globally routable destination: never.
    Special(&'static str),
}

impl Blocked {
    pub fn reason(self) -> String {
        match self {
            Blocked::Private(kind) => format!(
                "{kind} address (deliveries to it need ACCOMMADOR_ALLOW_PRIVATE_TARGETS=true)"
            ),
            Blocked::Metadata => "cloud metadata address (always blocked)".to_owned(),
            Blocked::Special(kind) => format!("{kind} address (not a routable destination)"),
        }
    }
}

const METADATA_V4: [Ipv4Addr; 3] = [
    Ipv4Addr::new(169, 254, 169, 254),
    Ipv4Addr::new(169, 254, 170, 2),
    Ipv4Addr::new(100, 100, 100, 200),
];
const METADATA_V6: [Ipv6Addr; 1] = [Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x254)];

fn in_v4(ip: Ipv4Addr, net: [u8; 4], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u32::MAX << (32 - bits)
    };
    (u32::from(ip) & mask) == (u32::from(Ipv4Addr::from(net)) & mask)
}

fn in_v6(ip: Ipv6Addr, net: [u16; 8], bits: u32) -> bool {
    let mask = if bits == 0 {
        0
    } else {
        u128::MAX << (128 - bits)
    };
    (u128::from(ip) & mask) == (u128::from(Ipv6Addr::from(net)) & mask)
}

/// Classifies one IPv4 address; `None` means globally routable.
pub fn classify_v4(ip: Ipv4Addr) -> Option<Blocked> {
    // Cloud metadata and credential services live in these link-local blocks.
    if METADATA_V4.contains(&ip)
        || in_v4(ip, [169, 254, 169, 0], 24)
        || in_v4(ip, [169, 254, 170, 0], 24)
    {
        return Some(Blocked::Metadata);
    }
    let table: [([u8; 4], u32, Blocked); 17] = [
        ([0, 0, 0, 0], 8, Blocked::Special("\"this network\"")),
        ([10, 0, 0, 0], 8, Blocked::Private("private")),
        ([100, 64, 0, 0], 10, Blocked::Private("shared (CGNAT)")),
        ([127, 0, 0, 0], 8, Blocked::Private("loopback")),
        ([169, 254, 0, 0], 16, Blocked::Private("link-local")),
        ([172, 16, 0, 0], 12, Blocked::Private("private")),
        (
            [192, 0, 0, 0],
            24,
            Blocked::Special("IETF protocol assignment"),
        ),
        ([192, 0, 2, 0], 24, Blocked::Special("documentation")),
        ([192, 88, 99, 0], 24, Blocked::Special("6to4 relay anycast")),
        ([192, 168, 0, 0], 16, Blocked::Private("private")),
        ([198, 18, 0, 0], 15, Blocked::Private("benchmarking")),
        ([198, 51, 100, 0], 24, Blocked::Special("documentation")),
        ([203, 0, 113, 0], 24, Blocked::Special("documentation")),
        ([224, 0, 0, 0], 4, Blocked::Special("multicast")),
        ([240, 0, 0, 0], 4, Blocked::Special("reserved")),
        ([255, 255, 255, 255], 32, Blocked::Special("broadcast")),
        ([192, 31, 196, 0], 24, Blocked::Special("AS112")),
    ];
    table
        .iter()
        .find(|(net, bits, _)| in_v4(ip, *net, *bits))
        .map(|(_, _, b)| *b)
}

/// Classifies one IPv6 address; IPv4-mapped addresses are judged by the IPv4 inside.
pub fn classify_v6(ip: Ipv6Addr) -> Option<Blocked> {
    if METADATA_V6.contains(&ip)
        || in_v6(ip, [0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0], 32)
        || ip == Ipv6Addr::new(0xfd20, 0x00ce, 0, 0, 0, 0, 0, 0x254)
    {
        return Some(Blocked::Metadata);
    }
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    if ip == Ipv6Addr::LOCALHOST {
        return Some(Blocked::Private("loopback"));
    }
    if ip == Ipv6Addr::UNSPECIFIED {
        return Some(Blocked::Special("unspecified"));
    }
    let table: [([u16; 8], u32, Blocked); 12] = [
        (
            [0, 0, 0, 0, 0, 0, 0, 0],
            96,
            Blocked::Special("IPv4-compatible"),
        ),
        (
            [0, 0, 0, 0, 0xffff, 0, 0, 0],
            96,
            Blocked::Special("IPv4-translated"),
        ),
        (
            [0x64, 0xff9b, 0, 0, 0, 0, 0, 0],
            96,
            Blocked::Special("NAT64"),
        ),
        (
            [0x64, 0xff9b, 1, 0, 0, 0, 0, 0],
            48,
            Blocked::Special("local NAT64"),
        ),
        (
            [0x100, 0, 0, 0, 0, 0, 0, 0],
            64,
            Blocked::Special("discard-only"),
        ),
        (
            [0x2001, 0xdb8, 0, 0, 0, 0, 0, 0],
            32,
            Blocked::Special("documentation"),
        ),
        (
            [0x2001, 0, 0, 0, 0, 0, 0, 0],
            32,
            Blocked::Special("Teredo"),
        ),
        ([0x2002, 0, 0, 0, 0, 0, 0, 0], 16, Blocked::Special("6to4")),
        (
            [0xfc00, 0, 0, 0, 0, 0, 0, 0],
            7,
            Blocked::Private("unique-local"),
        ),
        (
            [0xfe80, 0, 0, 0, 0, 0, 0, 0],
            10,
            Blocked::Private("link-local"),
        ),
        (
            [0xfec0, 0, 0, 0, 0, 0, 0, 0],
            10,
            Blocked::Private("site-local"),
        ),
        (
            [0xff00, 0, 0, 0, 0, 0, 0, 0],
            8,
            Blocked::Special("multicast"),
        ),
    ];
    table
        .iter()
        .find(|(net, bits, _)| in_v6(ip, *net, *bits))
        .map(|(_, _, b)| *b)
        // Global unicast is 2000::/3 only; the rest of the space is reserved by the IETF
        // (e.g. `64:ff9c::1` routes nowhere a webhook should go).
        .or_else(|| {
            (!in_v6(ip, [0x2000, 0, 0, 0, 0, 0, 0, 0], 3)).then_some(Blocked::Special("reserved"))
        })
}

pub fn classify(ip: IpAddr) -> Option<Blocked> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Whether a delivery may connect to `ip`.
pub fn check(ip: IpAddr, allow_private: bool) -> Result<(), Blocked> {
    match classify(ip) {
        None => Ok(()),
        Some(Blocked::Private(_)) if allow_private => Ok(()),
        Some(blocked) => Err(blocked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn inner_and_special_addresses_are_blocked() {
        let blocked = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.0.1",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.8",
            "192.0.2.10",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "100.100.100.200",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "2001::1",
            "2001:db8::1",
            "2002:7f00:1::1",
            "fc00::1",
            "fd12:3456::1",
            "fd00:ec2::254",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "100::1",
            "::ffff:0:7f00:1",
            "::ffff:0:a00:1",
            "64:ff9c::1",
            "4000::1",
            "e000::1",
        ];
        for s in blocked {
            assert!(check(ip(s), false).is_err(), "{s} must be blocked");
        }
        assert!(blocked.len() >= 40);
    }

    #[test]
    fn globally_routable_addresses_are_allowed() {
        for s in [
            "1.1.1.1",
            "8.8.8.8",
            "93.184.216.34",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.169.0.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001::1",
            "::ffff:8.8.8.8",
        ] {
            assert_eq!(check(ip(s), false), Ok(()), "{s} must be allowed");
        }
    }

    #[test]
    fn the_flag_allows_private_ranges_but_never_metadata_or_special_ones() {
        for s in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.0.10",
            "::1",
            "fd12::1",
            "169.254.1.1",
        ] {
            assert_eq!(check(ip(s), true), Ok(()), "{s} with the flag");
        }
        for s in [
            "169.254.169.254",
            "fd00:ec2::254",
            "::ffff:169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "192.0.2.1",
        ] {
            assert!(
                check(ip(s), true).is_err(),
                "{s} stays blocked with the flag"
            );
        }
        assert_eq!(check(ip("169.254.169.254"), true), Err(Blocked::Metadata));
    }
}
