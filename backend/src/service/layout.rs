//! The layout frontends were last told about, so a change can be sent as a `LayoutDelta`
//! (protocol feature `LAYOUT_DELTA`) carrying the function records and ranges that changed,
//! instead of the whole topology: at 128 root ports the whole form is about 24 KiB, written by
//! pcierc and decoded and validated by every frontend after each guest write that moves a bus
//! number, window, BAR or the ECAM window.

use pcierc_protocol::{LayoutChanges, LayoutDelta, LayoutNotice, Topology};

/// The last topology sent and its notice serial.
#[derive(Debug, Default)]
pub struct LayoutTracker {
    serial: u64,
    last: Option<Topology>,
}

impl LayoutTracker {
    /// Make the notice of a change to `topology`: the next serial, and the delta from the last
    /// topology sent when it is smaller than the whole form. Hand the notice to every channel,
    /// then [`LayoutTracker::sent`].
    pub fn notice<'a>(
        &mut self,
        changes: LayoutChanges,
        topology: &'a Topology,
        delta: &'a mut Vec<u8>,
    ) -> LayoutNotice<'a> {
        self.serial = self.serial.wrapping_add(1);
        delta.clear();
        if let Some(last) = &self.last {
            let d = LayoutDelta::between(last, topology);
            if d.encoded_len() < topology.encoded_len() {
                *delta = d.encode();
            }
        }
        LayoutNotice {
            changes,
            topology,
            serial: self.serial,
            delta: (!delta.is_empty()).then_some(delta.as_slice()),
        }
    }

    /// Remember `topology` as the one every channel now holds.
    pub fn sent(&mut self, topology: Topology) {
        self.last = Some(topology);
    }
}
