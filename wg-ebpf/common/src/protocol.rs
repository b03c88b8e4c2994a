//! WireGuard's messages on the underlay, as the programs count them.

/// Slot of what no peer could be given (counted for the device only).
pub const NO_SLOT: u32 = u32::MAX;

/// Message types as counted: the four of the protocol, with data split into data proper and
/// keepalives (a data message with no plaintext: exactly 32 bytes).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageType {
    HandshakeInitiation = 0,
    HandshakeResponse = 1,
    CookieReply = 2,
    Data = 3,
    Keepalive = 4,
}

impl MessageType {
    pub const ALL: [MessageType; 5] =
        [Self::HandshakeInitiation, Self::HandshakeResponse, Self::CookieReply, Self::Data, Self::Keepalive];

    pub const fn label(self) -> &'static str {
        match self {
            Self::HandshakeInitiation => "handshake_initiation",
            Self::HandshakeResponse => "handshake_response",
            Self::CookieReply => "cookie_reply",
            Self::Data => "data",
            Self::Keepalive => "keepalive",
        }
    }
}

pub const MESSAGE_TYPES: usize = MessageType::ALL.len();

/// Messages per direction (DIR_RX, DIR_TX) and type.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub counts: [[u64; MESSAGE_TYPES]; crate::DIRECTIONS],
}

/// Why a datagram to the WireGuard port is no valid message.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Invalid {
    /// Shorter than the 4-byte message type.
    TooShort = 0,
    /// Not one of the four types (or the three reserved bytes are not zero).
    BadType = 1,
    /// A known type of the wrong length (148, 92, 64 bytes; data at least 32).
    BadSize = 2,
    /// A response, cookie reply or data message from an unknown endpoint naming an index this
    /// device never gave out (while the collector watched).
    UnknownIndex = 3,
}

impl Invalid {
    pub const ALL: [Invalid; 4] = [Self::TooShort, Self::BadType, Self::BadSize, Self::UnknownIndex];

    pub const fn label(self) -> &'static str {
        match self {
            Self::TooShort => "too_short",
            Self::BadType => "bad_type",
            Self::BadSize => "bad_size",
            Self::UnknownIndex => "unknown_index",
        }
    }
}

/// Classifies a message by its first 4 bytes and its length.
#[inline(always)]
pub const fn classify(head: [u8; 4], len: u32) -> Result<MessageType, Invalid> {
    if len < 4 {
        return Err(Invalid::TooShort);
    }
    if head[1] != 0 || head[2] != 0 || head[3] != 0 {
        return Err(Invalid::BadType);
    }
    match (head[0], len) {
        (1, 148) => Ok(MessageType::HandshakeInitiation),
        (2, 92) => Ok(MessageType::HandshakeResponse),
        (3, 64) => Ok(MessageType::CookieReply),
        (4, 32) => Ok(MessageType::Keepalive),
        // The plaintext should be padded to 16 bytes, but receivers accept any length and
        // boringtun does not pad.
        (4, l) if l > 32 => Ok(MessageType::Data),
        (1..=4, _) => Err(Invalid::BadSize),
        _ => Err(Invalid::BadType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_type_and_length() {
        assert_eq!(classify([1, 0, 0, 0], 148), Ok(MessageType::HandshakeInitiation));
        assert_eq!(classify([2, 0, 0, 0], 92), Ok(MessageType::HandshakeResponse));
        assert_eq!(classify([3, 0, 0, 0], 64), Ok(MessageType::CookieReply));
        assert_eq!(classify([4, 0, 0, 0], 32), Ok(MessageType::Keepalive));
        assert_eq!(classify([4, 0, 0, 0], 32 + 1440), Ok(MessageType::Data));
        assert_eq!(classify([4, 0, 0, 0], 32 + 84), Ok(MessageType::Data), "boringtun does not pad");
        assert_eq!(classify([4, 0, 0, 0], 31), Err(Invalid::BadSize));
        assert_eq!(classify([1, 0, 0, 0], 100), Err(Invalid::BadSize));
        assert_eq!(classify([5, 0, 0, 0], 148), Err(Invalid::BadType));
        assert_eq!(classify([1, 0, 1, 0], 148), Err(Invalid::BadType));
        assert_eq!(classify([1, 0, 0, 0], 3), Err(Invalid::TooShort));
    }
}
