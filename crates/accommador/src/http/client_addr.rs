//! The client's address, for the failed-authentication throttle (API and UI sign-in).
//!
//! By default it is the socket's peer address: a header is never believed, so a client cannot
//! pick the address it is counted against. With `ACCOMMADOR_TRUST_PROXY=true` the server sits
//! behind a reverse proxy whose address every request shares; the client is then the address
//! the proxy reports: the last `for=` of `Forwarded` (RFC 7239), else the last entry of
//! `X-Forwarded-For`. The last one is the one our proxy added; entries before it came from the
//! client and could name anything. A header that is missing or names no usable address
//! (`unknown`, an obfuscated `_name`, garbage) falls back to the socket address.

use std::net::{IpAddr, SocketAddr};

use axum::extract::ConnectInfo;
use axum::http::{HeaderMap, request::Parts};

/// The client's address as the throttle counts it (see the module docs).
pub fn client_addr(parts: &Parts, trust_proxy: bool) -> Option<IpAddr> {
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    if !trust_proxy {
        return peer;
    }
    forwarded_client(&parts.headers).or(peer)
}

/// The client address the nearest proxy reported, if any.
pub fn forwarded_client(headers: &HeaderMap) -> Option<IpAddr> {
    let last = |name: &str, parse: fn(&str) -> Option<Option<IpAddr>>| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(parse)
            .next_back()
            .flatten()
    };
    if headers.contains_key("forwarded") {
        return last("forwarded", forwarded_for);
    }
    last("x-forwarded-for", |entry| Some(ip(entry)))
}

/// One element of `Forwarded`: `Some(address)` for its `for=` (`Some(None)` when it names no
/// usable address), `None` when it has no `for=`.
fn forwarded_for(element: &str) -> Option<Option<IpAddr>> {
    element.split(';').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        key.trim()
            .eq_ignore_ascii_case("for")
            .then(|| ip(value.trim().trim_matches('"')))
    })
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1` or `[2001:db8::1]:4711` → the address.
fn ip(value: &str) -> Option<IpAddr> {
    let value = value.trim();
    if let Ok(ip) = value.parse() {
        return Some(ip);
    }
    if let Some(rest) = value.strip_prefix('[') {
        return rest.split_once(']')?.0.parse().ok();
    }
    let (host, port) = value.rsplit_once(':')?;
    port.parse::<u16>().ok()?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    fn addr(s: &str) -> Option<IpAddr> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn the_address_the_nearest_proxy_added_counts() {
        let h = headers(&[("x-forwarded-for", "203.0.113.9, 198.51.100.7")]);
        assert_eq!(forwarded_client(&h), addr("198.51.100.7"));
        // Several header lines are one list.
        let h = headers(&[
            ("x-forwarded-for", "203.0.113.9"),
            ("x-forwarded-for", "198.51.100.8:4711"),
        ]);
        assert_eq!(forwarded_client(&h), addr("198.51.100.8"));
        let h = headers(&[(
            "forwarded",
            r#"for=203.0.113.9;proto=https, for="[2001:db8::7]:4711";by=10.0.0.1"#,
        )]);
        assert_eq!(forwarded_client(&h), addr("2001:db8::7"));
        // `Forwarded` wins over `X-Forwarded-For`.
        let h = headers(&[
            ("forwarded", "for=192.0.2.60"),
            ("x-forwarded-for", "198.51.100.7"),
        ]);
        assert_eq!(forwarded_client(&h), addr("192.0.2.60"));
        // Elements without `for=` are skipped.
        let h = headers(&[("forwarded", "for=192.0.2.61, proto=https")]);
        assert_eq!(forwarded_client(&h), addr("192.0.2.61"));
    }

    #[test]
    fn no_usable_address_means_the_socket_address() {
        for h in [
            headers(&[]),
            headers(&[("x-forwarded-for", "198.51.100.7, unknown")]),
            headers(&[("x-forwarded-for", "not an address")]),
            headers(&[("forwarded", "for=_hidden")]),
            headers(&[("forwarded", "for=unknown")]),
            headers(&[("forwarded", "proto=https")]),
        ] {
            assert_eq!(forwarded_client(&h), None, "{h:?}");
        }
    }
}
