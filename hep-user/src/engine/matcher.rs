//! Route matching: a [`Matcher`] against the [`Facts`] of a packet.

use std::net::IpAddr;

use ipnet::IpNet;

use super::facts::Facts;
use crate::config::plan::{CorrelationMatcher, Matcher};

fn in_prefixes(ip: Option<IpAddr>, nets: &[IpNet]) -> bool {
    ip.is_some_and(|ip| nets.iter().any(|n| n.contains(&ip)))
}

fn correlation_matches(c: &CorrelationMatcher, key: &[u8]) -> bool {
    let domain = key.iter().rposition(|b| *b == b'@').map(|i| &key[i + 1..]);
    (c.exact.is_empty() || c.exact.iter().any(|e| key == e.as_slice()))
        && (c.prefix.is_empty() || c.prefix.iter().any(|p| key.starts_with(p)))
        && (c.suffix.is_empty() || c.suffix.iter().any(|s| key.ends_with(s)))
        && (c.domain.is_empty()
            || domain.is_some_and(|d| c.domain.iter().any(|x| d == x.as_slice())))
}

/// Whether a packet satisfies every key of the matcher (within a key, any value).
pub fn matches(m: &Matcher, f: &Facts<'_>) -> bool {
    if let Some(p) = &m.proto
        && !f.proto_type.is_some_and(|t| p.contains(&t))
    {
        return false;
    }
    if let Some(r) = &m.capture_id
        && !f
            .capture_id
            .is_some_and(|c| r.iter().any(|r| r.contains(&c)))
    {
        return false;
    }
    if let Some(n) = &m.node_name
        && !f
            .node_name
            .is_some_and(|v| n.iter().any(|x| x.as_slice() == v))
    {
        return false;
    }
    if let Some(nets) = &m.source
        && !in_prefixes(Some(f.sender), nets)
    {
        return false;
    }
    if let Some(nets) = &m.inner_src
        && !in_prefixes(f.inner_src, nets)
    {
        return false;
    }
    if let Some(nets) = &m.inner_dst
        && !in_prefixes(f.inner_dst, nets)
    {
        return false;
    }
    if let Some(r) = &m.inner_port {
        let hit = |p: Option<u16>| p.is_some_and(|p| r.iter().any(|r| r.contains(&p)));
        if !hit(f.src_port) && !hit(f.dst_port) {
            return false;
        }
    }
    if let Some(mask) = m.sip_method
        && f.sip.method().is_none_or(|i| mask & (1 << i) == 0)
    {
        return false;
    }
    if let Some(r) = &m.sip_status
        && !f
            .sip
            .status()
            .is_some_and(|s| r.iter().any(|r| r.contains(&s)))
    {
        return false;
    }
    if let Some(c) = &m.correlation
        && !f.key().is_some_and(|k| correlation_matches(c, k))
    {
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn correlation_tests() {
        let c = CorrelationMatcher {
            suffix: vec![b"@carrier.example".to_vec()],
            ..Default::default()
        };
        assert!(correlation_matches(&c, b"abc@carrier.example"));
        assert!(!correlation_matches(&c, b"abc@other.example"));
        let d = CorrelationMatcher {
            domain: vec![b"carrier.example".to_vec()],
            prefix: vec![b"a".to_vec(), b"b".to_vec()],
            ..Default::default()
        };
        assert!(correlation_matches(&d, b"b1@x@carrier.example"));
        assert!(!correlation_matches(&d, b"c1@carrier.example"));
        assert!(!correlation_matches(&d, b"a-no-domain"));
        let e = CorrelationMatcher {
            exact: vec![b"x".to_vec()],
            ..Default::default()
        };
        assert!(correlation_matches(&e, b"x") && !correlation_matches(&e, b"xx"));
    }
}
