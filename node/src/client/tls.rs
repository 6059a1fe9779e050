//! The HTTP client of the client commands, and how it trusts a node's HTTPS certificate:
//! `--ca FILE` (PEM, every certificate in it trusted) or, without it, the system's roots. The
//! rustls configuration is built here on the workspace's ring provider and handed to reqwest
//! whole, so reqwest brings no crypto provider of its own.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use super::ClientError;

/// The client for `--ca` (`None`: the system's roots). An unreadable file, or one without a
/// certificate, is an error naming it.
pub fn http_client(ca: Option<&Path>) -> Result<reqwest::Client, ClientError> {
    let roots = match ca {
        Some(path) => ca_roots(path)?,
        None => system_roots(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientError::Tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    // reqwest is built without HTTP/2 here; the commands make one request at a time.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .build()
        .map_err(|e| ClientError::Tls(describe(&e)))
}

/// A request error with its causes (reqwest's own message names only the URL), and what to
/// do when the node's certificate is not trusted.
pub fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    // Bounded: error chains are short, but a cycle must not hang the command.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.contains("invalid peer certificate") {
        text.push_str(
            " (the node's HTTPS certificate is not trusted: pass --ca FILE with the CA that issued it)",
        );
    }
    text
}

/// When no node answered the round-trip probes: the first node's error if it is one that
/// retrying does not mend (its certificate is not trusted), so `watch` says so at once
/// instead of reconnecting until it gives up.
pub async fn untrusted(client: &reqwest::Client, urls: &[String]) -> Option<ClientError> {
    let url = urls.first()?;
    let probe = client.get(format!("{url}/healthz")).send();
    let error = tokio::time::timeout(super::PROBE_TIMEOUT, probe)
        .await
        .ok()?
        .err()?;
    let described = describe(&error);
    described
        .contains("invalid peer certificate")
        .then(|| ClientError::Unreachable {
            tried: urls.len(),
            last: format!("{url}: {described}"),
        })
}

fn ca_roots(path: &Path) -> Result<rustls::RootCertStore, ClientError> {
    let invalid = |reason: String| ClientError::Ca {
        path: path.display().to_string(),
        reason,
    };
    let pem = std::fs::read(path).map_err(|e| invalid(format!("cannot read: {e}")))?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a valid PEM certificate: {e}")))?;
    if certs.is_empty() {
        return Err(invalid("no certificate in the file".to_owned()));
    }
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs {
        roots
            .add(cert)
            .map_err(|e| invalid(format!("not a usable CA certificate: {e}")))?;
    }
    Ok(roots)
}

fn system_roots() -> rustls::RootCertStore {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for error in &native.errors {
        tracing::debug!(%error, "a system root certificate was not loaded");
    }
    roots.add_parsable_certificates(native.certs);
    roots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_naming_the_file() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "nothing here").expect("write");
        let error = http_client(Some(&path)).expect_err("refused");
        let message = error.to_string();
        assert!(message.starts_with("--ca "), "{message}");
        assert!(message.contains("ca.pem"), "{message}");
        let missing = http_client(Some(&dir.path().join("missing.pem"))).expect_err("refused");
        assert!(missing.to_string().contains("cannot read"), "{missing}");
    }

    #[test]
    fn a_ca_file_with_a_certificate_makes_a_client() {
        let dir = tempfile::tempdir().expect("dir");
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).expect("ca");
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, ca.pem()).expect("write");
        assert!(http_client(Some(&path)).is_ok());
    }
}
