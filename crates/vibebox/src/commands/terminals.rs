//! `vibebox run`, `vibebox attach`, `vibebox ps`: detachable terminals in the
//! box, each a session of the box's tmux (several clients may attach to one
//! and see the same screen; Ctrl-b d detaches and leaves it running).

use std::io::IsTerminal;

use vibebox_core::boxterm::{self, TermName, Terminal};
use vibebox_core::project::Project;
use vibebox_core::text::for_terminal;
use vibebox_supervisor::protocol as control;

use super::connect::{prepare, Prepared};
use crate::attach::{self, Attached};
use crate::context::Context;
use crate::error::hinted;

/// The most bytes of a listing read from the box.
const LIST_LIMIT: u64 = 1 << 20;

fn start(ctx: &Context) -> anyhow::Result<(Prepared, Attached)> {
    let p = prepare(ctx)?;
    let attached = attach::ensure_running(
        ctx,
        &p.project,
        &p.config,
        p.entry.id,
        attach::Need::Ssh,
        &|| p.plan(ctx),
    )?;
    Ok((p, attached))
}

/// The running box of the project here, or `None` when it is stopped (then
/// it has no terminals). A suspended box is resumed: its terminals live on.
fn running(ctx: &Context) -> anyhow::Result<Option<(Prepared, Attached)>> {
    let project = Project::find(&ctx.cwd);
    let suspended = project
        .read_session_id()
        .ok()
        .flatten()
        .is_some_and(|id| vibebox_vm::runtime::is_suspended(&project, &ctx.home, &id));
    if control::status(&project.socket_path()).is_none() && !suspended {
        return Ok(None);
    }
    start(ctx).map(Some)
}

fn list(project: &Project, attached: &Attached) -> anyhow::Result<Vec<Terminal>> {
    let (code, out) = attach::ssh_capture(project, attached, &boxterm::list_line(), LIST_LIMIT)?;
    if code != 0 {
        return Err(hinted(
            format!("cannot list the terminals in the box (exit code {code})"),
            "the box's image may lack tmux: rebuild it with `vibebox image build`",
        ));
    }
    Ok(boxterm::parse_list(&String::from_utf8_lossy(&out)))
}

/// Runs `vibebox run [-d] [--name NAME] -- CMD…`.
pub fn run(
    ctx: &Context,
    detached: bool,
    name: Option<TermName>,
    command: &[String],
) -> anyhow::Result<i32> {
    if !detached && !std::io::stdin().is_terminal() {
        return Err(hinted(
            "`vibebox run` without -d needs a terminal to attach to",
            "start it detached with `vibebox run -d -- CMD`, then `vibebox attach NAME` from a terminal",
        ));
    }
    let (p, mut attached) = start(ctx)?;
    let project = &p.project;
    let name = match name {
        Some(n) => n,
        None => {
            let taken: Vec<String> = list(project, &attached)?
                .into_iter()
                .map(|t| t.name)
                .collect();
            let program = command.first().map(String::as_str).unwrap_or("term");
            TermName::from_command(program).first_free(&taken)
        }
    };
    let dir = attached.guest_dir(project);
    let line = boxterm::start_line(&name, &dir, command, detached);
    let code = if detached {
        let (code, _) = attach::ssh_capture(project, &attached, &line, LIST_LIMIT)?;
        code
    } else {
        attached.follow_at_terminal(project);
        attach::run_ssh_tty(project, &attached, &line)?
    };
    if code == boxterm::EXISTS_CODE {
        return Err(hinted(
            format!("a terminal named {name} already runs in the box"),
            format!("attach to it with `vibebox attach {name}`, or choose another --name"),
        ));
    }
    if detached {
        if code != 0 {
            return Err(hinted(
                format!("cannot start terminal {name} in the box (exit code {code})"),
                "the box's image may lack tmux: rebuild it with `vibebox image build`",
            ));
        }
        eprintln!(
            "vibebox: terminal {name} runs in the box: `vibebox attach {name}` to see it (Ctrl-b d detaches), `vibebox ps` to list"
        );
        return Ok(0);
    }
    finished_or_left(project, &attached, &name)
}

/// After an attached client returns: the terminal's exit code if it ended,
/// else 0 and a word on how to come back.
fn finished_or_left(
    project: &Project,
    attached: &Attached,
    name: &TermName,
) -> anyhow::Result<i32> {
    let now = list(project, attached)?;
    match now.iter().find(|t| t.name == name.as_str()) {
        Some(t) if !t.running => {
            let code = t.exit_code.unwrap_or(1);
            eprintln!("vibebox: terminal {name} exited with code {code}");
            Ok(code)
        }
        Some(_) => {
            eprintln!(
                "vibebox: terminal {name} keeps running: `vibebox attach {name}` to come back"
            );
            Ok(0)
        }
        None => Ok(0),
    }
}

/// Runs `vibebox attach NAME`.
pub fn attach(ctx: &Context, name: &TermName) -> anyhow::Result<i32> {
    if !std::io::stdin().is_terminal() {
        return Err(hinted(
            "`vibebox attach` needs a terminal",
            "run it in a terminal; `vibebox ps` lists the terminals",
        ));
    }
    let Some((p, mut attached)) = running(ctx)? else {
        return Err(hinted(
            format!(
                "no terminal {name}: the box of {} is not running",
                ctx.cwd.display()
            ),
            "start one with `vibebox run -d --name NAME -- CMD`",
        ));
    };
    let terminals = list(&p.project, &attached)?;
    if !terminals.iter().any(|t| t.name == name.as_str()) {
        let names: Vec<&str> = terminals.iter().map(|t| t.name.as_str()).collect();
        return Err(hinted(
            format!("the box has no terminal named {name}"),
            if names.is_empty() {
                "it has none; start one with `vibebox run -d -- CMD`".to_string()
            } else {
                format!("it has: {}", names.join(", "))
            },
        ));
    }
    attached.follow_at_terminal(&p.project);
    attach::run_ssh_tty(&p.project, &attached, &boxterm::attach_line(name))?;
    finished_or_left(&p.project, &attached, name)
}

/// Runs `vibebox ps [--json]`.
pub fn ps(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let terminals = match running(ctx)? {
        Some((p, attached)) => list(&p.project, &attached)?,
        None => Vec::new(),
    };
    let started = |t: &Terminal| {
        jiff::Timestamp::from_second(t.started)
            .map(|s| s.to_zoned(jiff::tz::TimeZone::system()))
            .ok()
    };
    if json {
        let view: Vec<serde_json::Value> = terminals
            .iter()
            .map(|t| {
                serde_json::json!({
                    "name": t.name,
                    "command": t.command,
                    "started": started(t).map(|z| z.timestamp().to_string()),
                    "clients": t.clients,
                    "running": t.running,
                    "exit_code": t.exit_code,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&view)?);
        return Ok(());
    }
    if terminals.is_empty() {
        println!("no terminals in the box (start one with `vibebox run -d -- CMD`)");
        return Ok(());
    }
    println!(
        "{:<16} {:<20} {:>7} {:<12} COMMAND",
        "NAME", "STARTED", "CLIENTS", "STATE"
    );
    for t in &terminals {
        let started = started(t)
            .map(|z| z.strftime("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "?".into());
        let state = match (t.running, t.exit_code) {
            (true, _) => "running".to_string(),
            (false, Some(c)) => format!("exited {c}"),
            (false, None) => "exited".to_string(),
        };
        println!(
            "{:<16} {:<20} {:>7} {:<12} {}",
            t.name,
            started,
            t.clients,
            state,
            for_terminal(&t.command)
        );
    }
    Ok(())
}
