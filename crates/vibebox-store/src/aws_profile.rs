//! Credentials and region from the AWS shared files, when the environment
//! has none: `AWS_PROFILE` (default `default`) in `~/.aws/credentials`
//! (`AWS_SHARED_CREDENTIALS_FILE`) and `~/.aws/config` (`AWS_CONFIG_FILE`).
//!
//! Only static keys are read (`aws_access_key_id`, `aws_secret_access_key`,
//! `aws_session_token`, `region`); SSO and credential processes are not run.

use std::path::PathBuf;

/// What a profile holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Profile {
    /// `aws_access_key_id`.
    pub access_key_id: String,
    /// `aws_secret_access_key`.
    pub secret_access_key: String,
    /// `aws_session_token`, if any.
    pub session_token: Option<String>,
    /// The region from the config file, if any.
    pub region: Option<String>,
}

fn profile_name() -> String {
    std::env::var("AWS_PROFILE")
        .ok()
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "default".into())
}

fn file(var: &str, default: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    vibebox_core::home::host_home().map(|h| h.join(".aws").join(default))
}

/// The keys of `section` in an INI text.
pub fn section(text: &str, section: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    out
}

fn get(pairs: &[(String, String)], key: &str) -> Option<String> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.clone())
        .filter(|v| !v.is_empty())
}

/// The region of the profile in the config file.
pub fn region_from_files() -> Option<String> {
    let name = profile_name();
    let text = std::fs::read_to_string(file("AWS_CONFIG_FILE", "config")?).ok()?;
    let section_name = if name == "default" {
        name
    } else {
        format!("profile {name}")
    };
    get(&section(&text, &section_name), "region")
}

/// The profile's static keys, if the credentials file has them.
pub fn from_files() -> Option<Profile> {
    let text = std::fs::read_to_string(file("AWS_SHARED_CREDENTIALS_FILE", "credentials")?).ok()?;
    let pairs = section(&text, &profile_name());
    Some(Profile {
        access_key_id: get(&pairs, "aws_access_key_id")?,
        secret_access_key: get(&pairs, "aws_secret_access_key")?,
        session_token: get(&pairs, "aws_session_token"),
        region: region_from_files(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_are_read_by_name() {
        let text =
            "# c\n[default]\naws_access_key_id = A\n[other]\nAWS_Secret_Access_Key=S \n; x\n";
        assert_eq!(
            section(text, "default"),
            vec![("aws_access_key_id".into(), "A".into())]
        );
        assert_eq!(
            section(text, "other"),
            vec![("aws_secret_access_key".into(), "S".into())]
        );
        assert!(section(text, "none").is_empty());
    }
}
