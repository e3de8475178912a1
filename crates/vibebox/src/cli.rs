//! The command line: what a person can type.

use clap::{Parser, Subcommand};

/// A sandboxed Linux machine for every project directory.
///
/// Run `vibebox` in a project to enter its box: the project is mounted
/// read-write, the rest of the host is invisible unless vibebox.toml mounts it,
/// and the network reaches only what the project allows.
#[derive(Debug, Parser)]
#[command(name = "vibebox", version, propagate_version = true)]
pub struct Cli {
    /// What to do; with none, enter the box of the project here.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// The runtime for a box this command starts: auto, vm or container
    /// (overrides `[box] runtime` in vibebox.toml).
    #[arg(long, global = true, env = "VIBEBOX_RUNTIME", value_parser = parse_runtime)]
    pub runtime: Option<vibebox_core::config::RuntimeChoice>,
}

fn parse_runtime(s: &str) -> Result<vibebox_core::config::RuntimeChoice, String> {
    s.parse()
        .map_err(|()| format!("`{s}` is not a runtime; use auto, vm or container"))
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented vibebox.toml and .vibebox/ in the current directory.
    Init,
    /// List every session: id, directory, state, clients, last active.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a session: its .vibebox/ (disk, keys, logs) and its index entry.
    Delete {
        /// The session id, or a unique prefix of it.
        id: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
        /// Stop the session first if it is running.
        #[arg(long)]
        force: bool,
    },
    /// Show what the box of this project sees: mounts, network, storage, runtime.
    Explain {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run one command in the box, non-interactively (exit code passed through).
    Exec {
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Run a command in a terminal in the box that outlives this client:
    /// detach with Ctrl-b d (or start detached with -d), come back with
    /// `vibebox attach NAME`. A running terminal keeps the box up.
    Run {
        /// Start it detached (do not attach this terminal).
        #[arg(long, short = 'd')]
        detach: bool,
        /// Its name (default: the command's name, made unique).
        #[arg(long)]
        name: Option<vibebox_core::boxterm::TermName>,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// Attach to a terminal in the box (several clients may attach to one and
    /// see the same screen; Ctrl-b d detaches).
    Attach {
        /// The terminal's name (see `vibebox ps`).
        name: vibebox_core::boxterm::TermName,
    },
    /// List the terminals in the box: name, started, attached clients, state
    /// (exit code once it exited), command.
    Ps {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List the box's ports reachable from the host's 127.0.0.1: those of
    /// `[network] expose`, and those forwarded automatically because a
    /// process in the box listens on them (`[network] auto_expose`).
    Ports {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show this project's logs: the supervisor's, or with --network every
    /// network decision (one JSON object a line).
    Logs {
        /// The network decisions instead of the supervisor log.
        #[arg(long)]
        network: bool,
        /// Keep printing new lines as they come (Ctrl-C to stop).
        #[arg(long, short = 'f')]
        follow: bool,
    },
    /// Print an SSH Host block (`vibebox-<project>`) for this project's box,
    /// for VS Code Remote-SSH, JetBrains Gateway or `ssh`: its ProxyCommand
    /// starts the box when needed, so it works across stops and restarts.
    SshConfig {
        /// Add it to ~/.ssh/config (through an Include of
        /// ~/.ssh/vibebox/config, a file vibebox manages).
        #[arg(long)]
        install: bool,
    },
    /// The ProxyCommand of `vibebox ssh-config`: starts the box of DIR when
    /// needed and relays stdin/stdout to its sshd.
    SshProxy {
        /// The project directory.
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Stop this project's box now: suspend it (its processes go on at the
    /// next start), or power it off with --shutdown. The disk stays.
    Stop {
        /// Power off instead of suspending (and forget a suspended state).
        #[arg(long)]
        shutdown: bool,
    },
    /// Apply a changed `[network]` of vibebox.toml to the running box
    /// without a restart (asking first when it grants more); connections the
    /// new policy refuses are closed.
    Reload,
    /// Show what this project's vibebox.toml grants beyond the defaults (host
    /// paths, network widening, hosts overrides, exposed ports) and accept it.
    ///
    /// A start whose config grants anything not accepted asks first at the
    /// terminal, and refuses without one.
    Trust {
        /// Accept without asking.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// A new project directory and session that start where this one is: a
    /// copy of the project (a new git branch `fork/<name>` in a repository)
    /// and of the box's disk (the running box pauses for the copy). The fork
    /// boots; `vibebox list` shows what it was forked from.
    Fork {
        /// The new directory (must not exist).
        dir: std::path::PathBuf,
        /// Start from this snapshot of the box's disk instead of its disk now.
        #[arg(long, value_name = "SNAPSHOT")]
        from: Option<String>,
    },
    /// Named snapshots of this project's box: its disk, and its memory and
    /// processes when it runs (it is suspended to take them).
    Snapshot {
        /// What to do with snapshots.
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// Save the project's work to the store as a git bundle: tracked files
    /// with their staged and unstaged changes, and untracked files that
    /// .gitignore does not exclude. Your HEAD, branch, index and stash are
    /// not touched. Works whether the box runs or not.
    Save {
        /// What this save is (shown by `vibebox saves`).
        #[arg(long, short = 'm')]
        message: Option<String>,
        /// The store.
        #[command(flatten)]
        store: crate::commands::store::StoreArgs,
    },
    /// List the saves of this project (or, with --all, every save in the store).
    Saves {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Every save in the store, of every project.
        #[arg(long)]
        all: bool,
        /// The store.
        #[command(flatten)]
        store: crate::commands::store::StoreArgs,
    },
    /// Bring a save back: into a new directory with --into, else into this
    /// project (only when it has no unsaved changes).
    Restore {
        /// The save's id (or a unique prefix); default: this project's latest.
        id: Option<String>,
        /// A new (or empty) directory to restore into.
        #[arg(long)]
        into: Option<std::path::PathBuf>,
        /// The store.
        #[command(flatten)]
        store: crate::commands::store::StoreArgs,
    },
    /// Build, list and remove base images.
    Image {
        /// What to do with images.
        #[command(subcommand)]
        command: ImageCommand,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Internal: run the supervisor of the project in DIR.
    #[command(name = "__supervise", hide = true)]
    Supervise {
        /// The project directory.
        dir: std::path::PathBuf,
    },
    /// Internal: the guest half of the KVM probe (prints nanoseconds).
    #[command(name = "__kvm-probe", hide = true)]
    KvmProbe,
    /// Internal: the container runtime's stage inside its namespaces.
    #[command(name = "__container-stage", hide = true)]
    ContainerStage {
        /// The stage's arguments (a JSON file).
        args: std::path::PathBuf,
    },
}

/// `vibebox image ...`.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build a Debian guest image with mmdebstrap (about 1-2 minutes).
    Build {
        /// The image name.
        #[arg(long, default_value = vibebox_core::image::DEFAULT_IMAGE)]
        name: vibebox_core::image::ImageName,
        /// The apt mirror (default: Debian's).
        #[arg(long)]
        mirror: Option<String>,
    },
    /// List the built images.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image.
    Rm {
        /// The image name.
        name: vibebox_core::image::ImageName,
    },
}

/// `vibebox snapshot ...`.
#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot (default name: snap-<date>-<time>).
    Save {
        /// Its name.
        name: Option<String>,
    },
    /// List the snapshots.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Put the box back to a snapshot (discards its changes since).
    Restore {
        /// The snapshot.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long, short = 'y')]
        yes: bool,
    },
    /// Remove a snapshot.
    Rm {
        /// The snapshot.
        name: String,
    },
}
