//! The platform requests of a [`Frontend`]: errors and PMEs a function's owner reports,
//! interrupt eventfds, and functions an emulator claims or releases.

use std::os::fd::{AsRawFd, RawFd};

use vm_memory::ByteValued;

use super::Frontend;
use crate::error::{Error, Result};
use crate::messages::{
    encode_name, ErrorReport, FunctionAddress, FunctionClaim, FunctionRelease, InterruptFd,
};
use crate::wire::FrontendReq;

impl Frontend {
    /// `ReportError`: an error a function this frontend owns detected.
    pub fn report_error(&mut self, report: &ErrorReport) -> Result<()> {
        self.call(FrontendReq::ReportError, report.as_slice(), &[], Some(0))
            .map(drop)
    }

    /// `RaisePme`: a PME message from a function this frontend owns.
    pub fn raise_pme(&mut self, segment: u16, bus: u8, devfn: u8) -> Result<()> {
        let a = FunctionAddress {
            segment,
            bus,
            devfn,
            reserved: 0,
        };
        self.call(FrontendReq::RaisePme, a.as_slice(), &[], Some(0))
            .map(drop)
    }

    /// `SetInterruptFd`: deliver MSI-X `vector` of the function at (`segment`, `bus`, `devfn`)
    /// by writing to `fd` (an eventfd; e.g. one registered as a KVM irqfd) instead of `Msi`
    /// notifications; `None` unregisters. `MsiRoute` notifications on the backend channel
    /// report the vector's message now and whenever the guest changes it.
    pub fn set_interrupt_fd(
        &mut self,
        segment: u16,
        bus: u8,
        devfn: u8,
        vector: u16,
        fd: Option<&vmm_sys_util::eventfd::EventFd>,
    ) -> Result<()> {
        let req = InterruptFd {
            segment,
            bus,
            devfn,
            vector,
            flags: if fd.is_some() {
                0
            } else {
                InterruptFd::UNREGISTER
            },
        };
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        self.call(FrontendReq::SetInterruptFd, req.as_slice(), &fds, Some(0))
            .map(drop)
    }

    /// `ClaimFunction`: this frontend serves function `id` (QEMU driver name `driver`) at
    /// `devfn` behind root port `port`; `coldplug` for one present from power-on (before the
    /// guest runs), otherwise the guest sees a hot-add.
    pub fn claim_function(
        &mut self,
        port: &str,
        id: &str,
        driver: &str,
        devfn: u8,
        coldplug: bool,
        multifunction: bool,
    ) -> Result<()> {
        let name = |s: &str| {
            encode_name(s).ok_or(Error::InvalidArgument(
                "names must be at most 32 printable ASCII characters",
            ))
        };
        let mut flags = 0;
        if coldplug {
            flags |= FunctionClaim::COLDPLUG;
        }
        if multifunction {
            flags |= FunctionClaim::MULTIFUNCTION;
        }
        let c = FunctionClaim {
            port: name(port)?,
            id: name(id)?,
            driver: name(driver)?,
            devfn,
            flags,
            reserved: [0; 6],
        };
        self.call(FrontendReq::ClaimFunction, c.as_slice(), &[], Some(0))
            .map(drop)
    }

    /// `ReleaseFunction`: take function `id` out: through the guest's hot-plug driver (the
    /// `FunctionRemoved` notification follows when the guest released the slot), or at once
    /// with `surprise`.
    pub fn release_function(&mut self, id: &str, surprise: bool) -> Result<()> {
        let r = FunctionRelease {
            id: encode_name(id).ok_or(Error::InvalidArgument(
                "names must be at most 32 printable ASCII characters",
            ))?,
            flags: if surprise {
                FunctionRelease::SURPRISE
            } else {
                0
            },
            reserved: 0,
        };
        self.call(FrontendReq::ReleaseFunction, r.as_slice(), &[], Some(0))
            .map(drop)
    }
}
