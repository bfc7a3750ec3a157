//! Layout notifications: each change goes to every channel as a `LayoutDelta` (protocol feature
//! `LAYOUT_DELTA`: the function records and ranges that changed since the previous
//! notification) when the channel was sent that previous notification, else as `LayoutChanged`
//! with the whole topology. At 128 root ports the whole form is about 24 KiB, which pcierc
//! would build and write, and every frontend decode and validate, after each guest write that
//! moves a bus number, window, BAR or the ECAM window; the delta is usually one record.

#[cfg(debug_assertions)]
use pcierc_protocol::LayoutDelta;
use pcierc_protocol::{LayoutChanges, LayoutNotice, Topology};

/// The serial of layout notices, and in debug builds the topology of the last one, against
/// which every delta is checked.
#[derive(Debug, Default)]
pub struct LayoutTracker {
    serial: u64,
    #[cfg(debug_assertions)]
    last: Option<Topology>,
}

impl LayoutTracker {
    /// The serial of the next notice.
    pub fn next_serial(&mut self) -> u64 {
        self.serial = self.serial.wrapping_add(1);
        self.serial
    }

    /// The notice of a change: `delta` (encoded) from the previous notice's topology, and the
    /// whole `topology` when some channel needs it.
    pub fn notice<'a>(
        &self,
        changes: LayoutChanges,
        delta: &'a [u8],
        topology: Option<&'a Topology>,
    ) -> LayoutNotice<'a> {
        LayoutNotice {
            changes,
            topology,
            serial: self.serial,
            delta: Some(delta),
        }
    }

    /// Debug builds: `delta` applied to the previous notice's topology gives `now`, which
    /// becomes the next one's base.
    #[cfg(debug_assertions)]
    pub fn check(&mut self, delta: &LayoutDelta, now: Topology) {
        if let Some(mut last) = self.last.take() {
            let applied = delta.apply(&mut last);
            debug_assert!(applied.is_ok(), "layout delta does not apply: {applied:?}");
            debug_assert_eq!(last, now, "layout delta differs from the topology");
        }
        self.last = Some(now);
    }
}
