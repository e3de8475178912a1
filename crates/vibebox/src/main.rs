//! The `vibebox` command.

mod asking;
mod attach;
mod cli;
mod commands;
mod context;
mod error;
mod plan;
mod runtime;
mod terminal;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};

fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Some(Command::Completions { shell }) = &cli.command {
        clap_complete::generate(
            *shell,
            &mut Cli::command(),
            "vibebox",
            &mut std::io::stdout(),
        );
        return Ok(0);
    }
    if let Some(Command::KvmProbe) = &cli.command {
        let took = vibebox_vm::kvm::guest_loop().map_err(anyhow::Error::msg)?;
        println!("{}", took.as_nanos());
        return Ok(0);
    }
    if let Some(Command::ContainerStage { args }) = &cli.command {
        return Ok(vibebox_container::stage::main(args));
    }
    let mut ctx = context::Context::from_env()?;
    ctx.runtime = cli.runtime;
    // A command run in a project that moved makes the index follow it.
    let in_project = !matches!(
        cli.command,
        Some(Command::List { .. })
            | Some(Command::Delete { .. })
            | Some(Command::Image { .. })
            | Some(Command::Supervise { .. })
            | Some(Command::SshProxy { .. })
    );
    if in_project {
        follow_move(&ctx, &ctx.cwd);
    }
    if let Some(Command::SshProxy { dir }) = &cli.command {
        follow_move(&ctx, dir);
    }
    match cli.command {
        None => commands::connect::run(&ctx),
        Some(Command::Init) => commands::init::run(&ctx).map(|()| 0),
        Some(Command::List { json }) => commands::list::run(&ctx, json).map(|()| 0),
        Some(Command::Delete { id, yes, force }) => {
            commands::delete::run(&ctx, &id, yes, force).map(|()| 0)
        }
        Some(Command::Explain { json }) => commands::explain::run(&ctx, json).map(|()| 0),
        Some(Command::Image { command }) => commands::image::run(&ctx, command).map(|()| 0),
        Some(Command::Fork { dir, from }) => {
            commands::fork::run(&ctx, &dir, from.as_deref()).map(|()| 0)
        }
        Some(Command::Snapshot { command }) => commands::snapshot::run(&ctx, command).map(|()| 0),
        Some(Command::Exec { command }) => commands::connect::exec(&ctx, &command),
        Some(Command::Run {
            detach,
            name,
            command,
        }) => commands::terminals::run(&ctx, detach, name, &command),
        Some(Command::Attach { name }) => commands::terminals::attach(&ctx, &name),
        Some(Command::Ports { json }) => commands::ports::run(&ctx, json).map(|()| 0),
        Some(Command::Ps { json }) => commands::terminals::ps(&ctx, json).map(|()| 0),
        Some(Command::Logs { network, follow }) => {
            commands::logs::run(&ctx, network, follow).map(|()| 0)
        }
        Some(Command::SshConfig { install }) => commands::sshcfg::run(&ctx, install).map(|()| 0),
        Some(Command::SshProxy { dir }) => commands::sshcfg::proxy(&mut ctx, &dir),
        Some(Command::Stop { shutdown }) => commands::connect::stop(&ctx, shutdown).map(|()| 0),
        Some(Command::Reload) => commands::reload::run(&ctx).map(|()| 0),
        Some(Command::Trust { yes }) => commands::trust::run(&ctx, yes).map(|()| 0),
        Some(Command::Save { message, store }) => {
            commands::store::save(&ctx, message, &store).map(|()| 0)
        }
        Some(Command::Saves { json, all, store }) => {
            commands::store::saves(&ctx, json, all, &store).map(|()| 0)
        }
        Some(Command::Restore { id, into, store }) => {
            commands::store::restore(&ctx, id, into, &store).map(|()| 0)
        }
        Some(Command::Supervise { dir }) => runtime::run_supervisor(&ctx, &dir).map(|()| 0),
        Some(Command::Completions { .. })
        | Some(Command::KvmProbe)
        | Some(Command::ContainerStage { .. }) => Ok(0),
    }
}

/// Makes the index follow the project at `dir` if it moved (best effort: a
/// failure is said, and the command goes on).
fn follow_move(ctx: &context::Context, dir: &std::path::Path) {
    let project = vibebox_core::project::Project::find(dir);
    if let Err(e) = vibebox_core::session::follow_move(&ctx.index, &project, jiff::Timestamp::now())
    {
        eprintln!("vibebox: warning: cannot update the session index: {e}");
    }
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so writing to a closed pipe (`vibebox list | head`)
    // is an error every print would panic on. A command-line tool ends
    // quietly instead, as `head` expects.
    // SAFETY: called once at startup, before any thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(err) => {
            error::report(&err);
            ExitCode::from(1)
        }
    }
}
