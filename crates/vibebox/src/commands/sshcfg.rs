//! `vibebox ssh-config [--install]` and `vibebox ssh-proxy`: a stable SSH
//! entry to a project's box for IDEs (VS Code Remote-SSH, JetBrains Gateway)
//! and plain `ssh vibebox-<project>`. The Host block's `ProxyCommand` runs
//! `vibebox ssh-proxy`, which starts the box when needed, holds a reference
//! while the connection lives, and relays the bytes to the guest's sshd; the
//! guest's host key stays pinned.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use vibebox_core::project::Project;
use vibebox_vm::ssh;

use super::connect::prepare;
use crate::attach;
use crate::context::Context;
use crate::error::hinted;

/// The `Host` name of a project: `vibebox-` and its directory's name, with
/// what ssh patterns give meaning to (or a shell would) replaced by `-`.
pub fn host_name(project: &Project) -> String {
    let name: String = project
        .name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    format!("vibebox-{name}")
}

/// A path as a value in ssh_config: in double quotes, `%` doubled (ssh
/// expands `%` tokens in these keys). A path ssh_config cannot hold (a
/// double quote, a control character) is refused.
fn config_path_value(p: &Path) -> anyhow::Result<String> {
    let s = p.to_str().ok_or_else(|| unusable(p))?;
    if s.chars().any(|c| c == '"' || c.is_control()) {
        return Err(unusable(p));
    }
    Ok(format!("\"{}\"", s.replace('%', "%%")))
}

fn unusable(p: &Path) -> anyhow::Error {
    hinted(
        format!(
            "an SSH config cannot name {}: it is not UTF-8 or holds a double quote or a control character",
            vibebox_core::text::for_terminal(&p.display().to_string())
        ),
        "rename the directory",
    )
}

/// The `ProxyCommand` value: a shell command line (ssh runs it with the
/// user's shell), `%` doubled.
fn proxy_command(
    exe: &Path,
    project_dir: &Path,
    vibebox_home: Option<&Path>,
) -> anyhow::Result<String> {
    let q = |p: &Path| -> anyhow::Result<String> {
        let s = p.to_str().ok_or_else(|| unusable(p))?;
        if s.chars().any(char::is_control) {
            return Err(unusable(p));
        }
        Ok(vibebox_core::text::shell_quote(s))
    };
    let mut line = String::new();
    if let Some(home) = vibebox_home {
        line.push_str(&format!("env VIBEBOX_HOME={} ", q(home)?));
    }
    line.push_str(&format!("{} ssh-proxy --dir {}", q(exe)?, q(project_dir)?));
    Ok(line.replace('%', "%%"))
}

/// The `Host` block for `project`, named `host`.
pub fn block(
    project: &Project,
    host: &str,
    exe: &Path,
    vibebox_home: Option<&Path>,
) -> anyhow::Result<String> {
    let ssh_dir = project.ssh_dir();
    Ok(format!(
        "Host {host}\n  User vibecoder\n  HostName 127.0.0.1\n  ProxyCommand {proxy}\n  IdentityFile {key}\n  IdentitiesOnly yes\n  UserKnownHostsFile {kh}\n  StrictHostKeyChecking yes\n  HostKeyAlias {alias}\n  # vibebox project {dir}\n",
        proxy = proxy_command(exe, project.dir(), vibebox_home)?,
        key = config_path_value(&ssh::key_path(&ssh_dir))?,
        kh = config_path_value(&ssh::known_hosts_path(&ssh_dir))?,
        alias = ssh::HOST_ALIAS,
        dir = config_path_value(project.dir())?,
    ))
}

fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("cannot find the vibebox executable")
}

fn explicit_home() -> Option<PathBuf> {
    std::env::var_os("VIBEBOX_HOME").map(PathBuf::from)
}

/// Runs `vibebox ssh-config [--install]`.
pub fn run(ctx: &Context, install: bool) -> anyhow::Result<()> {
    let project = Project::find(&ctx.cwd);
    if !project.has_config() {
        return Err(hinted(
            format!("{} is not a vibebox project", ctx.cwd.display()),
            "run `vibebox` (or `vibebox init`) here first",
        ));
    }
    let home = explicit_home();
    if !install {
        print!(
            "{}",
            block(&project, &host_name(&project), &exe()?, home.as_deref())?
        );
        return Ok(());
    }
    let host = install_block(ctx, &project, &exe()?, home.as_deref())?;
    println!("installed: `ssh {host}` (or Remote-SSH to {host}) starts the box when needed");
    Ok(())
}

/// The file vibebox manages, included from `~/.ssh/config`.
fn managed_file(ctx: &Context) -> PathBuf {
    ctx.host_home.join(".ssh/vibebox/config")
}

/// The blocks of the managed file, each with the project directory it names.
fn read_blocks(text: &str) -> Vec<(String, Option<String>, String)> {
    let mut blocks: Vec<(String, Option<String>, String)> = Vec::new();
    for line in text.lines() {
        if let Some(host) = line.strip_prefix("Host ") {
            blocks.push((host.trim().to_string(), None, String::new()));
        }
        let Some(b) = blocks.last_mut() else { continue };
        if let Some(dir) = line.trim().strip_prefix("# vibebox project ") {
            b.1 = Some(dir.to_string());
        }
        b.2.push_str(line);
        b.2.push('\n');
    }
    blocks
}

/// Writes `path` whole or not at all (temp file, fsync, rename), mode 0600.
fn write_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("vibebox-tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Adds (or replaces) the project's block in the managed file and makes
/// `~/.ssh/config` include it; returns the Host name.
fn install_block(
    ctx: &Context,
    project: &Project,
    exe: &Path,
    vibebox_home: Option<&Path>,
) -> anyhow::Result<String> {
    use std::os::unix::fs::DirBuilderExt;
    let file = managed_file(ctx);
    let dir = file.parent().unwrap_or(&ctx.host_home);
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))?;
    let old = match fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let me = config_path_value(project.dir())?;
    let mut blocks = read_blocks(&old);
    // This project's old block goes; another project's of the same name stays,
    // and this one gets a longer name.
    blocks.retain(|(_, d, _)| d.as_deref() != Some(&me));
    let mut host = host_name(project);
    if blocks.iter().any(|(h, _, _)| *h == host) {
        let id = project
            .read_session_id()
            .ok()
            .flatten()
            .map(|u| u.simple().to_string());
        let suffix = id.as_deref().map(|s| &s[s.len() - 8..]).unwrap_or("2");
        host = format!("{host}-{suffix}");
    }
    let new = block(project, &host, exe, vibebox_home)?;
    let mut text = String::from(
        "# Managed by vibebox (`vibebox ssh-config --install`): edits are replaced.\n",
    );
    for (_, _, b) in &blocks {
        text.push_str(b);
    }
    text.push_str(&new);
    write_atomically(&file, &text)?;
    include_from_user_config(ctx, &file)?;
    Ok(host)
}

/// Puts `Include <file>` first in `~/.ssh/config` (an Include after a Host
/// line would belong to that Host), once.
fn include_from_user_config(ctx: &Context, file: &Path) -> anyhow::Result<()> {
    let config = ctx.host_home.join(".ssh/config");
    let old = match fs::read_to_string(&config) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", config.display())),
    };
    let include = format!("Include {}", config_path_value(file)?);
    if old.lines().any(|l| l.trim() == include) {
        return Ok(());
    }
    write_atomically(
        &config,
        &format!("# Added by vibebox: its boxes' Host blocks.\n{include}\n\n{old}"),
    )
}

/// Runs `vibebox ssh-proxy --dir DIR`: ssh's ProxyCommand. Starts the box of
/// DIR when needed (progress on stderr, which ssh shows), then relays stdin
/// and stdout to the guest's sshd while holding a reference.
pub fn proxy(ctx: &mut Context, dir: &Path) -> anyhow::Result<i32> {
    ctx.cwd = dir.to_path_buf();
    let p = prepare(ctx)?;
    let attached = attach::ensure_running(
        ctx,
        &p.project,
        &p.config,
        p.entry.id,
        attach::Need::Ssh,
        &|| p.plan(ctx),
    )?;
    let port = attached
        .status
        .ssh_port
        .ok_or_else(|| anyhow::anyhow!("the supervisor did not report an SSH port"))?;
    let stream = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("cannot connect to the box's sshd on 127.0.0.1:{port}"))?;
    let mut to_box = stream.try_clone()?;
    // ssh -> box: when ssh closes its side, the box's side is told.
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut to_box);
        let _ = to_box.shutdown(std::net::Shutdown::Write);
    });
    // box -> ssh: when the box closes, the proxy ends.
    let mut from_box = stream;
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from_box.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
            break;
        }
    }
    drop(attached);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_directory_names_cannot_add_config_lines() {
        let p = Project::at(Path::new("/w/a\nHost *\n  ProxyCommand evil"));
        assert_eq!(host_name(&p), "vibebox-a-Host-----ProxyCommand-evil");
        assert!(block(&p, "x", Path::new("/bin/vibebox"), None).is_err());
        let p = Project::at(Path::new("/w/quote\"d"));
        assert!(block(&p, "x", Path::new("/bin/vibebox"), None).is_err());
    }

    #[test]
    fn paths_are_quoted_for_ssh_and_the_shell() {
        let p = Project::at(Path::new("/w/my app 100%"));
        let b = block(
            &p,
            &host_name(&p),
            Path::new("/opt/vb/vibebox"),
            Some(Path::new("/h/it's")),
        )
        .unwrap();
        assert!(b.starts_with("Host vibebox-my-app-100-\n"), "{b}");
        assert!(
            b.contains("  ProxyCommand env VIBEBOX_HOME='/h/it'\\''s' /opt/vb/vibebox ssh-proxy --dir '/w/my app 100%%'\n"),
            "{b}"
        );
        assert!(
            b.contains("  IdentityFile \"/w/my app 100%%/.vibebox/ssh/id_ed25519\"\n"),
            "{b}"
        );
        assert!(b.contains("StrictHostKeyChecking yes"));
        assert!(!b.contains("StrictHostKeyChecking no"));
    }

    #[test]
    fn blocks_are_read_back_by_project() {
        let a = Project::at(Path::new("/w/a"));
        let b = Project::at(Path::new("/x/a"));
        let exe = Path::new("/bin/vibebox");
        let text = format!(
            "# Managed\n{}{}",
            block(&a, "vibebox-a", exe, None).unwrap(),
            block(&b, "vibebox-a-1234", exe, None).unwrap()
        );
        let blocks = read_blocks(&text);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].0, "vibebox-a");
        assert_eq!(blocks[0].1.as_deref(), Some("\"/w/a\""));
        assert_eq!(blocks[1].1.as_deref(), Some("\"/x/a\""));
    }
}
