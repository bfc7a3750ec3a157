//! `enumerate SOCKET`: connect to a running pcierc as a VMM would, enumerate the hierarchy the way
//! firmware does (through forwarded CF8/CFC and ECAM accesses), and print what was found.

use clap::Parser;
use pcierc_examples::firmware::{enumerate_topology, extra_root_buses, summary, Layout};
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
    let mut fe = match Frontend::connect(&args.socket, FrontendOptions::vmm("enumerate")) {
        Ok(fe) => fe,
        Err(e) => {
            eprintln!("enumerate: connecting to {}: {e}", args.socket.display());
            std::process::exit(1);
        }
    };
    // Extra segments' fixed ECAM windows, as MCFG would list them, and the expanders' root
    // buses.
    let (windows, roots) = match fe.topology() {
        Ok(t) => (t.ecam.clone(), extra_root_buses(&t)),
        Err(e) => {
            eprintln!("enumerate: GetTopology: {e}");
            std::process::exit(1);
        }
    };
    let mut bus = SocketBus(fe);
    match enumerate_topology(&mut bus, Layout::default(), &windows, &roots) {
        Ok(segments) => {
            for (segment, e) in segments {
                if segment != 0 {
                    println!("segment {segment:04x}:");
                }
                print!("{}", summary(&e));
                println!(
                    "{} functions, last bus {:02x}, {} config accesses",
                    e.functions.len(),
                    e.last_bus,
                    e.accesses
                );
            }
        }
        Err(e) => {
            eprintln!("enumerate: {e}");
            std::process::exit(1);
        }
    }
}
