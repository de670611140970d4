//! `gatectl status`: the site's gates, from their retained statuses.

use std::collections::BTreeMap;
use std::io::Write;

use serde_json::Value;
use tokio::time::Instant;

use super::{QUIET, READ_DEADLINE, Site, now, say, warn};
use crate::admin::Failure;
use crate::admin::show;

/// `gatectl status`: the site's gates, from their retained statuses.
pub async fn status(site: &Site, json: bool, out: &mut dyn Write) -> Result<(), Failure> {
    let what = "status";
    let mut session = site.connect("status", what).await?;
    let filter = site.topics("+").status();
    session
        .subscribe(std::slice::from_ref(&filter))
        .await
        .map_err(|e| Failure::new(what, e))?;
    let msgs = session
        .settle(QUIET, Instant::now() + READ_DEADLINE)
        .await
        .map_err(|e| Failure::new(what, e))?;
    session.close().await;
    let mut statuses: BTreeMap<String, Value> = BTreeMap::new();
    for m in msgs {
        let Some(gate) = show::gate_of(&m.topic, &site.root, &site.site, "status") else {
            continue;
        };
        match serde_json::from_slice::<Value>(&m.payload) {
            Ok(v) => {
                statuses.insert(gate.to_string(), v);
            }
            Err(_) if m.payload.is_empty() => {}
            Err(_) => warn(format_args!(
                "{}: status is not JSON, skipped",
                show::clean(gate)
            )),
        }
    }
    if statuses.is_empty() {
        return Err(Failure::new(
            what,
            format!("no gate has a status on {filter} (is --site right? are the gates connected?)"),
        ));
    }
    if json {
        let map: serde_json::Map<String, Value> = statuses.into_iter().collect();
        return say(out, Value::Object(map));
    }
    let rows: Vec<(String, Value)> = statuses.into_iter().collect();
    let table = show::status_table(&rows, now());
    say(out, table.trim_end())
}
