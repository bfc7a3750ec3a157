//! `pcierc`: the PCIe root complex backend program.

use clap::Parser;
use pcierc_backend::cli::{self, logging};

fn main() {
    // vhost-user's convention: --print-capabilities prints whatever the other options are.
    if cli::capabilities::requested(std::env::args_os().skip(1)) {
        logging::init(logging::level_in_argv(std::env::args_os().skip(1)));
        cli::capabilities::print_for_argv(std::env::args_os());
        return;
    }
    let args = cli::Args::parse();
    logging::init(args.log_level);
    if let Err(e) = cli::run(args) {
        eprintln!("pcierc: {e}");
        std::process::exit(1);
    }
}
