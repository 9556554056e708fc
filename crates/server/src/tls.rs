//! HTTPS: the server's certificate chain and key from PEM files (`--tls-cert`, `--tls-key`),
//! read again when either file changes or on SIGHUP ([`crate::reload`]), so a renewed
//! certificate is served without a restart. A reload that fails (a half-written file, a key
//! that does not match) is logged and the certificate served so far is kept.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

/// The certificate a server presents, and where it comes from.
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<TlsAcceptor>,
}

impl Tls {
    /// Reads the certificate chain (`cert`, PEM, the server's certificate first) and its
    /// private key (`key`, PEM: PKCS#8, PKCS#1 or SEC1). The error names the file and what is
    /// wrong with it.
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let acceptor = acceptor(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(acceptor),
        })
    }

    /// What accepts a connection now: the newest certificate read.
    pub fn acceptor(&self) -> TlsAcceptor {
        match self.current.read() {
            Ok(a) => a.clone(),
            Err(e) => e.into_inner().clone(),
        }
    }

    /// Reads the files again; keeps the certificate served so far when they do not make one.
    pub fn reload(&self, why: &str) {
        match acceptor(&self.cert, &self.key) {
            Ok(fresh) => {
                *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
                tracing::info!(cert = %self.cert.display(), why, "serving the certificate read again");
            }
            Err(e) => {
                tracing::warn!(error = %e, why, "cannot read the certificate again; serving the one read before")
            }
        }
    }

    /// Reloads on SIGHUP and when a file changes, until `stop` (see [`crate::reload`]).
    pub async fn watch(self: Arc<Self>, stop: CancellationToken) {
        let paths = vec![self.cert.clone(), self.key.clone()];
        crate::reload::watch(paths, stop, move |why| self.reload(why)).await
    }
}

fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it (expected PEM: -----BEGIN CERTIFICATE-----)",
            cert.display()
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "--tls-key {}: {e} (expected a PEM private key)",
            key.display()
        )
    })?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, private)
    .map_err(|e| {
        format!(
            "--tls-cert {} and --tls-key {}: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
