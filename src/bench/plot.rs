//! plot: the side-by-side report's charts (not in etcd's benchmark). Reads the raw results
//! `compat-tests/bench-vs-etcd` writes (`docs/benchmarks.json`: `workloads` by name, each
//! with its `clients`; `runs`, each with `workload`, `server`, `status`, `rps`, `p99_ms`) and
//! draws, per server, the median over the successful runs of requests/s and of p99 latency
//! against the client count, one SVG each.

use std::path::{Path, PathBuf};

use clap::Args;
use plotters::prelude::*;

use super::BenchError;
use serde_json::Value as Json;

#[derive(Args, Debug, Clone)]
pub struct PlotArgs {
    /// The runner's raw results.
    #[arg(long, default_value = "docs/benchmarks.json")]
    pub input: PathBuf,
    /// The requests/s chart to write.
    #[arg(long, default_value = "docs/bench-put-throughput.svg")]
    pub throughput_out: PathBuf,
    /// The p99 latency chart to write.
    #[arg(long, default_value = "docs/bench-put-p99.svg")]
    pub p99_out: PathBuf,
    /// The runner's workloads to plot (comma-separated); each is one point at its client count.
    #[arg(long, value_delimiter = ',', default_value = "put-1,put-64,put-256")]
    pub workloads: Vec<String>,
}

/// The servers, by the runner's names, and their legends and colours.
const SERVERS: [(&str, &str, RGBColor); 2] = [
    ("etcd", "etcd 3.5.16", RGBColor(0x1f, 0x77, 0xb4)),
    ("cairn", "Cairn", RGBColor(0xd6, 0x27, 0x28)),
];

/// One line: a server's (clients, value) points, by client count.
#[derive(Debug, PartialEq)]
struct Series {
    server: &'static str,
    label: &'static str,
    colour: RGBColor,
    points: Vec<(f64, f64)>,
}

/// Writes both charts; returns the lines to print.
pub fn plot(a: &PlotArgs) -> Result<String, BenchError> {
    let text = std::fs::read_to_string(&a.input)
        .map_err(|e| BenchError::Fatal(format!("cannot read {}: {e}", a.input.display())))?;
    let results: Json =
        serde_json::from_str(&text).map_err(|e| BenchError::Fatal(format!("{}: {e}", a.input.display())))?;
    let rps = series(&results, &a.workloads, "rps")?;
    let p99 = series(&results, &a.workloads, "p99_ms")?;
    let what = a.workloads.join(", ");
    draw(&a.throughput_out, &format!("requests/s ({what})"), "requests/s", &rps)?;
    draw(&a.p99_out, &format!("p99 latency ({what})"), "p99 latency (ms)", &p99)?;
    Ok(format!("{}\n{}\n", a.throughput_out.display(), a.p99_out.display()))
}

/// Per server, the median of `metric` over each workload's successful runs, at the
/// workload's client count; workloads without a successful run of a server are left out of
/// its line. An error when no workload has a point at all.
fn series(results: &Json, workloads: &[String], metric: &str) -> Result<Vec<Series>, BenchError> {
    let runs: &[Json] = results
        .get("runs")
        .and_then(Json::as_array)
        .map_or(&[], |v| v.as_slice());
    let mut lines = Vec::new();
    for (server, label, colour) in SERVERS {
        let mut points = Vec::new();
        for w in workloads {
            let clients = results
                .get("workloads")
                .and_then(|ws| ws.get(w))
                .and_then(|d| d.get("clients"))
                .and_then(Json::as_f64);
            let values: Vec<f64> = runs
                .iter()
                .filter(|r| {
                    r.get("workload").and_then(Json::as_str) == Some(w)
                        && r.get("server").and_then(Json::as_str) == Some(server)
                        && r.get("status").and_then(Json::as_str) == Some("ok")
                })
                .filter_map(|r| r.get(metric).and_then(Json::as_f64))
                .collect();
            if let (Some(x), Some(y)) = (clients, median(values)) {
                points.push((x, y));
            }
        }
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        lines.push(Series {
            server,
            label,
            colour,
            points,
        });
    }
    if lines.iter().all(|l| l.points.is_empty()) {
        return Err(BenchError::Fatal(format!(
            "no successful run of {} with `clients` and `{metric}` in the results",
            workloads.join(", ")
        )));
    }
    Ok(lines)
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// One chart: clients on a log axis (1 to 256 spans orders of magnitude), the metric from 0.
fn draw(path: &Path, title: &str, y_label: &str, lines: &[Series]) -> Result<(), BenchError> {
    let fail = |e: &dyn std::fmt::Display| BenchError::Fatal(format!("cannot draw {}: {e}", path.display()));
    let points = || lines.iter().flat_map(|l| l.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0, f64::max);
    let y_max = points().map(|p| p.1).fold(0.0, f64::max);
    let y_top = if y_max > 0.0 { y_max * 1.15 } else { 1.0 };

    let root = SVGBackend::new(path, (720, 420)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((0.8..x_max * 1.25).log_scale(), 0.0..y_top)
        .map_err(|e| fail(&e))?;
    // Client counts are whole; a metric that reaches 10 needs no decimals either.
    let y_decimals = if y_top >= 10.0 { 0 } else { 2 };
    chart
        .configure_mesh()
        .x_desc("clients (log scale)")
        .y_desc(y_label)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.y_decimals$}"))
        .light_line_style(BLACK.mix(0.04))
        .draw()
        .map_err(|e| fail(&e))?;
    for line in lines.iter().filter(|l| !l.points.is_empty()) {
        let colour = line.colour;
        chart
            .draw_series(LineSeries::new(line.points.iter().copied(), colour.stroke_width(2)).point_size(4))
            .map_err(|e| fail(&e))?
            .label(line.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()
        .map_err(|e| fail(&e))?;
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESULTS: &str = r#"{"meta": {}, "workloads": {
        "put-1": {"total": 5, "clients": 1}, "put-64": {"total": 5, "clients": 64},
        "put-256": {"total": 5, "clients": 256}, "range-l-64": {"total": 5, "clients": 64}},
      "runs": [
        {"workload": "put-1", "server": "etcd", "status": "ok", "rps": 1000, "p99_ms": 4},
        {"workload": "put-1", "server": "etcd", "status": "ok", "rps": 1200, "p99_ms": 6},
        {"workload": "put-1", "server": "cairn", "status": "ok", "rps": 800, "p99_ms": 7},
        {"workload": "put-64", "server": "etcd", "status": "ok", "rps": 7000, "p99_ms": 28},
        {"workload": "put-64", "server": "cairn", "status": "server died", "rps": 1},
        {"workload": "put-256", "server": "etcd", "status": "ok", "rps": 9000, "p99_ms": 74},
        {"workload": "put-256", "server": "cairn", "status": "ok", "rps": 8900, "p99_ms": 60},
        {"workload": "range-l-64", "server": "cairn", "status": "ok", "rps": 99999, "p99_ms": 1}]}"#;

    fn put_workloads() -> Vec<String> {
        ["put-1", "put-64", "put-256"].map(String::from).to_vec()
    }

    #[test]
    fn medians_of_successful_runs_by_clients() {
        let results: Json = serde_json::from_str(RESULTS).unwrap();
        let lines = series(&results, &put_workloads(), "rps").unwrap();
        assert_eq!(lines[0].server, "etcd");
        assert_eq!(lines[0].points, [(1.0, 1100.0), (64.0, 7000.0), (256.0, 9000.0)]);
        // The failed run is no point; the range workload was not asked for.
        assert_eq!(lines[1].points, [(1.0, 800.0), (256.0, 8900.0)]);
        let p99 = series(&results, &put_workloads(), "p99_ms").unwrap();
        assert_eq!(p99[0].points[0], (1.0, 5.0));
        assert!(series(&results, &["txn-put-64".to_string()], "rps").is_err());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }

    #[test]
    fn writes_two_svgs_with_both_servers() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("benchmarks.json");
        std::fs::write(&input, RESULTS).unwrap();
        let a = PlotArgs {
            input,
            throughput_out: dir.path().join("t.svg"),
            p99_out: dir.path().join("p.svg"),
            workloads: put_workloads(),
        };
        let printed = plot(&a).unwrap();
        assert!(printed.contains("t.svg") && printed.contains("p.svg"), "{printed}");
        for path in [&a.throughput_out, &a.p99_out] {
            let svg = std::fs::read_to_string(path).unwrap();
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
            assert!(svg.contains("etcd 3.5.16") && svg.contains("Cairn"), "{svg}");
            // Each server's line and its legend mark, in its colour.
            for colour in ["stroke=\"#1F77B4\"", "stroke=\"#D62728\""] {
                assert!(svg.matches(colour).count() >= 2, "{colour} in {svg}");
            }
        }
        let missing = PlotArgs {
            input: dir.path().join("none.json"),
            ..a
        };
        assert!(matches!(plot(&missing), Err(BenchError::Fatal(_))));
    }
}
