//! Friendly peer names, for the `name` label of wireguard_peer_info:
//!
//! - wg-quick configuration files, where prometheus_wireguard_exporter users already write
//!   `# friendly_name = alice` in a `[Peer]` section (with that section's `PublicKey`);
//! - a names file: one `public-key name` (or `public-key = name`) per line, `#` comments.
//!
//! Files are read at start (a malformed names file is refused there, naming the line) and
//! read again when they change; a file that breaks later keeps the names it had.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::SystemTime,
};

use crate::wireguard::Key;

#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {what}: {text:?}")]
    Line { path: String, line: usize, what: &'static str, text: String },
}

/// Where names come from.
#[derive(Clone, Debug, Default)]
pub struct NameSources {
    pub names_files: Vec<PathBuf>,
    pub wg_configs: Vec<PathBuf>,
}

/// Names by public key, re-read when their files change.
#[derive(Debug, Default)]
pub struct Names {
    sources: NameSources,
    stamps: Vec<Option<SystemTime>>,
    names: HashMap<Key, String>,
}

impl Names {
    /// Reads every source; any error refuses the whole set (used at start).
    pub fn load(sources: NameSources) -> Result<Self, NamesError> {
        let mut n = Self { sources, ..Default::default() };
        n.names = n.read_all()?;
        n.stamps = n.stamps_now();
        Ok(n)
    }

    pub fn get(&self, key: &Key) -> Option<&str> {
        self.names.get(key).map(String::as_str)
    }

    /// Re-reads the files if any changed; on an error keeps the names it had and says why.
    pub fn refresh(&mut self) -> Result<(), NamesError> {
        let stamps = self.stamps_now();
        if stamps == self.stamps {
            return Ok(());
        }
        self.stamps = stamps;
        self.names = self.read_all()?;
        Ok(())
    }

    fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        self.sources.names_files.iter().chain(&self.sources.wg_configs)
    }

    fn stamps_now(&self) -> Vec<Option<SystemTime>> {
        self.paths().map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok()).collect()
    }

    fn read_all(&self) -> Result<HashMap<Key, String>, NamesError> {
        let mut names = HashMap::new();
        for p in &self.sources.wg_configs {
            names.extend(parse_wg_config(&read(p)?));
        }
        // The names file wins over config comments.
        for p in &self.sources.names_files {
            names.extend(parse_names_file(&read(p)?, &p.display().to_string())?);
        }
        Ok(names)
    }
}

fn read(p: &Path) -> Result<String, NamesError> {
    std::fs::read_to_string(p).map_err(|source| NamesError::Io { path: p.display().to_string(), source })
}

/// `public-key name` or `public-key = name` per line; blank lines and `#` comments skipped.
pub fn parse_names_file(text: &str, path: &str) -> Result<HashMap<Key, String>, NamesError> {
    let mut out = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |what| NamesError::Line { path: path.to_string(), line: i + 1, what, text: raw.to_string() };
        // A key is 44 characters of base64 (ending in '='); the name follows, after spaces
        // and an optional '='.
        // (Split after 44 characters, not bytes: a name may be anything UTF-8.)
        let (key, rest) = line.split_at(line.char_indices().nth(44).map_or(line.len(), |(at, _)| at));
        let key = Key::from_base64(key).ok_or_else(|| err("not a WireGuard public key (44 characters of base64)"))?;
        let name = rest.trim_start();
        let name = name.strip_prefix('=').unwrap_or(name).trim();
        if name.is_empty() {
            return Err(err("no name after the key"));
        }
        if out.insert(key, name.to_string()).is_some() {
            return Err(err("this key is named twice"));
        }
    }
    Ok(out)
}

/// The `# friendly_name = ...` comments of a wg-quick file's `[Peer]` sections.
pub fn parse_wg_config(text: &str) -> HashMap<Key, String> {
    let mut out = HashMap::new();
    let (mut key, mut name): (Option<Key>, Option<String>) = (None, None);
    let mut flush = |key: &mut Option<Key>, name: &mut Option<String>| {
        if let (Some(k), Some(n)) = (key.take(), name.take()) {
            out.insert(k, n);
        }
    };
    for raw in text.lines() {
        let line = raw.trim();
        if line.starts_with('[') {
            flush(&mut key, &mut name);
            continue;
        }
        if let Some(comment) = line.strip_prefix('#') {
            if let Some((k, v)) = comment.split_once('=') {
                if k.trim() == "friendly_name" && !v.trim().is_empty() {
                    name = Some(v.trim().to_string());
                }
            }
        } else if let Some((k, v)) = line.split_once('=') {
            if k.trim().eq_ignore_ascii_case("PublicKey") {
                // Base64 keys end in '=': take everything after the first '='.
                key = Key::from_base64(v.trim());
            }
        }
    }
    flush(&mut key, &mut name);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "YP71z9BXGlz4MpombpSi3sh8/Z7J253dfEJPD5nDWy8=";
    const K2: &str = "bfFyBo/Dql52JZc4yMce5kKemQalz1IfWbXxYmjea24=";

    #[test]
    fn reads_friendly_names_from_wg_quick_files() {
        let conf = format!(
            "[Interface]\nPrivateKey = x\n# friendly_name = not-a-peer\n\n[Peer]\n# friendly_name = alice laptop\nPublicKey = {K1}\nAllowedIPs = 10.0.0.2/32\n\n[Peer]\nPublicKey = {K2}\n#friendly_name=bob\n"
        );
        let n = parse_wg_config(&conf);
        assert_eq!(n.get(&Key::from_base64(K1).unwrap()).map(String::as_str), Some("alice laptop"));
        assert_eq!(n.get(&Key::from_base64(K2).unwrap()).map(String::as_str), Some("bob"));
        assert_eq!(n.len(), 2);
    }

    #[test]
    fn names_file_lines_and_errors() {
        let n = parse_names_file(&format!("# peers\n{K1} alice\n\n{K2} = bob the builder\n{K1}=\n"), "f");
        assert!(n.unwrap_err().to_string().contains("f:5: no name"));
        let n = parse_names_file(&format!("# peers\n{K1} alice\n\n{K2} = bob the builder\n"), "f").unwrap();
        assert_eq!(n[&Key::from_base64(K2).unwrap()], "bob the builder");
        let e = parse_names_file(&format!("{K1} alice\nnot-a-key carol\n"), "/etc/names").unwrap_err().to_string();
        assert!(e.starts_with("/etc/names:2: not a WireGuard public key"), "{e}");
        let e = parse_names_file(&format!("{K1}\n"), "f").unwrap_err().to_string();
        assert!(e.contains("f:1"), "{e}");
        let e = parse_names_file(&format!("{K1} a\n{K1} b\n"), "f").unwrap_err().to_string();
        assert!(e.contains("f:2: this key is named twice"), "{e}");
        // Multi-byte characters where a key should be: an error naming the line, not a panic
        // (found by the names fuzz target).
        let e =
            parse_names_file("Ünïcödé-is-not-base64-and-has-many-bytes-per-char name\n", "f").unwrap_err().to_string();
        assert!(e.contains("f:1: not a WireGuard public key"), "{e}");
        let n = parse_names_file(&format!("{K1} Zoë's phone ☎\n"), "f").unwrap();
        assert_eq!(n[&Key::from_base64(K1).unwrap()], "Zoë's phone ☎");
    }
}
