//! What the man pages say beyond the clap definitions: sections a manual page has and `--help`
//! does not (environment, signals, exit status, see also). `man/pcierc.1` is generated from
//! [`super::command`] and [`PCIERC`] by clap_mangen (`tests/tests/man_pages.rs`, which also
//! checks the committed page is current; `man/README.md` says how to regenerate).

/// A man page section: its title and its entries (a term and what it means).
#[derive(Debug, Clone, Copy)]
pub struct ManSection {
    /// The heading, e.g. `ENVIRONMENT`.
    pub title: &'static str,
    /// Entries: the term (a variable, a signal, a status) and its description.
    pub entries: &'static [(&'static str, &'static str)],
}

/// The extra sections of `pcierc(1)`.
pub const PCIERC: &[ManSection] = &[
    ManSection {
        title: "ENVIRONMENT",
        entries: &[
            (
                "RUST_LOG",
                "Log filter (env_logger syntax, e.g. debug or pcierc_backend::service=trace) when \
                 --log-level is not given; default info. Logs go to standard error.",
            ),
            (
                "RUST_LOG_STYLE",
                "auto (default: colours only when standard error is a terminal), always or never.",
            ),
            (
                "NOTIFY_SOCKET",
                "systemd's notification socket: READY=1 is sent once both sockets listen and the \
                 state file is restored, STOPPING=1 at exit. Removed from the environment.",
            ),
            (
                "LISTEN_PID, LISTEN_FDS, LISTEN_FDNAMES",
                "Socket activation: listening unix stream sockets from fd 3 on, named pcierc (the \
                 protocol socket) and control (the QMP control socket). Ignored unless LISTEN_PID \
                 is pcierc's pid; removed from the environment.",
            ),
        ],
    },
    ManSection {
        title: "SIGNALS",
        entries: &[(
            "SIGTERM, SIGINT",
            "Stop cleanly: requests already received are answered, QMP clients get SHUTDOWN \
             (reason host-signal), socket files pcierc created are removed, the pid file too; \
             exit status 0.",
        )],
    },
    ManSection {
        title: "EXIT STATUS",
        entries: &[
            ("0", "Stopped by a signal or by quit on the control socket."),
            ("1", "An error, printed on standard error as one line."),
            ("2", "The command line did not parse."),
        ],
    },
    ManSection {
        title: "SEE ALSO",
        entries: &[(
            "pcierc-xen-shim(1)",
            "docs/service.md (service managers, socket activation, contrib/systemd), \
             docs/control-socket.md (QMP), docs/protocol.md, docs/security.md in pcierc's \
             source.",
        )],
    },
];
