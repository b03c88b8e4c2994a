//! `--web.config.file`, in the format of prometheus/exporter-toolkit (what node_exporter
//! reads):
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert   # or NoClientCert, VerifyClientCertIfGiven
//!   client_ca_file: ca.crt
//!   min_version: TLS13                             # TLS12 or TLS13
//!   max_version: TLS13
//! basic_auth_users:
//!   prometheus: $2y$10$...                         # bcrypt hashes (htpasswd -B)
//! http_server_config:                              # this collector's; flags win over them
//!   read_header_timeout: 10s
//!   idle_timeout: 2m
//!   write_timeout: 1m
//!   allowed_clients: [10.0.0.0/8, "fd00::/8"]      # others get 403 (--web.allowed-clients)
//! ```
//!
//! A key this collector does not implement is refused, not ignored: a setting that silently
//! does nothing is a security hole.

use std::{collections::HashMap, path::Path, sync::Arc};

use rustls::{
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig,
};
use serde::Deserialize;

use super::conn::{parse_duration, TimeoutSettings};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: {msg}")]
    Yaml { path: String, msg: String },
    #[error("{path}: {key}: {msg}")]
    Setting { path: String, key: &'static str, msg: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    tls_server_config: Option<TlsFile>,
    basic_auth_users: Option<HashMap<String, String>>,
    http_server_config: Option<HttpFile>,
}

/// exporter-toolkit's http_server_config takes `http2` and `headers`, which this collector
/// does not implement (refused, as every unknown key); the timeouts are ours.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    read_header_timeout: Option<String>,
    idle_timeout: Option<String>,
    write_timeout: Option<String>,
    allowed_clients: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: String,
    key_file: String,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    min_version: Option<String>,
    max_version: Option<String>,
}

/// A web configuration, checked and ready to serve.
#[derive(Clone)]
pub struct WebConfig {
    /// The TLS server configuration, if TLS is on.
    pub tls: Option<Arc<ServerConfig>>,
    /// Whether clients must present a certificate that verifies (that is authentication).
    pub client_certs_required: bool,
    /// User → bcrypt hash.
    pub basic_auth_users: HashMap<String, String>,
    /// The clients http_server_config.allowed_clients lets in (none: all).
    pub allowed_clients: Vec<ipnet::IpNet>,
    /// The timeouts http_server_config sets.
    pub timeouts: TimeoutSettings,
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebConfig")
            .field("tls", &self.tls.is_some())
            .field("client_certs_required", &self.client_certs_required)
            .field("users", &self.basic_auth_users.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl WebConfig {
    /// Reads and checks a web configuration file; relative paths in it are relative to the
    /// file's directory (as exporter-toolkit does).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: p.clone(), source })?;
        Self::parse(&text, path)
    }

    /// Checks the text of a web configuration file read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let p = path.display().to_string();
        let file: File = if text.trim().is_empty() {
            File::default()
        } else {
            serde_yaml_ng::from_str(text)
                .map_err(|e| ConfigError::Yaml { path: p.clone(), msg: with_line(&e, text) })?
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        let setting = |key: &'static str, msg: String| ConfigError::Setting { path: p.clone(), key, msg };

        let mut users = HashMap::new();
        for (user, hash) in file.basic_auth_users.unwrap_or_default() {
            if hash.parse::<bcrypt::HashParts>().is_err() {
                return Err(setting(
                    "basic_auth_users",
                    format!("user {user:?}: not a bcrypt hash (make one with htpasswd -nBC 10 {user})"),
                ));
            }
            users.insert(user, hash);
        }

        let (tls, client_certs_required) = match file.tls_server_config {
            None => (None, false),
            Some(t) => {
                let (cfg, required) = tls_config(&t, dir, &setting)?;
                (Some(Arc::new(cfg)), required)
            }
        };
        let http = file.http_server_config.unwrap_or_default();
        let duration = |key: &'static str, v: Option<String>| {
            v.map(|v| parse_duration(&v).map_err(|e| setting(key, e))).transpose()
        };
        let timeouts = TimeoutSettings {
            read_header: duration("http_server_config.read_header_timeout", http.read_header_timeout)?,
            idle: duration("http_server_config.idle_timeout", http.idle_timeout)?,
            write: duration("http_server_config.write_timeout", http.write_timeout)?,
        };
        let allowed_clients = http
            .allowed_clients
            .unwrap_or_default()
            .iter()
            .map(|c| super::allow::parse_client(c).map_err(|e| setting("http_server_config.allowed_clients", e)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self { tls, client_certs_required, basic_auth_users: users, timeouts, allowed_clients })
    }
}

/// The YAML library's message, with the line it is about: its own location where it has one,
/// else the line of the unknown key it names.
fn with_line(e: &serde_yaml_ng::Error, text: &str) -> String {
    let msg = e.to_string();
    if msg.contains(" line ") {
        return msg;
    }
    if let Some(l) = e.location() {
        return format!("line {} column {}: {msg}", l.line(), l.column());
    }
    let key = msg.split('`').nth(1).filter(|_| msg.starts_with("unknown field"));
    match key.and_then(|k| text.lines().position(|l| l.trim_start().starts_with(&format!("{k}:")))) {
        Some(i) => format!("line {}: {msg}", i + 1),
        None => msg,
    }
}

/// The TLS versions between min_version and max_version (default: 1.2 and 1.3).
fn protocol_versions(
    t: &TlsFile,
    setting: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<Vec<&'static rustls::SupportedProtocolVersion>, ConfigError> {
    let version = |key: &'static str, v: &Option<String>, default: u8| -> Result<u8, ConfigError> {
        match v.as_deref() {
            None => Ok(default),
            Some("TLS12") => Ok(12),
            Some("TLS13") => Ok(13),
            Some(v @ ("TLS10" | "TLS11")) => {
                Err(setting(key, format!("{v}: not offered (rustls speaks TLS 1.2 and 1.3 only)")))
            }
            Some(v) => Err(setting(key, format!("{v:?}: expected TLS12 or TLS13"))),
        }
    };
    let (min, max) = (
        version("tls_server_config.min_version", &t.min_version, 12)?,
        version("tls_server_config.max_version", &t.max_version, 13)?,
    );
    if min > max {
        return Err(setting("tls_server_config.min_version", "above max_version".into()));
    }
    Ok([(12, &rustls::version::TLS12), (13, &rustls::version::TLS13)]
        .into_iter()
        .filter(|(v, _)| (min..=max).contains(v))
        .map(|(_, p)| p)
        .collect())
}

fn tls_config(
    t: &TlsFile,
    dir: &Path,
    setting: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<(ServerConfig, bool), ConfigError> {
    let read = |key: &'static str, f: &str| -> Result<Vec<u8>, ConfigError> {
        let path = dir.join(f);
        std::fs::read(&path).map_err(|e| setting(key, format!("{}: {e}", path.display())))
    };
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&read("tls_server_config.cert_file", &t.cert_file)?)
            .collect::<Result<_, _>>()
            .map_err(|e| setting("tls_server_config.cert_file", format!("{}: {e}", t.cert_file)))?;
    if certs.is_empty() {
        return Err(setting("tls_server_config.cert_file", format!("{}: no certificate in it", t.cert_file)));
    }
    let key = PrivateKeyDer::from_pem_slice(&read("tls_server_config.key_file", &t.key_file)?)
        .map_err(|e| setting("tls_server_config.key_file", format!("{}: {e}", t.key_file)))?;

    let versions = protocol_versions(t, setting)?;

    let auth = t.client_auth_type.as_deref().unwrap_or("NoClientCert");
    let roots = || -> Result<Arc<RootCertStore>, ConfigError> {
        let ca = t.client_ca_file.as_deref().ok_or_else(|| {
            setting("tls_server_config.client_ca_file", format!("needed with client_auth_type {auth}"))
        })?;
        let mut store = RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&read("tls_server_config.client_ca_file", ca)?) {
            let c = c.map_err(|e| setting("tls_server_config.client_ca_file", format!("{ca}: {e}")))?;
            store.add(c).map_err(|e| setting("tls_server_config.client_ca_file", format!("{ca}: {e}")))?;
        }
        Ok(Arc::new(store))
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions)
        .map_err(|e| setting("tls_server_config.min_version", e.to_string()))?;
    let verifier_err =
        |e: rustls::server::VerifierBuilderError| setting("tls_server_config.client_ca_file", e.to_string());
    let (builder, required) =
        match auth {
            "NoClientCert" => (builder.with_no_client_auth(), false),
            "VerifyClientCertIfGiven" | "RequestClientCert" => {
                // rustls verifies any certificate it is given; RequestClientCert (accept one
                // unverified) is therefore served as VerifyClientCertIfGiven.
                let v = WebPkiClientVerifier::builder_with_provider(roots()?, provider.clone())
                    .allow_unauthenticated()
                    .build()
                    .map_err(verifier_err)?;
                (builder.with_client_cert_verifier(v), false)
            }
            "RequireAndVerifyClientCert" => {
                let v = WebPkiClientVerifier::builder_with_provider(roots()?, provider.clone())
                    .build()
                    .map_err(verifier_err)?;
                (builder.with_client_cert_verifier(v), true)
            }
            "RequireAnyClientCert" => return Err(setting(
                "tls_server_config.client_auth_type",
                "RequireAnyClientCert (a certificate nobody verifies) is not offered; use RequireAndVerifyClientCert"
                    .into(),
            )),
            other => {
                return Err(setting(
                    "tls_server_config.client_auth_type",
                    format!("{other:?}: expected NoClientCert, VerifyClientCertIfGiven or RequireAndVerifyClientCert"),
                ))
            }
        };
    let mut cfg =
        builder.with_single_cert(certs, key).map_err(|e| setting("tls_server_config.key_file", e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((cfg, required))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<WebConfig, ConfigError> {
        let dir = std::env::temp_dir().join(format!("wg-webcfg-{}-{}", std::process::id(), text.len()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("web.yml");
        std::fs::write(&p, text).unwrap();
        let r = WebConfig::load(&p);
        std::fs::remove_dir_all(&dir).unwrap();
        r
    }

    #[test]
    fn errors_name_the_line_or_the_key() {
        let e = load("basic_auth_users:\n  alice: $2y$10$ABCDEFGHIJKLMNOPQRSTUuABCDEFGHIJKLMNOPQRSTUVWXYZ01234\ntls_server_config:\n  cert_file: a\n  keyfile: b\n").unwrap_err().to_string();
        assert!(e.contains("line 5"), "{e}");
        let e = load("basic_auth_users:\n  bob: plaintext\n").unwrap_err().to_string();
        assert!(e.contains("basic_auth_users: user \"bob\": not a bcrypt hash"), "{e}");
        let e = load("tls_server_config:\n  cert_file: /nonexistent/c.pem\n  key_file: k\n").unwrap_err().to_string();
        assert!(e.contains("tls_server_config.cert_file: /nonexistent/c.pem"), "{e}");
        let e = load("unknown_key: 1\n").unwrap_err().to_string();
        assert!(e.contains("unknown field `unknown_key`") && e.contains("line 1"), "{e}");
    }

    #[test]
    fn empty_file_means_no_tls_and_no_users() {
        let c = load("").unwrap();
        assert!(c.tls.is_none() && c.basic_auth_users.is_empty() && !c.client_certs_required);
    }
}
