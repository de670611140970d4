//! `gated demo`: the daemon against hw-sim devices started in-process, with a temporary
//! database and a built-in sample list, playing a short scene and printing each decision.
//!
//! With `--mqtt` it publishes, so it must never pass for a real gate: it is site `demo`, gate
//! `demo-{pid}` (a name per run, so one run's `seq` never continues another's), and every
//! status, event and alarm says `"demo": true`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use hw_sim::{
    KIND_CARD, KIND_FACE, KIND_QR, ReaderRegisters, RelayRegisters, SimReader, SimRelay, SimServer,
};

use crate::config::Config;
use crate::gate::{Decided, Gate};
use crate::hw::health::Health;
use gated_contract::{ListName, parse_snapshot};

/// A line for the person watching; a reader that went away is not an error
/// (`crate::console`).
macro_rules! say {
    ($($arg:tt)*) => {
        crate::console::line(format_args!($($arg)*)).context("demo: cannot write to stdout")?
    };
}

const STAFF: &str = r#"{"list":"staff","site":"demo","version":1,"issued_at":"2026-11-21T07:00:00Z",
 "entries":[{"subject":"E1001","name":"Li Wei",
   "credentials":[{"kind":"card","id":"0012345678"},{"kind":"face","id":"P1001"}],
   "valid_from":null,"valid_until":"2099-12-31T23:59:59Z","gates":["*"]}]}"#;

/// `{gate}` is the demo's gate name, which changes from run to run.
const VISITORS: &str = r#"{"list":"visitors","site":"demo","version":1,
 "entries":[{"invitation":"INV-8f3a","visitor":"Zhang San","host":"E1001",
   "credentials":[{"kind":"qr","id":"QR-7Hk2pX9w"}],
   "valid_from":"2020-01-01T00:00:00Z","valid_until":"2099-12-31T23:59:59Z",
   "gates":["{gate}"],"max_entries":2}]}"#;

struct Step {
    what: &'static str,
    kind: u16,
    credential: &'static str,
    score: u16,
    face: bool,
}

const SCENE: &[Step] = &[
    Step {
        what: "staff card of Li Wei",
        kind: KIND_CARD,
        credential: "0012345678",
        score: 0,
        face: false,
    },
    Step {
        what: "a card nobody issued",
        kind: KIND_CARD,
        credential: "0099999999",
        score: 0,
        face: false,
    },
    Step {
        what: "visitor QR, first entry",
        kind: KIND_QR,
        credential: "QR-7Hk2pX9w",
        score: 0,
        face: false,
    },
    Step {
        what: "visitor QR, second entry",
        kind: KIND_QR,
        credential: "QR-7Hk2pX9w",
        score: 0,
        face: false,
    },
    Step {
        what: "visitor QR, third try",
        kind: KIND_QR,
        credential: "QR-7Hk2pX9w",
        score: 0,
        face: false,
    },
    Step {
        what: "Li Wei's face, poorly lit (score 0.62)",
        kind: KIND_FACE,
        credential: "P1001",
        score: 620,
        face: true,
    },
    Step {
        what: "Li Wei's face (score 0.93)",
        kind: KIND_FACE,
        credential: "P1001",
        score: 930,
        face: true,
    },
];

/// The demo's site; README and docs/mqtt.md name it.
const SITE: &str = "demo";

pub async fn run(mqtt: Option<String>) -> anyhow::Result<()> {
    let gate_name = format!("demo-{}", std::process::id());
    let local: SocketAddr = "127.0.0.1:0".parse().context("literal address")?;
    let card_srv = SimServer::bind(local)
        .await
        .context("hw-sim: bind reader")?;
    let face_srv = SimServer::bind(local)
        .await
        .context("hw-sim: bind face terminal")?;
    let relay_srv = SimServer::bind(local)
        .await
        .context("hw-sim: bind relay board")?;
    let card = card_srv.add_reader(1, ReaderRegisters::default());
    let face = face_srv.add_reader(1, ReaderRegisters::default());
    let relay = relay_srv.add_relay(1, 2, RelayRegisters::default());

    let dir = tempfile::tempdir().context("cannot create a temporary directory")?;
    let mqtt_section = match &mqtt {
        Some(hp) => {
            let (host, port) = hp
                .rsplit_once(':')
                .with_context(|| format!("--mqtt `{hp}` is not HOST:PORT"))?;
            // The demo's lists are put in the store directly; the gate still needs an admin
            // key to trust for anything sent over MQTT. A fresh one per run: nothing outside
            // this process can sign for it.
            let key = gated_contract::envelope::AdminKey::generate("demo")
                .map_err(|e| anyhow::anyhow!("demo key: {e}"))?;
            format!(
                "[mqtt]\nhost = \"{host}\"\nport = {port}\n\
                 [[trust.key]]\nid = \"demo\"\npublic = \"{}\"\n",
                key.public_b64()
            )
        }
        None => String::new(),
    };
    let toml = format!(
        r#"[gate]
site = "{SITE}"
gate = "{gate_name}"
[store]
path = "{db}"
{mqtt_section}
# The demo runs on any machine: its clock is trusted without a time sync service.
[clock]
sync = "none"
[[relay]]
name = "relay1"
address = "{relay}"
[[lane]]
id = 0
relay = "relay1"
[[reader]]
name = "reader1"
address = "{card}"
lane = 0
direction = "in"
[[reader]]
name = "face1"
address = "{face}"
lane = 0
direction = "in"
"#,
        db = dir.path().join("demo.db").display(),
        relay = relay_srv.local_addr(),
        card = card_srv.local_addr(),
        face = face_srv.local_addr(),
    );
    let mut cfg = Config::parse("demo config", &toml).context("demo config")?;
    if let Some(m) = cfg.mqtt.as_mut() {
        m.demo = true;
    }
    let gate = Gate::start(&cfg).await?;
    let store = gate.shared.store.clone();
    let visitors = VISITORS.replace("{gate}", &gate_name);
    for (list, body) in [
        (ListName::Staff, STAFF),
        (ListName::Visitors, visitors.as_str()),
    ] {
        let snap = parse_snapshot(list, body.as_bytes())
            .map_err(|e| anyhow::anyhow!("sample {}: {e}", list.as_str()))?;
        store
            .call(move |db| db.apply_snapshot(&snap))
            .await?
            .map_err(|e| anyhow::anyhow!("sample list: {e}"))?;
    }
    say!(
        "gated demo: gate {SITE}/{gate_name}, lane 0 with a card reader and a face terminal (hw-sim on 127.0.0.1)"
    );
    say!(
        "sample lists: staff E1001 Li Wei (card 0012345678, face P1001); visitor INV-8f3a Zhang San (QR, 2 entries)\n"
    );

    readers_watching(&gate.shared.health, &["reader1", "face1"]).await?;
    let mut decisions = gate.shared.decisions.subscribe();
    for step in SCENE {
        let reader: &SimReader = if step.face { &face } else { &card };
        let before = relay.pulses().len();
        reader
            .present(step.kind, step.credential, step.score)
            .map_err(|e| anyhow::anyhow!("hw-sim: {e}"))?;
        let d = next_decision(&mut decisions).await?;
        let released = wait_pulse(&relay, before, d.event.reason.is_granted()).await;
        print_line(step.what, &d, released)?;
    }

    let result = match mqtt {
        Some(hp) => wait_synced(&gate, &hp, &gate_name).await,
        None => {
            let pending = store.call(|db| db.outbox_stats()).await?.pending;
            say!(
                "\noffline (no --mqtt): {pending} events wait in the outbox until a broker is configured"
            );
            Ok(())
        }
    };
    gate.stop().await;
    result
}

/// Waits until each reader has been read once: that read found its mailbox empty, so the
/// swipes the scene makes have a known age. A swipe waiting before the first read is of
/// unknown age and refused `stale_swipe`, as at a real gate that has just started.
async fn readers_watching(health: &Health, readers: &[&str]) -> anyhow::Result<()> {
    let mut changed = health.watch();
    let all_ok = || readers.iter().all(|r| health.is_ok(r));
    let wait = async {
        while !all_ok() {
            if changed.changed().await.is_err() {
                return;
            }
        }
    };
    if tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .is_err()
        || !all_ok()
    {
        bail!("the simulated readers did not answer within 10 s");
    }
    Ok(())
}

async fn next_decision(
    rx: &mut tokio::sync::broadcast::Receiver<Decided>,
) -> anyhow::Result<Decided> {
    match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
        Ok(Ok(d)) => Ok(d),
        Ok(Err(e)) => bail!("decision channel: {e}"),
        Err(_) => bail!("no decision within 5 s: is the simulated reader reachable?"),
    }
}

/// Waits briefly for the relay pulse a grant must cause; a denial must cause none.
async fn wait_pulse(relay: &SimRelay, before: usize, granted: bool) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while granted && relay.pulses().len() == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.pulses().len() > before
}

fn print_line(what: &str, d: &Decided, released: bool) -> anyhow::Result<()> {
    let e = &d.event;
    let cred = e
        .credential
        .as_ref()
        .map(|c| match c.score {
            Some(s) => format!("{} {} ({s:.2})", c.kind.as_str(), c.id),
            None => format!("{} {}", c.kind.as_str(), c.id),
        })
        .unwrap_or_default();
    let verdict = if e.reason.is_granted() {
        "GRANTED"
    } else {
        "DENIED "
    };
    let reason = serde_json::to_value(e.reason)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_default();
    say!(
        "#{:<2} lane {} {:<3} {:<24} {verdict} {:<19} subject={:<9} relay={}   ← {what}",
        e.seq,
        e.lane,
        e.direction.as_str(),
        cred,
        reason,
        e.subject.as_deref().unwrap_or("-"),
        if released { "released" } else { "closed" },
    );
    Ok(())
}

async fn wait_synced(gate: &Gate, broker: &str, name: &str) -> anyhow::Result<()> {
    say!(
        "\nsyncing to the broker at {broker} (topics acs/{SITE}/{name}/event, …/alarm, …/status; \
         every message says \"demo\": true)"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let pending = gate
            .shared
            .store
            .call(|db| db.outbox_stats())
            .await?
            .pending;
        if pending == 0 {
            say!("every event is acknowledged by the broker (PUBACK); the outbox is empty");
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!(
                "{pending} events still unacknowledged after 30 s: is a broker listening at {broker}?"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
