//! The host side of a passed-through function, as sysfs describes it: its address, the driver
//! it is bound to (it must be `vfio-pci`), its IOMMU group and who else is in that group. Every
//! check names the device and the reason, so a bad `--vfio` ends the VMM at start with one line.
//! The sysfs root is a parameter so the checks run against a made-up tree in the tests.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use super::VfioError;

/// A host PCI function's address: segment (domain), bus, device, function.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sbdf {
    /// PCI segment (domain).
    pub segment: u16,
    /// Bus number.
    pub bus: u8,
    /// Device number, 0-31.
    pub device: u8,
    /// Function number, 0-7.
    pub function: u8,
}

impl fmt::Display for Sbdf {
    /// sysfs's spelling: `0000:01:00.0`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{}",
            self.segment, self.bus, self.device, self.function
        )
    }
}

impl FromStr for Sbdf {
    type Err = String;

    /// `SSSS:BB:DD.F` or `BB:DD.F` (segment 0), hexadecimal as lspci prints them.
    fn from_str(s: &str) -> Result<Sbdf, String> {
        let bad = || format!("{s:?} is not a PCI address (SSSS:BB:DD.F or BB:DD.F)");
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (segment, bus, device) = match parts[..] {
            [b, d] => ("0", b, d),
            [s, b, d] => (s, b, d),
            _ => return Err(bad()),
        };
        let hex = |v: &str, max: u32| {
            u32::from_str_radix(v, 16)
                .ok()
                .filter(|&n| n <= max && !v.is_empty() && v.len() <= 4)
                .ok_or_else(bad)
        };
        Ok(Sbdf {
            segment: hex(segment, 0xffff)? as u16,
            bus: hex(bus, 0xff)? as u8,
            device: hex(device, 0x1f)? as u8,
            function: function
                .parse::<u8>()
                .ok()
                .filter(|&f| f < 8 && function.len() == 1)
                .ok_or_else(bad)?,
        })
    }
}

/// A host function that passed every check: bound to vfio-pci, in an IOMMU group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostFunction {
    /// Its address.
    pub sbdf: Sbdf,
    /// Its sysfs directory (`/sys/bus/pci/devices/SBDF`).
    pub sysfs: PathBuf,
    /// Its IOMMU group number (`/dev/vfio/N`).
    pub group: u32,
    /// Every function of that group, itself included, sorted.
    pub group_members: Vec<String>,
}

/// The last path component of the symbolic link `path` points to.
fn link_name(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    Some(target.file_name()?.to_str()?.to_owned())
}

/// Check `sbdf` under the sysfs mounted at `sysfs_root` (`/sys` on a host): it exists, is bound
/// to `vfio-pci`, and has an IOMMU group.
pub fn find(sysfs_root: &Path, sbdf: Sbdf) -> Result<HostFunction, VfioError> {
    let dir = sysfs_root.join("bus/pci/devices").join(sbdf.to_string());
    if !dir.exists() {
        return Err(VfioError::NoDevice { sbdf });
    }
    match link_name(&dir.join("driver")) {
        Some(d) if d == "vfio-pci" => {}
        Some(driver) => return Err(VfioError::WrongDriver { sbdf, driver }),
        None => return Err(VfioError::NoDriver { sbdf }),
    }
    let group_name = link_name(&dir.join("iommu_group")).ok_or(VfioError::NoIommuGroup { sbdf })?;
    let group = group_name
        .parse::<u32>()
        .map_err(|_| VfioError::NoIommuGroup { sbdf })?;
    let members_dir = sysfs_root
        .join("kernel/iommu_groups")
        .join(&group_name)
        .join("devices");
    let mut group_members: Vec<String> = std::fs::read_dir(&members_dir)
        .map_err(|source| VfioError::Sysfs {
            sbdf,
            path: members_dir.clone(),
            source,
        })?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    group_members.sort();
    Ok(HostFunction {
        sbdf,
        sysfs: dir,
        group,
        group_members,
    })
}

/// Each function's group must hold only functions passed through to this guest: VFIO gives a
/// group to one user as a whole, and a device left behind in it would share the guest's DMA
/// address space.
pub fn check_groups(functions: &[HostFunction]) -> Result<(), VfioError> {
    let passed: Vec<String> = functions.iter().map(|f| f.sbdf.to_string()).collect();
    for f in functions {
        let others: Vec<&str> = f
            .group_members
            .iter()
            .filter(|m| !passed.contains(m))
            .map(String::as_str)
            .collect();
        if !others.is_empty() {
            return Err(VfioError::SharedGroup {
                sbdf: f.sbdf,
                group: f.group,
                others: others.join(", "),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn addresses_parse_as_lspci_prints_them() {
        let a: Sbdf = "0000:01:00.0".parse().unwrap();
        assert_eq!(
            a,
            Sbdf {
                segment: 0,
                bus: 1,
                device: 0,
                function: 0
            }
        );
        assert_eq!(
            "3a:1f.7".parse::<Sbdf>().unwrap().to_string(),
            "0000:3a:1f.7"
        );
        assert_eq!("abcd:ff:1f.7".parse::<Sbdf>().unwrap().segment, 0xabcd);
        for bad in [
            "",
            "01:00",
            "01:20.0",
            "01:00.8",
            "1:2:3:4.0",
            "0000:100:00.0",
            "x1:00.0",
            "01:00.00",
        ] {
            assert!(bad.parse::<Sbdf>().is_err(), "{bad:?} accepted");
        }
    }

    /// A made-up sysfs: `devices` as (address, driver, group).
    fn sysfs(devices: &[(&str, Option<&str>, Option<u32>)]) -> tempdir::Dir {
        let root = tempdir::Dir::new();
        for (addr, driver, group) in devices {
            let dir = root.path().join("bus/pci/devices").join(addr);
            std::fs::create_dir_all(&dir).unwrap();
            if let Some(d) = driver {
                symlink(format!("../../../bus/pci/drivers/{d}"), dir.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gdir = root.path().join(format!("kernel/iommu_groups/{g}/devices"));
                std::fs::create_dir_all(&gdir).unwrap();
                symlink(&dir, gdir.join(addr)).unwrap();
                symlink(
                    format!("../../../kernel/iommu_groups/{g}"),
                    dir.join("iommu_group"),
                )
                .unwrap();
            }
        }
        root
    }

    mod tempdir {
        /// A directory removed on drop.
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "pcierc-vfio-sysfs-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    #[test]
    fn every_bad_device_is_named_with_its_reason() {
        let root = sysfs(&[
            ("0000:01:00.0", Some("vfio-pci"), Some(7)),
            ("0000:02:00.0", Some("e1000e"), Some(8)),
            ("0000:03:00.0", None, Some(9)),
            ("0000:04:00.0", Some("vfio-pci"), None),
            ("0000:05:00.0", Some("vfio-pci"), Some(10)),
            ("0000:05:00.1", Some("snd_hda_intel"), Some(10)),
        ]);
        let find = |a: &str| find(root.path(), a.parse().unwrap());
        let ok = find("0000:01:00.0").unwrap();
        assert_eq!(
            (ok.group, ok.group_members.clone()),
            (7, vec!["0000:01:00.0".to_owned()])
        );
        check_groups(&[ok]).unwrap();
        let msg = |r: Result<HostFunction, VfioError>| r.unwrap_err().to_string();
        assert_eq!(
            msg(find("0000:09:00.0")),
            "0000:09:00.0: no such PCI device"
        );
        assert!(
            msg(find("0000:02:00.0")).starts_with("0000:02:00.0: bound to e1000e, not vfio-pci")
        );
        assert!(msg(find("0000:03:00.0")).starts_with("0000:03:00.0: bound to no driver"));
        assert!(msg(find("0000:04:00.0")).starts_with("0000:04:00.0: no IOMMU group"));
        let gpu = find("0000:05:00.0").unwrap();
        let e = check_groups(&[gpu]).unwrap_err();
        assert!(matches!(e, VfioError::SharedGroup { group: 10, .. }), "{e}");
        assert!(e.to_string().contains("0000:05:00.1"), "{e}");
    }

    #[test]
    fn functions_of_one_group_pass_together() {
        let root = sysfs(&[
            ("0000:05:00.0", Some("vfio-pci"), Some(10)),
            ("0000:05:00.1", Some("vfio-pci"), Some(10)),
        ]);
        let both: Vec<HostFunction> = ["0000:05:00.0", "0000:05:00.1"]
            .iter()
            .map(|a| find(root.path(), a.parse().unwrap()).unwrap())
            .collect();
        check_groups(&both).unwrap();
        assert!(check_groups(&both[..1]).is_err());
    }
}
