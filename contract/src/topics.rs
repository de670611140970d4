//! Topic names, and the safe names (site, gate, MQTT root, key ids) they are built from.

use crate::ListName;

/// `site`, `gate` and MQTT root are made of `[A-Za-z0-9_-]`, so they can never inject `/`,
/// `+` or `#` into a topic.
pub fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Topic names for one gate. `site` and `gate` are validated to `[A-Za-z0-9_-]` by config, so
/// they can never inject `/`, `+` or `#`.
#[derive(Clone, Debug)]
pub struct Topics {
    pub root: String,
    pub site: String,
    pub gate: String,
}

impl Topics {
    fn gate_topic(&self, leaf: &str) -> String {
        format!("{}/{}/{}/{}", self.root, self.site, self.gate, leaf)
    }
    pub fn event(&self) -> String {
        self.gate_topic("event")
    }
    pub fn alarm(&self) -> String {
        self.gate_topic("alarm")
    }
    /// Where the thumbnail of a pass's snapshot is uploaded (the pass's event id).
    pub fn snapshot(&self, event_id: &str) -> String {
        self.gate_topic(&format!("snapshot/{event_id}"))
    }
    pub fn status(&self) -> String {
        self.gate_topic("status")
    }
    pub fn ack(&self) -> String {
        self.gate_topic("ack")
    }
    pub fn cmd(&self) -> String {
        self.gate_topic("cmd")
    }
    /// The pass events of another gate of the site.
    pub fn events_of(&self, gate: &str) -> String {
        format!("{}/{}/{gate}/event", self.root, self.site)
    }
    pub fn list(&self, list: ListName) -> String {
        format!("{}/{}/lists/{}", self.root, self.site, list.as_str())
    }
    pub fn list_delta(&self, list: ListName) -> String {
        format!("{}/delta", self.list(list))
    }
    /// Which list a downlink topic carries, and whether it is a delta.
    pub fn parse_list_topic(&self, topic: &str) -> Option<(ListName, bool)> {
        ListName::ALL.into_iter().find_map(|l| {
            if topic == self.list(l) {
                Some((l, false))
            } else if topic == self.list_delta(l) {
                Some((l, true))
            } else {
                None
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics() -> Topics {
        Topics {
            root: "acs".into(),
            site: "hq".into(),
            gate: "east-1".into(),
        }
    }

    #[test]
    fn topic_names_follow_the_contract() {
        let t = topics();
        assert_eq!(t.event(), "acs/hq/east-1/event");
        assert_eq!(t.list(ListName::Staff), "acs/hq/lists/staff");
        assert_eq!(t.list_delta(ListName::Deny), "acs/hq/lists/deny/delta");
        assert_eq!(
            t.parse_list_topic("acs/hq/lists/visitors/delta"),
            Some((ListName::Visitors, true))
        );
        assert_eq!(
            t.parse_list_topic("acs/hq/lists/staff"),
            Some((ListName::Staff, false))
        );
        assert_eq!(t.parse_list_topic("acs/other/lists/staff"), None);
    }
}
