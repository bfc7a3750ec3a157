//! Extra PCI segment groups (beyond QEMU, as cloud-hypervisor offers them): `[[segment]]`
//! tables of the topology file. Each has its own root bus, a simple host bridge at 00.0 and a
//! fixed ECAM window the VMM describes in an MCFG allocation entry (PCI Firmware 3.3 §4.1.2);
//! the Q35 hierarchy stays segment 0.

use serde::Deserialize;

use super::error::TopologyError;

type Result<T, E = TopologyError> = std::result::Result<T, E>;

/// One extra segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentSpec {
    /// Unique id: the name of its root bus (`bus = "ID"` places root ports and endpoints on
    /// it) and of its host bridge (state, topology records).
    pub id: String,
    /// The PCI segment group number (1-65535).
    pub segment: u16,
    /// Guest-physical base of its ECAM window (bus 0's configuration space).
    pub ecam_base: u64,
    /// Last bus number the window covers (it starts at bus 0).
    pub end_bus: u8,
}

impl SegmentSpec {
    /// The ECAM window: (base, size, last bus), as [`crate::devices::Mch::ecam`] reports
    /// PCIEXBAR's.
    pub fn ecam(&self) -> (u64, u64, u8) {
        (self.ecam_base, self.ecam_size(), self.end_bus)
    }

    /// Bytes of the window: 1 MiB per bus (PCIe Base 6.0 §7.2.2).
    pub fn ecam_size(&self) -> u64 {
        (u64::from(self.end_bus) + 1) << 20
    }
}

/// The top-level `segment` key: a number (the Q35 hierarchy's, 0) or `[[segment]]` tables:
/// (its own number, the extra segments).
pub(super) fn from_key(value: toml::Value) -> Result<(u16, Vec<SegmentSpec>)> {
    let bad = |message: String| TopologyError::Toml {
        location: None,
        message,
    };
    match value {
        toml::Value::Integer(n) => u16::try_from(n)
            .map(|n| (n, Vec::new()))
            .map_err(|_| bad(format!("segment: {n} is not a segment number (0-65535)"))),
        toml::Value::Array(tables) => {
            let segments = tables
                .into_iter()
                .map(|t| {
                    // Field errors name the field (`unknown field `colour``, a wrong type).
                    let repr: SegmentRepr = t.try_into().map_err(|e: toml::de::Error| {
                        bad(format!("[[segment]]: {}", e.message()))
                    })?;
                    repr.into_spec()
                })
                .collect::<Result<_>>()?;
            Ok((0, segments))
        }
        other => Err(bad(format!(
            "segment: expected a number or [[segment]] tables, found {other}"
        ))),
    }
}

/// A `[[segment]]` table.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct SegmentRepr {
    id: Option<String>,
    segment: u16,
    ecam_base: u64,
    end_bus: Option<u8>,
}

impl SegmentRepr {
    fn into_spec(self) -> Result<SegmentSpec> {
        Ok(SegmentSpec {
            id: self.id.unwrap_or_else(|| format!("seg{}", self.segment)),
            segment: self.segment,
            ecam_base: self.ecam_base,
            end_bus: self.end_bus.unwrap_or(255),
        })
    }
}

/// Check the extra segments among themselves: numbers other than 0 and unique, windows 1 MiB
/// aligned, inside the 64-bit space and not overlapping each other. (Where the windows lie
/// relative to guest RAM and to segment 0's PCIEXBAR, which the guest moves, is the VMM's
/// concern: it builds the memory map.) Ids are checked with every other id by the caller.
pub(super) fn validate(segments: &[SegmentSpec]) -> Result<()> {
    use TopologyError as E;
    for (i, s) in segments.iter().enumerate() {
        if s.segment == 0 || segments[..i].iter().any(|o| o.segment == s.segment) {
            return Err(E::SegmentInUse {
                id: s.id.clone(),
                segment: s.segment,
            });
        }
        let bad = |reason| E::SegmentWindow {
            id: s.id.clone(),
            base: s.ecam_base,
            end_bus: s.end_bus,
            reason,
        };
        // PCI Firmware 3.3 §4.1.2: each bus's 1 MiB starts at base + (bus << 20).
        if s.ecam_base & ((1 << 20) - 1) != 0 {
            return Err(bad("the base is not 1 MiB aligned"));
        }
        if s.ecam_base.checked_add(s.ecam_size()).is_none() {
            return Err(bad("it runs past the end of the address space"));
        }
        for o in &segments[..i] {
            if s.ecam_base < o.ecam_base + o.ecam_size()
                && o.ecam_base < s.ecam_base + s.ecam_size()
            {
                return Err(E::SegmentOverlap {
                    id: s.id.clone(),
                    other: o.id.clone(),
                });
            }
        }
    }
    Ok(())
}
