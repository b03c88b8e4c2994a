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
    auth::{Auth, Limiter, Verdict},
    config::WebConfig,
    tokens,
};

/// What the endpoint serves with, as of the last (re)load.
pub struct Settings {
    pub tls: Option<TlsAcceptor>,
    pub auth: Arc<Auth>,
    /// Clients must present a verified certificate (that alone is authentication).
    pub client_certs_required: bool,
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
}

impl SettingsFiles {
    pub fn load(&self) -> Result<Settings> {
        let web = match &self.web_config {
            Some(p) => WebConfig::load(p)?,
            None => WebConfig { tls: None, client_certs_required: false, basic_auth_users: Default::default() },
        };
        let tokens = match &self.token_file {
            Some(p) => tokens::load(p)?,
            None => Vec::new(),
        };
        Ok(Settings {
            tls: web.tls.map(TlsAcceptor::from),
            auth: Arc::new(Auth::new(web.basic_auth_users, &tokens)),
            client_certs_required: web.client_certs_required,
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
}

impl Shared {
    pub fn new(settings: Settings, files: SettingsFiles, may_be_open: bool) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(Arc::new(settings)), files, may_be_open, limiter: Limiter::default() })
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

/// Lets a request through if its credentials are good; 401 (with the scheme to use) if not,
/// 429 for a client that failed too often, 400 for credentials in the URL.
pub async fn authenticate(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let settings = shared.current();
    let client = req.extensions().get::<ClientAddr>().map(|c| c.0);
    let ip = client.map(|c| c.ip());
    if let Some(ip) = ip {
        if shared.limiter.blocked(ip) {
            return (StatusCode::TOO_MANY_REQUESTS, "too many failed authentications; try again later\n")
                .into_response();
        }
    }
    let (verdict, user) = settings.auth.check(req.headers(), req.uri().query()).await;
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

/// Serves `router` on `listeners` until `shutdown` resolves, with TLS when the settings say so.
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
        let router = router.clone();
        // Each connection takes the settings in force when it arrives.
        let tls = shared.current().tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ClientAddr(remote));
                router.clone().oneshot(req.map(Body::new))
            });
            let http = hyper::server::conn::http1::Builder::new();
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => http.serve_connection(TokioIo::new(stream), svc).await,
                    Ok(Err(e)) => {
                        tracing::debug!(client = %remote, "TLS handshake failed: {e}");
                        return;
                    }
                    Err(_) => return,
                },
                None => http.serve_connection(TokioIo::new(tcp), svc).await,
            };
            if let Err(e) = result {
                tracing::debug!(client = %remote, "connection: {e}");
            }
        });
    }
}
