//! The device model's end of event channels, as Linux's `/dev/xen/evtchn` behaves
//! (drivers/xen/evtchn.c): a delivered port is masked and queued for `read(2)` until written
//! back; an event on a masked port stays pending and fires when it is unmasked. The readable
//! descriptor is an eventfd.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::abi::evtchn_port_t;

#[derive(Debug)]
struct LocalPort {
    /// The guest-side port it is bound to.
    remote: evtchn_port_t,
    masked: bool,
    pending: bool,
}

#[derive(Debug, Default)]
struct State {
    next_local: evtchn_port_t,
    ports: HashMap<evtchn_port_t, LocalPort>,
    ready: VecDeque<evtchn_port_t>,
}

/// One opened event-channel device.
#[derive(Debug)]
pub(crate) struct SimEvtchn {
    fd: EventFd,
    state: Mutex<State>,
}

impl SimEvtchn {
    pub(crate) fn new() -> std::io::Result<Self> {
        Ok(SimEvtchn {
            fd: EventFd::new(EFD_NONBLOCK)?,
            state: Mutex::new(State {
                next_local: 40,
                ..Default::default()
            }),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn fd(&self) -> &EventFd {
        &self.fd
    }

    /// A new local port bound to guest port `remote`.
    pub(crate) fn bind(&self, remote: evtchn_port_t) -> evtchn_port_t {
        let mut s = self.state();
        let local = s.next_local;
        s.next_local += 1;
        s.ports.insert(
            local,
            LocalPort {
                remote,
                masked: false,
                pending: false,
            },
        );
        local
    }

    /// Forget `local`; its guest port, if it was bound.
    pub(crate) fn unbind(&self, local: evtchn_port_t) -> Option<evtchn_port_t> {
        let mut s = self.state();
        s.ready.retain(|&p| p != local);
        s.ports.remove(&local).map(|p| p.remote)
    }

    /// The guest port `local` is bound to.
    pub(crate) fn remote_of(&self, local: evtchn_port_t) -> Option<evtchn_port_t> {
        self.state().ports.get(&local).map(|p| p.remote)
    }

    /// The guest side signalled `local`.
    pub(crate) fn deliver(&self, local: evtchn_port_t) {
        let mut s = self.state();
        let Some(p) = s.ports.get_mut(&local) else {
            return;
        };
        if p.masked {
            p.pending = true;
            return;
        }
        p.masked = true;
        s.ready.push_back(local);
        let _ = self.fd.write(1);
    }

    /// `read(2)`: the delivered ports (each stays masked).
    pub(crate) fn take(&self, out: &mut Vec<evtchn_port_t>) {
        let mut s = self.state();
        let _ = self.fd.read();
        out.extend(s.ready.drain(..));
    }

    /// `write(2)` of a port: unmask it; a pending event fires now.
    pub(crate) fn unmask(&self, local: evtchn_port_t) -> bool {
        let mut s = self.state();
        let Some(p) = s.ports.get_mut(&local) else {
            return false;
        };
        p.masked = false;
        if std::mem::take(&mut p.pending) {
            p.masked = true;
            s.ready.push_back(local);
            let _ = self.fd.write(1);
        }
        true
    }
}
