//! Latency statistics and their two renderings: etcd's text report (`pkg/report` in etcd,
//! byte for byte in layout, so one parser reads both tools' output) and a JSON object.
//!
//! Latencies are kept exactly (8 bytes a request) and sorted, as etcd's report does, so the
//! percentiles are etcd's and not a histogram's approximation.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

/// The percentiles etcd's report prints, in its order.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Buckets in the response time histogram (plus one for the slowest), as etcd's.
const HISTOGRAM_BUCKETS: usize = 10;
/// Width of the longest histogram bar.
const BAR_WIDTH: usize = 40;
const BAR_CHAR: char = '∎';

/// What one worker (or several, merged) saw: each success's latency and each failure's text.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    latencies: Vec<f64>,
    errors: HashMap<String, u64>,
}

impl Recorder {
    pub fn success(&mut self, latency: Duration) {
        self.latencies.push(latency.as_secs_f64());
    }

    pub fn failure(&mut self, error: String) {
        *self.errors.entry(error).or_default() += 1;
    }

    pub fn record(&mut self, latency: Duration, result: Result<(), String>) {
        match result {
            Ok(()) => self.success(latency),
            Err(e) => self.failure(e),
        }
    }

    pub fn merge(&mut self, other: Recorder) {
        self.latencies.extend(other.latencies);
        for (e, n) in other.errors {
            *self.errors.entry(e).or_default() += n;
        }
    }

    pub fn successes(&self) -> usize {
        self.latencies.len()
    }

    pub fn failures(&self) -> u64 {
        self.errors.values().sum()
    }

    /// The statistics over everything recorded, `total` being the wall time of the run.
    pub fn stats(self, total: Duration) -> Stats {
        Stats::new(self.latencies, self.errors, total)
    }
}

/// etcd's report statistics (its `report.Stats`), in seconds.
#[derive(Debug, Clone)]
pub struct Stats {
    pub total: f64,
    pub fastest: f64,
    pub slowest: f64,
    pub average: f64,
    pub stddev: f64,
    pub rps: f64,
    /// Sorted ascending.
    pub latencies: Vec<f64>,
    /// Most frequent first, then by text.
    pub errors: Vec<(String, u64)>,
}

impl Stats {
    pub fn new(mut latencies: Vec<f64>, errors: HashMap<String, u64>, total: Duration) -> Stats {
        let total = total.as_secs_f64();
        let n = latencies.len() as f64;
        // As etcd's: the average and deviation of an empty run are NaN, and so never printed
        // (the text summary needs a success) or written as JSON (see `json_number`).
        let average = latencies.iter().sum::<f64>() / n;
        let stddev = (latencies.iter().map(|l| (l - average) * (l - average)).sum::<f64>() / n).sqrt();
        latencies.sort_by(f64::total_cmp);
        let mut errors: Vec<(String, u64)> = errors.into_iter().collect();
        errors.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        Stats {
            total,
            fastest: latencies.first().copied().unwrap_or(0.0),
            slowest: latencies.last().copied().unwrap_or(0.0),
            average,
            stddev,
            rps: n / total,
            latencies,
            errors,
        }
    }

    pub fn count(&self) -> usize {
        self.latencies.len()
    }

    pub fn error_count(&self) -> u64 {
        self.errors.iter().map(|(_, n)| n).sum()
    }

    /// etcd's percentiles: walking the sorted latencies, the first at or past each percentile
    /// (one percentile a step); 0 for a percentile the walk never reached (too few samples),
    /// which the text report leaves out.
    pub fn percentiles(&self) -> [f64; 8] {
        percentiles(&self.latencies)
    }

    /// The histogram's (upper bound, count) rows, computed as etcd's.
    pub fn histogram(&self) -> Vec<(f64, usize)> {
        histogram(&self.latencies, self.fastest, self.slowest)
    }

    /// etcd's text report: empty but for the error distribution when nothing succeeded.
    pub fn text(&self, precision: Precision) -> String {
        let mut s = String::new();
        let sec = |v: f64| format!("{} secs", precision.fmt(v));
        if !self.latencies.is_empty() {
            s.push_str("\nSummary:\n");
            let _ = writeln!(s, "  Total:\t{}.", sec(self.total));
            let _ = writeln!(s, "  Slowest:\t{}.", sec(self.slowest));
            let _ = writeln!(s, "  Fastest:\t{}.", sec(self.fastest));
            let _ = writeln!(s, "  Average:\t{}.", sec(self.average));
            let _ = writeln!(s, "  Stddev:\t{}.", sec(self.stddev));
            let _ = writeln!(s, "  Requests/sec:\t{}", precision.fmt(self.rps));

            s.push_str("\nResponse time histogram:\n");
            let rows = self.histogram();
            let max = rows.iter().map(|r| r.1).max().unwrap_or(0);
            for (bound, count) in rows {
                let bar = (count * BAR_WIDTH).checked_div(max).unwrap_or(0);
                let bar: String = std::iter::repeat_n(BAR_CHAR, bar).collect();
                let _ = writeln!(s, "  {} [{count}]\t|{bar}", precision.fmt(bound));
            }

            s.push_str("\nLatency distribution:\n");
            for (p, v) in PERCENTILES.iter().zip(self.percentiles()) {
                if v > 0.0 {
                    let _ = writeln!(s, "  {p}% in {}.", sec(v));
                }
            }
        }
        if !self.errors.is_empty() {
            s.push_str("\nError distribution:\n");
            for (e, n) in &self.errors {
                let _ = writeln!(s, "  [{n}]\t{e}");
            }
        }
        s
    }

    /// The JSON fields of this report, without braces. A percentile etcd's walk did not reach
    /// (too few samples) is the slowest latency, the nearest-rank answer there.
    pub fn json_fields(&self) -> String {
        let pct = self.percentiles();
        let p = |i: usize| if pct[i] > 0.0 { pct[i] } else { self.slowest };
        let mut s = String::new();
        let _ = write!(
            s,
            "\"count\":{},\"errors\":{},\"requests_per_sec\":{},\"total\":{},\"average\":{},\
             \"fastest\":{},\"slowest\":{},\"stddev\":{},\"p10\":{},\"p25\":{},\"p50\":{},\
             \"p75\":{},\"p90\":{},\"p95\":{},\"p99\":{},\"p99_9\":{},\"error_distribution\":{{",
            self.count(),
            self.error_count(),
            json_number(self.rps),
            json_number(self.total),
            json_number(self.average),
            json_number(self.fastest),
            json_number(self.slowest),
            json_number(self.stddev),
            json_number(p(0)),
            json_number(p(1)),
            json_number(p(2)),
            json_number(p(3)),
            json_number(p(4)),
            json_number(p(5)),
            json_number(p(6)),
            json_number(p(7)),
        );
        for (i, (e, n)) in self.errors.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{}:{n}", json_string(e));
        }
        s.push('}');
        s
    }
}

/// etcd's `percentiles` (pkg/report), on latencies sorted ascending.
pub fn percentiles(sorted: &[f64]) -> [f64; 8] {
    let mut data = [0.0; 8];
    let n = sorted.len();
    let mut j = 0;
    let mut i = 0;
    while i < n && j < PERCENTILES.len() {
        let current = i as f64 * 100.0 / n as f64;
        if current >= PERCENTILES[j] {
            data[j] = sorted[i];
            j += 1;
        }
        i += 1;
    }
    data
}

/// etcd's histogram (pkg/report): ten equal buckets from the fastest up, then the slowest;
/// each latency counts in the first bucket whose bound is at or above it.
pub fn histogram(sorted: &[f64], fastest: f64, slowest: f64) -> Vec<(f64, usize)> {
    let step = (slowest - fastest) / HISTOGRAM_BUCKETS as f64;
    let mut bounds: Vec<f64> = (0..HISTOGRAM_BUCKETS).map(|i| fastest + step * i as f64).collect();
    bounds.push(slowest);
    let mut counts = vec![0usize; bounds.len()];
    let mut bucket = 0;
    let mut i = 0;
    while i < sorted.len() {
        if sorted[i] <= bounds[bucket] {
            counts[bucket] += 1;
            i += 1;
        } else if bucket < bounds.len() - 1 {
            bucket += 1;
        } else {
            // Past the slowest: only a NaN could be; count it last rather than loop forever.
            counts[bucket] += 1;
            i += 1;
        }
    }
    bounds.into_iter().zip(counts).collect()
}

/// How numbers print: etcd's `%4.4f`, or `%g` under `--precise`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    Fixed,
    Full,
}

impl Precision {
    pub fn fmt(self, v: f64) -> String {
        match self {
            Precision::Fixed => format!("{v:4.4}"),
            Precision::Full => go_g(v),
        }
    }
}

/// Go's `%g` for a float64: the shortest digits that round-trip, in exponent form (at least
/// two exponent digits) when the exponent is below -4 or at least 6, as Go's shortest `%g`.
pub fn go_g(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "NaN".into()
        } else if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    // Rust's `{:e}` is the shortest round-trip mantissa: "1.234e-5".
    let e = format!("{v:e}");
    let (mantissa, exp) = e.split_once('e').unwrap_or((&e, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        let sign = if exp < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exp.abs())
    } else {
        format!("{v}")
    }
}

/// A finite number as JSON; JSON has no NaN or infinity, so those (an empty run's average)
/// are 0.
pub fn json_number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else {
        "0".into()
    }
}

/// A JSON string literal (the escaping of the server's own JSON log lines).
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    crate::logging::json_string(&mut out, s);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats_of(ms: &[u64], total: Duration) -> Stats {
        let mut r = Recorder::default();
        for &m in ms {
            r.success(Duration::from_millis(m));
        }
        r.stats(total)
    }

    #[test]
    fn percentiles_walk_as_etcds() {
        // 1..=100 ms: the i-th sample (0-based) stands at i% of the run.
        let lats: Vec<f64> = (1..=100).map(|i| i as f64 / 1000.0).collect();
        let p = percentiles(&lats);
        assert_eq!(p, [0.011, 0.026, 0.051, 0.076, 0.091, 0.096, 0.1, 0.0]);
        // 99.9% needs a thousand samples to be reached.
        let lats: Vec<f64> = (1..=1000).map(|i| i as f64).collect();
        let p = percentiles(&lats);
        assert_eq!(p, [101.0, 251.0, 501.0, 751.0, 901.0, 951.0, 991.0, 1000.0]);
        // Too few samples: one percentile a step, the rest never reached.
        assert_eq!(
            percentiles(&[1.0, 2.0, 3.0, 4.0]),
            [2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
        assert_eq!(percentiles(&[]), [0.0; 8]);
    }

    #[test]
    fn histogram_buckets_as_etcds() {
        let lats: Vec<f64> = (0..=10).map(f64::from).collect();
        let rows = histogram(&lats, 0.0, 10.0);
        assert_eq!(rows.len(), 11);
        let bounds: Vec<f64> = rows.iter().map(|r| r.0).collect();
        assert_eq!(bounds, (0..=10).map(f64::from).collect::<Vec<_>>());
        assert!(rows.iter().all(|r| r.1 == 1), "{rows:?}");

        // Counts go to the first bound at or above; the last bound is the slowest.
        let lats = [1.0, 1.05, 1.5, 2.0];
        let rows = histogram(&lats, 1.0, 2.0);
        let counts: Vec<usize> = rows.iter().map(|r| r.1).collect();
        assert_eq!(counts, [1, 1, 0, 0, 0, 1, 0, 0, 0, 0, 1]);
        assert_eq!(counts.iter().sum::<usize>(), lats.len());

        // All equal: every sample in the first bucket.
        let rows = histogram(&[0.5; 7], 0.5, 0.5);
        assert_eq!(rows[0], (0.5, 7));
        assert_eq!(rows.iter().map(|r| r.1).sum::<usize>(), 7);
    }

    #[test]
    fn summary_math() {
        let s = stats_of(&[10, 20, 30, 40], Duration::from_secs(2));
        assert_eq!(s.count(), 4);
        assert!((s.average - 0.025).abs() < 1e-12);
        assert!((s.stddev - 0.0125f64.sqrt() * 0.1).abs() < 1e-12, "{}", s.stddev);
        assert_eq!((s.fastest, s.slowest), (0.01, 0.04));
        assert!((s.rps - 2.0).abs() < 1e-12);
    }

    #[test]
    fn text_report_has_etcds_layout() {
        let mut r = Recorder::default();
        for m in 1..=1000u64 {
            r.success(Duration::from_micros(m * 10));
        }
        r.failure("etcdserver: request timed out".into());
        r.failure("etcdserver: request timed out".into());
        r.failure("rpc error: code = Unavailable desc = x".into());
        let text = r.stats(Duration::from_millis(500)).text(Precision::Fixed);
        assert!(text.starts_with("\nSummary:\n  Total:\t0.5000 secs.\n"), "{text}");
        assert!(text.contains("  Slowest:\t0.0100 secs.\n"), "{text}");
        assert!(text.contains("  Fastest:\t0.0000 secs.\n"), "{text}");
        assert!(text.contains("  Requests/sec:\t2000.0000\n"), "{text}");
        assert!(text.contains("\nResponse time histogram:\n  0.0000 [1]\t|\n"), "{text}");
        assert!(text.contains("  0.0100 [100]\t|∎∎∎∎"), "{text}");
        assert!(
            text.contains("\nLatency distribution:\n  10% in 0.0010 secs.\n"),
            "{text}"
        );
        assert!(text.contains("  99.9% in 0.0100 secs.\n"), "{text}");
        assert!(
            text.ends_with(
                "\nError distribution:\n  [2]\tetcdserver: request timed out\n  [1]\trpc error: code = Unavailable desc = x\n"
            ),
            "{text}"
        );
        // Only errors: no summary, as etcd's.
        let mut r = Recorder::default();
        r.failure("boom".into());
        let text = r.stats(Duration::from_secs(1)).text(Precision::Fixed);
        assert_eq!(text, "\nError distribution:\n  [1]\tboom\n");
    }

    #[test]
    fn json_fields_are_complete_and_finite() {
        let s = stats_of(&[], Duration::from_secs(1));
        let json = format!("{{{}}}", s.json_fields());
        assert!(
            json.starts_with("{\"count\":0,\"errors\":0,\"requests_per_sec\":0,"),
            "{json}"
        );
        assert!(!json.contains("NaN") && !json.contains("inf"), "{json}");

        let mut r = Recorder::default();
        r.success(Duration::from_millis(5));
        r.failure("say \"no\"\n".into());
        let json = r.stats(Duration::from_secs(1)).json_fields();
        assert!(json.contains("\"count\":1,\"errors\":1,"), "{json}");
        // Unreached percentiles fall back to the slowest.
        assert!(
            json.contains("\"p50\":0.005,") && json.contains("\"p99_9\":0.005,"),
            "{json}"
        );
        assert!(
            json.ends_with("\"error_distribution\":{\"say \\\"no\\\"\\n\":1}"),
            "{json}"
        );
    }

    #[test]
    fn go_g_formatting() {
        assert_eq!(go_g(0.0), "0");
        assert_eq!(go_g(0.0012), "0.0012");
        assert_eq!(go_g(0.00005), "5e-05");
        assert_eq!(go_g(1.25e-7), "1.25e-07");
        assert_eq!(go_g(12345.5), "12345.5");
        assert_eq!(go_g(1e6), "1e+06");
        assert_eq!(go_g(1234567.0), "1.234567e+06");
        assert_eq!(Precision::Fixed.fmt(0.00123456), "0.0012");
        assert_eq!(Precision::Fixed.fmt(12.5), "12.5000");
    }
}
