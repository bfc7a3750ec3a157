//! `enumerate SOCKET`: connect to a running pcierc as a VMM would, enumerate the hierarchy the way
//! firmware does (through forwarded CF8/CFC and ECAM accesses), and print what was found.

use clap::Parser;
use pcierc_examples::firmware::{enumerate, summary, Layout};
use pcierc_examples::socket_bus::SocketBus;
use pcierc_protocol::{Frontend, FrontendOptions};

/// Firmware-style enumeration of a running pcierc.
#[derive(Parser)]
struct Args {
    /// pcierc's socket.
    socket: std::path::PathBuf,
}

fn main() {
    env_logger::init();
    let args = Args::parse();
    let fe = match Frontend::connect(&args.socket, FrontendOptions::vmm("enumerate")) {
        Ok(fe) => fe,
        Err(e) => {
            eprintln!("enumerate: connecting to {}: {e}", args.socket.display());
            std::process::exit(1);
        }
    };
    let mut bus = SocketBus(fe);
    match enumerate(&mut bus, Layout::default()) {
        Ok(e) => {
            print!("{}", summary(&e));
            println!(
                "{} functions, last bus {:02x}, {} config accesses",
                e.functions.len(),
                e.last_bus,
                e.accesses
            );
        }
        Err(e) => {
            eprintln!("enumerate: {e}");
            std::process::exit(1);
        }
    }
}
