//! Test certificates made on the spot with rcgen (a CA, server and client
//! pairs) written to a temp dir, and TLS clients: gRPC over https and a raw
//! HTTP/1.1 request over TLS (grpc-web, the dashboard).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::client::JobqClient;

/// A certificate with its key, as PEM text.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// The certificate.
    pub cert: String,
    /// Its private key.
    pub key: String,
}

/// A test certificate authority.
pub struct TestCa {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl TestCa {
    /// A new CA named `name`.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Self { cert, key })
    }

    /// The CA certificate (PEM), what clients trust.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `localhost` and `127.0.0.1`.
    pub fn server_pair(&self) -> anyhow::Result<PemPair> {
        self.issue(
            "jobq test server",
            &["localhost", "127.0.0.1"],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose subject CN is `name`.
    pub fn client_pair(&self, name: &str) -> anyhow::Result<PemPair> {
        self.issue(name, &[], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        common_name: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> anyhow::Result<PemPair> {
        let key = KeyPair::generate()?;
        let names: Vec<String> = names.iter().map(|name| (*name).to_owned()).collect();
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(PemPair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A self-signed leaf certificate (no CA flag) for `localhost` and
/// `127.0.0.1`: the certificate is also what clients trust.
pub fn self_signed_server_pair() -> anyhow::Result<PemPair> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "jobq self-signed");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = params.self_signed(&key)?;
    Ok(PemPair {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A temp dir holding PEM files.
pub struct PemFiles {
    dir: TempDir,
}

impl PemFiles {
    /// An empty temp dir.
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new().prefix("jobq-e2e-tls-").tempdir()?,
        })
    }

    /// Writes `text` to `name` in the dir (replacing it) and returns its path.
    pub fn write(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The path of `name` in the dir.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Replaces `name` atomically (write aside, rename), as deploy tools do.
    pub fn replace(&self, name: &str, text: &str) -> anyhow::Result<PathBuf> {
        let aside = self.write(&format!("{name}.new"), text)?;
        let path = self.path(name);
        std::fs::rename(&aside, &path)
            .with_context(|| format!("renaming to {}", path.display()))?;
        Ok(path)
    }

    /// The dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl JobqClient {
    /// Opens an HTTP/2 connection over TLS to `addr` (as `https://127.0.0.1:PORT`),
    /// trusting `ca_pem`, presenting `identity` when given.
    pub async fn connect_tls(
        addr: SocketAddr,
        ca_pem: &str,
        identity: Option<&PemPair>,
    ) -> anyhow::Result<Self> {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
        if let Some(pair) = identity {
            tls = tls.identity(Identity::from_pem(&pair.cert, &pair.key));
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .context("endpoint URI")?
            .tls_config(tls)
            .context("TLS settings")?
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .connect()
            .await
            .with_context(|| format!("connecting over TLS to the jobq server at {addr}"))?;
        Ok(Self::from_channel(channel))
    }
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) over TLS
/// to `addr`, trusting `ca_pem`, offering only ALPN `http/1.1`; returns the
/// whole raw response and the protocol the server chose.
pub async fn http1_over_tls(
    addr: SocketAddr,
    ca_pem: &str,
    request: &[u8],
) -> anyhow::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.context("CA PEM")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from("localhost")?;
    let mut tls = connector
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    tls.write_all(request).await?;
    tls.flush().await?;
    let mut response = Vec::new();
    // A server may end the connection without close_notify; what came is enough.
    if let Err(error) = tls.read_to_end(&mut response).await
        && response.is_empty()
    {
        return Err(error).context("reading the response");
    }
    Ok((response, alpn))
}
