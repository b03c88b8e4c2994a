//! A WireGuard key (Curve25519, 32 bytes): hex on the UAPI, base64 for people.

use std::{
    collections::{HashMap, HashSet},
    fmt,
};

use base64::{engine::general_purpose::STANDARD, Engine};

#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(pub [u8; 32]);

/// Maps and sets keyed by peer (and by what peers bring: prefixes, endpoints). Every
/// refresh builds and probes several of them per peer, and SipHash was a tenth of a
/// 10k-peer scrape; foldhash is seeded per process, so keys chosen to collide cannot be
/// precomputed.
pub type FastState = foldhash::fast::RandomState;
pub type KeyMap<V> = HashMap<Key, V, FastState>;
pub type KeySet = HashSet<Key, FastState>;

impl Key {
    /// Parses the 64 hex digits the UAPI uses.
    pub fn from_hex(s: &str) -> Option<Self> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return None;
        }
        let mut k = [0u8; 32];
        for (i, pair) in s.chunks(2).enumerate() {
            let hi = (pair[0] as char).to_digit(16)?;
            let lo = (pair[1] as char).to_digit(16)?;
            k[i] = (hi << 4 | lo) as u8;
        }
        Some(Self(k))
    }

    pub fn from_base64(s: &str) -> Option<Self> {
        let v = STANDARD.decode(s.trim()).ok()?;
        Some(Self(v.try_into().ok()?))
    }

    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The public key that belongs to a private key.
    pub fn public_of(private: &[u8; 32]) -> Self {
        let secret = x25519_dalek::StaticSecret::from(*private);
        Self(x25519_dalek::PublicKey::from(&secret).to_bytes())
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.to_base64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_base64_round_trip() {
        let k = Key([0xab; 32]);
        assert_eq!(Key::from_hex(&k.to_hex()), Some(k));
        assert_eq!(Key::from_base64(&k.to_base64()), Some(k));
        assert_eq!(Key::from_hex("abc"), None);
        assert_eq!(Key::from_hex(&"zz".repeat(32)), None);
    }

    #[test]
    fn public_key_matches_rfc7748_vector() {
        // RFC 7748 section 6.1, Alice's key pair.
        let private = Key::from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a").unwrap();
        let public = Key::public_of(&private.0);
        assert_eq!(public.to_hex(), "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
    }
}
