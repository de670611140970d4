//! `gatectl keygen`, and loading the key that signs what gatectl sends.

use std::io::Write;
use std::path::Path;

use super::{say, warn};
use crate::admin::Failure;
use gated_contract::envelope::AdminKey;

/// `gatectl keygen`: a new signing key in `path` (mode 0600, never over an existing file), and
/// the `[[trust.key]]` block for the gates on `out`. Missing directories on the way are made,
/// private (0700): on a fresh machine `~/.gatectl` does not exist yet. The key is written to a
/// temporary file beside it and moved into place whole, so a failed write leaves no half key.
pub fn keygen(id: &str, path: &Path, out: &mut dyn Write) -> Result<(), Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    let what = "keygen";
    let key = AdminKey::generate(id).map_err(|e| Failure::new(what, e))?;
    let exists = || {
        Failure::new(
            what,
            format!(
                "{} exists; gatectl never overwrites a key file (move it away first if that is \
                 what you mean)",
                path.display()
            ),
        )
    };
    if path.symlink_metadata().is_ok() {
        return Err(exists());
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| Failure::new(what, format!("cannot create {}: {e}", dir.display())))?;
    // tempfile creates it 0600, in the same directory, so the move is a rename.
    let mut tmp = tempfile::Builder::new()
        .prefix(".gatectl-keygen-")
        .tempfile_in(dir)
        .map_err(|e| Failure::new(what, format!("cannot write in {}: {e}", dir.display())))?;
    tmp.write_all(key.to_file_text().as_bytes())
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(|e| Failure::new(what, format!("writing {}: {e}", path.display())))?;
    tmp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            exists()
        } else {
            Failure::new(
                what,
                format!("cannot create {}: {}", path.display(), e.error),
            )
        }
    })?;
    eprintln!(
        "gatectl: wrote the secret key `{id}` to {} (mode 0600): keep it secret, it opens every \
         gate that trusts it",
        path.display()
    );
    say(
        out,
        format_args!(
            "# Add to the config of every gate that must obey `{id}`:\n[[trust.key]]\nid = \"{id}\"\npublic = \"{}\"",
            key.public_b64()
        ),
    )
}

/// Loads the admin key, warning when others may read it.
pub fn load_key(path: Option<&Path>, what: &str) -> Result<AdminKey, Failure> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = path.ok_or_else(|| {
        Failure::new(
            what,
            "--key FILE (or GATECTL_KEY) is required: it signs what gatectl sends",
        )
        .with_exit(64)
    })?;
    let key = AdminKey::load(path).map_err(|e| Failure::new(what, e))?;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        warn(format_args!(
            "{} can be read by others (mode {:o}); chmod 600 it",
            path.display(),
            m.permissions().mode() & 0o777
        ));
    }
    Ok(key)
}
