//! `vibebox explain`: what the box of this project sees.

use vibebox_core::explain::{Explanation, ImageView};
use vibebox_core::mounts::MountSource;
use vibebox_core::policy::NetworkMode;
use vibebox_core::project::Project;

use crate::context::Context;

/// What the guest's network really does in this version.
pub const NETWORK_STATUS: &str = "enforced on the host by vibebox's network engine: DNS answers only allowed names; other connections, UDP (but DNS), IPv6 and the host's loopback are refused (decisions in .vibebox/logs/network.log)";

/// Builds the explanation of the project around the current directory.
pub fn build(ctx: &Context) -> anyhow::Result<Explanation> {
    build_for(ctx, &Project::find(&ctx.cwd))
}

/// Builds the explanation of `project` from its config file (nothing on
/// disk changes: missing placeholders of protected paths are only listed).
pub fn build_for(ctx: &Context, project: &Project) -> anyhow::Result<Explanation> {
    let config = super::load_config(project)?;
    let hosts: Vec<std::path::PathBuf> = config
        .mounts
        .iter()
        .map(|m| {
            vibebox_core::mounts::real_host_path(&m.spec.host, &ctx.host_home, project.dir())
                .unwrap_or_else(|_| {
                    vibebox_core::mounts::host_path(&m.spec.host, &ctx.host_home, project.dir())
                })
        })
        .collect();
    let runtime = crate::runtime::select(ctx, config.runtime);
    let mut x = build_planned(ctx, project, &config, runtime, &[])?;
    match crate::plan::shares(ctx, project, &config, &hosts, false) {
        Ok((shares, warnings)) => {
            x.protected = crate::plan::describe(&shares);
            x.protect_warnings = warnings;
        }
        Err(e) => x.protect_warnings = vec![format!("{e:#}")],
    }
    if let Ok(Some(id)) = project.read_session_id() {
        let grants = super::trust::grants(ctx, project, &config, &hosts);
        if let Ok(p) = super::trust::pending(ctx, &id, &grants) {
            x.not_accepted = p.iter().map(ToString::to_string).collect();
        }
    }
    Ok(x)
}

/// Builds the explanation of `project` with a checked `config` and its
/// planned shares (the supervisor's `:explain`).
pub fn build_planned(
    ctx: &Context,
    project: &Project,
    config: &vibebox_core::config::Config,
    runtime: vibebox_core::explain::RuntimeView,
    shares: &[vibebox_core::plan::PlannedShare],
) -> anyhow::Result<Explanation> {
    let image_dir = config.image.dir(&ctx.home);
    let image = ImageView {
        name: config.image.to_string(),
        present: image_dir.join("manifest.toml").is_file(),
        path: image_dir,
    };
    let mut x = Explanation::new(project, config, &ctx.host_home, runtime, image);
    x.protected = crate::plan::describe(shares);
    Ok(x)
}

/// Renders an explanation as text for a person.
pub fn render(x: &Explanation) -> String {
    let mut out = String::new();
    let mut line = |s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(format!("Project   {}", x.project.display()));
    line(format!(
        "Session   {}",
        x.session
            .map_or("none yet (created by the first `vibebox`)".into(), |s| s
                .to_string())
    ));
    line(format!(
        "Config    {}",
        if x.storage.config_exists {
            x.storage.config.clone()
        } else {
            format!("{} (not written yet: the defaults apply)", x.storage.config)
        }
    ));
    let r = &x.resources;
    line(format!(
        "Machine   {} CPUs, {} MiB memory, {} GiB disk; {} ms after the last client leaves it {}",
        r.cpu_count,
        r.ram_mb,
        r.disk_gb,
        r.auto_shutdown_ms,
        match r.on_idle {
            vibebox_core::config::OnIdle::Suspend =>
                "is suspended (its processes go on at the next start)",
            vibebox_core::config::OnIdle::Shutdown => "powers off",
        }
    ));
    line(format!(
        "Runtime   {} (requested: {}): {}",
        x.runtime.selected.as_deref().unwrap_or("none"),
        x.runtime.requested,
        x.runtime.reason
    ));
    if x.runtime.selected.as_deref() == Some("container") {
        let limits = match vibebox_container::cgroup::probe() {
            Ok(placement) => format!("cpu_count and ram_mb are {}", placement.describe()),
            Err(why) => format!("cpu_count and ram_mb are not applied ({why})"),
        };
        line(format!(
            "          the box shares the host's kernel; {limits}; it cannot suspend yet, so an idle box powers off"
        ));
    }
    line(format!(
        "Image     {} at {}{}",
        x.image.name,
        x.image.path.display(),
        if x.image.present {
            ""
        } else {
            " (not built yet)"
        }
    ));
    line(String::new());
    line("Mounts (host -> guest)".into());
    let mut rows = Vec::new();
    for m in &x.mounts {
        let host = if m.host_exists {
            m.host.display().to_string()
        } else {
            format!("{} (missing)", m.host.display())
        };
        let source = match m.source {
            MountSource::Project => "the project".to_string(),
            MountSource::Config { index } => format!("box.mounts[{index}]"),
        };
        rows.push(vec![
            format!("  {host}"),
            m.guest.clone(),
            m.mode.as_str().to_string(),
            source,
        ]);
    }
    for row in crate::terminal::table(&rows).lines() {
        line(row.to_string());
    }
    line("  Nothing else of the host is visible in the box.".into());
    if !x.protected.is_empty() {
        line(String::new());
        line("Protected (enforced on the host; the box may read, never write)".into());
        for p in &x.protected {
            line(format!("  {p}"));
        }
    }
    for w in &x.protect_warnings {
        line(format!("  warning: {w}"));
    }
    if !x.not_accepted.is_empty() {
        line(String::new());
        line("Not accepted yet (the next start asks; `vibebox trust` accepts)".into());
        for w in &x.not_accepted {
            line(format!("  {w}"));
        }
    }
    line(String::new());
    let n = &x.network;
    line(match n.mode {
        NetworkMode::Allowlist => "Network   allowlist: only these are reachable".to_string(),
        NetworkMode::Blocklist => {
            "Network   blocklist: everything but these is reachable".to_string()
        }
        NetworkMode::Ask => "Network   ask: these are reachable; a lookup of any other name asks at an attached `vibebox` terminal (refused when none is attached)".to_string(),
    });
    if n.entries.is_empty() {
        line("  (no entries)".into());
    }
    for e in &n.entries {
        line(format!("  {e}"));
    }
    for (name, ip) in &n.hosts {
        line(format!("  hosts: {name} -> {ip}"));
    }
    for (host, guest) in &n.expose {
        line(format!("  exposed: 127.0.0.1:{host} -> guest port {guest}"));
    }
    line(if n.auto_expose {
        "  ports the box listens on (0.0.0.0) are forwarded to 127.0.0.1 (`vibebox ports`)".into()
    } else {
        "  no automatic port forwards (auto_expose = false)".into()
    });
    line(format!("  {NETWORK_STATUS}"));
    let denials = super::logs::recent_denials(&Project::at(&x.project), 5);
    if !denials.is_empty() {
        line("  Last blocked attempts:".into());
        for d in denials {
            line(format!("    {d}"));
        }
    }
    line(String::new());
    line(format!("Storage (relative to {})", x.project.display()));
    let s = &x.storage;
    let rows = vec![
        vec![
            format!("  {}", s.config),
            "project config: commit it".into(),
        ],
        vec![
            format!("  {}", s.state_dir),
            "project cache: never committed".into(),
        ],
        vec![
            format!("  {}", s.session_file),
            "this project's session id".into(),
        ],
        vec![
            format!("  {}", s.disk),
            format!(
                "instance disk (kept across shutdowns): {} MiB used",
                s.usage.disk_bytes >> 20
            ),
        ],
        vec![
            "  .vibebox/container/".into(),
            format!(
                "the container's writable layer (kept across stops): {} MiB used",
                s.usage.container_bytes >> 20
            ),
        ],
        vec![
            "  .vibebox/state/".into(),
            format!(
                "memory and devices of a suspended box: {} MiB used",
                s.usage.state_bytes >> 20
            ),
        ],
        vec![
            format!("  {}", s.ssh),
            "SSH key pair and the guest's pinned host key".into(),
        ],
        vec![
            format!("  {}", s.logs),
            "supervisor, console and network logs".into(),
        ],
    ];
    for row in crate::terminal::table(&rows).lines() {
        line(row.to_string());
    }
    // Names, hosts and paths can come from the box or a repository.
    vibebox_core::text::bytes_for_terminal(out.as_bytes(), true)
}

/// Runs `vibebox explain`.
pub fn run(ctx: &Context, json: bool) -> anyhow::Result<()> {
    let x = build(ctx)?;
    if json {
        let mut v = serde_json::to_value(&x)?;
        v["network"]["status"] = serde_json::Value::from(NETWORK_STATUS);
        v["network"]["recent_denials"] =
            serde_json::Value::from(super::logs::recent_denials(&Project::at(&x.project), 5));
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", render(&x));
    }
    Ok(())
}
