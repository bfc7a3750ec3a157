//! Samples, their statistics, and the `bench <name> <value> <unit> ratio=<x>` lines.

use std::time::Instant;

/// Durations of single operations in nanoseconds, sorted once measured.
#[derive(Clone, Debug)]
pub struct Samples {
    sorted: Vec<f64>,
}

impl Samples {
    /// Take ownership of raw samples (in nanoseconds) and sort them.
    ///
    /// # Panics
    /// If `raw` is empty: every benchmark takes at least one sample.
    pub fn new(mut raw: Vec<f64>) -> Self {
        assert!(!raw.is_empty(), "a benchmark produced no samples");
        raw.sort_by(f64::total_cmp);
        Samples { sorted: raw }
    }

    /// The median (the upper one for an even count).
    pub fn median(&self) -> f64 {
        self.sorted[self.sorted.len() / 2]
    }

    /// The 90th percentile (nearest rank).
    pub fn p90(&self) -> f64 {
        let rank = (self.sorted.len() * 9).div_ceil(10).max(1);
        self.sorted[rank - 1]
    }

    /// The 99th percentile (nearest rank).
    pub fn p99(&self) -> f64 {
        let rank = (self.sorted.len() * 99).div_ceil(100).max(1);
        self.sorted[rank - 1]
    }

    /// The smallest sample.
    pub fn min(&self) -> f64 {
        self.sorted[0]
    }

    /// The largest sample.
    pub fn max(&self) -> f64 {
        self.sorted[self.sorted.len() - 1]
    }

    /// The mean (rare slow samples included, unlike the median).
    pub fn mean(&self) -> f64 {
        self.sorted.iter().sum::<f64>() / self.sorted.len() as f64
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }
}

/// Time `iterations` calls of `op` one by one, appending each duration (ns) to `into`.
pub fn record<E>(
    into: &mut Vec<f64>,
    iterations: usize,
    mut op: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    for _ in 0..iterations {
        let t = Instant::now();
        op()?;
        into.push(t.elapsed().as_nanos() as f64);
    }
    Ok(())
}

/// A figure's ratio: against a baseline measured in the same run, or against a fixed target.
#[derive(Clone, Copy, Debug)]
pub enum Ratio {
    /// The figure is a baseline itself (printed as `ratio=1.00`).
    Baseline,
    /// `value / of`.
    Of(f64),
}

/// Prints figures and context lines.
#[derive(Debug, Default)]
pub struct Reporter {
    figures: usize,
}

impl Reporter {
    /// A context line (starts with `#`, so a parser of `bench` lines skips it).
    pub fn note(&self, text: impl AsRef<str>) {
        println!("# {}", text.as_ref());
    }

    /// One figure, exactly `bench <name> <value> <unit> ratio=<x>`.
    pub fn figure(&mut self, name: &str, value: f64, unit: &str, ratio: Ratio) {
        let ratio = match ratio {
            Ratio::Baseline => 1.0,
            Ratio::Of(base) => value / base,
        };
        println!(
            "bench {name} {} {unit} ratio={}",
            format_value(value),
            format_ratio(ratio)
        );
        self.figures += 1;
    }

    /// How many figures were printed.
    pub fn figures(&self) -> usize {
        self.figures
    }
}

/// Two decimals, or two significant digits below 0.01 (a ratio far under its target, such as
/// an access that no longer exits against one that does, would read 0.00).
fn format_ratio(r: f64) -> String {
    if r != 0.0 && r.abs() < 0.01 && r.is_finite() {
        let decimals = (-r.abs().log10().floor()) as usize + 1;
        format!("{r:.decimals$}")
    } else {
        format!("{r:.2}")
    }
}

/// Three significant digits or more: `0.412`, `41.2`, `8123`.
fn format_value(v: f64) -> String {
    match v.abs() {
        a if a < 10.0 => format!("{v:.3}"),
        a if a < 1000.0 => format!("{v:.1}"),
        _ => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(format_ratio(1.0), "1.00");
        assert_eq!(format_ratio(0.0123), "0.01");
        assert_eq!(format_ratio(0.00108), "0.0011");
        assert_eq!(format_ratio(0.0), "0.00");
    }

    #[test]
    fn percentiles() {
        let s = Samples::new((1..=1000).rev().map(f64::from).collect());
        assert_eq!(s.median(), 501.0);
        assert_eq!(s.p99(), 990.0);
        assert_eq!(s.p90(), 900.0);
        assert_eq!((s.min(), s.max(), s.len()), (1.0, 1000.0, 1000));
        let one = Samples::new(vec![7.0]);
        assert_eq!((one.median(), one.p99()), (7.0, 7.0));
    }

    #[test]
    fn values() {
        assert_eq!(format_value(0.41234), "0.412");
        assert_eq!(format_value(41.234), "41.2");
        assert_eq!(format_value(8123.4), "8123");
    }
}
