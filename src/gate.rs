//! Wiring: opens the store, starts one task per device and the MQTT sync, and stops them all
//! on SIGTERM or Ctrl-C. Also `Shared`, what every task holds: the store handle, the health
//! registry, the gate mode, and the channels that report decisions and wake the uplink.

use std::sync::Arc;

use anyhow::Context as _;
use tokio::sync::{broadcast, mpsc, watch};

use crate::config::Config;
use crate::control::Control;
use crate::core::Mode;
use crate::hw::gpio::Gpio as _;
use crate::hw::health::{Health, Transition};
use crate::hw::{DeviceError, reader, relay};
use crate::store::{GateId, Store, StoreError};
use crate::sync::downlink::Downlink;
use gated_contract::PassEvent;
use gated_contract::Topics;
use gated_contract::envelope::Verifier;

/// A decision as the lane saw it, for the log and the demo.
#[derive(Clone, Debug)]
pub struct Decided {
    pub reader: String,
    pub event: PassEvent,
}

#[derive(Clone)]
pub struct Shared {
    pub store: Store,
    pub health: Health,
    pub mode: watch::Receiver<Mode>,
    pub decisions: broadcast::Sender<Decided>,
    /// Signalled whenever a row enters the outbox, so the uplink sends it at once. A channel
    /// of one (not a `Notify`): a signal sent while the uplink is busy stays until it looks.
    pub outbox_kick: mpsc::Sender<()>,
    /// The RS-485 buses, each owned by one task, shared by the devices on it.
    pub buses: crate::hw::bus::Buses,
    /// Face-terminal snapshots, for the snapshot task to decode and store.
    pub snapshots: mpsc::Sender<crate::hw::snapshot::Job>,
    /// Releases of granted passes not settled yet, which shutdown waits for.
    pub releases: relay::InFlight,
    /// Alarms the store could not record, for the uplink to send past the outbox.
    pub direct: crate::sync::direct::Direct,
}

impl Shared {
    /// Records an observation of a device; a fault, and a confirmed recovery, are alarms (G7).
    pub fn report(&self, device: &str, r: Result<(), DeviceError>) {
        let observed = r.as_ref().map(|_| ()).map_err(DeviceError::state);
        match self.health.observe(device, observed) {
            Transition::None => {}
            Transition::Fault => {
                let e = r.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(device, error = %e, "device fault");
                self.alarm_later("device_fault", device, e);
            }
            Transition::Recovered => {
                tracing::info!(device, "device recovered");
                let detail = format!(
                    "device answers again (without error for {} s)",
                    crate::hw::health::RECOVERY_HOLD.as_secs()
                );
                self.alarm_later("device_recovered", device, detail);
            }
        }
    }

    /// Records an alarm on a task of its own: a device task (a relay board driving the hold
    /// coils of a fire release) must never wait for the store.
    /// Records an alarm on a task of its own: the caller never waits for the store.
    pub fn alarm_later(&self, code: &'static str, device: &str, detail: String) {
        let (shared, device) = (self.clone(), device.to_string());
        tokio::spawn(async move {
            let _ = shared.alarm(code, &device, &detail).await;
        });
    }

    /// Puts an alarm in the outbox.
    pub async fn alarm(&self, code: &str, source: &str, detail: &str) -> Result<(), StoreError> {
        // A detail can quote what a device or the broker sent: bounded, like every echo.
        use gated_contract::{MAX_DETAIL_BYTES, MAX_ECHO_BYTES, bounded};
        let (code, source) = (
            code.to_string(),
            bounded(source, MAX_ECHO_BYTES).into_owned(),
        );
        let detail = bounded(detail, MAX_DETAIL_BYTES).into_owned();
        let now = crate::wall::now_ms();
        let r = self
            .store
            .call(move |db| db.record_alarm(&code, &source, &detail, now))
            .await;
        match r {
            Ok(_) => {
                self.kick_outbox();
                Ok(())
            }
            Err(e) => {
                crate::limited_error!(error = %e, "alarm could not be recorded");
                Err(e)
            }
        }
    }

    /// Sends an alarm to the centre past the outbox, marked `"unrecorded": true`: for what
    /// must reach the centre while the store cannot record it (G8, G9). It does not record
    /// it: the caller keeps the alarm and records it once the store can write.
    pub fn alarm_direct(&self, code: &str, source: &str, detail: &str) {
        self.direct_alarms().send(code, source, detail);
    }

    /// What `alarm_direct` needs, without the store: for the store's owner thread, which a
    /// handle to the store would keep running after every other handle is dropped.
    pub fn direct_alarms(&self) -> DirectAlarms {
        DirectAlarms {
            direct: self.direct.clone(),
            kick: self.outbox_kick.clone(),
        }
    }

    /// Tells the uplink there is something new; a signal already pending is enough.
    pub fn kick_outbox(&self) {
        let _ = self.outbox_kick.try_send(());
    }

    pub fn publish_decision(&self, reader: &str, event: &PassEvent) {
        self.kick_outbox();
        tracing::info!(
            target: "gated::pass",
            reader,
            lane = event.lane,
            direction = event.direction.as_str(),
            seq = event.seq,
            credential = event.credential.as_ref().map(|c| format!("{}:{}", c.kind.as_str(), c.id)).unwrap_or_default(),
            subject = event.subject.as_deref().unwrap_or("-"),
            reason = ?event.reason,
            "{:?}", event.decision
        );
        let _ = self.decisions.send(Decided {
            reader: reader.to_string(),
            event: event.clone(),
        });
    }
}

/// Sends alarms past the outbox (`Shared::alarm_direct`).
#[derive(Clone)]
pub struct DirectAlarms {
    direct: crate::sync::direct::Direct,
    kick: mpsc::Sender<()>,
}

impl DirectAlarms {
    /// Returns the alarm's id, for `wait_acked`.
    pub fn send(&self, code: &str, source: &str, detail: &str) -> String {
        let a = crate::sync::direct::Unrecorded::new(code, source, detail, crate::wall::now_ms());
        tracing::error!(
            alarm = code,
            source,
            "{detail} (sent to the broker unrecorded)"
        );
        let id = a.id.clone();
        self.direct.push(a);
        self.kick();
        id
    }

    /// Blocks this thread (never an async worker) until the broker acknowledged the alarm
    /// `id`, or for `bound`: for a process about to end. True if it did.
    pub fn wait_acked(&self, id: &str, bound: std::time::Duration) -> bool {
        self.direct.wait_acked(id, bound)
    }

    /// Wakes the uplink (it also sends what entered the outbox).
    pub fn kick(&self) {
        let _ = self.kick.try_send(());
    }
}

/// What `gated run` needs of this machine, opened and read by `check_host`.
pub struct Host {
    gpio: Option<crate::hw::gpio::Rpi>,
    secrets: Option<crate::sync::transport::Secrets>,
}

fn gate_id(cfg: &Config) -> GateId {
    GateId {
        site: cfg.site.clone(),
        gate: cfg.gate.clone(),
    }
}

/// Everything `gated run` checks on this machine before it starts anything, each failure an
/// error that names its cause: GPIO devices off a Raspberry Pi; the TLS files and the MQTT
/// login the config names; a store that cannot be made here, is from a newer gated, or was
/// made for another gate. `gated check-config` runs this same function, so that a config it
/// passes does not stop `run` at start (the one exception: a store that another gated holds,
/// a state of the machine that `Store::open` refuses). The checks of the config itself are
/// `Config::load`'s, shared the same way.
pub fn check_host(cfg: &Config) -> anyhow::Result<Host> {
    let host = check_machine(cfg)?;
    Store::check(&cfg.store.path, &gate_id(cfg))?;
    Ok(host)
}

/// `check_host` but the store: what the gate needs to reach the centre and its devices. A
/// store that cannot be opened is reported to the centre before the start ends
/// (`sync::start_report`), which needs what this loads.
fn check_machine(cfg: &Config) -> anyhow::Result<Host> {
    // GPIO devices need a Raspberry Pi: elsewhere this fails before anything starts, with a
    // message naming them.
    let gpio_devices = cfg.gpio_devices();
    let gpio = if gpio_devices.is_empty() {
        None
    } else {
        Some(crate::hw::gpio::Rpi::open(&gpio_devices.join(", "))?)
    };
    // The broker's CA, this gate's certificate and its MQTT password, read before anything
    // starts: a bad file is an error at start that names it, not a retry loop.
    let secrets = cfg
        .mqtt
        .as_ref()
        .map(|m| {
            let ids = crate::sync::link::client_ids(m, !cfg.peers.is_empty());
            crate::sync::transport::load_for(m.tls.as_ref(), m.auth.as_ref(), &ids)
        })
        .transpose()?;
    Ok(Host { gpio, secrets })
}

/// The store as the start finds it: checked, opened, and its persisted mode and open device
/// faults read. Every step is the store's; a failure of any is what `start_report` tells.
async fn open_store(cfg: &Config) -> Result<(Store, Mode, Vec<String>), StoreError> {
    // `Store::open` refuses all that `Store::check` would, under the store's lock (a check
    // before it read the database twice more, and could fail on a store another gated holds).
    let store = Store::open(
        &cfg.store.path,
        gate_id(cfg),
        cfg.policy.clone(),
        cfg.store.outbox_quota,
    )?;
    // The persisted mode (a lockdown survives a restart), read before any lane starts.
    // `Control` is its one writer.
    let centre = cfg.mqtt.is_some();
    let mode = store
        .call(move |db| {
            db.set_build_time(crate::store::build_time());
            if centre {
                db.expect_centre()?;
            }
            Ok(db.mode())
        })
        .await?;
    // Faults still open from before this start continue their episode (one `device_fault`,
    // then its `device_recovered`), read before any device task observes.
    let open_faults = store.call(|db| db.open_device_faults()).await?;
    Ok((store, mode, open_faults))
}

/// A running gate: its shared handles, and the way to stop it.
pub struct Gate {
    pub shared: Shared,
    pub control: Arc<Control>,
    shutdown: watch::Sender<bool>,
    sync: Option<tokio::task::JoinHandle<()>>,
}

impl Gate {
    /// Opens the store and starts every task. Returns once they are running.
    pub async fn start(cfg: &Config) -> anyhow::Result<Gate> {
        let Host { gpio, secrets } = check_machine(cfg)?;
        let memory = crate::sync::start_report::memory_from_env();
        let (store, mode, open_faults) = match open_store(cfg).await {
            Ok(opened) => opened,
            Err(e) => {
                // Another gated holds the store: it runs, under the same client ids, and
                // connecting would knock it off the broker. It is not this gate's failure.
                // Asked of the lock itself: the checks before it may fail for a store another
                // gated is writing (busy, or its own damage found) without saying `InUse`.
                if let (Some(m), Some(secrets)) = (&cfg.mqtt, &secrets)
                    && !matches!(e, StoreError::InUse { .. })
                    && !Store::held_by_another(&cfg.store.path)
                {
                    let topics = Topics {
                        root: m.root.clone(),
                        site: cfg.site.clone(),
                        gate: cfg.gate.clone(),
                    };
                    let error = e.to_string();
                    let sent = crate::sync::start_report::report(
                        m,
                        secrets,
                        &topics,
                        &error,
                        memory.as_deref(),
                    )
                    .await;
                    // `alarm_acked` None: the same error was alarmed within the hour, not again.
                    tracing::info!(
                        status_acked = sent.status_acked,
                        alarm_acked = ?sent.alarm_acked,
                        "the store cannot be opened: report to the centre done"
                    );
                }
                return Err(e.into());
            }
        };
        // This start is past its store: a later failure is a new episode, alarmed at once.
        crate::sync::start_report::forget(memory.as_deref());
        if mode != Mode::Normal {
            tracing::warn!(mode = mode.as_str(), "starting in the persisted mode");
        }
        let (mode_tx, mode_rx) = watch::channel(mode);
        if !open_faults.is_empty() {
            tracing::warn!(devices = ?open_faults, "device faults open from before the start");
        }
        let health = Health::default();
        health.restore_faults(open_faults);
        let (outbox_kick, kick_rx) = mpsc::channel(1);
        // A few snapshots may wait; more are dropped (logged), never waited for.
        let (snapshot_tx, snapshot_rx) = mpsc::channel(8);
        let shared = Shared {
            store,
            health,
            mode: mode_rx,
            decisions: broadcast::channel(1024).0,
            outbox_kick,
            buses: Default::default(),
            snapshots: snapshot_tx,
            releases: Default::default(),
            direct: Default::default(),
        };
        crate::hw::reader::watch_store(&shared);
        tokio::spawn(crate::hw::snapshot::run(
            snapshot_rx,
            cfg.snapshot.clone(),
            shared.clone(),
        ));

        let (shutdown, shutdown_rx) = watch::channel(false);
        // The clock's state reaches the store before any lane decides.
        crate::clock::watch(cfg.clock.clone(), shared.clone(), shutdown_rx.clone()).await;
        let mut relays = std::collections::HashMap::new();
        let (press_tx, press_rx) = mpsc::channel(64);
        let (contact_tx, contact_rx) = mpsc::channel(64);
        let (passage_tx, passage_rx) = mpsc::channel(256);
        let inputs = relay::Inputs {
            presses: press_tx,
            contacts: contact_tx,
            passages: passage_tx,
        };
        // Lanes whose board has a passage sensor: their grants wait for the sensor.
        let sensed: crate::passage::Sensed = cfg
            .lanes
            .values()
            .filter(|l| {
                cfg.relays
                    .iter()
                    .any(|r| r.name == l.relay && r.passage_sensor)
            })
            .map(|l| ((l.relay.clone(), l.channel), (l.id, l.release_ms)))
            .collect();
        if !sensed.is_empty() {
            tokio::spawn(crate::passage::run(
                sensed,
                cfg.visitor_entry,
                shared.decisions.subscribe(),
                passage_rx,
                shared.clone(),
            ));
        }
        for r in &cfg.relays {
            let on_board: Vec<&crate::config::LaneConfig> =
                cfg.lanes.values().filter(|l| l.relay == r.name).collect();
            let channels = on_board.iter().map(|l| l.channel).collect();
            let buttons = on_board
                .iter()
                .flat_map(|l| {
                    let rules = cfg.policy.lanes.get(&l.id).cloned().unwrap_or_default();
                    [crate::core::Direction::In, crate::core::Direction::Out]
                        .into_iter()
                        .filter(move |d| rules.free(*d) == crate::core::FreeExit::Button)
                        .map(|direction| relay::Button {
                            lane: l.id,
                            channel: l.channel,
                            direction,
                        })
                })
                .collect();
            relays.insert(
                r.name.clone(),
                relay::spawn(
                    r.clone(),
                    channels,
                    buttons,
                    inputs.clone(),
                    shared.clone(),
                    shutdown_rx.clone(),
                ),
            );
        }
        for r in &cfg.gpio_relays {
            let gpio = gpio.as_ref().context("GPIO opened for GPIO devices")?;
            relays.insert(
                r.name.clone(),
                crate::hw::gpio::spawn_relay(
                    r.clone(),
                    gpio,
                    inputs.contacts.clone(),
                    shared.clone(),
                    shutdown_rx.clone(),
                )?,
            );
        }
        let mut lanes = std::collections::BTreeMap::new();
        for l in cfg.lanes.values() {
            let relay = relays
                .get(&l.relay)
                .context("lane relay checked by config")?;
            lanes.insert(l.id, (l.clone(), relay.clone()));
        }
        tokio::spawn(free_exits(press_rx, lanes.clone(), shared.clone()));
        let fire_boards = cfg
            .relays
            .iter()
            .map(|r| r.name.clone())
            .chain(
                cfg.gpio_relays
                    .iter()
                    .filter(|r| r.fire.is_some())
                    .map(|r| r.name.clone()),
            )
            .collect();
        let control = Arc::new(Control::new(
            shared.clone(),
            mode_tx,
            lanes.clone(),
            fire_boards,
        ));
        tokio::spawn(contacts(contact_rx, control.clone()));
        let (panel_tx, panel_rx) = mpsc::channel(64);
        for p in &cfg.panels {
            crate::hw::panel::spawn(
                p.clone(),
                cfg.lanes.keys().copied().collect(),
                panel_tx.clone(),
                shared.clone(),
                shutdown_rx.clone(),
            );
        }
        for p in &cfg.gpio_panels {
            let gpio = gpio.as_ref().context("GPIO opened for GPIO devices")?;
            crate::hw::gpio::spawn_panel(
                p.clone(),
                gpio,
                panel_tx.clone(),
                shared.clone(),
                shutdown_rx.clone(),
            )?;
        }
        tokio::spawn(panels(panel_rx, control.clone()));
        for w in &cfg.wiegand {
            let gpio = gpio.as_ref().context("GPIO opened for GPIO devices")?;
            let (lane, relay) = lanes
                .get(&w.lane)
                .cloned()
                .context("wiegand lane checked by config")?;
            // Room for several whole frames: the interrupt thread must never find it full.
            let (edge_tx, edge_rx) = mpsc::channel(1024);
            let guards = [
                gpio.falling_edges(w.d0, edge_tx.clone())?,
                gpio.falling_edges(w.d1, edge_tx)?,
            ];
            let (frame_tx, frame_rx) = mpsc::channel(16);
            tokio::spawn(crate::hw::gpio::wiegand_frames(
                crate::hw::gpio::decoder_config(w),
                w.d0,
                edge_rx,
                frame_tx,
            ));
            tokio::spawn(wiegand(
                w.clone(),
                lane,
                relay,
                frame_rx,
                guards,
                shared.clone(),
            ));
        }
        for r in &cfg.readers {
            let lane = cfg
                .lanes
                .get(&r.lane)
                .context("reader lane checked by config")?;
            let relay = relays
                .get(&lane.relay)
                .context("lane relay checked by config")?;
            reader::spawn(
                r.clone(),
                lane.clone(),
                relay.clone(),
                shared.clone(),
                shutdown_rx.clone(),
            );
        }
        if let Some(m) = &cfg.mqtt
            && crate::sync::transport::login_in_clear(&m.host, m.tls.is_some(), m.auth.is_some())
        {
            tracing::warn!(
                "the MQTT password goes to {} WITHOUT TLS: anyone on the path can read it; \
                 configure [mqtt.tls]",
                m.host
            );
        }
        for (id, key) in &cfg.trust.keys {
            if key.is_weak() {
                tracing::error!(
                    key = %id,
                    "trust key `{id}` is a placeholder (a small-order point) that can never \
                     verify a signature: nothing signed will be accepted until it is replaced \
                     with a real key (`gatectl keygen` prints one)"
                );
            }
        }
        if cfg.trust.allow_unsigned {
            tracing::error!(
                "LAB MODE: trust.allow_unsigned = true. This gate accepts UNSIGNED lists and \
                 commands from anyone who can publish to the broker. Never run it like this in \
                 production."
            );
        }
        let sync_shared = shared.clone();
        let sync = cfg.mqtt.as_ref().zip(secrets).map(|(m, secrets)| {
            let downlink = Downlink {
                topics: Topics {
                    root: m.root.clone(),
                    site: cfg.site.clone(),
                    gate: cfg.gate.clone(),
                },
                verifier: Verifier::new(cfg.trust.keys.clone(), cfg.trust.allow_unsigned),
                max_bytes: m.max_message_bytes,
                store: shared.store.clone(),
                control: control.clone(),
            };
            tokio::spawn(crate::sync::link::run(
                m.clone(),
                secrets,
                downlink,
                sync_shared,
                kick_rx,
                cfg.peers.clone(),
                shutdown_rx,
            ))
        });
        Ok(Gate {
            shared,
            control,
            shutdown,
            sync,
        })
    }

    /// Stops every task; the sync publishes an offline status first. A release in flight (a
    /// granted pass whose pulse a board has not confirmed) is given `RELEASE_GRACE` to settle;
    /// one still unsettled then is recorded `relay_unknown` before the process ends.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let abandoned = self.shared.releases.settle(RELEASE_GRACE).await;
        for r in &abandoned {
            let detail = relay::abandoned_detail(r);
            tracing::error!(relay = %r.relay, "{detail}");
            let _ = self.shared.alarm("relay_unknown", &r.relay, &detail).await;
        }
        if let Some(s) = self.sync.take() {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), s).await;
        }
    }
}

/// How long shutdown waits for releases in flight: a board's reply normally takes
/// milliseconds; a hung one is not waited for beyond this (systemd's stop timeout is far
/// longer), and what it abandons is alarmed.
const RELEASE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Hands guard panel presses to `Control`. The emergency button is carried out at once; the
/// others in the order they were made, on a task of their own, so that none of them (waiting
/// for the store or a relay board) ever holds up an emergency press or the panel's reads.
async fn panels(mut presses: mpsc::Receiver<crate::hw::panel::PanelPress>, control: Arc<Control>) {
    let (ordered_tx, mut ordered) = mpsc::unbounded_channel();
    let worker = control.clone();
    tokio::spawn(async move {
        while let Some(p) = ordered.recv().await {
            worker.panel(p, crate::wall::now_ms()).await;
        }
    });
    while let Some(p) = presses.recv().await {
        if let Some(p) = control.panel_now(p, crate::wall::now_ms()) {
            let _ = ordered_tx.send(p);
        }
    }
}

/// The lane side of a Wiegand reader: each card is decided and recorded (G1), then the lane is
/// released if granted. A damaged frame grants nothing: it is logged and raised as a
/// `reader_garbage` alarm (at most one a minute per reader, so a noisy line cannot flood the
/// outbox). A Wiegand reader has no memory: a card the store cannot record is lost, and the
/// person presents it again. `_lines` keeps the GPIO interrupts alive.
async fn wiegand(
    cfg: crate::config::WiegandReader,
    lane: crate::config::LaneConfig,
    relay: relay::RelayHandle,
    mut frames: mpsc::Receiver<crate::hw::gpio::Frame>,
    _lines: [Box<dyn Send>; 2],
    shared: Shared,
) {
    shared.report(&cfg.name, Ok(()));
    let mut last_alarm: Option<std::time::Instant> = None;
    while let Some(frame) = frames.recv().await {
        let card = match frame.result {
            Ok(card) => card,
            Err(rejected) => {
                tracing::warn!(reader = %cfg.name, %rejected, "Wiegand frame rejected");
                if last_alarm.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(60)) {
                    last_alarm = Some(std::time::Instant::now());
                    let detail = format!("Wiegand frame rejected: {rejected}");
                    shared.alarm_later("reader_garbage", &cfg.name, detail);
                }
                continue;
            }
        };
        let input = crate::store::PassInput {
            from: None,
            lane: lane.id,
            direction: cfg.direction,
            credential: crate::core::Credential {
                kind: crate::core::CredentialKind::Card,
                id: card.id(),
                score: None,
            },
            now: crate::wall::now_ms(),
            // A Wiegand reader keeps nothing: its age is the time since the frame was read.
            seen: Some(frame.read),
        };
        // A card the store cannot record is lost (logged by `decide`): present it again.
        let _ = reader::decide(&shared, &relay, &lane, &cfg.name, input).await;
    }
}

/// Hands the relay boards' contact changes (fire, tamper) to `Control`.
async fn contacts(mut changes: mpsc::Receiver<relay::ContactChange>, control: Arc<Control>) {
    while let Some(c) = changes.recv().await {
        control.contact(c, crate::wall::now_ms());
    }
}

/// Carries out request-button presses: decided and recorded by the store (G1), then the lane
/// is pulsed if the press was granted. A press the store cannot record opens nothing.
async fn free_exits(
    mut presses: mpsc::Receiver<relay::Press>,
    lanes: std::collections::BTreeMap<u16, (crate::config::LaneConfig, relay::RelayHandle)>,
    shared: Shared,
) {
    while let Some(p) = presses.recv().await {
        let now = crate::wall::now_ms();
        let event = match shared
            .store
            .call(move |db| db.record_button(p.lane, p.direction, now))
            .await
        {
            Ok(Some(e)) => e,
            Ok(None) => continue,
            Err(e) => {
                tracing::error!(lane = p.lane, error = %e, "button press not recorded; the lane stays closed");
                continue;
            }
        };
        let Some((lane, relay)) = lanes.get(&p.lane).cloned() else {
            shared.publish_decision("button", &event);
            continue;
        };
        // Each release on its own task: a board that does not answer holds up only its lanes.
        let shared = shared.clone();
        tokio::spawn(async move {
            let granted = event.reason.is_granted();
            reader::release(&shared, &relay, &lane, "button", granted, &event).await;
        });
    }
}

/// `gated run`: runs until SIGTERM or Ctrl-C.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let gate = Gate::start(&cfg).await?;
    tracing::info!(site = %cfg.site, gate = %cfg.gate, readers = cfg.readers.len(), relays = cfg.relays.len(),
        mqtt = cfg.mqtt.as_ref().map(|m| format!("{}:{}", m.host, m.port)).unwrap_or_else(|| "off".into()),
        "gated running");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("stopping");
    gate.stop().await;
    Ok(())
}
