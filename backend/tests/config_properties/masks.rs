//! The engine's write rule: its planes (value, write mask, W1C mask) read from a model's saved
//! state, and writes checked against `(old & !wmask) | (data & wmask)`, then write-1-to-clear.

use pcierc_backend::pci::PciFunction;
use proptest::prelude::*;

use crate::{fail, CaseResult};

/// The engine's planes, read from the model's saved state (the only public view of them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Image {
    pub(crate) value: Vec<u8>,
    pub(crate) wmask: Vec<u8>,
    pub(crate) w1cmask: Vec<u8>,
}

pub(crate) fn image(f: &dyn PciFunction) -> CaseResult<Image> {
    let state = f.save();
    let space = state
        .get("space")
        .or_else(|| state.get("port").and_then(|p| p.get("space")));
    let plane = |name: &str| -> CaseResult<Vec<u8>> {
        let hex = space
            .and_then(|s| s.get(name))
            .and_then(|v| v.as_str())
            .unwrap_or_default();
        let bytes: Option<Vec<u8>> = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
            .collect();
        match bytes {
            Some(b) if !b.is_empty() => Ok(b),
            _ => fail(format!("no '{name}' plane in the saved state {state}")),
        }
    };
    Ok(Image {
        value: plane("value")?,
        wmask: plane("wmask")?,
        w1cmask: plane("w1cmask")?,
    })
}

/// The value plane as the guest reads it (cheaper than a save), `size` bytes.
fn values(f: &dyn PciFunction, size: u16) -> Vec<u8> {
    (0..size)
        .step_by(4)
        .flat_map(|o| f.config_read(o, 4).to_le_bytes())
        .collect()
}

/// Check `writes` against the engine's rule, skipping (and re-synchronising after) the ones
/// that overlap `hooked` registers `(start, len)`, whose side effects are the model's own.
pub(crate) fn check_writes(
    f: &mut dyn PciFunction,
    size: u16,
    hooked: &[(u32, u32)],
    writes: &[(u16, u8, u32)],
) -> CaseResult {
    let mut model = image(f)?;
    for &(offset, width, value) in writes {
        let (a, b) = (u32::from(offset), u32::from(offset) + u32::from(width));
        let skip = hooked.iter().any(|&(s, n)| a < s + n && s < b);
        f.config_write(offset, width, value);
        if skip {
            model = image(f)?;
            continue;
        }
        model = engine_write(&model, offset, width, value);
        prop_assert_eq!(
            &values(f, size),
            &model.value,
            "write {:#x}/{} {:#x}",
            offset,
            width,
            value
        );
    }
    // The masks did not move either.
    prop_assert_eq!(image(f)?, model);
    Ok(())
}

/// Is this a valid configuration access (the models ignore writes that are not)?
fn valid_access(offset: u16, width: u8) -> bool {
    matches!(width, 1 | 2 | 4)
        && offset.is_multiple_of(u16::from(width))
        && u32::from(offset) + u32::from(width) <= 0x1000
}

/// The engine's write rule (QEMU's `pci_default_write_config()`) applied to `before`.
fn engine_write(before: &Image, offset: u16, width: u8, data: u32) -> Image {
    let mut after = before.clone();
    if !valid_access(offset, width) {
        return after;
    }
    for i in 0..usize::from(width) {
        let o = usize::from(offset) + i;
        let Some(v) = after.value.get_mut(o) else {
            break; // past the function's size: dropped
        };
        let d = (data >> (8 * i)) as u8;
        let (w, c) = (before.wmask[o], before.w1cmask[o]);
        *v = ((*v & !w) | (d & w)) & !(d & c);
    }
    after
}
