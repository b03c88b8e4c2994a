//! What `--redact` hides (endpoints, allowed IPs: they map the network), and hiding it where
//! the collector writes text of its own: log lines of configuration changes and of answers
//! that did not parse. The page and the state API leave the values out where they build them.

use crate::history::ConfigField;

/// `--redact endpoints|allowed-ips|all`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Redact {
    pub endpoints: bool,
    pub allowed_ips: bool,
}

const HIDDEN: &str = "(redacted)";

impl Redact {
    /// A configuration change's new value, as the log may show it.
    pub fn change<'a>(&self, field: ConfigField, value: &'a str) -> &'a str {
        match field {
            ConfigField::Endpoint if self.endpoints => HIDDEN,
            ConfigField::AllowedIps if self.allowed_ips => HIDDEN,
            _ => value,
        }
    }

    /// A UAPI line (key=value), as the log may show it.
    pub fn uapi_line(&self, line: &str) -> String {
        match line.split_once('=') {
            Some((k @ "endpoint", _)) if self.endpoints => format!("{k}={HIDDEN}"),
            Some((k @ "allowed_ip", _)) if self.allowed_ips => format!("{k}={HIDDEN}"),
            _ => line.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hides_what_it_was_told_to() {
        let all = Redact { endpoints: true, allowed_ips: true };
        assert_eq!(all.change(ConfigField::Endpoint, "10.0.0.5:1"), HIDDEN);
        assert_eq!(all.change(ConfigField::AllowedIps, "+10.1.0.0/16"), HIDDEN);
        assert_eq!(all.change(ConfigField::ListenPort, "1 → 2"), "1 → 2");
        assert_eq!(all.uapi_line("endpoint=10.0.0.5:x"), "endpoint=(redacted)");
        assert_eq!(all.uapi_line("allowed_ip=10.1.0.0/99"), "allowed_ip=(redacted)");
        let none = Redact::default();
        assert_eq!(none.change(ConfigField::Endpoint, "10.0.0.5:1"), "10.0.0.5:1");
        assert_eq!(none.uapi_line("endpoint=10.0.0.5:x"), "endpoint=10.0.0.5:x");
    }
}
