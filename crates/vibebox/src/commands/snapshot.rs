//! `vibebox snapshot save|list|restore|rm`: named states of this project's box.

use vibebox_core::project::Project;
use vibebox_supervisor::protocol as control;
use vibebox_vm::snapshot::Snapshots;

use crate::cli::SnapshotCommand;
use crate::context::Context;
use crate::error::hinted;
use crate::terminal;

fn vm_err(e: vibebox_vm::VmError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

/// Runs `vibebox snapshot ...`.
pub fn run(ctx: &Context, command: SnapshotCommand) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    project.check_state_dir()?;
    let snapshots = Snapshots::of(&project, &ctx.home).map_err(vm_err)?;
    let socket = project.socket_path();
    match command {
        SnapshotCommand::Save { name } => {
            let name = name.unwrap_or_else(|| {
                jiff::Timestamp::now()
                    .strftime("snap-%Y%m%d-%H%M%S")
                    .to_string()
            });
            vibebox_vm::snapshot::check_name(&name).map_err(vm_err)?;
            if control::status(&socket).is_some() {
                // A running box is suspended first: its memory and processes
                // are in the snapshot, and its next start resumes it.
                eprintln!("vibebox: suspending the box to keep its memory and processes");
                control::stop(&socket, false)?;
            }
            let info = snapshots.save(&name).map_err(vm_err)?;
            println!(
                "snapshot `{}`: the disk{}",
                info.name,
                if info.memory {
                    ", memory and processes"
                } else {
                    " (the box was not suspended: no memory)"
                }
            );
        }
        SnapshotCommand::List { json } => {
            let list = snapshots.list();
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no snapshots: `vibebox snapshot save [NAME]` takes one");
            } else {
                let mut rows = vec![vec![
                    "NAME".to_string(),
                    "CREATED".to_string(),
                    "MEMORY".to_string(),
                    "MEMORY SIZE".to_string(),
                ]];
                for s in list {
                    rows.push(vec![
                        s.name,
                        s.created,
                        if s.memory { "yes" } else { "no" }.to_string(),
                        format!("{} MiB", s.memory_bytes >> 20),
                    ]);
                }
                print!("{}", terminal::table(&rows));
            }
        }
        SnapshotCommand::Restore { name, yes } => {
            if !yes {
                if !terminal::can_ask() {
                    return Err(hinted(
                        "restoring discards the box's current disk changes and memory; no terminal to ask",
                        format!("run `vibebox snapshot restore {name} --yes`"),
                    ));
                }
                if !terminal::confirm(&format!(
                    "Restore snapshot `{name}`? The box's changes since (disk and memory) are lost."
                ))? {
                    println!("nothing was restored");
                    return Ok(());
                }
            }
            if control::status(&socket).is_some() {
                control::stop(&socket, true)?;
            }
            let info = snapshots.restore(&name).map_err(vm_err)?;
            println!(
                "restored snapshot `{}`: {}",
                info.name,
                if info.memory {
                    "the next start resumes its processes"
                } else {
                    "the next start boots from its disk"
                }
            );
        }
        SnapshotCommand::Rm { name } => {
            snapshots.remove(&name).map_err(vm_err)?;
            println!("removed snapshot `{name}`");
        }
    }
    Ok(())
}
