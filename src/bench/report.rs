//! The bench's summary: a few human-readable lines, or one JSON object on one line (`--json`) for scripts.
//!
//! Rules the code keeps: latencies are reported in milliseconds with microsecond precision (three
//! decimals), throughput as successes per second of the measured window; the JSON has the same figures as
//! the text and a stable set of keys (documented on [`to_json`]), whatever the workload (empty histograms
//! report zeros).

use super::histogram::Histogram;
use super::{Outcome, Workload};
use serde_json::{json, Value};

fn ms(ns: u64) -> f64 {
    (ns as f64 / 1e6 * 1000.0).round() / 1000.0
}

fn latency(h: &Histogram) -> Value {
    json!({
        "count": h.count(),
        "p50_ms": ms(h.percentile(50.0)),
        "p90_ms": ms(h.percentile(90.0)),
        "p99_ms": ms(h.percentile(99.0)),
        "p999_ms": ms(h.percentile(99.9)),
        "max_ms": ms(h.max()),
        "mean_ms": ms(h.mean().round() as u64),
    })
}

fn all(o: &Outcome) -> Histogram {
    let mut h = o.measured.reads.clone();
    h.merge(&o.measured.writes);
    h
}

fn rate(n: u64, o: &Outcome) -> f64 {
    let s = o.window.as_secs_f64();
    if s > 0.0 {
        (n as f64 / s * 10.0).round() / 10.0
    } else {
        0.0
    }
}

/// Total errors counted in the window.
pub fn errors(o: &Outcome) -> u64 {
    o.measured.errors.values().sum()
}

/// One JSON object: `api`, `workload`, `consistency` (null for writes), `read_percent`, `targets`,
/// `connections`, `duration_s`, `warmup_s`, `keys`, `value_size`, `unique_keys`, `preloaded`,
/// `preload_s`, `started_unix`, `ops` (successes), `ops_per_sec`, `errors` (total), `errors_by_kind`
/// (`{"http 503": n, "io TimedOut": n, ...}`), `latency` / `reads` / `writes` (each `count`, `p50_ms`,
/// `p90_ms`, `p99_ms`, `p999_ms`, `max_ms`, `mean_ms`), `reconnects` (connections opened in the run beyond
/// the first per connection thread), `client_cpu_s` and `client_cpu_pct` (this process's CPU over warmup
/// and window, as a percentage of one core over the same time; null if unknown).
pub fn to_json(o: &Outcome) -> Value {
    let c = &o.cfg;
    let h = all(o);
    let span = (c.warmup + o.window).as_secs_f64();
    json!({
        "api": c.api.name(),
        "workload": c.workload.name(),
        "consistency": if c.workload == Workload::Write { Value::Null } else { json!(c.consistency.name()) },
        "read_percent": c.read_percent,
        "targets": c.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "connections": c.connections,
        "duration_s": o.window.as_secs_f64(),
        "warmup_s": c.warmup.as_secs_f64(),
        "keys": c.keys,
        "value_size": c.value_size,
        "unique_keys": c.unique_keys,
        "preloaded": o.preloaded,
        "preload_s": (o.preload_time.as_secs_f64() * 1000.0).round() / 1000.0,
        "started_unix": o.started_unix,
        "ops": h.count(),
        "ops_per_sec": rate(h.count(), o),
        "errors": errors(o),
        "errors_by_kind": o.measured.errors,
        "latency": latency(&h),
        "reads": latency(&o.measured.reads),
        "writes": latency(&o.measured.writes),
        "reconnects": o.measured.connects,
        "client_cpu_s": o.client_cpu.map(|d| d.as_secs_f64()),
        "client_cpu_pct": o.client_cpu.map(|d| (d.as_secs_f64() / span * 1000.0).round() / 10.0),
    })
}

fn latency_line(label: &str, h: &Histogram) -> String {
    format!(
        "{label:<8} {:>9} ok   p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3} ms",
        h.count(),
        ms(h.percentile(50.0)),
        ms(h.percentile(90.0)),
        ms(h.percentile(99.0)),
        ms(h.percentile(99.9)),
        ms(h.max()),
        h.mean() / 1e6
    )
}

/// The human-readable summary (several lines, ending in a newline).
pub fn to_text(o: &Outcome) -> String {
    let c = &o.cfg;
    let h = all(o);
    let targets: Vec<String> = c.targets.iter().map(|t| t.to_string()).collect();
    let what = match c.workload {
        Workload::Write if c.unique_keys => "writes to fresh keys".to_string(),
        Workload::Write => "writes".to_string(),
        Workload::Read => format!("{} reads", c.consistency.name()),
        Workload::Mixed => format!(
            "{}% {} reads, {}% writes{}",
            c.read_percent,
            c.consistency.name(),
            100 - c.read_percent,
            if c.unique_keys { " to fresh keys" } else { "" }
        ),
    };
    let mut s = format!(
        "{what} via the {} API: {} connection(s) to {}, {:.1} s measured after {:.1} s warmup, {} keys, \
         {}-byte values\n",
        c.api.name(),
        c.connections,
        targets.join(","),
        o.window.as_secs_f64(),
        c.warmup.as_secs_f64(),
        c.keys,
        c.value_size
    );
    if c.preload {
        s += &format!(
            "preloaded {} keys in {:.2} s\n",
            o.preloaded,
            o.preload_time.as_secs_f64()
        );
    }
    s += &format!(
        "ops: {} in {:.1} s = {:.1} ops/s; errors: {}\n",
        h.count(),
        o.window.as_secs_f64(),
        rate(h.count(), o),
        errors(o)
    );
    s += &latency_line("all", &h);
    s.push('\n');
    if c.workload == Workload::Mixed {
        s += &latency_line("reads", &o.measured.reads);
        s.push('\n');
        s += &latency_line("writes", &o.measured.writes);
        s.push('\n');
    }
    if !o.measured.errors.is_empty() {
        let kinds: Vec<String> = o
            .measured
            .errors
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        s += &format!("errors by kind: {}\n", kinds.join(", "));
    }
    if o.measured.connects > 0 {
        s += &format!("reconnects: {}\n", o.measured.connects);
    }
    if let Some(cpu) = o.client_cpu {
        let span = (c.warmup + o.window).as_secs_f64();
        s += &format!(
            "load generator CPU: {:.2} s over {:.1} s ({:.0}% of one core)\n",
            cpu.as_secs_f64(),
            span,
            cpu.as_secs_f64() / span * 100.0
        );
    }
    s
}
