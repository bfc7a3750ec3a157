//! The delta form of a layout change (`LayoutDelta` on the backend channel, protocol feature
//! `LAYOUT_DELTA`): what changed in the topology since the previous `LayoutChanged` /
//! `LayoutDelta` the same channel carried, instead of the whole topology.
//!
//! Encoding (after the 8-byte [`crate::messages::LayoutChange`]): a [`LayoutDeltaHeader`], then
//! `num_updates` [`FunctionUpdate`]s (function records by index, indices strictly increasing),
//! `num_ecam` [`EcamWindow`]s (the whole new list) and `num_ranges` [`AddressRange`]s (the new
//! ranges between the `ranges_kept_front` first and the `ranges_kept_back` last ranges of the
//! base topology, which stay). Records are whole: a field added to [`FunctionRecord`] travels
//! with the record it belongs to.

use vhost::vhost_user::message::VhostUserMsgValidator;
use vm_memory::ByteValued;

use crate::error::{Error, Result};
use crate::frame::read_obj;
use crate::topology::{
    AddressRange, EcamWindow, FunctionKind, FunctionRecord, Topology, MAX_TOPOLOGY_ECAM,
    MAX_TOPOLOGY_FUNCTIONS, MAX_TOPOLOGY_RANGES, NO_PARENT,
};

/// Fixed part of an encoded [`LayoutDelta`].
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LayoutDeltaHeader {
    /// Generation of the topology the delta applies to (the previous layout notification).
    pub base_generation: u64,
    /// Generation of the topology it produces.
    pub generation: u64,
    /// Number of function records of the new topology.
    pub num_functions: u32,
    /// Number of [`FunctionUpdate`]s that follow.
    pub num_updates: u32,
    /// Number of [`EcamWindow`]s that follow the updates (the new list, whole).
    pub num_ecam: u32,
    /// Number of new [`AddressRange`]s that follow the ECAM windows.
    pub num_ranges: u32,
    /// Ranges at the start of the base topology's list that stay.
    pub ranges_kept_front: u32,
    /// Ranges at the end of the base topology's list that stay.
    pub ranges_kept_back: u32,
}
// SAFETY: integers, no padding (8+8+6x4).
unsafe impl ByteValued for LayoutDeltaHeader {}

/// A function record of the new topology and its index.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FunctionUpdate {
    /// Index of the record in the new topology's function list.
    pub index: u32,
    /// Reserved, must be 0.
    pub reserved: u32,
    /// The record.
    pub record: FunctionRecord,
}
// SAFETY: integers and a record without padding (4+4+88).
unsafe impl ByteValued for FunctionUpdate {}

/// What changed between two topologies, decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LayoutDelta {
    /// Generation of the topology it applies to.
    pub base_generation: u64,
    /// Generation of the topology it produces.
    pub generation: u64,
    /// Number of function records of the new topology.
    pub num_functions: u32,
    /// The function records that differ or are new, indices strictly increasing.
    pub updates: Vec<FunctionUpdate>,
    /// The new ECAM windows.
    pub ecam: Vec<EcamWindow>,
    /// Ranges kept at the front of the base topology's list.
    pub ranges_kept_front: u32,
    /// Ranges kept at the back of the base topology's list.
    pub ranges_kept_back: u32,
    /// The new ranges between them.
    pub ranges: Vec<AddressRange>,
}

impl LayoutDelta {
    /// The delta that turns `old` into `new`: the records that differ (by index), the ECAM
    /// windows, and the ranges between the longest common prefix and suffix.
    pub fn between(old: &Topology, new: &Topology) -> LayoutDelta {
        let updates = new
            .functions
            .iter()
            .enumerate()
            .filter(|&(i, f)| old.functions.get(i) != Some(f))
            .map(|(i, f)| FunctionUpdate {
                index: i as u32,
                reserved: 0,
                record: *f,
            })
            .collect();
        let front = old
            .ranges
            .iter()
            .zip(&new.ranges)
            .take_while(|(a, b)| a == b)
            .count();
        let room = old.ranges.len().min(new.ranges.len()) - front;
        let back = old.ranges[front..]
            .iter()
            .rev()
            .zip(new.ranges[front..].iter().rev())
            .take(room)
            .take_while(|(a, b)| a == b)
            .count();
        LayoutDelta {
            base_generation: old.generation,
            generation: new.generation,
            num_functions: new.functions.len() as u32,
            updates,
            ecam: new.ecam.clone(),
            ranges_kept_front: front as u32,
            ranges_kept_back: back as u32,
            ranges: new.ranges[front..new.ranges.len() - back].to_vec(),
        }
    }

    /// Size of [`LayoutDelta::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        std::mem::size_of::<LayoutDeltaHeader>()
            + self.updates.len() * std::mem::size_of::<FunctionUpdate>()
            + self.ecam.len() * std::mem::size_of::<EcamWindow>()
            + self.ranges.len() * std::mem::size_of::<AddressRange>()
    }

    /// Encode: the header, then the updates, ECAM windows and ranges, without gaps.
    pub fn encode(&self) -> Vec<u8> {
        let header = LayoutDeltaHeader {
            base_generation: self.base_generation,
            generation: self.generation,
            num_functions: self.num_functions,
            num_updates: self.updates.len() as u32,
            num_ecam: self.ecam.len() as u32,
            num_ranges: self.ranges.len() as u32,
            ranges_kept_front: self.ranges_kept_front,
            ranges_kept_back: self.ranges_kept_back,
        };
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(header.as_slice());
        self.updates
            .iter()
            .for_each(|u| out.extend_from_slice(u.as_slice()));
        self.ecam
            .iter()
            .for_each(|e| out.extend_from_slice(e.as_slice()));
        self.ranges
            .iter()
            .for_each(|r| out.extend_from_slice(r.as_slice()));
        out
    }

    /// Decode and validate an encoded delta: the counts against their limits and the exact
    /// size of `bytes`, every record, update indices strictly increasing and below
    /// `num_functions`. What depends on the base topology is checked by [`LayoutDelta::apply`].
    pub fn decode(bytes: &[u8]) -> Result<LayoutDelta> {
        let bad = Error::InvalidTopology;
        let hsize = std::mem::size_of::<LayoutDeltaHeader>();
        let h: LayoutDeltaHeader = bytes
            .get(..hsize)
            .and_then(read_obj)
            .ok_or(bad("layout delta shorter than its header"))?;
        if h.num_functions > MAX_TOPOLOGY_FUNCTIONS
            || h.num_updates > h.num_functions
            || h.num_ecam > MAX_TOPOLOGY_ECAM
            || h.num_ranges > MAX_TOPOLOGY_RANGES
        {
            return Err(bad("layout delta record count over its limit"));
        }
        let (nu, ne, nr) = (
            h.num_updates as usize,
            h.num_ecam as usize,
            h.num_ranges as usize,
        );
        let usize_ = std::mem::size_of::<FunctionUpdate>();
        let esize = std::mem::size_of::<EcamWindow>();
        let rsize = std::mem::size_of::<AddressRange>();
        // The counts are bounded, so this cannot overflow; the size check bounds the
        // allocations by what the peer really sent.
        if bytes.len() != hsize + nu * usize_ + ne * esize + nr * rsize {
            return Err(bad("layout delta size does not match its record counts"));
        }
        let rest = &bytes[hsize..];
        let (ubytes, rest) = rest.split_at(nu * usize_);
        let (ebytes, rbytes) = rest.split_at(ne * esize);
        let updates: Vec<FunctionUpdate> = records(ubytes)?;
        let mut next = 0u32;
        for u in &updates {
            if u.reserved != 0 || !u.record.is_valid() {
                return Err(bad("invalid function record"));
            }
            if u.index < next || u.index >= h.num_functions {
                return Err(bad(
                    "layout delta indices out of order or past the functions",
                ));
            }
            next = u.index + 1;
        }
        let ecam: Vec<EcamWindow> = records(ebytes)?;
        if !ecam.iter().all(|e| e.is_valid()) {
            return Err(bad("invalid ECAM window"));
        }
        let ranges: Vec<AddressRange> = records(rbytes)?;
        if !ranges.iter().all(|r| r.is_valid()) {
            return Err(bad("invalid address range"));
        }
        Ok(LayoutDelta {
            base_generation: h.base_generation,
            generation: h.generation,
            num_functions: h.num_functions,
            updates,
            ecam,
            ranges_kept_front: h.ranges_kept_front,
            ranges_kept_back: h.ranges_kept_back,
            ranges,
        })
    }

    /// Apply the delta to `topo`, the topology of generation `base_generation`, in place. On
    /// any error (a base of another generation, kept ranges the base does not have, new
    /// functions without a record, a `parent` that is not a port) `topo` is left unchanged.
    pub fn apply(&self, topo: &mut Topology) -> Result<()> {
        let bad = Error::InvalidTopology;
        if topo.generation != self.base_generation {
            return Err(bad("layout delta for another generation"));
        }
        let (front, back) = (
            self.ranges_kept_front as usize,
            self.ranges_kept_back as usize,
        );
        let kept = front
            .checked_add(back)
            .filter(|&k| k <= topo.ranges.len())
            .ok_or(bad("layout delta keeps ranges the base does not have"))?;
        if kept + self.ranges.len() > MAX_TOPOLOGY_RANGES as usize {
            return Err(bad("record count over its limit"));
        }
        let (old_n, new_n) = (topo.functions.len(), self.num_functions as usize);
        if new_n > old_n {
            let added = self
                .updates
                .iter()
                .filter(|u| u.index as usize >= old_n)
                .count();
            if added != new_n - old_n {
                return Err(bad("layout delta adds functions without their records"));
            }
        }
        // Parents: every record of the new list is NO_PARENT or the index of a port; only the
        // updated records and the records whose parent changed kind can break it, so check
        // the result before committing it.
        let mut functions = topo.functions.clone();
        functions.truncate(new_n);
        functions.resize(new_n, FunctionRecord::default());
        for u in &self.updates {
            functions[u.index as usize] = u.record;
        }
        let is_port = |i: u16| {
            functions
                .get(usize::from(i))
                .is_some_and(|p| p.kind == FunctionKind::RootPort as u8)
        };
        if !functions
            .iter()
            .all(|f| f.parent == NO_PARENT || is_port(f.parent))
        {
            return Err(bad("parent is not the index of a port"));
        }
        let tail = topo.ranges.len() - back;
        topo.ranges.splice(front..tail, self.ranges.iter().copied());
        topo.functions = functions;
        topo.ecam.clone_from(&self.ecam);
        topo.generation = self.generation;
        Ok(())
    }
}

/// One layout change as a backend sends it to every channel
/// ([`crate::BackendChannelSender::layout_notice`]): the delta from the previous notice, for the
/// channels that were sent it and negotiated `LAYOUT_DELTA`, and the whole topology for the
/// others ([`crate::BackendChannelSender::needs_whole_layout`] says which).
#[derive(Clone, Copy, Debug)]
pub struct LayoutNotice<'a> {
    /// What changed.
    pub changes: crate::LayoutChanges,
    /// The topology after the change; may be left out when no channel needs it.
    pub topology: Option<&'a Topology>,
    /// The sender's count of notices: a channel gets the delta only if the last notice it was
    /// sent is `serial - 1`.
    pub serial: u64,
    /// The encoded [`LayoutDelta`] from notice `serial - 1`'s topology to this one's.
    pub delta: Option<&'a [u8]>,
}

fn records<T: ByteValued + Default>(bytes: &[u8]) -> Result<Vec<T>> {
    bytes
        .chunks_exact(std::mem::size_of::<T>())
        .map(|c| read_obj(c).ok_or(Error::InvalidTopology("truncated record")))
        .collect()
}

#[cfg(test)]
mod tests;
