//! TLS on the server's port: rustls with a certificate that can be swapped
//! while serving (SIGHUP, or the files changing), optional client
//! certificates (mutual TLS), and handshakes done off the accept path.
//!
//! [`accept`] turns any stream of accepted connections into a stream of TLS
//! connections, each handshake in its own task with a deadline, so a client
//! that stalls its handshake never holds up the others. The connections it
//! yields carry a [`TlsPeer`] as their tonic connect info: the inner
//! connection's info and, with mutual TLS, the [`ClientIdentity`] read once
//! from the verified client certificate.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// Longest a client may take to finish its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the server's TLS material is.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The certificate chain (PEM), leaf first.
    pub cert: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// With it, clients must present a certificate signed by this CA (PEM).
    pub client_ca: Option<PathBuf>,
}

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{what} {path}: {detail}")]
    File {
        /// Which file it is (certificate, key, client CA).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// rustls refused the material (a key that does not match, a bad CA...).
    #[error("{0}")]
    Rustls(String),
}

/// The certificate in use, swappable while connections are served: each
/// handshake picks up the one current at that moment.
#[derive(Debug)]
struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a valid key: keep serving it.
        let current = match self.current.read() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(current.clone())
    }
}

/// The server's TLS setup: the acceptor and what reloads its certificate.
#[derive(Clone)]
pub struct TlsState {
    files: TlsFiles,
    cert: Arc<SwappableCert>,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsState")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl TlsState {
    /// Loads the certificate, key and client CA; fails on anything unusable.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let cert = Arc::new(SwappableCert {
            current: RwLock::new(Arc::new(load_pair(&files.cert, &files.key)?)),
        });
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Rustls(error.to_string()))?;
        let builder = match &files.client_ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                for ca in read_certs(path, "client CA")? {
                    roots.add(ca).map_err(|error| TlsError::File {
                        what: "client CA",
                        path: path.clone(),
                        detail: error.to_string(),
                    })?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|error| TlsError::Rustls(error.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_cert_resolver(cert.clone());
        // h2 for gRPC, http/1.1 for grpc-web and the dashboard: the server
        // tells them apart by what the client sends, whatever it negotiated.
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Self {
            files,
            cert,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        })
    }

    /// Reads the certificate and key again and uses them for new
    /// handshakes; open connections keep theirs. On failure the old pair
    /// stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load_pair(&self.files.cert, &self.files.key)?);
        let mut current = match self.cert.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        *current = fresh;
        Ok(())
    }

    /// The modification times of the certificate and key files.
    fn stamps(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        (modified(&self.files.cert), modified(&self.files.key))
    }
}

/// Reloads the certificate on SIGHUP and when the files' modification times
/// change (checked every `interval`), until `stop`. A pair that does not
/// load is logged and the old one kept.
pub async fn watch(state: TlsState, interval: Duration, stop: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(hangup) => Some(hangup),
        Err(error) => {
            tracing::warn!(%error, "no SIGHUP handler: TLS reloads only when the files change");
            None
        }
    };
    let mut seen = state.stamps();
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let cause = tokio::select! {
            () = stop.cancelled() => return,
            Some(()) = async {
                match hangup.as_mut() {
                    Some(hangup) => hangup.recv().await,
                    None => std::future::pending().await,
                }
            } => "SIGHUP",
            _ = ticks.tick() => {
                let now = state.stamps();
                if now == seen {
                    continue;
                }
                "files changed"
            }
        };
        // Taken before the read: a write landing during it is seen next tick.
        seen = state.stamps();
        match state.reload() {
            Ok(()) => {
                tracing::info!(cause, cert = %state.files.cert.display(), "TLS certificate reloaded")
            }
            Err(error) => tracing::error!(
                cause,
                %error,
                "TLS certificate not reloaded; the previous one stays in use"
            ),
        }
    }
}

fn read_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let problem = |detail: String| TlsError::File {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|error| problem(error.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| problem(error.to_string()))?;
    if certs.is_empty() {
        return Err(problem("no PEM certificate in it".into()));
    }
    Ok(certs)
}

/// A certificate chain with its key, checked to belong together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain = read_certs(cert, "certificate")?;
    let private = PrivateKeyDer::from_pem_file(key).map_err(|error| TlsError::File {
        what: "key",
        path: key.to_owned(),
        detail: error.to_string(),
    })?;
    let provider = rustls::crypto::ring::default_provider();
    CertifiedKey::from_der(chain, private, &provider).map_err(|error| {
        TlsError::Rustls(format!(
            "certificate {} with key {}: {error}",
            cert.display(),
            key.display()
        ))
    })
}

/// The machine a client certificate names: its subject CN, else its first
/// DNS name. Set only when mutual TLS verified the certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity(pub Arc<str>);

impl std::fmt::Display for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl ClientIdentity {
    /// The identity of a TLS connection over TCP, when it has one.
    pub fn of(extensions: &axum::http::Extensions) -> Option<&ClientIdentity> {
        extensions
            .get::<TlsPeer<TcpConnectInfo>>()
            .and_then(|peer| peer.client.as_ref())
    }

    fn from_certificate(cert: &CertificateDer<'_>) -> Option<Self> {
        let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
        let name = common_name(parsed.subject())
            .or_else(|| parsed.valid_dns_names().next().map(str::to_owned))?;
        Some(Self(name.into()))
    }
}

/// The first commonName (OID 2.5.4.3) of a DER Name's contents (a sequence
/// of SETs of SEQUENCE { OID, value }), as text; None when it has none or
/// the DER is not what it should be.
fn common_name(mut name: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (tag, set, rest) = der_item(name)?;
        name = rest;
        if tag != 0x31 {
            return None;
        }
        let mut set = set;
        while !set.is_empty() {
            let (tag, pair, rest) = der_item(set)?;
            set = rest;
            if tag != 0x30 {
                return None;
            }
            let (oid_tag, oid, value) = der_item(pair)?;
            if oid_tag == 0x06 && oid == CN_OID {
                let (_, text, _) = der_item(value)?;
                return std::str::from_utf8(text).ok().map(str::to_owned);
            }
        }
    }
    None
}

/// One DER item: its tag, contents and what follows it (short and long
/// lengths up to four bytes; nothing else is needed for names).
fn der_item(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (length, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let count = usize::from(first & 0x7f);
        if count == 0 || count > 4 || rest.len() < count {
            return None;
        }
        let (bytes, rest) = rest.split_at(count);
        let length = bytes
            .iter()
            .fold(0usize, |length, byte| (length << 8) | usize::from(*byte));
        (length, rest)
    };
    if rest.len() < length {
        return None;
    }
    let (contents, rest) = rest.split_at(length);
    Some((tag, contents, rest))
}

/// What tonic puts in each request's extensions for a TLS connection.
#[derive(Debug, Clone)]
pub struct TlsPeer<T> {
    /// The connect info of the connection under TLS.
    pub inner: T,
    /// The verified client certificate's identity (mutual TLS only).
    pub client: Option<ClientIdentity>,
}

/// A connection after its TLS handshake.
pub struct TlsConnection<IO> {
    stream: tokio_rustls::server::TlsStream<IO>,
    client: Option<ClientIdentity>,
}

impl<IO: Connected> Connected for TlsConnection<IO> {
    type ConnectInfo = TlsPeer<IO::ConnectInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        TlsPeer {
            inner: self.stream.get_ref().0.connect_info(),
            client: self.client.clone(),
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsConnection<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsConnection<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Connections that finished their handshake, in the order they finish.
/// Each handshake runs in its own task (bounded by [`HANDSHAKE_TIMEOUT`]);
/// failed ones are logged and dropped. The tasks live as long as the
/// returned stream: when the server drops it (on shutdown), they stop.
pub fn accept<S, IO, E>(incoming: S, tls: &TlsState) -> ReceiverStream<Result<TlsConnection<IO>, E>>
where
    S: Stream<Item = Result<IO, E>> + Send + 'static,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    E: Send + 'static,
{
    let acceptor = tls.acceptor.clone();
    let (ready, connections) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        let mut handshakes = JoinSet::new();
        loop {
            tokio::select! {
                () = ready.closed() => return,
                next = incoming.next() => match next {
                    Some(Ok(io)) => {
                        let acceptor = acceptor.clone();
                        let ready = ready.clone();
                        handshakes.spawn(async move {
                            if let Some(connection) = handshake(acceptor, io).await {
                                // The receiver may be gone (shutdown): nothing to do then.
                                let _ = ready.send(Ok(connection)).await;
                            }
                        });
                    }
                    Some(Err(error)) => {
                        if ready.send(Err(error)).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                Some(_) = handshakes.join_next() => {}
            }
        }
        // No more connections: let the handshakes under way finish.
        while handshakes.join_next().await.is_some() {}
    });
    ReceiverStream::new(connections)
}

async fn handshake<IO>(acceptor: TlsAcceptor, io: IO) -> Option<TlsConnection<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
        Ok(Ok(stream)) => {
            let client = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(ClientIdentity::from_certificate);
            Some(TlsConnection { stream, client })
        }
        Ok(Err(error)) => {
            tracing::debug!(%error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_lengths_are_read_or_refused() {
        assert_eq!(
            der_item(&[0x04, 0x02, 1, 2, 9]),
            Some((0x04, &[1u8, 2][..], &[9u8][..]))
        );
        assert_eq!(
            der_item(&[0x04, 0x81, 0x01, 7]),
            Some((0x04, &[7u8][..], &[][..]))
        );
        assert_eq!(der_item(&[0x04, 0x05, 1]), None);
        assert_eq!(der_item(&[0x04, 0x85, 0, 0, 0, 0, 1]), None);
        assert_eq!(der_item(&[]), None);
    }

    #[test]
    fn the_common_name_is_found_among_other_attributes() {
        // SET { SEQ { O = "x" } }, SET { SEQ { CN = "worker-7" } }
        let mut name = vec![
            0x31, 0x0a, 0x30, 0x08, 0x06, 0x03, 0x55, 0x04, 0x0a, 0x0c, 0x01, b'x',
        ];
        name.extend([
            0x31, 0x11, 0x30, 0x0f, 0x06, 0x03, 0x55, 0x04, 0x03, 0x0c, 0x08,
        ]);
        name.extend(b"worker-7");
        assert_eq!(common_name(&name).as_deref(), Some("worker-7"));
        assert_eq!(common_name(&name[..12]), None);
        assert_eq!(common_name(&[0x31, 0x05, 0x30]), None);
    }
}
