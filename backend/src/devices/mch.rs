//! The Q35 MCH host bridge at 00:00.0 (Intel 3 Series Express Chipset Family datasheet,
//! 316966-002, §5.1), register for register as QEMU 7.2's `hw/pci-host/q35.c` presents it:
//! conventional 256-byte configuration space, every byte from 0x40 writable (QEMU's generic
//! `pci_init_wmask()`), and the registers QEMU gives meaning to: PCIEXBAR, PAM0-6, SMRAM with
//! D_LCK, ESMRAMC, the extended-TSEG query and the SMBASE query/lock.

use pcierc_protocol::ChipsetMemory;
use serde::{Deserialize, Serialize};

use crate::pci::config_space::{ConfigSpace, SpaceImage, PCI_CONFIG_SPACE_SIZE};
use crate::pci::header::{self, overlaps, valid_access, Identity};
use crate::pci::{Effects, PciFunction, Width};
use crate::topology::StateError;
use crate::Error;

// 316966-002 §5.1.1-§5.1.6: VID 8086, DID 29C0 (82P35/G33 DRAM controller), RID 0, class 060000.
/// The MCH's identity (QEMU `PCI_DEVICE_ID_INTEL_Q35_MCH`).
pub const IDENTITY: Identity = Identity {
    vendor_id: 0x8086,
    device_id: 0x29c0,
    revision: 0,
    class_code: 0x060000,
};

// QEMU q35.h MCH_HOST_BRIDGE_EXT_TSEG_MBYTES: a QEMU extension (not in the datasheet). Writing
// 0xffff asks for the extended TSEG size in MiB, which then reads back.
/// Extended TSEG size, in MiB (16 bits).
pub const EXT_TSEG_MBYTES: u16 = 0x50;
const EXT_TSEG_MBYTES_QUERY: u16 = 0xffff;
/// QEMU 7.2's `extended-tseg-mbytes` default for pc-q35-7.2.
pub const EXT_TSEG_MBYTES_DEFAULT: u16 = 16;

// 316966-002 §5.1.8 PCIEXBAR — PCI Express Register Range Base Address (64 bits).
/// PCIEXBAR.
pub const PCIEXBAR: u16 = 0x60;
/// PCIEXBAR after reset: base 0xb0000000, 256 MiB, disabled.
pub const PCIEXBAR_DEFAULT: u64 = 0xb000_0000;
const PCIEXBAR_EN: u64 = 1;
const PCIEXBAR_LENGTH_SHIFT: u64 = 1;
// Address bits 35:28; QEMU adds bits 26:25 for 128 MiB and bit 25 for 64 MiB (its
// MCH_HOST_BRIDGE_PCIEXBAR_128ADMSK/64ADMSK, one bit lower than the datasheet's 27 and 27:26).
const PCIEXBAR_ADMSK: u64 = 0xf_f000_0000;
const PCIEXBAR_128ADMSK: u64 = 1 << 26;
const PCIEXBAR_64ADMSK: u64 = 1 << 25;

// 316966-002 §5.1.19-§5.1.25 PAM0-PAM6 — Programmable Attribute Map.
/// PAM0; PAM1-PAM6 follow.
pub const PAM0: u16 = 0x90;

// QEMU q35.h MCH_HOST_BRIDGE_F_SMBASE: a QEMU extension. Writing 0xff asks whether SMRAM at
// SMBASE (0x30000) is available (reads 0x01 then); bit 1 then locks it.
/// F_SMBASE.
pub const F_SMBASE: u16 = 0x9c;
const F_SMBASE_QUERY: u8 = 0xff;
const F_SMBASE_IN_RAM: u8 = 0x01;
const F_SMBASE_LCK: u8 = 0x02;

// 316966-002 §5.1.26 SMRAM — System Management RAM Control.
/// SMRAM.
pub const SMRAM: u16 = 0x9d;
const SMRAM_SIZE: u16 = 2;
const SMRAM_D_OPEN: u8 = 1 << 6;
const SMRAM_D_CLS: u8 = 1 << 5;
const SMRAM_D_LCK: u8 = 1 << 4;
const SMRAM_G_SMRAME: u8 = 1 << 3;
/// C_BASE_SEG hardwired to 010b (compatible SMRAM at 0xa0000).
const SMRAM_DEFAULT: u8 = 0x02;
const SMRAM_WMASK: u8 = SMRAM_D_OPEN | SMRAM_D_CLS | SMRAM_D_LCK | SMRAM_G_SMRAME;
const SMRAM_WMASK_LCK: u8 = SMRAM_D_CLS;

// 316966-002 §5.1.27 ESMRAMC — Extended System Management RAM Control.
/// ESMRAMC.
pub const ESMRAMC: u16 = 0x9e;
const ESMRAMC_H_SMRAME: u8 = 1 << 7;
const ESMRAMC_SM_CACHE: u8 = 1 << 5;
const ESMRAMC_SM_L1: u8 = 1 << 4;
const ESMRAMC_SM_L2: u8 = 1 << 3;
const ESMRAMC_TSEG_SZ_MASK: u8 = 3 << 1;
const ESMRAMC_T_EN: u8 = 1;
const ESMRAMC_DEFAULT: u8 = ESMRAMC_SM_CACHE | ESMRAMC_SM_L1 | ESMRAMC_SM_L2;
const ESMRAMC_WMASK: u8 = ESMRAMC_H_SMRAME | ESMRAMC_TSEG_SZ_MASK | ESMRAMC_T_EN;
const ESMRAMC_WMASK_LCK: u8 = 0;

/// The Q35 MCH, function 00:00.0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mch {
    space: ConfigSpace,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct MchState {
    space: SpaceImage,
}

impl Default for Mch {
    fn default() -> Self {
        Self::new()
    }
}

impl Mch {
    /// The MCH in its power-on state (as QEMU 7.2 after machine creation: PCIEXBAR disabled).
    pub fn new() -> Self {
        let mut space = ConfigSpace::new(PCI_CONFIG_SPACE_SIZE);
        header::init_type0(&mut space, IDENTITY, false);
        let mut mch = Mch { space };
        mch.reset();
        mch
    }

    /// The ECAM window PCIEXBAR decodes: (base, size, last bus), `None` when disabled.
    ///
    /// Deviation from QEMU 7.2: the reserved length encoding 11b makes QEMU abort (it calls
    /// `abort()` in `mch_update_pciexbar()`); pcierc treats it as disabled so a guest cannot kill
    /// the root complex. The register keeps the value written, as in QEMU.
    pub fn ecam(&self) -> Option<(u64, u64, u8)> {
        let bar = self.space.qword(PCIEXBAR);
        if bar & PCIEXBAR_EN == 0 {
            return None;
        }
        let (size, extra): (u64, u64) = match (bar >> PCIEXBAR_LENGTH_SHIFT) & 3 {
            0 => (256 << 20, 0),
            1 => (128 << 20, PCIEXBAR_128ADMSK | PCIEXBAR_64ADMSK),
            2 => (64 << 20, PCIEXBAR_64ADMSK),
            _ => return None,
        };
        let base = bar & (PCIEXBAR_ADMSK | extra);
        Some((base, size, ((size >> 20) - 1) as u8))
    }

    /// The legacy memory routing registers: PAM0-6, SMRAM and ESMRAMC.
    pub fn chipset_memory(&self) -> ChipsetMemory {
        let mut pam = [0u8; 7];
        for (i, p) in pam.iter_mut().enumerate() {
            *p = self.space.byte(PAM0 + i as u16);
        }
        ChipsetMemory {
            pam,
            smram: self.space.byte(SMRAM),
            esmramc: self.space.byte(ESMRAMC),
            reserved: [0; 7],
        }
    }

    /// F_SMBASE: 0 (SMRAM at SMBASE not requested), 0x01 (available, unlocked), 0x02 (locked).
    pub fn f_smbase(&self) -> u8 {
        self.space.byte(F_SMBASE)
    }

    /// The extended TSEG size register (MiB once queried).
    pub fn ext_tseg_mbytes(&self) -> u16 {
        self.space.word(EXT_TSEG_MBYTES)
    }

    /// QEMU's `mch_update_smram()` register side: once D_LCK is set, D_OPEN clears and only
    /// D_CLS stays writable; ESMRAMC becomes read-only.
    fn update_smram(&mut self) {
        if self.space.byte(SMRAM) & SMRAM_D_LCK != 0 {
            self.space.clear_bits(SMRAM, 1, SMRAM_D_OPEN.into());
            self.space.set_wmask(SMRAM, 1, SMRAM_WMASK_LCK.into());
            self.space.set_wmask(ESMRAMC, 1, ESMRAMC_WMASK_LCK.into());
        }
    }

    /// QEMU's `mch_update_ext_tseg_mbytes()`: the query value is answered with the size.
    fn update_ext_tseg_mbytes(&mut self) {
        if self.space.word(EXT_TSEG_MBYTES) == EXT_TSEG_MBYTES_QUERY {
            self.space
                .set_word(EXT_TSEG_MBYTES, EXT_TSEG_MBYTES_DEFAULT);
        }
    }

    /// QEMU's `mch_update_smbase_smram()` register side (`smbase-smram` is on for 7.2 machines).
    fn update_smbase(&mut self) {
        let reg = self.space.byte(F_SMBASE);
        if reg == F_SMBASE_QUERY {
            self.space.set_wmask(F_SMBASE, 1, F_SMBASE_LCK.into());
            self.space.set_byte(F_SMBASE, F_SMBASE_IN_RAM);
            return;
        }
        // Before the query (write mask still 0xff) anything written is discarded.
        if self.space.wmask(F_SMBASE, 1) == 0xff {
            self.space.set_byte(F_SMBASE, 0);
        }
        if self.space.byte(F_SMBASE) & F_SMBASE_LCK != 0 {
            self.space.clear_wmask(F_SMBASE, 1, F_SMBASE_LCK.into());
            self.space.set_byte(F_SMBASE, F_SMBASE_LCK);
        }
    }
}

impl PciFunction for Mch {
    fn config_read(&self, offset: u16, width: Width) -> u32 {
        self.space.read(offset, width)
    }

    fn config_image(&self) -> Vec<u8> {
        self.space.image_4k()
    }

    fn config_write(&mut self, offset: u16, width: Width, value: u32) -> Effects {
        if !valid_access(offset, width) {
            return Effects::empty();
        }
        let (ecam, memory) = (self.ecam(), self.chipset_memory());
        // mch_write_config(): pci_default_write_config() then the per-register updates.
        self.space.write(offset, width, value);
        if overlaps(offset, width, SMRAM, SMRAM_SIZE) {
            self.update_smram();
        }
        if overlaps(offset, width, EXT_TSEG_MBYTES, 2) {
            self.update_ext_tseg_mbytes();
        }
        if overlaps(offset, width, F_SMBASE, 1) {
            self.update_smbase();
        }
        // mch_update_pciexbar() and mch_update_pam()/mch_update_smram() re-map memory: here
        // the owner is told when what they decode changed.
        let mut effects = Effects::empty();
        if self.ecam() != ecam {
            effects |= Effects::ECAM;
        }
        if self.chipset_memory() != memory {
            effects |= Effects::CHIPSET_MEMORY;
        }
        effects
    }

    /// QEMU's `pci_do_device_reset()` + `mch_reset()`: Command, Status, Interrupt Line and Cache
    /// Line Size cleared; PCIEXBAR disabled at 0xb0000000; SMRAM, ESMRAMC and their masks, the
    /// extended-TSEG register and F_SMBASE back to default. PAM0-6 and the other device-specific
    /// bytes keep their values, as in QEMU.
    fn reset(&mut self) {
        header::device_reset(&mut self.space, &[]);
        self.space.set_qword(PCIEXBAR, PCIEXBAR_DEFAULT);
        self.space.set_byte(SMRAM, SMRAM_DEFAULT);
        self.space.set_byte(ESMRAMC, ESMRAMC_DEFAULT);
        self.space.set_wmask(SMRAM, 1, SMRAM_WMASK.into());
        self.space.set_wmask(ESMRAMC, 1, ESMRAMC_WMASK.into());
        self.space.set_word(EXT_TSEG_MBYTES, EXT_TSEG_MBYTES_QUERY);
        self.space.set_byte(F_SMBASE, 0);
        self.space.set_wmask(F_SMBASE, 1, 0xff);
        // mch_update()
        self.update_smram();
        self.update_ext_tseg_mbytes();
        self.update_smbase();
    }

    fn save(&self) -> serde_json::Value {
        serde_json::to_value(MchState {
            space: self.space.image(),
        })
        .unwrap_or_default()
    }

    fn restore(&mut self, state: &serde_json::Value) -> Result<(), Error> {
        let s = MchState::deserialize(state).map_err(|source| StateError::Function {
            id: "mch".into(),
            source,
        })?;
        self.space.load_image(&s.space).map_err(|source| {
            StateError::Registers {
                id: "mch".into(),
                source,
            }
            .into()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pci::reference::{first_difference, load_dump, load_dump_from, read_all};

    #[test]
    fn reset_state_matches_qemu_dump() {
        let mut mch = Mch::new();
        assert_eq!(mch.ecam(), None, "PCIEXBAR is disabled at reset");
        // The dump was taken after enabling PCIEXBAR at 0xb0000000, as dump_q35.py does.
        assert_eq!(mch.config_write(PCIEXBAR, 4, 0xb000_0001), Effects::ECAM);
        let want = load_dump("q35_mch_00_00.0.xxxx");
        let got = read_all(&mch);
        assert_eq!(first_difference(&got, &want), None);
        // QEMU 10.0's pc-q35-10.0 host bridge reads the same: the MCH has no machine-type flags.
        assert_eq!(load_dump_from("qemu-10.0", "q35_mch_00_00.0.xxxx"), want);
    }

    #[test]
    fn pciexbar_enable_move_and_lengths() {
        let mut mch = Mch::new();
        assert_eq!(mch.config_write(PCIEXBAR, 4, 0xe000_0001), Effects::ECAM);
        assert_eq!(mch.ecam(), Some((0xe000_0000, 256 << 20, 255)));
        assert_eq!(
            mch.config_write(PCIEXBAR, 4, 0xe000_0001),
            Effects::empty(),
            "no change, no effect"
        );
        assert_eq!(mch.config_write(PCIEXBAR, 4, 0xe000_0003), Effects::ECAM);
        assert_eq!(mch.ecam(), Some((0xe000_0000, 128 << 20, 127)));
        assert_eq!(mch.config_write(PCIEXBAR, 4, 0xe000_0005), Effects::ECAM);
        assert_eq!(mch.ecam(), Some((0xe000_0000, 64 << 20, 63)));
        // QEMU's address masks: bit 27 is never an address bit, bit 26 only for 128 MiB.
        mch.config_write(PCIEXBAR, 4, 0xb800_0003);
        assert_eq!(mch.ecam(), Some((0xb000_0000, 128 << 20, 127)));
        mch.config_write(PCIEXBAR, 4, 0xb600_0005);
        assert_eq!(mch.ecam(), Some((0xb200_0000, 64 << 20, 63)));
        mch.config_write(PCIEXBAR + 4, 4, 0xffff_ffff);
        mch.config_write(PCIEXBAR, 4, 0xbfff_fff1);
        assert_eq!(mch.ecam(), Some((0xf_b000_0000, 256 << 20, 255)));
        assert_eq!(
            mch.config_read(PCIEXBAR, 4),
            0xbfff_fff1,
            "the register keeps every bit"
        );
        // The reserved length disables decode (QEMU aborts).
        assert_eq!(mch.config_write(PCIEXBAR, 1, 0x07), Effects::ECAM);
        assert_eq!(mch.ecam(), None);
        assert_eq!(mch.config_write(PCIEXBAR, 1, 0x00), Effects::empty());
        mch.reset();
        assert_eq!(mch.config_read(PCIEXBAR, 4), 0xb000_0000);
        assert_eq!(mch.config_read(PCIEXBAR + 4, 4), 0);
    }

    #[test]
    fn pam_and_smram_report_chipset_memory() {
        let mut mch = Mch::new();
        assert_eq!(
            mch.config_write(PAM0, 4, 0x3333_3330),
            Effects::CHIPSET_MEMORY
        );
        assert_eq!(mch.chipset_memory().pam, [0x30, 0x33, 0x33, 0x33, 0, 0, 0]);
        assert_eq!(
            mch.config_write(0x94, 4, 0x0033_3333),
            Effects::CHIPSET_MEMORY
        );
        assert_eq!(mch.config_write(0x94, 4, 0x0033_3333), Effects::empty());
        assert_eq!(
            mch.config_write(0x97, 1, 0x55),
            Effects::empty(),
            "0x97 is not a PAM"
        );
        // SMRAM: C_BASE_SEG hardwired, D_OPEN/D_CLS/D_LCK/G_SMRAME writable.
        assert_eq!(mch.config_write(SMRAM, 1, 0x4f), Effects::CHIPSET_MEMORY);
        assert_eq!(mch.config_read(SMRAM, 1), 0x4a);
        assert_eq!(mch.config_write(ESMRAMC, 1, 0xff), Effects::CHIPSET_MEMORY);
        assert_eq!(mch.config_read(ESMRAMC, 1), 0xbf);
        // D_LCK: D_OPEN clears, only D_CLS stays writable, ESMRAMC locks.
        assert_eq!(mch.config_write(SMRAM, 1, 0x5a), Effects::CHIPSET_MEMORY);
        assert_eq!(mch.config_read(SMRAM, 1), 0x1a);
        mch.config_write(SMRAM, 1, 0x62);
        assert_eq!(mch.config_read(SMRAM, 1), 0x3a);
        mch.config_write(ESMRAMC, 1, 0x00);
        assert_eq!(mch.config_read(ESMRAMC, 1), 0xbf);
        mch.reset();
        assert_eq!(mch.config_read(SMRAM, 2), 0x3802);
        assert_eq!(
            mch.chipset_memory().pam,
            [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33],
            "PAMs survive reset"
        );
        mch.config_write(SMRAM, 1, 0x40);
        assert_eq!(
            mch.config_read(SMRAM, 1),
            0x42,
            "unlocked again after reset"
        );
    }

    #[test]
    fn qemu_query_registers() {
        let mut mch = Mch::new();
        assert_eq!(mch.ext_tseg_mbytes(), 16);
        mch.config_write(EXT_TSEG_MBYTES, 2, 0x1234);
        assert_eq!(mch.ext_tseg_mbytes(), 0x1234);
        mch.config_write(EXT_TSEG_MBYTES, 2, 0xffff);
        assert_eq!(mch.ext_tseg_mbytes(), 16);
        // F_SMBASE: writes before the query are discarded; the query answers 1; then lockable.
        mch.config_write(F_SMBASE, 1, 0x02);
        assert_eq!(mch.f_smbase(), 0);
        mch.config_write(F_SMBASE, 1, 0xff);
        assert_eq!(mch.f_smbase(), 0x01);
        mch.config_write(F_SMBASE, 1, 0x00);
        assert_eq!(mch.f_smbase(), 0x01);
        mch.config_write(0x9c, 4, 0x0000_0002);
        assert_eq!(mch.f_smbase(), 0x02);
        mch.config_write(F_SMBASE, 1, 0xff);
        assert_eq!(mch.f_smbase(), 0x02, "locked");
    }

    #[test]
    fn save_restore_round_trips_dynamic_masks() {
        let mut mch = Mch::new();
        mch.config_write(SMRAM, 1, 0x10);
        mch.config_write(F_SMBASE, 1, 0xff);
        mch.config_write(0xc0, 4, 0xdead_beef);
        let saved = mch.save();
        let mut other = Mch::new();
        other.restore(&saved).unwrap();
        assert_eq!(other, mch);
        other.config_write(ESMRAMC, 1, 0);
        assert_eq!(
            other.config_read(ESMRAMC, 1),
            0x38,
            "the lock's masks came along"
        );
        assert!(other.restore(&serde_json::json!({"space": 1})).is_err());
        assert!(other.restore(&serde_json::json!({})).is_err());
        assert_eq!(other, mch, "a failed restore changes nothing");
    }

    #[test]
    fn arbitrary_accesses_never_panic() {
        let mut mch = Mch::new();
        let mut x = 0x1234_5678u32;
        for _ in 0..20000 {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let width = [1u8, 2, 4][(x % 3) as usize];
            let offset = ((x >> 4) % 4096) as u16 & !(u16::from(width) - 1);
            mch.config_write(offset, width, x.rotate_left(7));
            mch.config_read(offset, width);
        }
        assert_eq!(mch.config_read(0x100, 4), 0xffff_ffff);
        assert_eq!(mch.config_write(0x1001, 4, 0), Effects::empty());
    }
}
