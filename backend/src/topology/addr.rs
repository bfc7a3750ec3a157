//! Parsing of QEMU-style numbers and PCI addresses used by topology files and `--device`.

use thiserror::Error;

/// Why a number, size or PCI address does not parse; the message quotes the input.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseError {
    /// A PCI address with an empty slot or function number (`""`, `1.`).
    #[error("bad PCI address '{0}': empty number")]
    EmptyAddress(String),
    /// A PCI address whose slot or function is not hexadecimal.
    #[error("bad PCI address '{0}': not hex")]
    AddressNotHex(String),
    /// A PCI address beyond device 0x1f or function 7.
    #[error("bad PCI address '{0}': device must be 0-0x1f and function 0-7")]
    AddressOutOfRange(String),
    /// Not a decimal, `0x` hex or `0` octal number.
    #[error("'{0}' is not a number")]
    NotANumber(String),
    /// A size with a suffix other than `b`, `k`, `M`, `G`, `T`.
    #[error("'{value}': unknown size suffix '{suffix}'")]
    SizeSuffix {
        /// The size as given.
        value: String,
        /// The suffix.
        suffix: char,
    },
    /// A size beyond 64 bits.
    #[error("'{0}' is too large")]
    SizeTooLarge(String),
}

/// A device/function number on a bus: device 0-31, function 0-7.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevFn(pub u8);

impl DevFn {
    /// Build from device and function; `None` when out of range.
    pub fn new(device: u8, function: u8) -> Option<Self> {
        (device < 32 && function < 8).then_some(DevFn(device << 3 | function))
    }
    /// Device number (0-31).
    pub fn device(self) -> u8 {
        self.0 >> 3
    }
    /// Function number (0-7).
    pub fn function(self) -> u8 {
        self.0 & 7
    }
}

impl std::fmt::Display for DevFn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02x}.{}", self.device(), self.function())
    }
}

/// Parse QEMU's `addr` property syntax: `SLOT[.FN]` in hex, with an optional `0x` prefix
/// (`0x1c.0`, `1c`, `2.3`), as QEMU's PCI devfn property parser accepts.
pub fn parse_devfn(s: &str) -> Result<DevFn, ParseError> {
    let (slot, func) = match s.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let hex = |t: &str| {
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        if t.is_empty() {
            return Err(ParseError::EmptyAddress(s.to_string()));
        }
        u32::from_str_radix(t, 16).map_err(|_| ParseError::AddressNotHex(s.to_string()))
    };
    let device = hex(slot)?;
    let function = func.map(hex).transpose()?.unwrap_or(0);
    if device > 31 || function > 7 {
        return Err(ParseError::AddressOutOfRange(s.to_string()));
    }
    // Both fit in u8 after the range check above.
    Ok(DevFn((device as u8) << 3 | function as u8))
}

/// Parse an unsigned integer the way QEMU's integer properties do: decimal, `0x` hex or `0` octal.
pub fn parse_uint(s: &str) -> Result<u64, ParseError> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u64::from_str_radix(h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u64::from_str_radix(&s[1..], 8)
    } else {
        s.parse::<u64>()
    };
    r.map_err(|_| ParseError::NotANumber(s.to_string()))
}

/// Parse a QEMU size property: a number with an optional `k`/`K`, `M`, `G`, `T` suffix
/// (powers of 1024) or `b`/`B` (bytes).
pub fn parse_size(s: &str) -> Result<u64, ParseError> {
    let (num, mult): (&str, u64) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() && !s.starts_with("0x") => {
            let m = match c {
                'b' | 'B' => 1,
                'k' | 'K' => 1 << 10,
                'm' | 'M' => 1 << 20,
                'g' | 'G' => 1 << 30,
                't' | 'T' => 1 << 40,
                _ => {
                    return Err(ParseError::SizeSuffix {
                        value: s.to_string(),
                        suffix: c,
                    })
                }
            };
            (&s[..i], m)
        }
        _ => (s, 1),
    };
    let n = parse_uint(num)?;
    n.checked_mul(mult)
        .ok_or_else(|| ParseError::SizeTooLarge(s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devfn_forms() {
        assert_eq!(parse_devfn("0x1c.0"), Ok(DevFn(0xe0)));
        assert_eq!(parse_devfn("1c.1"), Ok(DevFn(0xe1)));
        assert_eq!(parse_devfn("2"), Ok(DevFn(0x10)));
        assert_eq!(
            parse_devfn("0x2.0x3").map(|d| d.to_string()),
            Ok("02.3".into())
        );
        let e = |s: &str| ParseError::AddressOutOfRange(s.into());
        assert_eq!(parse_devfn("20.0"), Err(e("20.0")));
        assert_eq!(parse_devfn("1.8"), Err(e("1.8")));
        assert_eq!(
            parse_devfn("zz"),
            Err(ParseError::AddressNotHex("zz".into()))
        );
        assert_eq!(parse_devfn(""), Err(ParseError::EmptyAddress("".into())));
        assert_eq!(
            parse_devfn("1."),
            Err(ParseError::EmptyAddress("1.".into()))
        );
    }

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(parse_uint("16"), Ok(16));
        assert_eq!(parse_uint("0x10"), Ok(16));
        assert_eq!(parse_uint("010"), Ok(8));
        assert_eq!(parse_uint("0"), Ok(0));
        assert_eq!(parse_uint("-1"), Err(ParseError::NotANumber("-1".into())));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert!(matches!(
            parse_size("1Q"),
            Err(ParseError::SizeSuffix { suffix: 'Q', .. })
        ));
        assert!(matches!(
            parse_size("99999999999T"),
            Err(ParseError::SizeTooLarge(_))
        ));
    }
}
