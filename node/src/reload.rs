//! Reloading the node's TLS identity while it runs: on SIGHUP, and (with
//! `--certs-watch-s N`) when the files change. Reads the certificate, key and CA bundle from
//! the `--certs` directory as `statusmesh certs` writes them and hands them to the driver's
//! transport; a set that does not load or make a TLS configuration is logged, counted
//! (`statusmesh_tls_reloads_total{result="error"}`) and changes nothing.
//!
//! The client API's HTTPS certificate and key (`--http-tls-cert`, `--http-tls-key`) reload in
//! the same pass, on their own (`statusmesh_http_tls_reloads_total`): a bad HTTPS file keeps
//! the old HTTPS certificate and does not hold back the cluster identity, nor the reverse.
//! SIGHUP reloads both; a watched change only the set whose files changed.
//! New connections get what was loaded last; open ones keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::{error, info, warn};

use crate::driver::NodeHandle;
use crate::http::tls::HttpTls;

/// The files of a node's identity in its certificate directory.
fn identity_files(dir: &Path, node: &str) -> [PathBuf; 3] {
    [
        dir.join("ca.pem"),
        dir.join(format!("{node}.pem")),
        dir.join(format!("{node}.key")),
    ]
}

/// When each of `files` last changed (`None` where it cannot be read).
fn stamps<'a>(files: impl IntoIterator<Item = &'a Path>) -> Vec<Option<SystemTime>> {
    files
        .into_iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// What a watch tick found changed since the last look.
#[derive(Debug)]
struct Changed {
    identity: bool,
    https: bool,
}

/// Reloads the HTTPS certificate and key; an error keeps the previous ones.
fn reload_http(tls: &HttpTls, node: &str, why: &str) {
    match tls.reload() {
        Ok(loaded) => {
            info!(node, why, certificate_sha256 = %loaded.leaf_sha256, "HTTPS certificate reloaded");
            metrics::counter!("statusmesh_http_tls_reloads_total", "result" => "ok").increment(1);
        }
        Err(error) => {
            error!(node, why, %error, "HTTPS certificate not reloaded; the old one stays");
            metrics::counter!("statusmesh_http_tls_reloads_total", "result" => "error")
                .increment(1);
        }
    }
}

/// Loads the identity from `dir` and makes it the node's; false when the driver is gone.
async fn reload_once(handle: &NodeHandle, dir: &Path, node: &str, why: &str) -> bool {
    let loaded = crate::certs::load_identity(dir, node).map_err(|e| e.to_string());
    let result = match loaded {
        Ok(identity) => match handle.reload_identity(identity).await {
            Ok(reloaded) => reloaded,
            Err(_) => return false,
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(sha256) => {
            info!(node, why, certificate_sha256 = %sha256, "TLS identity reloaded");
            metrics::counter!("statusmesh_tls_reloads_total", "result" => "ok").increment(1);
        }
        Err(error) => {
            error!(node, why, %error, "TLS identity not reloaded; the old one stays");
            metrics::counter!("statusmesh_tls_reloads_total", "result" => "error").increment(1);
        }
    }
    true
}

/// Reloads on each SIGHUP and, every `watch` when given, when a file changed since the last
/// look (a set caught half-copied fails, and loads at the next change). `http_tls`, when the
/// client API is HTTPS, reloads with them.
pub fn spawn(
    handle: NodeHandle,
    dir: PathBuf,
    node: String,
    watch: Option<Duration>,
    http_tls: Option<Arc<HttpTls>>,
) {
    tokio::spawn(async move {
        #[cfg(unix)]
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(s) => Some(s),
            Err(_) => {
                warn!("SIGHUP cannot be caught; certificates reload only by watching or a restart");
                None
            }
        };
        let identity = identity_files(&dir, &node);
        let identity_stamps = || stamps(identity.iter().map(PathBuf::as_path));
        let https_stamps = || stamps(http_tls.iter().flat_map(|tls| tls.files()));
        let (mut seen_identity, mut seen_https) = (identity_stamps(), https_stamps());
        let mut ticker = watch.map(tokio::time::interval);
        loop {
            let hup = async {
                #[cfg(unix)]
                if let Some(h) = hangups.as_mut() {
                    return h.recv().await.is_some();
                }
                std::future::pending::<bool>().await
            };
            let tick = async {
                match ticker.as_mut() {
                    Some(t) => {
                        t.tick().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            // A watch tick reloads only the set whose files changed: a renewed HTTPS
            // certificate must not re-make every link of the mesh. SIGHUP reloads both.
            let (why, changed) = tokio::select! {
                alive = hup => {
                    if !alive {
                        return;
                    }
                    ("SIGHUP", Changed { identity: true, https: true })
                }
                () = tick => {
                    let (now_identity, now_https) = (identity_stamps(), https_stamps());
                    let changed = Changed {
                        identity: now_identity != seen_identity,
                        https: now_https != seen_https,
                    };
                    (seen_identity, seen_https) = (now_identity, now_https);
                    ("the files changed", changed)
                }
            };
            if let Some(tls) = http_tls.as_ref().filter(|_| changed.https) {
                reload_http(tls, &node, why);
            }
            if changed.identity && !reload_once(&handle, &dir, &node, why).await {
                return;
            }
        }
    });
}
