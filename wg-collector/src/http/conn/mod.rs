//! What one client may hold of the server: how many connections (overall and per client
//! address, beyond which new ones are closed at once), and for how long. A connection must
//! send a request's headers within the header timeout (from its start, or from the first byte
//! of a later request), may wait idle between requests for the idle timeout, and a write that
//! makes no progress for the write timeout (a reader that stopped reading) ends it. Without
//! these, idle connections that never finish a request held the server's file descriptors
//! until nobody else could connect.

mod gate;
mod timeouts;
mod watch;

pub use gate::{Admitted, Caps, ConnCounts, Ended, Gate, Refusal, DEFAULT_CAPS};
pub use timeouts::{parse_duration, TimeoutSettings, Timeouts};
pub use watch::{Watch, Watched};
