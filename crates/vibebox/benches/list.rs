//! `vibebox list` with 10, 1,000 and 10,000 sessions in the index.
//!
//! Not a timed test: it reports times and the growth ratio between sizes, so a
//! person can see that listing stays linear. Run with `cargo bench --bench list`.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use vibebox_core::index::{Index, IndexError, SessionEntry};

fn populate(home: &Path, projects: &Path, n: usize) {
    let now = Timestamp::now();
    let entries: Vec<SessionEntry> = (0..n)
        .map(|i| {
            let dir = projects.join(format!("p{i}"));
            std::fs::create_dir_all(dir.join(".vibebox")).expect("project dir");
            SessionEntry {
                id: uuid::Uuid::now_v7(),
                directory: dir,
                created: now,
                last_active: now,
                forked_from: None,
            }
        })
        .collect();
    Index::new(home)
        .update(|e| {
            *e = entries;
            Ok::<_, IndexError>(())
        })
        .expect("index written");
}

fn time_list(home: &Path, json: bool) -> Duration {
    let mut best = Duration::MAX;
    for _ in 0..5 {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vibebox"));
        cmd.arg("list").env("VIBEBOX_HOME", home);
        if json {
            cmd.arg("--json");
        }
        let start = Instant::now();
        let out = cmd.output().expect("vibebox list runs");
        let took = start.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        best = best.min(took);
    }
    best
}

fn main() {
    println!(
        "| sessions | list (ms) | list --json (ms) | per session (µs) | growth vs previous size |"
    );
    println!("|---:|---:|---:|---:|---:|");
    let mut previous: Option<(usize, Duration)> = None;
    for n in [10usize, 1_000, 10_000] {
        let root = tempfile::tempdir().expect("temp dir");
        let home = root.path().join("home");
        populate(&home, &root.path().join("projects"), n);
        let text = time_list(&home, false);
        let json = time_list(&home, true);
        let growth = previous
            .map(|(pn, pt)| {
                format!(
                    "x{:.1} time for x{} sessions",
                    text.as_secs_f64() / pt.as_secs_f64(),
                    n / pn
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "| {n} | {:.1} | {:.1} | {:.1} | {growth} |",
            text.as_secs_f64() * 1e3,
            json.as_secs_f64() * 1e3,
            text.as_secs_f64() * 1e6 / n as f64,
        );
        previous = Some((n, text));
    }
}
