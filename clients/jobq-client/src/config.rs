//! Where the server is and how to talk to it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::ClientError;

/// The server address used when none is given: the server's default listen address.
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";

/// How a [`crate::Client`] connects. Build one with [`ClientConfig::builder`].
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub(crate) endpoint: String,
    pub(crate) token: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) keep_alive_interval: Duration,
    pub(crate) max_message_bytes: usize,
    pub(crate) enqueue_tries: u32,
    pub(crate) tls: TlsOptions,
}

/// PEM text, read from a file or given; its Debug form shows only its size
/// (a private key must not end up in a log).
#[derive(Clone)]
pub(crate) enum Pem {
    Bytes(Vec<u8>),
    File(PathBuf),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::Bytes(bytes) => write!(f, "<{} bytes of PEM>", bytes.len()),
            Pem::File(path) => write!(f, "{}", path.display()),
        }
    }
}

impl Pem {
    /// The PEM text itself (a file is read at [`ClientConfigBuilder::build`]).
    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            Pem::Bytes(bytes) => bytes,
            Pem::File(_) => &[],
        }
    }

    fn load(self, what: &str) -> Result<Self, ClientError> {
        match self {
            Pem::Bytes(_) => Ok(self),
            Pem::File(path) => std::fs::read(&path).map(Pem::Bytes).map_err(|error| {
                ClientError::Config(format!("reading the {what} {}: {error}", path.display()))
            }),
        }
    }
}

/// TLS settings of an `https://` endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct TlsOptions {
    /// CA certificates (PEM) trusted for the server; none: the system's roots.
    pub(crate) ca: Option<Pem>,
    /// Client certificate chain and key (PEM) for servers that want one.
    pub(crate) identity: Option<(Pem, Pem)>,
    /// The name the server's certificate must hold, when not the endpoint's host.
    pub(crate) domain_name: Option<String>,
}

impl TlsOptions {
    fn is_set(&self) -> bool {
        self.ca.is_some() || self.identity.is_some() || self.domain_name.is_some()
    }
}

/// Largest message the client sends or takes by default: the server's default
/// limit, so that lists of full jobs with 1 MiB payloads fit.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

impl ClientConfig {
    /// A builder for a server at `endpoint` (`http://host:port`; a bare
    /// `host:port` gets `http://`).
    pub fn builder(endpoint: impl Into<String>) -> ClientConfigBuilder {
        ClientConfigBuilder {
            config: ClientConfig {
                endpoint: endpoint.into(),
                token: None,
                connect_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(30),
                keep_alive_interval: Duration::from_secs(15),
                max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
                enqueue_tries: 4,
                tls: TlsOptions::default(),
            },
        }
    }

    /// The server's URI.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The bearer token sent with every call, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Longest wait for an answer to a unary call (long polls add their wait).
    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Largest message sent or received, in bytes.
    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }
}

/// Builds a [`ClientConfig`]; [`ClientConfigBuilder::build`] checks it.
#[derive(Debug, Clone)]
pub struct ClientConfigBuilder {
    config: ClientConfig,
}

impl ClientConfigBuilder {
    /// Sends `authorization: Bearer <token>` with every call. An empty token means none.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.config.token = (!token.is_empty()).then_some(token);
        self
    }

    /// Longest wait for a TCP connection (default 5 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// Longest wait for the answer to a unary call (default 30 s).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.request_timeout = timeout;
        self
    }

    /// HTTP/2 ping interval that detects a dead connection (default 15 s).
    pub fn keep_alive_interval(mut self, interval: Duration) -> Self {
        self.config.keep_alive_interval = interval;
        self
    }

    /// Largest message sent or received (default 64 MiB, the server's
    /// default). Set it to the server's `--max-message-bytes`; LeaseJobs
    /// answers are kept under it.
    pub fn max_message_bytes(mut self, bytes: usize) -> Self {
        self.config.max_message_bytes = bytes;
        self
    }

    /// How often an enqueue is tried when the server cannot be reached or
    /// does not answer (default 4). Every try carries the same request_id, so
    /// a job is never enqueued twice. 1 means no retry.
    pub fn enqueue_tries(mut self, tries: u32) -> Self {
        self.config.enqueue_tries = tries.max(1);
        self
    }

    /// Trusts the CA certificates in this PEM text for an `https://` server
    /// (instead of the system's roots).
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.config.tls.ca = Some(Pem::Bytes(pem.into()));
        self
    }

    /// Trusts the CA certificates in this PEM file (read by `build`).
    pub fn tls_ca_file(mut self, path: impl AsRef<Path>) -> Self {
        self.config.tls.ca = Some(Pem::File(path.as_ref().to_owned()));
        self
    }

    /// Presents this client certificate chain and key (PEM text) to a
    /// server that asks for one (mutual TLS).
    pub fn tls_client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.config.tls.identity = Some((Pem::Bytes(cert.into()), Pem::Bytes(key.into())));
        self
    }

    /// Presents the client certificate and key in these PEM files (read by `build`).
    pub fn tls_client_identity_files(
        mut self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Self {
        self.config.tls.identity = Some((
            Pem::File(cert.as_ref().to_owned()),
            Pem::File(key.as_ref().to_owned()),
        ));
        self
    }

    /// Checks the server's certificate against this name instead of the
    /// endpoint's host (e.g. an IP endpoint, a certificate for a name).
    pub fn tls_domain_name(mut self, name: impl Into<String>) -> Self {
        self.config.tls.domain_name = Some(name.into());
        self
    }

    /// The checked configuration.
    pub fn build(mut self) -> Result<ClientConfig, ClientError> {
        let endpoint = self.config.endpoint.trim().to_owned();
        if endpoint.is_empty() {
            return Err(ClientError::Config("the server endpoint is empty".into()));
        }
        self.config.endpoint = if endpoint.contains("://") {
            endpoint
        } else {
            format!("http://{endpoint}")
        };
        if !(self.config.endpoint.starts_with("http://")
            || self.config.endpoint.starts_with("https://"))
        {
            return Err(ClientError::Config(format!(
                "server endpoint {:?} must start with http:// or https://",
                self.config.endpoint
            )));
        }
        if self.config.tls.is_set() && !self.config.endpoint.starts_with("https://") {
            return Err(ClientError::Config(format!(
                "TLS settings need an https:// server endpoint, not {:?}",
                self.config.endpoint
            )));
        }
        let tls = std::mem::take(&mut self.config.tls);
        self.config.tls = TlsOptions {
            ca: tls.ca.map(|ca| ca.load("CA file")).transpose()?,
            identity: match tls.identity {
                Some((cert, key)) => {
                    Some((cert.load("client certificate")?, key.load("client key")?))
                }
                None => None,
            },
            domain_name: tls.domain_name,
        };
        if let Some(token) = &self.config.token
            && token.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(ClientError::Config(
                "the token must not contain spaces or control characters".into(),
            ));
        }
        if self.config.max_message_bytes < 64 * 1024 {
            return Err(ClientError::Config(
                "the message size limit must be at least 64 KiB".into(),
            ));
        }
        for (what, value) in [
            ("connect timeout", self.config.connect_timeout),
            ("request timeout", self.config.request_timeout),
            ("keep-alive interval", self.config.keep_alive_interval),
        ] {
            if value.is_zero() {
                return Err(ClientError::Config(format!(
                    "the {what} must be greater than zero"
                )));
            }
        }
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_addresses_get_a_scheme() -> Result<(), ClientError> {
        let config = ClientConfig::builder("127.0.0.1:4000").build()?;
        assert_eq!(config.endpoint(), "http://127.0.0.1:4000");
        Ok(())
    }

    #[test]
    fn other_schemes_and_bad_tokens_are_refused() {
        assert!(ClientConfig::builder("ftp://x").build().is_err());
        assert!(ClientConfig::builder("").build().is_err());
        assert!(
            ClientConfig::builder("http://x")
                .token("a b")
                .build()
                .is_err()
        );
    }

    #[test]
    fn tls_settings_need_https_and_readable_files() {
        assert!(
            ClientConfig::builder("http://x")
                .tls_ca_pem("pem")
                .build()
                .is_err()
        );
        assert!(
            ClientConfig::builder("https://x")
                .tls_ca_file("/nonexistent/ca.pem")
                .build()
                .is_err()
        );
        let config = ClientConfig::builder("https://x")
            .tls_client_identity_pem("cert", "secret key")
            .build();
        assert!(config.is_ok_and(|config| !format!("{config:?}").contains("secret")));
    }

    #[test]
    fn an_empty_token_means_none() -> Result<(), ClientError> {
        let config = ClientConfig::builder(DEFAULT_ENDPOINT).token("").build()?;
        assert_eq!(config.token(), None);
        Ok(())
    }
}
