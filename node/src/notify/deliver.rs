//! One delivery attempt: resolve, refuse forbidden addresses, connect, (TLS), POST, read
//! the status; every step inside the request timeout, one connection per attempt, and never
//! a redirect followed (a 3xx is a failure, as Standard Webhooks says).
//!
//! The SSRF rule: a subscription's host must not resolve to a link-local address
//! (169.254.0.0/16, fe80::/10, where cloud metadata services answer), to a known metadata
//! address (fd00:ec2::254, 100.100.100.200), to an unspecified, multicast or broadcast
//! address, unless the node runs with `--webhook-allow-link-local`. The check is made on the
//! addresses connected to, after resolution, so DNS cannot point a name there later.
//! Loopback and private networks are allowed: receivers often live next to the mesh.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use statusmesh_crdt::checks::Target;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::probe::run::{connect_checked, http1, tls_over};

/// Most bytes of a failed answer's body kept for the deliveries log.
const ERROR_BODY_MAX: usize = 256;

/// What one attempt's receiver said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A status code; `retry_after` from the header when it was seconds or an HTTP date.
    Status {
        code: u16,
        retry_after: Option<Duration>,
        body: String,
    },
    /// No answer: the reason (DNS, refused address, connect, TLS, timeout).
    Failed(String),
}

/// The headers of one attempt, besides Host, Content-Type and User-Agent.
pub type Headers = Vec<(&'static str, String)>;

/// POSTs `body` to `target`.
pub async fn post(
    target: &Target,
    headers: &Headers,
    body: Vec<u8>,
    timeout: Duration,
    tls: &Arc<rustls::ClientConfig>,
    allow_link_local: bool,
) -> Answer {
    let attempt = attempt(target, headers, body, tls, allow_link_local);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(reason)) => Answer::Failed(reason),
        Err(_) => Answer::Failed(format!("timeout after {} ms", timeout.as_millis())),
    }
}

async fn attempt(
    target: &Target,
    headers: &Headers,
    body: Vec<u8>,
    tls: &Arc<rustls::ClientConfig>,
    allow_link_local: bool,
) -> Result<Answer, String> {
    let Target::Http {
        tls: secure,
        host,
        port,
        path,
    } = target
    else {
        return Err("a webhook URL is http:// or https://".into());
    };
    let stream = connect_checked(host, *port, |ip| refused(ip, allow_link_local)).await?;
    let request = (host.as_str(), *port, path.as_str());
    if *secure {
        let stream = tls_over(tls, host, stream).await?;
        send(stream, request, headers, body).await
    } else {
        send(stream, request, headers, body).await
    }
}

/// Whether the SSRF rule refuses `ip` (see the module's comment).
pub fn refused(ip: IpAddr, allow_link_local: bool) -> Option<&'static str> {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() || ip.is_multicast() || ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        return Some("an unspecified, multicast or broadcast address");
    }
    if allow_link_local {
        return None;
    }
    let metadata = [
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
        IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
    ];
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local || metadata.contains(&ip) {
        return Some("a link-local or cloud metadata address");
    }
    None
}

async fn send<S>(
    stream: S,
    (host, port, path): (&str, u16, &str),
    headers: &Headers,
    body: Vec<u8>,
) -> Result<Answer, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, _connection, authority) = http1(stream, host, port).await?;
    let mut request = hyper::Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header(
            hyper::header::USER_AGENT,
            concat!("statusmesh/", env!("CARGO_PKG_VERSION")),
        )
        .header(hyper::header::CONNECTION, "close");
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("http: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let code = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(hyper::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let body = if (200..300).contains(&code) {
        String::new()
    } else {
        read_prefix(response.into_body()).await
    };
    Ok(Answer::Status {
        code,
        retry_after,
        body,
    })
}

/// `Retry-After` as delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The first bytes of an error answer's body, as text, for the deliveries log.
async fn read_prefix(mut body: hyper::body::Incoming) -> String {
    let mut out = Vec::new();
    while out.len() < ERROR_BODY_MAX {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = ERROR_BODY_MAX - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
            _ => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_and_metadata_addresses_are_refused_unless_allowed() {
        for ip in [
            "169.254.169.254",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:169.254.1.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(refused(ip, false).is_some(), "{ip}");
            assert!(refused(ip, true).is_none(), "{ip} allowed");
        }
        for ip in ["0.0.0.0", "224.0.0.1", "255.255.255.255", "::"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(refused(ip, true).is_some(), "{ip} is never a receiver");
        }
        for ip in ["127.0.0.1", "10.1.2.3", "::1", "93.184.216.34"] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(refused(ip, false).is_none(), "{ip}");
        }
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO),
            "a date in the past means now"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
