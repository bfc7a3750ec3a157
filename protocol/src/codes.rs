//! The code enums of the wire format (request codes, statuses, roles, kinds), each declared once
//! with [`wire_enum!`](crate::wire_enum): the enum, its conversions from and to the raw integer
//! and its variant names come from that one declaration.

/// A raw value that is not one of the codes of the enum `what` names.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, thiserror::Error)]
#[error("unknown {what} {raw}")]
pub struct UnknownCode<R> {
    /// The enum that has no such code (its type name, e.g. `FrontendReq`).
    pub what: &'static str,
    /// The value received.
    pub raw: R,
}

/// Declare a code enum of the wire format: a fieldless `#[repr($repr)]` enum whose variants all
/// have explicit values, and with it
///
/// - `TryFrom<$repr>` with the error [`UnknownCode<$repr>`](UnknownCode) for values that are no
///   variant, and `From<Self> for $repr`;
/// - `raw()`, the value on the wire; `name()`, the variant's name; `ALL`, every variant in
///   declaration order;
/// - with `=> ("NAME", "text")` after every variant: `errno_name()` and `Display` (`text`);
///   [`crate::Status`] uses it for its errno names and messages.
///
/// Attributes before `pub enum` (documentation, extra derives) go onto the enum, which always
/// derives `Copy, Clone, Debug, PartialEq, Eq, Hash`.
#[macro_export]
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr => ($errno:literal, $text:literal) ),+ $(,)?
        }
    ) => {
        $crate::wire_enum! {
            $(#[$meta])*
            $vis enum $name : $repr {
                $( $(#[$vmeta])* $variant = $value ),+
            }
        }

        impl $name {
            /// The errno macro's name (`OK` for success), as C code and `strerror` users know it.
            pub const fn errno_name(self) -> &'static str {
                match self {
                    $( Self::$variant => $errno ),+
                }
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                let text = match self {
                    $( Self::$variant => $text ),+
                };
                write!(f, "{text} (errno {})", self.raw())
            }
        }
    };
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident : $repr:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $value:expr ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[repr($repr)]
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant = $value ),+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [Self] = &[ $( Self::$variant ),+ ];

            /// The value on the wire.
            pub const fn raw(self) -> $repr {
                self as $repr
            }

            /// The variant's name, as the specification (`docs/protocol.md`) spells it.
            pub const fn name(self) -> &'static str {
                match self {
                    $( Self::$variant => stringify!($variant) ),+
                }
            }
        }

        impl ::std::convert::TryFrom<$repr> for $name {
            type Error = $crate::codes::UnknownCode<$repr>;
            fn try_from(raw: $repr) -> ::std::result::Result<Self, Self::Error> {
                $(
                    if raw == $value {
                        return ::std::result::Result::Ok(Self::$variant);
                    }
                )+
                ::std::result::Result::Err($crate::codes::UnknownCode {
                    what: stringify!($name),
                    raw,
                })
            }
        }

        impl ::std::convert::From<$name> for $repr {
            fn from(code: $name) -> $repr {
                code.raw()
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use crate::{
        AddressSpace, BackendReq, ErrorSeverityCode, FrontendReq, FrontendRole, FunctionKind,
        RangeKind, ResetReason, Status,
    };

    /// Every variant converts to its raw value and back, its name is its `Debug` form, and the
    /// values around the known ones are refused with the raw value kept.
    macro_rules! round_trip {
        ($($t:ty),+) => {$(
            for &c in <$t>::ALL {
                assert_eq!(<$t>::try_from(c.raw()), Ok(c));
                assert_eq!(c.name(), format!("{c:?}"));
            }
            let known: Vec<_> = <$t>::ALL.iter().map(|c| c.raw()).collect();
            for raw in (0..=100).chain([<$t>::ALL[0].raw().wrapping_sub(1)]) {
                let got = <$t>::try_from(raw);
                assert_eq!(got.is_ok(), known.contains(&raw), "{} {raw}", stringify!($t));
                if let Err(e) = got {
                    assert_eq!((e.raw, e.what), (raw, stringify!($t)));
                }
            }
        )+};
    }

    #[test]
    fn codes_round_trip() {
        round_trip!(
            FrontendReq,
            BackendReq,
            Status,
            FrontendRole,
            ErrorSeverityCode,
            ResetReason,
            FunctionKind,
            AddressSpace,
            RangeKind
        );
    }

    #[test]
    fn wire_values_are_the_specifications() {
        assert_eq!(FrontendReq::ALL.len(), 23);
        assert!(FrontendReq::ALL
            .iter()
            .enumerate()
            .all(|(i, c)| c.raw() as usize == i + 1));
        assert_eq!(BackendReq::ALL.len(), 9);
        assert_eq!(u32::from(BackendReq::FunctionReset), 8);
        assert_eq!(u32::from(BackendReq::LayoutDelta), 9);
        assert_eq!(Status::Invalid.raw(), libc::EINVAL);
        assert_eq!(Status::Exists.errno_name(), "EEXIST");
        assert_eq!(Status::Ok.errno_name(), "OK");
        assert_eq!(Status::Invalid.to_string(), "invalid argument (errno 22)");
        assert_eq!(
            FrontendReq::try_from(99).unwrap_err().to_string(),
            "unknown FrontendReq 99"
        );
    }
}
