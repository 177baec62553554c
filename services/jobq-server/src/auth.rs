//! Bearer tokens with roles. `admin` may call everything; `producer` may
//! enqueue and read; `worker` may lease, heartbeat, report, push logs and
//! enqueue child jobs; `readonly` may only read. Health and reflection stay
//! open. A missing or unknown token is UNAUTHENTICATED; a known token
//! without the role is PERMISSION_DENIED. Tokens are kept as SHA-256
//! digests (and may be configured as such) and compared in constant time.
//!
//! With mutual TLS (`--tls-client-ca`) the handshake has already
//! authenticated the machine; its certificate's name
//! ([`crate::tls::ClientIdentity`]) is in the request's extensions and is
//! logged with every refusal. The token stays what authorizes a call.

use std::sync::Arc;

use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// The path of the called method (`/package.Service/Method`), put in every
/// request's extensions by [`record_path`] so the interceptor can see it.
#[derive(Debug, Clone)]
pub struct CalledPath(pub String);

/// Puts the request path in its extensions (a `tower::util::MapRequestLayer` function).
pub fn record_path<B>(mut request: axum::http::Request<B>) -> axum::http::Request<B> {
    let path = CalledPath(request.uri().path().to_owned());
    request.extensions_mut().insert(path);
    request
}

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Enqueue and read.
    Producer,
    /// The worker protocol.
    Worker,
    /// Read only: jobs, logs, stats, queues, workers, schedules, streams
    /// included; nothing that changes anything.
    Readonly,
}

impl Role {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Role::Admin),
            "producer" => Some(Role::Producer),
            "worker" => Some(Role::Worker),
            "readonly" => Some(Role::Readonly),
            _ => None,
        }
    }
}

/// Methods of JobQueueService that only read.
const READ_METHODS: &[&str] = &[
    "GetJob",
    "ListJobs",
    "GetQueueStats",
    "GetJobHistory",
    "WatchJobHistory",
    "StreamJobLogs",
    "GetJobLogs",
    "WatchJobs",
    "ListQueues",
    "ListWorkers",
    "ListSchedules",
    "WatchQueueStats",
    "WatchWorkers",
    "WatchQueues",
    "WatchSchedules",
    "WatchDashboard",
];
/// Methods of JobQueueService a producer may call besides the reads.
const PRODUCER_WRITES: &[&str] = &["EnqueueJob", "EnqueueJobs"];
/// Methods of JobQueueService a worker may call: spawning child jobs.
const WORKER_QUEUE_METHODS: &[&str] = &["EnqueueJob", "EnqueueJobs", "GetJob"];

/// Shortest token accepted, in characters.
const MIN_TOKEN_CHARS: usize = 16;

/// A token as kept in memory: its SHA-256, never the token itself.
type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    Sha256::digest(token.as_bytes()).into()
}

/// The configured tokens, as digests with their roles.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    digests: Vec<(Digest, Role)>,
}

impl Tokens {
    /// Parses `role:token` and `role:sha256:<64 hex digits>` entries. An
    /// error names the entry by its position, never by its text: a token
    /// must not end up in a log.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut digests: Vec<(Digest, Role)> = Vec::with_capacity(entries.len());
        for (index, entry) in entries.iter().enumerate() {
            let number = index + 1;
            let (role, secret) = entry.split_once(':').ok_or_else(|| {
                format!("--auth-token entry {number} is not role:token (or role:sha256:HEX)")
            })?;
            let role = Role::parse(role).ok_or_else(|| {
                format!(
                    "--auth-token entry {number}: unknown role; use admin, producer, worker or readonly"
                )
            })?;
            let entry_digest = match secret.strip_prefix("sha256:") {
                Some(hex) => parse_digest(hex).ok_or_else(|| {
                    format!("--auth-token entry {number}: a sha256 digest is 64 hex digits")
                })?,
                None if secret.chars().count() < MIN_TOKEN_CHARS => {
                    return Err(format!(
                        "--auth-token entry {number}: the token is shorter than {MIN_TOKEN_CHARS} characters"
                    ));
                }
                None => digest(secret),
            };
            if let Some(first) = digests
                .iter()
                .position(|(known, _)| bool::from(known.ct_eq(&entry_digest)))
            {
                return Err(format!(
                    "--auth-token entries {} and {number} are the same token: one token, one role",
                    first + 1
                ));
            }
            digests.push((entry_digest, role));
        }
        Ok(Self { digests })
    }

    /// True when no token is configured: the server is open.
    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// The role of `presented`, comparing its digest with every known one
    /// in constant time (all of them, whichever matches).
    fn role_of(&self, presented: &str) -> Option<Role> {
        let presented = digest(presented);
        let mut found = None;
        for (known, role) in &self.digests {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(*role);
            }
        }
        found
    }

    /// Whether `role` may call `service`/`method`: the role table.
    pub fn allows(role: Role, service: &str, method: &str) -> bool {
        match (role, service) {
            (Role::Admin, _) => true,
            (Role::Producer, "jobq.v1.JobQueueService") => {
                READ_METHODS.contains(&method) || PRODUCER_WRITES.contains(&method)
            }
            (Role::Readonly, "jobq.v1.JobQueueService") => READ_METHODS.contains(&method),
            (Role::Worker, "jobq.v1.WorkerService") => true,
            (Role::Worker, "jobq.v1.JobQueueService") => WORKER_QUEUE_METHODS.contains(&method),
            _ => false,
        }
    }

    /// Checks one call; the interceptor of both jobq services.
    pub fn check(&self, request: &Request<()>) -> Result<(), Status> {
        if self.is_empty() {
            return Ok(());
        }
        let checked = self.check_token(request);
        if let Err(status) = &checked {
            tracing::debug!(
                client_cert = crate::tls::ClientIdentity::of(request.extensions())
                    .map(tracing::field::display),
                code = ?status.code(),
                "call refused"
            );
        }
        checked
    }

    fn check_token(&self, request: &Request<()>) -> Result<(), Status> {
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
            })?;
        let role = self
            .role_of(presented)
            .ok_or_else(|| Status::unauthenticated("unknown token"))?;
        let path = request
            .extensions()
            .get::<CalledPath>()
            .map_or("", |called| called.0.as_str());
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or((path, ""));
        if Self::allows(role, service, method) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "the {role:?} role may not call {service}/{method}"
            )))
        }
    }
}

/// 64 hex digits as a digest.
fn parse_digest(hex: &str) -> Option<Digest> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut digest = [0u8; 32];
    for (byte, pair) in digest.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(digest)
}

/// A tonic interceptor over shared tokens.
pub fn interceptor(
    tokens: Arc<Tokens>,
) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone {
    move |request| tokens.check(&request).map(|()| request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_map_to_the_calls_they_may_make() {
        assert!(Tokens::allows(
            Role::Producer,
            "jobq.v1.JobQueueService",
            "EnqueueJob"
        ));
        assert!(!Tokens::allows(
            Role::Producer,
            "jobq.v1.JobQueueService",
            "DeleteJob"
        ));
        assert!(!Tokens::allows(
            Role::Producer,
            "jobq.v1.WorkerService",
            "LeaseJobs"
        ));
        assert!(Tokens::allows(
            Role::Worker,
            "jobq.v1.WorkerService",
            "LeaseJobs"
        ));
        assert!(Tokens::allows(
            Role::Worker,
            "jobq.v1.JobQueueService",
            "EnqueueJob"
        ));
        assert!(!Tokens::allows(
            Role::Worker,
            "jobq.v1.JobQueueService",
            "CancelJob"
        ));
        assert!(Tokens::allows(
            Role::Admin,
            "jobq.v1.JobQueueService",
            "DeleteJobs"
        ));
    }

    #[test]
    fn readonly_reads_and_changes_nothing() {
        let queue = "jobq.v1.JobQueueService";
        for read in READ_METHODS {
            assert!(Tokens::allows(Role::Readonly, queue, read), "{read}");
        }
        for write in [
            "EnqueueJob",
            "CancelJob",
            "DeleteJob",
            "UpdateQueue",
            "PutSchedule",
        ] {
            assert!(!Tokens::allows(Role::Readonly, queue, write), "{write}");
        }
        assert!(!Tokens::allows(
            Role::Readonly,
            "jobq.v1.WorkerService",
            "LeaseJobs"
        ));
    }

    #[test]
    fn a_token_is_known_by_its_digest_and_never_echoed() {
        let token = "0123456789abcdef-secret";
        let hex: String = digest(token)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let tokens = Tokens::parse(&[
            format!("readonly:sha256:{hex}"),
            "admin:another-token-123456".into(),
        ])
        .expect("valid");
        assert_eq!(tokens.role_of(token), Some(Role::Readonly));
        assert_eq!(tokens.role_of("another-token-123456"), Some(Role::Admin));
        assert_eq!(tokens.role_of("0123456789abcdef-secreT"), None);

        let secret = "do-not-print-this-token";
        for bad in [
            vec![format!("root:{secret}")],
            vec![format!("admin{secret}")],
            vec!["admin:do-not-print".to_owned()],
            vec![format!("admin:{secret}"), format!("worker:{secret}")],
            vec![format!("admin:sha256:{secret}")],
        ] {
            let error = Tokens::parse(&bad).expect_err("refused");
            assert!(!error.contains("do-not-print"), "{error}");
            assert!(error.contains("--auth-token entr"), "{error}");
        }
    }

    #[test]
    fn bad_entries_are_refused() {
        assert!(Tokens::parse(&["root:0123456789abcdef".into()]).is_err());
        assert!(Tokens::parse(&["admin:short".into()]).is_err());
        assert!(Tokens::parse(&["admin0123456789abcdef".into()]).is_err());
        assert!(
            !Tokens::parse(&["admin:0123456789abcdef".into()])
                .expect("valid")
                .is_empty()
        );
    }
}
