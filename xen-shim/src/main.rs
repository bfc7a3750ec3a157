//! `pcierc-xen-shim --domid N --backend-socket PATH`: see [`pcierc_xen_shim::cli`].

use clap::Parser;
use pcierc_xen_shim::cli::{run, Args, Config};

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cfg = match Config::try_from(Args::parse()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pcierc-xen-shim: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = run(cfg) {
        eprintln!("pcierc-xen-shim: {e}");
        std::process::exit(1);
    }
}
