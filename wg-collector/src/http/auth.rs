//! Who may read the metrics: basic auth (bcrypt hashes from the web configuration) or a
//! bearer token (from the token file), checked so that timing says nothing about secrets,
//! with failures rate-limited per client address and logged without the secret.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::{header, HeaderMap};
use base64::{engine::general_purpose::STANDARD, Engine};
use blake2::{Blake2s256, Digest};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// The credentials the endpoint accepts. Empty = no authentication.
#[derive(Default)]
pub struct Auth {
    /// User → bcrypt hash.
    users: HashMap<String, String>,
    /// Digests of the bearer tokens: compared digest to digest, so every comparison takes
    /// the same time whatever the token's length or content.
    token_digests: Vec<[u8; 32]>,
}

/// A bcrypt hash of nothing anyone knows: an unknown user costs the same as a known one.
fn dummy_hash() -> String {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| bcrypt::hash(b"no user has this password", bcrypt::DEFAULT_COST).unwrap_or_default()).clone()
}

/// Query parameters that look like credentials: refused, they end up in access logs.
const SECRET_PARAMS: &[&str] =
    &["token", "access_token", "bearer", "auth", "authorization", "password", "pass", "apikey", "api_key"];

#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Why, for the log (never the secret).
    Deny(&'static str),
    TokenInUrl,
}

fn digest(t: &[u8]) -> [u8; 32] {
    Blake2s256::digest(t).into()
}

impl Auth {
    pub fn new(users: HashMap<String, String>, tokens: &[Zeroizing<String>]) -> Self {
        Self { users, token_digests: tokens.iter().map(|t| digest(t.as_bytes())).collect() }
    }

    /// Whether any credential is required.
    pub fn required(&self) -> bool {
        !self.users.is_empty() || !self.token_digests.is_empty()
    }

    /// Checks one request. bcrypt is slow on purpose: this runs it on a blocking thread.
    pub async fn check(
        self: &std::sync::Arc<Self>,
        headers: &HeaderMap,
        query: Option<&str>,
    ) -> (Verdict, Option<String>) {
        if let Some(q) = query {
            let secret = q
                .split('&')
                .filter_map(|kv| kv.split('=').next())
                .any(|k| SECRET_PARAMS.iter().any(|s| s.eq_ignore_ascii_case(k)));
            if secret {
                return (Verdict::TokenInUrl, None);
            }
        }
        if !self.required() {
            return (Verdict::Allow, None);
        }
        let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
            return (Verdict::Deny("no credentials"), None);
        };
        let (scheme, cred) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            if self.token_digests.is_empty() {
                return (Verdict::Deny("bearer token sent, none configured"), None);
            }
            let d = digest(cred.trim().as_bytes());
            // Compare with every token, no early exit.
            let ok = self.token_digests.iter().fold(subtle::Choice::from(0), |acc, t| acc | t.ct_eq(&d));
            return (if bool::from(ok) { Verdict::Allow } else { Verdict::Deny("wrong bearer token") }, None);
        }
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(decoded) = STANDARD.decode(cred.trim()).ok().map(Zeroizing::new) else {
                return (Verdict::Deny("malformed basic credentials"), None);
            };
            let Some((user, pass)) = std::str::from_utf8(&decoded).ok().and_then(|s| s.split_once(':')) else {
                return (Verdict::Deny("malformed basic credentials"), None);
            };
            let (user, pass) = (user.to_string(), Zeroizing::new(pass.to_string()));
            let hash = self.users.get(&user).cloned();
            let known = hash.is_some();
            let hash = hash.unwrap_or_else(dummy_hash);
            let ok = tokio::task::spawn_blocking(move || bcrypt::verify(pass.as_bytes(), &hash).unwrap_or(false))
                .await
                .unwrap_or(false);
            let verdict = if ok && known {
                Verdict::Allow
            } else if known {
                Verdict::Deny("wrong password")
            } else {
                Verdict::Deny("unknown user")
            };
            return (verdict, Some(user));
        }
        (Verdict::Deny("unsupported authorization scheme"), None)
    }
}

/// Failed authentications per client address: after `MAX_FAILURES` within `WINDOW`, the
/// client is answered 429 without its credentials being checked (bcrypt would be a free CPU
/// sink otherwise) until the window ends.
pub struct Limiter {
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

pub const MAX_FAILURES: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(60);

impl Default for Limiter {
    fn default() -> Self {
        Self { failures: Mutex::new(HashMap::new()) }
    }
}

impl Limiter {
    pub fn blocked(&self, ip: IpAddr) -> bool {
        let f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        f.get(&ip).is_some_and(|(start, n)| start.elapsed() < WINDOW && *n >= MAX_FAILURES)
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() > 100_000 {
            f.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let e = f.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= WINDOW {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use axum::http::HeaderValue;

    use super::*;

    fn headers(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[tokio::test]
    async fn checks_tokens_users_and_urls() {
        let hash = bcrypt::hash("s3cret-pass", 4).unwrap();
        let auth = Arc::new(Auth::new(
            HashMap::from([("alice".to_string(), hash)]),
            &[Zeroizing::new("3f9c2a7be41d08c6a5f3e9b27d4c1a60".to_string())],
        ));
        assert_eq!(auth.check(&headers("Bearer 3f9c2a7be41d08c6a5f3e9b27d4c1a60"), None).await.0, Verdict::Allow);
        assert_eq!(
            auth.check(&headers("Bearer 3f9c2a7be41d08c6a5f3e9b27d4c1a61"), None).await.0,
            Verdict::Deny("wrong bearer token")
        );
        let basic = |u: &str, p: &str| headers(&format!("Basic {}", STANDARD.encode(format!("{u}:{p}"))));
        assert_eq!(auth.check(&basic("alice", "s3cret-pass"), None).await.0, Verdict::Allow);
        assert_eq!(
            auth.check(&basic("alice", "nope"), None).await,
            (Verdict::Deny("wrong password"), Some("alice".into()))
        );
        assert_eq!(auth.check(&basic("mallory", "s3cret-pass"), None).await.0, Verdict::Deny("unknown user"));
        assert_eq!(auth.check(&HeaderMap::new(), None).await.0, Verdict::Deny("no credentials"));
        assert_eq!(auth.check(&HeaderMap::new(), Some("x=1&access_token=abc")).await.0, Verdict::TokenInUrl);
        // No credentials configured: anyone (the listener is then loopback-only).
        assert_eq!(Arc::new(Auth::default()).check(&HeaderMap::new(), None).await.0, Verdict::Allow);
    }

    #[test]
    fn limits_failures_per_address() {
        let l = Limiter::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            assert!(!l.blocked(a));
            l.failed(a);
        }
        assert!(l.blocked(a));
        assert!(!l.blocked(b));
    }
}
