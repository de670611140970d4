//! Devices wired to a Raspberry Pi's GPIO header, through rppal: Wiegand card readers, a guard
//! panel, and relay outputs with a fire contact.
//!
//! The logic sits behind our own trait, [`Gpio`], so it is tested without a Pi (simulated
//! levels and edge streams); [`Rpi`] is the one implementation, on rppal. rppal builds on any
//! Linux; on a machine that is not a Pi, [`Rpi::open`] fails and gated refuses to start, naming
//! the GPIO devices of its config.
//!
//! - **Wiegand** (`[[wiegand]]`): the D0/D1 falling edges come from rppal's interrupt thread
//!   (`set_async_interrupt`, no debounce: a pulse is 20–100 µs). The callback hands each edge to
//!   tokio with `try_send` on a bounded channel and never blocks; a full channel loses the edge,
//!   which damages the frame, which the decoder then rejects. A frame ended by the timer is held
//!   `SPLIT_HOLD` longer: an edge that arrives meanwhile but whose kernel timestamp puts it
//!   inside the frame means the bits were delivered late and the frame was cut, and it is
//!   rejected (a W34 cut after 26 bits could otherwise pass as a W26 card). A stall of the
//!   interrupt thread longer than that hold is not caught this way; parity still is.
//! - **Inputs** (panel buttons, the fire contact): read as levels every `poll_ms`, with the
//!   two-read debounce of the Modbus devices (`relay::Debounce`, `relay::Level`). A level read
//!   never misses a held button or a fire contact, as an edge can.
//! - **Relay outputs** (`[[gpio_relay]]`): a pulse drives the line active, and this task drives
//!   it back when the pulse ends. **If the daemon dies mid-pulse** (SIGKILL, a crash: the build
//!   aborts on panic), nothing drives the line back: it stays active until gated starts again
//!   (systemd restarts it within seconds; every output is driven inactive at start). On a clean
//!   stop every line is driven inactive. A turnstile that must never stay released needs a
//!   controller that times the release itself (a "pulse input"), as the Modbus relay board does.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::DeviceError;
use super::panel::{PanelInput, PanelPress, Reading, lamps};
use super::relay::{Contact, ContactChange, Debounce, Level, RelayHandle};
use super::wiegand::Format;
use super::wiegand::{Card, Decoder, Edge, Line, Rejected, WiegandConfig};
use crate::config::{GpioPanelConfig, GpioRelayConfig, WiegandFormat, WiegandReader};
use crate::core::Direction;
use crate::gate::Shared;

/// What went wrong with the GPIO.
#[derive(Debug, thiserror::Error)]
pub enum GpioError {
    #[error(
        "GPIO is not available here ({0}): the config has GPIO devices ({1}), which need a \
         Raspberry Pi; remove them to run elsewhere"
    )]
    Unavailable(String, String),
    #[error("GPIO pin {pin}: {why}")]
    Pin { pin: u8, why: String },
}

/// A falling or rising edge on an input, with the kernel's timestamp in microseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinEdge {
    pub pin: u8,
    pub at_us: u64,
}

/// An input line, read as a level.
pub trait Input: Send {
    fn is_high(&self) -> bool;
}

/// An output line.
pub trait Output: Send {
    fn set_high(&mut self, high: bool);
}

/// The GPIO lines gated uses. Every input has the internal pull-up on: buttons and contacts
/// close to ground, Wiegand lines idle high.
pub trait Gpio: Send + Sync {
    fn input(&self, pin: u8) -> Result<Box<dyn Input>, GpioError>;
    /// An output, driven to `high` at once.
    fn output(&self, pin: u8, high: bool) -> Result<Box<dyn Output>, GpioError>;
    /// Sends every falling edge of `pin` on `edges` until the returned guard is dropped.
    fn falling_edges(
        &self,
        pin: u8,
        edges: mpsc::Sender<PinEdge>,
    ) -> Result<Box<dyn Send>, GpioError>;
}

/// The Pi's GPIO, through rppal.
pub struct Rpi(rppal::gpio::Gpio);

impl Rpi {
    /// Opens the GPIO character device. `devices` names the config's GPIO devices, for the
    /// error a machine that is not a Pi gets.
    pub fn open(devices: &str) -> Result<Rpi, GpioError> {
        rppal::gpio::Gpio::new()
            .map(Rpi)
            .map_err(|e| GpioError::Unavailable(e.to_string(), devices.to_string()))
    }

    fn pin(&self, pin: u8) -> Result<rppal::gpio::Pin, GpioError> {
        self.0.get(pin).map_err(|e| GpioError::Pin {
            pin,
            why: e.to_string(),
        })
    }
}

struct RpiInput(rppal::gpio::InputPin);
impl Input for RpiInput {
    fn is_high(&self) -> bool {
        self.0.is_high()
    }
}

struct RpiOutput(rppal::gpio::OutputPin);
impl Output for RpiOutput {
    fn set_high(&mut self, high: bool) {
        if high {
            self.0.set_high();
        } else {
            self.0.set_low();
        }
    }
}

impl Gpio for Rpi {
    fn input(&self, pin: u8) -> Result<Box<dyn Input>, GpioError> {
        Ok(Box::new(RpiInput(self.pin(pin)?.into_input_pullup())))
    }

    fn output(&self, pin: u8, high: bool) -> Result<Box<dyn Output>, GpioError> {
        let p = self.pin(pin)?;
        let out = if high {
            p.into_output_high()
        } else {
            p.into_output_low()
        };
        Ok(Box::new(RpiOutput(out)))
    }

    fn falling_edges(
        &self,
        pin: u8,
        edges: mpsc::Sender<PinEdge>,
    ) -> Result<Box<dyn Send>, GpioError> {
        let mut input = self.pin(pin)?.into_input_pullup();
        // Runs on rppal's interrupt thread: never block it.
        let callback = move |e: rppal::gpio::Event| {
            let edge = PinEdge {
                pin,
                at_us: u64::try_from(e.timestamp.as_micros()).unwrap_or(u64::MAX),
            };
            if edges.try_send(edge).is_err() {
                tracing::warn!(
                    pin,
                    "GPIO edge lost (the daemon is behind); the frame will be rejected"
                );
            }
        };
        input
            .set_async_interrupt(rppal::gpio::Trigger::FallingEdge, None, callback)
            .map_err(|e| GpioError::Pin {
                pin,
                why: e.to_string(),
            })?;
        Ok(Box::new(input))
    }
}

// ---- Wiegand --------------------------------------------------------------------------------

/// How long a frame ended by the timer is held back, watching for late bits of it.
pub const SPLIT_HOLD: Duration = Duration::from_millis(75);

/// A frame ended by the timer, held back `SPLIT_HOLD`.
struct Held {
    frame: Result<Card, Rejected>,
    /// Its last edge's kernel time, and its length.
    last_us: u64,
    bits: usize,
    until: Instant,
}

/// A Wiegand frame as decoded, with the moment it was complete.
#[derive(Debug)]
pub struct Frame {
    pub read: crate::store::FirstSeen,
    pub result: Result<Card, Rejected>,
}

/// The decoder's settings for a configured reader: its formats and frame timeout; the glitch
/// gap is the decoder's own.
pub fn decoder_config(w: &WiegandReader) -> WiegandConfig {
    WiegandConfig {
        frame_timeout_us: w.frame_timeout.as_micros() as u64,
        formats: w
            .formats
            .iter()
            .map(|f| match f {
                WiegandFormat::W26 => Format::W26,
                WiegandFormat::W34 => Format::W34,
            })
            .collect(),
        ..WiegandConfig::default()
    }
}

/// Turns the edges of one reader's two lines into frames: a card, or a rejection. A frame ends
/// when an edge comes `frame_timeout_us` after the previous one by the edges' own (kernel)
/// times, or `frame_timeout_us` after its last edge arrived here; in the second case it is
/// held `SPLIT_HOLD` more, and rejected if a late edge shows it was cut.
pub async fn wiegand_frames(
    cfg: WiegandConfig,
    d0: u8,
    mut edges: mpsc::Receiver<PinEdge>,
    frames: mpsc::Sender<Frame>,
) {
    let timeout_us = cfg.frame_timeout_us;
    let timeout = Duration::from_micros(timeout_us);
    let mut decoder = Decoder::new(cfg);
    let mut last = Instant::now();
    let mut bits = 0usize;
    let mut held: Option<Held> = None;
    loop {
        let pending = decoder.deadline_us();
        let hold_until = held.as_ref().map(|h| h.until);
        let mut out = Vec::new();
        tokio::select! {
            e = edges.recv() => {
                let Some(e) = e else { return };
                last = Instant::now();
                if let Some(h) = held.take() {
                    let gap = e.at_us.saturating_sub(h.last_us);
                    if gap < timeout_us {
                        out.push(Err(Rejected::Split { bits: h.bits, gap_us: gap }));
                    } else {
                        out.push(h.frame);
                    }
                }
                let line = if e.pin == d0 { Line::D0 } else { Line::D1 };
                let ended = decoder.edge(Edge { line, at_us: e.at_us });
                if ended.is_some() {
                    bits = 0;
                }
                bits += 1;
                out.extend(ended);
            }
            _ = tokio::time::sleep_until(last + timeout), if pending.is_some() && held.is_none() => {
                if let Some(at) = decoder.deadline_us()
                    && let Some(frame) = decoder.tick(at)
                {
                    held = Some(Held {
                        frame,
                        last_us: at.saturating_sub(timeout_us),
                        bits,
                        until: Instant::now() + SPLIT_HOLD,
                    });
                    bits = 0;
                }
            }
            _ = tokio::time::sleep_until(hold_until.unwrap_or_else(Instant::now)), if hold_until.is_some() => {
                out.extend(held.take().map(|h| h.frame));
            }
        }
        // A frame's age starts when it is complete here: if deciding it is held up, it waits in
        // the channel, and is judged by how long it waited.
        let read = crate::store::FirstSeen::now(crate::wall::now_ms());
        for result in out {
            if frames.send(Frame { read, result }).await.is_err() {
                return;
            }
        }
    }
}

// ---- guard panel ----------------------------------------------------------------------------

/// Opens the panel's lines and starts its task. Errors (a pin that cannot be had) stop gated
/// at start.
pub fn spawn_panel(
    cfg: GpioPanelConfig,
    gpio: &dyn Gpio,
    presses: mpsc::Sender<PanelPress>,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) -> Result<(), GpioError> {
    let mut inputs = Vec::new();
    for &(lane, entry, exit) in &cfg.lanes {
        for (pin, direction) in [(entry, Direction::In), (exit, Direction::Out)] {
            inputs.push((
                gpio.input(pin)?,
                PanelInput::Open { lane, direction },
                Reading::Button(Debounce::default()),
            ));
        }
    }
    for (pin, input) in [
        (cfg.hold_open, PanelInput::HoldOpen),
        (cfg.lockdown, PanelInput::Lockdown),
        (cfg.emergency, PanelInput::Emergency),
        (cfg.reset, PanelInput::Reset),
    ] {
        if let Some(pin) = pin {
            inputs.push((gpio.input(pin)?, input, Reading::of(input)));
        }
    }
    // Lamps start dark (inactive); the first read lights the right one.
    let mut lamp_lines = Vec::new();
    for pin in cfg.lamps {
        lamp_lines.push(pin.map(|p| gpio.output(p, cfg.active_low)).transpose()?);
    }
    tokio::spawn(run_panel(
        cfg, inputs, lamp_lines, presses, shared, shutdown,
    ));
    Ok(())
}

type PanelLines = Vec<(Box<dyn Input>, PanelInput, Reading)>;

async fn run_panel(
    cfg: GpioPanelConfig,
    mut inputs: PanelLines,
    mut lamp_lines: Vec<Option<Box<dyn Output>>>,
    presses: mpsc::Sender<PanelPress>,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shared.report(&cfg.name, Ok(()));
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        for (line, input, reading) in &mut inputs {
            let active = line.is_high() != cfg.active_low;
            if let Some(asked) = reading.read(*input, active) {
                super::panel::hand_on(&presses, &cfg.name, asked).await;
            }
        }
        let online = shared.health.is_ok("broker");
        let want = lamps(*shared.mode.borrow(), online);
        for (line, on) in lamp_lines.iter_mut().zip(want) {
            if let Some(line) = line {
                line.set_high(on != cfg.active_low);
            }
        }
    }
}

// ---- relay outputs --------------------------------------------------------------------------

/// How often the fire contact of a GPIO relay is read.
const CONTACT_POLL: Duration = Duration::from_millis(200);

struct OutLine {
    out: Box<dyn Output>,
    /// When the pulse in progress ends.
    until: Option<Instant>,
}

/// Opens the relay's lines (all inactive) and starts its task; lanes get a `RelayHandle` as for
/// a Modbus board.
pub fn spawn_relay(
    cfg: GpioRelayConfig,
    gpio: &dyn Gpio,
    contacts: mpsc::Sender<ContactChange>,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) -> Result<RelayHandle, GpioError> {
    let mut lines = BTreeMap::new();
    for &(channel, entry, exit) in &cfg.lanes {
        for (pin, exit_dir) in [(entry, false), (exit, true)] {
            let out = gpio.output(pin, cfg.active_low)?;
            lines.insert((channel, exit_dir), OutLine { out, until: None });
        }
    }
    let fire = cfg.fire.map(|pin| gpio.input(pin)).transpose()?;
    let (handle, rx) = RelayHandle::channel(&cfg.name);
    tokio::spawn(run_relay(cfg, lines, fire, contacts, shared, rx, shutdown));
    Ok(handle)
}

async fn run_relay(
    cfg: GpioRelayConfig,
    mut lines: BTreeMap<(u16, bool), OutLine>,
    fire: Option<Box<dyn Input>>,
    contacts: mpsc::Sender<ContactChange>,
    shared: Shared,
    mut rx: mpsc::Receiver<super::relay::Pulse>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut mode = shared.mode.clone();
    let mut hold = mode.borrow_and_update().holds_open();
    let mut fire_level = Level::default();
    let mut contact_tick = tokio::time::interval(CONTACT_POLL);
    contact_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    shared.report(&cfg.name, Ok(()));
    let active_low = cfg.active_low;
    let apply = |lines: &mut BTreeMap<(u16, bool), OutLine>, hold: bool| {
        let now = Instant::now();
        for line in lines.values_mut() {
            if line.until.is_some_and(|u| u <= now) {
                line.until = None;
            }
            let active = hold || line.until.is_some();
            line.out.set_high(active != active_low);
        }
    };
    apply(&mut lines, hold);
    loop {
        let next_end = lines.values().filter_map(|l| l.until).min();
        tokio::select! {
            _ = shutdown.changed() => {
                for line in lines.values_mut() {
                    line.until = None;
                }
                apply(&mut lines, false);
                return;
            }
            Ok(()) = mode.changed() => {
                hold = mode.borrow_and_update().holds_open();
            }
            p = rx.recv() => {
                let Some(p) = p else { return };
                let key = (p.channel, p.direction == Direction::Out);
                let r = match lines.get_mut(&key) {
                    Some(line) => {
                        line.until = (p.ms > 0)
                            .then(|| Instant::now() + Duration::from_millis(u64::from(p.ms)));
                        Ok(())
                    }
                    None => Err(DeviceError::Exception(format!(
                        "no GPIO line for lane {} {}",
                        p.channel,
                        p.direction.as_str()
                    ))),
                };
                let _ = p.reply.send(r);
            }
            _ = tokio::time::sleep_until(next_end.unwrap_or_else(Instant::now)), if next_end.is_some() => {}
            _ = contact_tick.tick(), if fire.is_some() => {
                let on = fire.as_ref().is_some_and(|f| f.is_high() != cfg.fire_active_low);
                if let Some(on) = fire_level.read(on) {
                    let _ = contacts
                        .send(ContactChange {
                            board: cfg.name.clone(),
                            contact: Contact::Fire,
                            on,
                        })
                        .await;
                }
                continue;
            }
        }
        apply(&mut lines, hold);
    }
}

/// Simulated lines, for tests: inputs are levels a test sets, outputs record their level, and
/// edges are sent by the test.
#[cfg(test)]
pub mod fake {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Default)]
    pub struct FakeGpio {
        pub levels: Arc<Mutex<HashMap<u8, bool>>>,
        pub outputs: Arc<Mutex<HashMap<u8, bool>>>,
    }

    struct In(u8, Arc<Mutex<HashMap<u8, bool>>>);
    impl Input for In {
        fn is_high(&self) -> bool {
            // Idle high, as with the pull-up.
            *self.1.lock().expect("lock").get(&self.0).unwrap_or(&true)
        }
    }
    struct Out(u8, Arc<Mutex<HashMap<u8, bool>>>);
    impl Output for Out {
        fn set_high(&mut self, high: bool) {
            self.1.lock().expect("lock").insert(self.0, high);
        }
    }

    impl Gpio for FakeGpio {
        fn input(&self, pin: u8) -> Result<Box<dyn Input>, GpioError> {
            Ok(Box::new(In(pin, self.levels.clone())))
        }
        fn output(&self, pin: u8, high: bool) -> Result<Box<dyn Output>, GpioError> {
            self.outputs.lock().expect("lock").insert(pin, high);
            Ok(Box::new(Out(pin, self.outputs.clone())))
        }
        fn falling_edges(
            &self,
            pin: u8,
            edges: mpsc::Sender<PinEdge>,
        ) -> Result<Box<dyn Send>, GpioError> {
            // The sender is the guard: the tests feed edges to the frame task directly.
            let _ = pin;
            Ok(Box::new(edges))
        }
    }

    impl FakeGpio {
        pub fn set(&self, pin: u8, high: bool) {
            self.levels.lock().expect("lock").insert(pin, high);
        }
        pub fn out(&self, pin: u8) -> Option<bool> {
            self.outputs.lock().expect("lock").get(&pin).copied()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hw::wiegand::Format;

    /// The falling edges of a frame, `gap_us` apart from `t0`.
    fn frame(bits: &str, t0: u64, gap_us: u64, d0: u8, d1: u8) -> Vec<PinEdge> {
        bits.chars()
            .enumerate()
            .map(|(i, b)| PinEdge {
                pin: if b == '1' { d1 } else { d0 },
                at_us: t0 + i as u64 * gap_us,
            })
            .collect()
    }

    /// The decoder gets what `[[wiegand]]` says, and its own defaults where it says nothing.
    #[test]
    fn a_configured_reader_gets_its_decoder_settings() {
        let text = |extra: &str| {
            format!(
                "[gate]\nsite = \"hq\"\ngate = \"g1\"\n[store]\npath = \"x.db\"\n\
                 [[relay]]\nname = \"k\"\naddress = \"127.0.0.1:1\"\n[[lane]]\nid = 0\n\
                 relay = \"k\"\n[[wiegand]]\nname = \"w\"\nd0 = 5\nd1 = 6\nlane = 0\n\
                 direction = \"in\"\n{extra}"
            )
        };
        let parse = |extra| crate::config::Config::parse("t.toml", &text(extra)).expect("valid");
        assert_eq!(
            decoder_config(&parse("").wiegand[0]),
            WiegandConfig::default()
        );
        let c = parse("formats = [34]\nframe_timeout_ms = 40\n");
        assert_eq!(
            decoder_config(&c.wiegand[0]),
            WiegandConfig {
                frame_timeout_us: 40_000,
                formats: vec![Format::W34],
                ..WiegandConfig::default()
            }
        );
    }

    /// W26 of facility 123, number 45678, parity bits worked out by hand (see wiegand.rs).
    const W26: &str = "10111101110110010011011101";

    #[tokio::test]
    async fn edges_from_the_interrupt_thread_become_cards_and_damaged_frames_rejections() {
        let (edge_tx, edge_rx) = mpsc::channel(256);
        let (frame_tx, mut frames) = mpsc::channel(8);
        let cfg = WiegandConfig {
            frame_timeout_us: 25_000,
            min_gap_us: 150,
            formats: vec![Format::W26, Format::W34],
        };
        tokio::spawn(wiegand_frames(cfg, 5, edge_rx, frame_tx));
        // Sent from another OS thread, as rppal's callback does.
        let tx = edge_tx.clone();
        std::thread::spawn(move || {
            for e in frame(W26, 1_000, 2_000, 5, 6) {
                tx.try_send(e).expect("room");
            }
        })
        .join()
        .expect("thread");
        let card = tokio::time::timeout(Duration::from_secs(2), frames.recv())
            .await
            .expect("a frame within the timeout")
            .expect("open")
            .result
            .expect("a valid card");
        assert_eq!((card.facility, card.number), (123, 45678));
        assert_eq!(card.id(), "08106606");

        // The same frame with one bit lost: rejected, never a card.
        let mut damaged = frame(W26, 10_000_000, 2_000, 5, 6);
        damaged.remove(7);
        for e in damaged {
            edge_tx.send(e).await.expect("open");
        }
        let r = tokio::time::timeout(Duration::from_secs(2), frames.recv())
            .await
            .expect("a frame")
            .expect("open")
            .result;
        assert!(r.is_err(), "a 25-bit frame must be rejected: {r:?}");
        // A glitch inside a frame: rejected.
        let mut glitchy = frame(W26, 20_000_000, 2_000, 5, 6);
        glitchy.insert(
            3,
            PinEdge {
                pin: 6,
                at_us: glitchy[2].at_us + 20,
            },
        );
        for e in glitchy {
            edge_tx.send(e).await.expect("open");
        }
        let r = tokio::time::timeout(Duration::from_secs(2), frames.recv())
            .await
            .expect("a frame")
            .expect("open")
            .result;
        assert!(r.is_err(), "a glitch must reject the frame: {r:?}");

        // A W34 whose last 8 bits arrive late (the interrupt thread stalled 40 ms): its first
        // 26 bits are a valid W26 (the W26 frame above), but the kernel times of the late bits
        // put them inside the frame. Rejected as cut, not read as that W26 card.
        let w34_head = W26;
        let t0 = 30_000_000;
        for e in frame(w34_head, t0, 2_000, 5, 6) {
            edge_tx.send(e).await.expect("open");
        }
        tokio::time::sleep(Duration::from_millis(40)).await;
        for e in frame("01010101", t0 + 26 * 2_000, 2_000, 5, 6) {
            edge_tx.send(e).await.expect("open");
        }
        let r = tokio::time::timeout(Duration::from_secs(2), frames.recv())
            .await
            .expect("a frame")
            .expect("open")
            .result;
        assert!(
            matches!(r, Err(Rejected::Split { bits: 26, .. })),
            "a frame cut by late delivery must be rejected: {r:?}"
        );
        let rest = tokio::time::timeout(Duration::from_secs(2), frames.recv())
            .await
            .expect("a frame")
            .expect("open")
            .result;
        assert!(rest.is_err(), "its tail is no card either: {rest:?}");
    }

    fn test_shared() -> (Shared, watch::Sender<crate::core::Mode>, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::store::Store::open(
            &dir.path().join("g.db"),
            crate::store::GateId {
                site: "hq".into(),
                gate: "g1".into(),
            },
            crate::core::Policy::default(),
            1 << 20,
        )
        .expect("store");
        let (mode_tx, mode) = watch::channel(crate::core::Mode::Normal);
        let shared = Shared {
            store,
            health: Default::default(),
            mode,
            decisions: tokio::sync::broadcast::channel(8).0,
            outbox_kick: mpsc::channel(1).0,
            buses: Default::default(),
            snapshots: mpsc::channel(1).0,
            releases: Default::default(),
            direct: Default::default(),
        };
        (shared, mode_tx, dir)
    }

    #[tokio::test]
    async fn a_gpio_relay_pulses_holds_and_reports_its_fire_contact() {
        let gpio = fake::FakeGpio::default();
        let (shared, mode_tx, _dir) = test_shared();
        let (contacts_tx, mut contacts) = mpsc::channel(8);
        let (_stop_tx, stop) = watch::channel(false);
        let cfg = GpioRelayConfig {
            name: "gpio1".into(),
            active_low: false,
            lanes: vec![(0, 17, 27)],
            fire: Some(4),
            fire_active_low: true,
        };
        gpio.set(4, true); // fire contact closed to ground = alarm (active low): not yet
        let relay = spawn_relay(cfg, &gpio, contacts_tx, shared.clone(), stop).expect("lines");
        assert_eq!(gpio.out(17), Some(false), "inactive at start");

        relay.pulse(0, Direction::In, 150).await.expect("pulse");
        tokio::time::sleep(Duration::from_millis(30)).await;
        assert_eq!((gpio.out(17), gpio.out(27)), (Some(true), Some(false)));
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while gpio.out(17) != Some(false) {
            assert!(
                std::time::Instant::now() < deadline,
                "the pulse never ended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            relay.pulse(3, Direction::In, 100).await.is_err(),
            "no such lane"
        );

        mode_tx
            .send(crate::core::Mode::HoldOpen)
            .expect("mode watchers");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while !(gpio.out(17) == Some(true) && gpio.out(27) == Some(true)) {
            assert!(
                std::time::Instant::now() < deadline,
                "hold-open not applied"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }

        // The first stable reading is reported (off), then the alarm.
        let first = tokio::time::timeout(Duration::from_secs(2), contacts.recv())
            .await
            .expect("first reading")
            .expect("open");
        assert!(!first.on);
        gpio.set(4, false);
        let alarm = tokio::time::timeout(Duration::from_secs(2), contacts.recv())
            .await
            .expect("the fire alarm")
            .expect("open");
        assert_eq!((alarm.contact, alarm.on), (Contact::Fire, true));
    }

    #[tokio::test]
    async fn a_gpio_panel_debounces_presses_and_shows_the_mode() {
        let gpio = fake::FakeGpio::default();
        let (shared, mode_tx, _dir) = test_shared();
        let (press_tx, mut presses) = mpsc::channel(8);
        let (_stop_tx, stop) = watch::channel(false);
        let cfg = GpioPanelConfig {
            name: "gp".into(),
            active_low: true,
            poll: Duration::from_millis(5),
            lanes: vec![(0, 5, 6)],
            hold_open: None,
            lockdown: Some(20),
            emergency: Some(21),
            reset: None,
            lamps: [Some(12), Some(13), None, Some(14)],
        };
        spawn_panel(cfg, &gpio, press_tx, shared, stop).expect("lines");
        tokio::time::sleep(Duration::from_millis(30)).await;
        // Pressed (pulled low) and held: one press.
        gpio.set(6, false);
        let p = tokio::time::timeout(Duration::from_secs(2), presses.recv())
            .await
            .expect("a press")
            .expect("open");
        assert_eq!(
            p.input,
            PanelInput::Open {
                lane: 0,
                direction: Direction::Out
            }
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(presses.try_recv().is_err(), "a held button presses once");
        // Lamps: normal on (active low: driven low), lockdown off.
        assert_eq!((gpio.out(12), gpio.out(13)), (Some(false), Some(true)));
        mode_tx
            .send(crate::core::Mode::Lockdown)
            .expect("mode watchers");
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while gpio.out(13) != Some(false) {
            assert!(
                std::time::Instant::now() < deadline,
                "lockdown lamp not lit"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(gpio.out(12), Some(true), "normal lamp off");
    }

    /// No x86 machine is a Pi: rppal must refuse, and the message must say what to do.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn off_a_pi_the_gpio_fails_with_a_message_naming_the_devices() {
        let Err(e) = Rpi::open("wiegand `w1`") else {
            panic!("rppal opened the GPIO of an x86 machine")
        };
        let m = e.to_string();
        assert!(
            m.contains("wiegand `w1`") && m.contains("Raspberry Pi"),
            "{m}"
        );
    }
}
