//! An edit of the retained list (the delta N→N+1, then the whole vN+1 as the new retained
//! snapshot), for `invite` and `revoke`.

use std::io::Write;
use std::time::Duration;

use super::publish::{Acks, finish, plural, publish_and_gather, read_site, retained_snapshot};
use super::{Site, now, say};
use crate::admin::Failure;
use crate::admin::lists::{self, Edit};
use crate::core::UnixMs;
use gated_contract::envelope::AdminKey;
use gated_contract::{Entries, ListName};

/// A list change, published.
pub(super) struct Published {
    /// `published visitors@8: …`
    line: String,
    reference: String,
    acks: Acks,
}

impl Published {
    pub(super) fn print(self, what: &str, out: &mut dyn Write) -> Result<(), Failure> {
        say(out, &self.line)?;
        finish(what, self.acks, &self.reference, out)
    }
}

/// Reads the retained list, applies `make` to it, publishes the delta and then the new
/// retained snapshot, and gathers the acks.
pub(super) async fn edit(
    site: &Site,
    key: &AdminKey,
    list: ListName,
    what: &str,
    wait: Duration,
    make: impl FnOnce(&Entries, UnixMs) -> Result<Edit, String>,
) -> Result<Published, Failure> {
    let mut session = site.connect("edit", what).await?;
    let state = read_site(&mut session, site, list)
        .await
        .map_err(|e| Failure::new(what, e))?;
    let retained = retained_snapshot(site, key, list, &state).map_err(|e| {
        Failure::new(
            what,
            format!(
                "{e}. gatectl rebuilds the list from it and signs it again, so it must verify \
                 under a key gatectl trusts (--trust ID=PUBKEY). To start the list over, push \
                 it whole: gatectl push {} --file F --force-version N",
                list.as_str()
            ),
        )
    })?;
    // An edit re-signs the retained entries: built on an out-of-date base it could replace a
    // list another admin just published. So gates that report more stop it (push, which takes
    // its numbers only from the signed list, stays the way out).
    let base = retained.as_ref().map_or(0, |s| s.version);
    if let Some(w) = lists::ahead_of(list, base, &state.reported(list)) {
        return Err(Failure::new(
            what,
            format!(
                "{w}; nothing was published (another admin may be publishing right now: wait and retry)"
            ),
        ));
    }
    let current = match retained {
        Some(s) => s.entries,
        None => match list {
            ListName::Staff => Entries::Staff(Vec::new()),
            ListName::Visitors => Entries::Visitors(Vec::new()),
            ListName::Deny => Entries::Deny(Vec::new()),
            ListName::Calendar => Entries::Calendar(Vec::new()),
        },
    };
    let now = now();
    let edit = make(&current, now).map_err(|e| Failure::new(what, e))?;
    let version = base + 1;
    let delta = lists::delta_body(&site.site, version, base, &edit.upsert, &edit.remove)
        .map_err(|r| Failure::new(what, format!("the delta would be refused: {r}")))?;
    let snapshot = lists::snapshot_body(&site.site, version, now, &edit.next)
        .map_err(|r| Failure::new(what, format!("the list would be refused: {r}")))?;
    let topics = site.topics("+");
    let reference = format!("{}@{version}", list.as_str());
    let acks = publish_and_gather(
        &mut session,
        site,
        vec![
            (topics.list_delta(list), key.seal(&delta), false),
            (topics.list(list), key.seal(&snapshot), true),
        ],
        &key.id,
        &reference,
        &state,
        wait,
    )
    .await
    .map_err(|e| Failure::new(what, e))?;
    session.close().await;
    let mut changes = Vec::new();
    if !edit.upsert.is_empty() {
        changes.push(format!("{} added", edit.upsert.len()));
    }
    if !edit.remove.is_empty() {
        changes.push(format!("removed {}", edit.remove.join(", ")));
    }
    let line = format!(
        "published     {reference}: the delta on {}@{base} ({}), then the retained snapshot \
         ({})",
        list.as_str(),
        changes.join("; "),
        plural(edit.next.len(), "entry", "entries")
    );
    Ok(Published {
        line,
        reference,
        acks,
    })
}
