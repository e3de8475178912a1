//! `vibebox reload`: the running box takes a changed `[network]` policy.

use std::path::Path;

use vibebox_core::config::Config;
use vibebox_core::policy::Policy;
use vibebox_net::engine;

use crate::protocol;

/// What `vibebox reload` runs: applies the `[network]` policy of a config
/// text the client checked (and whose grants were accepted) to the running
/// box, and says what else changed but waits for the next start.
pub fn reloader(
    file: &Path,
    config: &Config,
    live: engine::LivePolicy,
    server: crate::server::Server,
) -> std::sync::Arc<crate::server::ReloadFn> {
    let file = file.to_path_buf();
    let current = std::sync::Mutex::new(config.clone());
    std::sync::Arc::new(move |text: &str| {
        let new = match Config::parse(text, &file) {
            Ok(c) => c,
            Err(e) => {
                return protocol::Reloaded {
                    ok: false,
                    message: format!("the config does not parse: {e}"),
                }
            }
        };
        let mut old = current.lock().unwrap_or_else(|e| e.into_inner());
        let (o, n) = (&old.network, &new.network);
        let mut applied = Vec::new();
        if o.mode != n.mode {
            applied.push(format!("mode {} -> {}", o.mode.as_str(), n.mode.as_str()));
        }
        if o.entries != n.entries {
            applied.push(format!("entries ({} now)", n.entries.len()));
        }
        if o.hosts != n.hosts {
            applied.push(format!("hosts ({} now)", n.hosts.len()));
        }
        let mut later = Vec::new();
        if o.expose != n.expose {
            later.push("network.expose");
        }
        if o.auto_expose != n.auto_expose {
            later.push("network.auto_expose");
        }
        if o.max_connections != n.max_connections {
            later.push("network.max_connections");
        }
        let mut rest_old = (*old).clone();
        rest_old.network = new.network.clone();
        if rest_old != new {
            later.push("settings outside [network]");
        }
        live.set(engine::PolicyUpdate {
            policy: Policy::new(n.mode, n.entries.clone()),
            hosts: n.hosts.clone().into_iter().collect(),
        });
        let ask = n.mode == vibebox_core::policy::NetworkMode::Ask;
        server.update(|s| s.status.ask = ask);
        let newly_asking = ask && o.mode != n.mode;
        let mut message = if applied.is_empty() {
            "the network policy is unchanged".to_string()
        } else {
            format!(
                "applied to the running box: {}; connections it refuses now are closed",
                applied.join(", ")
            )
        };
        if !later.is_empty() {
            message.push_str(&format!(
                "; {} change at the next start (`vibebox stop` first)",
                later.join(", ")
            ));
        }
        if newly_asking {
            message.push_str(
                "; the questions go to `vibebox` terminals opened from now on (the ones open now cannot answer)",
            );
        }
        eprintln!("[{}] reload: {message}", jiff::Timestamp::now());
        *old = new;
        protocol::Reloaded { ok: true, message }
    })
}
