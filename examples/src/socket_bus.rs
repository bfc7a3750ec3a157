//! [`GuestBus`] over a pcierc [`Frontend`]: every access is forwarded unchanged, as a VMM forwards
//! its guest's trapped port-I/O and MMIO exits.

use pcierc_protocol::{Frontend, Status};

use crate::firmware::{BusError, GuestBus};

/// Forwards guest accesses to pcierc.
pub struct SocketBus(pub Frontend);

fn convert(e: pcierc_protocol::Error) -> BusError {
    match e.status() {
        Some(Status::Remote) => BusError::Remote,
        _ => BusError::Failed(e.to_string()),
    }
}

impl GuestBus for SocketBus {
    fn pio_read(&mut self, port: u16, width: u8) -> Result<u32, BusError> {
        self.0
            .pio_read(u64::from(port), width)
            .map(|v| v as u32)
            .map_err(convert)
    }
    fn pio_write(&mut self, port: u16, width: u8, value: u32) -> Result<(), BusError> {
        self.0
            .pio_write(u64::from(port), width, u64::from(value))
            .map_err(convert)
    }
    fn mmio_read(&mut self, addr: u64, width: u8) -> Result<u64, BusError> {
        self.0.mmio_read(addr, width).map_err(convert)
    }
    fn mmio_write(&mut self, addr: u64, width: u8, value: u64) -> Result<(), BusError> {
        self.0.mmio_write(addr, width, value).map_err(convert)
    }
}
