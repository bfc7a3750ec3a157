//! The `abi` module against the real C headers: a C program generated from the tables below is
//! compiled against Debian's libxen-dev headers (`/usr/include/xen/...`) with the system `cc`;
//! it prints every size, alignment, offset and constant the Rust side uses, and the bytes of
//! structs whose bitfields it set, and each is compared with the Rust value.
//!
//! Without a C compiler or the headers the test prints `SKIP:` and passes, unless
//! `PCIERC_REQUIRE_TOOLS` is set (as in CI), in which case it fails.

use pcierc_xen_shim::abi::dm_op::*;
use pcierc_xen_shim::abi::evtchn::*;
use pcierc_xen_shim::abi::hvm::*;
use pcierc_xen_shim::abi::ioreq::*;
use pcierc_xen_shim::abi::privcmd::*;
use pcierc_xen_shim::abi::*;
use std::collections::BTreeMap;
use std::mem::{align_of, offset_of, size_of};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Headers and defines as in the reference `abi.c`: `__XEN_TOOLS__` for
/// `HVM_IOREQSRV_BUFIOREQ_*` (and `__HYPERVISOR_event_channel_op` = 32); `<stdint.h>` before
/// `<xen/xen.h>`; `<stddef.h>`, `<sys/ioctl.h>` and `<xen/xen.h>` before `<xen/sys/*.h>`.
const PRELUDE: &str = "#define __XEN_TOOLS__ 1
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <xen/xen.h>
#include <xen/memory.h>
#include <xen/hvm/hvm_op.h>
#include <xen/hvm/hvm_info_table.h>
#include <xen/hvm/dm_op.h>
#include <xen/hvm/ioreq.h>
#include <xen/sys/privcmd.h>
#include <xen/sys/evtchn.h>
";

/// A number both sides must agree on: a C expression and the Rust value.
struct Num {
    c: String,
    rust: u64,
}

fn num(c: String, rust: impl TryInto<u64>) -> Num {
    Num {
        c,
        rust: rust
            .try_into()
            .unwrap_or_else(|_| panic!("value does not fit u64")),
    }
}

/// The C name of a Rust field (`type_` is `type`).
fn c_field(rust: &str) -> &str {
    rust.strip_suffix('_').unwrap_or(rust)
}

fn field_size<T, F>(_: fn(&T) -> &F) -> usize {
    size_of::<F>()
}

/// `sizeof` and `_Alignof` of a type. The C name is the Rust name unless given.
macro_rules! ty {
    ($rust:ident) => { ty!($rust => stringify!($rust)) };
    ($rust:ident => $c:expr) => {
        vec![num(format!("sizeof({})", $c), size_of::<$rust>()), num(format!("_Alignof({})", $c), align_of::<$rust>())]
    };
}

/// `offsetof` and `sizeof` of each listed field.
macro_rules! fields {
    ($rust:ident $(=> $c:tt)?: $($f:ident),+) => {{
        let c = [$($c,)? stringify!($rust)][0];
        vec![$(
            num(format!("offsetof({}, {})", c, c_field(stringify!($f))), offset_of!($rust, $f)),
            num(format!("sizeof((({} *)0)->{})", c, c_field(stringify!($f))), field_size(|s: &$rust| &s.$f)),
        )+]
    }};
}

/// Constants and function-like macros, written the same in both languages.
macro_rules! consts {
    ($($e:expr),+ $(,)?) => { vec![$(num(stringify!($e).to_owned(), $e)),+] };
}

fn numbers() -> Vec<Num> {
    let dm = "struct xen_dm_op";
    let mut v = Vec::new();
    // xen.h and the xen-sys types.
    v.extend(ty!(domid_t));
    v.extend(ty!(evtchn_port_t));
    v.extend(ty!(xen_pfn_t));
    v.extend(ty!(ioservid_t));
    v.extend(consts!(
        DOMID_SELF,
        DOMID_INVALID,
        __HYPERVISOR_dm_op,
        __HYPERVISOR_memory_op
    ));
    v.extend(consts!(__HYPERVISOR_event_channel_op, HVM_MAX_VCPUS));
    // hvm/ioreq.h
    v.extend(consts!(IOREQ_READ, IOREQ_WRITE, IOREQ_BUFFER_SLOT_NUM));
    v.extend(consts!(
        STATE_IOREQ_NONE,
        STATE_IOREQ_READY,
        STATE_IOREQ_INPROCESS,
        STATE_IORESP_READY
    ));
    v.extend(consts!(
        IOREQ_TYPE_PIO,
        IOREQ_TYPE_COPY,
        IOREQ_TYPE_PCI_CONFIG
    ));
    v.extend(consts!(IOREQ_TYPE_TIMEOFFSET, IOREQ_TYPE_INVALIDATE));
    v.extend(ty!(ioreq_t));
    v.extend(fields!(ioreq_t: addr, data, count, size, vp_eport, _pad0, type_));
    v.extend(ty!(shared_iopage_t));
    v.extend(fields!(shared_iopage_t: vcpu_ioreq));
    v.extend(ty!(buf_ioreq_t));
    v.extend(fields!(buf_ioreq_t: type_, data));
    v.extend(ty!(buffered_iopage_t));
    v.extend(fields!(buffered_iopage_t: read_pointer, write_pointer, buf_ioreq));
    // hvm/hvm_op.h
    v.extend(consts!(
        HVM_IOREQSRV_BUFIOREQ_OFF,
        HVM_IOREQSRV_BUFIOREQ_LEGACY,
        HVM_IOREQSRV_BUFIOREQ_ATOMIC
    ));
    // hvm/dm_op.h
    v.extend(consts!(
        XEN_DMOP_create_ioreq_server,
        XEN_DMOP_get_ioreq_server_info,
        XEN_DMOP_nr_vcpus
    ));
    v.extend(consts!(
        XEN_DMOP_map_io_range_to_ioreq_server,
        XEN_DMOP_unmap_io_range_from_ioreq_server
    ));
    v.extend(consts!(
        XEN_DMOP_set_ioreq_server_state,
        XEN_DMOP_destroy_ioreq_server
    ));
    v.extend(consts!(
        XEN_DMOP_set_pci_intx_level,
        XEN_DMOP_inject_msi,
        XEN_DMOP_no_gfns
    ));
    v.extend(consts!(
        XEN_DMOP_IO_RANGE_PORT,
        XEN_DMOP_IO_RANGE_MEMORY,
        XEN_DMOP_IO_RANGE_PCI
    ));
    v.extend(consts!(
        XEN_DMOP_PCI_SBDF(0, 0, 3, 0),
        XEN_DMOP_PCI_SBDF(0, 1, 2, 3)
    ));
    v.extend(consts!(
        XEN_DMOP_PCI_SBDF(0x1234, 0xab, 0x1f, 7),
        XEN_DMOP_PCI_SBDF(0, 0x1ff, 0x3f, 0xf)
    ));
    v.extend(ty!(xen_dm_op => dm));
    v.extend(fields!(xen_dm_op => dm: op, pad, u));
    let members: [(&str, usize); 9] = [
        (
            "create_ioreq_server",
            size_of::<xen_dm_op_create_ioreq_server_t>(),
        ),
        (
            "get_ioreq_server_info",
            size_of::<xen_dm_op_get_ioreq_server_info_t>(),
        ),
        (
            "map_io_range_to_ioreq_server",
            size_of::<xen_dm_op_ioreq_server_range_t>(),
        ),
        (
            "unmap_io_range_from_ioreq_server",
            size_of::<xen_dm_op_ioreq_server_range_t>(),
        ),
        (
            "set_ioreq_server_state",
            size_of::<xen_dm_op_set_ioreq_server_state_t>(),
        ),
        (
            "destroy_ioreq_server",
            size_of::<xen_dm_op_destroy_ioreq_server_t>(),
        ),
        (
            "set_pci_intx_level",
            size_of::<xen_dm_op_set_pci_intx_level_t>(),
        ),
        ("inject_msi", size_of::<xen_dm_op_inject_msi_t>()),
        ("nr_vcpus", size_of::<xen_dm_op_nr_vcpus_t>()),
    ];
    for (m, size) in members {
        v.push(num(
            format!("offsetof({dm}, u.{m})"),
            offset_of!(xen_dm_op, u),
        ));
        v.push(num(format!("sizeof((({dm} *)0)->u.{m})"), size));
    }
    v.extend(ty!(xen_dm_op_create_ioreq_server_t));
    v.extend(fields!(xen_dm_op_create_ioreq_server_t: handle_bufioreq, pad, id));
    v.extend(ty!(xen_dm_op_get_ioreq_server_info_t));
    v.extend(fields!(xen_dm_op_get_ioreq_server_info_t: id, flags, bufioreq_port, ioreq_gfn, bufioreq_gfn));
    v.extend(ty!(xen_dm_op_ioreq_server_range_t));
    v.extend(fields!(xen_dm_op_ioreq_server_range_t: id, pad, type_, start, end));
    v.extend(ty!(xen_dm_op_set_ioreq_server_state_t));
    v.extend(fields!(xen_dm_op_set_ioreq_server_state_t: id, enabled, pad));
    v.extend(ty!(xen_dm_op_destroy_ioreq_server_t));
    v.extend(fields!(xen_dm_op_destroy_ioreq_server_t: id, pad));
    v.extend(ty!(xen_dm_op_set_pci_intx_level_t));
    v.extend(fields!(xen_dm_op_set_pci_intx_level_t: domain, bus, device, intx, level));
    v.extend(ty!(xen_dm_op_inject_msi_t));
    v.extend(fields!(xen_dm_op_inject_msi_t: data, pad, addr));
    v.extend(ty!(xen_dm_op_nr_vcpus_t));
    v.extend(fields!(xen_dm_op_nr_vcpus_t: vcpus));
    // memory.h
    v.extend(consts!(
        XENMEM_resource_ioreq_server,
        XENMEM_resource_ioreq_server_frame_bufioreq
    ));
    v.extend(consts!(
        XENMEM_resource_ioreq_server_frame_ioreq(0),
        XENMEM_resource_ioreq_server_frame_ioreq(1)
    ));
    // sys/privcmd.h
    v.extend(ty!(privcmd_dm_op_buf_t));
    v.extend(fields!(privcmd_dm_op_buf_t: uptr, size));
    v.extend(ty!(privcmd_dm_op_t));
    v.extend(fields!(privcmd_dm_op_t: dom, num, ubufs));
    v.extend(ty!(privcmd_mmap_resource_t));
    v.extend(fields!(privcmd_mmap_resource_t: dom, type_, id, idx, num, addr));
    v.extend(ty!(privcmd_mmapbatch_v2_t));
    v.extend(fields!(privcmd_mmapbatch_v2_t: num, dom, addr, arr, err));
    v.extend(consts!(
        IOCTL_PRIVCMD_DM_OP,
        IOCTL_PRIVCMD_MMAP_RESOURCE,
        IOCTL_PRIVCMD_MMAPBATCH_V2
    ));
    v.extend(consts!(IOCTL_PRIVCMD_RESTRICT, IOCTL_PRIVCMD_UNIMPLEMENTED));
    // sys/evtchn.h
    v.extend(ty!(ioctl_evtchn_bind_interdomain => "struct ioctl_evtchn_bind_interdomain"));
    v.extend(ty!(ioctl_evtchn_unbind => "struct ioctl_evtchn_unbind"));
    v.extend(ty!(ioctl_evtchn_notify => "struct ioctl_evtchn_notify"));
    v.extend(ty!(ioctl_evtchn_restrict_domid => "struct ioctl_evtchn_restrict_domid"));
    v.extend(fields!(ioctl_evtchn_bind_interdomain => "struct ioctl_evtchn_bind_interdomain": remote_domain, remote_port));
    v.extend(fields!(ioctl_evtchn_unbind => "struct ioctl_evtchn_unbind": port));
    v.extend(fields!(ioctl_evtchn_notify => "struct ioctl_evtchn_notify": port));
    v.extend(fields!(ioctl_evtchn_restrict_domid => "struct ioctl_evtchn_restrict_domid": domid));
    v.extend(consts!(
        IOCTL_EVTCHN_BIND_INTERDOMAIN,
        IOCTL_EVTCHN_UNBIND,
        IOCTL_EVTCHN_NOTIFY
    ));
    v.extend(consts!(IOCTL_EVTCHN_RESET, IOCTL_EVTCHN_RESTRICT_DOMID));
    v
}

#[path = "c_abi/bitfields.rs"]
mod bitfields;
use bitfields::{bit_cases, BitCase};

/// The C program: one `expr<TAB>value` line per number, one `bitsN<TAB>hex` line per case.
fn c_source(nums: &[Num], cases: &[BitCase]) -> String {
    let mut s = String::from(PRELUDE);
    s += "static void dump(const char *key, const void *p, size_t n)\n{\n";
    s += "    const unsigned char *b = p;\n    printf(\"%s\\t\", key);\n";
    s += "    for (size_t i = 0; i < n; i++)\n        printf(\"%02x\", b[i]);\n    printf(\"\\n\");\n}\n\n";
    s += "int main(void)\n{\n";
    for n in nums {
        s += &format!(
            "    printf(\"%s\\t%llu\\n\", \"{0}\", (unsigned long long)({0}));\n",
            n.c
        );
    }
    for (i, case) in cases.iter().enumerate() {
        s += &format!("    {{ {} r; memset(&r, 0, sizeof(r));", case.c_type);
        for (field, value) in &case.assigns {
            s += &format!(" r.{field} = {value:#x};");
        }
        s += &format!(" dump(\"bits{i}\", &r, sizeof(r)); }}\n");
    }
    s + "    return 0;\n}\n"
}

fn cc() -> String {
    std::env::var("CC").unwrap_or_else(|_| "cc".to_owned())
}

/// Compiles `src` to `exe`; `Err` holds the reason (no compiler, or the compiler's errors).
fn compile(src: &Path, exe: &Path) -> Result<(), String> {
    let out = Command::new(cc())
        .args(["-std=gnu11", "-Wall", "-Wextra", "-O0", "-o"])
        .arg(exe)
        .arg(src)
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", cc()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn rust_abi_matches_the_c_headers() {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("c_abi");
    std::fs::create_dir_all(&dir).expect("tmp dir");

    // Are a compiler and the headers there at all?
    let probe = dir.join("probe.c");
    std::fs::write(&probe, format!("{PRELUDE}int main(void) {{ return 0; }}\n"))
        .expect("write probe");
    if let Err(why) = compile(&probe, &dir.join("probe")) {
        let msg = format!(
            "C compiler or libxen-dev headers unavailable (apt-get install libxen-dev): {why}"
        );
        if std::env::var_os("PCIERC_REQUIRE_TOOLS").is_some() {
            panic!("PCIERC_REQUIRE_TOOLS is set: {msg}");
        }
        eprintln!("SKIP: tests/c_abi.rs: {msg}");
        return;
    }

    let nums = numbers();
    let cases = bit_cases();
    let src = dir.join("abi_check.c");
    std::fs::write(&src, c_source(&nums, &cases)).expect("write C source");
    let exe = dir.join("abi_check");
    if let Err(errors) = compile(&src, &exe) {
        panic!(
            "the generated C does not compile ({}):\n{errors}",
            src.display()
        );
    }
    let out = Command::new(&exe).output().expect("run the C program");
    assert!(out.status.success(), "C program failed");
    let stdout = String::from_utf8(out.stdout).expect("utf-8");
    let c: BTreeMap<&str, &str> = stdout.lines().filter_map(|l| l.split_once('\t')).collect();

    let mut bad = Vec::new();
    for n in &nums {
        match c.get(n.c.as_str()).map(|v| v.parse::<u64>()) {
            Some(Ok(value)) if value == n.rust => {}
            Some(Ok(value)) => bad.push(format!("{}: C {value:#x}, Rust {:#x}", n.c, n.rust)),
            other => bad.push(format!("{}: no value from C ({other:?})", n.c)),
        }
    }
    for (i, case) in cases.iter().enumerate() {
        let hex = c
            .get(format!("bits{i}").as_str())
            .copied()
            .unwrap_or_default();
        let bytes: Vec<u8> = (0..hex.len() / 2)
            .filter_map(|j| u8::from_str_radix(&hex[2 * j..2 * j + 2], 16).ok())
            .collect();
        if let Err(e) = (case.check)(&bytes) {
            bad.push(format!("{} {:?}: {e}", case.c_type, case.assigns));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} checks differ from the C headers:\n{}",
        bad.len(),
        nums.len() + cases.len(),
        bad.join("\n")
    );
    println!(
        "c_abi: {} numbers and {} bitfield layouts agree with the libxen-dev headers",
        nums.len(),
        cases.len()
    );
}
