//! The relay board task: the one owner of a relay board's connection. Lanes send it pulse
//! commands; it writes `ms` to holding 100+2n (entry) / 101+2n (exit). The board times the
//! pulse itself, so a crashed daemon cannot leave a lane open.
//!
//! It also follows the gate's mode: in `hold_open` and `emergency_release` the hold coils of
//! its lanes (coil 2n / 2n+1) are on, otherwise off. The coils are written on every mode
//! change and written again after any error (a board that lost power comes back with its
//! coils off), until the board has taken them.
//!
//! Every 200 ms it reads the board's fire and tamper contacts (debounced over two reads; the
//! first stable reading counts, so a fire alarm already on at start releases) and hands
//! changes to `Control::contact`. A fire alarm releases every lane (G9).
//!
//! With `passage_sensor`, the same 200 ms read takes the passage counters of its lanes (input
//! `counter_base + 2n` / `+2n+1`, wrapping at 65536) and hands each increase to the gate
//! (`Passage`), which matches it with the grants waiting on that lane. The first read after
//! start only sets where the counters stand; an implausible jump (more than
//! `MAX_COUNTED` at once: a board that restarted from 0) resets that too.
//!
//! With `feedback_base`, it also reads every relay's feedback contact and compares it with what
//! the board was told (a pulse running, the hold coils): two reads in a row that contradict it,
//! away from a change, are a stuck relay, shown as the board's state `stuck` (and its
//! `device_fault` alarm, naming the lane). With `door_base`, it reads each lane's door contact:
//! open longer than `held_open_s`, while the mode does not hold the lanes open, is a
//! `held_open` alarm, once per opening.
//!
//! Lane directions with free exit on a button (`free_in` / `free_out` = `"button"`): the task
//! reads their request buttons (discrete input `button_base + 2n` / `+2n+1`) every 50 ms and
//! hands each press to the gate (`Press`), which decides, records and then pulses. A press is
//! a level seen on in two reads in a row after being off in two: a one-read glitch is no
//! press, and a button stuck on gives one press, not one per read.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};

use super::modbus::{Modbus, Repeat};
use super::{Backoff, DeviceError};
use crate::config::RelayConfig;
use crate::core::Direction;
use crate::gate::Shared;

/// A release asked of a relay task.
pub struct Pulse {
    pub channel: u16,
    pub direction: Direction,
    pub ms: u16,
    pub reply: oneshot::Sender<Result<(), DeviceError>>,
}

#[derive(Clone)]
pub struct RelayHandle {
    name: String,
    tx: mpsc::Sender<Pulse>,
}

impl RelayHandle {
    /// A handle and the receiving end its task serves.
    pub fn channel(name: &str) -> (RelayHandle, mpsc::Receiver<Pulse>) {
        let (tx, rx) = mpsc::channel(64);
        (
            RelayHandle {
                name: name.to_string(),
                tx,
            },
            rx,
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Releases `channel` in `direction` for `ms`. Returns once the board has taken the write,
    /// or with the error that prevented it.
    pub async fn pulse(
        &self,
        channel: u16,
        direction: Direction,
        ms: u16,
    ) -> Result<(), DeviceError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Pulse {
                channel,
                direction,
                ms,
                reply,
            })
            .await
            .map_err(|_| DeviceError::Stopped)?;
        rx.await.map_err(|_| DeviceError::Stopped)?
    }
}

/// Releases asked of relay boards whose outcome is not settled yet (pulsed, or alarmed), so
/// that shutdown can wait for them and alarm those it abandons: a granted pass recorded
/// without its pulse or an alarm would say a lane opened that may not have.
#[derive(Clone, Default)]
pub struct InFlight {
    releases: std::sync::Arc<std::sync::Mutex<(u64, std::collections::BTreeMap<u64, Release>)>>,
}

/// A release in flight: what asked it, for the alarm if it is abandoned.
#[derive(Clone, Debug)]
pub struct Release {
    pub relay: String,
    pub what: String,
    pub lane: u16,
    pub direction: Direction,
}

/// Holds a release in the registry until dropped (settled, or its task cancelled).
pub struct Settling {
    releases: std::sync::Arc<std::sync::Mutex<(u64, std::collections::BTreeMap<u64, Release>)>>,
    id: u64,
}

impl Drop for Settling {
    fn drop(&mut self) {
        let mut r = self.releases.lock().unwrap_or_else(|p| p.into_inner());
        r.1.remove(&self.id);
    }
}

impl InFlight {
    /// Registers a release until the returned guard is dropped.
    pub fn begin(&self, release: Release) -> Settling {
        let mut r = self.releases.lock().unwrap_or_else(|p| p.into_inner());
        r.0 += 1;
        let id = r.0;
        r.1.insert(id, release);
        Settling {
            releases: self.releases.clone(),
            id,
        }
    }

    fn pending(&self) -> Vec<Release> {
        let r = self.releases.lock().unwrap_or_else(|p| p.into_inner());
        r.1.values().cloned().collect()
    }

    /// `settle` for a thread outside the runtime (the store's, about to end the process):
    /// blocks it, polling, while the runtime's tasks finish their pulses.
    pub fn settle_blocking(&self, grace: Duration) -> Vec<Release> {
        let deadline = std::time::Instant::now() + grace;
        loop {
            let left = self.pending();
            if left.is_empty() || std::time::Instant::now() >= deadline {
                return left;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits up to `grace` for every release in flight to settle; returns those that did not.
    /// Polled: shutdown is the only caller, and it waits only while a release is in flight.
    pub async fn settle(&self, grace: Duration) -> Vec<Release> {
        let deadline = tokio::time::Instant::now() + grace;
        loop {
            let left = self.pending();
            if left.is_empty() || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The `relay_unknown` alarm's detail for a release shutdown abandoned: the pulse may have
/// been written (a hung board takes the write and never answers) or not yet, so it is unknown.
pub fn abandoned_detail(r: &Release) -> String {
    format!(
        "{}; whether lane {} {} was released is unknown: gated stopped before the board \
         confirmed the pulse; not sent again",
        r.what,
        r.lane,
        r.direction.as_str()
    )
}

/// How often a board that has its coils is read: its fire and tamper contacts, which also
/// shows a dead board in status before a pass needs it.
const CONTACT_POLL: Duration = Duration::from_millis(200);
/// How often request buttons are read.
const BUTTON_POLL: Duration = Duration::from_millis(50);

/// A request button this board's task watches.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Button {
    pub lane: u16,
    pub channel: u16,
    pub direction: Direction,
}

/// A board's contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Contact {
    Fire,
    Tamper,
}

/// A contact changed (after debouncing), for the gate to act on. The first stable reading
/// after start is reported too: a fire alarm already on when gated starts counts.
#[derive(Clone, Debug, PartialEq)]
pub struct ContactChange {
    pub board: String,
    pub contact: Contact,
    pub on: bool,
}

/// A level input: a level counts once it was read twice in a row; every change of the
/// counted level is reported, the first one included.
#[derive(Clone, Copy, Debug, Default)]
pub struct Level {
    raw: Option<bool>,
    count: u8,
    /// The counted level.
    pub stable: Option<bool>,
}

impl Level {
    /// A level already counted (no change to report for it).
    fn settled(level: bool) -> Self {
        Self {
            raw: Some(level),
            count: 2,
            stable: Some(level),
        }
    }

    /// Takes one read; returns the new level when the counted level changes.
    pub fn read(&mut self, level: bool) -> Option<bool> {
        if self.raw == Some(level) {
            self.count = self.count.saturating_add(1);
        } else {
            self.raw = Some(level);
            self.count = 1;
        }
        if self.count >= 2 && self.stable != Some(level) {
            self.stable = Some(level);
            return Some(level);
        }
        None
    }
}

/// People counted through one lane direction of a board since its last read.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage {
    pub board: String,
    pub channel: u16,
    pub direction: Direction,
    pub count: u16,
}

/// What a board's counters tell the passage task: people counted, or that a read of the
/// counters that started at `started` succeeded (so a release that ended before then, with
/// nobody counted, was unused).
#[derive(Clone, Debug, PartialEq)]
pub enum Counted {
    Passage(Passage),
    Read {
        board: String,
        started: tokio::time::Instant,
    },
}

/// The most passages one read may add; more is a counter that restarted, not people.
pub const MAX_COUNTED: u16 = 1000;

/// How many passed between two reads of a counter: none for the first read (it only sets the
/// start) or for an implausible jump (a board that restarted from 0).
pub fn counted(old: Option<u16>, new: u16) -> Option<u16> {
    let delta = new.wrapping_sub(old?);
    (delta > 0 && delta <= MAX_COUNTED).then_some(delta)
}

/// The passage counters of a board's lanes.
struct Counters {
    /// The first channel read, and how many registers from `counter_base + 2 * first`.
    first: u16,
    n: u16,
    channels: Vec<u16>,
    last: Vec<Option<u16>>,
    passages: mpsc::Sender<Counted>,
}

impl Counters {
    fn new(channels: &[u16], passages: mpsc::Sender<Counted>) -> Option<Counters> {
        let first = *channels.iter().min()?;
        let last_ch = *channels.iter().max()?;
        let n = 2 * (last_ch - first + 1);
        Some(Counters {
            first,
            n,
            channels: channels.to_vec(),
            last: vec![None; usize::from(n)],
            passages,
        })
    }

    /// Reads the counters and hands on the increases. Never waits for the passage task (this
    /// task also reads the fire contact): when its channel is full, an increase stays where
    /// it was and is handed on after a later read (the counters keep counting).
    async fn poll(&mut self, conn: &mut Modbus, cfg: &RelayConfig) -> Result<(), DeviceError> {
        let at = cfg.counter_base.wrapping_add(2 * self.first);
        let started = tokio::time::Instant::now();
        let regs = conn.read_input_registers(at, self.n).await?;
        let mut all_sent = true;
        for (i, &value) in regs.iter().enumerate() {
            let channel = self.first + (i / 2) as u16;
            let direction = if i % 2 == 0 {
                Direction::In
            } else {
                Direction::Out
            };
            let old = self.last[i].replace(value);
            if !self.channels.contains(&channel) {
                continue;
            }
            if old.is_some_and(|o| value.wrapping_sub(o) > MAX_COUNTED) {
                tracing::warn!(relay = %cfg.name, channel, from = old, to = value, "passage counter jumped; taken as a restart of the board");
            }
            if let Some(count) = counted(old, value) {
                let sent = self.passages.try_send(Counted::Passage(Passage {
                    board: cfg.name.clone(),
                    channel,
                    direction,
                    count,
                }));
                if sent.is_err() {
                    self.last[i] = old;
                    all_sent = false;
                }
            }
        }
        if all_sent {
            let _ = self.passages.try_send(Counted::Read {
                board: cfg.name.clone(),
                started,
            });
        }
        Ok(())
    }
}

/// How long after a change (a pulse written or ending, the hold coils switched) a relay's
/// feedback is not judged.
pub const SETTLE: Duration = Duration::from_millis(300);

/// What a relay's feedback contact must show now: `Some(on)` when certain, `None` close to a
/// change. `hold` is the hold coils' state and since when the board has had it; `pulse` the
/// last pulse written (when, and until when).
pub fn expected(
    hold: (bool, Instant),
    pulse: Option<(Instant, Instant)>,
    now: Instant,
) -> Option<bool> {
    let (held, since) = hold;
    if now < since + SETTLE {
        return None;
    }
    if held {
        return Some(true);
    }
    match pulse {
        None => Some(false),
        Some((written, _)) if now < written + SETTLE => None,
        Some((_, until)) if now + SETTLE <= until => Some(true),
        Some((_, until)) if now >= until + SETTLE => Some(false),
        Some(_) => None,
    }
}

/// A board's relay feedback and door contacts, checked every contact read.
struct Checks {
    channels: Vec<u16>,
    /// The last pulse asked per (channel, exit): when, until when, and whether the board
    /// confirmed the write (a write that failed may still have been carried out).
    pulses: std::collections::HashMap<(u16, bool), (Instant, Instant, bool)>,
    /// The hold coils the board has confirmed, and since when.
    hold: (bool, Instant),
    /// Reads in a row that contradicted each relay.
    suspect: std::collections::HashMap<(u16, bool), u8>,
    /// Per channel: its door contact, since when it has been open, and whether that opening
    /// was alarmed.
    doors: Vec<(Level, Option<Instant>, bool)>,
}

impl Checks {
    fn new(channels: &[u16]) -> Checks {
        Checks {
            channels: channels.to_vec(),
            pulses: Default::default(),
            hold: (false, Instant::now()),
            suspect: Default::default(),
            doors: channels
                .iter()
                .map(|_| (Level::default(), None, false))
                .collect(),
        }
    }

    fn pulsed(&mut self, channel: u16, direction: Direction, ms: u16, confirmed: bool) {
        let now = Instant::now();
        let until = now + Duration::from_millis(u64::from(ms));
        self.pulses.insert(
            (channel, direction == Direction::Out),
            (now, until, confirmed),
        );
    }

    fn held(&mut self, hold: bool) {
        if self.hold.0 != hold {
            self.hold = (hold, Instant::now());
        }
    }

    /// Reads the feedback contacts; `Err(Stuck)` names the relays that contradict the board's
    /// orders two reads in a row.
    async fn feedback(
        &mut self,
        conn: &mut Modbus,
        base: u16,
        board: &str,
    ) -> Result<(), DeviceError> {
        let (Some(&lo), Some(&hi)) = (self.channels.iter().min(), self.channels.iter().max())
        else {
            return Ok(());
        };
        let bits = conn
            .read_discrete_inputs(base.wrapping_add(2 * lo), 2 * (hi - lo + 1))
            .await?;
        let now = Instant::now();
        let mut stuck = Vec::new();
        for &ch in &self.channels {
            for exit in [false, true] {
                let i = usize::from(2 * (ch - lo) + u16::from(exit));
                let actual = bits.get(i).copied().unwrap_or(false);
                let want = match self.pulses.get(&(ch, exit)).copied() {
                    // A write that failed may or may not have been carried out: the relay
                    // is not judged until that pulse would have ended.
                    Some((_, until, false)) if now < until + SETTLE => None,
                    p => expected(self.hold, p.map(|(w, u, _)| (w, u)), now),
                };
                let n = self.suspect.entry((ch, exit)).or_default();
                *n = if want.is_some_and(|w| w != actual) {
                    n.saturating_add(1)
                } else {
                    0
                };
                if *n >= 2 {
                    stuck.push(format!(
                        "lane channel {ch} {} relay stuck {}",
                        if exit { "exit" } else { "entry" },
                        if actual { "on" } else { "off" }
                    ));
                }
            }
        }
        if stuck.is_empty() {
            Ok(())
        } else {
            let detail = stuck.join("; ");
            tracing::warn!(relay = board, "{detail}");
            Err(DeviceError::Stuck(detail))
        }
    }

    /// Reads the door contacts; returns the doors newly held open too long.
    async fn doors(
        &mut self,
        conn: &mut Modbus,
        base: u16,
        limit: Duration,
        mode_holds: bool,
    ) -> Result<Vec<(u16, Duration)>, DeviceError> {
        let (Some(&lo), Some(&hi)) = (self.channels.iter().min(), self.channels.iter().max())
        else {
            return Ok(Vec::new());
        };
        let bits = conn
            .read_discrete_inputs(base.wrapping_add(lo), hi - lo + 1)
            .await?;
        let now = Instant::now();
        let mut held = Vec::new();
        for (k, &ch) in self.channels.iter().enumerate() {
            let open = bits.get(usize::from(ch - lo)).copied().unwrap_or(false);
            let (level, since, alarmed) = &mut self.doors[k];
            level.read(open);
            if level.stable != Some(true) {
                *since = None;
                *alarmed = false;
                continue;
            }
            // Held open by the mode: expected; the time counts from when the mode ends.
            let start = *since.get_or_insert(now);
            if mode_holds {
                *since = Some(now);
            } else if !*alarmed && now.duration_since(start) >= limit {
                *alarmed = true;
                held.push((ch, now.duration_since(start)));
            }
        }
        Ok(held)
    }
}

/// A button press, for the gate to decide and record.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Press {
    pub lane: u16,
    pub direction: Direction,
}

/// A button on a debounced input (`Level`): a press is the counted level going from off to
/// on. The very first read only sets where the button starts: one held (or stuck) when the
/// daemon starts is no press until let go, and a press right after the first read counts.
#[derive(Clone, Copy, Debug, Default)]
pub struct Debounce {
    level: Level,
    started: bool,
}

impl Debounce {
    /// Takes one read; true when it completes a press (off → on).
    pub fn read(&mut self, level: bool) -> bool {
        if !std::mem::replace(&mut self.started, true) {
            self.level = Level::settled(level);
            return false;
        }
        self.level.read(level) == Some(true)
    }
}

/// Starts the task of one board; `channels` are the lane numbers on it that the gate uses,
/// `buttons` the request buttons it reads, whose presses go to `presses`.
pub fn spawn(
    cfg: RelayConfig,
    channels: Vec<u16>,
    buttons: Vec<Button>,
    inputs: Inputs,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) -> RelayHandle {
    let (handle, rx) = RelayHandle::channel(&cfg.name);
    let watch = Buttons::new(&cfg, buttons, inputs.presses);
    let contacts = Contacts {
        fire: Level::default(),
        tamper: Level::default(),
        changes: inputs.contacts,
        counters: if cfg.passage_sensor {
            Counters::new(&channels, inputs.passages)
        } else {
            None
        },
        checks: Checks::new(&channels),
    };
    tokio::spawn(run(cfg, channels, watch, contacts, shared, rx, shutdown));
    handle
}

/// Where a board's inputs go: button presses, and contact changes.
#[derive(Clone)]
pub struct Inputs {
    pub presses: mpsc::Sender<Press>,
    pub contacts: mpsc::Sender<ContactChange>,
    pub passages: mpsc::Sender<Counted>,
}

/// The fire and tamper contacts of one board.
struct Contacts {
    fire: Level,
    tamper: Level,
    changes: mpsc::Sender<ContactChange>,
    counters: Option<Counters>,
    checks: Checks,
}

impl Contacts {
    /// Reads both contacts once and hands on the changes.
    async fn poll(
        &mut self,
        conn: &mut Modbus,
        cfg: &RelayConfig,
        shared: &Shared,
    ) -> Result<(), DeviceError> {
        let fire = conn.read_discrete_inputs(cfg.fire_input, 1).await?;
        let tamper = conn.read_discrete_inputs(cfg.tamper_input, 1).await?;
        for (contact, level, bits) in [
            (Contact::Fire, &mut self.fire, fire),
            (Contact::Tamper, &mut self.tamper, tamper),
        ] {
            let on = bits.first().copied().unwrap_or(false);
            if let Some(on) = level.read(on) {
                // The gate's handler never blocks for long; a send that waits is still better
                // than a fire alarm lost.
                let _ = self
                    .changes
                    .send(ContactChange {
                        board: cfg.name.clone(),
                        contact,
                        on,
                    })
                    .await;
            }
        }
        if let Some(c) = &mut self.counters {
            c.poll(conn, cfg).await?;
        }
        if let Some(base) = cfg.door_base {
            let holds = shared.mode.borrow().holds_open();
            for (ch, open) in self.checks.doors(conn, base, cfg.held_open, holds).await? {
                let detail = format!(
                    "lane channel {ch}'s door has been open for {} s",
                    open.as_secs()
                );
                tracing::warn!(relay = %cfg.name, "{detail}");
                shared.alarm_later("held_open", &cfg.name, detail);
            }
        }
        if let Some(base) = cfg.feedback_base {
            self.checks.feedback(conn, base, &cfg.name).await?;
        }
        Ok(())
    }
}

/// The request buttons of one board and their debouncers.
struct Buttons {
    list: Vec<(Button, u16, Debounce)>,
    /// The first address and how many to read, covering every button.
    span: Option<(u16, u16)>,
    presses: mpsc::Sender<Press>,
}

impl Buttons {
    fn new(cfg: &RelayConfig, buttons: Vec<Button>, presses: mpsc::Sender<Press>) -> Self {
        let list: Vec<(Button, u16, Debounce)> = buttons
            .into_iter()
            .map(|b| {
                let exit = u16::from(b.direction == Direction::Out);
                let addr = cfg.button_base.wrapping_add(2 * b.channel + exit);
                (b, addr, Debounce::default())
            })
            .collect();
        let lo = list.iter().map(|(_, a, _)| *a).min();
        let hi = list.iter().map(|(_, a, _)| *a).max();
        let span = lo.zip(hi).map(|(lo, hi)| (lo, hi - lo + 1));
        Self {
            list,
            span,
            presses,
        }
    }

    /// Reads the buttons once and hands on the presses completed.
    async fn poll(&mut self, conn: &mut Modbus) -> Result<(), DeviceError> {
        let Some((first, n)) = self.span else {
            return Ok(());
        };
        let bits = conn.read_discrete_inputs(first, n).await?;
        for (b, addr, deb) in &mut self.list {
            let level = bits
                .get(usize::from(*addr - first))
                .copied()
                .unwrap_or(false);
            if deb.read(level) {
                tracing::info!(
                    lane = b.lane,
                    direction = b.direction.as_str(),
                    "request button pressed"
                );
                // A full queue means presses are already waiting: this one adds nothing.
                let _ = self.presses.try_send(Press {
                    lane: b.lane,
                    direction: b.direction,
                });
            }
        }
        Ok(())
    }
}

/// Writes the hold coils of every channel: entry and exit together.
async fn write_holds(
    conn: &mut Modbus,
    cfg: &RelayConfig,
    channels: &[u16],
    on: bool,
) -> Result<(), DeviceError> {
    for &ch in channels {
        let addr = cfg.coil_base.wrapping_add(2 * ch);
        conn.write_multiple_coils(addr, &[on, on]).await?;
    }
    Ok(())
}

/// The alarm for a release that did not succeed, and its detail. `relay_failed` when the
/// board certainly did not carry it out (no connection, or its exception); `relay_unknown`
/// when the pulse was sent but not confirmed (no reply in time, a connection cut, a reply to
/// another request): the lane may have been released, and it was not sent again.
pub fn release_alarm(
    what: &str,
    lane: u16,
    direction: Direction,
    e: &DeviceError,
) -> (&'static str, String) {
    let dir = direction.as_str();
    if e.may_have_reached_device() {
        (
            "relay_unknown",
            format!(
                "{what}; whether lane {lane} {dir} was released is unknown: the pulse was sent but the board did not confirm it ({e}); not sent again"
            ),
        )
    } else {
        (
            "relay_failed",
            format!("{what} but lane {lane} {dir} was not released: {e}"),
        )
    }
}

fn register(cfg: &RelayConfig, channel: u16, direction: Direction) -> u16 {
    let exit = u16::from(direction == Direction::Out);
    cfg.pulse_base.wrapping_add(2 * channel + exit)
}

async fn run(
    cfg: RelayConfig,
    channels: Vec<u16>,
    mut buttons: Buttons,
    mut contacts: Contacts,
    shared: Shared,
    mut rx: mpsc::Receiver<Pulse>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = Modbus::new(&cfg.link, cfg.unit, cfg.timeout, &shared.buses)
        .with_fc16_writes(cfg.fc16_writes);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut next_check = tokio::time::Instant::now();
    let mut mode = shared.mode.clone();
    // The hold state the board should have, and whether it has confirmed it. At start the
    // coils are written whatever the mode: a restart must not leave a lane held open.
    let mut hold = mode.borrow_and_update().holds_open();
    let mut hold_confirmed = false;
    // The connection the hold coils were last written on: a board that lost power comes back
    // with its coils off, and on a new connection, which reads and coil writes make quietly.
    let mut holds_written_on = conn.connects();
    let mut button_tick = tokio::time::interval(BUTTON_POLL);
    button_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let watching = buttons.span.is_some();
    loop {
        if hold_confirmed && conn.connects() != holds_written_on {
            tracing::info!(relay = %cfg.name, "new connection to the board; writing the hold coils again");
            hold_confirmed = false;
            next_check = tokio::time::Instant::now();
        }
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = button_tick.tick(), if watching && hold_confirmed => {
                let r = buttons.poll(&mut conn).await;
                if r.is_err() {
                    // The heartbeat takes over: it rewrites the coils and backs off.
                    hold_confirmed = false;
                    next_check = tokio::time::Instant::now();
                }
                shared.report(&cfg.name, r);
            }
            Ok(()) = mode.changed() => {
                hold = mode.borrow_and_update().holds_open();
                hold_confirmed = false;
                next_check = tokio::time::Instant::now(); // write them now
            }
            cmd = rx.recv() => {
                let Some(p) = cmd else { return };
                let reg = register(&cfg, p.channel, p.direction);
                // Never sent twice once it may have reached the board: a board that carried
                // the pulse out but answered late (or with a reply to another request) would
                // release the lane twice for one grant. Tried once more only when no
                // connection could be made, so nothing was sent; a pulse is only worth giving
                // while the person is still at the turnstile, so no long retry loop.
                let mut r = conn.write_register(reg, p.ms, Repeat::Never).await;
                if r.is_err() {
                    // Whatever went wrong (a board that rebooted comes back with its coils
                    // off), the hold coils are written again at once.
                    hold_confirmed = false;
                    next_check = tokio::time::Instant::now();
                }
                if matches!(r, Err(DeviceError::Connect(_))) {
                    r = conn.write_register(reg, p.ms, Repeat::Never).await;
                }
                shared.report(&cfg.name, r.clone());
                contacts.checks.pulsed(p.channel, p.direction, p.ms, r.is_ok());
                if r.is_ok() {
                    backoff.reset();
                }
                let _ = p.reply.send(r);
            }
            _ = tokio::time::sleep_until(next_check) => {
                let r = if hold_confirmed {
                    contacts.poll(&mut conn, &cfg, &shared).await
                } else {
                    let r = write_holds(&mut conn, &cfg, &channels, hold).await;
                    match &r {
                        Ok(()) => {
                            tracing::info!(relay = %cfg.name, hold, "hold coils written");
                            holds_written_on = conn.connects();
                            contacts.checks.held(hold);
                        }
                        Err(e) => tracing::warn!(relay = %cfg.name, hold, error = %e, "hold coils not written; will retry"),
                    }
                    r
                };
                // A stuck relay is a fault of the board, not of the link: the contacts are
                // still read at the usual pace.
                let ok = matches!(r, Ok(()) | Err(DeviceError::Stuck(_)));
                // Whatever happened to a board that failed, its coils are written again once
                // it answers (a power cycle turns them off).
                hold_confirmed = ok;
                shared.report(&cfg.name, r);
                next_check = tokio::time::Instant::now()
                    + if ok { backoff.reset(); CONTACT_POLL } else { backoff.next_delay() };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relay_is_judged_only_away_from_a_change() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let idle = (false, t0);
        // Idle: off; just after the hold switched on: not judged; then on.
        assert_eq!(expected(idle, None, s(1000)), Some(false));
        assert_eq!(expected((true, s(1000)), None, s(1100)), None);
        assert_eq!(expected((true, s(1000)), None, s(1400)), Some(true));
        // A 3 s pulse written at 1 s: not judged at first, on inside, off well after.
        let p = Some((s(1000), s(4000)));
        assert_eq!(expected(idle, p, s(1100)), None);
        assert_eq!(expected(idle, p, s(2000)), Some(true));
        assert_eq!(expected(idle, p, s(3900)), None);
        assert_eq!(expected(idle, p, s(4400)), Some(false));
    }

    #[test]
    fn counters_count_increases_and_wrap_but_not_a_restart() {
        assert_eq!(counted(None, 7), None, "the first read sets the start");
        assert_eq!(counted(Some(7), 7), None);
        assert_eq!(counted(Some(7), 9), Some(2));
        assert_eq!(counted(Some(65535), 1), Some(2), "wraps at 65536");
        assert_eq!(counted(Some(500), 0), None, "a board restarted from 0");
        assert_eq!(counted(Some(0), 1001), None, "an implausible jump");
    }

    #[test]
    fn a_contact_counts_after_two_reads_and_an_alarm_at_start_counts() {
        let mut fire = Level::default();
        assert_eq!(fire.read(true), None);
        assert_eq!(fire.read(true), Some(true), "on at start: reported");
        assert_eq!(fire.read(true), None);
        assert_eq!(fire.read(false), None, "one read is a glitch");
        assert_eq!(fire.read(true), None);
        assert_eq!(fire.read(false), None);
        assert_eq!(fire.read(false), Some(false));
        let mut quiet = Level::default();
        assert_eq!((quiet.read(false), quiet.read(false)), (None, Some(false)));
    }

    #[test]
    fn a_press_is_two_reads_on_after_two_off_and_a_stuck_button_presses_once() {
        let presses =
            |d: &mut Debounce, levels: &[bool]| levels.iter().filter(|l| d.read(**l)).count();
        // Held when the daemon starts: no press until let go and pressed again.
        let mut held = Debounce::default();
        assert_eq!(presses(&mut held, &[true; 10]), 0);
        assert_eq!(presses(&mut held, &[false, false, true, true]), 1);
        // The first read sets the start; a press right after it counts.
        let mut early = Debounce::default();
        assert_eq!(presses(&mut early, &[false, true, true]), 1);
        let mut d = Debounce::default();
        // A glitch of one read is no press.
        assert_eq!(presses(&mut d, &[false, false, true, false, false]), 0);
        // A press; held (stuck) for a long time, it stays one press.
        assert_eq!(presses(&mut d, &[true, true]), 1);
        assert_eq!(presses(&mut d, &[true; 100]), 0);
        // A one-read drop while held does not make a second press.
        assert_eq!(presses(&mut d, &[false, true, true]), 0);
        // Let go (two reads), press again: a second press.
        assert_eq!(presses(&mut d, &[false, false, true, true]), 1);
    }
}
