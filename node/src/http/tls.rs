//! HTTPS for the client API (`statusmesh run --http-tls-cert FILE --http-tls-key FILE`): the
//! certificate chain and key a node serves, loaded from PEM files into a rustls server
//! configuration (the workspace's ring provider, TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`),
//! and swapped in place when [`crate::reload`] reloads it. A reload changes what new
//! connections get; connections already open keep the certificate they were handshaken with.
//!
//! These files are apart from the cluster certificates of `--certs` on purpose: clients reach
//! a node by a public name, usually with a certificate from a public CA, while the mesh
//! trusts its own CA only.
//!
//! [`write_dev_files`] makes the throw-away CA and certificate of `statusmesh dev --https`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

/// ALPN protocols offered, in order of preference: HTTP/2 first, so a browser holds all of a
/// page's event streams on one connection instead of six HTTP/1.1 ones per origin.
pub const ALPN_PROTOCOLS: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why the HTTPS files make no TLS configuration. Nothing changed: at start the node does not
/// start; on a reload the previous certificate stays. The operator's fault (the files).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HttpTlsError {
    /// The file cannot be read.
    #[error("{flag} {path}: cannot read: {reason}")]
    Read {
        flag: &'static str,
        path: String,
        reason: String,
    },
    /// The file holds no valid PEM of what the flag names.
    #[error("{flag} {path}: not a valid PEM {what}: {reason}")]
    Pem {
        flag: &'static str,
        path: String,
        what: &'static str,
        reason: String,
    },
    /// The throw-away certificate of `statusmesh dev --https` could not be made or written.
    #[error("cannot make the dev HTTPS certificate in {dir}: {reason}")]
    Dev { dir: String, reason: String },
    /// Certificate and key do not go together (or rustls refuses them otherwise).
    #[error("--http-tls-cert {cert} and --http-tls-key {key} make no TLS configuration: {reason}")]
    Config {
        cert: String,
        key: String,
        reason: String,
    },
}

/// What a load found: the leaf certificate's fingerprint and how long the chain is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// Hex SHA-256 of the leaf certificate's DER (what `openssl x509 -fingerprint -sha256`
    /// prints, without the colons).
    pub leaf_sha256: String,
    /// Certificates in the chain file, the leaf first.
    pub chain_len: usize,
}

/// The client API's TLS configuration, shared by the server loop and the reloader.
pub struct HttpTls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl std::fmt::Debug for HttpTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpTls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl HttpTls {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (a PEM private key) and checks they
    /// make a TLS configuration; the error names the flag and the file.
    pub fn load(cert: &Path, key: &Path) -> Result<(Self, Loaded), HttpTlsError> {
        let (config, loaded) = build(cert, key)?;
        let tls = Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(config),
        };
        Ok((tls, loaded))
    }

    /// Reads the files again and, when they make a configuration, serves it to new
    /// connections; on an error the previous configuration stays.
    pub fn reload(&self) -> Result<Loaded, HttpTlsError> {
        let (config, loaded) = build(&self.cert, &self.key)?;
        // A poisoned lock only means a writer panicked between two whole values.
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(loaded)
    }

    /// The acceptor for one new connection, with the configuration current now.
    pub fn acceptor(&self) -> TlsAcceptor {
        let config = self.current.read().unwrap_or_else(|p| p.into_inner());
        TlsAcceptor::from(Arc::clone(&config))
    }

    /// The certificate and key files, for the reloader's change watch.
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert, &self.key]
    }
}

/// The files [`write_dev_files`] wrote.
#[derive(Debug, Clone)]
pub struct DevFiles {
    /// The throw-away CA a client trusts (`curl --cacert`, `statusmesh get --ca`).
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Writes into `dir` a throw-away CA (`https-ca.pem`) and, signed by it, a certificate and
/// key for `localhost`, `127.0.0.1` and `::1` (`https.pem`, `https.key`), for
/// `statusmesh dev --https`. The CA's key is not kept: nothing else can be issued from it.
pub fn write_dev_files(dir: &Path) -> Result<DevFiles, HttpTlsError> {
    let fail = |reason: String| HttpTlsError::Dev {
        dir: dir.display().to_string(),
        reason,
    };
    let generated = (|| -> Result<(String, String, String), rcgen::Error> {
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "statusmesh dev HTTPS CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign];
        let ca = ca_params.self_signed(&ca_key)?;
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let names = ["localhost", "127.0.0.1", "::1"]
            .map(str::to_owned)
            .to_vec();
        let mut params = rcgen::CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "localhost");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let key = rcgen::KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((ca.pem(), cert.pem(), key.serialize_pem()))
    })()
    .map_err(|e| fail(e.to_string()))?;
    let files = DevFiles {
        ca: dir.join("https-ca.pem"),
        cert: dir.join("https.pem"),
        key: dir.join("https.key"),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    for (path, text) in [
        (&files.ca, &generated.0),
        (&files.cert, &generated.1),
        (&files.key, &generated.2),
    ] {
        std::fs::write(path, text).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    }
    Ok(files)
}

fn build(cert: &Path, key: &Path) -> Result<(Arc<ServerConfig>, Loaded), HttpTlsError> {
    let cert_pem = read("--http-tls-cert", cert)?;
    let key_pem = read("--http-tls-key", key)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| HttpTlsError::Pem {
            flag: "--http-tls-cert",
            path: cert.display().to_string(),
            what: "certificate",
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(HttpTlsError::Pem {
            flag: "--http-tls-cert",
            path: cert.display().to_string(),
            what: "certificate",
            reason: "no certificate in the file".to_owned(),
        });
    };
    let loaded = Loaded {
        leaf_sha256: Sha256::digest(leaf.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        chain_len: chain.len(),
    };
    let private_key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| HttpTlsError::Pem {
        flag: "--http-tls-key",
        path: key.display().to_string(),
        what: "private key",
        reason: e.to_string(),
    })?;
    let config_error = |reason: String| HttpTlsError::Config {
        cert: cert.display().to_string(),
        key: key.display().to_string(),
        reason,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // with_single_cert also checks that the key is the certificate's.
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private_key)
        .map_err(|e| config_error(e.to_string()))?;
    config.alpn_protocols = ALPN_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
    Ok((Arc::new(config), loaded))
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, HttpTlsError> {
    std::fs::read(path).map_err(|e| HttpTlsError::Read {
        flag,
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        let cert = params.self_signed(&key).expect("cert");
        let (cert_path, key_path) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    #[test]
    fn a_certificate_and_its_key_load_with_h2_offered_first() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = write_pair(dir.path(), "a");
        let (tls, loaded) = HttpTls::load(&cert, &key).expect("loads");
        assert_eq!(loaded.chain_len, 1);
        assert_eq!(loaded.leaf_sha256.len(), 64);
        let config = tls.current.read().expect("lock").clone();
        assert_eq!(config.alpn_protocols[0], b"h2");
        assert_eq!(config.alpn_protocols[1], b"http/1.1");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_naming_both_files() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, _) = write_pair(dir.path(), "a");
        let (_, other_key) = write_pair(dir.path(), "b");
        let error = HttpTls::load(&cert, &other_key).expect_err("refused");
        let message = error.to_string();
        assert!(message.starts_with("--http-tls-cert "), "{message}");
        assert!(message.contains("b.key"), "{message}");
    }

    #[test]
    fn a_missing_or_empty_file_names_its_flag() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = write_pair(dir.path(), "a");
        let missing = dir.path().join("missing.pem");
        let error = HttpTls::load(&missing, &key).expect_err("refused");
        assert!(error.to_string().starts_with("--http-tls-cert "), "{error}");
        let empty = dir.path().join("empty.key");
        std::fs::write(&empty, "").expect("write");
        let error = HttpTls::load(&cert, &empty).expect_err("refused");
        assert!(error.to_string().starts_with("--http-tls-key "), "{error}");
    }

    #[test]
    fn the_dev_files_load_and_their_ca_is_apart() {
        let dir = tempfile::tempdir().expect("dir");
        let files = write_dev_files(dir.path()).expect("written");
        HttpTls::load(&files.cert, &files.key).expect("loads");
        assert_ne!(
            std::fs::read(&files.ca).expect("ca"),
            std::fs::read(&files.cert).expect("cert")
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_previous_configuration() {
        let dir = tempfile::tempdir().expect("dir");
        let (cert, key) = write_pair(dir.path(), "a");
        let (tls, first) = HttpTls::load(&cert, &key).expect("loads");
        let before = Arc::as_ptr(&tls.current.read().expect("lock"));
        std::fs::write(&cert, "not a certificate").expect("write");
        assert!(tls.reload().is_err());
        assert_eq!(Arc::as_ptr(&tls.current.read().expect("lock")), before);
        let (new_cert, new_key) = write_pair(dir.path(), "b");
        std::fs::copy(new_cert, &cert).expect("copy");
        std::fs::copy(new_key, &key).expect("copy");
        let second = tls.reload().expect("reloads");
        assert_ne!(first.leaf_sha256, second.leaf_sha256);
    }
}
