//! The deadlines of one connection: its I/O and its service tell a [`Watch`] where the
//! exchange is (reading a request's headers, answering, idle) and whether a write is stalled;
//! [`Watch::missed`] resolves when a deadline passes.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    sync::Notify,
    time::Instant,
};

use super::{Ended, Timeouts};

/// Where a connection is in its exchange, as far as the deadlines care.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Reading a request's headers since then.
    Head(Instant),
    /// Its request is being answered: no read deadline.
    Serving,
    /// Waiting for the next request since then.
    Idle(Instant),
}

#[derive(Debug)]
struct WatchState {
    phase: Phase,
    /// Since when a write has been waiting for the reader.
    write_blocked: Option<Instant>,
}

/// What the connection's I/O and its service tell the watchdog.
#[derive(Debug)]
pub struct Watch {
    state: Mutex<WatchState>,
    changed: Notify,
}

impl Watch {
    /// A new connection: its first request's headers are due within the header timeout.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(WatchState { phase: Phase::Head(Instant::now()), write_blocked: None }),
            changed: Notify::new(),
        })
    }

    fn update(&self, f: impl FnOnce(&mut WatchState) -> bool) {
        let notify = f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
        if notify {
            self.changed.notify_one();
        }
    }

    /// The request's headers are in: it is being answered.
    pub fn serving(&self) {
        self.update(|s| {
            s.phase = Phase::Serving;
            false
        });
    }

    /// The answer is written (its body is done): the connection waits for the next request.
    pub fn answered(&self) {
        self.update(|s| {
            s.phase = Phase::Idle(Instant::now());
            true
        });
    }

    fn read_some(&self) {
        self.update(|s| match s.phase {
            Phase::Idle(_) => {
                s.phase = Phase::Head(Instant::now());
                true
            }
            _ => false,
        });
    }

    fn write_blocked(&self, blocked: bool) {
        self.update(|s| match (blocked, s.write_blocked) {
            (true, None) => {
                s.write_blocked = Some(Instant::now());
                true
            }
            (false, Some(_)) => {
                s.write_blocked = None;
                false
            }
            _ => false,
        });
    }

    /// The earliest deadline the connection must meet now, and what missing it means.
    fn deadline(&self, t: &Timeouts) -> Option<(Instant, Ended)> {
        let s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let read = match s.phase {
            Phase::Head(since) => Some((since + t.read_header, Ended::HeaderTimeout)),
            Phase::Idle(since) => Some((since + t.idle, Ended::IdleTimeout)),
            Phase::Serving => None,
        };
        let write = s.write_blocked.map(|since| (since + t.write, Ended::WriteTimeout));
        [read, write].into_iter().flatten().min_by_key(|(at, _)| *at)
    }

    /// Resolves when the connection misses a deadline, with the reason.
    pub async fn missed(&self, t: Timeouts) -> Ended {
        loop {
            let changed = self.changed.notified();
            match self.deadline(&t) {
                Some((at, why)) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(at) => {
                            // Met meanwhile (progress moved the deadline on): look again.
                            if self.deadline(&t).is_some_and(|(now_at, _)| now_at <= Instant::now()) {
                                return why;
                            }
                        }
                        _ = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

/// A connection's byte stream, telling its [`Watch`] about reads and stalled writes.
pub struct Watched<T> {
    inner: T,
    watch: Arc<Watch>,
}

impl<T> Watched<T> {
    pub fn new(inner: T, watch: Arc<Watch>) -> Self {
        Self { inner, watch }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.watch.read_some();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, data);
        self.watch.write_blocked(r.is_pending());
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch.write_blocked(r.is_pending());
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch.write_blocked(r.is_pending());
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_misses_the_idle_deadline() {
        let w = Watch::new();
        w.serving();
        w.answered();
        let start = Instant::now();
        assert_eq!(w.missed(Timeouts::default()).await, Ended::IdleTimeout);
        assert_eq!(start.elapsed(), Timeouts::default().idle);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_never_ends_misses_the_header_deadline() {
        let t = Timeouts {
            read_header: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            write: Duration::from_secs(60),
        };
        let w = Watch::new();
        let start = Instant::now();
        assert_eq!(w.missed(t).await, Ended::HeaderTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn idle_then_a_slow_head_then_a_stalled_write() {
        let t = Timeouts {
            read_header: Duration::from_secs(10),
            idle: Duration::from_secs(120),
            write: Duration::from_secs(60),
        };
        let w = Watch::new();
        w.serving();
        w.answered();
        let start = Instant::now();
        // Idle: the idle deadline, not the header one.
        let watchdog = {
            let w = w.clone();
            tokio::spawn(async move { w.missed(t).await })
        };
        tokio::time::sleep(Duration::from_secs(100)).await;
        // A first byte: now the header deadline runs from here.
        w.read_some();
        assert_eq!(watchdog.await.unwrap(), Ended::HeaderTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(110));
        // Serving: no read deadline; a write blocked for 60 s ends it.
        w.serving();
        let start = Instant::now();
        let watchdog = {
            let w = w.clone();
            tokio::spawn(async move { w.missed(t).await })
        };
        tokio::time::sleep(Duration::from_secs(30)).await;
        w.write_blocked(true);
        tokio::time::sleep(Duration::from_secs(50)).await;
        // Progress: the stall starts again.
        w.write_blocked(false);
        w.write_blocked(true);
        assert_eq!(watchdog.await.unwrap(), Ended::WriteTimeout);
        assert_eq!(start.elapsed(), Duration::from_secs(140));
    }

    #[tokio::test(start_paused = true)]
    async fn a_served_connection_without_a_stall_has_no_deadline() {
        let t = Timeouts::default();
        let w = Watch::new();
        w.serving();
        let r = tokio::time::timeout(Duration::from_secs(3600), w.missed(t)).await;
        assert!(r.is_err(), "no deadline while serving and writing freely");
    }
}
