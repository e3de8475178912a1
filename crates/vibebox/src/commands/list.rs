//! `vibebox list`: every session with its state.

use jiff::Timestamp;
use serde::Serialize;
use vibebox_core::project::Project;

use crate::context::Context;
use crate::terminal;
use vibebox_supervisor::protocol as control;

#[derive(Serialize)]
struct Row {
    id: String,
    directory: String,
    state: String,
    clients: u32,
    last_active: String,
    created: String,
    /// Host disk used by the instance disk, in bytes.
    disk_bytes: u64,
    /// Host disk used by saved machine state (suspend), in bytes.
    state_bytes: u64,
    /// Host disk used by the container runtime's writable layer, in bytes.
    container_bytes: u64,
    /// The session this one was forked from.
    #[serde(skip_serializing_if = "Option::is_none")]
    forked_from: Option<String>,
}

/// Bytes for a person: `512 MiB`, `1.2 GiB`.
fn size(bytes: u64) -> String {
    const MIB: f64 = (1u64 << 20) as f64;
    let mib = bytes as f64 / MIB;
    if mib >= 1024.0 {
        format!("{:.1} GiB", mib / 1024.0)
    } else {
        format!("{mib:.0} MiB")
    }
}

/// Runs `vibebox list`.
pub fn run(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let mut entries = ctx.index.update(|e| Ok::<_, anyhow::Error>(e.clone()))?;
    entries.sort_by_key(|e| std::cmp::Reverse(e.last_active));
    let rows: Vec<Row> = entries
        .iter()
        .map(|e| {
            let project = Project::at(&e.directory);
            let usage = project.disk_usage();
            let status = control::status(&project.socket_path());
            let at_rest = if vibebox_vm::runtime::is_suspended(&project, &ctx.home, &e.id) {
                "suspended"
            } else {
                "stopped"
            };
            Row {
                id: e.id.to_string(),
                directory: e.directory.display().to_string(),
                state: status
                    .as_ref()
                    .map_or(at_rest.into(), |s| s.state.to_string()),
                clients: status.map_or(0, |s| s.clients),
                last_active: e.last_active.to_string(),
                created: e.created.to_string(),
                disk_bytes: usage.disk_bytes,
                state_bytes: usage.state_bytes,
                container_bytes: usage.container_bytes,
                forked_from: e.forked_from.map(|p| p.to_string()),
            }
        })
        .collect();
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no sessions yet: run `vibebox` in a project directory to create one");
        return Ok(());
    }
    let now = Timestamp::now();
    let mut table = vec![vec![
        "ID".to_string(),
        "STATE".to_string(),
        "CLIENTS".to_string(),
        "DISK".to_string(),
        "LAST ACTIVE".to_string(),
        "DIRECTORY".to_string(),
    ]];
    for (row, e) in rows.iter().zip(&entries) {
        table.push(vec![
            row.id.clone(),
            row.state.clone(),
            row.clients.to_string(),
            size(row.disk_bytes + row.state_bytes + row.container_bytes),
            terminal::ago(e.last_active, now),
            match &e.forked_from {
                Some(p) => format!("{} (fork of {})", row.directory, &p.to_string()[..13]),
                None => row.directory.clone(),
            },
        ]);
    }
    print!("{}", terminal::table(&table));
    Ok(())
}
