//! A QEMU machine driven through its serial console: a thread reads the console line by line,
//! tags each line with the machine it came from (L1, or L2 when L1 relays it with the prefix
//! `L2| `), and the harness sends shell commands and waits for lines, every wait bounded.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The prefix L1 puts before every line of L2's console.
pub const L2_PREFIX: &str = "L2| ";

/// Which machine printed a line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// The machine QEMU runs (L1 in the nested harness, the probe guest when QEMU runs it).
    Outer,
    /// L2: the guest of the example VMM, relayed by L1.
    Inner,
}

/// A console line and when it arrived.
#[derive(Clone, Debug)]
pub struct Line {
    /// Who printed it.
    pub source: Source,
    /// The text, without the prefix and line end.
    pub text: String,
    /// When the harness read it.
    pub at: Instant,
}

/// Why a console interaction failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// QEMU could not be started.
    #[error("starting {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// The error.
        source: std::io::Error,
    },
    /// The awaited line did not come in time.
    #[error("timed out after {seconds:.0} s waiting for {what}; last console lines:\n{tail}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        seconds: f64,
        /// The last lines seen.
        tail: String,
    },
    /// The console closed (QEMU exited) before the awaited line came.
    #[error(
        "the console closed ({reason}; QEMU: {status}) while waiting for {what}; QEMU's \
         stderr: {stderr}; last lines:\n{tail}"
    )]
    Closed {
        /// What was awaited.
        what: String,
        /// How the console ended (end of file, or the read error).
        reason: String,
        /// QEMU's exit status, if known.
        status: String,
        /// The end of QEMU's stderr.
        stderr: String,
        /// The last lines seen.
        tail: String,
    },
    /// Writing to the console failed.
    #[error("writing to the console: {0}")]
    Write(std::io::Error),
}

/// The output of one command.
#[derive(Clone, Debug)]
pub struct Output {
    /// Its exit status.
    pub status: i32,
    /// The lines it printed (stdout and stderr).
    pub lines: Vec<String>,
    /// How long it took, seen from the harness.
    pub elapsed: Duration,
}

impl Output {
    /// The lines joined with newlines.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }
}

/// A QEMU process whose serial console is on its stdin/stdout.
pub struct ConsoleMachine {
    child: Child,
    stdin: ChildStdin,
    rx: Receiver<Option<Line>>,
    log: Vec<Line>,
    closed: bool,
    next_id: u64,
    /// Lines of `Outer` without a relay prefix are `Outer`; with `relay`, `L2| ` lines are
    /// `Inner`. Without it (QEMU runs the probe guest itself) every line is `Outer`.
    relay: bool,
    /// How the reader thread ended, when it did.
    end: std::sync::Arc<std::sync::Mutex<Option<String>>>,
    /// QEMU's stderr file.
    stderr_log: std::path::PathBuf,
}

impl ConsoleMachine {
    /// Start `cmd` (a QEMU command line with `-serial stdio`); its stderr goes to `stderr_log`.
    pub fn spawn(
        mut cmd: Command,
        relay: bool,
        stderr_log: &std::path::Path,
    ) -> Result<ConsoleMachine, ConsoleError> {
        let program = format!("{:?}", cmd.get_program());
        let err = std::fs::File::create(stderr_log).map_err(|source| ConsoleError::Spawn {
            program: program.clone(),
            source,
        })?;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(err);
        let mut child = spawn_tied_to_process(cmd).map_err(|source| ConsoleError::Spawn {
            program: program.clone(),
            source,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            return Err(ConsoleError::Spawn {
                program,
                source: std::io::Error::other("no pipes"),
            });
        };
        let (tx, rx) = mpsc::channel();
        let end = std::sync::Arc::new(std::sync::Mutex::new(None));
        let end_w = end.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf) {
                    Ok(0) => {
                        *end_w.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some("end of file on QEMU's stdout".into());
                        let _ = tx.send(None);
                        return;
                    }
                    Err(e) => {
                        *end_w.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(format!("reading QEMU's stdout: {e}"));
                        let _ = tx.send(None);
                        return;
                    }
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&buf)
                            .trim_end_matches(['\n', '\r'])
                            .to_owned();
                        let (source, text) = if relay {
                            match text.strip_prefix(L2_PREFIX) {
                                Some(t) => (Source::Inner, t.to_owned()),
                                None => (Source::Outer, text),
                            }
                        } else {
                            (Source::Outer, text)
                        };
                        if tx
                            .send(Some(Line {
                                source,
                                text,
                                at: Instant::now(),
                            }))
                            .is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        Ok(ConsoleMachine {
            child,
            stdin,
            rx,
            log: Vec::new(),
            closed: false,
            next_id: 0,
            relay,
            end,
            stderr_log: stderr_log.to_owned(),
        })
    }

    /// Every line read so far.
    pub fn log(&self) -> &[Line] {
        &self.log
    }

    /// The index the next line will have (for [`ConsoleMachine::wait_for`]'s `since`).
    pub fn mark(&self) -> usize {
        self.log.len()
    }

    /// The last `n` lines, tagged, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let start = self.log.len().saturating_sub(n);
        self.log[start..]
            .iter()
            .map(|l| match l.source {
                Source::Outer => format!("  {}", l.text),
                Source::Inner => format!("  L2| {}", l.text),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Send raw text to the console.
    pub fn send(&mut self, text: &str) -> Result<(), ConsoleError> {
        self.stdin
            .write_all(text.as_bytes())
            .and_then(|()| self.stdin.flush())
            .map_err(ConsoleError::Write)
    }

    /// Wait until a line from `source` at index `since` or later satisfies `pred`; its index.
    pub fn wait_for(
        &mut self,
        source: Source,
        since: usize,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&str) -> bool,
    ) -> Result<usize, ConsoleError> {
        let found = |log: &[Line], from: usize| {
            log.iter()
                .enumerate()
                .skip(from)
                .find(|(_, l)| l.source == source && pred(&l.text))
                .map(|(i, _)| i)
        };
        if let Some(i) = found(&self.log, since) {
            return Ok(i);
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self.closed {
                // QEMU closes its stdout as it exits: give it a moment to be reaped.
                let mut status = "still running".to_string();
                for _ in 0..20 {
                    if let Ok(Some(s)) = self.child.try_wait() {
                        status = s.to_string();
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                let stderr = std::fs::read_to_string(&self.stderr_log).unwrap_or_default();
                let stderr: Vec<&str> = stderr
                    .lines()
                    .filter(|l| !l.contains("TCG doesn't support requested feature"))
                    .collect();
                return Err(ConsoleError::Closed {
                    what: what.to_owned(),
                    reason: self
                        .end
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .clone()
                        .unwrap_or_else(|| "the reader stopped".into()),
                    status,
                    stderr: stderr[stderr.len().saturating_sub(10)..].join(" | "),
                    tail: self.tail(40),
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(Some(line)) => {
                    self.log.push(line);
                    let i = self.log.len() - 1;
                    if found(&self.log, i).is_some() {
                        return Ok(i);
                    }
                }
                Ok(None) | Err(RecvTimeoutError::Disconnected) => self.closed = true,
                Err(RecvTimeoutError::Timeout) => {
                    return Err(ConsoleError::Timeout {
                        what: what.to_owned(),
                        seconds: timeout.as_secs_f64(),
                        tail: self.tail(40),
                    })
                }
            }
        }
    }

    /// A fresh command id and the shell line that runs `cmd` and then prints `@@done ID STATUS`.
    pub fn wrap(&mut self, cmd: &str) -> (u64, String) {
        self.next_id += 1;
        let id = self.next_id;
        (id, format!("{{ {cmd}\n}} 2>&1; echo \"@@done {id} $?\""))
    }

    /// Collect the output of command `id` sent at `since` by `source`'s shell.
    pub fn collect(
        &mut self,
        source: Source,
        since: usize,
        id: u64,
        timeout: Duration,
        what: &str,
    ) -> Result<Output, ConsoleError> {
        let start = Instant::now();
        let marker = format!("@@done {id} ");
        let end = self.wait_for(source, since, timeout, what, |l| l.starts_with(&marker))?;
        let status = self.log[end].text[marker.len()..]
            .trim()
            .parse()
            .unwrap_or(-1);
        let lines = self.log[since..end]
            .iter()
            .filter(|l| l.source == source)
            .map(|l| l.text.clone())
            .collect();
        Ok(Output {
            status,
            lines,
            elapsed: start.elapsed(),
        })
    }

    /// Run `cmd` in the outer machine's shell (one line of shell; newlines are not allowed
    /// inside it, as the shell reads a line at a time).
    pub fn run(&mut self, cmd: &str, timeout: Duration) -> Result<Output, ConsoleError> {
        let (id, line) = self.wrap(&cmd.replace('\n', "; "));
        let line = line.replace('\n', "; ");
        let since = self.mark();
        self.send(&format!("{line}\n"))?;
        self.collect(Source::Outer, since, id, timeout, &format!("`{cmd}`"))
    }

    /// Does this console relay an inner machine?
    pub fn relays(&self) -> bool {
        self.relay
    }

    /// Stop QEMU (kill) and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ConsoleMachine {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Spawn `cmd` so that it is killed when this process ends, however it ends: a machine kept in
/// a `static` (the nested tests share one L1) is never dropped, and a test process that panics
/// or is killed must not leave QEMU running. `PR_SET_PDEATHSIG` fires when the *thread* that
/// forked the child exits, so the fork happens on a thread that parks for the rest of the
/// process's life.
fn spawn_tied_to_process(mut cmd: Command) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl(2) and
    // getppid(2), which are async-signal-safe; it touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The spawning thread may already be gone (it is not, it parks): then exit now.
            if libc::getppid() == 1 {
                return Err(std::io::Error::other("parent exited"));
            }
            Ok(())
        });
    }
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("qemu-parent".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("the spawning thread died"))?
}

/// `s` quoted for the shell as one word.
pub fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}
