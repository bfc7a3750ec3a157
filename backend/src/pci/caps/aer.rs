//! Advanced Error Reporting extended capability, version 2 (PCIe Base 6.0 §7.8.4), with the
//! masks, defaults and write hooks of QEMU 7.2's `hw/pci/pcie_aer.c` (`pcie_aer_init()`,
//! `pcie_aer_root_init()`, `pcie_aer_root_reset()`, `pcie_aer_write_config()`,
//! `pcie_aer_root_write_config()`). Error injection and the multiple-header log queue are not
//! modelled yet: with no error ever recorded the log is always empty.

use crate::pci::bridge::{BRIDGE_CONTROL, BRIDGE_CTL_SERR};
use crate::pci::config_space::{CapabilityError, ConfigSpace};
use crate::pci::header::{STATUS, STATUS_SIG_SYSTEM_ERROR};
use crate::pci::{AerError, ErrorSeverity};

use super::EXT_CAP_ID_AER;

// PCIe Base 6.0 §7.8.4.2 Uncorrectable Error Status Register.
/// Uncorrectable Error Status.
pub const UNCOR_STATUS: u16 = 0x04;
// PCIe Base 6.0 §7.8.4.3 Uncorrectable Error Mask Register (read-only zero in QEMU 7.2; writable
// with a default from pc-q35-8.0 on, `PortCompat::err_unc_mask`).
/// Uncorrectable Error Mask.
pub const UNCOR_MASK: u16 = 0x08;
// PCIe Base 6.0 §7.8.4.4 Uncorrectable Error Severity Register.
/// Uncorrectable Error Severity.
pub const UNCOR_SEVER: u16 = 0x0c;
// PCIe Base 6.0 §7.8.4.5 Correctable Error Status Register.
/// Correctable Error Status.
pub const COR_STATUS: u16 = 0x10;
// PCIe Base 6.0 §7.8.4.6 Correctable Error Mask Register.
/// Correctable Error Mask.
pub const COR_MASK: u16 = 0x14;
// PCIe Base 6.0 §7.8.4.7 Advanced Error Capabilities and Control Register.
/// Advanced Error Capabilities and Control.
pub const CAP: u16 = 0x18;
// PCIe Base 6.0 §7.8.4.8 Header Log Register.
/// Header Log (16 bytes).
pub const HEADER_LOG: u16 = 0x1c;
// PCIe Base 6.0 §7.8.4.9 Root Error Command Register.
/// Root Error Command.
pub const ROOT_COMMAND: u16 = 0x2c;
// PCIe Base 6.0 §7.8.4.10 Root Error Status Register.
/// Root Error Status.
pub const ROOT_STATUS: u16 = 0x30;
// PCIe Base 6.0 §7.8.4.11 Error Source Identification Register.
/// Error Source Identification.
pub const ROOT_ERR_SRC: u16 = 0x34;
// PCIe Base 6.0 §7.8.4.12 TLP Prefix Log Register.
/// TLP Prefix Log (16 bytes).
pub const TLP_PREFIX_LOG: u16 = 0x38;
/// Size of the capability.
pub const SIZEOF: u16 = 0x48;
/// Capability version.
pub const VERSION: u8 = 2;

/// Uncorrectable errors QEMU 7.2 supports (`PCI_ERR_UNC_SUPPORTED`): Data Link Protocol,
/// Surprise Down, Poisoned TLP through TLP Prefix Blocked (bits 4, 5, 12-25).
pub const UNC_SUPPORTED: u32 = 0x03ff_f030;
/// Default severity (`PCI_ERR_UNC_SEVERITY_DEFAULT`): Data Link Protocol, Surprise Down, Flow
/// Control Protocol, Receiver Overflow, Malformed TLP and Uncorrectable Internal Error are fatal.
pub const UNC_SEVERITY_DEFAULT: u32 = 0x0046_2030;
/// Default uncorrectable mask when it is writable (`PCI_ERR_UNC_MASK_DEFAULT`, QEMU 8.0 and
/// later): Uncorrectable Internal Error and TLP Prefix Blocked are masked.
pub const UNC_MASK_DEFAULT: u32 = 1 << 22 | 1 << 25;
/// Correctable errors QEMU 7.2 supports (`PCI_ERR_COR_SUPPORTED`).
pub const COR_SUPPORTED: u32 = 0x0000_f1c1;
/// Default correctable mask (`PCI_ERR_COR_MASK_DEFAULT`): Advisory Non-Fatal, Corrected
/// Internal and Header Log Overflow are masked.
pub const COR_MASK_DEFAULT: u32 = 0x0000_e000;
// PCIe Base 6.0 §7.8.4.7 fields: First Error Pointer 4:0, ECRC Generation Capable 5 / Enable 6,
// ECRC Check Capable 7 / Enable 8, Multiple Header Recording Capable 9 / Enable 10,
// TLP Prefix Log Present 11.
const CAP_FEP_MASK: u32 = 0x1f;
const CAP_ECRC_GENC: u32 = 1 << 5;
const CAP_ECRC_GENE: u32 = 1 << 6;
const CAP_ECRC_CHKC: u32 = 1 << 7;
const CAP_ECRC_CHKE: u32 = 1 << 8;
const CAP_MHRC: u32 = 1 << 9;
const CAP_MHRE: u32 = 1 << 10;
const CAP_TLP: u32 = 1 << 11;
// PCIe Base 6.0 §7.8.4.9: Correctable / Non-Fatal / Fatal Error Reporting Enable.
const ROOT_CMD_COR_EN: u32 = 1 << 0;
const ROOT_CMD_NONFATAL_EN: u32 = 1 << 1;
const ROOT_CMD_FATAL_EN: u32 = 1 << 2;
const ROOT_CMD_EN_MASK: u32 = 0x7;
// PCIe Base 6.0 §7.8.4.10: ERR_COR Received 0 ... Fatal Error Messages Received 6 (RW1C),
// Advanced Error Interrupt Message Number 31:27.
const ROOT_STATUS_COR_RCV: u32 = 1 << 0;
const ROOT_STATUS_NONFATAL_RCV: u32 = 1 << 5;
const ROOT_STATUS_FATAL_RCV: u32 = 1 << 6;
const ROOT_STATUS_REPORT_MASK: u32 = 0x7f;
const ROOT_STATUS_IRQ_SHIFT: u32 = 27;

/// What the Root Error Command hook asks the port to do.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RootSignal {
    /// Nothing.
    None,
    /// MSI/MSI-X is off: set INTx to this level.
    Intx(bool),
    /// Send this MSI-X vector.
    Msi(u16),
}

/// QEMU's default error log size (`aer_log_max`, `PCIE_AER_LOG_MAX_DEFAULT`).
pub const LOG_MAX_DEFAULT: u16 = 8;
/// The largest error log QEMU accepts (`PCIE_AER_LOG_MAX_LIMIT`).
pub const LOG_MAX_LIMIT: u16 = 128;

/// Add AER at `offset` as QEMU's `pcie_aer_init()` for a port and `pcie_aer_root_init()`.
/// `multiple_headers`: an error log of more than zero entries (QEMU's `aer_log_max`, 8 by
/// default) makes the port Multiple Header Recording Capable (PCIe Base 6.0 §7.8.4.7) with
/// a writable Multiple Header Recording Enable.
pub fn init_root_port(
    cs: &mut ConfigSpace,
    offset: u16,
    multiple_headers: bool,
) -> Result<u16, CapabilityError> {
    let at = init(cs, offset, multiple_headers)?;
    // pcie_aer_root_init()
    cs.set_wmask(at + ROOT_COMMAND, 4, ROOT_CMD_EN_MASK.into());
    cs.set_w1cmask(at + ROOT_STATUS, 4, ROOT_STATUS_REPORT_MASK.into());
    Ok(at)
}

/// Add AER at `offset` as QEMU's `pcie_aer_init()` alone, for a function that is not a root
/// port (a switch port, `pcie-pci-bridge`): [`init_root_port`] without the Root Error
/// registers, which stay read-only zero.
pub fn init(
    cs: &mut ConfigSpace,
    offset: u16,
    multiple_headers: bool,
) -> Result<u16, CapabilityError> {
    let at = cs.add_ext_capability(EXT_CAP_ID_AER, VERSION, offset, SIZEOF)?;
    cs.set_w1cmask(at + UNCOR_STATUS, 4, UNC_SUPPORTED.into());
    cs.set_dword(at + UNCOR_SEVER, UNC_SEVERITY_DEFAULT);
    cs.set_wmask(at + UNCOR_SEVER, 4, UNC_SUPPORTED.into());
    cs.or_w1cmask(at + COR_STATUS, 4, COR_SUPPORTED.into());
    cs.set_dword(at + COR_MASK, COR_MASK_DEFAULT);
    cs.set_wmask(at + COR_MASK, 4, COR_SUPPORTED.into());
    let (mhrc, mhre) = if multiple_headers {
        (CAP_MHRC, CAP_MHRE)
    } else {
        (0, 0)
    };
    cs.set_dword(at + CAP, CAP_ECRC_GENC | CAP_ECRC_CHKC | mhrc);
    cs.set_wmask(at + CAP, 4, (CAP_ECRC_GENE | CAP_ECRC_CHKE | mhre).into());
    // Ports forward errors with Bridge Control SERR# Enable. (QEMU also sets this dword mask
    // at Status, where it only repeats Signaled System Error.)
    cs.or_wmask(BRIDGE_CONTROL, 2, BRIDGE_CTL_SERR.into());
    cs.or_w1cmask(STATUS, 2, STATUS_SIG_SYSTEM_ERROR.into());
    Ok(at)
}

/// QEMU's `pcie_aer_root_set_vector()`: the Advanced Error Interrupt Message Number.
pub fn root_set_vector(cs: &mut ConfigSpace, at: u16, vector: u8) {
    let sta = cs.dword(at + ROOT_STATUS) & !(0x1f << ROOT_STATUS_IRQ_SHIFT);
    cs.set_dword(
        at + ROOT_STATUS,
        sta | u32::from(vector & 0x1f) << ROOT_STATUS_IRQ_SHIFT,
    );
}

/// QEMU's `pcie_aer_root_reset()`: Root Error Command cleared. Severity, masks and the ECRC and
/// multiple-header enables keep their values, as in QEMU.
pub fn root_reset(cs: &mut ConfigSpace, at: u16) {
    cs.set_dword(at + ROOT_COMMAND, 0);
}

/// QEMU's `pcie_aer_write_config()` with an empty error log: when the error the First Error
/// Pointer names is no longer set, the pointer and the header and prefix logs are cleared.
pub fn write_config(cs: &mut ConfigSpace, at: u16) {
    let errcap = cs.dword(at + CAP);
    let first_error = 1u32 << (errcap & CAP_FEP_MASK);
    if cs.dword(at + UNCOR_STATUS) & first_error == 0 {
        cs.clear_bits(at + CAP, 4, (CAP_FEP_MASK | CAP_TLP).into());
        for i in 0..4 {
            cs.set_dword(at + HEADER_LOG + 4 * i, 0);
            cs.set_dword(at + TLP_PREFIX_LOG + 4 * i, 0);
        }
    }
}

/// QEMU's `pcie_aer_root_write_config()`, run after every configuration write to a root port
/// with the Root Error Command value from before it.
pub fn root_write_config(
    cs: &ConfigSpace,
    at: u16,
    root_cmd_prev: u32,
    msi_enabled: bool,
) -> RootSignal {
    let root_status = cs.dword(at + ROOT_STATUS);
    let mut enabled_cmd = 0;
    for (sta, cmd) in [
        (ROOT_STATUS_COR_RCV, ROOT_CMD_COR_EN),
        (ROOT_STATUS_NONFATAL_RCV, ROOT_CMD_NONFATAL_EN),
        (ROOT_STATUS_FATAL_RCV, ROOT_CMD_FATAL_EN),
    ] {
        if root_status & sta != 0 {
            enabled_cmd |= cmd;
        }
    }
    let root_cmd = cs.dword(at + ROOT_COMMAND);
    if !msi_enabled {
        return RootSignal::Intx(root_cmd & enabled_cmd != 0);
    }
    if root_cmd_prev & enabled_cmd != 0 || root_cmd & enabled_cmd == 0 {
        return RootSignal::None;
    }
    RootSignal::Msi((root_status >> ROOT_STATUS_IRQ_SHIFT) as u16)
}

// PCIe Base 6.0 §7.8.4.10 Root Error Status: the bits an error message sets.
const ROOT_STATUS_MULTI_COR_RCV: u32 = 1 << 1;
const ROOT_STATUS_UE_RCV: u32 = 1 << 2;
const ROOT_STATUS_MULTI_UE_RCV: u32 = 1 << 3;
const ROOT_STATUS_FIRST_FATAL: u32 = 1 << 4;

/// Root Error Command enables whose class has its "received" bit set in `root_status`.
fn enabled_classes(root_status: u32, root_cmd: u32) -> u32 {
    [
        (ROOT_STATUS_COR_RCV, ROOT_CMD_COR_EN),
        (ROOT_STATUS_NONFATAL_RCV, ROOT_CMD_NONFATAL_EN),
        (ROOT_STATUS_FATAL_RCV, ROOT_CMD_FATAL_EN),
    ]
    .into_iter()
    .filter(|(sta, _)| root_status & sta != 0)
    .fold(0, |acc, (_, cmd)| acc | cmd)
        & root_cmd
}

/// Why an injected error was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// None of the status bits is an error this capability implements.
    #[error("status {0:#x} holds no error bit the root port implements")]
    Unsupported(u32),
}

/// Record an error and signal it to the root port's own Root Error logic (PCIe Base 6.0
/// §6.2.4, §6.2.5, §7.8.4). `own` is true for an error the port itself detected: its
/// Uncorrectable/Correctable Error Status, First Error Pointer and Header Log record it (masked
/// errors are recorded but not reported, §6.2.3.2.2); false for an error message received from a
/// function below (only the root's registers change; the function logs it in its own AER
/// capability). Returns whether a message was received by the root (so the caller signals).
///
/// Deliberate deviation from QEMU: reporting to the root does not depend on SERR# Enable in
/// Bridge Control or Command (QEMU's `pcie_aer_msg()` requires it); §6.2.6 has the Root Error
/// Command register govern a root port's own error interrupt.
pub fn inject(cs: &mut ConfigSpace, at: u16, own: bool, e: &AerError) -> Result<bool, InjectError> {
    let correctable = e.severity == ErrorSeverity::Correctable;
    let (status, requester, header_log) = (e.status, e.requester, e.header_log);
    let fatal_hint = e.severity == ErrorSeverity::Fatal;
    let supported = if correctable {
        COR_SUPPORTED
    } else {
        UNC_SUPPORTED
    };
    let bits = status & supported;
    if bits == 0 {
        return Err(InjectError::Unsupported(status));
    }
    let mut fatal = fatal_hint;
    if own {
        // §7.8.4.4: for the port's own errors the severity register decides.
        match record(cs, at, bits, correctable, &header_log) {
            Some(f) => fatal = f,
            None => return Ok(false),
        }
    }
    // §7.8.4.10 Root Error Status and §7.8.4.11 Error Source Identification.
    let mut rs = cs.dword(at + ROOT_STATUS);
    let mut src = cs.dword(at + ROOT_ERR_SRC);
    if correctable {
        if rs & ROOT_STATUS_COR_RCV != 0 {
            rs |= ROOT_STATUS_MULTI_COR_RCV;
        } else {
            rs |= ROOT_STATUS_COR_RCV;
            src = (src & 0xffff_0000) | u32::from(requester);
        }
    } else {
        if rs & ROOT_STATUS_UE_RCV != 0 {
            rs |= ROOT_STATUS_MULTI_UE_RCV;
        } else {
            rs |= ROOT_STATUS_UE_RCV;
            src = (src & 0xffff) | u32::from(requester) << 16;
            if fatal {
                rs |= ROOT_STATUS_FIRST_FATAL;
            }
        }
        rs |= if fatal {
            ROOT_STATUS_FATAL_RCV
        } else {
            ROOT_STATUS_NONFATAL_RCV
        };
    }
    cs.set_dword(at + ROOT_STATUS, rs);
    cs.set_dword(at + ROOT_ERR_SRC, src);
    Ok(true)
}

/// Record an error the function detected itself in its AER capability at `at` (PCIe Base 6.0
/// §6.2.3.2, §7.8.4): `bits` (already restricted to the supported ones) set in the Correctable
/// or Uncorrectable Error Status; for an unmasked uncorrectable error the severity register
/// decides fatal or not (§7.8.4.4) and the First Error Pointer and the Header Log take it
/// (§7.8.4.7, §7.8.4.8) unless they hold an error still pending with Multiple Header Recording
/// enabled (§6.2.4.2; QEMU's rule, docs/qemu-compat.md). `None` when every bit is masked
/// (recorded, not reported); else whether the message to send is ERR_FATAL.
fn record(
    cs: &mut ConfigSpace,
    at: u16,
    bits: u32,
    correctable: bool,
    header_log: &[u32; 4],
) -> Option<bool> {
    let (status_reg, mask_reg) = if correctable {
        (COR_STATUS, COR_MASK)
    } else {
        (UNCOR_STATUS, UNCOR_MASK)
    };
    // QEMU's pcie_aer_record_error(): the log keeps its error only while Multiple Header
    // Recording is enabled and the error First Error Pointer names is still set (then QEMU
    // queues the new one: its queue is not modelled); otherwise every unmasked uncorrectable
    // error takes the First Error Pointer and Header Log (pcie_aer_update_log()).
    let cap = cs.dword(at + CAP);
    let locked =
        cap & CAP_MHRE != 0 && cs.dword(at + UNCOR_STATUS) & 1 << (cap & CAP_FEP_MASK) != 0;
    cs.set_bits(at + status_reg, 4, bits.into());
    let unmasked = bits & !cs.dword(at + mask_reg);
    if unmasked == 0 {
        return None;
    }
    if correctable {
        return Some(false);
    }
    if !locked {
        let first = unmasked.trailing_zeros();
        let cap = cs.dword(at + CAP) & !CAP_FEP_MASK;
        cs.set_dword(at + CAP, cap | first);
        for (i, dw) in header_log.iter().enumerate() {
            cs.set_dword(at + HEADER_LOG + 4 * i as u16, *dw);
        }
    }
    Some(unmasked & cs.dword(at + UNCOR_SEVER) != 0)
}

/// Device Status Correctable Error Detected (PCIe Base 6.0 §7.5.3.5, bit 0).
pub const DEVSTA_CED: u16 = 1 << 0;
/// Device Status Non-Fatal Error Detected (bit 1).
pub const DEVSTA_NFED: u16 = 1 << 1;
/// Device Status Fatal Error Detected (bit 2).
pub const DEVSTA_FED: u16 = 1 << 2;
/// Device Status Unsupported Request Detected (bit 3).
pub const DEVSTA_URD: u16 = 1 << 3;
/// Uncorrectable Error Status Unsupported Request Error (PCIe Base 6.0 §7.8.4.2, bit 20).
pub const UNC_UNSUP: u32 = 1 << 20;

/// An error a function that is not a root port (a switch port, a `pcie-pci-bridge`) detected
/// itself, with its PCI Express capability at `exp` and AER at `at`: Device Status Correctable /
/// Non-Fatal / Fatal Error Detected, and Unsupported Request Detected for an Unsupported Request
/// (PCIe Base 6.0 §7.5.3.5), set whether or not the error is masked (§6.2.5, Figure 6-2: Device
/// Status is updated before the mask is looked at; QEMU's `pcie_aer_inject_cor_error()` /
/// `pcie_aer_inject_uncor_error()` likewise), fatal or not by the Uncorrectable Error Severity
/// register (§7.8.4.4); then its AER capability records it. Returns the message the function sends upstream
/// (ERR_COR / ERR_NONFATAL / ERR_FATAL from `e.requester`, §6.2.2), or `None` when masked.
pub fn detect_own(
    cs: &mut ConfigSpace,
    exp: u16,
    at: u16,
    e: &AerError,
) -> Result<Option<AerError>, InjectError> {
    let correctable = e.severity == ErrorSeverity::Correctable;
    let supported = if correctable {
        COR_SUPPORTED
    } else {
        UNC_SUPPORTED
    };
    let bits = e.status & supported;
    if bits == 0 {
        return Err(InjectError::Unsupported(e.status));
    }
    let devsta = if correctable {
        DEVSTA_CED
    } else {
        let fatal = bits & cs.dword(at + UNCOR_SEVER) != 0;
        let ur = if bits == UNC_UNSUP { DEVSTA_URD } else { 0 };
        ur | if fatal { DEVSTA_FED } else { DEVSTA_NFED }
    };
    cs.set_bits(exp + super::express::DEVSTA, 2, devsta.into());
    // Its own registers only (a root port's own errors go through [`inject`]).
    let severity =
        record(cs, at, bits, correctable, &e.header_log).map(|fatal| match (correctable, fatal) {
            (true, _) => ErrorSeverity::Correctable,
            (false, true) => ErrorSeverity::Fatal,
            (false, false) => ErrorSeverity::NonFatal,
        });
    Ok(severity.map(|severity| AerError { severity, ..*e }))
}

/// Does an error message of `severity` passing (or sent by) the function set its Status
/// Signaled System Error (PCIe Base 6.0 §7.5.1.1.4 bit 14)? QEMU's `pcie_aer_msg_alldev()`:
/// an ERR_NONFATAL/ERR_FATAL with Command SERR# Enable set (§7.5.1.1.3 bit 8); with
/// `devctl_too` (QEMU 8.0 and later, `PortCompat::aer_msg_devctl`) also any message whose
/// Device Control reporting enable is set (§7.5.3.4 bits 0-2: Correctable, Non-Fatal, Fatal
/// Error Reporting Enable), the PCI Express capability at `exp`.
pub fn signals_system_error(
    cs: &ConfigSpace,
    exp: u16,
    severity: ErrorSeverity,
    devctl_too: bool,
) -> bool {
    let serr = cs.word(crate::pci::header::COMMAND) & crate::pci::header::COMMAND_SERR != 0;
    let enable: u16 = match severity {
        ErrorSeverity::Correctable => 1,
        ErrorSeverity::NonFatal => 2,
        ErrorSeverity::Fatal => 4,
    };
    (severity != ErrorSeverity::Correctable && serr)
        || (devctl_too && cs.word(exp + super::express::DEVCTL) & enable != 0)
}

/// After an error reached the root: the interrupt to raise given Root Error Status before it
/// (`old_status`). INTx follows the level (any enabled class received); MSI-X fires when an
/// enabled class newly became set (PCIe Base 6.0 §6.2.4.1.2).
pub fn root_signal(cs: &ConfigSpace, at: u16, old_status: u32, msi_enabled: bool) -> RootSignal {
    let cmd = cs.dword(at + ROOT_COMMAND);
    let new_status = cs.dword(at + ROOT_STATUS);
    let (before, after) = (
        enabled_classes(old_status, cmd),
        enabled_classes(new_status, cmd),
    );
    if !msi_enabled {
        return RootSignal::Intx(after != 0);
    }
    if after & !before != 0 {
        return RootSignal::Msi((new_status >> ROOT_STATUS_IRQ_SHIFT) as u16);
    }
    RootSignal::None
}
