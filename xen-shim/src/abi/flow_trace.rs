//! The encoders against the bytes the real libxendevicemodel / libxenforeignmemory 4.17 sent,
//! recorded in `fixtures/xen-4.17/flow.stdout` (the trace of `flow.c` run under the
//! `fakexen.so` LD_PRELOAD stand-in for /dev/xen/*; `fixtures/README.md` says how it was made).

use super::dm_op::*;
use super::hvm::HVM_IOREQSRV_BUFIOREQ_ATOMIC;
use super::privcmd::privcmd_mmap_resource_t;
use core::mem::offset_of;

const BEFORE: &str = "raw buf contents (before)";
const AFTER: &str = "raw buf[0] contents (after, as returned)";
const MMAP_RESOURCE: &str = "raw privcmd_mmap_resource";

/// Every hex dump `<tag> (<n> bytes): xx xx ...`, continued on the following lines, in order.
fn dumps(text: &str, tag: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(rest) = line.strip_prefix(tag) else {
            continue;
        };
        let (count, hex) = rest
            .trim_start()
            .strip_prefix('(')
            .and_then(|r| r.split_once(" bytes):"))
            .expect(line);
        let count: usize = count.parse().expect(line);
        let mut bytes: Vec<u8> = hex
            .split_whitespace()
            .map(|b| u8::from_str_radix(b, 16).expect(line))
            .collect();
        while bytes.len() < count {
            let more = lines.next().expect("dump continues");
            bytes.extend(
                more.split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).expect(more)),
            );
        }
        assert_eq!(bytes.len(), count, "{line}");
        out.push(bytes);
    }
    out
}

fn op_of(dump: &[u8]) -> u32 {
    u32::from_le_bytes([dump[0], dump[1], dump[2], dump[3]])
}

fn as_dm_op(dump: &[u8]) -> xen_dm_op {
    xen_dm_op::from_bytes(dump.try_into().expect("32-byte dm_op"))
}

/// The recorded trace, compiled in so a missing fixture fails the build, not a test.
fn trace() -> String {
    include_str!("../../../fixtures/xen-4.17/flow.stdout").to_owned()
}

/// The dm_ops flow.c makes through libxendevicemodel, minus the three the shim does not encode,
/// in trace order (domain 5; the simulated hypervisor hands out server id 1).
fn expected_ops() -> Vec<xen_dm_op> {
    let pci = IoRange::Pci(PciSbdf::from_raw(XEN_DMOP_PCI_SBDF(0, 0, 3, 0)));
    let mem = IoRange::Memory {
        first: 0xe000_0000,
        last: 0xefff_ffff,
    };
    vec![
        xen_dm_op::nr_vcpus(),
        xen_dm_op::create_ioreq_server(HVM_IOREQSRV_BUFIOREQ_ATOMIC),
        xen_dm_op::get_ioreq_server_info(1),
        xen_dm_op::map_io_range_to_ioreq_server(
            1,
            IoRange::Port {
                first: 0xcf8,
                last: 0xcff,
            },
        ),
        xen_dm_op::map_io_range_to_ioreq_server(1, mem),
        xen_dm_op::map_io_range_to_ioreq_server(1, pci),
        xen_dm_op::set_ioreq_server_state(1, true),
        xen_dm_op::set_pci_intx_level(0, 0, 3, 0, true),
        xen_dm_op::inject_msi(0xfee0_0000, 0x4041),
        xen_dm_op::set_ioreq_server_state(1, false),
        xen_dm_op::unmap_io_range_from_ioreq_server(1, pci),
        xen_dm_op::unmap_io_range_from_ioreq_server(1, mem),
        xen_dm_op::destroy_ioreq_server(1),
    ]
}

#[test]
fn dm_op_encoders_match_libxendevicemodel_byte_for_byte() {
    let text = trace();
    let recorded: Vec<Vec<u8>> = dumps(&text, BEFORE)
        .into_iter()
        .filter(|d| !matches!(op_of(d), 9 | 10 | 17))
        .collect();
    let ours: Vec<Vec<u8>> = expected_ops()
        .iter()
        .map(|op| op.as_bytes().to_vec())
        .collect();
    assert_eq!(recorded.len(), ours.len(), "number of dm_ops in the trace");
    for (i, (want, got)) in recorded.iter().zip(&ours).enumerate() {
        assert_eq!(
            got,
            want,
            "dm_op #{i} (op {}) differs from libxendevicemodel's",
            op_of(want)
        );
    }
}

#[test]
fn out_fields_decode_what_xen_copied_back() {
    let text = trace();
    let after = dumps(&text, AFTER);
    let find = |op: u32| as_dm_op(after.iter().find(|d| op_of(d) == op).expect("op in trace"));
    assert_eq!(find(XEN_DMOP_nr_vcpus).nr_vcpus_out(), Some(2));
    assert_eq!(
        find(XEN_DMOP_create_ioreq_server).ioreq_server_id_out(),
        Some(1)
    );
    assert_eq!(
        find(XEN_DMOP_get_ioreq_server_info).bufioreq_port_out(),
        Some(77)
    );
}

/// `privcmd_mmap_resource_t` has 2 implicit padding bytes after `dom`, so it is serialised
/// field by field at its Rust offsets (zero padding, as the library's memset leaves it).
fn mmap_resource_bytes(r: &privcmd_mmap_resource_t) -> Vec<u8> {
    let mut b = vec![0u8; core::mem::size_of::<privcmd_mmap_resource_t>()];
    let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
    put(
        offset_of!(privcmd_mmap_resource_t, dom),
        &r.dom.to_le_bytes(),
    );
    put(
        offset_of!(privcmd_mmap_resource_t, type_),
        &r.type_.to_le_bytes(),
    );
    put(offset_of!(privcmd_mmap_resource_t, id), &r.id.to_le_bytes());
    put(
        offset_of!(privcmd_mmap_resource_t, idx),
        &r.idx.to_le_bytes(),
    );
    put(
        offset_of!(privcmd_mmap_resource_t, num),
        &r.num.to_le_bytes(),
    );
    put(
        offset_of!(privcmd_mmap_resource_t, addr),
        &r.addr.to_le_bytes(),
    );
    b
}

#[test]
fn mmap_resource_matches_libxenforeignmemory() {
    let text = trace();
    let recorded = dumps(&text, MMAP_RESOURCE);
    assert_eq!(recorded.len(), 2, "size query, then the mapping");
    let query = privcmd_mmap_resource_t::ioreq_server(5, 1, 0, 0, 0);
    assert_eq!(mmap_resource_bytes(&query), recorded[0]);
    // The mapping's addr is the address mmap() returned in that run; take it from the record.
    let addr = u64::from_le_bytes(recorded[1][24..32].try_into().expect("8 bytes"));
    let map = privcmd_mmap_resource_t::ioreq_server(5, 1, 0, 2, addr);
    assert_eq!(mmap_resource_bytes(&map), recorded[1]);
}
