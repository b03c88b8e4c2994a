//! `--web.bearer-token-file`: the tokens Prometheus may send as `Authorization: Bearer`
//! (its `authorization: credentials_file:`), one per line. Weak tokens are refused at start.

use std::path::Path;

use zeroize::Zeroizing;

/// Shorter tokens are refused: 16 characters of a random alphabet are ~80+ bits.
pub const MIN_LEN: usize = 16;

/// Tokens seen shipped as defaults or typed as placeholders; refused whatever their length.
const WELL_KNOWN: &[&str] = &[
    "admin",
    "password",
    "changeme",
    "change-me",
    "secret",
    "token",
    "prometheus",
    "default",
    "test",
    "example",
    "changemechangeme",
    "passwordpassword",
    "adminadminadmin",
    "0123456789abcdef",
    "1234567890123456",
];

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("--web.bearer-token-file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("--web.bearer-token-file {path}: line {line}: {what}")]
    Weak { path: String, line: usize, what: String },
    #[error("--web.bearer-token-file {path}: no token in it (an empty file would let anyone in)")]
    Empty { path: String },
}

/// Reads the tokens of a file: one per non-empty line, surrounding spaces trimmed.
pub fn load(path: &Path) -> Result<Vec<Zeroizing<String>>, TokenError> {
    let p = path.display().to_string();
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|source| TokenError::Io { path: p.clone(), source })?);
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let weak = |what: String| TokenError::Weak { path: p.clone(), line: i + 1, what };
        if WELL_KNOWN.iter().any(|w| w.eq_ignore_ascii_case(t)) {
            return Err(weak("a well-known default token; generate one, e.g. `openssl rand -hex 32`".into()));
        }
        if t.chars().count() < MIN_LEN {
            return Err(weak(format!("a token of {} characters; at least {MIN_LEN} are needed", t.chars().count())));
        }
        if t.chars().collect::<std::collections::HashSet<_>>().len() < 4 {
            return Err(weak("a token of fewer than 4 distinct characters".into()));
        }
        tokens.push(Zeroizing::new(t.to_string()));
    }
    if tokens.is_empty() {
        return Err(TokenError::Empty { path: p });
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(text: &str) -> Result<Vec<Zeroizing<String>>, TokenError> {
        let p = std::env::temp_dir().join(format!("wg-tokens-{}-{}", std::process::id(), text.len()));
        std::fs::write(&p, text).unwrap();
        let r = load(&p);
        std::fs::remove_file(&p).unwrap();
        r
    }

    #[test]
    fn refuses_weak_tokens_naming_the_line() {
        assert_eq!(with("\n  3f9c2a7be41d08c6a5f3e9b27d4c1a60 \n").unwrap().len(), 1);
        assert!(with("").unwrap_err().to_string().contains("no token in it"));
        let e = with("3f9c2a7be41d08c6a5f3e9b27d4c1a60\nadmin\n").unwrap_err().to_string();
        assert!(e.contains("line 2: a well-known default token"), "{e}");
        let e = with("short-token\n").unwrap_err().to_string();
        assert!(e.contains("line 1: a token of 11 characters; at least 16"), "{e}");
        let e = with("aaaaaaaaaaaaaaaaaaaaa\n").unwrap_err().to_string();
        assert!(e.contains("fewer than 4 distinct"), "{e}");
    }
}
