//! Bitfield cases for `tests/c_abi.rs`: the C program zeroes a struct, sets fields through its
//! C bitfields and prints the bytes; the Rust accessors must decode exactly those values (and 0
//! for every other field), and the Rust setters must produce the same bytes.

use pcierc_xen_shim::abi::ioreq::{buf_ioreq_t, ioreq_t};

/// Checks the bytes C printed for one case.
type Check = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One struct with some fields set, and the Rust check of the bytes C produced for it.
pub struct BitCase {
    /// The C type.
    pub c_type: &'static str,
    /// `(C field, value)` assignments, in order.
    pub assigns: Vec<(&'static str, u64)>,
    /// Checks the C bytes against the Rust accessors and setters.
    pub check: Check,
}

/// A struct with C bitfields and their Rust accessors, by C field name.
trait Bits: Copy + Default + 'static {
    const C_TYPE: &'static str;
    const FIELDS: &'static [&'static str];
    fn get(&self, field: &str) -> u64;
    fn set(&mut self, field: &str, value: u64);
    fn bytes(&self) -> Vec<u8>;
    fn from_bytes(bytes: &[u8]) -> Option<Self>;
}

macro_rules! plain_bytes {
    () => {
        fn bytes(&self) -> Vec<u8> {
            // SAFETY: `Self` is a repr(C) struct of integer fields whose sizes add up to its
            // size (checked by the offset/size table of tests/c_abi.rs): no padding, so all
            // `size_of::<Self>()` bytes are initialised.
            unsafe {
                std::slice::from_raw_parts((self as *const Self).cast::<u8>(), size_of::<Self>())
            }
            .to_vec()
        }

        fn from_bytes(bytes: &[u8]) -> Option<Self> {
            (bytes.len() == size_of::<Self>()).then(|| {
                // SAFETY: the length is checked; every bit pattern is a valid integer-only
                // `Self`; read_unaligned needs no alignment.
                unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Self>()) }
            })
        }
    };
}

impl Bits for ioreq_t {
    const C_TYPE: &'static str = "ioreq_t";
    const FIELDS: &'static [&'static str] = &["state", "data_is_ptr", "dir", "df", "type"];

    fn get(&self, field: &str) -> u64 {
        match field {
            "state" => self.state().into(),
            "data_is_ptr" => self.data_is_ptr().into(),
            "dir" => self.dir().into(),
            "df" => self.df().into(),
            "type" => self.ioreq_type().into(),
            _ => panic!("no ioreq_t field {field}"),
        }
    }

    fn set(&mut self, field: &str, value: u64) {
        match field {
            "state" => self.set_state(value as u8),
            "data_is_ptr" => self.set_data_is_ptr(value != 0),
            "dir" => self.set_dir(value as u8),
            "df" => self.set_df(value != 0),
            "type" => self.type_ = value as u8,
            _ => panic!("no ioreq_t field {field}"),
        }
    }

    plain_bytes!();
}

impl Bits for buf_ioreq_t {
    const C_TYPE: &'static str = "buf_ioreq_t";
    const FIELDS: &'static [&'static str] = &["type", "pad", "dir", "size", "addr", "data"];

    fn get(&self, field: &str) -> u64 {
        match field {
            "type" => self.type_.into(),
            "pad" => self.pad().into(),
            "dir" => self.dir().into(),
            "size" => self.size_code().into(),
            "addr" => self.addr().into(),
            "data" => self.data.into(),
            _ => panic!("no buf_ioreq_t field {field}"),
        }
    }

    fn set(&mut self, field: &str, value: u64) {
        match field {
            "type" => self.type_ = value as u8,
            "pad" => self.set_pad(value as u8),
            "dir" => self.set_dir(value as u8),
            "size" => self.set_size_code(value as u8),
            "addr" => self.set_addr(value as u32),
            "data" => self.data = value as u32,
            _ => panic!("no buf_ioreq_t field {field}"),
        }
    }

    plain_bytes!();
}

fn check<T: Bits>(assigns: &[(&str, u64)], c_bytes: &[u8]) -> Result<(), String> {
    let decoded =
        T::from_bytes(c_bytes).ok_or_else(|| format!("C printed {} bytes", c_bytes.len()))?;
    for field in T::FIELDS {
        let want = assigns
            .iter()
            .rev()
            .find(|(f, _)| f == field)
            .map_or(0, |&(_, v)| v);
        let got = decoded.get(field);
        if got != want {
            return Err(format!(
                "accessor `{field}` decodes {got:#x} from C bytes {c_bytes:02x?}, C set {want:#x}"
            ));
        }
    }
    let mut ours = T::default();
    for &(field, value) in assigns {
        ours.set(field, value);
    }
    if ours.bytes() != c_bytes {
        return Err(format!(
            "Rust setters give {:02x?}, C gives {c_bytes:02x?}",
            ours.bytes()
        ));
    }
    Ok(())
}

fn case<T: Bits>(assigns: &[(&'static str, u64)]) -> BitCase {
    let owned = assigns.to_vec();
    let for_check = owned.clone();
    BitCase {
        c_type: T::C_TYPE,
        assigns: owned,
        check: Box::new(move |c| check::<T>(&for_check, c)),
    }
}

/// Every bitfield alone at its maximum, plus the samples of abi.txt.
pub fn bit_cases() -> Vec<BitCase> {
    vec![
        case::<ioreq_t>(&[("state", 0xf)]),
        case::<ioreq_t>(&[("state", 3)]),
        case::<ioreq_t>(&[("data_is_ptr", 1)]),
        case::<ioreq_t>(&[("dir", 1)]),
        case::<ioreq_t>(&[("df", 1)]),
        case::<ioreq_t>(&[("type", 0xff)]),
        // READY, READ, PCI_CONFIG: byte 30 = 0x21, byte 31 = 0x02.
        case::<ioreq_t>(&[("state", 1), ("dir", 1), ("type", 2)]),
        // IORESP_READY | data_is_ptr | df, WRITE: byte 30 = 0x53.
        case::<ioreq_t>(&[("state", 3), ("data_is_ptr", 1), ("dir", 0), ("df", 1)]),
        case::<buf_ioreq_t>(&[("type", 0xff)]),
        case::<buf_ioreq_t>(&[("pad", 1)]),
        case::<buf_ioreq_t>(&[("dir", 1)]),
        case::<buf_ioreq_t>(&[("size", 3)]),
        case::<buf_ioreq_t>(&[("addr", 0xfffff)]),
        case::<buf_ioreq_t>(&[("data", 0xffff_ffff)]),
        // COPY write, size code 2, addr 0xa0123, data 0xdeadbeef = 01 38 12 a0 ef be ad de.
        case::<buf_ioreq_t>(&[
            ("type", 1),
            ("dir", 0),
            ("size", 2),
            ("addr", 0xa0123),
            ("data", 0xdead_beef),
        ]),
    ]
}
