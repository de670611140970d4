//! The guard panel task: the one owner of a panel's link (a Modbus IO module, docs/design.md's
//! profile). It reads the panel's inputs every `poll_ms` and hands each press to `Control`:
//!
//! - open-once entry / exit of lane n (discrete inputs `button_base + 2n` / `+2n+1`): one
//!   release, recorded first as an `override_panel` event;
//! - hold-open and lockdown switches, emergency release, reset (inputs 32..35): a mode change, recorded as
//!   a `mode_changed` alarm with source `panel`. Reset puts the gate back to `normal`; while a
//!   fire contact is on, every mode but emergency release is refused.
//!
//! Inputs are debounced (`relay::Debounce`): a press is the input read on twice in a row after
//! being off twice. A glitch of one read is no press, a stuck button is one press, and a
//! button held when gated starts is none until let go.
//!
//! Hold-open and lockdown are switches (docs/design.md, "Guard panel"): on, the mode; off, back to
//! normal if that mode is still in force (a remote command may have changed it since). A
//! switch found on at start puts its mode in force; one found off changes nothing.
//!
//! It also drives the lamps (coils `lamp_base` .. `+3`): normal, lockdown, emergency (lanes
//! held open: emergency release or hold-open), offline (no broker connection; always lit
//! without `[mqtt]`). They are
//! written on every change, and again after any error (a panel that lost power comes back
//! with its lamps off).

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::Backoff;
use super::modbus::Modbus;
use super::relay::Debounce;
use crate::config::PanelConfig;
use crate::core::{Direction, Mode};
use crate::gate::Shared;

/// What a panel input asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PanelInput {
    Open {
        lane: u16,
        direction: Direction,
    },
    HoldOpen,
    Lockdown,
    /// The hold-open or lockdown switch turned off.
    HoldOpenOff,
    LockdownOff,
    Emergency,
    Reset,
}

impl PanelInput {
    /// The input's name in events and alarms.
    pub fn name(self) -> &'static str {
        match self {
            Self::Open {
                direction: Direction::In,
                ..
            } => "open_entry",
            Self::Open {
                direction: Direction::Out,
                ..
            } => "open_exit",
            Self::HoldOpen => "hold_open",
            Self::Lockdown => "lockdown",
            Self::HoldOpenOff => "hold_open_off",
            Self::LockdownOff => "lockdown_off",
            Self::Emergency => "emergency_release",
            Self::Reset => "reset",
        }
    }
}

/// How one panel input is read: a button (a press), or a switch (on, off).
#[derive(Clone, Copy, Debug)]
pub enum Reading {
    Button(Debounce),
    Switch(Switch),
}

impl Reading {
    /// The reading for `input`: hold-open and lockdown are switches, the rest buttons.
    pub fn of(input: PanelInput) -> Reading {
        match input {
            PanelInput::HoldOpen | PanelInput::Lockdown => Reading::Switch(Switch::default()),
            _ => Reading::Button(Debounce::default()),
        }
    }

    /// Takes one read of `input`'s line; what it asks for, if anything.
    pub fn read(&mut self, input: PanelInput, level: bool) -> Option<PanelInput> {
        match self {
            Reading::Button(d) => d.read(level).then_some(input),
            Reading::Switch(s) => match (s.read(level)?, input) {
                (true, i) => Some(i),
                (false, PanelInput::HoldOpen) => Some(PanelInput::HoldOpenOff),
                (false, PanelInput::Lockdown) => Some(PanelInput::LockdownOff),
                (false, _) => None,
            },
        }
    }
}

/// A switch on a debounced input (`relay::Level`): every change of its counted position, but
/// for a first reading of off (a switch found off at start asks for nothing).
#[derive(Clone, Copy, Debug, Default)]
pub struct Switch {
    level: super::relay::Level,
    started: bool,
}

impl Switch {
    pub fn read(&mut self, on: bool) -> Option<bool> {
        let changed = self.level.read(on)?;
        let first = !std::mem::replace(&mut self.started, true);
        (!first || changed).then_some(changed)
    }
}

/// Hands what a panel input asked for to `Control`. The receiver never waits on anything
/// (`gate::panels`).
pub async fn hand_on(presses: &mpsc::Sender<PanelPress>, panel: &str, input: PanelInput) {
    tracing::info!(panel, input = input.name(), "panel input");
    let _ = presses
        .send(PanelPress {
            panel: panel.to_string(),
            input,
        })
        .await;
}

/// A press on a panel, for `Control`.
#[derive(Clone, Debug, PartialEq)]
pub struct PanelPress {
    pub panel: String,
    pub input: PanelInput,
}

/// The lamps for a mode and a broker connection state.
pub fn lamps(mode: Mode, online: bool) -> [bool; 4] {
    [
        mode == Mode::Normal,
        mode == Mode::Lockdown,
        mode.holds_open(),
        !online,
    ]
}

/// Starts the task of one panel; `lanes` are the lane ids whose buttons it reads.
pub fn spawn(
    cfg: PanelConfig,
    lanes: Vec<u16>,
    presses: mpsc::Sender<PanelPress>,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(run(cfg, lanes, presses, shared, shutdown));
}

async fn run(
    cfg: PanelConfig,
    lanes: Vec<u16>,
    presses: mpsc::Sender<PanelPress>,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut inputs: Vec<(u16, PanelInput, Reading)> = lanes
        .iter()
        .flat_map(|&ch| {
            [(0, Direction::In), (1, Direction::Out)].map(|(off, direction)| {
                (
                    cfg.button_base.wrapping_add(2 * ch + off),
                    PanelInput::Open {
                        lane: ch,
                        direction,
                    },
                    Reading::Button(Debounce::default()),
                )
            })
        })
        .collect();
    for (addr, input) in [
        (cfg.hold_open, PanelInput::HoldOpen),
        (cfg.lockdown, PanelInput::Lockdown),
        (cfg.emergency, PanelInput::Emergency),
        (cfg.reset, PanelInput::Reset),
    ] {
        inputs.push((addr, input, Reading::of(input)));
    }
    // The config checked that every address fits and that they span fewer than 2000.
    let first = inputs.iter().map(|(a, _, _)| *a).min().unwrap_or(0);
    let last = inputs.iter().map(|(a, _, _)| *a).max().unwrap_or(0);
    let count = last.saturating_sub(first).saturating_add(1);

    let mut conn = Modbus::new(&cfg.link, cfg.unit, cfg.timeout, &shared.buses);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut mode = shared.mode.clone();
    let mut health = shared.health.watch();
    // The lamps the panel should show, and whether it has taken them.
    let mut shown: Option<[bool; 4]> = None;
    let mut next = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            // The lamps follow at the next read; the reads keep their own pace (debounce
            // counts reads, so extra reads would shorten it).
            Ok(()) = mode.changed() => continue,
            Ok(()) = health.changed() => continue,
            _ = tokio::time::sleep_until(next) => {}
        }
        let online = shared.health.is_ok("broker");
        let want = lamps(*mode.borrow_and_update(), online);
        // The buttons first, whatever the lamps do: a module that refuses the lamp writes
        // must still be read.
        let mut r = match conn.read_discrete_inputs(first, count).await {
            Ok(bits) => {
                for (addr, input, reading) in &mut inputs {
                    let level = bits
                        .get(usize::from(*addr - first))
                        .copied()
                        .unwrap_or(false);
                    if let Some(asked) = reading.read(*input, level) {
                        hand_on(&presses, &cfg.name, asked).await;
                    }
                }
                Ok(())
            }
            Err(e) => Err(e),
        };
        if shown != Some(want) {
            let w = conn.write_multiple_coils(cfg.lamp_base, &want).await;
            shown = w.is_ok().then_some(want);
            r = r.and(w);
        }
        if r.is_err() {
            // A panel that lost power comes back with its lamps off.
            shown = None;
        }
        let ok = r.is_ok();
        shared.report(&cfg.name, r);
        next = tokio::time::Instant::now()
            + if ok {
                backoff.reset();
                cfg.poll
            } else {
                backoff.next_delay()
            };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_open_and_lockdown_are_switches_the_rest_buttons() {
        let reads = |input: PanelInput, levels: &[bool]| {
            let mut r = Reading::of(input);
            levels
                .iter()
                .filter_map(|l| r.read(input, *l))
                .collect::<Vec<_>>()
        };
        // A switch: on, then off again.
        assert_eq!(
            reads(
                PanelInput::Lockdown,
                &[false, false, true, true, true, false, false]
            ),
            vec![PanelInput::Lockdown, PanelInput::LockdownOff]
        );
        // Found on at start: its mode; found off: nothing.
        assert_eq!(
            reads(PanelInput::HoldOpen, &[true, true]),
            vec![PanelInput::HoldOpen]
        );
        assert!(reads(PanelInput::HoldOpen, &[false, false, false]).is_empty());
        // A button held on and let go presses once and asks nothing on release.
        assert_eq!(
            reads(PanelInput::Reset, &[false, false, true, true, false, false]),
            vec![PanelInput::Reset]
        );
    }

    #[test]
    fn the_lamps_show_the_mode_and_the_broker() {
        assert_eq!(lamps(Mode::Normal, true), [true, false, false, false]);
        assert_eq!(lamps(Mode::Lockdown, false), [false, true, false, true]);
        assert_eq!(
            lamps(Mode::EmergencyRelease, true),
            [false, false, true, false]
        );
        assert_eq!(lamps(Mode::HoldOpen, true), [false, false, true, false]);
    }
}
