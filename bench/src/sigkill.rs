//! The crash test: the daemon is killed with SIGKILL at random moments while people swipe on
//! four lanes, and restarted at once, `rounds` times. Then every pass whose relay opened must
//! have reached the broker, and the event stream must have no gap.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Result, bail};
use hw_sim::{KIND_CARD, SimReader};
use rand::Rng as _;

use crate::Results;
use crate::gate::Ctx;
use crate::infra::{Broker, Devices, EVENT_TOPIC, Listener, wait_until};
use crate::seed;

const LANES: u16 = 4;
/// Cards per lane: every presentation uses a card of its own, so a pulse names its pass.
const PER_LANE: usize = 10_000;

/// One presentation: its lane, reader seq and card.
struct Shown {
    lane: usize,
    seq: u16,
    card: String,
}

/// Presents a new card as soon as the previous one was acknowledged, with a short random
/// pause, until `stop`.
async fn lane(lane: usize, reader: SimReader, stop: Arc<AtomicBool>) -> Result<Vec<Shown>> {
    let mut out = Vec::new();
    for k in 0..PER_LANE {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let card = seed::card(lane * PER_LANE + k);
        let seq = reader.present(KIND_CARD, &card, 0)?;
        out.push(Shown { lane, seq, card });
        while reader.queued() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let pause = rand::rng().random_range(10..80);
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    Ok(out)
}

pub async fn run(ctx: &Ctx, rounds: usize, r: &mut Results) -> Result<()> {
    let db = ctx.dir.join("sigkill.db");
    {
        let mut d = seed::open(&db)?;
        seed::lists(&mut d, 1, usize::from(LANES) * PER_LANE, 0)?;
    }
    crate::settle();
    let broker = Broker::start().await?;
    let events = Listener::connect(broker.port, EVENT_TOPIC, true).await?;
    let devices = Devices::start(LANES).await?;
    let mut daemon = ctx.daemon("sigkill", &db, &broker, &devices)?;

    let stop = Arc::new(AtomicBool::new(false));
    let mut lanes = Vec::new();
    for (i, reader) in devices.readers.iter().enumerate() {
        lanes.push(tokio::spawn(lane(i, reader.clone(), stop.clone())));
    }
    let start = Instant::now();
    for round in 0..rounds {
        daemon.spawn()?;
        let alive = rand::rng().random_range(30..600);
        tokio::time::sleep(Duration::from_millis(alive)).await;
        daemon.check_running()?;
        daemon.kill9();
        if round % 50 == 49 {
            eprintln!(
                "  sigkill: {} rounds in {:.0} s, {} pulses, {} events received",
                round + 1,
                start.elapsed().as_secs_f64(),
                devices.relay.pulses().len(),
                events.count()
            );
        }
    }
    // The last start: traffic stops, every swipe is decided, the outbox drains.
    daemon.spawn()?;
    stop.store(true, Ordering::Relaxed);
    let mut shown = Vec::new();
    for l in lanes {
        shown.extend(l.await??);
    }
    let outbox =
        rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    outbox.busy_timeout(Duration::from_secs(5))?;
    let drained = || -> bool {
        outbox
            .query_row("SELECT NOT EXISTS (SELECT 1 FROM outbox)", [], |r| r.get(0))
            .unwrap_or(false)
    };
    wait_until(
        "the outbox to drain after the last restart",
        Duration::from_secs(60),
        drained,
    )
    .await?;
    let last_seq: u64 = outbox.query_row(
        "SELECT last FROM seq_counter WHERE stream = 'event'",
        [],
        |r| r.get(0),
    )?;
    wait_until(
        "every event to reach the subscriber",
        Duration::from_secs(30),
        || received_seqs(&events).len() as u64 >= last_seq,
    )
    .await
    .ok();
    daemon.check_running()?;
    daemon.kill9();

    // Every seq from 1 to the last the store gave out reached the broker.
    let seqs = received_seqs(&events);
    let gaps = (1..=last_seq).filter(|s| !seqs.contains(s)).count();
    // Every pulse belongs to the card at the head of its lane's reader then; that card's
    // granted event reached the broker.
    let granted: HashMap<(u64, String), usize> = events
        .json_on(EVENT_TOPIC)
        .iter()
        .filter(|e| e["decision"] == "granted")
        .map(|e| {
            (
                (
                    e["lane"].as_u64().unwrap_or(u64::MAX),
                    e["credential"]["id"].as_str().unwrap_or("").to_string(),
                ),
                1,
            )
        })
        .collect();
    let mut by_lane: HashMap<usize, Vec<(SystemTime, &Shown)>> = HashMap::new();
    for s in &shown {
        if let Some(at) = devices.readers[s.lane].presented_at(s.seq) {
            by_lane.entry(s.lane).or_default().push((at, s));
        }
    }
    for v in by_lane.values_mut() {
        v.sort_by_key(|(at, _)| *at);
    }
    let pulses = devices.relay.pulses();
    let mut unmatched = 0;
    for p in &pulses {
        let owner = by_lane
            .get(&usize::from(p.lane))
            .and_then(|v| v.iter().rev().find(|(at, _)| *at <= p.at))
            .map(|(_, s)| *s);
        match owner {
            Some(s) if granted.contains_key(&(u64::from(p.lane), s.card.clone())) => {}
            _ => unmatched += 1,
        }
    }
    let received = events.on(EVENT_TOPIC).len();
    if pulses.is_empty() || shown.is_empty() {
        bail!(
            "the crash test saw no traffic ({} swipes, {} pulses)",
            shown.len(),
            pulses.len()
        );
    }
    r.put("sigkill_rounds", rounds as f64);
    r.put("sigkill_lost_events", (gaps + unmatched) as f64);
    r.put("sigkill_swipes", shown.len() as f64);
    r.put("sigkill_relay_pulses", pulses.len() as f64);
    r.put("sigkill_events_recorded", last_seq as f64);
    r.put(
        "sigkill_duplicates_received",
        received.saturating_sub(seqs.len()) as f64,
    );
    eprintln!(
        "  sigkill: {rounds} rounds, {} swipes, {} pulses, {last_seq} events; {gaps} seq gaps, {unmatched} pulses without their event",
        shown.len(),
        pulses.len()
    );
    Ok(())
}

fn received_seqs(events: &Listener) -> BTreeSet<u64> {
    events
        .json_on(EVENT_TOPIC)
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect()
}
