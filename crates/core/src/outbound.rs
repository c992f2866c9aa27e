//! Outbound callbacks (a run's `callback_url`): which URLs and addresses the notifier may
//! call, what one delivery attempt's result means, and the `webhook-signature` header.
//!
//! Pure decisions only; the I/O half is `switchyard_providers::outbound`. The address policy
//! (docs/api.md#address-rules) is resolve-then-check: [`check_callback_url`] at intake (an
//! IP-literal host is checked at once, so `https://127.0.0.1/` is refused with the request), then,
//! at each delivery, [`pick_address`] over what the host resolved to, and the connection goes to
//! the address it picked — never to a second resolution. `allow_private` (local development) lifts
//! the address policy entirely and also allows `http`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::webhook::SignatureError;

/// Longest callback URL accepted, in bytes (the raw text and its normalized form). Longer
/// URLs are almost always a mistake or an attempt to smuggle data, and it bounds what a run
/// header stores.
pub const MAX_CALLBACK_URL_BYTES: usize = 2048;

/// Delay before the second attempt, in milliseconds; each later retry doubles it.
pub const NOTIFY_BACKOFF_BASE_MS: u64 = 1_000;

/// Longest delay between two attempts, in milliseconds (5 minutes).
pub const NOTIFY_BACKOFF_CAP_MS: u64 = 300_000;

/// Attempts a notification gets, the first included; after the last failed one it is
/// dead-lettered.
pub const MAX_NOTIFY_ATTEMPTS: u32 = 6;

/// Why an address may not be called. [`AddressClass::as_str`] is a stable snake_case name
/// (for logs and metrics); `Display` is the phrase used in [`Refusal`] messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressClass {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `0.0.0.0/8` other than `0.0.0.0`.
    ThisNetwork,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// `10/8`, `172.16/12`, `192.168/16`.
    Private,
    /// `169.254/16` (including the cloud metadata address 169.254.169.254), `fe80::/10`.
    LinkLocal,
    /// `100.64/10`, shared address space (carrier-grade NAT).
    SharedCgnat,
    /// `192.0.0.0/24`, IETF protocol assignments.
    ProtocolAssignment,
    /// `192.0.2/24`, `198.51.100/24`, `203.0.113/24`, `2001:db8::/32`.
    Documentation,
    /// `198.18/15`, `2001:2::/48`.
    Benchmarking,
    /// `224/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `240/4` (other than the broadcast address).
    Reserved,
    /// `fc00::/7`.
    UniqueLocal,
    /// `fec0::/10` (deprecated site-local).
    SiteLocal,
    /// `::ffff:0:0/96`: refused whatever IPv4 address it embeds.
    Ipv4Mapped,
    /// `::/96` other than `::` and `::1` (deprecated): refused whatever IPv4 address it embeds.
    Ipv4Compatible,
    /// `64:ff9b:1::/48`, local-use NAT64 (RFC 8215): the embedding is local, so refused.
    Nat64LocalUse,
    /// `2001::/32`, Teredo: the embedded client address is obfuscated, so refused.
    Teredo,
    /// `100::/64`, discard-only.
    DiscardOnly,
}

impl AddressClass {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::ThisNetwork => "this_network",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link_local",
            AddressClass::SharedCgnat => "shared_cgnat",
            AddressClass::ProtocolAssignment => "protocol_assignment",
            AddressClass::Documentation => "documentation",
            AddressClass::Benchmarking => "benchmarking",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "broadcast",
            AddressClass::Reserved => "reserved",
            AddressClass::UniqueLocal => "unique_local",
            AddressClass::SiteLocal => "site_local",
            AddressClass::Ipv4Mapped => "ipv4_mapped",
            AddressClass::Ipv4Compatible => "ipv4_compatible",
            AddressClass::Nat64LocalUse => "nat64_local_use",
            AddressClass::Teredo => "teredo",
            AddressClass::DiscardOnly => "discard_only",
        }
    }

    fn phrase(self) -> &'static str {
        match self {
            AddressClass::Unspecified => "unspecified",
            AddressClass::ThisNetwork => "in \"this network\" (0.0.0.0/8)",
            AddressClass::Loopback => "loopback",
            AddressClass::Private => "private",
            AddressClass::LinkLocal => "link-local",
            AddressClass::SharedCgnat => "shared address space (CGNAT, 100.64.0.0/10)",
            AddressClass::ProtocolAssignment => {
                "reserved for IETF protocol assignments (192.0.0.0/24)"
            }
            AddressClass::Documentation => "reserved for documentation",
            AddressClass::Benchmarking => "reserved for benchmarking",
            AddressClass::Multicast => "multicast",
            AddressClass::Broadcast => "the broadcast address",
            AddressClass::Reserved => "reserved (240.0.0.0/4)",
            AddressClass::UniqueLocal => "unique-local (fc00::/7)",
            AddressClass::SiteLocal => "site-local (fec0::/10)",
            AddressClass::Ipv4Mapped => {
                "IPv4-mapped IPv6 (::ffff:0:0/96, refused whatever IPv4 address it embeds)"
            }
            AddressClass::Ipv4Compatible => {
                "IPv4-compatible IPv6 (::/96, refused whatever IPv4 address it embeds)"
            }
            AddressClass::Nat64LocalUse => "local-use NAT64 (64:ff9b:1::/48)",
            AddressClass::Teredo => "Teredo (2001::/32)",
            AddressClass::DiscardOnly => "discard-only (100::/64)",
        }
    }
}

impl std::fmt::Display for AddressClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.phrase())
    }
}

/// Why a callback URL or address is refused. Messages name the URL's problem or the address
/// and its class ("callback address 10.0.0.5 is private"); none echoes the whole URL (its
/// query may carry a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("callback URL is {len} bytes, over the {MAX_CALLBACK_URL_BYTES}-byte limit")]
    TooLong { len: usize },
    #[error("callback URL does not parse: {0}")]
    Unparsable(String),
    #[error("callback URL scheme {scheme:?} is not allowed (use {allowed})")]
    Scheme {
        scheme: String,
        allowed: &'static str,
    },
    #[error("callback URL must not carry user info (user:password@)")]
    UserInfo,
    #[error("callback URL has no host")]
    NoHost,
    #[error("callback URL port 0 is not allowed")]
    BadPort,
    #[error("callback host {host} is a local name")]
    LocalName { host: String },
    #[error("callback host {host} resolved to no address")]
    NoAddress { host: String },
    /// The address policy. `host` is the name that resolved to `ip` (None for an IP literal);
    /// `embedded` the IPv4 address a NAT64 or 6to4 address carries, when that is what
    /// decided.
    #[error("{}", address_message(*.ip, *.embedded, *.class, .host.as_deref()))]
    Address {
        ip: IpAddr,
        embedded: Option<Ipv4Addr>,
        class: AddressClass,
        host: Option<String>,
    },
}

impl Refusal {
    /// The address class, when the address policy refused.
    pub fn address_class(&self) -> Option<AddressClass> {
        match self {
            Refusal::Address { class, .. } => Some(*class),
            _ => None,
        }
    }
}

fn address_message(
    ip: IpAddr,
    embedded: Option<Ipv4Addr>,
    class: AddressClass,
    host: Option<&str>,
) -> String {
    let what = match embedded {
        Some(v4) => format!("{ip} (embedding {v4})"),
        None => ip.to_string(),
    };
    match host {
        Some(h) => format!("callback host {h} resolves to {what}, which is {class}"),
        None => format!("callback address {what} is {class}"),
    }
}

/// A callback URL that passed [`check_callback_url`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallbackTarget {
    /// The normalized URL (lower-case scheme and host, punycode, IPv4 shorthand such as
    /// `2130706433` spelled out, no fragment). This is what is called.
    pub url: String,
    /// The host: a domain name, or an IP address without brackets.
    pub host: String,
    /// The explicit port, or the scheme's default.
    pub port: u16,
    /// The host as an address, when the URL names one (then there is nothing to resolve).
    pub ip_literal: Option<IpAddr>,
}

/// Checks a callback URL: `https` (also `http` when `allow_private`), no user info, a host,
/// a non-zero port, at most [`MAX_CALLBACK_URL_BYTES`]. An IP-literal host goes through
/// [`ip_verdict`] now, and `localhost` names (RFC 6761) are refused now, unless
/// `allow_private`; any other name is checked after resolution by [`pick_address`].
pub fn check_callback_url(raw: &str, allow_private: bool) -> Result<CallbackTarget, Refusal> {
    if raw.len() > MAX_CALLBACK_URL_BYTES {
        return Err(Refusal::TooLong { len: raw.len() });
    }
    let mut url = url::Url::parse(raw).map_err(|e| Refusal::Unparsable(e.to_string()))?;
    let allowed = if allow_private {
        "https or http"
    } else {
        "https"
    };
    match url.scheme() {
        "https" => {}
        "http" if allow_private => {}
        other => {
            return Err(Refusal::Scheme {
                scheme: other.to_string(),
                allowed,
            })
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::UserInfo);
    }
    let (host, ip_literal) = match url.host() {
        None => return Err(Refusal::NoHost),
        Some(url::Host::Domain("")) => return Err(Refusal::NoHost),
        Some(url::Host::Domain(d)) => (d.to_string(), None),
        Some(url::Host::Ipv4(v4)) => (v4.to_string(), Some(IpAddr::V4(v4))),
        Some(url::Host::Ipv6(v6)) => (v6.to_string(), Some(IpAddr::V6(v6))),
    };
    let port = match url.port_or_known_default() {
        None | Some(0) => return Err(Refusal::BadPort),
        Some(p) => p,
    };
    if !allow_private {
        if let Some(ip) = ip_literal {
            ip_verdict(ip)?;
        }
        let name = host.trim_end_matches('.');
        if name == "localhost" || name.ends_with(".localhost") {
            return Err(Refusal::LocalName { host });
        }
    }
    // A fragment is never sent; dropping it keeps the stored form canonical.
    url.set_fragment(None);
    let normalized = String::from(url);
    if normalized.len() > MAX_CALLBACK_URL_BYTES {
        return Err(Refusal::TooLong {
            len: normalized.len(),
        });
    }
    Ok(CallbackTarget {
        url: normalized,
        host,
        port,
        ip_literal,
    })
}

/// Whether an address may be called: `Ok` for a public unicast address, else the class it
/// falls in. IPv4-mapped (`::ffff:0:0/96`) and IPv4-compatible (`::/96`) addresses are
/// refused outright, whatever IPv4 address they embed (no legitimate callback needs them,
/// and refusing them closes every spelling of 127.0.0.1 in IPv6). NAT64 `64:ff9b::/96` is
/// judged by the IPv4 address it embeds — the gateway connects to exactly that address, and
/// an IPv6-only network with DNS64 answers every IPv4-only host this way — and so is 6to4
/// `2002::/16`; local-use NAT64 `64:ff9b:1::/48` and Teredo `2001::/32` are refused.
pub fn ip_verdict(ip: IpAddr) -> Result<(), Refusal> {
    let refused = match ip {
        IpAddr::V4(v4) => v4_class(v4).map(|c| (c, None)),
        IpAddr::V6(v6) => v6_class(v6),
    };
    match refused {
        None => Ok(()),
        Some((class, embedded)) => Err(Refusal::Address {
            ip,
            embedded,
            class,
            host: None,
        }),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<AddressClass> {
    let [a, b, c, _] = ip.octets();
    let class = if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if a == 0 {
        AddressClass::ThisNetwork
    } else if ip.is_broadcast() {
        AddressClass::Broadcast
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.is_private() {
        AddressClass::Private
    } else if ip.is_link_local() {
        AddressClass::LinkLocal
    } else if a == 100 && (b & 0xc0) == 64 {
        AddressClass::SharedCgnat
    } else if a == 192 && b == 0 && c == 0 {
        AddressClass::ProtocolAssignment
    } else if ip.is_documentation() {
        AddressClass::Documentation
    } else if a == 198 && (b & 0xfe) == 18 {
        AddressClass::Benchmarking
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else if a >= 240 {
        AddressClass::Reserved
    } else {
        return None;
    };
    Some(class)
}

/// The IPv4 address in two 16-bit segments.
fn v4_of(hi: u16, lo: u16) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))
}

fn v6_class(ip: Ipv6Addr) -> Option<(AddressClass, Option<Ipv4Addr>)> {
    let s = ip.segments();
    let class = if ip.is_unspecified() {
        AddressClass::Unspecified
    } else if ip.is_loopback() {
        AddressClass::Loopback
    } else if ip.to_ipv4_mapped().is_some() {
        AddressClass::Ipv4Mapped
    } else if s[..6] == [0; 6] {
        AddressClass::Ipv4Compatible
    } else if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        // NAT64 well-known prefix: judged by the IPv4 address the gateway will connect to.
        let v4 = v4_of(s[6], s[7]);
        return v4_class(v4).map(|c| (c, Some(v4)));
    } else if s[..3] == [0x64, 0xff9b, 1] {
        AddressClass::Nat64LocalUse
    } else if s[..4] == [0x100, 0, 0, 0] {
        AddressClass::DiscardOnly
    } else if s[0] == 0x2001 && s[1] == 0xdb8 {
        AddressClass::Documentation
    } else if s[0] == 0x2001 && s[1] == 2 && s[2] == 0 {
        AddressClass::Benchmarking
    } else if s[0] == 0x2001 && s[1] == 0 {
        AddressClass::Teredo
    } else if s[0] == 0x2002 {
        // 6to4: the IPv4 address sits in bits 16..48.
        let v4 = v4_of(s[1], s[2]);
        return v4_class(v4).map(|c| (c, Some(v4)));
    } else if ip.is_unique_local() {
        AddressClass::UniqueLocal
    } else if ip.is_unicast_link_local() {
        AddressClass::LinkLocal
    } else if (s[0] & 0xffc0) == 0xfec0 {
        AddressClass::SiteLocal
    } else if ip.is_multicast() {
        AddressClass::Multicast
    } else {
        return None;
    };
    Some((class, None))
}

/// The address to connect to for `target`, from what its host resolved to. An IP-literal
/// target is its own address (`resolved` is ignored). Otherwise refused when resolution gave
/// nothing, or — unless `allow_private` — when **any** resolved address is refused: a name
/// answering both a public and a private address (DNS rebinding, mixed answers) is refused
/// as a whole. The caller connects to the returned address only.
pub fn pick_address(
    target: &CallbackTarget,
    resolved: &[IpAddr],
    allow_private: bool,
) -> Result<IpAddr, Refusal> {
    if let Some(ip) = target.ip_literal {
        if !allow_private {
            ip_verdict(ip)?;
        }
        return Ok(ip);
    }
    let Some(first) = resolved.first() else {
        return Err(Refusal::NoAddress {
            host: target.host.clone(),
        });
    };
    if !allow_private {
        for ip in resolved {
            ip_verdict(*ip).map_err(|r| match r {
                Refusal::Address {
                    ip,
                    embedded,
                    class,
                    ..
                } => Refusal::Address {
                    ip,
                    embedded,
                    class,
                    host: Some(target.host.clone()),
                },
                other => other,
            })?;
        }
    }
    Ok(*first)
}

/// Why an attempt got no HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttemptError {
    /// The address policy refused the URL or what it resolved to (no connection was made).
    Refused(Refusal),
    /// No answer within the connect or the request timeout.
    Timeout,
    /// The host did not resolve, or the connection (TCP or TLS) failed.
    Connect,
    /// Anything else (the request could not be built, the exchange broke off).
    Other,
}

impl AttemptError {
    /// Stable snake_case class, for logs, metrics and the delivery history.
    pub fn as_str(&self) -> &'static str {
        match self {
            AttemptError::Refused(_) => "refused",
            AttemptError::Timeout => "timeout",
            AttemptError::Connect => "connect",
            AttemptError::Other => "other",
        }
    }
}

/// What one delivery attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryResult {
    /// The receiver answered with this status (redirects are not followed: a 3xx is final
    /// for this attempt).
    Status(u16),
    Failed(AttemptError),
}

/// What to do with a notification after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// 2xx: done.
    Delivered,
    /// 410 Gone: the receiver asked not to be called again; drop it, not a failure.
    Stop,
    /// Try again after `delay_ms`.
    Retry { delay_ms: u64 },
    /// Give up: the attempts are spent, or the URL is refused by policy (retrying cannot
    /// help).
    DeadLetter,
}

/// The delay after the `attempts_made`-th failed attempt: [`NOTIFY_BACKOFF_BASE_MS`] ×
/// 2^(attempts_made−1), at most [`NOTIFY_BACKOFF_CAP_MS`]. Deterministic (no jitter).
pub fn backoff_ms(attempts_made: u32) -> u64 {
    let exp = attempts_made.saturating_sub(1).min(63);
    NOTIFY_BACKOFF_BASE_MS
        .saturating_mul(1u64 << exp)
        .min(NOTIFY_BACKOFF_CAP_MS)
}

/// The next step for a notification whose latest attempt (number `attempts_made`, counting
/// from 1) gave `result`: 2xx delivered; 410 stop; refused by policy dead-lettered at once;
/// anything else (3xx, other 4xx and 5xx, timeouts, connect failures) retried with
/// [`backoff_ms`] until [`MAX_NOTIFY_ATTEMPTS`] attempts are spent, then dead-lettered.
pub fn decide(result: &DeliveryResult, attempts_made: u32) -> Decision {
    match result {
        DeliveryResult::Status(s) if (200..300).contains(s) => return Decision::Delivered,
        DeliveryResult::Status(410) => return Decision::Stop,
        DeliveryResult::Failed(AttemptError::Refused(_)) => return Decision::DeadLetter,
        _ => {}
    }
    if attempts_made >= MAX_NOTIFY_ATTEMPTS {
        Decision::DeadLetter
    } else {
        Decision::Retry {
            delay_ms: backoff_ms(attempts_made),
        }
    }
}

/// The `webhook-signature` header for a delivery: one `v1,<base64>` per secret in `secrets`
/// (whitespace-separated `whsec_…` values, the newest first during a rotation), joined by
/// spaces, so a receiver holding either the old or the new secret verifies it. An empty
/// list is [`SignatureError::BadSecret`].
pub fn signature_header(
    secrets: &str,
    id: &str,
    ts_secs: u64,
    body: &[u8],
) -> Result<String, SignatureError> {
    let sigs = secrets
        .split_whitespace()
        .map(|s| crate::webhook::sign(s, id, ts_secs, body))
        .collect::<Result<Vec<_>, _>>()?;
    if sigs.is_empty() {
        return Err(SignatureError::BadSecret);
    }
    Ok(sigs.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use AddressClass as C;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Every refused class, with its edges, and public addresses that pass.
    #[test]
    fn ip_verdict_matrix() {
        let table: &[(&str, Option<AddressClass>)] = &[
            // Public.
            ("93.184.216.34", None),
            ("8.8.8.8", None),
            ("1.1.1.1", None),
            ("172.15.255.255", None),
            ("172.32.0.0", None),
            ("100.63.255.255", None),
            ("100.128.0.0", None),
            ("198.17.255.255", None),
            ("198.20.0.0", None),
            ("223.255.255.255", None),
            ("192.0.1.1", None),
            ("2606:4700::1111", None),
            ("2001:4860:4860::8888", None),
            ("2001:db9::1", None),
            ("64:ff9b::5db8:d822", None), // NAT64 of 93.184.216.34
            ("2002:5db8:d822::1", None),  // 6to4 of 93.184.216.34
            // IPv4.
            ("0.0.0.0", Some(C::Unspecified)),
            ("0.1.2.3", Some(C::ThisNetwork)),
            ("127.0.0.1", Some(C::Loopback)),
            ("127.255.255.254", Some(C::Loopback)),
            ("10.0.0.5", Some(C::Private)),
            ("172.16.0.1", Some(C::Private)),
            ("172.31.255.255", Some(C::Private)),
            ("192.168.1.1", Some(C::Private)),
            ("169.254.169.254", Some(C::LinkLocal)),
            ("169.254.0.1", Some(C::LinkLocal)),
            ("100.64.0.1", Some(C::SharedCgnat)),
            ("100.127.255.255", Some(C::SharedCgnat)),
            ("192.0.0.8", Some(C::ProtocolAssignment)),
            ("192.0.2.1", Some(C::Documentation)),
            ("198.51.100.7", Some(C::Documentation)),
            ("203.0.113.9", Some(C::Documentation)),
            ("198.18.0.1", Some(C::Benchmarking)),
            ("198.19.255.255", Some(C::Benchmarking)),
            ("224.0.0.1", Some(C::Multicast)),
            ("239.255.255.255", Some(C::Multicast)),
            ("240.0.0.1", Some(C::Reserved)),
            ("254.1.2.3", Some(C::Reserved)),
            ("255.255.255.255", Some(C::Broadcast)),
            // IPv6.
            ("::", Some(C::Unspecified)),
            ("::1", Some(C::Loopback)),
            ("::ffff:127.0.0.1", Some(C::Ipv4Mapped)),
            ("::ffff:93.184.216.34", Some(C::Ipv4Mapped)), // whatever it embeds
            ("::127.0.0.1", Some(C::Ipv4Compatible)),
            ("::93.184.216.34", Some(C::Ipv4Compatible)), // whatever it embeds
            ("64:ff9b::7f00:1", Some(C::Loopback)),       // NAT64 of 127.0.0.1
            ("64:ff9b::a9fe:a9fe", Some(C::LinkLocal)),   // NAT64 of 169.254.169.254
            ("64:ff9b:1::5db8:d822", Some(C::Nat64LocalUse)),
            ("2002:a00:1::1", Some(C::Private)), // 6to4 of 10.0.0.1
            ("2001::1", Some(C::Teredo)),
            ("100::1", Some(C::DiscardOnly)),
            ("fc00::1", Some(C::UniqueLocal)),
            ("fd12:3456::1", Some(C::UniqueLocal)),
            ("fe80::1", Some(C::LinkLocal)),
            ("febf::1", Some(C::LinkLocal)),
            ("fec0::1", Some(C::SiteLocal)),
            ("ff02::1", Some(C::Multicast)),
            ("2001:db8::1", Some(C::Documentation)),
            ("2001:2::1", Some(C::Benchmarking)),
        ];
        for (addr, want) in table {
            let got = ip_verdict(ip(addr)).err().and_then(|r| r.address_class());
            assert_eq!(got, *want, "{addr}");
        }
    }

    #[test]
    fn refusal_messages_name_the_class_and_the_address() {
        let msg = |a: &str| ip_verdict(ip(a)).unwrap_err().to_string();
        assert_eq!(msg("10.0.0.5"), "callback address 10.0.0.5 is private");
        assert_eq!(
            msg("169.254.169.254"),
            "callback address 169.254.169.254 is link-local"
        );
        assert_eq!(
            msg("::ffff:10.0.0.5"),
            "callback address ::ffff:10.0.0.5 is IPv4-mapped IPv6 (::ffff:0:0/96, refused \
             whatever IPv4 address it embeds)"
        );
        assert_eq!(
            msg("64:ff9b::a00:5"),
            "callback address 64:ff9b::a00:5 (embedding 10.0.0.5) is private"
        );
    }

    /// `Ok(port)` or the refusal's message.
    #[test]
    fn check_callback_url_matrix() {
        let long = format!("https://example.com/{}", "a".repeat(MAX_CALLBACK_URL_BYTES));
        let just_fits = format!(
            "https://example.com/{}",
            "a".repeat(MAX_CALLBACK_URL_BYTES - "https://example.com/".len())
        );
        let table: Vec<(&str, bool, Result<u16, String>)> = vec![
            ("https://example.com/hook", false, Ok(443)),
            ("https://example.com:8443/hook?t=1", false, Ok(8443)),
            ("https://93.184.216.34/", false, Ok(443)),
            ("https://[2606:4700::1111]/", false, Ok(443)),
            (just_fits.as_str(), false, Ok(443)),
            (
                "http://example.com/",
                false,
                Err("callback URL scheme \"http\" is not allowed (use https)".into()),
            ),
            ("http://example.com/", true, Ok(80)),
            (
                "ftp://example.com/",
                true,
                Err("callback URL scheme \"ftp\" is not allowed (use https or http)".into()),
            ),
            (
                "file:///etc/passwd",
                false,
                Err("callback URL scheme \"file\" is not allowed (use https)".into()),
            ),
            (
                "https://user:pass@example.com/",
                false,
                Err("callback URL must not carry user info (user:password@)".into()),
            ),
            (
                "https://user@example.com/",
                true,
                Err("callback URL must not carry user info (user:password@)".into()),
            ),
            (
                "https://example.com:0/",
                false,
                Err("callback URL port 0 is not allowed".into()),
            ),
            (
                "https://",
                false,
                Err("callback URL does not parse: empty host".into()),
            ),
            (
                "not a url",
                false,
                Err("callback URL does not parse: relative URL without a base".into()),
            ),
            (
                long.as_str(),
                false,
                Err(format!(
                    "callback URL is {} bytes, over the 2048-byte limit",
                    long.len()
                )),
            ),
            (
                "https://127.0.0.1/",
                false,
                Err("callback address 127.0.0.1 is loopback".into()),
            ),
            ("https://127.0.0.1/", true, Ok(443)),
            ("http://127.0.0.1:8080/", true, Ok(8080)),
            (
                "https://[::1]/",
                false,
                Err("callback address ::1 is loopback".into()),
            ),
            (
                "https://[::ffff:127.0.0.1]/",
                false,
                Err(
                    "callback address ::ffff:127.0.0.1 is IPv4-mapped IPv6 (::ffff:0:0/96, \
                     refused whatever IPv4 address it embeds)"
                        .into(),
                ),
            ),
            // Decimal, hex, octal and short IPv4 forms: the URL parser spells them out.
            (
                "https://2130706433/",
                false,
                Err("callback address 127.0.0.1 is loopback".into()),
            ),
            (
                "https://0x7f.1/",
                false,
                Err("callback address 127.0.0.1 is loopback".into()),
            ),
            (
                "https://0177.0.0.1/",
                false,
                Err("callback address 127.0.0.1 is loopback".into()),
            ),
            (
                "https://127.1/",
                false,
                Err("callback address 127.0.0.1 is loopback".into()),
            ),
            (
                "https://0/",
                false,
                Err("callback address 0.0.0.0 is unspecified".into()),
            ),
            (
                "https://169.254.169.254/latest/meta-data/",
                false,
                Err("callback address 169.254.169.254 is link-local".into()),
            ),
            (
                "https://10.0.0.5/",
                false,
                Err("callback address 10.0.0.5 is private".into()),
            ),
            (
                "https://localhost/",
                false,
                Err("callback host localhost is a local name".into()),
            ),
            (
                "https://LOCALHOST./",
                false,
                Err("callback host localhost. is a local name".into()),
            ),
            (
                "https://api.localhost/",
                false,
                Err("callback host api.localhost is a local name".into()),
            ),
            ("http://localhost:3000/", true, Ok(3000)),
        ];
        for (raw, allow_private, want) in table {
            let got = check_callback_url(raw, allow_private)
                .map(|t| t.port)
                .map_err(|r| r.to_string());
            assert_eq!(got, want, "{raw} (allow_private={allow_private})");
        }
    }

    #[test]
    fn the_target_is_normalized() {
        let t = check_callback_url("HTTPS://Example.COM:443/a/../hook?x=1#frag", false).unwrap();
        assert_eq!(
            t,
            CallbackTarget {
                url: "https://example.com/hook?x=1".into(),
                host: "example.com".into(),
                port: 443,
                ip_literal: None,
            }
        );
        let t = check_callback_url("https://0x5d.0xb8.0xd8.0x22:8443/", false).unwrap();
        assert_eq!(t.url, "https://93.184.216.34:8443/");
        assert_eq!(t.host, "93.184.216.34");
        assert_eq!(t.ip_literal, Some(ip("93.184.216.34")));
        let t = check_callback_url("https://[2606:4700::1111]/", false).unwrap();
        assert_eq!(t.host, "2606:4700::1111");
        assert_eq!(t.ip_literal, Some(ip("2606:4700::1111")));
        let t = check_callback_url("https://bücher.example/", false).unwrap();
        assert_eq!(t.host, "xn--bcher-kva.example");
    }

    #[test]
    fn pick_address_refuses_empty_and_mixed_answers() {
        let named = check_callback_url("https://hooks.example.com/", false).unwrap();
        let public = ip("93.184.216.34");
        let v6 = ip("2606:4700::1111");
        assert_eq!(pick_address(&named, &[public, v6], false), Ok(public));
        assert_eq!(
            pick_address(&named, &[], false).unwrap_err().to_string(),
            "callback host hooks.example.com resolved to no address"
        );
        assert_eq!(
            pick_address(&named, &[], true),
            Err(Refusal::NoAddress {
                host: "hooks.example.com".into()
            })
        );
        // Rebinding / mixed answers: one bad address refuses the lot.
        let mixed = [public, ip("10.0.0.5")];
        assert_eq!(
            pick_address(&named, &mixed, false).unwrap_err().to_string(),
            "callback host hooks.example.com resolves to 10.0.0.5, which is private"
        );
        assert_eq!(
            pick_address(&named, &[ip("::ffff:169.254.169.254")], false)
                .unwrap_err()
                .address_class(),
            Some(C::Ipv4Mapped)
        );
        assert_eq!(pick_address(&named, &mixed, true), Ok(public));
        assert_eq!(
            pick_address(&named, &[ip("127.0.0.1")], true),
            Ok(ip("127.0.0.1"))
        );
        // An IP literal is its own answer.
        let literal = check_callback_url("https://93.184.216.34/", false).unwrap();
        assert_eq!(pick_address(&literal, &[], false), Ok(public));
        let loop_literal = check_callback_url("http://127.0.0.1:9/", true).unwrap();
        assert_eq!(pick_address(&loop_literal, &[], true), Ok(ip("127.0.0.1")));
        assert_eq!(
            pick_address(&loop_literal, &[], false)
                .unwrap_err()
                .address_class(),
            Some(C::Loopback)
        );
    }

    #[test]
    fn backoff_doubles_from_the_base_up_to_the_cap() {
        let table = [
            (0, 1_000),
            (1, 1_000),
            (2, 2_000),
            (3, 4_000),
            (4, 8_000),
            (5, 16_000),
            (9, 256_000),
            (10, 300_000),
            (64, 300_000),
            (u32::MAX, 300_000),
        ];
        for (attempts, want) in table {
            assert_eq!(backoff_ms(attempts), want, "after attempt {attempts}");
        }
    }

    #[test]
    fn decide_table() {
        use AttemptError as E;
        use Decision as D;
        use DeliveryResult::{Failed, Status};
        let refused = E::Refused(Refusal::NoAddress { host: "h".into() });
        let table: Vec<(DeliveryResult, u32, Decision)> = vec![
            (Status(200), 1, D::Delivered),
            (Status(204), 6, D::Delivered),
            (Status(299), 3, D::Delivered),
            (Status(410), 1, D::Stop),
            (Status(410), 6, D::Stop),
            (Failed(refused.clone()), 1, D::DeadLetter),
            (Status(301), 1, D::Retry { delay_ms: 1_000 }),
            (Status(302), 2, D::Retry { delay_ms: 2_000 }),
            (Status(400), 3, D::Retry { delay_ms: 4_000 }),
            (Status(404), 1, D::Retry { delay_ms: 1_000 }),
            (Status(429), 4, D::Retry { delay_ms: 8_000 }),
            (Status(500), 5, D::Retry { delay_ms: 16_000 }),
            (Status(503), 6, D::DeadLetter),
            (Status(100), 1, D::Retry { delay_ms: 1_000 }),
            (Failed(E::Timeout), 1, D::Retry { delay_ms: 1_000 }),
            (Failed(E::Connect), 2, D::Retry { delay_ms: 2_000 }),
            (Failed(E::Other), 5, D::Retry { delay_ms: 16_000 }),
            (Failed(E::Timeout), 6, D::DeadLetter),
            (Failed(E::Connect), 7, D::DeadLetter),
        ];
        for (result, attempts, want) in table {
            assert_eq!(decide(&result, attempts), want, "{result:?} #{attempts}");
        }
        assert_eq!(refused.as_str(), "refused");
        assert_eq!(E::Timeout.as_str(), "timeout");
        assert_eq!(E::Connect.as_str(), "connect");
        assert_eq!(E::Other.as_str(), "other");
    }

    // The example from the Standard Webhooks specification (also the Svix libraries' test).
    const SPEC_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const SPEC_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const SPEC_TS: u64 = 1614265330;
    const SPEC_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const SPEC_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    #[test]
    fn signature_header_matches_the_spec_vector() {
        assert_eq!(
            signature_header(SPEC_SECRET, SPEC_ID, SPEC_TS, SPEC_BODY).unwrap(),
            SPEC_SIG
        );
    }

    #[test]
    fn signature_header_signs_with_every_secret_of_a_rotation() {
        let new = crate::webhook::secret_from_bytes(b"the new secret, 32 bytes long!!!");
        let secrets = format!("  {new}  {SPEC_SECRET} ");
        let header = signature_header(&secrets, SPEC_ID, SPEC_TS, SPEC_BODY).unwrap();
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")), "{header}");
        assert_eq!(parts[1], SPEC_SIG);
        let ts = SPEC_TS.to_string();
        for secret in [new.as_str(), SPEC_SECRET] {
            assert_eq!(
                crate::webhook::verify(secret, SPEC_ID, &ts, &header, SPEC_BODY, SPEC_TS),
                Ok(())
            );
        }
        let other = crate::webhook::secret_from_bytes(b"someone else's secret");
        assert_eq!(
            crate::webhook::verify(&other, SPEC_ID, &ts, &header, SPEC_BODY, SPEC_TS),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            signature_header(" ", SPEC_ID, SPEC_TS, SPEC_BODY),
            Err(SignatureError::BadSecret)
        );
        assert_eq!(
            signature_header("whsec_!!notbase64", SPEC_ID, SPEC_TS, SPEC_BODY),
            Err(SignatureError::BadSecret)
        );
    }
}
