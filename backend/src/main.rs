//! `pcierc`: the PCIe root complex backend program.

use clap::Parser;
use pcierc_backend::cli;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    // vhost-user's convention: --print-capabilities prints whatever the other options are.
    if cli::capabilities::requested(std::env::args_os().skip(1)) {
        cli::capabilities::print_for_argv(std::env::args_os());
        return;
    }
    let args = pcierc_backend::cli::Args::parse();
    if let Err(e) = pcierc_backend::cli::run(args) {
        eprintln!("pcierc: {e}");
        std::process::exit(1);
    }
}
