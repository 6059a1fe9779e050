//! The cluster CA and node certificates for mutual TLS between nodes.
//!
//! Each node certificate carries the node id as its only DNS name and is signed by the
//! cluster CA. A peer must present such a certificate to connect, and its identity is the id
//! the certificate is valid for: a node cannot claim another node's id.
//!
//! Directory layout: `ca.pem`, `ca.key`, and `<node-id>.pem`, `<node-id>.key` per node.
//!
//! A node that is not listed in regions.toml joins with a certificate from
//! `statusmesh certs issue` ([`issue_member`]): its subject names the node id (common name)
//! and its region (organizational unit), which is how listed nodes learn where it belongs
//! ([`member_claim`]); the id is also its DNS name, as for listed nodes.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// A certificate error; it names the file or node it is about.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CertError {
    /// Key or certificate generation failed.
    #[error("cannot generate a certificate for {subject}: {reason}")]
    Generate { subject: String, reason: String },
    /// A file could not be read or written.
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    /// A node id or region of `certs issue` breaks its rule (nothing was written).
    #[error("{flag} {value:?}: {rule}")]
    Invalid {
        flag: &'static str,
        value: String,
        rule: String,
    },
    /// A file does not hold what it should.
    #[error("{path}: not a valid PEM {what}: {reason}")]
    Pem {
        path: String,
        what: &'static str,
        reason: String,
    },
}

/// A cluster CA: it signs node certificates.
#[derive(Debug)]
pub struct ClusterCa {
    subject: String,
    cert_pem: String,
    key_pem: String,
}

/// A node certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct NodeCertPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// What a node needs for mutual TLS: the CA it trusts, and its own chain and key.
#[derive(Debug)]
pub struct NodeIdentity {
    pub node_id: String,
    /// The CAs peers' certificates may chain to: one, or old and new during a rotation.
    pub cas: Vec<CertificateDer<'static>>,
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
}

impl Clone for NodeIdentity {
    fn clone(&self) -> Self {
        Self {
            node_id: self.node_id.clone(),
            cas: self.cas.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl ClusterCa {
    /// A new CA for `cluster`, with a fresh key.
    pub fn generate(cluster: &str) -> Result<Self, CertError> {
        let subject = ca_subject(cluster);
        let fail = |e: rcgen::Error| CertError::Generate {
            subject: subject.clone(),
            reason: e.to_string(),
        };
        let params = ca_params(&subject).map_err(fail)?;
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.self_signed(&key).map_err(fail)?;
        Ok(Self {
            subject,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Reads `ca.pem` and `ca.key` of `cluster` from `dir`.
    pub fn load(dir: &Path, cluster: &str) -> Result<Self, CertError> {
        Ok(Self {
            subject: ca_subject(cluster),
            cert_pem: read(&dir.join("ca.pem"))?,
            key_pem: read(&dir.join("ca.key"))?,
        })
    }

    /// Reads `ca.pem` and `ca.key` from `dir`, the cluster named by the CA certificate's own
    /// subject (for `certs issue`, which is given no topology).
    pub fn load_dir(dir: &Path) -> Result<Self, CertError> {
        let path = dir.join("ca.pem");
        let cert_pem = read(&path)?;
        let not_ca = |reason: String| CertError::Pem {
            path: path.display().to_string(),
            what: "CA certificate",
            reason,
        };
        let der = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
            .next()
            .ok_or_else(|| not_ca("no certificate in the file".to_owned()))?
            .map_err(|e| not_ca(e.to_string()))?;
        let (_, cert) =
            x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| not_ca(e.to_string()))?;
        let subject = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .filter(|cn| cn.starts_with("statusmesh cluster "))
            .ok_or_else(|| not_ca("its subject names no statusmesh cluster".to_owned()))?
            .to_owned();
        Ok(Self {
            subject,
            cert_pem,
            key_pem: read(&dir.join("ca.key"))?,
        })
    }

    /// Writes `ca.pem` and `ca.key` (owner-only) into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), CertError> {
        write(&dir.join("ca.pem"), &self.cert_pem, false)?;
        write(&dir.join("ca.key"), &self.key_pem, true)
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for `node_id`, valid for both ends of a mutual-TLS connection.
    pub fn issue(&self, node_id: &str) -> Result<NodeCertPem, CertError> {
        self.issue_with(node_id, None)
    }

    /// Issues the certificate of a node that joins without being listed in regions.toml: as
    /// [`ClusterCa::issue`], and its subject names `region` too (see [`member_claim`]).
    pub fn issue_member(&self, node_id: &str, region: &str) -> Result<NodeCertPem, CertError> {
        self.issue_with(node_id, Some(region))
    }

    fn issue_with(&self, node_id: &str, region: Option<&str>) -> Result<NodeCertPem, CertError> {
        let fail = |e: rcgen::Error| CertError::Generate {
            subject: node_id.to_owned(),
            reason: e.to_string(),
        };
        let ca_key = KeyPair::from_pem(&self.key_pem).map_err(fail)?;
        // The issuer is rebuilt from the CA's subject and key: that is all a signature needs.
        let issuer = Issuer::new(ca_params(&self.subject).map_err(fail)?, ca_key);
        let mut params = CertificateParams::new(vec![node_id.to_owned()]).map_err(fail)?;
        params.distinguished_name.push(DnType::CommonName, node_id);
        if let Some(region) = region {
            params
                .distinguished_name
                .push(DnType::OrganizationalUnitName, region);
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().map_err(fail)?;
        let cert = params.signed_by(&key, &issuer).map_err(fail)?;
        Ok(NodeCertPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The identity of `node_id` from a freshly issued certificate, without touching disk
    /// (for `statusmesh dev`).
    pub fn identity(&self, node_id: &str) -> Result<NodeIdentity, CertError> {
        let issued = self.issue(node_id)?;
        identity_from_pem(node_id, &self.cert_pem, &issued, "(in memory)")
    }
}

/// Makes a CA (or reuses the one in `dir`) and a certificate for each node id into `dir`.
/// Returns the files written.
pub fn write_cluster(
    dir: &Path,
    cluster: &str,
    node_ids: &[String],
) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(dir).map_err(|e| CertError::Io {
        path: dir.display().to_string(),
        reason: e.to_string(),
    })?;
    let mut written = Vec::new();
    let ca = if dir.join("ca.pem").exists() && dir.join("ca.key").exists() {
        ClusterCa::load(dir, cluster)?
    } else {
        let ca = ClusterCa::generate(cluster)?;
        ca.write(dir)?;
        written.extend([dir.join("ca.pem"), dir.join("ca.key")]);
        ca
    };
    for id in node_ids {
        let issued = ca.issue(id)?;
        let (cert, key) = node_paths(dir, id);
        write(&cert, &issued.cert_pem, false)?;
        write(&key, &issued.key_pem, true)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

/// `statusmesh certs issue`: a certificate for `node_id` in `region` from the CA in `ca_dir`,
/// written into `out` as `<node-id>.pem` and `<node-id>.key`, with the CA certificate as
/// `ca.pem` beside them (so that `out` is the joining node's `--certs` directory). The id and
/// region are checked against the rules of regions.toml first; nothing is written when one
/// breaks them.
pub fn issue_member(
    ca_dir: &Path,
    out: &Path,
    node_id: &str,
    region: &str,
) -> Result<Vec<PathBuf>, CertError> {
    use statusmesh_gossip::topology::{check_name, check_node_id};
    check_node_id(node_id).map_err(|rule| CertError::Invalid {
        flag: "--node",
        value: node_id.to_owned(),
        rule: rule.to_owned(),
    })?;
    check_name(region).map_err(|rule| CertError::Invalid {
        flag: "--region",
        value: region.to_owned(),
        rule: rule.to_owned(),
    })?;
    let ca = ClusterCa::load_dir(ca_dir)?;
    let issued = ca.issue_member(node_id, region)?;
    std::fs::create_dir_all(out).map_err(|e| CertError::Io {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let (cert, key) = node_paths(out, node_id);
    write(&cert, &issued.cert_pem, false)?;
    write(&key, &issued.key_pem, true)?;
    let mut written = vec![cert, key];
    let same_dir = match (ca_dir.canonicalize(), out.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    if !same_dir {
        let ca_pem = out.join("ca.pem");
        write(&ca_pem, &ca.cert_pem, false)?;
        written.push(ca_pem);
    }
    Ok(written)
}

/// The node id and region a joined node's certificate names in its subject (common name and
/// organizational unit, as [`ClusterCa::issue_member`] writes them); `None` when it names no
/// region (a listed node's certificate) or does not parse. The chain is not checked here:
/// the TLS handshake did that.
pub fn member_claim(leaf: &CertificateDer<'_>) -> Option<(String, String)> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref()).ok()?;
    let subject = cert.subject();
    let one = |mut values: Box<dyn Iterator<Item = _> + '_>| -> Option<String> {
        let first: &x509_parser::x509::AttributeTypeAndValue<'_> = values.next()?;
        // A subject with two ids or two regions names neither.
        if values.next().is_some() {
            return None;
        }
        first.as_str().ok().map(str::to_owned)
    };
    let id = one(Box::new(subject.iter_common_name()))?;
    let region = one(Box::new(subject.iter_organizational_unit()))?;
    Some((id, region))
}

/// Loads the identity of `node_id` from a directory made by [`write_cluster`].
pub fn load_identity(dir: &Path, node_id: &str) -> Result<NodeIdentity, CertError> {
    let ca_pem = read(&dir.join("ca.pem"))?;
    let (cert, key) = node_paths(dir, node_id);
    let issued = NodeCertPem {
        cert_pem: read(&cert)?,
        key_pem: read(&key)?,
    };
    identity_from_pem(node_id, &ca_pem, &issued, &dir.display().to_string())
}

fn identity_from_pem(
    node_id: &str,
    ca_pem: &str,
    issued: &NodeCertPem,
    origin: &str,
) -> Result<NodeIdentity, CertError> {
    let pem_err = |what: &'static str, file: String| {
        move |e: rustls_pki_types::pem::Error| CertError::Pem {
            path: file,
            what,
            reason: e.to_string(),
        }
    };
    // A bundle: every CA in the file is trusted (old and new during a rotation).
    let cas = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("certificate", format!("{origin}/ca.pem")))?;
    if cas.is_empty() {
        return Err(CertError::Pem {
            path: format!("{origin}/ca.pem"),
            what: "certificate",
            reason: "no certificate in the file".to_owned(),
        });
    }
    let chain = CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(pem_err("certificate", format!("{origin}/{node_id}.pem")))?;
    let key = PrivateKeyDer::from_pem_slice(issued.key_pem.as_bytes())
        .map_err(pem_err("private key", format!("{origin}/{node_id}.key")))?;
    Ok(NodeIdentity {
        node_id: node_id.to_owned(),
        cas,
        chain,
        key,
    })
}

/// `statusmesh certs rotate-ca`: a new CA for `cluster` and, in `out`, everything a rotation
/// needs without a restart:
/// - `ca-bundle.pem`: the new CA and the current one (from `current`'s `ca.pem`), the trust
///   every node holds while certificates change;
/// - `<node>.pem`, `<node>.key`: each node's certificate from the new CA;
/// - `ca.pem`, `ca.key`: the new CA alone, the trust once every node presents a new
///   certificate (and what a later `certs` or `rotate-ca` issues from).
///
/// The steps, each node in turn and SIGHUP after each copy: `ca-bundle.pem` as `ca.pem`;
/// then the node's new certificate and key; then the new `ca.pem`. `current` is not changed.
pub fn rotate_ca(
    current: &Path,
    out: &Path,
    cluster: &str,
    node_ids: &[String],
) -> Result<Vec<PathBuf>, CertError> {
    let old = ClusterCa::load(current, cluster)?;
    // The current CA is the first certificate of its file (a bundle after a rotation).
    let old_ca = CertificateDer::pem_slice_iter(old.cert_pem.as_bytes())
        .next()
        .and_then(Result::ok)
        .ok_or_else(|| CertError::Pem {
            path: current.join("ca.pem").display().to_string(),
            what: "certificate",
            reason: "no certificate in the file".to_owned(),
        })?;
    let old_pem = pem_of_certificate(&old_ca);
    std::fs::create_dir_all(out).map_err(|e| CertError::Io {
        path: out.display().to_string(),
        reason: e.to_string(),
    })?;
    let new = ClusterCa::generate(cluster)?;
    new.write(out)?;
    let bundle = out.join("ca-bundle.pem");
    write(&bundle, &format!("{}{}", new.cert_pem, old_pem), false)?;
    let mut written = vec![out.join("ca.pem"), out.join("ca.key"), bundle];
    for id in node_ids {
        let issued = new.issue(id)?;
        let (cert, key) = node_paths(out, id);
        write(&cert, &issued.cert_pem, false)?;
        write(&key, &issued.key_pem, true)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

/// One certificate as PEM text.
fn pem_of_certificate(cert: &CertificateDer<'_>) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

fn ca_subject(cluster: &str) -> String {
    format!("statusmesh cluster {cluster} CA")
}

fn ca_params(subject: &str) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, subject);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

fn node_paths(dir: &Path, node_id: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{node_id}.pem")),
        dir.join(format!("{node_id}.key")),
    )
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| CertError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn write(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let io = |e: std::io::Error| CertError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::write(path, contents).map_err(io)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(issued: &NodeCertPem) -> CertificateDer<'static> {
        CertificateDer::pem_slice_iter(issued.cert_pem.as_bytes())
            .next()
            .expect("a certificate")
            .expect("valid PEM")
    }

    #[test]
    fn a_member_certificate_names_its_id_and_region_and_a_listed_one_no_region() {
        let ca = ClusterCa::generate("test").expect("ca");
        let member = ca.issue_member("edge-7", "eu-west").expect("member");
        assert_eq!(
            member_claim(&leaf(&member)),
            Some(("edge-7".to_owned(), "eu-west".to_owned()))
        );
        let listed = ca.issue("edge-1").expect("listed");
        assert_eq!(member_claim(&leaf(&listed)), None);
    }

    #[test]
    fn issue_writes_a_certs_directory_from_a_ca_directory_and_checks_its_flags() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_dir = dir.path().join("ca");
        write_cluster(&ca_dir, "test", &[]).expect("ca");
        let out = dir.path().join("joiner");
        let written = issue_member(&ca_dir, &out, "edge-7", "eu-west").expect("issued");
        assert_eq!(written.len(), 3);
        let identity = load_identity(&out, "edge-7").expect("a --certs directory");
        assert_eq!(identity.cas.len(), 1);
        let error = issue_member(&ca_dir, &out, "Edge_7", "eu-west").expect_err("bad id");
        assert!(
            error
                .to_string()
                .starts_with("--node \"Edge_7\": must be 1-63"),
            "{error}"
        );
        let error = issue_member(&ca_dir, &out, "edge-8", "EU").expect_err("bad region");
        assert!(error.to_string().starts_with("--region \"EU\""), "{error}");
        assert!(!out.join("edge-8.pem").exists());
        let error =
            issue_member(&dir.path().join("none"), &out, "edge-8", "eu").expect_err("no ca");
        assert!(error.to_string().contains("ca.pem"), "{error}");
    }
}
