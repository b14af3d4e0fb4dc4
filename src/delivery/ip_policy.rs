//! Outbound address policy: the decision layer that keeps tenant-supplied
//! callback URLs away from the service's own network.
//!
//! # Threat model
//!
//! Tenants choose the URLs herald POSTs to. Without a check, a tenant could
//! point a callback at something only herald can reach — `127.0.0.1:6379`,
//! an admin port on a private network, a sidecar in the same pod, or a cloud
//! metadata endpoint such as `169.254.169.254` / `fd00:ec2::254` that hands
//! out credentials — and use herald as a proxy into it (server-side request
//! forgery). Anything that is not an ordinary public unicast address is
//! therefore refused: loopback, private and shared (CGNAT) space, link-local,
//! unique-local and site-local IPv6, multicast and broadcast, documentation
//! and benchmarking ranges, and the reserved and special-purpose blocks from
//! the IANA registries.
//!
//! # Where the check runs
//!
//! * **At connect time, on every resolved address.** The resolver that
//!   delivery connections use passes each address it gets through
//!   [`IpPolicy::check`] and drops the refused ones. Because the address
//!   checked is the address connected to, DNS rebinding (a name that resolves
//!   to a public address when validated and to `127.0.0.1` when used) gains
//!   nothing: there is no gap between check and use.
//! * **On IP-literal hosts, before any request.** HTTP clients connect to a
//!   literal host such as `http://2130706433/` or `http://[::1]/` directly,
//!   without asking the resolver. [`parse_host_ip`] recognises every spelling
//!   that WHATWG URL parsers (and so the `url` crate behind `reqwest`) accept
//!   as an IP address, so such a URL is checked, and refused, up front. The
//!   same applies to every redirect target, since a redirect to an IP literal
//!   also bypasses the resolver; and deliveries must not go through an HTTP
//!   proxy, which would do its own resolving and connecting.
//!
//! Nothing here performs network I/O: this module only decides.
//!
//! # Canonical form
//!
//! Every check first maps the address to its canonical form with
//! [`canonical`]. An IPv4-mapped address (`::ffff:a.b.c.d`) reaches the IPv4
//! host through a dual-stack socket and a NAT64 well-known-prefix address
//! (`64:ff9b::a.b.c.d`) through the translator, so both are judged, and
//! allow-listed, as the IPv4 address they carry; so is the deprecated
//! IPv4-compatible form (`::a.b.c.d`, except `::` and `::1`). Thus
//! `::ffff:127.0.0.1` is loopback, while `64:ff9b::8.8.8.8` (how DNS64
//! presents a public IPv4-only host on an IPv6-only network) stays usable.
//!
//! # Range decisions
//!
//! * **6to4 (`2002::/16`) is refused outright**, whatever IPv4 address it
//!   embeds. The mechanism is deprecated (RFC 7526) and no receiver needs it;
//!   refusing it removes any question of what a local 6to4 tunnel would do
//!   with an embedded private address. Its IPv4 relay range `192.88.99.0/24`
//!   is refused for the same reason.
//! * **Teredo (`2001::/32`)** embeds an obfuscated IPv4 address and is refused
//!   outright, as is the local-use NAT64 prefix `64:ff9b:1::/48`, whose
//!   embedding format is site-specific.
//! * The rest of the IETF protocol-assignment block `2001::/23` (benchmarking,
//!   ORCHID, anycast service addresses) is refused too: webhook receivers do
//!   not live there.
//! * IPv6 addresses outside the global unicast space `2000::/3` are refused.
//!   Besides the blocks with a reason of their own (`100::/64` discard-only,
//!   `5f00::/16` for SRv6, `fc00::/7`, `fe80::/10`, `fec0::/10`, `ff00::/8`),
//!   that covers any future special-purpose use of the unallocated space.
//!
//! # Allow-list
//!
//! Operators may open specific ranges (an internal receiver on `10.0.0.0/8`,
//! a test server on loopback) with an allow-list of [`Cidr`]s. An address is
//! allowed when an entry contains either the address as given or its
//! canonical form, so allow-listing `127.0.0.0/8` also admits
//! `::ffff:127.0.0.1`. Allow-list entries only ever widen the policy for the
//! ranges they name.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

// ---------------------------------------------------------------------------
// Cidr
// ---------------------------------------------------------------------------

/// A CIDR range, parsed from `"10.0.0.0/8"`, `"::1/128"` or a bare address
/// such as `"127.0.0.1"` (a single host: `/32` for IPv4, `/128` for IPv6).
///
/// The address must be the network address: `"10.0.0.1/8"` is rejected, since
/// it is almost always a typo for something else. A range holds addresses of
/// one family only; [`IpPolicy`] takes care of IPv4-mapped IPv6 addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    network: IpAddr,
    prefix_len: u8,
}

impl Cidr {
    const fn v4(a: u8, b: u8, c: u8, d: u8, prefix_len: u8) -> Self {
        Cidr {
            network: IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            prefix_len,
        }
    }

    const fn v6(segments: [u16; 8], prefix_len: u8) -> Self {
        let [a, b, c, d, e, f, g, h] = segments;
        Cidr {
            network: IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)),
            prefix_len,
        }
    }

    /// The first address of the range.
    pub fn network(&self) -> IpAddr {
        self.network
    }

    /// The number of leading bits every address in the range shares.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies in this range. An IPv4 range never contains an IPv6
    /// address and vice versa.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                (u32::from(net) ^ u32::from(ip)) & mask_v4(self.prefix_len) == 0
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                (u128::from(net) ^ u128::from(ip)) & mask_v6(self.prefix_len) == 0
            }
            _ => false,
        }
    }

    /// The last address of the range.
    #[cfg(test)]
    fn last(&self) -> IpAddr {
        match self.network {
            IpAddr::V4(net) => {
                IpAddr::V4(Ipv4Addr::from(u32::from(net) | !mask_v4(self.prefix_len)))
            }
            IpAddr::V6(net) => {
                IpAddr::V6(Ipv6Addr::from(u128::from(net) | !mask_v6(self.prefix_len)))
            }
        }
    }
}

fn mask_v4(prefix_len: u8) -> u32 {
    u32::MAX
        .checked_shl(32 - u32::from(prefix_len))
        .unwrap_or(0)
}

fn mask_v6(prefix_len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0)
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Cidr {
    type Err = CidrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| CidrError(CidrErrorKind::Address))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix {
            None => max,
            Some(p) if !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => p
                .parse::<u8>()
                .ok()
                .filter(|&len| len <= max)
                .ok_or(CidrError(CidrErrorKind::PrefixLength { max }))?,
            Some(_) => return Err(CidrError(CidrErrorKind::PrefixLength { max })),
        };
        let masked = match network {
            IpAddr::V4(ip) => IpAddr::V4(Ipv4Addr::from(u32::from(ip) & mask_v4(prefix_len))),
            IpAddr::V6(ip) => IpAddr::V6(Ipv6Addr::from(u128::from(ip) & mask_v6(prefix_len))),
        };
        if masked != network {
            return Err(CidrError(CidrErrorKind::HostBits {
                network: Cidr {
                    network: masked,
                    prefix_len,
                },
            }));
        }
        Ok(Cidr {
            network,
            prefix_len,
        })
    }
}

/// Why a string is not a valid [`Cidr`]. The message does not repeat the
/// input, so callers can prefix it with the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidrError(CidrErrorKind);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CidrErrorKind {
    Address,
    PrefixLength { max: u8 },
    HostBits { network: Cidr },
}

impl fmt::Display for CidrError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            CidrErrorKind::Address => f.write_str(
                "not an IP address or CIDR range (expected e.g. 10.0.0.0/8, fd00::/8 or 127.0.0.1)",
            ),
            CidrErrorKind::PrefixLength { max } => {
                write!(f, "prefix length must be a whole number from 0 to {max}")
            }
            CidrErrorKind::HostBits { network } => write!(
                f,
                "address has bits set beyond the prefix length (did you mean {network}?)"
            ),
        }
    }
}

impl std::error::Error for CidrError {}

// ---------------------------------------------------------------------------
// Classification
// ---------------------------------------------------------------------------

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockReason {
    /// `0.0.0.0/8` ("this network"; `0.0.0.0` reaches the local host) and `::`.
    Unspecified,
    /// `127.0.0.0/8` and `::1`.
    Loopback,
    /// RFC 1918 private networks: `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// Shared address space for carrier-grade NAT, `100.64.0.0/10`.
    Cgnat,
    /// `169.254.0.0/16` and `fe80::/10`; home of cloud metadata endpoints.
    LinkLocal,
    /// The limited broadcast address `255.255.255.255`.
    Broadcast,
    /// `224.0.0.0/4` and `ff00::/8`.
    Multicast,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15` and `2001:2::/48`.
    Benchmarking,
    /// Reserved or special-purpose space: `240.0.0.0/4`, `192.0.0.0/24`, the
    /// rest of `2001::/23`, and IPv6 outside `2000::/3`.
    Reserved,
    /// Unique local IPv6, `fc00::/7` (includes `fd00:ec2::254`).
    UniqueLocal,
    /// Deprecated site-local IPv6, `fec0::/10`.
    SiteLocal,
    /// 6to4: `2002::/16` and its relay anycast range `192.88.99.0/24`.
    SixToFour,
    /// Local-use NAT64 prefix `64:ff9b:1::/48`.
    Nat64,
    /// Teredo tunnelling, `2001::/32`.
    Teredo,
    /// Discard-only prefix `100::/64`.
    Discard,
    /// ORCHID overlay identifiers, `2001:10::/28` and `2001:20::/28`.
    Orchid,
    /// Segment identifiers for SRv6, `5f00::/16`.
    Srv6,
}

impl fmt::Display for BlockReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BlockReason::Unspecified => "unspecified or this-network address",
            BlockReason::Loopback => "loopback address",
            BlockReason::Private => "private network address",
            BlockReason::Cgnat => "carrier-grade NAT shared address",
            BlockReason::LinkLocal => "link-local address",
            BlockReason::Broadcast => "broadcast address",
            BlockReason::Multicast => "multicast address",
            BlockReason::Documentation => "documentation address",
            BlockReason::Benchmarking => "benchmarking address",
            BlockReason::Reserved => "reserved address",
            BlockReason::UniqueLocal => "unique local address",
            BlockReason::SiteLocal => "site-local address",
            BlockReason::SixToFour => "6to4 address",
            BlockReason::Nat64 => "local-use NAT64 address",
            BlockReason::Teredo => "Teredo address",
            BlockReason::Discard => "discard-only address",
            BlockReason::Orchid => "ORCHID address",
            BlockReason::Srv6 => "SRv6 segment identifier",
        })
    }
}

impl std::error::Error for BlockReason {}

/// Refused ranges, most specific first: the first entry containing the
/// canonical address decides the reason.
#[rustfmt::skip]
const BLOCKED: &[(Cidr, BlockReason)] = &[
    // IPv4 (RFC 6890 and the IANA IPv4 special-purpose registry).
    (Cidr::v4(0, 0, 0, 0, 8), BlockReason::Unspecified),
    (Cidr::v4(10, 0, 0, 0, 8), BlockReason::Private),
    (Cidr::v4(100, 64, 0, 0, 10), BlockReason::Cgnat),
    (Cidr::v4(127, 0, 0, 0, 8), BlockReason::Loopback),
    (Cidr::v4(169, 254, 0, 0, 16), BlockReason::LinkLocal),
    (Cidr::v4(172, 16, 0, 0, 12), BlockReason::Private),
    (Cidr::v4(192, 0, 0, 0, 24), BlockReason::Reserved),
    (Cidr::v4(192, 0, 2, 0, 24), BlockReason::Documentation),
    (Cidr::v4(192, 88, 99, 0, 24), BlockReason::SixToFour),
    (Cidr::v4(192, 168, 0, 0, 16), BlockReason::Private),
    (Cidr::v4(198, 18, 0, 0, 15), BlockReason::Benchmarking),
    (Cidr::v4(198, 51, 100, 0, 24), BlockReason::Documentation),
    (Cidr::v4(203, 0, 113, 0, 24), BlockReason::Documentation),
    (Cidr::v4(224, 0, 0, 0, 4), BlockReason::Multicast),
    (Cidr::v4(255, 255, 255, 255, 32), BlockReason::Broadcast),
    (Cidr::v4(240, 0, 0, 0, 4), BlockReason::Reserved),
    // IPv6 (IANA IPv6 special-purpose registry). IPv4-mapped, IPv4-compatible
    // and 64:ff9b::/96 addresses never get here: they are canonicalised to IPv4.
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 128), BlockReason::Unspecified),
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 1], 128), BlockReason::Loopback),
    (Cidr::v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), BlockReason::Nat64),
    (Cidr::v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), BlockReason::Discard),
    (Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 32), BlockReason::Teredo),
    (Cidr::v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), BlockReason::Benchmarking),
    (Cidr::v6([0x2001, 0x10, 0, 0, 0, 0, 0, 0], 28), BlockReason::Orchid),
    (Cidr::v6([0x2001, 0x20, 0, 0, 0, 0, 0, 0], 28), BlockReason::Orchid),
    (Cidr::v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), BlockReason::Reserved),
    (Cidr::v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), BlockReason::Documentation),
    (Cidr::v6([0x2002, 0, 0, 0, 0, 0, 0, 0], 16), BlockReason::SixToFour),
    (Cidr::v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), BlockReason::Documentation),
    (Cidr::v6([0x5f00, 0, 0, 0, 0, 0, 0, 0], 16), BlockReason::Srv6),
    (Cidr::v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), BlockReason::UniqueLocal),
    (Cidr::v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), BlockReason::LinkLocal),
    (Cidr::v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), BlockReason::SiteLocal),
    (Cidr::v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8), BlockReason::Multicast),
    // Everything outside global unicast 2000::/3.
    (Cidr::v6([0, 0, 0, 0, 0, 0, 0, 0], 3), BlockReason::Reserved),
    (Cidr::v6([0x4000, 0, 0, 0, 0, 0, 0, 0], 2), BlockReason::Reserved),
    (Cidr::v6([0x8000, 0, 0, 0, 0, 0, 0, 0], 1), BlockReason::Reserved),
];

/// The canonical form used for all checks.
///
/// An IPv6 address that carries an IPv4 destination becomes that IPv4
/// address: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible `::a.b.c.d` (but
/// `::` and `::1` keep their IPv6 meaning) and NAT64 well-known-prefix
/// `64:ff9b::a.b.c.d`. Every other address is returned unchanged.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let bits = u128::from(v6);
    let embeds_v4 = match bits >> 32 {
        // ::ffff:0:0/96 and 64:ff9b::/96
        0xffff | 0x0064_ff9b_0000_0000_0000_0000 => true,
        // ::/96, except :: and ::1
        0 => bits > 1,
        _ => false,
    };
    if embeds_v4 {
        let [.., a, b, c, d] = v6.octets();
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    } else {
        ip
    }
}

/// Classifies an address after mapping it to its [`canonical`] form.
/// `None` means an ordinary public address.
///
/// IPv4-mapped (`::ffff:a.b.c.d`) and IPv4-compatible (`::a.b.c.d`) forms are
/// judged as the IPv4 address they carry, as are NAT64 well-known-prefix
/// addresses (`64:ff9b::/96`). 6to4 (`2002::/16`), Teredo (`2001::/32`) and
/// local-use NAT64 (`64:ff9b:1::/48`) are refused whatever they embed.
pub fn classify(ip: IpAddr) -> Option<BlockReason> {
    classify_canonical(canonical(ip))
}

fn classify_canonical(ip: IpAddr) -> Option<BlockReason> {
    BLOCKED
        .iter()
        .find(|(range, _)| range.contains(ip))
        .map(|&(_, reason)| reason)
}

// ---------------------------------------------------------------------------
// Policy
// ---------------------------------------------------------------------------

/// The outbound address policy: every non-public range is refused unless the
/// operator allow-listed it. The default policy has an empty allow-list.
#[derive(Debug, Clone, Default)]
pub struct IpPolicy {
    allow: Vec<Cidr>,
}

impl IpPolicy {
    /// A policy that additionally admits the ranges in `allow`.
    pub fn new(allow: Vec<Cidr>) -> Self {
        IpPolicy { allow }
    }

    /// `Ok(())` when `ip` may be contacted: it is public, or an allow-list
    /// entry contains it as given or in its [`canonical`] form.
    ///
    /// # Errors
    ///
    /// Returns why `ip` is refused when it lies in a blocked range that no
    /// allow-list entry opens.
    pub fn check(&self, ip: IpAddr) -> Result<(), BlockReason> {
        let canonical = canonical(ip);
        let Some(reason) = classify_canonical(canonical) else {
            return Ok(());
        };
        if self
            .allow
            .iter()
            .any(|range| range.contains(ip) || range.contains(canonical))
        {
            Ok(())
        } else {
            Err(reason)
        }
    }
}

// ---------------------------------------------------------------------------
// Host parsing
// ---------------------------------------------------------------------------

/// Parses a URL host as an IP literal exactly as WHATWG URL parsers (the
/// `url` crate behind `reqwest`, and browsers) do, so that every spelling a
/// client would connect to as an address is recognised here. Returns `None`
/// for a domain name, which is resolved and checked address by address.
///
/// Pass the host alone — `url.host_str()` or the raw text between `//` (and
/// any userinfo) and the port; a `host:port` string is not a host. Accepted:
///
/// * dotted decimal `127.0.0.1`, with an optional trailing dot;
/// * one to four parts, each decimal, octal (leading `0`) or hexadecimal
///   (`0x`), the last part filling the remaining bytes: `2130706433`,
///   `0177.0.0.1`, `0x7f000001`, `0x7f.1`, `127.1`, `127.0.1`;
/// * the same after percent-decoding and after the UTS #46 mapping applied to
///   domain names (so `%31%32%37.0.0.1`, full-width `１２７。０。０。１` and
///   circled `①②⑦.0.0.1` are `127.0.0.1`); ASCII tab and newline are
///   ignored, as URL parsers strip them;
/// * bracketed IPv6 `[::1]`, `[::ffff:127.0.0.1]`, with a zone identifier
///   (`[fe80::1%25eth0]`, `[fe80::1%eth0]`) stripped, and bare IPv6 `::1`.
///
/// A host that URL parsers reject outright (such as `1.2.3.256` or
/// `1.2.3.4.5`, which end in a number but are not valid IPv4) also yields
/// `None`: no request can be made to it, and resolving it as a name is
/// covered by the connect-time check.
pub fn parse_host_ip(host: &str) -> Option<IpAddr> {
    let host: String = host
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    if let Some(inner) = host.strip_prefix('[') {
        return parse_ipv6(inner.strip_suffix(']')?).map(IpAddr::V6);
    }
    if host.contains(':') {
        // Not valid in a URL, but unambiguous: no domain name contains ':'.
        return parse_ipv6(&host).map(IpAddr::V6);
    }
    let host = fold_domain(&host)?;
    if ends_in_a_number(&host) {
        parse_ipv4(&host).map(IpAddr::V4)
    } else {
        None
    }
}

/// IPv6 text with an optional zone identifier. The WHATWG parser is the
/// reference; the standard library's parser is tried too so that anything
/// either accepts counts as an address.
fn parse_ipv6(text: &str) -> Option<Ipv6Addr> {
    let text = text.split_once('%').map_or(text, |(addr, _zone)| addr);
    parse_ipv6_whatwg(text).or_else(|| text.parse().ok())
}

/// The WHATWG "IPv6 parser" (<https://url.spec.whatwg.org/#concept-ipv6-parser>).
fn parse_ipv6_whatwg(input: &str) -> Option<Ipv6Addr> {
    let input = input.as_bytes();
    let at = |i: usize| input.get(i).copied();
    let mut address = [0u16; 8];
    let mut piece_index = 0;
    let mut compress = None;
    let mut p = 0;

    if at(p) == Some(b':') {
        if at(p + 1) != Some(b':') {
            return None;
        }
        p += 2;
        piece_index += 1;
        compress = Some(piece_index);
    }
    while let Some(c) = at(p) {
        if piece_index == 8 {
            return None;
        }
        if c == b':' {
            if compress.is_some() {
                return None;
            }
            p += 1;
            piece_index += 1;
            compress = Some(piece_index);
            continue;
        }
        let mut value = 0u16;
        let mut length = 0;
        while length < 4 {
            let Some(digit) = at(p).and_then(hex_digit) else {
                break;
            };
            value = value * 0x10 + u16::from(digit);
            p += 1;
            length += 1;
        }
        match at(p) {
            Some(b'.') => {
                // An embedded dotted-decimal IPv4 address ends the input.
                if length == 0 || piece_index > 6 {
                    return None;
                }
                p -= length;
                let mut numbers_seen = 0;
                while let Some(c) = at(p) {
                    if numbers_seen > 0 {
                        if c == b'.' && numbers_seen < 4 {
                            p += 1;
                        } else {
                            return None;
                        }
                    }
                    let mut piece: Option<u16> = None;
                    while let Some(d) = at(p).filter(u8::is_ascii_digit) {
                        let d = u16::from(d - b'0');
                        piece = match piece {
                            None => Some(d),
                            Some(0) => return None, // no leading zeros
                            Some(v) => Some(v * 10 + d),
                        };
                        if piece > Some(255) {
                            return None;
                        }
                        p += 1;
                    }
                    address[piece_index] = address[piece_index] * 0x100 + piece?;
                    numbers_seen += 1;
                    if numbers_seen == 2 || numbers_seen == 4 {
                        piece_index += 1;
                    }
                }
                if numbers_seen != 4 {
                    return None;
                }
                break;
            }
            Some(b':') => {
                p += 1;
                at(p)?; // a trailing ':' is an error
            }
            Some(_) => return None,
            None => {}
        }
        address[piece_index] = value;
        piece_index += 1;
    }

    match compress {
        Some(compress) => {
            let mut swaps = piece_index - compress;
            piece_index = 7;
            while piece_index != 0 && swaps > 0 {
                address.swap(piece_index, compress + swaps - 1);
                piece_index -= 1;
                swaps -= 1;
            }
        }
        None if piece_index != 8 => return None,
        None => {}
    }
    Some(Ipv6Addr::from(address))
}

fn hex_digit(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// What a URL parser does to a non-bracketed host before looking for an IPv4
/// address: percent-decode it, then apply the UTS #46 mapping. ASCII is left
/// as it is (the number syntax accepts either case). `None` when the result
/// cannot be an IPv4 address because a character maps to something IPv4
/// syntax does not use: a domain name, or a host URL parsers reject.
fn fold_domain(host: &str) -> Option<String> {
    let bytes = host.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes[i..] {
            [b'%', hi, lo, ..] => hex_digit(hi).zip(hex_digit(lo)),
            _ => None,
        };
        if let Some((hi, lo)) = escaped {
            decoded.push(hi << 4 | lo);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    let decoded = String::from_utf8(decoded).ok()?;
    let mut folded = String::with_capacity(decoded.len());
    for c in decoded.chars() {
        if c.is_ascii() {
            folded.push(c);
        } else if !push_uts46_numeric(&mut folded, c) {
            return None;
        }
    }
    Some(folded)
}

/// Appends the UTS #46 mapping of the non-ASCII character `c` when it maps
/// to ASCII digits, `a`-`f`, `x` or `.` (or is ignored, mapping to nothing);
/// returns `false` when it maps to anything else.
fn push_uts46_numeric(out: &mut String, c: char) -> bool {
    let cp = u32::from(c);
    let i = UTS46_NUMERIC.partition_point(|&(first, _, _)| first <= cp);
    let Some(&(first, last, to)) = i.checked_sub(1).and_then(|i| UTS46_NUMERIC.get(i)) else {
        return false;
    };
    if cp > last {
        return false;
    }
    match (to.as_bytes(), u8::try_from(cp - first)) {
        // A run of consecutive characters mapping to consecutive ASCII ones.
        (&[base], Ok(offset)) => out.push(char::from(base + offset)),
        // Multi-character and empty mappings.
        _ => out.push_str(to),
    }
    true
}

/// WHATWG "ends in a number" (<https://url.spec.whatwg.org/#ends-in-a-number-checker>).
fn ends_in_a_number(host: &str) -> bool {
    let mut parts = host.rsplit('.');
    let mut last = parts.next().unwrap_or_default();
    if last.is_empty() {
        match parts.next() {
            Some(part) => last = part,
            None => return false,
        }
    }
    (!last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()))
        || parse_ipv4_number(last).is_some()
}

/// WHATWG "IPv4 number parser": decimal, octal after a leading `0`, hex after
/// `0x`; an empty number after the prefix is zero. Values too large for 32
/// bits saturate (they are rejected later, not here).
fn parse_ipv4_number(part: &str) -> Option<u64> {
    if part.is_empty() {
        return None;
    }
    let (digits, radix) =
        if let Some(hex) = part.strip_prefix("0x").or_else(|| part.strip_prefix("0X")) {
            (hex, 16)
        } else if let Some(octal) = part.strip_prefix('0').filter(|rest| !rest.is_empty()) {
            (octal, 8)
        } else {
            (part, 10)
        };
    digits.chars().try_fold(0u64, |n, c| {
        let digit = c.to_digit(radix)?;
        Some(
            n.saturating_mul(u64::from(radix))
                .saturating_add(u64::from(digit)),
        )
    })
}

/// WHATWG "IPv4 parser" (<https://url.spec.whatwg.org/#concept-ipv4-parser>).
fn parse_ipv4(host: &str) -> Option<Ipv4Addr> {
    let host = host.strip_suffix('.').unwrap_or(host);
    let mut numbers = [0u64; 4];
    let mut count = 0;
    for part in host.split('.') {
        *numbers.get_mut(count)? = parse_ipv4_number(part)?;
        count += 1;
    }
    let (&last, leading) = numbers[..count].split_last()?;
    // Each leading part is one byte; the last fills the remaining 5 - count bytes.
    if leading.iter().any(|&n| n > 255) || last >> (8 * (5 - count)) != 0 {
        return None;
    }
    let value = leading
        .iter()
        .enumerate()
        .fold(last, |acc, (i, &n)| acc | n << (8 * (3 - i)));
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// Non-ASCII characters whose UTS #46 (Unicode 17.0) mapping consists only of
/// ASCII digits, `a`-`f`, `x` and `.`, or which UTS #46 ignores (empty
/// mapping). Entries are `(first, last, mapping)`: a single character, or a
/// run whose characters map to consecutive ASCII characters starting at
/// `mapping`. Characters mapping to anything else cannot occur in an IPv4
/// host, so they need no entry.
#[rustfmt::skip]
const UTS46_NUMERIC: &[(u32, u32, &str)] = &[
    (0x00AA, 0x00AA, "a"), (0x00AD, 0x00AD, ""), (0x00B2, 0x00B3, "2"), (0x00B9, 0x00B9, "1"),
    (0x02E3, 0x02E3, "x"), (0x034F, 0x034F, ""), (0x115F, 0x1160, ""), (0x17B4, 0x17B5, ""),
    (0x180B, 0x180F, ""), (0x1D2C, 0x1D2C, "a"), (0x1D2E, 0x1D2E, "b"), (0x1D30, 0x1D31, "d"),
    (0x1D43, 0x1D43, "a"), (0x1D47, 0x1D47, "b"), (0x1D48, 0x1D49, "d"), (0x1D9C, 0x1D9C, "c"),
    (0x1DA0, 0x1DA0, "f"), (0x200B, 0x200B, ""), (0x2060, 0x2064, ""), (0x206A, 0x206F, ""),
    (0x2070, 0x2070, "0"), (0x2074, 0x2079, "4"), (0x2080, 0x2089, "0"), (0x2090, 0x2090, "a"),
    (0x2091, 0x2091, "e"), (0x2093, 0x2093, "x"), (0x2102, 0x2102, "c"), (0x212C, 0x212D, "b"),
    (0x212F, 0x212F, "e"), (0x2130, 0x2131, "e"), (0x213B, 0x213B, "fax"),
    (0x2145, 0x2145, "d"), (0x2146, 0x2147, "d"), (0x2169, 0x2169, "x"), (0x216D, 0x216E, "c"),
    (0x2179, 0x2179, "x"), (0x217D, 0x217E, "c"), (0x2460, 0x2468, "1"), (0x2469, 0x2469, "10"),
    (0x246A, 0x246A, "11"), (0x246B, 0x246B, "12"), (0x246C, 0x246C, "13"),
    (0x246D, 0x246D, "14"), (0x246E, 0x246E, "15"), (0x246F, 0x246F, "16"),
    (0x2470, 0x2470, "17"), (0x2471, 0x2471, "18"), (0x2472, 0x2472, "19"),
    (0x2473, 0x2473, "20"), (0x24B6, 0x24BB, "a"), (0x24CD, 0x24CD, "x"), (0x24D0, 0x24D5, "a"),
    (0x24E7, 0x24E7, "x"), (0x24EA, 0x24EA, "0"), (0x3002, 0x3002, "."), (0x3164, 0x3164, ""),
    (0x3251, 0x3251, "21"), (0x3252, 0x3252, "22"), (0x3253, 0x3253, "23"),
    (0x3254, 0x3254, "24"), (0x3255, 0x3255, "25"), (0x3256, 0x3256, "26"),
    (0x3257, 0x3257, "27"), (0x3258, 0x3258, "28"), (0x3259, 0x3259, "29"),
    (0x325A, 0x325A, "30"), (0x325B, 0x325B, "31"), (0x325C, 0x325C, "32"),
    (0x325D, 0x325D, "33"), (0x325E, 0x325E, "34"), (0x325F, 0x325F, "35"),
    (0x32B1, 0x32B1, "36"), (0x32B2, 0x32B2, "37"), (0x32B3, 0x32B3, "38"),
    (0x32B4, 0x32B4, "39"), (0x32B5, 0x32B5, "40"), (0x32B6, 0x32B6, "41"),
    (0x32B7, 0x32B7, "42"), (0x32B8, 0x32B8, "43"), (0x32B9, 0x32B9, "44"),
    (0x32BA, 0x32BA, "45"), (0x32BB, 0x32BB, "46"), (0x32BC, 0x32BC, "47"),
    (0x32BD, 0x32BD, "48"), (0x32BE, 0x32BE, "49"), (0x32BF, 0x32BF, "50"),
    (0x3372, 0x3372, "da"), (0x33C4, 0x33C4, "cc"), (0x33C5, 0x33C5, "cd"),
    (0x33C8, 0x33C8, "db"), (0xA7F2, 0xA7F2, "c"), (0xA7F3, 0xA7F3, "f"),
    (0xFB00, 0xFB00, "ff"), (0xFE00, 0xFE0F, ""), (0xFEFF, 0xFEFF, ""), (0xFF0E, 0xFF0E, "."),
    (0xFF10, 0xFF19, "0"), (0xFF21, 0xFF26, "a"), (0xFF38, 0xFF38, "x"), (0xFF41, 0xFF46, "a"),
    (0xFF58, 0xFF58, "x"), (0xFF61, 0xFF61, "."), (0xFFA0, 0xFFA0, ""), (0x1BCA0, 0x1BCA3, ""),
    (0x1CCD6, 0x1CCDB, "a"), (0x1CCED, 0x1CCED, "x"), (0x1CCF0, 0x1CCF9, "0"),
    (0x1D173, 0x1D17A, ""), (0x1D400, 0x1D405, "a"), (0x1D417, 0x1D417, "x"),
    (0x1D41A, 0x1D41F, "a"), (0x1D431, 0x1D431, "x"), (0x1D434, 0x1D439, "a"),
    (0x1D44B, 0x1D44B, "x"), (0x1D44E, 0x1D453, "a"), (0x1D465, 0x1D465, "x"),
    (0x1D468, 0x1D46D, "a"), (0x1D47F, 0x1D47F, "x"), (0x1D482, 0x1D487, "a"),
    (0x1D499, 0x1D499, "x"), (0x1D49C, 0x1D49C, "a"), (0x1D49E, 0x1D49F, "c"),
    (0x1D4B3, 0x1D4B3, "x"), (0x1D4B6, 0x1D4B9, "a"), (0x1D4BB, 0x1D4BB, "f"),
    (0x1D4CD, 0x1D4CD, "x"), (0x1D4D0, 0x1D4D5, "a"), (0x1D4E7, 0x1D4E7, "x"),
    (0x1D4EA, 0x1D4EF, "a"), (0x1D501, 0x1D501, "x"), (0x1D504, 0x1D505, "a"),
    (0x1D507, 0x1D509, "d"), (0x1D51B, 0x1D51B, "x"), (0x1D51E, 0x1D523, "a"),
    (0x1D535, 0x1D535, "x"), (0x1D538, 0x1D539, "a"), (0x1D53B, 0x1D53D, "d"),
    (0x1D54F, 0x1D54F, "x"), (0x1D552, 0x1D557, "a"), (0x1D569, 0x1D569, "x"),
    (0x1D56C, 0x1D571, "a"), (0x1D583, 0x1D583, "x"), (0x1D586, 0x1D58B, "a"),
    (0x1D59D, 0x1D59D, "x"), (0x1D5A0, 0x1D5A5, "a"), (0x1D5B7, 0x1D5B7, "x"),
    (0x1D5BA, 0x1D5BF, "a"), (0x1D5D1, 0x1D5D1, "x"), (0x1D5D4, 0x1D5D9, "a"),
    (0x1D5EB, 0x1D5EB, "x"), (0x1D5EE, 0x1D5F3, "a"), (0x1D605, 0x1D605, "x"),
    (0x1D608, 0x1D60D, "a"), (0x1D61F, 0x1D61F, "x"), (0x1D622, 0x1D627, "a"),
    (0x1D639, 0x1D639, "x"), (0x1D63C, 0x1D641, "a"), (0x1D653, 0x1D653, "x"),
    (0x1D656, 0x1D65B, "a"), (0x1D66D, 0x1D66D, "x"), (0x1D670, 0x1D675, "a"),
    (0x1D687, 0x1D687, "x"), (0x1D68A, 0x1D68F, "a"), (0x1D6A1, 0x1D6A1, "x"),
    (0x1D7CE, 0x1D7D7, "0"), (0x1D7D8, 0x1D7E1, "0"), (0x1D7E2, 0x1D7EB, "0"),
    (0x1D7EC, 0x1D7F5, "0"), (0x1D7F6, 0x1D7FF, "0"), (0x1F12B, 0x1F12B, "c"),
    (0x1F12D, 0x1F12D, "cd"), (0x1F130, 0x1F135, "a"), (0x1F147, 0x1F147, "x"),
    (0x1FBF0, 0x1FBF9, "0"), (0xE0100, 0xE01EF, ""),
];

#[cfg(test)]
mod tests {
    use super::*;
    use BlockReason::*;

    /// The decision for a host under a policy.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Want {
        /// An IP literal that may be contacted.
        Public,
        /// An IP literal that is refused.
        Blocked(BlockReason),
        /// Not an IP literal: a domain name, or a host URL parsers reject.
        NotIp,
    }
    use Want::{Blocked, NotIp, Public};

    /// (host as written in a URL, the address it denotes, decision under the
    /// default policy).
    #[rustfmt::skip]
    const HOSTS: &[(&str, Option<&str>, Want)] = &[
        // Loopback, in every spelling URL parsers accept.
        ("127.0.0.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("2130706433", Some("127.0.0.1"), Blocked(Loopback)),
        ("0177.0.0.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("0x7f000001", Some("127.0.0.1"), Blocked(Loopback)),
        ("0X7F000001", Some("127.0.0.1"), Blocked(Loopback)),
        ("0x7f.0.0.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("0x7f.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("127.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("127.0.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("0177.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("017700000001", Some("127.0.0.1"), Blocked(Loopback)),
        ("0x7f.0x0.0x0.0x1", Some("127.0.0.1"), Blocked(Loopback)),
        ("127.000.000.001", Some("127.0.0.1"), Blocked(Loopback)),
        ("0x0000000000000000007f.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("127.0.0.1.", Some("127.0.0.1"), Blocked(Loopback)),
        ("127.255.255.254", Some("127.255.255.254"), Blocked(Loopback)),
        ("%31%32%37.0.0.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("127%2e0%2E0%2e1", Some("127.0.0.1"), Blocked(Loopback)),
        ("\u{ff11}\u{ff12}\u{ff17}\u{3002}\u{ff10}\u{3002}\u{ff10}\u{3002}\u{ff11}", Some("127.0.0.1"), Blocked(Loopback)),
        ("\u{2460}\u{2461}\u{2466}.0.0.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("0\u{ff38}7f.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("0x7\u{ad}f.1", Some("127.0.0.1"), Blocked(Loopback)),
        ("127.0.0.\t1", Some("127.0.0.1"), Blocked(Loopback)),
        ("[::1]", Some("::1"), Blocked(Loopback)),
        ("[0000:0000:0000:0000:0000:0000:0000:0001]", Some("::1"), Blocked(Loopback)),
        ("[::1%25lo]", Some("::1"), Blocked(Loopback)),
        ("[::ffff:127.0.0.1]", Some("::ffff:127.0.0.1"), Blocked(Loopback)),
        ("[::ffff:7f00:1]", Some("::ffff:127.0.0.1"), Blocked(Loopback)),
        ("[::FFFF:7F00:0001]", Some("::ffff:127.0.0.1"), Blocked(Loopback)),
        ("[0:0:0:0:0:ffff:127.0.0.1]", Some("::ffff:127.0.0.1"), Blocked(Loopback)),
        ("[::127.0.0.1]", Some("::127.0.0.1"), Blocked(Loopback)),
        ("[64:ff9b::127.0.0.1]", Some("64:ff9b::7f00:1"), Blocked(Loopback)),
        ("64:ff9b::7f00:1", Some("64:ff9b::7f00:1"), Blocked(Loopback)),
        // Link-local and cloud metadata.
        ("169.254.169.254", Some("169.254.169.254"), Blocked(LinkLocal)),
        ("2852039166", Some("169.254.169.254"), Blocked(LinkLocal)),
        ("0xa9fea9fe", Some("169.254.169.254"), Blocked(LinkLocal)),
        ("0251.0376.0251.0376", Some("169.254.169.254"), Blocked(LinkLocal)),
        ("169.254.43518", Some("169.254.169.254"), Blocked(LinkLocal)),
        ("[::ffff:169.254.169.254]", Some("::ffff:169.254.169.254"), Blocked(LinkLocal)),
        ("[fe80::1%25eth0]", Some("fe80::1"), Blocked(LinkLocal)),
        ("[fe80::1%eth0]", Some("fe80::1"), Blocked(LinkLocal)),
        ("[fd00:ec2::254]", Some("fd00:ec2::254"), Blocked(UniqueLocal)),
        ("[fd00::1]", Some("fd00::1"), Blocked(UniqueLocal)),
        ("[fc00::1]", Some("fc00::1"), Blocked(UniqueLocal)),
        // Transition mechanisms.
        ("2002:7f00:1::", Some("2002:7f00:1::"), Blocked(SixToFour)),
        ("[2002:808:808::1]", Some("2002:808:808::1"), Blocked(SixToFour)),
        ("[64:ff9b::808:808]", Some("64:ff9b::808:808"), Public),
        ("[64:ff9b::a00:1]", Some("64:ff9b::a00:1"), Blocked(Private)),
        ("[64:ff9b:1::a00:1]", Some("64:ff9b:1::a00:1"), Blocked(Nat64)),
        ("[2001:0:4136:e378:8000:63bf:3fff:fdd2]", Some("2001:0:4136:e378:8000:63bf:3fff:fdd2"), Blocked(Teredo)),
        ("[::ffff:0:a00:1]", Some("::ffff:0:a00:1"), Blocked(Reserved)),
        // Other special-purpose IPv6.
        ("[::]", Some("::"), Blocked(Unspecified)),
        ("[2001:db8::1]", Some("2001:db8::1"), Blocked(Documentation)),
        ("[3fff::1]", Some("3fff::1"), Blocked(Documentation)),
        ("[100::1]", Some("100::1"), Blocked(Discard)),
        ("[fec0::1]", Some("fec0::1"), Blocked(SiteLocal)),
        ("[ff02::1]", Some("ff02::1"), Blocked(Multicast)),
        ("[5f00::1]", Some("5f00::1"), Blocked(Srv6)),
        ("[2001:10::1]", Some("2001:10::1"), Blocked(Orchid)),
        ("[2001:2::1]", Some("2001:2::1"), Blocked(Benchmarking)),
        // Other special-purpose IPv4.
        ("0.0.0.0", Some("0.0.0.0"), Blocked(Unspecified)),
        ("0", Some("0.0.0.0"), Blocked(Unspecified)),
        ("0x", Some("0.0.0.0"), Blocked(Unspecified)),
        ("0.1.2.3", Some("0.1.2.3"), Blocked(Unspecified)),
        ("100.64.0.1", Some("100.64.0.1"), Blocked(Cgnat)),
        ("255.255.255.255", Some("255.255.255.255"), Blocked(Broadcast)),
        ("4294967295", Some("255.255.255.255"), Blocked(Broadcast)),
        ("0xffffffff", Some("255.255.255.255"), Blocked(Broadcast)),
        ("224.0.0.1", Some("224.0.0.1"), Blocked(Multicast)),
        ("239.255.255.250", Some("239.255.255.250"), Blocked(Multicast)),
        ("240.0.0.1", Some("240.0.0.1"), Blocked(Reserved)),
        ("10.1.2.3", Some("10.1.2.3"), Blocked(Private)),
        ("012.1.2.3", Some("10.1.2.3"), Blocked(Private)),
        ("167837953", Some("10.1.1.1"), Blocked(Private)),
        ("172.16.0.1", Some("172.16.0.1"), Blocked(Private)),
        ("172.31.255.255", Some("172.31.255.255"), Blocked(Private)),
        ("172.32.0.1", Some("172.32.0.1"), Public),
        ("172.15.255.255", Some("172.15.255.255"), Public),
        ("192.168.1.1", Some("192.168.1.1"), Blocked(Private)),
        ("192.168.257", Some("192.168.1.1"), Blocked(Private)),
        ("198.18.0.1", Some("198.18.0.1"), Blocked(Benchmarking)),
        ("192.0.2.1", Some("192.0.2.1"), Blocked(Documentation)),
        ("198.51.100.7", Some("198.51.100.7"), Blocked(Documentation)),
        ("203.0.113.9", Some("203.0.113.9"), Blocked(Documentation)),
        ("192.0.0.8", Some("192.0.0.8"), Blocked(Reserved)),
        ("192.88.99.1", Some("192.88.99.1"), Blocked(SixToFour)),
        // Public addresses.
        ("8.8.8.8", Some("8.8.8.8"), Public),
        ("1.1.1.1", Some("1.1.1.1"), Public),
        ("93.184.216.34", Some("93.184.216.34"), Public),
        ("134744072", Some("8.8.8.8"), Public),
        ("0x08080808", Some("8.8.8.8"), Public),
        ("100.128.0.1", Some("100.128.0.1"), Public),
        ("[2606:4700:4700::1111]", Some("2606:4700:4700::1111"), Public),
        ("[2a00:1450:4001:80b::200e]", Some("2a00:1450:4001:80b::200e"), Public),
        ("[::ffff:8.8.8.8]", Some("::ffff:8.8.8.8"), Public),
        // Domain names, left to the connect-time check.
        ("example.com", None, NotIp),
        ("localhost", None, NotIp),
        ("127.0.0.1.nip.io", None, NotIp),
        ("0x7f.example", None, NotIp),
        ("0x1g", None, NotIp),
        ("xn--mnchen-3ya.de", None, NotIp),
        ("m\u{fc}nchen.de", None, NotIp),
        ("\u{ff47}.com", None, NotIp),
        // Hosts URL parsers reject: never requested, so nothing to check.
        ("1.2.3.4.5", None, NotIp),
        ("256.0.0.1", None, NotIp),
        ("1.2.3.256", None, NotIp),
        ("4294967296", None, NotIp),
        ("08.0.0.1", None, NotIp),
        ("127.0.0.1..", None, NotIp),
        ("127..0.1", None, NotIp),
        ("", None, NotIp),
        ("[::1", None, NotIp),
        ("[1:2:3:4:5:6:7:8:9]", None, NotIp),
        ("[0:0:0:0:0:0:0::1]", None, NotIp),
        ("[::ffff:127.0.0.01]", None, NotIp),
        ("127.0.0.1:8080", None, NotIp), // a port is not part of the host
    ];

    fn decide(policy: &IpPolicy, ip: Option<IpAddr>) -> Want {
        match ip.map(|ip| policy.check(ip)) {
            None => NotIp,
            Some(Ok(())) => Public,
            Some(Err(reason)) => Blocked(reason),
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse()
            .unwrap_or_else(|e| panic!("test data {text:?} is not an address: {e}"))
    }

    fn report(failures: &[String], total: usize) {
        assert!(
            failures.is_empty(),
            "{} of {total} cases failed:\n  {}",
            failures.len(),
            failures.join("\n  ")
        );
    }

    #[test]
    fn host_corpus() {
        let policy = IpPolicy::default();
        let mut failures = Vec::new();
        for &(host, addr, want) in HOSTS {
            assert_eq!(
                addr.is_none(),
                want == NotIp,
                "inconsistent row for {host:?}"
            );
            let parsed = parse_host_ip(host);
            let expected = addr.map(ip);
            if parsed != expected {
                failures.push(format!(
                    "{host:?}: parsed as {parsed:?}, expected {expected:?}"
                ));
                continue;
            }
            let got = decide(&policy, parsed);
            if got != want {
                failures.push(format!(
                    "{host:?} ({parsed:?}): got {got:?}, expected {want:?}"
                ));
            }
        }
        report(&failures, HOSTS.len());
    }

    /// First and last address of each range, and the neighbours just outside.
    #[rustfmt::skip]
    const BOUNDARIES: &[(&str, Option<BlockReason>)] = &[
        ("0.0.0.0", Some(Unspecified)),
        ("0.255.255.255", Some(Unspecified)),
        ("1.0.0.0", None),
        ("9.255.255.255", None),
        ("10.0.0.0", Some(Private)),
        ("10.255.255.255", Some(Private)),
        ("11.0.0.0", None),
        ("100.63.255.255", None),
        ("100.64.0.0", Some(Cgnat)),
        ("100.127.255.255", Some(Cgnat)),
        ("100.128.0.0", None),
        ("126.255.255.255", None),
        ("127.0.0.0", Some(Loopback)),
        ("127.255.255.255", Some(Loopback)),
        ("128.0.0.0", None),
        ("169.253.255.255", None),
        ("169.254.0.0", Some(LinkLocal)),
        ("169.254.255.255", Some(LinkLocal)),
        ("169.255.0.0", None),
        ("172.15.255.255", None),
        ("172.16.0.0", Some(Private)),
        ("172.31.255.255", Some(Private)),
        ("172.32.0.0", None),
        ("191.255.255.255", None),
        ("192.0.0.0", Some(Reserved)),
        ("192.0.0.255", Some(Reserved)),
        ("192.0.1.0", None),
        ("192.0.1.255", None),
        ("192.0.2.0", Some(Documentation)),
        ("192.0.2.255", Some(Documentation)),
        ("192.0.3.0", None),
        ("192.88.98.255", None),
        ("192.88.99.0", Some(SixToFour)),
        ("192.88.99.255", Some(SixToFour)),
        ("192.88.100.0", None),
        ("192.167.255.255", None),
        ("192.168.0.0", Some(Private)),
        ("192.168.255.255", Some(Private)),
        ("192.169.0.0", None),
        ("198.17.255.255", None),
        ("198.18.0.0", Some(Benchmarking)),
        ("198.19.255.255", Some(Benchmarking)),
        ("198.20.0.0", None),
        ("198.51.99.255", None),
        ("198.51.100.0", Some(Documentation)),
        ("198.51.100.255", Some(Documentation)),
        ("198.51.101.0", None),
        ("203.0.112.255", None),
        ("203.0.113.0", Some(Documentation)),
        ("203.0.113.255", Some(Documentation)),
        ("203.0.114.0", None),
        ("223.255.255.255", None),
        ("224.0.0.0", Some(Multicast)),
        ("239.255.255.255", Some(Multicast)),
        ("240.0.0.0", Some(Reserved)),
        ("255.255.255.254", Some(Reserved)),
        ("255.255.255.255", Some(Broadcast)),
        // IPv6, including the IPv4-carrying prefixes at their edges.
        ("::", Some(Unspecified)),
        ("::1", Some(Loopback)),
        ("::2", Some(Unspecified)),
        ("::ffff:ffff", Some(Broadcast)),
        ("::1:0:0", Some(Reserved)),
        ("::fffe:ffff:ffff", Some(Reserved)),
        ("::ffff:0.0.0.0", Some(Unspecified)),
        ("::ffff:0.255.255.255", Some(Unspecified)),
        ("::ffff:1.0.0.0", None),
        ("::ffff:255.255.255.255", Some(Broadcast)),
        ("::1:0:0:0", Some(Reserved)),
        ("64:ff9a:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("64:ff9b::", Some(Unspecified)),
        ("64:ff9b::1.0.0.0", None),
        ("64:ff9b::ffff:ffff", Some(Broadcast)),
        ("64:ff9b::1:0:0", Some(Reserved)),
        ("64:ff9b:0:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("64:ff9b:1::", Some(Nat64)),
        ("64:ff9b:1:ffff:ffff:ffff:ffff:ffff", Some(Nat64)),
        ("64:ff9b:2::", Some(Reserved)),
        ("ff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("100::", Some(Discard)),
        ("100::ffff:ffff:ffff:ffff", Some(Discard)),
        ("100:0:0:1::", Some(Reserved)),
        ("1fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("2000::", None),
        ("2000:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001::", Some(Teredo)),
        ("2001:0:ffff:ffff:ffff:ffff:ffff:ffff", Some(Teredo)),
        ("2001:1::", Some(Reserved)),
        ("2001:1:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("2001:2::", Some(Benchmarking)),
        ("2001:2:0:ffff:ffff:ffff:ffff:ffff", Some(Benchmarking)),
        ("2001:2:1::", Some(Reserved)),
        ("2001:f:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("2001:10::", Some(Orchid)),
        ("2001:1f:ffff:ffff:ffff:ffff:ffff:ffff", Some(Orchid)),
        ("2001:20::", Some(Orchid)),
        ("2001:2f:ffff:ffff:ffff:ffff:ffff:ffff", Some(Orchid)),
        ("2001:30::", Some(Reserved)),
        ("2001:1ff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("2001:200::", None),
        ("2001:db7:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2001:db8::", Some(Documentation)),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", Some(Documentation)),
        ("2001:db9::", None),
        ("2001:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("2002::", Some(SixToFour)),
        ("2002:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(SixToFour)),
        ("2003::", None),
        ("3ffe:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("3fff::", Some(Documentation)),
        ("3fff:fff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Documentation)),
        ("3fff:1000::", None),
        ("3fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", None),
        ("4000::", Some(Reserved)),
        ("5eff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("5f00::", Some(Srv6)),
        ("5f00:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Srv6)),
        ("5f01::", Some(Reserved)),
        ("fbff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("fc00::", Some(UniqueLocal)),
        ("fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(UniqueLocal)),
        ("fe00::", Some(Reserved)),
        ("fe7f:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Reserved)),
        ("fe80::", Some(LinkLocal)),
        ("febf:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(LinkLocal)),
        ("fec0::", Some(SiteLocal)),
        ("feff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(SiteLocal)),
        ("ff00::", Some(Multicast)),
        ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", Some(Multicast)),
    ];

    #[test]
    fn range_boundaries() {
        let mut failures = Vec::new();
        for &(text, want) in BOUNDARIES {
            let addr = ip(text);
            let got = classify(addr);
            if got != want {
                failures.push(format!("{text}: classified {got:?}, expected {want:?}"));
            }
            // The same address written as a URL host must reach the same verdict.
            let host = match addr {
                IpAddr::V4(_) => text.to_owned(),
                IpAddr::V6(_) => format!("[{text}]"),
            };
            if parse_host_ip(&host) != Some(addr) {
                failures.push(format!(
                    "{host}: parse_host_ip gave {:?}",
                    parse_host_ip(&host)
                ));
            }
        }
        report(&failures, BOUNDARIES.len());
    }

    #[test]
    fn every_blocked_range_is_well_formed_and_reachable() {
        for &(range, reason) in BLOCKED {
            let text = range.to_string();
            assert_eq!(
                text.parse::<Cidr>(),
                Ok(range),
                "{text} must be a network address"
            );
            let (first, last) = (range.network(), range.last());
            assert!(
                classify(first).is_some(),
                "{first} (first of {text}) not blocked"
            );
            assert!(
                classify(last).is_some(),
                "{last} (last of {text}) not blocked"
            );
            assert!(
                classify(first) == Some(reason) || classify(last) == Some(reason),
                "{text} ({reason}) is entirely shadowed by earlier entries"
            );
        }
    }

    /// (allow-list, address, expected result).
    #[rustfmt::skip]
    const ALLOW_LISTS: &[(&[&str], &str, Result<(), BlockReason>)] = &[
        (&[], "8.8.8.8", Ok(())),
        (&[], "127.0.0.1", Err(Loopback)),
        (&["127.0.0.0/8"], "127.0.0.1", Ok(())),
        (&["127.0.0.0/8"], "127.255.255.255", Ok(())),
        (&["127.0.0.0/8"], "::ffff:127.0.0.1", Ok(())),
        (&["127.0.0.0/8"], "::127.0.0.1", Ok(())),
        (&["127.0.0.0/8"], "64:ff9b::7f00:1", Ok(())),
        (&["127.0.0.0/8"], "10.0.0.1", Err(Private)),
        (&["127.0.0.0/8"], "::1", Err(Loopback)),
        (&["127.0.0.0/8"], "2002:7f00:1::", Err(SixToFour)),
        (&["127.0.0.0/8"], "128.0.0.1", Ok(())),
        (&["10.0.0.0/8"], "10.0.0.1", Ok(())),
        (&["10.0.0.0/8"], "10.255.255.255", Ok(())),
        (&["10.0.0.0/8"], "::ffff:10.1.2.3", Ok(())),
        (&["10.0.0.0/8"], "172.16.0.1", Err(Private)),
        (&["10.0.0.0/8"], "127.0.0.1", Err(Loopback)),
        (&["10.0.0.0/8"], "169.254.169.254", Err(LinkLocal)),
        (&["10.0.0.0/8", "192.168.0.0/16"], "192.168.1.1", Ok(())),
        (&["10.0.0.0/8", "192.168.0.0/16"], "172.16.0.1", Err(Private)),
        (&["10.1.0.0/16"], "10.1.255.255", Ok(())),
        (&["10.1.0.0/16"], "10.2.0.0", Err(Private)),
        (&["::1"], "::1", Ok(())),
        (&["::1"], "127.0.0.1", Err(Loopback)),
        (&["fd00::/8"], "fd12::1", Ok(())),
        (&["fd00::/8"], "fc00::1", Err(UniqueLocal)),
        (&["::ffff:10.0.0.0/104"], "::ffff:10.0.0.1", Ok(())),
        (&["169.254.169.254"], "169.254.169.254", Ok(())),
        (&["169.254.169.254"], "169.254.169.253", Err(LinkLocal)),
        (&["0.0.0.0/0"], "127.0.0.1", Ok(())),
        (&["0.0.0.0/0"], "::1", Err(Loopback)),
    ];

    #[test]
    fn allow_lists() {
        let mut failures = Vec::new();
        for &(allow_list, addr, want) in ALLOW_LISTS {
            let allow: Vec<Cidr> = allow_list
                .iter()
                .map(|s| {
                    s.parse()
                        .unwrap_or_else(|e| panic!("test allow-list {s:?}: {e}"))
                })
                .collect();
            let got = IpPolicy::new(allow).check(ip(addr));
            if got != want {
                failures.push(format!(
                    "{addr} with allow-list {allow_list:?}: got {got:?}, expected {want:?}"
                ));
            }
        }
        report(&failures, ALLOW_LISTS.len());
    }

    #[test]
    fn cidr_parsing() {
        let valid: &[(&str, &str, u8)] = &[
            ("10.0.0.0/8", "10.0.0.0", 8),
            ("::1/128", "::1", 128),
            ("127.0.0.1", "127.0.0.1", 32),
            ("::1", "::1", 128),
            ("0.0.0.0/0", "0.0.0.0", 0),
            ("::/0", "::", 0),
            ("fd00::/8", "fd00::", 8),
            ("169.254.169.254/32", "169.254.169.254", 32),
            ("10.0.0.0/08", "10.0.0.0", 8),
        ];
        for &(text, network, prefix_len) in valid {
            let cidr: Cidr = text
                .parse()
                .unwrap_or_else(|e| panic!("{text:?} rejected: {e}"));
            assert_eq!(
                (cidr.network(), cidr.prefix_len()),
                (ip(network), prefix_len),
                "{text:?} parsed wrongly"
            );
        }
        let invalid: &[(&str, &str)] = &[
            ("10.0.0.0/33", "from 0 to 32"),
            ("x", "not an IP address"),
            ("::/129", "from 0 to 128"),
            ("10.0.0.1/8", "did you mean 10.0.0.0/8?"),
            ("fd00::1/8", "did you mean fd00::/8?"),
            ("10.0.0.0/", "from 0 to 32"),
            ("10.0.0.0/+8", "from 0 to 32"),
            ("10.0.0.0/-1", "from 0 to 32"),
            ("10.0.0.0/ 8", "from 0 to 32"),
            ("10.0.0.0/8/8", "from 0 to 32"),
            ("10.0.0.0/256", "from 0 to 32"),
            ("10.0.0.0/99999999999999999999", "from 0 to 32"),
            ("/8", "not an IP address"),
            ("", "not an IP address"),
            (" 10.0.0.0/8", "not an IP address"),
            ("[::1]/128", "not an IP address"),
            ("fe80::1%eth0/64", "not an IP address"),
            ("0177.0.0.1", "not an IP address"),
            ("10.0.0/8", "not an IP address"),
        ];
        for &(text, message) in invalid {
            match text.parse::<Cidr>() {
                Ok(cidr) => panic!("{text:?} accepted as {cidr}"),
                Err(e) => assert!(
                    e.to_string().contains(message),
                    "{text:?}: error {e:?} does not mention {message:?}"
                ),
            }
        }
    }

    #[test]
    fn cidr_contains() {
        let cases: &[(&str, &str, bool)] = &[
            ("10.0.0.0/8", "10.0.0.0", true),
            ("10.0.0.0/8", "10.255.255.255", true),
            ("10.0.0.0/8", "9.255.255.255", false),
            ("10.0.0.0/8", "11.0.0.0", false),
            ("10.0.0.0/8", "::ffff:10.0.0.1", false),
            ("0.0.0.0/0", "255.255.255.255", true),
            ("0.0.0.0/0", "::", false),
            ("::/0", "ffff::", true),
            ("::/0", "0.0.0.0", false),
            ("127.0.0.1", "127.0.0.1", true),
            ("127.0.0.1", "127.0.0.2", false),
            ("fe80::/10", "febf::1", true),
            ("fe80::/10", "fec0::", false),
            ("2001:db8::1", "2001:db8::1", true),
        ];
        for &(range, addr, want) in cases {
            let cidr: Cidr = range.parse().unwrap_or_else(|e| panic!("{range:?}: {e}"));
            assert_eq!(cidr.contains(ip(addr)), want, "{range} contains {addr}");
        }
    }

    #[test]
    fn canonical_forms() {
        let cases: &[(&str, &str)] = &[
            ("::ffff:127.0.0.1", "127.0.0.1"),
            ("::127.0.0.1", "127.0.0.1"),
            ("64:ff9b::8.8.8.8", "8.8.8.8"),
            ("::", "::"),
            ("::1", "::1"),
            ("::2", "0.0.0.2"),
            ("2002:7f00:1::", "2002:7f00:1::"),
            ("64:ff9b:1::7f00:1", "64:ff9b:1::7f00:1"),
            ("::ffff:0:7f00:1", "::ffff:0:7f00:1"),
            ("10.0.0.1", "10.0.0.1"),
        ];
        for &(from, to) in cases {
            assert_eq!(canonical(ip(from)), ip(to), "canonical form of {from}");
        }
    }

    #[test]
    fn ipv6_parser_agrees_with_std() {
        let texts = [
            "::",
            "::1",
            "1::",
            "1:2:3:4:5:6:7:8",
            "1:2:3:4:5:6:7::",
            "::2:3:4:5:6:7:8",
            "1::8",
            "1:2::7:8",
            "::ffff:1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4",
            "::1.2.3.4",
            "ABCD:ef01::",
            "0000:0000::0001",
            "1:2:3:4:5:6:7:8:9",
            "1:2:3:4:5:6:7::8",
            "::1::",
            "1::2::3",
            ":1",
            "1:",
            ":::",
            "12345::",
            "1:2:3:4:5:6:7",
            "::ffff:1.2.3",
            "::ffff:1.2.3.4.5",
            "::ffff:01.2.3.4",
            "::ffff:256.2.3.4",
            "1:2:3:4:5:6:7:1.2.3.4",
            "::1.2.3.4:1",
            "g::",
            "",
            "::ffff:1.2.3.",
            "1.2.3.4",
        ];
        for text in texts {
            assert_eq!(
                parse_ipv6_whatwg(text),
                text.parse::<Ipv6Addr>().ok(),
                "{text:?}"
            );
        }
    }

    #[test]
    fn uts46_table_is_sorted_and_numeric() {
        let mut previous_last = 0x7f;
        for &(first, last, to) in UTS46_NUMERIC {
            assert!(
                first > previous_last,
                "entry {first:#x} out of order or overlapping"
            );
            assert!(first <= last, "entry {first:#x} is empty");
            assert!(
                first == last || to.len() <= 1,
                "run {first:#x}..={last:#x} must map to one character or nothing"
            );
            for cp in first..=last {
                let c = char::from_u32(cp).unwrap_or_else(|| panic!("{cp:#x} is not a character"));
                let mut out = String::new();
                assert!(push_uts46_numeric(&mut out, c), "{cp:#x} not found");
                assert!(
                    out.bytes()
                        .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f' | b'x' | b'.')),
                    "{cp:#x} maps to {out:?}"
                );
            }
            previous_last = last;
        }
        let mut out = String::new();
        assert!(
            !push_uts46_numeric(&mut out, 'ü'),
            "ü has no numeric mapping"
        );
        assert!(out.is_empty());
    }

    #[test]
    fn reasons_have_distinct_phrases() {
        let all = [
            Unspecified,
            Loopback,
            Private,
            Cgnat,
            LinkLocal,
            Broadcast,
            Multicast,
            Documentation,
            Benchmarking,
            Reserved,
            UniqueLocal,
            SiteLocal,
            SixToFour,
            Nat64,
            Teredo,
            Discard,
            Orchid,
            Srv6,
        ];
        let phrases: std::collections::HashSet<String> =
            all.iter().map(ToString::to_string).collect();
        assert_eq!(phrases.len(), all.len(), "duplicate phrases: {phrases:?}");
        assert_eq!(Loopback.to_string(), "loopback address");
    }
}
