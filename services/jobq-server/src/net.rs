//! Accepting connections so that none can be held hostage: a limit on open
//! connections in all and per peer address (over it, a new connection is
//! closed at once: it never holds a descriptor), a deadline for a new
//! connection to send the start of its first request (an HTTP/2 preface or
//! an HTTP/1 request line), and a pause with a rate-limited warning when
//! the process runs out of file descriptors, instead of a busy loop.
//! HTTP/2 keepalive pings (set on the server) close connections whose peer
//! stopped answering.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Sleep;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How connections are admitted.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Open connections at most.
    pub max_connections: usize,
    /// Open connections from one IP address at most.
    pub max_per_peer: usize,
    /// How long a new connection has to send the start of its first request.
    pub first_bytes_timeout: Duration,
}

/// Bytes a connection must send in time: the whole HTTP/2 preface (any
/// real HTTP/1.1 request, with its Host header, is longer).
const FIRST_BYTES: usize = 24;

/// Descriptors kept free for the database, logs and the process itself
/// when the connection limit is derived from the open-file limit.
const RESERVED_DESCRIPTORS: u64 = 128;

/// The connection limit when none is given: the open-file limit less a
/// reserve, so that connections alone can never exhaust descriptors.
pub fn default_max_connections() -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX);
    usize::try_from(soft.saturating_sub(RESERVED_DESCRIPTORS).clamp(16, 100_000)).unwrap_or(100_000)
}

/// Open connections, in all and per peer.
#[derive(Debug, Default)]
struct Open {
    total: usize,
    per_peer: HashMap<IpAddr, usize>,
}

/// Says "too many" at most once per interval, with how many were turned away.
#[derive(Debug)]
struct Throttled {
    last: Option<Instant>,
    since_last: u64,
}

impl Throttled {
    const INTERVAL: Duration = Duration::from_secs(10);

    fn new() -> Self {
        Self {
            last: None,
            since_last: 0,
        }
    }

    /// Counts one event; `Some(count)` when it is time to say so.
    fn tick(&mut self) -> Option<u64> {
        self.since_last += 1;
        let due = self
            .last
            .is_none_or(|last| last.elapsed() >= Self::INTERVAL);
        if due {
            self.last = Some(Instant::now());
            Some(std::mem::take(&mut self.since_last))
        } else {
            None
        }
    }
}

/// Accepts on `listener` until `stop`, within `limits`.
pub fn incoming(
    listener: TcpListener,
    limits: ConnectionLimits,
    stop: CancellationToken,
) -> ReceiverStream<io::Result<Connection>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    let open = Arc::new(Mutex::new(Open::default()));
    tokio::spawn(async move {
        let mut refused = Throttled::new();
        let mut exhausted = Throttled::new();
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) if matches!(error.raw_os_error(), Some(23 | 24)) => {
                    // EMFILE / ENFILE: accepting again at once would spin.
                    if let Some(times) = exhausted.tick() {
                        tracing::warn!(%error, times, "out of file descriptors: not accepting connections for 100 ms");
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, "accepting a connection");
                    continue;
                }
            };
            let Some(slot) = Slot::take(&open, peer, &limits) else {
                if let Some(times) = refused.tick() {
                    tracing::warn!(
                        %peer,
                        times,
                        max_connections = limits.max_connections,
                        max_per_peer = limits.max_per_peer,
                        "connection limit reached: closing new connections"
                    );
                }
                drop(tcp);
                continue;
            };
            // Small gRPC frames must not wait for Nagle's algorithm (a 40 ms stall per call).
            if let Err(error) = tcp.set_nodelay(true) {
                tracing::debug!(%error, "could not set TCP_NODELAY");
            }
            let connection = Connection {
                tcp,
                _slot: slot,
                first_bytes: Some((0, Box::pin(tokio::time::sleep(limits.first_bytes_timeout)))),
            };
            if sender.send(Ok(connection)).await.is_err() {
                return;
            }
        }
    });
    ReceiverStream::new(receiver)
}

/// A connection's place in the limits, given back when it closes.
#[derive(Debug)]
struct Slot {
    open: Arc<Mutex<Open>>,
    peer: IpAddr,
}

impl Slot {
    fn take(open: &Arc<Mutex<Open>>, peer: SocketAddr, limits: &ConnectionLimits) -> Option<Self> {
        let mut counts = open.lock().unwrap_or_else(PoisonError::into_inner);
        let from_peer = counts.per_peer.get(&peer.ip()).copied().unwrap_or(0);
        if counts.total >= limits.max_connections || from_peer >= limits.max_per_peer {
            return None;
        }
        counts.total += 1;
        counts.per_peer.insert(peer.ip(), from_peer + 1);
        Some(Self {
            open: open.clone(),
            peer: peer.ip(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        counts.total = counts.total.saturating_sub(1);
        if let Some(from_peer) = counts.per_peer.get_mut(&self.peer) {
            *from_peer -= 1;
            if *from_peer == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

/// An accepted connection: a TCP stream holding its slot, failing its
/// reads if the first bytes of a request do not come in time.
#[derive(Debug)]
pub struct Connection {
    tcp: TcpStream,
    _slot: Slot,
    /// Bytes read so far and the deadline, until the first bytes are in.
    first_bytes: Option<(usize, Pin<Box<Sleep>>)>,
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.tcp.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.tcp).poll_read(cx, buf);
        if let Some((seen, deadline)) = &mut this.first_bytes {
            *seen += buf.filled().len() - before;
            if *seen >= FIRST_BYTES {
                this.first_bytes = None;
            } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no request started in time",
                )));
            }
        }
        polled
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }
}
