//! One probe: resolve, connect, (TLS), request, read a bounded body; every step inside the
//! check's timeout, one connection per probe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use statusmesh_crdt::checks::{Check, ProbeOutcome, Target};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Most bytes of a response body read (and searched for `body_contains`).
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// Most addresses of a host name tried, in the order DNS gives them.
const ADDRESSES_MAX: usize = 4;

/// The TLS settings of https probes: the system's roots, ring, TLS 1.2 and 1.3.
pub fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system root certificate was not loaded");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "system roots for https probes");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    match config {
        Ok(config) => Arc::new(config),
        Err(error) => {
            // ring supports the default versions; this is unreachable in practice, and a
            // config without roots fails every https probe with a visible TLS error.
            tracing::error!(%error, "no TLS configuration for https probes");
            Arc::new(
                rustls::ClientConfig::builder()
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        }
    }
}

/// Runs one probe of `check` to its end or its timeout; `agent` is the User-Agent of http
/// probes (`statusmesh-probe/<node>`, so a target can tell the probing node).
pub async fn probe(check: &Check, tls: &Arc<rustls::ClientConfig>, agent: &str) -> ProbeOutcome {
    let started = Instant::now();
    let timeout = Duration::from_millis(check.timeout_ms);
    let target = match check.parse_target() {
        Ok(t) => t,
        Err(e) => return failed(format!("target: {e}")),
    };
    match tokio::time::timeout(timeout, attempt(check, &target, tls, agent, started)).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(reason)) => failed(reason),
        Err(_) => failed(format!("timeout after {} ms", check.timeout_ms)),
    }
}

fn failed(reason: String) -> ProbeOutcome {
    ProbeOutcome::Failed { reason }
}

async fn attempt(
    check: &Check,
    target: &Target,
    tls: &Arc<rustls::ClientConfig>,
    agent: &str,
    started: Instant,
) -> Result<ProbeOutcome, String> {
    let stream = connect(target.host(), target.port()).await?;
    match target {
        Target::Tcp { .. } => Ok(ProbeOutcome::Answered {
            latency_ms: started.elapsed().as_millis() as u64,
            status: None,
            body_matched: None,
        }),
        Target::Http {
            tls: false,
            host,
            port,
            path,
        } => http_get(check, stream, (host, *port, path), agent, started).await,
        Target::Http {
            tls: true,
            host,
            port,
            path,
        } => {
            let stream = tls_over(tls, host, stream).await?;
            http_get(check, stream, (host, *port, path), agent, started).await
        }
    }
}

async fn connect(host: &str, port: u16) -> Result<TcpStream, String> {
    connect_checked(host, port, |_| None).await
}

/// Connects to the first of `host`'s addresses (at most [`ADDRESSES_MAX`]) that `refuse`
/// lets through (it says why it refuses one) and that accepts. Shared with the webhook
/// sender, whose SSRF rule is such a `refuse`.
pub(crate) async fn connect_checked(
    host: &str,
    port: u16,
    refuse: impl Fn(std::net::IpAddr) -> Option<&'static str>,
) -> Result<TcpStream, String> {
    let addresses: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| format!("dns: {host}: {e}"))?
        .take(ADDRESSES_MAX)
        .collect();
    let mut last = format!("dns: {host}: no address");
    for address in addresses {
        if let Some(why) = refuse(address.ip()) {
            last = format!("refused: {host} resolves to {}, {why}", address.ip());
            continue;
        }
        match TcpStream::connect(address).await {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = "connection refused".to_owned();
            }
            Err(e) => last = format!("connect: {e}"),
        }
    }
    Err(last)
}

/// TLS to `host` over `stream`, verified against the roots of `tls`. Shared with the
/// webhook sender.
pub(crate) async fn tls_over(
    tls: &Arc<rustls::ClientConfig>,
    host: &str,
    stream: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, String> {
    let name = ServerName::try_from(host.to_owned())
        .map_err(|e| format!("tls: server name {host:?}: {e}"))?;
    TlsConnector::from(tls.clone())
        .connect(name, stream)
        .await
        .map_err(|e| format!("tls: {e}"))
}

/// An HTTP/1.1 client connection over `stream` (its driving task aborted when the guard
/// drops) and the `Host` value for (host, port). Shared with the webhook sender.
pub(crate) async fn http1<S, B>(
    stream: S,
    host: &str,
    port: u16,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<B>,
        AbortOnDrop,
        String,
    ),
    String,
>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("http: {e}"))?;
    let guard = AbortOnDrop(tokio::spawn(async move {
        let _ = connection.await;
    }));
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok((sender, guard, authority))
}

/// Aborts the connection task when the request ends, however it ends.
pub(crate) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn http_get<S>(
    check: &Check,
    stream: S,
    (host, port, path): (&str, u16, &str),
    agent: &str,
    started: Instant,
) -> Result<ProbeOutcome, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, _connection, authority) = http1(stream, host, port).await?;
    let request = hyper::Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::USER_AGENT, agent)
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("http: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("http: {e}"))?;
    let status = response.status().as_u16();
    let body_matched = match &check.body_contains {
        None => None,
        Some(needle) => {
            let body = read_bounded(response.into_body()).await?;
            Some(contains(&body, needle.as_bytes()))
        }
    };
    Ok(ProbeOutcome::Answered {
        latency_ms: started.elapsed().as_millis() as u64,
        status: Some(status),
        body_matched,
    })
}

/// The first [`BODY_BYTES_MAX`] bytes of a body; the rest is never read.
async fn read_bounded(mut body: hyper::body::Incoming) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    while out.len() < BODY_BYTES_MAX {
        match body.frame().await {
            None => break,
            Some(Err(e)) => return Err(format!("http body: {e}")),
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = BODY_BYTES_MAX - out.len();
                    out.extend_from_slice(&data[..data.len().min(room)]);
                }
            }
        }
    }
    Ok(out)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_search_finds_bytes_anywhere() {
        assert!(contains(b"status: ok\n", b"ok"));
        assert!(!contains(b"status: down", b"ok"));
        assert!(!contains(b"o", b"ok"));
    }
}
