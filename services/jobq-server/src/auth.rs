//! Bearer tokens with roles. `admin` may call everything; `producer` may
//! enqueue and read; `worker` may lease, heartbeat, report, push logs and
//! enqueue child jobs. Health and reflection stay open. A missing or unknown
//! token is UNAUTHENTICATED; a known token without the role is PERMISSION_DENIED.

use std::collections::HashMap;
use std::sync::Arc;

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
}

impl Role {
    fn parse(raw: &str) -> Option<Self> {
        match raw {
            "admin" => Some(Role::Admin),
            "producer" => Some(Role::Producer),
            "worker" => Some(Role::Worker),
            _ => None,
        }
    }
}

/// Methods of JobQueueService a producer may call: enqueue and read.
const PRODUCER_METHODS: &[&str] = &[
    "EnqueueJob",
    "EnqueueJobs",
    "GetJob",
    "ListJobs",
    "GetQueueStats",
    "StreamJobLogs",
    "GetJobLogs",
    "WatchJobs",
    "ListQueues",
    "ListWorkers",
    "ListSchedules",
];
/// Methods of JobQueueService a worker may call: spawning child jobs.
const WORKER_QUEUE_METHODS: &[&str] = &["EnqueueJob", "EnqueueJobs", "GetJob"];

/// The configured tokens.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    roles: HashMap<String, Role>,
}

impl Tokens {
    /// Parses `role:token` entries.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut roles = HashMap::new();
        for entry in entries {
            let (role, token) = entry
                .split_once(':')
                .ok_or_else(|| format!("auth token {entry:?} is not role:token"))?;
            let role = Role::parse(role)
                .ok_or_else(|| format!("unknown role {role:?}: use admin, producer or worker"))?;
            if token.len() < 16 {
                return Err(format!("the {role:?} token is shorter than 16 characters"));
            }
            roles.insert(token.to_owned(), role);
        }
        Ok(Self { roles })
    }

    /// True when no token is configured: the server is open.
    pub fn is_empty(&self) -> bool {
        self.roles.is_empty()
    }

    fn allows(role: Role, service: &str, method: &str) -> bool {
        match (role, service) {
            (Role::Admin, _) => true,
            (Role::Producer, "jobq.v1.JobQueueService") => PRODUCER_METHODS.contains(&method),
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
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| {
                Status::unauthenticated("missing bearer token (authorization: Bearer <token>)")
            })?;
        let role = *self
            .roles
            .get(presented)
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
