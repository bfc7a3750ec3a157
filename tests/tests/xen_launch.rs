//! `contrib/xen/pcierc-xl-launch`, the xl recipe, with the real `pcierc` and stand-ins for `xl`
//! and `pcierc-xen-shim` (this host has no Xen) that log what they are asked, in order: pcierc
//! ready first, then `xl create -p`, the shim for the new domain id, `xl unpause` only after the
//! shim's pid file says it serves; `stop` ends the shim, then pcierc; a shim that fails makes
//! the script destroy the domain and stop pcierc.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use pcierc_protocol::{Frontend, FrontendOptions};
use pcierc_tests::process::{pcierc_bin, ScratchDir};

const FAKE_XL: &str = r#"#!/usr/bin/env bash
echo "xl $*" >> "$FAKE_LOG"
case "$1" in
  domid) echo 7 ;;
esac
"#;

/// Logs its arguments, checks pcierc's socket is there, gets ready after a while (pid file),
/// stops on SIGTERM; or fails at once with FAKE_SHIM_FAIL=1.
const FAKE_SHIM: &str = r#"#!/usr/bin/env bash
echo "shim $*" >> "$FAKE_LOG"
if [ "${FAKE_SHIM_FAIL:-}" = 1 ]; then echo "no /dev/xen here" >&2; exit 1; fi
pidfile=""; socket=""
while [ $# -gt 0 ]; do
  case "$1" in --pidfile) pidfile=$2 ;; --backend-socket) socket=$2 ;; esac
  shift
done
[ -S "$socket" ] || { echo "shim: no pcierc socket" >> "$FAKE_LOG"; exit 1; }
trap 'echo "shim stopped" >> "$FAKE_LOG"; rm -f "$pidfile"; exit 0' TERM
sleep 0.3
echo "shim ready" >> "$FAKE_LOG"
echo $$ > "$pidfile"
while :; do sleep 0.05; done
"#;

struct Launch {
    dir: ScratchDir,
    log: PathBuf,
    run: PathBuf,
}

impl Launch {
    fn new() -> Launch {
        let dir = ScratchDir::new("xl-launch");
        for (name, text) in [("xl", FAKE_XL), ("shim", FAKE_SHIM)] {
            let p = dir.0.join(name);
            std::fs::write(&p, text).unwrap();
            Command::new("chmod").arg("+x").arg(&p).status().unwrap();
        }
        std::fs::write(dir.0.join("vm1.cfg"), "name = \"vm1\"\n").unwrap();
        let (log, run) = (dir.0.join("log"), dir.0.join("run"));
        Launch { dir, log, run }
    }

    fn script(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib/xen/pcierc-xl-launch");
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .args(args)
            .env("XL", self.dir.0.join("xl"))
            .env("PCIERC", pcierc_bin())
            .env("PCIERC_XEN_SHIM", self.dir.0.join("shim"))
            .env("PCIERC_RUNDIR", &self.run)
            .env("READY_TIMEOUT", "10")
            .env("FAKE_LOG", &self.log)
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().expect("running pcierc-xl-launch")
    }

    fn log(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }

    fn cfg(&self) -> String {
        self.dir.0.join("vm1.cfg").display().to_string()
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\n{}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn start_waits_for_pcierc_and_the_shim_before_unpausing_and_stop_ends_both() {
    let l = Launch::new();
    let out = l.script(
        &["start", "vm1", &l.cfg()],
        &[("SHIM_OPTS", "--runas nobody")],
    );
    assert!(out.status.success(), "{}", text(&out));
    let vm = l.run.join("vm1");
    assert_eq!(
        l.log(),
        [
            format!("xl create -p {}", l.cfg()),
            "xl domid vm1".into(),
            format!(
                "shim --domid 7 --backend-socket {0}/pcierc.sock --peer-server qemu=0 --pidfile {0}/shim.pid --runas nobody",
                vm.display()
            ),
            "shim ready".into(),
            "xl unpause vm1".into(),
        ]
    );
    // pcierc serves, with its QMP socket, after the script has ended.
    let mut fe = Frontend::connect(vm.join("pcierc.sock"), FrontendOptions::tool("t")).unwrap();
    assert_eq!(fe.config_read(0, 0, 0, 0, 4).unwrap(), 0x29c0_8086);
    assert!(vm.join("qmp.sock").exists());
    drop(fe);
    // Starting it twice is refused.
    let again = l.script(&["start", "vm1", &l.cfg()], &[]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already running"));

    let out = l.script(&["stop", "vm1"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(l.log().last().map(String::as_str), Some("shim stopped"));
    for f in ["pcierc.pid", "shim.pid", "pcierc.sock", "qmp.sock"] {
        assert!(!vm.join(f).exists(), "{f} left behind");
    }
}

#[test]
fn a_shim_that_fails_destroys_the_domain_and_stops_pcierc() {
    let l = Launch::new();
    let out = l.script(&["start", "vm1", &l.cfg()], &[("FAKE_SHIM_FAIL", "1")]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = text(&out);
    assert!(
        err.contains("pcierc-xen-shim exited before it was ready"),
        "{err}"
    );
    assert!(
        err.contains("no /dev/xen here"),
        "the shim's log is shown: {err}"
    );
    let log = l.log();
    assert!(log.contains(&"xl destroy vm1".to_string()), "{log:?}");
    assert!(!log.iter().any(|l| l.starts_with("xl unpause")), "{log:?}");
    let vm = l.run.join("vm1");
    for f in ["pcierc.pid", "pcierc.sock", "qmp.sock"] {
        assert!(
            !vm.join(f).exists(),
            "{f} left behind: pcierc still running?"
        );
    }
}
