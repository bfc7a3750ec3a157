//! `pcierc-xen-shim --domid N --backend-socket PATH`: see [`pcierc_xen_shim::cli`].

use clap::Parser;
use pcierc_backend::cli::logging;
use pcierc_xen_shim::cli::{run, Args, Config};

fn main() {
    let args = Args::parse();
    logging::init(args.log_level);
    let cfg = match Config::try_from(args) {
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
