//! What a function may do, as its manifest declares it: the syntax of
//! outbound host patterns and config keys, how a pattern matches a request's
//! host, and the permission diff between two versions.
//!
//! The runtime enforces these (outbound requests, environment variables);
//! the deploy engine shows the diff and refuses an unapproved widening.

use serde::Serialize;

/// One entry of `capabilities.outbound_hosts`:
///
/// - `api.example.org` — that host, any port;
/// - `api.example.org:8443`, `127.0.0.1:9000`, `[::1]:8080` — that host and port;
/// - `*.example.org` — any subdomain (not `example.org` itself), any port;
/// - `*` — any host (the widest grant; shown as such in permission diffs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPattern {
    host: HostMatch,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `.example.org` for `*.example.org`.
    Suffix(String),
}

impl HostPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("invalid outbound host {s:?}: {why}"));
        let t = s.trim();
        if t == "*" {
            return Ok(Self {
                host: HostMatch::Any,
                port: None,
            });
        }
        if t.is_empty() {
            return bad("it is empty");
        }
        if t.contains("://") || t.contains('/') {
            return bad("give a host (and optional :port), not a URL");
        }
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let Some((addr, after)) = rest.split_once(']') else {
                return bad("unclosed '[' in an IPv6 address");
            };
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').unwrap_or("x")),
            };
            if addr.parse::<std::net::Ipv6Addr>().is_err() {
                return bad("not an IPv6 address between '[' and ']'");
            }
            (addr.to_ascii_lowercase(), port)
        } else {
            match t.rsplit_once(':') {
                Some((h, p)) => (h.to_ascii_lowercase(), Some(p)),
                None => (t.to_ascii_lowercase(), None),
            }
        };
        let port = match port {
            None => None,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => Some(n),
                _ => return bad("the port must be a number from 1 to 65535"),
            },
        };
        if host.contains(':') {
            if host.parse::<std::net::Ipv6Addr>().is_ok() {
                return Ok(Self {
                    host: HostMatch::Exact(host),
                    port,
                });
            }
            return bad("write IPv6 addresses in brackets, e.g. [::1]:8080");
        }
        let (wild, name) = match host.strip_prefix("*.") {
            Some(n) => (true, n),
            None => (false, host.as_str()),
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
            return bad(
                "expected a host name like api.example.org, *.example.org, an IP address, or *",
            );
        }
        Ok(Self {
            host: if wild {
                HostMatch::Suffix(format!(".{name}"))
            } else {
                HostMatch::Exact(name.to_owned())
            },
            port,
        })
    }

    /// Whether a request to `host:port` is allowed by this pattern. `host`
    /// is as in a URI authority (IPv6 in brackets or not).
    pub fn matches(&self, host: &str, port: u16) -> bool {
        if self.port.is_some_and(|p| p != port) {
            return false;
        }
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .trim_end_matches('.')
            .to_ascii_lowercase();
        match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(h) => *h == host,
            HostMatch::Suffix(s) => host.len() > s.len() && host.ends_with(s.as_str()),
        }
    }
}

/// Whether any of `patterns` allows `host:port`.
pub fn host_allowed(patterns: &[HostPattern], host: &str, port: u16) -> bool {
    patterns.iter().any(|p| p.matches(host, port))
}

/// Whether a pattern names the address `ip` itself (an IP literal, not a
/// name nor `*`) and allows `port`: the only way a function may reach an
/// address that is not public.
pub fn address_named(patterns: &[HostPattern], ip: std::net::IpAddr, port: u16) -> bool {
    patterns.iter().any(|p| {
        p.port.is_none_or(|q| q == port)
            && matches!(&p.host, HostMatch::Exact(h) if h.parse::<std::net::IpAddr>() == Ok(ip))
    })
}

/// Config keys are environment variable names: `[A-Za-z_][A-Za-z0-9_]*`,
/// at most 128 characters, not starting with `SEAL_` (reserved for what
/// Seal itself tells the guest). `*` in a manifest means every key.
pub fn validate_config_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !ok {
        return Err(format!(
            "invalid key {:?}: use letters, digits and '_', not starting with a digit (an environment variable name)",
            key.chars().take(80).collect::<String>()
        ));
    }
    if key.to_ascii_uppercase().starts_with("SEAL_") {
        return Err(format!(
            "invalid key {key:?}: names starting with SEAL_ are reserved for Seal"
        ));
    }
    Ok(())
}

/// A feature flag key a manifest may declare: 1 to 128 letters, digits,
/// `-`, `_` or `.` (the keys `seal flags` accepts).
pub fn validate_flag_key(key: &str) -> Result<(), String> {
    let ok = !key.is_empty()
        && key.len() <= 128
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "flag {key:?}: use 1 to 128 letters, digits, '-', '_' or '.'"
        ))
    }
}

/// Whether a manifest's declared `config_keys` let the guest see `key`.
pub fn config_key_allowed(declared: &[String], key: &str) -> bool {
    declared.iter().any(|d| d == "*" || d == key)
}

/// What changes in permissions from the version serving to a candidate.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PermissionDiff {
    pub added_hosts: Vec<String>,
    pub removed_hosts: Vec<String>,
    pub added_config_keys: Vec<String>,
    pub removed_config_keys: Vec<String>,
    /// Queues the function may publish to.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added_queues: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed_queues: Vec<String>,
    /// Feature flags the function may read.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub added_flags: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed_flags: Vec<String>,
    /// `[from, to]` when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<[u64; 2]>,
    /// `[from, to]` invocations per instance (`None`: a fresh instance
    /// each) when it changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_reuse: Option<[Option<u32>; 2]>,
    /// True when the candidate may do anything the current one may not:
    /// a new host, key or queue, more memory, a longer timeout.
    pub widens: bool,
}

impl PermissionDiff {
    pub fn between(from: &crate::SealManifest, to: &crate::SealManifest) -> Self {
        let minus = |a: &[String], b: &[String]| -> Vec<String> {
            let mut v: Vec<String> = a.iter().filter(|x| !b.contains(x)).cloned().collect();
            v.sort();
            v.dedup();
            v
        };
        let (fc, tc) = (&from.capabilities, &to.capabilities);
        let changed = |a: u64, b: u64| (a != b).then_some([a, b]);
        let mut d = Self {
            added_hosts: minus(&tc.outbound_hosts, &fc.outbound_hosts),
            removed_hosts: minus(&fc.outbound_hosts, &tc.outbound_hosts),
            added_config_keys: minus(&tc.config_keys, &fc.config_keys),
            removed_config_keys: minus(&fc.config_keys, &tc.config_keys),
            added_queues: minus(&tc.queues, &fc.queues),
            removed_queues: minus(&fc.queues, &tc.queues),
            added_flags: minus(&tc.flags, &fc.flags),
            removed_flags: minus(&fc.flags, &tc.flags),
            memory_mb: changed(from.limits.memory_mb, to.limits.memory_mb),
            timeout_ms: changed(from.limits.timeout_ms, to.limits.timeout_ms),
            instance_reuse: (from.limits.instance_reuse != to.limits.instance_reuse)
                .then_some([from.limits.instance_reuse, to.limits.instance_reuse]),
            widens: false,
        };
        d.widens = !d.added_hosts.is_empty()
            || !d.added_config_keys.is_empty()
            || !d.added_queues.is_empty()
            || !d.added_flags.is_empty()
            || d.memory_mb.is_some_and(|[a, b]| b > a)
            || d.timeout_ms.is_some_and(|[a, b]| b > a)
            // State kept across callers is less isolation.
            || d.instance_reuse.is_some_and(|[a, b]| b.unwrap_or(1) > a.unwrap_or(1));
        d
    }

    pub fn is_empty(&self) -> bool {
        *self
            == Self {
                widens: self.widens,
                ..Self::default()
            }
    }

    /// One line per change, `+` for what is granted, `-` for what is given up.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        out.extend(
            self.added_hosts
                .iter()
                .map(|h| format!("+ outbound host {h}")),
        );
        out.extend(
            self.removed_hosts
                .iter()
                .map(|h| format!("- outbound host {h}")),
        );
        out.extend(
            self.added_config_keys
                .iter()
                .map(|k| format!("+ config key {k}")),
        );
        out.extend(
            self.removed_config_keys
                .iter()
                .map(|k| format!("- config key {k}")),
        );
        out.extend(
            self.added_queues
                .iter()
                .map(|q| format!("+ publish to queue {q}")),
        );
        out.extend(
            self.removed_queues
                .iter()
                .map(|q| format!("- publish to queue {q}")),
        );
        out.extend(self.added_flags.iter().map(|f| format!("+ read flag {f}")));
        out.extend(
            self.removed_flags
                .iter()
                .map(|f| format!("- read flag {f}")),
        );
        if let Some([a, b]) = self.memory_mb {
            out.push(format!(
                "{} memory {a} MiB -> {b} MiB",
                if b > a { "+" } else { "-" }
            ));
        }
        if let Some([a, b]) = self.timeout_ms {
            out.push(format!(
                "{} timeout {a} ms -> {b} ms",
                if b > a { "+" } else { "-" }
            ));
        }
        if let Some([a, b]) = self.instance_reuse {
            let says = |n: Option<u32>| match n {
                None => "a fresh instance per request".to_owned(),
                Some(n) => format!("{n} invocations per instance"),
            };
            out.push(format!(
                "{} instance reuse: {} -> {}",
                if b.unwrap_or(1) > a.unwrap_or(1) {
                    "+"
                } else {
                    "-"
                },
                says(a),
                says(b)
            ));
        }
        out
    }
}

/// Why a request to `ip` is not a request to the public internet
/// (`loopback`, `private`, `link-local`, `shared (carrier-grade NAT)`,
/// `multicast or broadcast`, `unspecified`, `reserved`), or `None` for a
/// public address. An IPv6 address that carries an IPv4 one (mapped,
/// compatible, NAT64, 6to4) is judged as that IPv4 address too.
pub fn address_refusal(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = embedded_v4(v6)
        && let Some(why) = address_refusal(IpAddr::V4(v4))
    {
        return Some(why);
    }
    range_refusal(ip)
}

/// [`address_refusal`] of the address's own range, without looking at an
/// IPv4 address it may carry.
pub fn range_refusal(ip: std::net::IpAddr) -> Option<&'static str> {
    use std::net::IpAddr;
    match ip {
        IpAddr::V4(a) => {
            let [first, second, third, _] = a.octets();
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_private() {
                Some("private")
            } else if a.is_link_local() {
                Some("link-local")
            } else if first == 100 && (64..128).contains(&second) {
                Some("shared (carrier-grade NAT)")
            } else if a.is_multicast() || a.is_broadcast() {
                Some("multicast or broadcast")
            } else if a.is_unspecified() || first == 0 {
                Some("unspecified")
            } else if first >= 240
                || (first == 192 && second == 0 && third == 0)
                || (first == 198 && (18..20).contains(&second))
            {
                Some("reserved")
            } else {
                None
            }
        }
        IpAddr::V6(a) => {
            let first = a.segments()[0];
            if a.is_loopback() {
                Some("loopback")
            } else if a.is_unspecified() {
                Some("unspecified")
            } else if a.is_multicast() {
                Some("multicast or broadcast")
            } else if first & 0xfe00 == 0xfc00 {
                Some("private")
            } else if first & 0xffc0 == 0xfe80 || first & 0xffc0 == 0xfec0 {
                Some("link-local")
            } else {
                None
            }
        }
    }
}

/// The IPv4 address an IPv6 one carries: mapped (`::ffff:a.b.c.d`),
/// compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`, `64:ff9b:1::/48`) or
/// 6to4 (`2002:aabb:ccdd::/48`).
pub fn embedded_v4(v6: std::net::Ipv6Addr) -> Option<std::net::Ipv4Addr> {
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        let [a, b] = hi.to_be_bytes();
        let [c, d] = lo.to_be_bytes();
        std::net::Ipv4Addr::new(a, b, c, d)
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        Some(mapped)
    } else if (s[..6] == [0; 6] && (s[6] != 0 || s[7] > 1))
        || (s[0] == 0x64 && s[1] == 0xff9b && (s[2..6] == [0; 4] || s[2] == 1))
    {
        Some(v4(s[6], s[7]))
    } else if s[0] == 0x2002 {
        Some(v4(s[1], s[2]))
    } else {
        None
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_match_hosts_and_ports() {
        let p = |s| HostPattern::parse(s).unwrap();
        assert!(p("api.example.org").matches("API.example.org", 443));
        assert!(p("api.example.org").matches("api.example.org", 8080));
        assert!(!p("api.example.org").matches("evil.example.org", 443));
        assert!(!p("api.example.org").matches("api.example.org.evil.com", 443));
        assert!(p("127.0.0.1:9000").matches("127.0.0.1", 9000));
        assert!(!p("127.0.0.1:9000").matches("127.0.0.1", 9001));
        assert!(p("*.example.org").matches("a.b.example.org", 80));
        assert!(!p("*.example.org").matches("example.org", 80));
        assert!(!p("*.example.org").matches("badexample.org", 80));
        assert!(p("[::1]:8080").matches("[::1]", 8080));
        assert!(p("*").matches("anything.test", 1));
        for bad in [
            "",
            "http://a.org",
            "a.org/path",
            "a.org:0",
            "a.org:http",
            "a..org",
            "-a.org",
            "::1",
            "[::1",
            "*.",
        ] {
            assert!(HostPattern::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn config_keys_are_env_names_and_seal_is_reserved() {
        assert!(validate_config_key("GREETING").is_ok());
        assert!(validate_config_key("_x1").is_ok());
        for bad in ["", "1A", "A-B", "A B", "SEAL_VERSION", "seal_x"] {
            assert!(validate_config_key(bad).is_err(), "{bad:?}");
        }
        assert!(config_key_allowed(&["A".into()], "A"));
        assert!(!config_key_allowed(&["A".into()], "B"));
        assert!(config_key_allowed(&["*".into()], "B"));
    }

    #[test]
    fn a_flag_read_is_a_permission() {
        assert!(validate_flag_key("new-checkout.v2_x").is_ok());
        for bad in ["", "a b", "a/b", &"x".repeat(129)] {
            assert!(validate_flag_key(bad).is_err(), "{bad:?}");
        }
        let a = crate::SealManifest::new("f");
        let mut b = a.clone();
        b.capabilities.flags = vec!["new-checkout".into()];
        let d = PermissionDiff::between(&a, &b);
        assert!(d.widens);
        assert_eq!(d.lines(), ["+ read flag new-checkout"]);
        let back = PermissionDiff::between(&b, &a);
        assert!(!back.widens);
        assert_eq!(back.lines(), ["- read flag new-checkout"]);
        // A manifest without flags keeps its canonical bytes (and digest).
        assert!(
            !String::from_utf8(a.to_canonical_json())
                .unwrap()
                .contains("flags")
        );
        let mut bad = a.clone();
        bad.capabilities.flags = vec!["no spaces".into()];
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("capabilities.flags")
        );
    }

    #[test]
    fn diff_says_what_widens() {
        let mut a = crate::SealManifest::new("f");
        a.capabilities.outbound_hosts = vec!["a.org".into()];
        a.capabilities.config_keys = vec!["K".into()];
        let mut b = a.clone();
        assert!(PermissionDiff::between(&a, &b).is_empty());
        b.capabilities.outbound_hosts = vec!["b.org".into()];
        b.limits.memory_mb = a.limits.memory_mb / 2;
        let d = PermissionDiff::between(&a, &b);
        assert!(d.widens && !d.is_empty());
        assert_eq!(d.added_hosts, ["b.org"]);
        assert_eq!(d.removed_hosts, ["a.org"]);
        assert_eq!(
            d.lines(),
            [
                "+ outbound host b.org",
                "- outbound host a.org",
                "- memory 128 MiB -> 64 MiB"
            ]
        );
        // Only narrowing: not a widening.
        let mut c = a.clone();
        c.capabilities.config_keys.clear();
        c.limits.timeout_ms = 1000;
        let d = PermissionDiff::between(&a, &c);
        assert!(!d.widens && !d.is_empty());
        // A queue to publish to is a widening, in the lines as such.
        let mut q = a.clone();
        q.capabilities.queues = vec!["invoices".into()];
        let d = PermissionDiff::between(&a, &q);
        assert!(d.widens);
        assert_eq!(d.lines(), ["+ publish to queue invoices"]);
        let d = PermissionDiff::between(&q, &a);
        assert!(!d.widens);
        assert_eq!(d.lines(), ["- publish to queue invoices"]);
        // Instance reuse keeps state across callers: a widening.
        let mut r = a.clone();
        r.limits.instance_reuse = Some(1000);
        let d = PermissionDiff::between(&a, &r);
        assert!(d.widens);
        assert_eq!(
            d.lines(),
            ["+ instance reuse: a fresh instance per request -> 1000 invocations per instance"]
        );
        let d = PermissionDiff::between(&r, &a);
        assert!(!d.widens);
        assert_eq!(
            d.lines(),
            ["- instance reuse: 1000 invocations per instance -> a fresh instance per request"]
        );
    }

    #[test]
    fn only_an_ip_literal_names_a_non_public_address() {
        let p = |v: &[&str]| -> Vec<HostPattern> {
            v.iter().map(|s| HostPattern::parse(s).unwrap()).collect()
        };
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(address_named(&p(&["127.0.0.1:9000"]), lo, 9000));
        assert!(!address_named(&p(&["127.0.0.1:9000"]), lo, 9001));
        assert!(address_named(&p(&["127.0.0.1"]), lo, 80));
        assert!(address_named(
            &p(&["[::1]:8080"]),
            "::1".parse().unwrap(),
            8080
        ));
        for not_named in [
            &["*"][..],
            &["localhost"],
            &["*.example.org"],
            &["127.0.0.2"],
        ] {
            assert!(!address_named(&p(not_named), lo, 80), "{not_named:?}");
        }
        assert_eq!(address_refusal(lo), Some("loopback"));
        assert_eq!(
            address_refusal("169.254.169.254".parse().unwrap()),
            Some("link-local")
        );
        assert_eq!(
            address_refusal("::ffff:10.0.0.1".parse().unwrap()),
            Some("private")
        );
        assert_eq!(address_refusal("93.184.216.34".parse().unwrap()), None);
    }
}
