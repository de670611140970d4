//! `gatectl push`: a whole list from a file, as the new retained snapshot.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::keys::load_key;
use super::publish::{finish, kib, plural, publish_and_gather, read_site, retained_snapshot};
use super::{Site, now, say, warn};
use crate::admin::Failure;
use crate::admin::list_files::{self, Format};
use crate::admin::lists;
use gated_contract::ListName;

pub struct PushRequest {
    pub list: ListName,
    pub file: PathBuf,
    pub force_version: Option<u64>,
    /// Publish even an empty list (which takes every entry off every gate).
    pub allow_empty: bool,
    pub wait: Duration,
}

/// `gatectl push`: a whole list from a file, as the new retained snapshot.
pub async fn push(
    site: &Site,
    key: Option<&Path>,
    req: PushRequest,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let what = format!("push {}", req.list.as_str());
    let key = load_key(key, &what)?;
    let format = Format::of(&req.file).map_err(|e| Failure::new(&what, e))?;
    let name = req.file.display().to_string();
    let bytes = std::fs::read(&req.file)
        .map_err(|e| Failure::new(&what, format!("cannot read {name}: {e}")))?;
    let loaded = list_files::read(req.list, &name, &bytes, format).map_err(|e| {
        Failure::new(
            &what,
            format!(
                "{name}: {} problem{}; nothing was published\n{e}",
                e.total,
                if e.total == 1 { "" } else { "s" }
            ),
        )
    })?;
    if loaded.entries.is_empty() && !req.allow_empty {
        return Err(Failure::new(
            &what,
            format!(
                "{name} has no entries: publishing it would empty the {} list of every gate. \
                 If that is what you mean, add --allow-empty",
                req.list.as_str()
            ),
        ));
    }

    // An entry already past opens nothing; a file of nothing else would let nobody in, like an
    // empty one, and needs the same consent. A few are published as they are (an export may
    // keep leavers until the next clean-up), each named.
    let past = lists::past_staff(&loaded.entries, &loaded.lines, now());
    for (line, subject, until) in &past {
        warn(format_args!(
            "{name}:{line}: valid_until: {until} is already past: `{subject}` opens nothing"
        ));
    }
    if !past.is_empty() && past.len() == loaded.entries.len() && !req.allow_empty {
        return Err(Failure::new(
            &what,
            format!(
                "every entry of {name} is past its valid_until: publishing it would let nobody \
                 in at any gate; nothing was published. If that is what you mean, add \
                 --allow-empty"
            ),
        ));
    }

    let mut session = site.connect("push", &what).await?;
    let state = read_site(&mut session, site, req.list)
        .await
        .map_err(|e| Failure::new(&what, e))?;
    let reported = state.reported(req.list);
    let retained = match retained_snapshot(site, &key, req.list, &state) {
        Ok(s) => s.map(|s| s.version),
        Err(e) if req.force_version.is_some() => {
            warn(format_args!("{e}; publishing as --force-version says"));
            None
        }
        Err(e) => {
            return Err(Failure::new(
                &what,
                format!(
                    "{e}. gatectl takes the next version from a snapshot only when its \
                     signature verifies: pass --trust ID=PUBKEY for the key that signed it, or \
                     --force-version N to publish as version N"
                ),
            ));
        }
    };
    let version = match req.force_version {
        Some(v) => {
            let newest = reported
                .values()
                .copied()
                .chain(retained)
                .max()
                .unwrap_or(0);
            if v <= newest {
                warn(format_args!(
                    "version {v} is not above {newest}, which is known: gates at a newer \
                     version refuse it as stale"
                ));
            }
            v
        }
        None => {
            let v = lists::next_version(retained);
            if let Some(w) = lists::ahead_of(req.list, v - 1, &reported) {
                warn(format_args!("{w}"));
            }
            v
        }
    };
    let body = lists::snapshot_body(&site.site, version, now(), &loaded.entries)
        .map_err(|r| Failure::new(&what, format!("the list would be refused: {r}")))?;
    let payload = key.seal(&body);
    let size = payload.len();
    let reference = format!("{}@{version}", req.list.as_str());
    let topic = site.topics("+").list(req.list);
    let acks = publish_and_gather(
        &mut session,
        site,
        vec![(topic.clone(), payload, true)],
        &key.id,
        &reference,
        &state,
        req.wait,
    )
    .await
    .map_err(|e| Failure::new(&what, e))?;
    session.close().await;
    say(
        out,
        format_args!(
            "published {reference} on {topic} (retained; {}, {}, signed by `{}`)",
            plural(loaded.entries.len(), "entry", "entries"),
            kib(size),
            key.id
        ),
    )?;
    finish(&what, acks, &reference, out)
}
