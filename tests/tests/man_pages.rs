//! The man pages under `man/` (`pcierc.1` with `pcierc-dump.1` and `pcierc-qtest.1` for its
//! subcommands, `pcierc-xen-shim.1`) are what clap_mangen makes of the clap definitions now
//! (`pcierc_backend::cli::command`, `pcierc_xen_shim::cli::command`) plus their extra sections
//! (`pcierc_backend::cli::man::PCIERC`, `pcierc_xen_shim::cli::MAN_SECTIONS`). A page that
//! differs fails this test; regenerate with
//! `PCIERC_UPDATE_MAN=1 cargo test -p pcierc-tests --test man_pages` (see `man/README.md`).

use std::path::{Path, PathBuf};

use clap_mangen::roff::{bold, roman, Roff};
use clap_mangen::Man;
use pcierc_backend::cli::man::ManSection;

/// The page: clap_mangen's sections, then the extra ones (before VERSION, as man pages order
/// them).
fn render(cmd: clap::Command, extra: &[ManSection]) -> String {
    let man = Man::new(cmd.clone()).manual("pcierc manual");
    let mut out = Vec::new();
    man.render_title(&mut out).expect("rendering");
    man.render_name_section(&mut out).expect("rendering");
    man.render_synopsis_section(&mut out).expect("rendering");
    man.render_description_section(&mut out).expect("rendering");
    man.render_options_section(&mut out).expect("rendering");
    if cmd.has_subcommands() {
        man.render_subcommands_section(&mut out).expect("rendering");
    }
    let mut roff = Roff::new();
    for section in extra {
        roff.control("SH", [section.title]);
        for (term, text) in section.entries {
            roff.control("TP", []);
            roff.text([bold(*term)]);
            roff.text([roman(*text)]);
        }
    }
    roff.to_writer(&mut out).expect("rendering");
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out).expect("rendering");
    }
    String::from_utf8(out).expect("roff is text")
}

fn man_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../man")
}

fn check(name: &str, page: String) {
    let path = man_dir().join(name);
    if std::env::var_os("PCIERC_UPDATE_MAN").is_some() {
        std::fs::write(&path, &page).expect("writing the man page");
        eprintln!("wrote {}", path.display());
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == page,
        "{} is not what the clap definitions give: regenerate it with \
         `PCIERC_UPDATE_MAN=1 cargo test -p pcierc-tests --test man_pages` and commit it",
        path.display()
    );
}

#[test]
fn pcierc_1_is_current() {
    // `pcierc help` exists, but a page for it would only repeat pcierc(1).
    let cmd = pcierc_backend::cli::command().disable_help_subcommand(true);
    // pcierc(1) lists its subcommands as pcierc-dump(1) and pcierc-qtest(1): those pages too.
    for sub in cmd.get_subcommands() {
        // clap takes names as &'static str (without its `string` feature); a test can leak two.
        let name: &'static str = format!("pcierc-{}", sub.get_name()).leak();
        let page = render(sub.clone().name(name).bin_name(name), &[]);
        check(&format!("{name}.1"), page);
    }
    let page = render(cmd, pcierc_backend::cli::man::PCIERC);
    for want in ["--socket-path", "--log-level", "NOTIFY_SOCKET", "SIGTERM"] {
        // roff writes a hyphen-minus as \-.
        assert!(
            page.contains(&want.replace('-', "\\-")),
            "{want} missing from pcierc(1)"
        );
    }
    check("pcierc.1", page);
}

#[test]
fn pcierc_xen_shim_1_is_current() {
    let page = render(
        pcierc_xen_shim::cli::command(),
        pcierc_xen_shim::cli::MAN_SECTIONS,
    );
    for want in ["--domid", "--runas", "--chroot", "--log-level", "SIGTERM"] {
        assert!(
            page.contains(&want.replace('-', "\\-")),
            "{want} missing from pcierc-xen-shim(1)"
        );
    }
    check("pcierc-xen-shim.1", page);
}
