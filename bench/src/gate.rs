//! The figures of the whole daemon: the release `gated` binary against hw-sim devices over
//! Modbus TCP and a mosquitto of our own, each next to the raw limit measured in the same run.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use gated_contract::envelope::AdminKey;
use hw_sim::{KIND_CARD, SimReader};
use rand::Rng as _;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::Results;
use crate::infra::{
    self, ACK_TOPIC, Broker, Daemon, Devices, EVENT_TOPIC, Listener, STAFF_TOPIC, percentile,
    round1, round3, rss_mb, wait_until,
};
use crate::seed;

/// The reader poll interval the swipe figures are taken with: gated's default.
pub const POLL_MS: u64 = 50;

pub struct Ctx {
    pub gated: PathBuf,
    pub dir: PathBuf,
    pub admin: AdminKey,
}

impl Ctx {
    pub fn daemon(&self, name: &str, db: &Path, broker: &Broker, d: &Devices) -> Result<Daemon> {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir)?;
        let config = infra::config_text(db, broker.port, d, POLL_MS, &self.admin.public_b64());
        Daemon::new(&self.gated, &dir, &config)
    }
}

/// True while the outbox holds rows up to `rowid` (all of them by default). Read through a
/// connection of our own (WAL lets it read while the daemon writes).
fn outbox_busy(conn: &rusqlite::Connection, upto: Option<i64>) -> Result<bool> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM outbox WHERE rowid <= ?1)",
        [upto.unwrap_or(i64::MAX)],
        |r| r.get(0),
    )?)
}

fn reader_conn(path: &Path) -> Result<rusqlite::Connection> {
    let c =
        rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    c.busy_timeout(Duration::from_secs(5))?;
    Ok(c)
}

/// A bare Modbus TCP round trip: one read of a reader's mailbox (36 input registers), as the
/// daemon's poll does, by a plain tokio-modbus client.
async fn modbus_rtt_ms(reader: &SimReader) -> Result<f64> {
    use tokio_modbus::prelude::*;
    let mut ctx = tcp::connect_slave(reader.server().local_addr(), Slave(reader.unit())).await?;
    let mut v = Vec::new();
    for i in 0..2200 {
        let t = Instant::now();
        ctx.read_input_registers(0, 36).await??;
        if i >= 200 {
            v.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(percentile(&mut v, 50.0))
}

/// One person per second per lane, each at a random moment of the second, on every reader,
/// until `stop`. Returns (lane, seq) of each presentation; a reader that refuses one (its
/// queue full) is an error.
async fn traffic(
    readers: Vec<SimReader>,
    cards: usize,
    stop: Arc<AtomicBool>,
) -> Result<Vec<(usize, u16)>> {
    let mut lanes = Vec::new();
    for (lane, reader) in readers.into_iter().enumerate() {
        let stop = stop.clone();
        lanes.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let offset = rand::rng().random_range(0..1000);
            tokio::time::sleep(Duration::from_millis(offset)).await;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let card = seed::card(rand::rng().random_range(0..cards));
                out.push((lane, reader.present(KIND_CARD, &card, 0)?));
            }
            anyhow::Ok(out)
        }));
    }
    let mut all = Vec::new();
    for l in lanes {
        all.extend(l.await??);
    }
    Ok(all)
}

/// Swipe-to-relay latencies in ms: from the moment each presentation became readable in its
/// reader's mailbox to the moment the relay board received its pulse. Only presentations that
/// became readable before `until` count; those that no pulse followed are counted apart.
fn latencies(d: &Devices, presented: &[(usize, u16)], until: SystemTime) -> (Vec<f64>, usize) {
    let pulses = d.relay.pulses();
    let mut out = Vec::new();
    let mut missing = 0;
    for &(lane, seq) in presented {
        let Some(at) = d.readers[lane].presented_at(seq) else {
            missing += 1;
            continue;
        };
        if at > until {
            continue;
        }
        let pulse = pulses
            .iter()
            .filter(|p| usize::from(p.lane) == lane && !p.exit && p.at >= at)
            .map(|p| p.at)
            .min();
        match pulse {
            Some(p) if infra::ms_between(at, p) < 1000.0 => out.push(infra::ms_between(at, p)),
            _ => missing += 1,
        }
    }
    (out, missing)
}

/// `swipe_to_relay_*`: 8 lanes at 60 persons a minute each, while 100k-entry staff snapshots
/// (signed, retained) are applied and a 100k-event backlog drains to mosquitto. Only swipes
/// made while both go on count. One such window lasts a few seconds, so the phase runs
/// `CYCLES` of them, each with a fresh database and daemon: the load starts with the first
/// snapshot and a new one follows each ack until the backlog has drained.
pub async fn swipe_to_relay(ctx: &Ctx, r: &mut Results) -> Result<()> {
    const STAFF: usize = 100_000;
    const CYCLES: usize = 5;
    let snapshots: Vec<Vec<u8>> = (2..8)
        .map(|v| ctx.admin.seal(seed::staff_body(v, STAFF).as_bytes()))
        .collect();
    let broker = Broker::start().await?;
    let acks = Listener::connect(broker.port, ACK_TOPIC, true).await?;
    let events = Listener::connect(broker.port, EVENT_TOPIC, false).await?;
    let devices = Devices::start(8).await?;
    let rtt = modbus_rtt_ms(&devices.readers[0]).await?;

    let (mut v, mut missing) = (Vec::new(), 0);
    let (mut window_s, mut applied) = (0.0, 0);
    for cycle in 0..CYCLES {
        let db = ctx.dir.join(format!("swipes-{cycle}.db"));
        {
            let mut d = seed::open(&db)?;
            seed::lists(&mut d, 1, STAFF, 0)?;
            seed::backlog(&mut d, 100_000, STAFF)?;
        }
        crate::settle();
        let mut daemon = ctx.daemon(&format!("swipes-{cycle}"), &db, &broker, &devices)?;
        let (events_before, acks_before) = (events.count(), acks.count());
        daemon.spawn()?;
        wait_until(
            "the backlog to start draining",
            Duration::from_secs(20),
            || events.count() > events_before,
        )
        .await
        .with_context(|| daemon.log_tail())?;
        let start = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let load = tokio::spawn(traffic(devices.readers.clone(), STAFF, stop.clone()));
        let outbox = reader_conn(&db)?;
        let mut sent = 0;
        let mut drained = false;
        loop {
            let acked = acks.json_on(ACK_TOPIC)[acks_before..]
                .iter()
                .filter(|a| {
                    a["ok"] == true && a["ref"].as_str().is_some_and(|r| r.starts_with("staff@"))
                })
                .count();
            if sent == acked && sent < snapshots.len() && !drained {
                acks.client
                    .publish(STAFF_TOPIC, QoS::AtLeastOnce, true, snapshots[sent].clone())
                    .await?;
                sent += 1;
            }
            // The backlog's rows are the first 100k; swipes meanwhile add their own after them.
            drained = drained || !outbox_busy(&outbox, Some(100_000))?;
            if drained && acked == sent && acked > 0 {
                applied += acked;
                break;
            }
            if start.elapsed() > Duration::from_secs(120) {
                bail!(
                    "under load: {acked} of {sent} snapshots acked, backlog drained: {drained}, after 120 s"
                );
            }
            daemon.check_running()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let until = SystemTime::now();
        window_s += start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let presented = load.await??;
        for rd in &devices.readers {
            wait_until(
                "every swipe to be acknowledged",
                Duration::from_secs(10),
                || rd.queued() == 0,
            )
            .await?;
        }
        daemon.kill9();
        // The next daemon starts from version 1: clear the retained snapshot.
        acks.client
            .publish(STAFF_TOPIC, QoS::AtLeastOnce, true, Vec::new())
            .await?;
        let (lat, miss) = latencies(&devices, &presented, until);
        v.extend(lat);
        missing += miss;
    }
    r.put("poll_ms", POLL_MS as f64);
    r.put("modbus_rtt_p50_ms", round3(rtt));
    r.put("swipe_to_relay_p50_ms", round1(percentile(&mut v, 50.0)));
    r.put("swipe_to_relay_p99_ms", round1(percentile(&mut v, 99.0)));
    r.put("swipe_to_relay_max_ms", round1(percentile(&mut v, 100.0)));
    r.put("swipes_measured", v.len() as f64);
    r.put("swipes_without_release", missing as f64);
    r.put("load_windows_s", round1(window_s));
    r.put("load_snapshots_applied", applied as f64);
    Ok(())
}

/// `flush_events_per_s` against `raw_publish_per_s`: the same 100k payloads, first drained from
/// gated's outbox, then published by a bare rumqttc client with gated's window (64 in flight),
/// to the same broker. Each rate runs from the first message a subscriber sees to the moment
/// the last one is acknowledged (the outbox empty; the last PUBACK).
pub async fn flush(ctx: &Ctx, r: &mut Results) -> Result<()> {
    const N: usize = 100_000;
    let db = ctx.dir.join("flush.db");
    let payloads: Vec<String> = {
        let mut d = seed::open(&db)?;
        seed::lists(&mut d, 1, 1000, 0)?;
        seed::backlog(&mut d, N, 1000)?;
        d.pending(0, N)?
            .into_iter()
            .map(|row| row.payload)
            .collect()
    };
    crate::settle();
    if payloads.len() != N {
        bail!("the backlog holds {} rows, not {N}", payloads.len());
    }
    let broker = Broker::start().await?;
    let devices = Devices::start(1).await?;

    // gated.
    let listener = Listener::connect(broker.port, EVENT_TOPIC, false).await?;
    let mut daemon = ctx.daemon("flush", &db, &broker, &devices)?;
    let outbox = reader_conn(&db)?;
    daemon.spawn()?;
    let end = Instant::now() + Duration::from_secs(300);
    while outbox_busy(&outbox, None)? {
        if Instant::now() > end {
            bail!("the 100k backlog did not drain in 300 s");
        }
        daemon.check_running()?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let done = Instant::now();
    let first = listener
        .first_at()
        .context("no event reached the subscriber")?;
    let flush = N as f64 / done.duration_since(first).as_secs_f64();
    daemon.kill9();
    drop(listener);

    // Bare rumqttc.
    let listener = Listener::connect(broker.port, EVENT_TOPIC, false).await?;
    let mut o = MqttOptions::new(
        format!("bench-raw-{}", infra::free_port()?),
        "127.0.0.1",
        broker.port,
    );
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(64);
    let (client, mut el) = AsyncClient::new(o, 128);
    let poller = tokio::spawn(async move {
        let mut acked = 0usize;
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acked += 1;
                    if acked == N {
                        return Ok(Instant::now());
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(anyhow::anyhow!("bare publisher: {e}")),
            }
        }
    });
    for p in payloads {
        client
            .publish(EVENT_TOPIC, QoS::AtLeastOnce, false, p)
            .await?;
    }
    let done = tokio::time::timeout(Duration::from_secs(300), poller)
        .await
        .context("the bare publisher did not finish in 300 s")???;
    let first = listener
        .first_at()
        .context("no raw message reached the subscriber")?;
    let raw = N as f64 / done.duration_since(first).as_secs_f64();
    r.put("flush_events_per_s", flush.round());
    r.put("raw_publish_per_s", raw.round());
    r.put("flush_ratio", round3(flush / raw));
    Ok(())
}

/// `rss_idle_mb`: an 8-lane gate with empty lists and outbox, 5 s after start, connected.
pub async fn rss_idle(ctx: &Ctx, r: &mut Results) -> Result<()> {
    let broker = Broker::start().await?;
    let events = Listener::connect(broker.port, infra::STATUS_TOPIC, false).await?;
    let devices = Devices::start(8).await?;
    let mut daemon = ctx.daemon("idle", &ctx.dir.join("idle.db"), &broker, &devices)?;
    daemon.spawn()?;
    wait_until("the gate's status", Duration::from_secs(20), || {
        events.count() > 0
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    daemon.check_running()?;
    let (rss, _) = rss_mb(daemon.pid().context("no pid")?)?;
    r.put("rss_idle_mb", round1(rss));
    Ok(())
}

/// Builds the loaded database: 250k staff and 50k invitations (`lists`, from the lookup
/// phase), plus a backlog of 1M events.
pub fn loaded_db(ctx: &Ctx, lists: &Path) -> Result<PathBuf> {
    let path = ctx.dir.join("loaded.db");
    std::fs::copy(lists, &path).context("copy the 250k-list database")?;
    let mut d = seed::open(&path)?;
    let t = Instant::now();
    seed::backlog(&mut d, 1_000_000, 250_000)?;
    eprintln!(
        "  (1M-event backlog written in {:.1} s)",
        t.elapsed().as_secs_f64()
    );
    drop(d);
    crate::settle();
    Ok(path)
}

/// `startup_ms_1m_backlog`: from the exec of `gated run` to the relay pulse of a swipe that
/// was waiting in the reader when it started (the first decision, carried out). Five runs, the
/// median reported; each run drains a little of the backlog before it is killed.
pub async fn startup(ctx: &Ctx, db: &Path, r: &mut Results) -> Result<()> {
    let broker = Broker::start().await?;
    let devices = Devices::start(1).await?;
    let mut daemon = ctx.daemon("startup", db, &broker, &devices)?;
    let reader = &devices.readers[0];
    let mut runs = Vec::new();
    for run in 0..5 {
        reader.present(KIND_CARD, &seed::card(run * 1000 + 17), 0)?;
        let before = devices.relay.pulses().len();
        daemon.spawn()?;
        let started = daemon.started_at;
        wait_until("the first pulse", Duration::from_secs(20), || {
            devices.relay.pulses().len() > before
        })
        .await
        .with_context(|| daemon.log_tail())?;
        let pulse: SystemTime = devices.relay.pulses()[before].at;
        runs.push(infra::ms_between(started, pulse));
        wait_until("the swipe's ack", Duration::from_secs(10), || {
            reader.queued() == 0
        })
        .await?;
        daemon.kill9();
    }
    let max = runs.iter().copied().fold(f64::MIN, f64::max);
    r.put("startup_ms_1m_backlog", round1(percentile(&mut runs, 50.0)));
    r.put("startup_ms_1m_backlog_max", round1(max));
    Ok(())
}

/// `rss_loaded_mb`: the peak resident memory (VmHWM) of the daemon on the loaded database over
/// 20 s, with the broker up (the backlog draining) and 8 lanes at a person a second each.
pub async fn rss_loaded(ctx: &Ctx, db: &Path, r: &mut Results) -> Result<()> {
    let broker = Broker::start().await?;
    let devices = Devices::start(8).await?;
    let mut daemon = ctx.daemon("loaded", db, &broker, &devices)?;
    daemon.spawn()?;
    let stop = Arc::new(AtomicBool::new(false));
    let load = tokio::spawn(traffic(devices.readers.clone(), 250_000, stop.clone()));
    let pid = daemon.pid().context("no pid")?;
    let start = Instant::now();
    let mut last = (0.0, 0.0);
    while start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        daemon.check_running()?;
        last = rss_mb(pid)?;
    }
    stop.store(true, Ordering::Relaxed);
    let presented = load.await??;
    let (granted, missing) = latencies(&devices, &presented, SystemTime::now());
    if granted.is_empty() {
        bail!("no swipe was released on the loaded gate ({missing} presented)");
    }
    r.put("rss_loaded_mb", round1(last.1));
    r.put("rss_loaded_end_mb", round1(last.0));
    Ok(())
}
