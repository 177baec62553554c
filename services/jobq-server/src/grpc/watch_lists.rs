//! The tasks behind the Watch* streams a dashboard keeps open instead of
//! polling: job counts, workers, queues and schedules. Each sends the whole
//! answer at once and again whenever it changes, and nothing while nothing
//! does. Counts come from the server's tally (no table scan per message);
//! the small lists are read again when something that shows in them may
//! have changed, and now and then for what other replicas changed.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::streams::{WatchPresence, shutting_down};
use crate::background::StatsFeed;
use crate::domain::{JobEvent, JobQueue, QueueResult, StatsSnapshot};

/// Job events, and which of them wake a list stream.
pub type EventTrigger = (broadcast::Receiver<JobEvent>, fn(&JobEvent) -> bool);

/// What wakes a list stream to read its list again.
pub struct ListTriggers {
    /// Job events; those `relevant` says so wake the stream.
    pub events: Option<EventTrigger>,
    /// Job counts: a change in the set of queues wakes the stream.
    pub stats: Option<StatsFeed>,
    /// Bumped by this server's calls that change queues or schedules.
    pub controls: watch::Receiver<u64>,
    /// Read again after this long anyway (changes on other replicas, a
    /// worker turning lost).
    pub every: Duration,
    /// Fewest time between two reads.
    pub gap: Duration,
}

/// Streams what `read` returns, whenever `shown` of it changes.
pub async fn watch_list<T, K, R, F>(
    queue: Arc<JobQueue>,
    presence: WatchPresence,
    mut triggers: ListTriggers,
    sender: mpsc::Sender<Result<T, Status>>,
    mut read: R,
    shown: fn(&T) -> K,
) where
    K: PartialEq,
    R: FnMut() -> F,
    F: Future<Output = QueueResult<T>>,
{
    let _present = presence.open();
    let shutdown = queue.shutdown_token().clone();
    let mut last: Option<K> = None;
    loop {
        // Noted before reading, so a change made during the read wakes the next one.
        let queue_names = triggers.stats.as_mut().map(queue_names);
        let message = match read().await {
            Ok(value) => {
                let key = shown(&value);
                if last.as_ref() == Some(&key) {
                    None
                } else {
                    last = Some(key);
                    Some(Ok(value))
                }
            }
            Err(error) => Some(Err(Status::from(error))),
        };
        if let Some(message) = message
            && !send_or_end(&sender, &shutdown, message).await
        {
            return;
        }
        let gap = triggers.gap;
        let triggered = async {
            triggered(&mut triggers, queue_names).await;
            true
        };
        if !wait_or_end(&sender, &shutdown, triggered).await
            || !wait_or_end(&sender, &shutdown, async {
                tokio::time::sleep(gap).await;
                true
            })
            .await
        {
            return;
        }
    }
}

/// Resolves when something in `triggers` says the list may have changed.
/// `read_with`: the queues the feed knew of when the list was last read.
async fn triggered(triggers: &mut ListTriggers, read_with: Option<Vec<String>>) {
    let events = async {
        match triggers.events.as_mut() {
            Some((events, relevant)) => loop {
                match events.recv().await {
                    Ok(event) if relevant(&event) => return,
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => std::future::pending::<()>().await,
                }
            },
            None => std::future::pending().await,
        }
    };
    let stats = async {
        match triggers.stats.as_mut() {
            Some(feed) => loop {
                if feed.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
                if Some(queue_names(feed)) != read_with {
                    return;
                }
            },
            None => std::future::pending().await,
        }
    };
    let controls = async {
        if triggers.controls.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = events => {}
        () = stats => {}
        () = controls => {}
        () = tokio::time::sleep(triggers.every) => {}
    }
}

/// The queues the feed knows of, marking its latest snapshot seen.
fn queue_names(feed: &mut StatsFeed) -> Vec<String> {
    feed.borrow_and_update()
        .queues
        .iter()
        .map(|stats| stats.queue.clone())
        .collect()
}

/// Streams the counts of `queues` (all when empty) as they change.
pub async fn watch_stats<T>(
    queue: Arc<JobQueue>,
    presence: WatchPresence,
    mut feed: StatsFeed,
    queues: Vec<String>,
    sender: mpsc::Sender<Result<T, Status>>,
    message: impl Fn(StatsSnapshot) -> T,
) {
    let _present = presence.open();
    let shutdown = queue.shutdown_token().clone();
    let mut last: Option<Vec<crate::domain::QueueStats>> = None;
    loop {
        let snapshot = narrowed(&feed.borrow_and_update(), &queues);
        if last.as_ref() != Some(&snapshot.queues) {
            last = Some(snapshot.queues.clone());
            if !send_or_end(&sender, &shutdown, Ok(message(snapshot))).await {
                return;
            }
        }
        if !wait_or_end(&sender, &shutdown, async { feed.changed().await.is_ok() }).await {
            return;
        }
    }
}

/// Sends `message` unless the server shuts down first (then says so);
/// false when the stream is over.
async fn send_or_end<T>(
    sender: &mpsc::Sender<Result<T, Status>>,
    shutdown: &CancellationToken,
    message: Result<T, Status>,
) -> bool {
    let failed = message.is_err();
    tokio::select! {
        sent = sender.send(message) => sent.is_ok() && !failed,
        () = shutdown.cancelled() => {
            let _ = sender.try_send(Err(shutting_down("watch")));
            false
        }
    }
}

/// Waits for `until` unless the client leaves or the server shuts down
/// first (then says so); false when the stream is over.
async fn wait_or_end<T>(
    sender: &mpsc::Sender<Result<T, Status>>,
    shutdown: &CancellationToken,
    until: impl Future<Output = bool>,
) -> bool {
    tokio::select! {
        () = sender.closed() => false,
        () = shutdown.cancelled() => {
            let _ = sender.send(Err(shutting_down("watch"))).await;
            false
        }
        going_on = until => going_on,
    }
}

fn narrowed(snapshot: &StatsSnapshot, queues: &[String]) -> StatsSnapshot {
    StatsSnapshot {
        queues: snapshot
            .queues
            .iter()
            .filter(|stats| queues.is_empty() || queues.contains(&stats.queue))
            .cloned()
            .collect(),
        as_of: snapshot.as_of,
    }
}
