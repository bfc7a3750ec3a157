//! `pcie-aer-inject-error`: QEMU's HMP `pcie_aer_inject_error` as a QMP command.
//!
//! Arguments (`-a`/`-c` and the positional dwords of the HMP command become members, QAPI
//! style with dashes):
//!
//! | member | type | meaning |
//! |---|---|---|
//! | `id` | string | a root or switch port id, a `pcie-pci-bridge` id, or the id of a device behind a port |
//! | `error` | string or integer | a name from QEMU's table ([`AER_ERROR_NAMES`], e.g. `"UNSUP"`, `"RCVR"`), or a raw status value (`0x100000`, `"0x100000"`, `"1048576"`) |
//! | `correctable` | bool, optional | a raw status is correctable (HMP `-c`); with a name the table decides, and giving it is an error, as in QEMU |
//! | `advisory-non-fatal` | bool, optional | may be reported as Advisory Non-Fatal (HMP `-a`) |
//! | `header` | up to 4 uint32, optional | TLP header to log (HMP `header0`..`header3`), as the Header Log register values (QEMU stores HMP's dwords byte-swapped, docs/qemu-compat.md) |
//! | `prefix` | up to 4 uint32, optional | TLP prefix to log (HMP `prefix0`..`prefix3`) |
//! | `fatal` | bool, optional | pcierc extension: override the severity of an uncorrectable error |

use super::args::{bad_type, Args, QmpError};
use crate::pci::caps::aer::UNC_SEVERITY_DEFAULT;
use crate::pci::ErrorSeverity;
use crate::topology::addr::parse_uint;

/// One entry of QEMU's `pcie_aer_error_list` (the Linux aer-inject tool's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AerErrorName {
    /// The name, as QEMU spells it (case-sensitive).
    pub name: &'static str,
    /// The Uncorrectable or Correctable Error Status bit (PCIe Base 6.0 §7.8.4.2, §7.8.4.5).
    pub status: u32,
    /// A correctable error.
    pub correctable: bool,
}

const fn unc(name: &'static str, status: u32) -> AerErrorName {
    AerErrorName {
        name,
        status,
        correctable: false,
    }
}

const fn cor(name: &'static str, status: u32) -> AerErrorName {
    AerErrorName {
        name,
        status,
        correctable: true,
    }
}

/// QEMU 7.2's `pcie_aer_error_list` (hw/pci/pcie_aer.c), in its order.
pub const AER_ERROR_NAMES: &[AerErrorName] = &[
    unc("DLP", 0x0000_0010),
    unc("SDN", 0x0000_0020),
    unc("POISON_TLP", 0x0000_1000),
    unc("FCP", 0x0000_2000),
    unc("COMP_TIME", 0x0000_4000),
    unc("COMP_ABORT", 0x0000_8000),
    unc("UNX_COMP", 0x0001_0000),
    unc("RX_OVER", 0x0002_0000),
    unc("MALF_TLP", 0x0004_0000),
    unc("ECRC", 0x0008_0000),
    unc("UNSUP", 0x0010_0000),
    unc("ACSV", 0x0020_0000),
    unc("INTN", 0x0040_0000),
    unc("MCBTLP", 0x0080_0000),
    unc("ATOP_EBLOCKED", 0x0100_0000),
    unc("TLP_PRF_BLOCKED", 0x0200_0000),
    cor("RCVR", 0x0000_0001),
    cor("BAD_TLP", 0x0000_0040),
    cor("BAD_DLLP", 0x0000_0080),
    cor("REP_ROLL", 0x0000_0100),
    cor("REP_TIMER", 0x0000_1000),
    cor("ADV_NONFATAL", 0x0000_2000),
    cor("INTERNAL", 0x0000_4000),
    cor("HL_OVERFLOW", 0x0000_8000),
];

/// Look a name up in QEMU's table.
pub fn lookup(name: &str) -> Option<&'static AerErrorName> {
    AER_ERROR_NAMES.iter().find(|e| e.name == name)
}

/// A validated `pcie-aer-inject-error` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AerInject {
    /// The target: a root port id or a device id.
    pub id: String,
    /// The `error` argument as given (a name, or the number's text), for logs.
    pub error: String,
    /// The status bits: from the table for a name, else the number.
    pub status_bits: u32,
    /// Correctable (Correctable Error Status) rather than uncorrectable.
    pub correctable: bool,
    /// HMP `-a`: an uncorrectable non-fatal error may be handled as Advisory Non-Fatal.
    pub advisory_non_fatal: bool,
    /// pcierc extension: force fatal / non-fatal for an uncorrectable error; `None` lets the
    /// severity register (a root port's own error) or the default severity decide.
    pub fatal: Option<bool>,
    /// TLP header to log (header valid when present).
    pub header: Option<[u32; 4]>,
    /// TLP prefix to log (prefix present when present).
    pub prefix: Option<[u32; 4]>,
}

impl AerInject {
    /// The severity to signal for an error from a function whose own Severity register pcierc
    /// does not hold (a device served by another emulator): the override, else the PCIe
    /// default severity (QEMU's `pcie_aer_uncor_default_severity()`). A root port's own errors
    /// take their severity from its Uncorrectable Error Severity register instead.
    pub fn severity(&self) -> ErrorSeverity {
        if self.correctable {
            return ErrorSeverity::Correctable;
        }
        match self
            .fatal
            .unwrap_or(self.status_bits & UNC_SEVERITY_DEFAULT != 0)
        {
            true => ErrorSeverity::Fatal,
            false => ErrorSeverity::NonFatal,
        }
    }

    /// Parse and check the arguments in schema order.
    pub(crate) fn from_args(args: &mut Args) -> Result<Self, QmpError> {
        let id = args.string("id")?;
        let (error, raw) = match args.take("error") {
            None => return Err(super::args::missing("error")),
            Some(serde_json::Value::String(s)) => (s.clone(), Raw::Text(s)),
            Some(serde_json::Value::Number(n)) => (n.to_string(), Raw::Number(n)),
            Some(_) => return Err(bad_type("error", "string or integer")),
        };
        let correctable_arg = args.opt_bool("correctable")?;
        let advisory_non_fatal = args.opt_bool("advisory-non-fatal")?.unwrap_or(false);
        let header = args.opt_u32_list("header", 4)?.map(dwords);
        let prefix = args.opt_u32_list("prefix", 4)?.map(dwords);
        let fatal = args.opt_bool("fatal")?;
        let named = match &raw {
            Raw::Text(s) => lookup(s),
            Raw::Number(_) => None,
        };
        let (status_bits, correctable) = match named {
            Some(e) => {
                if correctable_arg.is_some() {
                    return Err(QmpError::generic(format!(
                        "'correctable' is only valid with a numeric error status ('{}' is {})",
                        e.name,
                        if e.correctable {
                            "correctable"
                        } else {
                            "uncorrectable"
                        }
                    )));
                }
                (e.status, e.correctable)
            }
            None => {
                let n = match &raw {
                    Raw::Text(s) => parse_uint(s).ok(),
                    Raw::Number(n) => n.as_u64(),
                };
                let n = n.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
                    let names: Vec<&str> = AER_ERROR_NAMES.iter().map(|e| e.name).collect();
                    QmpError::generic(format!(
                        "invalid error status value '{error}' (expected a 32-bit number or one of {})",
                        names.join(", ")
                    ))
                })?;
                if n == 0 {
                    return Err(QmpError::generic(
                        "invalid error status value '0': no error bit is set",
                    ));
                }
                (n, correctable_arg.unwrap_or(false))
            }
        };
        if correctable && fatal.is_some() {
            return Err(QmpError::generic(
                "'fatal' is only valid for uncorrectable errors",
            ));
        }
        Ok(AerInject {
            id,
            error,
            status_bits,
            correctable,
            advisory_non_fatal,
            fatal,
            header,
            prefix,
        })
    }
}

enum Raw {
    Text(String),
    Number(serde_json::Number),
}

/// Up to four dwords, zero-filled (as QEMU's `qdict_get_try_int(.., 0)`).
fn dwords(v: Vec<u32>) -> [u32; 4] {
    let mut out = [0; 4];
    for (o, d) in out.iter_mut().zip(v) {
        *o = d;
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;

    /// The command's arguments, or the QMP error description (the user-visible contract).
    fn parse(v: Value) -> Result<AerInject, QmpError> {
        let Value::Object(m) = v else {
            panic!("arguments must be an object");
        };
        let mut a = Args::new(m);
        let r = AerInject::from_args(&mut a)?;
        a.finish()?;
        Ok(r)
    }

    #[test]
    fn table_matches_the_aer_register_masks() {
        use crate::pci::caps::aer::{COR_SUPPORTED, UNC_SUPPORTED};
        for e in AER_ERROR_NAMES {
            assert_eq!(e.status.count_ones(), 1, "{}", e.name);
            let supported = if e.correctable {
                COR_SUPPORTED
            } else {
                UNC_SUPPORTED
            };
            assert_ne!(e.status & supported, 0, "{} is not a supported bit", e.name);
        }
        assert_eq!(AER_ERROR_NAMES.len(), 24);
    }

    #[test]
    fn names_resolve_from_qemus_table() {
        let r = parse(json!({"id": "rp1", "error": "UNSUP"})).unwrap();
        assert_eq!((r.status_bits, r.correctable), (0x10_0000, false));
        assert_eq!(r.severity(), ErrorSeverity::NonFatal);
        let r = parse(json!({"id": "rp1", "error": "MALF_TLP", "header": [1, 2]})).unwrap();
        assert_eq!(r.severity(), ErrorSeverity::Fatal, "default severity");
        assert_eq!(r.header, Some([1, 2, 0, 0]));
        let r = parse(json!({"id": "rp1", "error": "MALF_TLP", "fatal": false})).unwrap();
        assert_eq!(r.severity(), ErrorSeverity::NonFatal, "override");
        let r = parse(json!({"id": "n", "error": "RCVR", "advisory-non-fatal": true})).unwrap();
        assert_eq!(
            (r.status_bits, r.correctable, r.advisory_non_fatal),
            (1, true, true)
        );
        assert_eq!(r.severity(), ErrorSeverity::Correctable);
    }

    #[test]
    fn numbers_as_qemus_strtoul_or_json_integers() {
        for (error, bits) in [
            (json!("0x2000"), 0x2000),
            (json!("8192"), 0x2000),
            (json!(8192), 0x2000),
            (json!("0xffffffff"), u32::MAX),
        ] {
            let r = parse(json!({"id": "rp1", "error": error, "correctable": true})).unwrap();
            assert_eq!(
                (r.status_bits, r.correctable, r.error.is_empty()),
                (bits, true, false)
            );
        }
        let r = parse(json!({"id": "rp1", "error": "0x10"})).unwrap();
        assert!(!r.correctable, "raw values default to uncorrectable");
    }

    #[test]
    fn refusals_say_why() {
        let cases = [
            (json!({"error": "UNSUP"}), "Parameter 'id' is missing"),
            (json!({"id": "rp1"}), "Parameter 'error' is missing"),
            (
                json!({"id": "rp1", "error": true}),
                "Invalid parameter type for 'error', expected: string or integer",
            ),
            (
                json!({"id": "rp1", "error": "UR"}),
                "invalid error status value 'UR' (expected a 32-bit number or one of DLP, SDN,",
            ),
            (
                json!({"id": "rp1", "error": "0x100000000"}),
                "invalid error status value '0x100000000'",
            ),
            (
                json!({"id": "rp1", "error": -1}),
                "invalid error status value '-1'",
            ),
            (json!({"id": "rp1", "error": 0}), "no error bit is set"),
            (
                json!({"id": "rp1", "error": "RCVR", "correctable": true}),
                "'correctable' is only valid with a numeric error status ('RCVR' is correctable)",
            ),
            (
                json!({"id": "rp1", "error": "RCVR", "fatal": true}),
                "'fatal' is only valid for uncorrectable errors",
            ),
            (
                json!({"id": "rp1", "error": "DLP", "header": [1, 2, 3, 4, 5]}),
                "Parameter 'header' expects at most 4 elements",
            ),
            (
                json!({"id": "rp1", "error": "DLP", "prefix": ["a"]}),
                "Invalid parameter type for 'prefix[0]', expected: integer",
            ),
            (
                json!({"id": "rp1", "error": "DLP", "advisory_non_fatal": true}),
                "Parameter 'advisory_non_fatal' is unexpected",
            ),
        ];
        for (args, want) in cases {
            let got = parse(args.clone())
                .err()
                .map(|e| e.desc)
                .unwrap_or_default();
            assert!(got.contains(want), "{args}: got '{got}', want '{want}'");
        }
    }
}
