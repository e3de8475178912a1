//! `vibebox logs [--network] [--follow]`.

use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::time::Duration;

use vibebox_core::project::Project;

use crate::context::Context;
use crate::error::hinted;

/// The last `n` denied network decisions of `project`, as one-line summaries.
pub fn recent_denials(project: &Project, n: usize) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(project.logs_dir().join("network.log")) else {
        return Vec::new();
    };
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["verdict"] == "deny")
        .map(|e| {
            format!(
                "{} {} {}{} ({})",
                e["time"].as_str().unwrap_or_default(),
                e["kind"].as_str().unwrap_or_default(),
                e["name"]
                    .as_str()
                    .map(|n| format!("{n} "))
                    .unwrap_or_default(),
                e["destination"].as_str().unwrap_or_default(),
                e["reason"].as_str().unwrap_or_default()
            )
        })
        .collect();
    let skip = out.len().saturating_sub(n);
    out.drain(..skip);
    out
}

/// Runs `vibebox logs`.
pub fn run(ctx: &Context, network: bool, follow: bool) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    let name = if network {
        "network.log"
    } else {
        "supervisor.log"
    };
    let path = project.logs_dir().join(name);
    let file = std::fs::File::open(&path).map_err(|e| {
        hinted(
            format!("cannot read {}: {e}", path.display()),
            "the log appears once the box of this project has started (`vibebox`)",
        )
    })?;
    let mut reader = BufReader::new(file);
    let mut out = std::io::stdout().lock();
    let mut line = String::new();
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            if !follow {
                return Ok(());
            }
            out.flush()?;
            std::thread::sleep(Duration::from_millis(200));
            // The log may have been replaced (a new session): start over then.
            let pos = reader.stream_position()?;
            if std::fs::metadata(&path)
                .map(|m| m.len() < pos)
                .unwrap_or(false)
            {
                reader = BufReader::new(std::fs::File::open(&path)?);
                reader.seek(SeekFrom::Start(0))?;
            }
            continue;
        }
        if out.write_all(line.as_bytes()).is_err() {
            return Ok(());
        }
    }
}
