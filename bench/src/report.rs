//! The table, `bench-results.json` and `BENCHMARKS.md`, all from the figures of one run.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use anyhow::Result;

use crate::Results;

/// A target: how it reads, and its check (`None` when a figure it needs is missing).
type Target = (&'static str, fn(&Results) -> Option<bool>);

/// A figure the issue names: its unit, what it means, and its target if it has one.
struct Spec {
    key: &'static str,
    unit: &'static str,
    means: &'static str,
    target: Option<Target>,
}

fn at_most(r: &Results, key: &str, limit: f64) -> Option<bool> {
    r.get(key).map(|v| v <= limit)
}

const SPECS: &[Spec] = &[
    Spec {
        key: "swipe_to_relay_p50_ms",
        unit: "ms",
        means: "a card appears in an hw-sim reader mailbox → the relay board receives the pulse, over Modbus TCP; 8 lanes at 60 persons/min each, counting only swipes made while 100k-entry signed snapshots are applied one after another and a 100k-event backlog drains to mosquitto (5 such windows, `load_windows_s` in all)",
        target: None,
    },
    Spec {
        key: "swipe_to_relay_p99_ms",
        unit: "ms",
        means: "the same, 99th percentile",
        target: Some(("≤ poll_ms + 5", |r| {
            Some(r.get("swipe_to_relay_p99_ms")? <= r.get("poll_ms")? + 5.0)
        })),
    },
    Spec {
        key: "swipe_to_relay_max_ms",
        unit: "ms",
        means: "the same, worst swipe",
        target: None,
    },
    Spec {
        key: "poll_ms",
        unit: "ms",
        means: "the reader poll interval used (gated's default)",
        target: None,
    },
    Spec {
        key: "modbus_rtt_p50_ms",
        unit: "ms",
        means: "a bare tokio-modbus read of the 36 mailbox registers, same run",
        target: None,
    },
    Spec {
        key: "lookup_p99_us_1k",
        unit: "µs",
        means: "one decision, store lookup included (Db::decide), 800 staff + 200 invitations",
        target: None,
    },
    Spec {
        key: "lookup_p99_us_250k",
        unit: "µs",
        means: "the same with 250k staff (a card and a face each) + 50k invitations",
        target: Some(("≤ 200 and ≤ 1.2 × 1k", |r| {
            Some(
                r.get("lookup_p99_us_250k")? <= 200.0
                    && r.get("lookup_p99_us_250k")? <= 1.2 * r.get("lookup_p99_us_1k")?,
            )
        })),
    },
    Spec {
        key: "snapshot_apply_100k_s",
        unit: "s",
        means: "a signed 100k-entry staff snapshot replacing 100k in force: signature check, parse, and the stepped apply until the new list is in force (when the gate acks it); the cleanup of the old list after the ack is `snapshot_cleanup_100k_s`",
        target: Some(("≤ 3", |r| at_most(r, "snapshot_apply_100k_s", 3.0))),
    },
    Spec {
        key: "delta_apply_1k_ms",
        unit: "ms",
        means: "a signed 1k-entry delta: signature check, parse, apply",
        target: Some(("≤ 100", |r| at_most(r, "delta_apply_1k_ms", 100.0))),
    },
    Spec {
        key: "decision_p99_us",
        unit: "µs",
        means: "a pass decided and durably recorded (what a lane waits for before its relay), one every 2 ms, no apply (3 s before the apply and 3 s after it, pooled)",
        target: None,
    },
    Spec {
        key: "decision_p99_during_apply_us",
        unit: "µs",
        means: "the same while the 100k snapshot is applied and the old list cleaned up",
        target: Some(("≤ 2 × decision_p99_us", |r| {
            Some(r.get("decision_p99_during_apply_us")? <= 2.0 * r.get("decision_p99_us")?)
        })),
    },
    Spec {
        key: "flush_events_per_s",
        unit: "events/s",
        means: "a 100k-event backlog drained from gated's outbox to a local mosquitto (first message seen → outbox empty)",
        target: Some(("≥ 2000", |r| Some(r.get("flush_events_per_s")? >= 2000.0))),
    },
    Spec {
        key: "raw_publish_per_s",
        unit: "msgs/s",
        means: "a bare rumqttc QoS 1 publisher, 64 in flight like gated, the same payloads, same broker (first message seen → last PUBACK)",
        target: None,
    },
    Spec {
        key: "flush_ratio",
        unit: "",
        means: "flush_events_per_s / raw_publish_per_s",
        target: Some(("≥ 0.5", |r| Some(r.get("flush_ratio")? >= 0.5))),
    },
    Spec {
        key: "commit_events_per_s",
        unit: "events/s",
        means: "passes decided and durably recorded by gated's store, one at a time (WAL, synchronous=FULL)",
        target: None,
    },
    Spec {
        key: "raw_commit_per_s",
        unit: "commits/s",
        means: "bare SQLite, one event-sized row per transaction, same WAL and synchronous=FULL",
        target: None,
    },
    Spec {
        key: "commit_ratio",
        unit: "",
        means: "commit_events_per_s / raw_commit_per_s",
        target: None,
    },
    Spec {
        key: "rss_idle_mb",
        unit: "MB",
        means: "resident memory of gated, 8 lanes, empty lists and outbox, connected",
        target: None,
    },
    Spec {
        key: "rss_loaded_mb",
        unit: "MB",
        means: "peak resident memory (VmHWM) over 20 s with 250k staff, 50k invitations and a 1M-event backlog, draining, 8 lanes swiping",
        target: Some(("≤ 40", |r| at_most(r, "rss_loaded_mb", 40.0))),
    },
    Spec {
        key: "startup_ms_1m_backlog",
        unit: "ms",
        means: "exec of `gated run` → the relay pulse of a swipe waiting in the reader, with a 1M-event backlog (median of 5)",
        target: Some(("≤ 300", |r| at_most(r, "startup_ms_1m_backlog", 300.0))),
    },
    Spec {
        key: "sigkill_rounds",
        unit: "",
        means: "SIGKILLs at random moments (30–600 ms after start) during traffic on 4 lanes, restarted each time",
        target: Some(("≥ 200", |r| Some(r.get("sigkill_rounds")? >= 200.0))),
    },
    Spec {
        key: "sigkill_lost_events",
        unit: "",
        means: "relay pulses whose granted event never reached the broker, plus gaps in the event seq",
        target: Some(("0", |r| Some(r.get("sigkill_lost_events")? == 0.0))),
    },
];

fn fmt(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v}")
    }
}

fn verdict(s: &Spec, r: &Results) -> &'static str {
    match s.target.map(|(_, check)| check(r)) {
        None => "",
        Some(Some(true)) => "met",
        Some(Some(false)) => "MISSED",
        Some(None) => "not measured",
    }
}

/// The figures with a spec, as markdown table rows; then any others.
fn table(r: &Results) -> String {
    let mut t = String::from("| figure | value | unit | target | |\n|---|---:|---|---|---|\n");
    for s in SPECS {
        let v = r.get(s.key).map_or("not measured".into(), fmt);
        let target = s.target.map_or("", |(t, _)| t);
        let _ = writeln!(
            t,
            "| `{}` | {v} | {} | {target} | {} |",
            s.key,
            s.unit,
            verdict(s, r)
        );
    }
    t += "\nAlso measured in the same run:\n\n| figure | value |\n|---|---:|\n";
    for (k, v) in &r.figures {
        if !SPECS.iter().any(|s| s.key == k) {
            let _ = writeln!(t, "| `{k}` | {} |", fmt(*v));
        }
    }
    t
}

pub fn print(r: &Results) {
    println!();
    println!(
        "{:<32} {:>12}  {:<10} {:<24} ",
        "figure", "value", "unit", "target"
    );
    for s in SPECS {
        let Some(v) = r.get(s.key) else { continue };
        let target = s.target.map_or("", |(t, _)| t);
        println!(
            "{:<32} {:>12}  {:<10} {:<24} {}",
            s.key,
            fmt(v),
            s.unit,
            target,
            verdict(s, r)
        );
    }
    for (k, v) in &r.figures {
        if !SPECS.iter().any(|s| s.key == k) {
            println!("{k:<32} {:>12}", fmt(*v));
        }
    }
}

fn first_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_else(|| "unknown".into())
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1024.0
                    / 1024.0
            })
        })
        .unwrap_or(0.0);
    let mosquitto = crate::infra::mosquitto_bin()
        .map(|b| first_line(&b.display().to_string(), &["-h"]))
        .unwrap_or_default();
    format!(
        "- CPU: {cpu}, {cores} cores; {mem:.0} GiB of memory\n- {}\n- {}\n- {mosquitto}\n- SQLite {} (bundled by rusqlite)\n- run on {} UTC\n",
        first_line("uname", &["-sr"]),
        first_line("rustc", &["-V"]),
        rusqlite::version(),
        chrono::Utc::now().format("%Y-%m-%d %H:%M"),
    )
}

/// Writes `bench-results.json` and `BENCHMARKS.md` into `out`. The analysis (profiles of the
/// figures that miss, and why) is `bench/analysis.md`, written by a person and included as is.
pub fn write(r: &Results, out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    let json: serde_json::Map<String, serde_json::Value> = r
        .figures
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    std::fs::write(
        out.join("bench-results.json"),
        serde_json::to_string_pretty(&json)? + "\n",
    )?;

    let mut md = String::from(
        "# Benchmarks\n\n\
         Written by `bench/run` (the harness in `bench/`) in the same run as `bench-results.json`. \
         Every figure is measured, on the machine below, next to the raw limit it is compared \
         with where it has one. Nothing here is edited by hand but the analysis at the end, \
         which is `bench/analysis.md`.\n\n## The machine\n\n",
    );
    md += &machine();
    md += "\n## The commands\n\n```sh\nbench/run                                   # everything, in release: builds, then runs\n\
           target/release/gated-bench sigkill --rounds 200   # the crash test alone\n```\n\n## The figures\n\n";
    md += &table(r);
    md += "\n## What each figure means\n\n";
    for s in SPECS {
        let _ = writeln!(md, "- `{}`: {}.", s.key, s.means);
    }
    let missed: Vec<&str> = SPECS
        .iter()
        .filter(|s| verdict(s, r) == "MISSED")
        .map(|s| s.key)
        .collect();
    md += "\n## Targets\n\n";
    if missed.is_empty() {
        md += "Every target was met in this run.\n";
    } else {
        let _ = writeln!(
            md,
            "Missed in this run: {}.",
            missed
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let analysis = Path::new(env!("CARGO_MANIFEST_DIR")).join("analysis.md");
    if let Ok(text) = std::fs::read_to_string(&analysis) {
        md += "\n";
        md += &text;
    }
    std::fs::write(out.join("BENCHMARKS.md"), md)?;
    eprintln!(
        "wrote {} and {}",
        out.join("bench-results.json").display(),
        out.join("BENCHMARKS.md").display()
    );
    Ok(())
}
