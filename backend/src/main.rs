//! `pcierc`: the PCIe root complex backend program.

use clap::Parser;

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let args = pcierc_backend::cli::Args::parse();
    if let Err(e) = pcierc_backend::cli::run(args) {
        eprintln!("pcierc: {e}");
        std::process::exit(1);
    }
}
