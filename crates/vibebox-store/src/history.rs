//! `vibebox saves`: the history a store holds, and finding one save in it.

use uuid::Uuid;

use crate::entry::{is_save_id, parse_entry_key, SaveEntry, MAX_ENTRY_BYTES};
use crate::remote::Remote;
use crate::{Report, StoreError};

/// The saves of `workspace` (or of every workspace), oldest first. Entries
/// that cannot be read are reported and left out.
pub fn list(
    remote: &Remote,
    workspace: Option<Uuid>,
    report: &mut dyn FnMut(Report),
) -> Result<Vec<SaveEntry>, StoreError> {
    let prefix = match workspace {
        Some(w) => format!("saves/{w}/"),
        None => "saves/".to_string(),
    };
    let mut keys: Vec<String> = remote
        .list(&prefix)?
        .into_iter()
        .map(|l| l.key)
        .filter(|k| parse_entry_key(k).is_some())
        .collect();
    keys.sort();
    let mut out = Vec::new();
    for key in keys {
        match read(remote, &key) {
            Ok(e) => out.push(e),
            Err(e) => report(Report::Warning(e.to_string())),
        }
    }
    out.sort_by(|a, b| a.time.cmp(&b.time).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

fn read(remote: &Remote, key: &str) -> Result<SaveEntry, StoreError> {
    let bytes = remote.get_small(key, MAX_ENTRY_BYTES)?;
    Ok(SaveEntry::from_store(key, &bytes)?)
}

/// The save whose id is `id` or starts with it (at least 4 hex digits).
pub fn find(remote: &Remote, id: &str) -> Result<SaveEntry, StoreError> {
    let id = id.to_ascii_lowercase();
    if id.len() < 4 || id.len() > 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(StoreError::refused(
            format!(
                "`{}` is not a save id",
                vibebox_core::text::for_terminal(&id)
            ),
            "a save id is 4 to 12 hex digits, as `vibebox saves` shows it",
        ));
    }
    let matches: Vec<String> = remote
        .list("saves/")?
        .into_iter()
        .map(|l| l.key)
        .filter(|k| parse_entry_key(k).is_some_and(|(_, i)| i.starts_with(&id)))
        .collect();
    match matches.as_slice() {
        [] => Err(StoreError::refused(
            format!("no save {id} in the store {}", remote.url()),
            "`vibebox saves --all` lists every save in the store",
        )),
        [key] => read(remote, key),
        many => Err(StoreError::refused(
            format!("{} saves start with {id}", many.len()),
            "give more of the id",
        )),
    }
}

/// The save with exactly this id (a base of another save).
pub fn find_exact(remote: &Remote, id: &str) -> Result<SaveEntry, StoreError> {
    if !is_save_id(id) {
        return Err(StoreError::refused(
            format!("`{id}` is not a save id"),
            "the store's index is damaged",
        ));
    }
    find(remote, id)
}
