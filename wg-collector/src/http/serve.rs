//! The listener: plain TCP or TLS (rustls), HTTP/1.1 by hyper, the axum router behind an
//! authentication layer, and the settings swapped in place on SIGHUP or when their files
//! change, so a reload never drops a connection or a scrape. A settings file that does not
//! load is refused with its error and the old settings stay.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use super::listen::Listeners;
use anyhow::{bail, Result};
use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::Next,
    response::{IntoResponse, Response},
    Router,
};
use hyper_util::rt::TokioIo;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use super::{
    allow::AllowedClients,
    auth::{Auth, Limiter, Verdict},
    config::WebConfig,
    conn::{Caps, Ended, Gate, TimeoutSettings, Timeouts, Watch, Watched},
    requests::{Refused, Requests},
    tokens,
};

/// What the endpoint serves with, as of the last (re)load.
pub struct Settings {
    pub tls: Option<TlsAcceptor>,
    pub auth: Arc<Auth>,
    /// Clients must present a verified certificate (that alone is authentication).
    pub client_certs_required: bool,
    /// What a connection may take (flags over the web configuration file over defaults).
    pub timeouts: Timeouts,
    /// Who is answered at all (the flag over the web configuration file).
    pub allowed: AllowedClients,
}

impl Settings {
    /// Whether anything stands between a client and the metrics.
    pub fn authenticates(&self) -> bool {
        self.auth.required() || self.client_certs_required
    }
}

/// The files settings come from (--web.config.file, --web.bearer-token-file).
#[derive(Clone, Debug, Default)]
pub struct SettingsFiles {
    pub web_config: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// The timeouts the flags set: they win over the file's.
    pub timeout_flags: TimeoutSettings,
    /// --web.allowed-clients: wins over the file's allowed_clients when given.
    pub allowed_flag: Vec<ipnet::IpNet>,
}

impl SettingsFiles {
    pub fn load(&self) -> Result<Settings> {
        let web = match &self.web_config {
            Some(p) => WebConfig::load(p)?,
            None => WebConfig {
                tls: None,
                client_certs_required: false,
                basic_auth_users: Default::default(),
                allowed_clients: Vec::new(),
                timeouts: TimeoutSettings::default(),
            },
        };
        let tokens = match &self.token_file {
            Some(p) => tokens::load(p)?,
            None => Vec::new(),
        };
        Ok(Settings {
            tls: web.tls.map(TlsAcceptor::from),
            auth: Arc::new(Auth::new(web.basic_auth_users, &tokens)),
            client_certs_required: web.client_certs_required,
            timeouts: self.timeout_flags.over(web.timeouts),
            allowed: AllowedClients(if self.allowed_flag.is_empty() {
                web.allowed_clients
            } else {
                self.allowed_flag.clone()
            }),
        })
    }

    fn stamps(&self) -> Vec<Option<SystemTime>> {
        [&self.web_config, &self.token_file]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// The settings in force, swappable.
pub struct Shared {
    current: RwLock<Arc<Settings>>,
    files: SettingsFiles,
    /// Whether the listener may serve without authentication (loopback, or --web.insecure).
    may_be_open: bool,
    limiter: Limiter,
    /// Connections admitted within the caps, and the counts of those refused and ended.
    pub gate: Arc<Gate>,
    /// Requests answered and refused.
    pub requests: Arc<Requests>,
}

impl Shared {
    pub fn new(settings: Settings, files: SettingsFiles, may_be_open: bool, caps: Caps) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(settings)),
            files,
            may_be_open,
            limiter: Limiter::default(),
            gate: Gate::new(caps),
            requests: Arc::default(),
        })
    }

    pub fn current(&self) -> Arc<Settings> {
        self.current.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Loads the settings again; on any error keeps the old ones.
    pub fn reload(&self) -> Result<()> {
        let s = self.files.load()?;
        if !s.authenticates() && !self.may_be_open {
            bail!("the new settings have no authentication, and this listener is not loopback-only (--web.insecure would allow it)");
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(s);
        Ok(())
    }

    /// Reloads on SIGHUP, and when a settings file changes (checked every 2 s).
    pub fn watch(self: Arc<Self>) {
        tokio::spawn(async move {
            let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
            let mut stamps = self.files.stamps();
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            loop {
                let why = tokio::select! {
                    _ = hup.recv() => "SIGHUP",
                    _ = tick.tick() => {
                        let now = self.files.stamps();
                        if now == stamps { continue }
                        stamps = now;
                        "a settings file changed"
                    }
                };
                let me = self.clone();
                match tokio::task::spawn_blocking(move || me.reload()).await {
                    Ok(Ok(())) => tracing::info!("web settings reloaded ({why})"),
                    Ok(Err(e)) => tracing::error!("web settings not reloaded ({why}), the old ones stay: {e:#}"),
                    Err(e) => tracing::error!("web settings reload failed: {e}"),
                }
            }
        });
    }
}

/// The client's address, put on every request by the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ClientAddr(pub SocketAddr);

/// Answers only clients of --web.allowed-clients (every client when none are listed); 403
/// for others, before any other work. Every route, /-/healthy too.
pub async fn allow(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    if let Some(c) = client.filter(|c| !shared.current().allowed.permits(c.ip())) {
        shared.requests.refuse(Refused::ForbiddenClient);
        tracing::debug!(client = %c, "refused: not an allowed client");
        return (StatusCode::FORBIDDEN, "forbidden: this address is not among --web.allowed-clients\n").into_response();
    }
    next.run(req).await
}

/// Lets a request through if its credentials are good; 401 (with the scheme to use) if not,
/// 429 for a client that failed too often, 400 for credentials in the URL.
pub async fn authenticate(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let settings = shared.current();
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let ip = client.map(|c| c.ip());
    if let Some(ip) = ip {
        if shared.limiter.blocked(ip) {
            shared.requests.refuse(Refused::RateLimited);
            return (StatusCode::TOO_MANY_REQUESTS, "too many failed authentications; try again later\n")
                .into_response();
        }
    }
    let (verdict, user) = settings.auth.check(req.headers(), req.uri().query()).await;
    if verdict != Verdict::Allow {
        let why = if verdict == Verdict::TokenInUrl { Refused::TokenInUrl } else { Refused::Unauthenticated };
        shared.requests.refuse(why);
    }
    match verdict {
        Verdict::Allow => next.run(req).await,
        Verdict::TokenInUrl => (
            StatusCode::BAD_REQUEST,
            "credentials in the URL are not accepted (they end up in logs): send them in the Authorization header (Prometheus: authorization.credentials_file or basic_auth)\n",
        )
            .into_response(),
        Verdict::Deny(why) => {
            if let Some(ip) = ip {
                shared.limiter.failed(ip);
            }
            tracing::warn!(client = ?client, user = ?user, reason = why, "authentication failed");
            let challenge = if settings.auth.required() { "Basic realm=\"wg-collector\", Bearer" } else { "Basic" };
            (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, challenge)], "unauthorized\n").into_response()
        }
    }
}

/// Serves `router` on `listeners` until `shutdown` resolves, with TLS when the settings say
/// so, each connection within the caps and deadlines of conn.rs.
pub async fn serve(
    mut listeners: Listeners,
    router: Router,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            _ = &mut shutdown => return Ok(()),
            c = listeners.accept() => match c {
                Some(c) => c,
                None => anyhow::bail!("every listener ended"),
            },
        };
        // Over a cap: closed at once (dropped), counted.
        let Ok(place) = shared.gate.admit(remote.ip()) else { continue };
        let (router, gate, requests) = (router.clone(), shared.gate.clone(), shared.requests.clone());
        // Each connection takes the settings in force when it arrives.
        let settings = shared.current();
        let (tls, timeouts) = (settings.tls.clone(), settings.timeouts);
        tokio::spawn(async move {
            let _place = place;
            let watch = Watch::new();
            let io: Box<dyn Io> = match tls {
                None => Box::new(tcp),
                Some(acceptor) => match tokio::time::timeout(timeouts.read_header, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => Box::new(stream),
                    Ok(Err(e)) => {
                        tracing::debug!(client = %remote, "TLS handshake failed: {e}");
                        requests.refuse(Refused::TlsHandshake);
                        return;
                    }
                    Err(_) => {
                        gate.ended(Ended::TlsHandshakeTimeout);
                        return;
                    }
                },
            };
            let on_request = watch.clone();
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                on_request.serving();
                req.extensions_mut().insert(ClientAddr(remote));
                let (router, watch) = (router.clone(), on_request.clone());
                async move {
                    let resp = router.oneshot(req.map(Body::new)).await?;
                    // The next request's wait starts when this answer's body is written.
                    Ok::<_, std::convert::Infallible>(resp.map(|b| Body::new(Answer { body: b, watch })))
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(Watched::new(io, watch.clone())), svc);
            tokio::select! {
                result = conn => {
                    if let Err(e) = result {
                        tracing::debug!(client = %remote, "connection: {e}");
                    }
                }
                why = watch.missed(timeouts) => {
                    tracing::debug!(client = %remote, reason = why.label(), "connection closed");
                    gate.ended(why);
                }
            }
        });
    }
}

/// A connection's stream, plain or TLS.
trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// An answer's body, which tells the connection's watch when it has been written (dropped).
struct Answer {
    body: Body,
    watch: Arc<Watch>,
}

impl axum::body::HttpBody for Answer {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        std::pin::Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.watch.answered();
    }
}
