//! Servers sharing one database: a single server on the backend
//! `JOBQ_TEST_BACKEND` picks, or several replicas on PostgreSQL. Each can be
//! stopped and started again on the same database and data dir, as an
//! operator restarts a server.

use anyhow::{Context, ensure};
use jobq_server::{App, Config, RunningServer};
use tempfile::TempDir;
use tokio::net::TcpListener;

use crate::{Backend, JobqClient, TestDatabase, settings};

/// One server of a [`Cluster`].
struct Member {
    running: Option<RunningServer>,
    client: Option<JobqClient>,
    data_dir: TempDir,
}

/// Servers on one database.
pub struct Cluster {
    members: Vec<Member>,
    // Dropped after the servers that use it.
    database: TestDatabase,
}

impl Cluster {
    /// `replicas` servers on one fresh database: with one, of the backend
    /// `JOBQ_TEST_BACKEND` picks; with more, PostgreSQL (replicas need a
    /// shared database).
    pub async fn start(replicas: usize) -> anyhow::Result<Self> {
        ensure!(replicas > 0, "a cluster needs a server");
        let backend = if replicas == 1 {
            Backend::from_env()?
        } else {
            Backend::Postgres
        };
        let mut data_dirs = Vec::with_capacity(replicas);
        for _ in 0..replicas {
            data_dirs.push(tempfile::Builder::new().prefix("jobq-cluster-").tempdir()?);
        }
        // SQLite: the file is in the first server's data dir.
        let database = TestDatabase::provision(backend, data_dirs[0].path()).await?;
        let mut cluster = Self {
            members: data_dirs
                .into_iter()
                .map(|data_dir| Member {
                    running: None,
                    client: None,
                    data_dir,
                })
                .collect(),
            database,
        };
        for index in 0..replicas {
            cluster.start_member(index).await?;
        }
        Ok(cluster)
    }

    async fn start_member(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        let mut config = Config::for_tests(member.data_dir.path());
        settings::apply(&mut config);
        config.database_url = self.database.url().map(str::to_owned);
        let listener = TcpListener::bind(config.listen).await?;
        let running = App::start(config, listener)
            .await
            .with_context(|| format!("starting server {index}"))?;
        member.client = Some(JobqClient::connect(running.local_addr()).await?);
        member.running = Some(running);
        Ok(())
    }

    /// How many servers the cluster has.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether it has none (never: [`Cluster::start`] refuses that).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The backend the servers share.
    pub fn backend(&self) -> Backend {
        self.database.backend()
    }

    /// A client of server `index` (which must be running).
    pub fn client(&self, index: usize) -> JobqClient {
        self.members[index]
            .client
            .clone()
            .expect("the server is running")
    }

    /// Stops server `index` gracefully.
    pub async fn stop(&mut self, index: usize) -> anyhow::Result<()> {
        let member = &mut self.members[index];
        member.client = None;
        if let Some(running) = member.running.take() {
            running.shutdown().await?;
        }
        Ok(())
    }

    /// Starts server `index` again, on the same database and data dir.
    pub async fn restart(&mut self, index: usize) -> anyhow::Result<()> {
        self.stop(index).await?;
        self.start_member(index).await
    }

    /// Stops every server.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        for index in 0..self.members.len() {
            self.stop(index).await?;
        }
        Ok(())
    }
}
