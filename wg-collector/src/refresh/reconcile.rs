//! Which of the devices the collector follows are still the ones it attached to: the same
//! name and ifindex is the same device; a new ifindex under the same name is the device
//! created again (its programs are dropped, its pins kept, so the next load adopts the maps
//! and the counts go on); a name no longer found is a device gone (dropped and unpinned).
//! Devices found for the first time need nothing here: the pipeline attaches to them.

use crate::wireguard::discovery::Found;

/// What becomes of a followed device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    Keep,
    /// Created again under its name: detach, keep the pins.
    Replaced,
    /// No longer there: detach and unpin.
    Gone,
}

/// The fate of the followed device `name`, attached when its ifindex was `ifindex`.
pub fn fate(name: &str, ifindex: u32, found: &[Found]) -> Fate {
    match found.iter().find(|f| f.name == name) {
        Some(f) if f.ifindex == ifindex => Fate::Keep,
        Some(_) => Fate::Replaced,
        None => Fate::Gone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wireguard::{discovery::Api, Implementation};

    fn found(name: &str, ifindex: u32) -> Found {
        Found { name: name.into(), ifindex, implementation: Implementation::Kernel, api: Api::Netlink, netns: None }
    }

    #[test]
    fn the_same_device_is_kept() {
        assert_eq!(fate("wg0", 5, &[found("wg1", 6), found("wg0", 5)]), Fate::Keep);
    }

    #[test]
    fn a_device_created_again_is_replaced() {
        assert_eq!(fate("wg0", 5, &[found("wg0", 9)]), Fate::Replaced);
    }

    #[test]
    fn a_device_no_longer_found_is_gone() {
        assert_eq!(fate("wg0", 5, &[found("wg1", 5)]), Fate::Gone);
        assert_eq!(fate("wg0", 5, &[]), Fate::Gone);
    }
}
