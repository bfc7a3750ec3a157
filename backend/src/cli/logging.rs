//! Logging set-up shared by `pcierc` and `pcierc-xen-shim`: `--log-level LEVEL` or `RUST_LOG`,
//! to standard error, coloured only when standard error is a terminal.
//!
//! Precedence: `--log-level` given on the command line is the filter (`RUST_LOG` is then
//! ignored: the option is the more deliberate choice, e.g. in a unit's `ExecStart=`); without
//! it `RUST_LOG` applies (env_logger's syntax, per-module filters included), and without both
//! the level is `info`. Colours follow env_logger's `RUST_LOG_STYLE` (`auto` by default: none
//! when standard error is not a terminal, e.g. under a service manager or in a pipe).

use std::ffi::OsString;

use clap::ValueEnum;
use env_logger::{Builder, Env};

/// `--log-level`: the most detailed level logged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Also what the program does (the default).
    Info,
    /// Also each connection, layout generation and refusal.
    Debug,
    /// Everything.
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(l: LogLevel) -> Self {
        match l {
            LogLevel::Error => log::LevelFilter::Error,
            LogLevel::Warn => log::LevelFilter::Warn,
            LogLevel::Info => log::LevelFilter::Info,
            LogLevel::Debug => log::LevelFilter::Debug,
            LogLevel::Trace => log::LevelFilter::Trace,
        }
    }
}

/// The environment variable that sets the filter when `--log-level` is not given.
pub const RUST_LOG: &str = "RUST_LOG";
/// The environment variable that sets colours: `auto` (the default), `always` or `never`.
pub const RUST_LOG_STYLE: &str = "RUST_LOG_STYLE";

/// A logger for `level` (from `--log-level`), else `RUST_LOG`, else `info`; colours only on a
/// terminal unless `RUST_LOG_STYLE` says otherwise.
pub fn builder(level: Option<LogLevel>) -> Builder {
    match level {
        // RUST_LOG is not read at all, so none of its module filters survive.
        Some(l) => {
            let mut b = Builder::new();
            b.filter_level(l.into());
            let style = std::env::var(RUST_LOG_STYLE).unwrap_or_else(|_| "auto".into());
            b.parse_write_style(&style);
            b
        }
        None => Builder::from_env(
            Env::default()
                .default_filter_or("info")
                .default_write_style_or("auto"),
        ),
    }
}

/// Install the logger (once, at start-up; a second call keeps the first logger).
pub fn init(level: Option<LogLevel>) {
    let _ = builder(level).try_init();
}

/// `--log-level` from a command line that may not parse (for `--print-capabilities`, which
/// runs before parsing): the value after the last `--log-level` (or in `--log-level=LEVEL`)
/// before `--`, if it is a level.
pub fn level_in_argv<I: IntoIterator<Item = OsString>>(argv: I) -> Option<LogLevel> {
    let mut found = None;
    let mut next_is_value = false;
    for a in argv {
        let Some(a) = a.to_str() else {
            next_is_value = false;
            continue;
        };
        if a == "--" {
            break;
        }
        if next_is_value {
            found = LogLevel::from_str(a, true).ok().or(found);
            next_is_value = false;
        } else if a == "--log-level" {
            next_is_value = true;
        } else if let Some(v) = a.strip_prefix("--log-level=") {
            found = LogLevel::from_str(v, true).ok().or(found);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_level_is_found_in_a_command_line_that_does_not_parse() {
        let argv = |s: &str| s.split(' ').map(OsString::from).collect::<Vec<_>>();
        assert_eq!(
            level_in_argv(argv("--bogus --log-level debug")),
            Some(LogLevel::Debug)
        );
        assert_eq!(
            level_in_argv(argv("--log-level=warn --x")),
            Some(LogLevel::Warn)
        );
        assert_eq!(level_in_argv(argv("--log-level nonsense")), None);
        assert_eq!(level_in_argv(argv("-- --log-level trace")), None);
        assert_eq!(
            log::LevelFilter::from(LogLevel::Trace),
            log::LevelFilter::Trace
        );
    }
}
