//! The control plane's one way out to URLs users give it: deployment
//! notifications and budget webhooks. A user with deploy rights must not
//! be able to make the server call what only the server can reach (its own
//! loopback, the cloud metadata address, the private network), so:
//!
//! - every address a name resolves to is checked against an
//!   [`OutboundPolicy`] (loopback, private, link-local, shared, multicast
//!   and unspecified addresses are refused unless the operator allows a
//!   range), and the client connects only to an address that passed: DNS
//!   cannot swap in another one between the check and the connection;
//! - an IP literal in the URL is checked the same way before sending;
//! - redirects are not followed: a 3xx answer is a failed delivery;
//! - connecting and the whole exchange are bounded in time.
//!
//! Rollout hooks do not go through here: they call the gateway's own
//! socket, at an address the server built, with redirects off
//! ([`Outbound::gateway`]).

use crate::error::{ControlError, ControlResult};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// How long a webhook may take to connect, and in all.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Which addresses the control plane may call.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    /// Ranges the operator allows although they are not public.
    allowed: Vec<ipnet::IpNet>,
}

impl OutboundPolicy {
    pub fn new(allowed: Vec<ipnet::IpNet>) -> Self {
        Self { allowed }
    }

    /// Parses `10.0.0.0/8`, `127.0.0.1` (one address), `::1`.
    pub fn parse_range(text: &str) -> Result<ipnet::IpNet, String> {
        let text = text.trim();
        text.parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(ipnet::IpNet::from))
            .map_err(|_| {
                format!("invalid address range {text:?}: give an IP address or a CIDR range, e.g. 10.1.2.0/24")
            })
    }

    /// Why `ip` may not be called, or `None` when it may. An IPv6 address
    /// that carries an IPv4 one (mapped, compatible, NAT64, 6to4) is
    /// judged as that IPv4 address too.
    pub fn refusal(&self, ip: IpAddr) -> Option<&'static str> {
        if let IpAddr::V6(v6) = ip
            && let Some(v4) = seal_artifact::capabilities::embedded_v4(v6)
            && let Some(why) = self.refusal(IpAddr::V4(v4))
        {
            return Some(why);
        }
        if self.allowed.iter().any(|n| n.contains(&ip)) {
            return None;
        }
        seal_artifact::capabilities::range_refusal(ip)
    }
}

/// The refusal a resolver hands back to reqwest, and its message.
#[derive(Debug)]
struct Refused(String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

fn refused_message(host: &str, ip: IpAddr, why: &str) -> String {
    format!(
        "{host} is {ip}, a {why} address, which this server does not call; its operator can allow the range"
    )
}

/// Resolves names and keeps only the addresses the policy allows.
struct PolicyResolver {
    policy: Arc<OutboundPolicy>,
}

impl reqwest::dns::Resolve for PolicyResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let policy = self.policy.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let all: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let mut first_refusal = None;
            let allowed: Vec<SocketAddr> = all
                .into_iter()
                .filter(|a| match policy.refusal(a.ip()) {
                    None => true,
                    Some(why) => {
                        first_refusal.get_or_insert_with(|| refused_message(&host, a.ip(), why));
                        false
                    }
                })
                .collect();
            if allowed.is_empty() {
                let message =
                    first_refusal.unwrap_or_else(|| format!("{host} resolves to no address"));
                return Err(Box::new(Refused(message)) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The control plane's HTTP clients: one for URLs users give (policy,
/// no redirects, timeouts), one for the gateway's own socket (hooks).
#[derive(Clone)]
pub struct Outbound {
    policy: Arc<OutboundPolicy>,
    /// `None` when the client could not be built: nothing is sent (never
    /// a default client, which would follow redirects and skip the policy).
    webhooks: Option<reqwest::Client>,
    gateway: reqwest::Client,
}

impl Outbound {
    pub fn new(policy: OutboundPolicy) -> Self {
        let policy = Arc::new(policy);
        // Building a client fails only when its TLS backend cannot start;
        // this one has none. Should it fail, webhooks are not sent at all.
        let webhooks = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .build()
            .inspect_err(|e| tracing::error!(error = %e, "cannot build the webhook client; webhooks will not be sent"))
            .ok();
        let gateway = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(CONNECT_TIMEOUT)
            .no_proxy()
            .build()
            .unwrap_or_default();
        Self {
            policy,
            webhooks,
            gateway,
        }
    }

    /// The client for the gateway's own socket (rollout hooks).
    pub(crate) fn gateway(&self) -> &reqwest::Client {
        &self.gateway
    }

    /// Checks a URL a user gives for a webhook: `http://`, a host, and an
    /// IP literal the policy allows. A name is checked again, on what it
    /// resolves to, each time it is called.
    pub fn check_url(&self, what: &str, url: &str) -> ControlResult<reqwest::Url> {
        let invalid =
            |why: String| ControlError::bad_request(format!("invalid {what} {url:?}: {why}"));
        let parsed = reqwest::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
        if parsed.scheme() != "http" {
            return Err(invalid(
                "give an http:// URL (https is not supported by this server's client)".into(),
            ));
        }
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(invalid("credentials in the URL are not accepted".into()));
        }
        let ip = match parsed.host() {
            Some(url::Host::Ipv4(a)) => IpAddr::V4(a),
            Some(url::Host::Ipv6(a)) => IpAddr::V6(a),
            Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
                return Err(invalid(
                    "localhost is a loopback address, which this server does not call; its operator can allow the range".into(),
                ));
            }
            Some(url::Host::Domain(_)) => return Ok(parsed),
            None => return Err(invalid("the URL names no host".into())),
        };
        if let Some(why) = self.policy.refusal(ip) {
            return Err(invalid(refused_message(&ip.to_string(), ip, why)));
        }
        Ok(parsed)
    }

    /// POSTs a JSON body to a webhook. `Err` says why it was not
    /// delivered: refused by the policy, unreachable, timed out, or an
    /// answer that is not 2xx (a redirect included).
    pub(crate) async fn post_json(
        &self,
        url: &str,
        body: &serde_json::Value,
    ) -> Result<(), String> {
        let parsed = self.check_url("webhook", url).map_err(|e| e.to_string())?;
        let Some(client) = &self.webhooks else {
            return Err("the webhook client could not start".into());
        };
        let resp = client
            .post(parsed)
            .json(body)
            .send()
            .await
            .map_err(|e| error_chain(&e))?;
        let status = resp.status();
        if status.is_success() {
            Ok(())
        } else if status.is_redirection() {
            Err(format!(
                "answered {} (redirects are not followed)",
                status.as_u16()
            ))
        } else {
            Err(format!("answered {}", status.as_u16()))
        }
    }

    /// POSTs with retries and exponential backoff (5 attempts from 200 ms),
    /// off the caller's path; `what` names it in the log.
    /// `about` names what it is about in the log (e.g. a deployment).
    pub(crate) fn deliver(
        &self,
        what: &'static str,
        about: String,
        url: String,
        body: serde_json::Value,
    ) {
        let out = self.clone();
        tokio::spawn(async move {
            // The log names where it goes, not the path (tokens live there).
            let shown = crate::redact::url(&url);
            let mut delay = Duration::from_millis(200);
            for attempt in 1..=5 {
                match out.post_json(&url, &body).await {
                    Ok(()) => return,
                    Err(error) => tracing::warn!(
                        url = shown,
                        about,
                        attempt,
                        error = error.replace(&url, &shown),
                        "{what} not delivered"
                    ),
                }
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            tracing::error!(url = shown, about, "{what} dropped after 5 attempts");
        });
    }
}

/// An error with its sources: reqwest's own message hides the resolver's.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn private_and_local_addresses_are_refused_unless_allowed() {
        let p = OutboundPolicy::default();
        for (addr, why) in [
            ("127.0.0.1", "loopback"),
            ("127.8.9.10", "loopback"),
            ("10.1.2.3", "private"),
            ("172.16.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (carrier-grade NAT)"),
            ("0.0.0.0", "unspecified"),
            ("224.0.0.1", "multicast or broadcast"),
            ("255.255.255.255", "multicast or broadcast"),
            ("::1", "loopback"),
            ("::", "unspecified"),
            ("fd00::1", "private"),
            ("fe80::1", "link-local"),
            ("ff02::1", "multicast or broadcast"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::127.0.0.1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("64:ff9b:1::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("fec0::1", "link-local"),
            ("192.0.0.8", "reserved"),
            ("198.18.0.1", "reserved"),
            ("240.0.0.1", "reserved"),
        ] {
            assert_eq!(p.refusal(ip(addr)), Some(why), "{addr}");
        }
        for public in [
            "93.184.216.34",
            "1.1.1.1",
            "2606:4700::1111",
            "100.128.0.1",
            "64:ff9b::5db8:d822",
            "2002:5db8:d822::1",
            "198.20.0.1",
        ] {
            assert_eq!(p.refusal(ip(public)), None, "{public}");
        }
        let allowed = OutboundPolicy::new(vec![
            OutboundPolicy::parse_range("127.0.0.1").unwrap(),
            OutboundPolicy::parse_range("10.1.0.0/16").unwrap(),
        ]);
        assert_eq!(allowed.refusal(ip("127.0.0.1")), None);
        assert_eq!(allowed.refusal(ip("::ffff:127.0.0.1")), None);
        assert_eq!(allowed.refusal(ip("127.0.0.2")), Some("loopback"));
        assert_eq!(allowed.refusal(ip("10.1.200.1")), None);
        assert_eq!(allowed.refusal(ip("10.2.0.1")), Some("private"));
        assert!(OutboundPolicy::parse_range("10.0.0.0/33").is_err());
        assert!(OutboundPolicy::parse_range("example.org").is_err());
    }

    #[test]
    fn webhook_urls_are_checked_before_anything_is_sent() {
        let out = Outbound::new(OutboundPolicy::default());
        assert!(
            out.check_url("webhook", "http://hooks.example.org/x")
                .is_ok()
        );
        assert!(
            out.check_url("webhook", "http://93.184.216.34:8080/x")
                .is_ok()
        );
        for (url, needle) in [
            ("http://127.0.0.1:9/secret", "loopback"),
            ("http://[::1]/x", "loopback"),
            ("http://169.254.169.254/latest/meta-data", "link-local"),
            ("http://LOCALHOST:8081/v1/tokens", "loopback"),
            ("https://hooks.example.org/x", "http://"),
            ("http://user:pw@hooks.example.org/x", "credentials"),
            ("hooks.example.org/x", "invalid webhook"),
        ] {
            let e = out.check_url("webhook", url).unwrap_err();
            assert!(matches!(e, ControlError::Invalid(_)), "{url}: {e:?}");
            assert!(e.to_string().contains(needle), "{url}: {e}");
        }
    }

    #[tokio::test]
    async fn a_name_that_resolves_to_loopback_is_not_called_and_redirects_are_not_followed() {
        // A real listener on loopback that answers every request with a
        // redirect and counts what reaches it.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = hits.clone();
        tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            while let Ok((mut s, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                let _ = s
                    .write_all(b"HTTP/1.1 307 Temporary Redirect\r\nlocation: http://127.0.0.1:9/secret\r\ncontent-length: 0\r\n\r\n")
                    .await;
            }
        });
        let body = serde_json::json!({"event": "test"});

        // A name that resolves to loopback (past the URL check, as a name
        // a user controls would be): the resolver refuses every address
        // and nothing connects.
        let strict = Outbound::new(OutboundPolicy::default());
        let e = strict
            .webhooks
            .as_ref()
            .unwrap()
            .post(format!("http://localhost:{port}/hook"))
            .json(&body)
            .send()
            .await
            .unwrap_err();
        let e = error_chain(&e);
        assert!(
            e.contains("localhost is 127.0.0.1, a loopback address"),
            "{e}"
        );
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 0);

        // Allowed by the operator: delivered, but the redirect is a failure
        // and is not followed.
        let allowed = Outbound::new(OutboundPolicy::new(vec![
            OutboundPolicy::parse_range("127.0.0.1").unwrap(),
        ]));
        let e = allowed
            .post_json(&format!("http://127.0.0.1:{port}/hook"), &body)
            .await
            .unwrap_err();
        assert!(e.contains("307") && e.contains("not followed"), "{e}");
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
