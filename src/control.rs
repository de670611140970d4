//! Control: the one writer of the gate's mode, and the executor of overrides (a remote `open`,
//! the guard panel's buttons).
//!
//! Every override and every mode change is committed to the outbox before it takes effect
//! (G8, G1): an `open` is a pass event `override_remote`, committed before the relay pulse; a
//! mode change is a `mode_changed` alarm naming who made it, committed with the new mode. The
//! one exception is emergency release: it goes into force even when the store cannot record
//! it, because it must not depend on the store (G9).
//!
//! Relays follow the mode on their own: each relay task watches it and holds its lanes open
//! (coils on) in `hold_open` and `emergency_release`.
//!
//! The fire alarm contact (G9): when a relay board reports it on, the mode becomes
//! `emergency_release` at once, before anything is recorded, so no store, broker or slow
//! device can hold it up. Recording follows on its own task: the mode (persisted), a
//! `fire_alarm` alarm, and one `emergency_release` event per lane with
//! `override: {"source":"fire","input":"fire_contact"}`. The release stays latched: while any
//! board's fire contact is on, no other mode is accepted; once it is off, a guard ends it
//! (a remote `normal`; the guard panel's reset with the hardware issue).

use std::collections::BTreeMap;

use tokio::sync::watch;

use crate::config::LaneConfig;
use crate::core::{Direction, Mode, Reason, UnixMs};
use crate::gate::Shared;
use crate::hw::panel::{PanelInput, PanelPress};
use crate::hw::relay::{Contact, ContactChange, RelayHandle};
use crate::store::Stamp;
use gated_contract::{Override, Refusal};

/// What started an emergency release that is in force before it is recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Release {
    Fire,
    Panel,
}

/// Who or what asked for an override or a mode change.
#[derive(Clone, Debug)]
pub struct Origin {
    /// `remote` or `panel`.
    pub source: &'static str,
    /// For a remote command, the admin key that signed it.
    pub by: Option<String>,
    /// For a remote command, its nonce and validity: claimed with the change, so a replay is
    /// refused.
    pub nonce: Option<Stamp>,
}

impl Origin {
    /// The `override` block of the event this origin's override records.
    fn override_of(&self, input: &str) -> Override {
        Override {
            source: self.source.to_string(),
            input: input.to_string(),
            by: self.by.clone(),
        }
    }

    fn describe(&self) -> String {
        match &self.by {
            Some(k) => format!("{} (key `{k}`)", self.source),
            None => self.source.to_string(),
        }
    }
}

pub struct Control {
    shared: Shared,
    mode_tx: watch::Sender<Mode>,
    lanes: BTreeMap<u16, (LaneConfig, RelayHandle)>,
    /// Mode changes happen one at a time, so the recorded `from → to` is always true.
    serial: tokio::sync::Mutex<()>,
    /// Nonces of commands carried out while the store could not record them (an emergency
    /// release, G9): refused as replays from memory, and claimed in the store as soon as it
    /// works again.
    unclaimed: std::sync::Mutex<Vec<Stamp>>,
    /// The fire contacts that are on, and the count of mode changes (releases included):
    /// one lock for both, so that a mode change checks and switches against the same state
    /// a fire alarm or an emergency button changes.
    latch: std::sync::Mutex<Latch>,
    /// What an `attest_time` must carry: status shows the current one.
    challenges: std::sync::Mutex<crate::clock::Challenges>,
}

/// What the emergency latch and the mode switches share.
#[derive(Default)]
struct Latch {
    /// Relay boards whose fire alarm contact is on.
    fire: std::collections::BTreeSet<String>,
    /// Relay boards whose tamper contact is on.
    tamper: std::collections::BTreeSet<String>,
    /// Boards whose fire contact has not been read since start: an emergency release
    /// persisted across a restart is not left on their word until they have been read (or
    /// `FIRE_READ_GRACE` has passed: a dead board must not hold the lanes open for ever).
    unread: std::collections::BTreeSet<String>,
    /// When gated started, if it started in a persisted emergency release (the only case the
    /// rule above is for).
    started: Option<std::time::Instant>,
    /// Rises with every mode switch. A release being recorded that sees it moved on was
    /// superseded; a mode change that sees it moved on while it was being recorded lost to a
    /// release.
    epoch: u64,
}

/// How long the record of an emergency release may take before its alarm goes to the centre
/// past the outbox, marked unrecorded.
const DIRECT_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How long after start an emergency release may not be left while a board's fire contact
/// has not been read yet.
pub const FIRE_READ_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

impl Control {
    /// `fire_boards` are the boards with a fire contact.
    pub fn new(
        shared: Shared,
        mode_tx: watch::Sender<Mode>,
        lanes: BTreeMap<u16, (LaneConfig, RelayHandle)>,
        fire_boards: Vec<String>,
    ) -> Self {
        let persisted = *mode_tx.borrow() == Mode::EmergencyRelease;
        Self {
            shared,
            mode_tx,
            lanes,
            serial: tokio::sync::Mutex::new(()),
            unclaimed: std::sync::Mutex::new(Vec::new()),
            latch: std::sync::Mutex::new(Latch {
                unread: fire_boards.into_iter().collect(),
                started: persisted.then(std::time::Instant::now),
                ..Latch::default()
            }),
            challenges: Default::default(),
        }
    }

    fn latch(&self) -> std::sync::MutexGuard<'_, Latch> {
        self.latch
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Refuses any mode but emergency release while a fire contact is on, and leaving an
    /// emergency release (`current`) before every fire contact has been read since start.
    fn check_fire(latch: &Latch, mode: Mode, current: Mode) -> Result<(), Refusal> {
        let early = latch.started.is_some_and(|t| t.elapsed() < FIRE_READ_GRACE);
        if mode != Mode::EmergencyRelease
            && current == Mode::EmergencyRelease
            && early
            && !latch.unread.is_empty()
        {
            return Err(Refusal::Unsupported(format!(
                "the fire alarm contact of {} has not been read since gated started: the \
                 emergency release stays; try again in a few seconds",
                latch.unread.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        if mode != Mode::EmergencyRelease && !latch.fire.is_empty() {
            return Err(Refusal::Unsupported(format!(
                "the fire alarm contact of {} is on: the emergency release stays until it is \
                 off, and a guard then resets it",
                latch.fire.iter().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        Ok(())
    }

    /// Emergency release, in force at once (G9): no store, broker or device is waited for.
    /// Recording follows on its own task. `board` is set for a fire contact.
    fn release_now(self: &std::sync::Arc<Self>, why: Release, by: &str, now: UnixMs) {
        let epoch = {
            let mut latch = self.latch();
            if why == Release::Fire {
                latch.fire.insert(by.to_string());
            }
            latch.epoch += 1;
            self.mode_tx.send_replace(Mode::EmergencyRelease);
            latch.epoch
        };
        tracing::error!(by, ?why, "EMERGENCY RELEASE of every lane");
        let this = self.clone();
        let by = by.to_string();
        tokio::spawn(async move { this.record_release(why, &by, epoch, now).await });
    }

    /// A press on a guard panel, first step: the emergency button is carried out here and
    /// now, without waiting for anything; every other press is returned, to be carried out
    /// in order by `panel`.
    pub fn panel_now(
        self: &std::sync::Arc<Self>,
        press: PanelPress,
        now: UnixMs,
    ) -> Option<PanelPress> {
        if press.input == PanelInput::Emergency {
            self.release_now(Release::Panel, &press.panel, now);
            return None;
        }
        Some(press)
    }

    /// A press on a guard panel (debounced), carried out like the remote command it matches,
    /// with `source: "panel"` and the panel's name as `by`. What is refused (a lane the gate
    /// does not have, a mode change while a fire contact is on) is logged and alarmed.
    pub async fn panel(self: &std::sync::Arc<Self>, press: PanelPress, now: UnixMs) {
        let origin = Origin {
            source: "panel",
            by: Some(press.panel.clone()),
            nonce: None,
        };
        let r = match press.input {
            PanelInput::Open { lane, direction } => self.open(lane, direction, &origin, now).await,
            PanelInput::HoldOpen => self.set_mode(Mode::HoldOpen, &origin, now).await,
            PanelInput::Lockdown => self.set_mode(Mode::Lockdown, &origin, now).await,
            // A switch turned off ends its own mode only: if something else has changed the
            // mode since, that stays.
            PanelInput::HoldOpenOff if self.mode() == Mode::HoldOpen => {
                self.set_mode(Mode::Normal, &origin, now).await
            }
            PanelInput::LockdownOff if self.mode() == Mode::Lockdown => {
                self.set_mode(Mode::Normal, &origin, now).await
            }
            PanelInput::HoldOpenOff | PanelInput::LockdownOff => Ok(String::new()),
            PanelInput::Emergency => {
                self.release_now(Release::Panel, &press.panel, now);
                Ok(String::new())
            }
            PanelInput::Reset => self.set_mode(Mode::Normal, &origin, now).await,
        };
        if let Err(refusal) = r {
            let detail = format!(
                "panel {}: {} refused: {refusal}",
                press.panel,
                press.input.name()
            );
            tracing::warn!("{detail}");
            self.alarm_later("panel_refused", press.panel, detail);
        }
    }

    /// A relay board's contact changed (debounced). Never waits: a fire alarm must not be
    /// held up by anything.
    pub fn contact(self: &std::sync::Arc<Self>, change: ContactChange, now: UnixMs) {
        let board = change.board.clone();
        if change.contact == Contact::Fire && self.latch().unread.remove(&board) {
            tracing::info!(board, on = change.on, "fire contact read");
        }
        match (change.contact, change.on) {
            (Contact::Fire, true) => self.release_now(Release::Fire, &board, now),
            (Contact::Fire, false) => {
                if self.latch().fire.remove(&board) {
                    tracing::warn!(
                        board,
                        "fire alarm contact off; the emergency release stays until a guard resets it"
                    );
                    let detail = "fire alarm contact off; the emergency release stays latched \
                                  until a guard resets it";
                    self.alarm_later("fire_cleared", board, detail.to_string());
                }
            }
            (Contact::Tamper, on) => {
                // The first reading after start is reported too: "closed" then is no news.
                let changed = {
                    let mut latch = self.latch();
                    if on {
                        latch.tamper.insert(board.clone())
                    } else {
                        latch.tamper.remove(&board)
                    }
                };
                if changed {
                    let (code, detail) = if on {
                        ("tamper", "the cabinet is open (tamper contact)")
                    } else {
                        (
                            "tamper_cleared",
                            "the cabinet is closed again (tamper contact)",
                        )
                    };
                    tracing::warn!(board, "{detail}");
                    self.alarm_later(code, board, detail.to_string());
                }
            }
        }
    }

    /// Has the store decide passes under emergency release from now on, without recording it
    /// (it could not be recorded), as soon as the store takes jobs again.
    async fn assume_emergency(&self) {
        let _ = self
            .shared
            .store
            .call(|db| {
                db.assume_mode(Mode::EmergencyRelease);
                Ok(())
            })
            .await;
    }

    /// Records an alarm on its own task: contact changes and panel presses must never wait
    /// behind a store that is slow to record one.
    fn alarm_later(&self, code: &'static str, source: String, detail: String) {
        self.shared.alarm_later(code, &source, detail);
    }

    /// Records an emergency release that is already in force (a fire contact, a panel's
    /// emergency button): the mode (persisted, so a restart keeps it), for a fire the
    /// `fire_alarm` alarm, and one event per lane. While the store cannot record, the mode is
    /// tried again every second, for as long as this release is the latest mode switch; once
    /// a later switch superseded it, only the alarm and the events are recorded (as history).
    /// The alarm and the events are kept (by this task) and tried again every second until
    /// they are recorded: an evacuation must be in the log (G8). Meanwhile, if the mode is not
    /// recorded within `DIRECT_AFTER`, the alarm goes to the centre past the outbox, marked
    /// unrecorded (`sync::direct`).
    async fn record_release(&self, why: Release, by: &str, epoch: u64, now: UnixMs) {
        let (source, input, what) = match why {
            Release::Fire => ("fire", "fire_contact", "fire alarm contact"),
            Release::Panel => ("panel", "emergency_release", "emergency button of panel"),
        };
        // What the centre gets past the outbox: the fire alarm, or the mode change that a
        // panel's button makes.
        let code = match why {
            Release::Fire => "fire_alarm",
            Release::Panel => "mode_changed",
        };
        let detail = format!("{what} {by}: emergency release of every lane");
        let mode = Mode::EmergencyRelease;
        let mut attempt: u64 = 0;
        let mut sent_direct = false;
        // The mode lock is taken per attempt, not across the retries: a guard's reset (which
        // the store must record too) is not held up behind them.
        let _recorded = loop {
            let one_at_a_time = self.serial.lock().await;
            if self.latch().epoch != epoch {
                tracing::warn!("{detail}: superseded before its mode could be recorded");
                break one_at_a_time;
            }
            let d = detail.clone();
            let call = self
                .shared
                .store
                .call(move |db| db.set_mode(mode, source, &d, None, now));
            tokio::pin!(call);
            // A store that neither records nor fails (a write waiting for a lock) must not
            // keep the centre uninformed: past `DIRECT_AFTER`, the alarm goes directly.
            let r = tokio::select! {
                r = &mut call => r,
                _ = tokio::time::sleep(DIRECT_AFTER), if !sent_direct => {
                    sent_direct = true;
                    self.shared.alarm_direct(code, by, &detail);
                    call.await
                }
            };
            match r {
                Ok(_) => break one_at_a_time,
                Err(e) => {
                    drop(one_at_a_time);
                    if !sent_direct {
                        sent_direct = true;
                        self.shared.alarm_direct(code, by, &detail);
                    }
                    if attempt == 0 {
                        tracing::error!(error = %e, "{detail}: NOT RECORDED (store unavailable); in force anyway, retrying");
                    }
                    self.assume_emergency().await;
                    attempt += 1;
                    if attempt.is_multiple_of(60) {
                        tracing::error!(attempt, "{detail}: still not recorded; retrying");
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        };
        if why == Release::Fire {
            while self.shared.alarm("fire_alarm", by, &detail).await.is_err() {
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
        for &lane in self.lanes.keys() {
            loop {
                let ov = Override {
                    source: source.into(),
                    input: input.into(),
                    by: Some(by.to_string()),
                };
                let r = self
                    .shared
                    .store
                    .call(move |db| {
                        db.record_override(
                            lane,
                            Direction::In,
                            Reason::EmergencyRelease,
                            ov,
                            None,
                            now,
                        )
                    })
                    .await;
                match r {
                    Ok(Ok(event)) => self.shared.publish_decision(source, &event),
                    Ok(Err(r)) => tracing::error!(lane, %r, "fire release event refused"),
                    Err(e) => {
                        crate::limited_error!(lane, error = %e, "fire release event not recorded; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        continue;
                    }
                }
                break;
            }
        }
    }

    /// Refuses a nonce only memory holds; claims what memory holds in the store if it can.
    async fn check_unclaimed(&self, origin: &Origin, now: UnixMs) -> Result<(), Refusal> {
        let held: Vec<Stamp> = self.unclaimed.lock().map(|u| u.clone()).unwrap_or_default();
        if let Some(s) = &origin.nonce
            && held.iter().any(|h| h.nonce == s.nonce)
        {
            return Err(Refusal::Replayed(format!(
                "nonce `{}` was used before; a command is carried out once",
                s.nonce
            )));
        }
        for stamp in held {
            let s = stamp.clone();
            let r = self
                .shared
                .store
                .call(move |db| db.claim_nonce(&s, now))
                .await;
            // Claimed, or refused (already known or expired): either way the store has it
            // covered from now on.
            if r.is_ok()
                && let Ok(mut u) = self.unclaimed.lock()
            {
                u.retain(|h| h.nonce != stamp.nonce);
            }
        }
        Ok(())
    }

    pub fn mode(&self) -> Mode {
        *self.mode_tx.borrow()
    }

    /// One pass on `lane` in `direction`, whatever the mode: recorded, then released.
    pub async fn open(
        &self,
        lane: u16,
        direction: Direction,
        origin: &Origin,
        now: UnixMs,
    ) -> Result<String, Refusal> {
        let Some((cfg, relay)) = self.lanes.get(&lane) else {
            let have: Vec<String> = self.lanes.keys().map(u16::to_string).collect();
            return Err(Refusal::Unsupported(format!(
                "lane {lane} is not a lane of this gate (lanes: {})",
                if have.is_empty() {
                    "none".into()
                } else {
                    have.join(", ")
                }
            )));
        };
        self.check_unclaimed(origin, now).await?;
        let (reason, input) = match (origin.source, direction) {
            ("panel", Direction::In) => (Reason::OverridePanel, "open_entry"),
            ("panel", Direction::Out) => (Reason::OverridePanel, "open_exit"),
            _ => (Reason::OverrideRemote, "open"),
        };
        let ov = origin.override_of(input);
        let nonce = origin.nonce.clone();
        let event = self
            .shared
            .store
            .call(move |db| db.record_override(lane, direction, reason, ov, nonce.as_ref(), now))
            .await
            .map_err(|e| Refusal::StoreError(format!("the override was not recorded: {e}")))??;
        self.shared.publish_decision(origin.source, &event);
        tracing::warn!(lane, direction = direction.as_str(), by = %origin.describe(), "override: lane opened");
        let what = format!("override {} recorded", event.id);
        // Until its pulse is confirmed or its alarm recorded, like a granted pass's: a board
        // hung at shutdown leaves a `relay_unknown` record for it (`Gate::stop`).
        let _settling = self.shared.releases.begin(crate::hw::relay::Release {
            relay: relay.name().to_string(),
            what: what.clone(),
            lane,
            direction,
        });
        if let Err(e) = relay.pulse(cfg.channel, direction, cfg.release_ms).await {
            let (code, detail) = crate::hw::relay::release_alarm(&what, lane, direction, &e);
            tracing::error!("{detail}");
            let _ = self.shared.alarm(code, relay.name(), &detail).await;
            return Err(Refusal::DeviceError(detail));
        }
        Ok(format!(
            "lane {lane} {} released for {} ms; event seq {}",
            direction.as_str(),
            cfg.release_ms,
            event.seq
        ))
    }

    /// A guard's override of anti-passback: forgets `subject`'s in/out state here. The event
    /// it records (`override.input` = `clear_passback`, with the subject) tells the other
    /// gates of the site to forget it too.
    pub async fn clear_passback(
        &self,
        subject: &str,
        origin: &Origin,
        now: UnixMs,
    ) -> Result<String, Refusal> {
        self.check_unclaimed(origin, now).await?;
        let ov = origin.override_of(crate::store::CLEAR_PASSBACK);
        let nonce = origin.nonce.clone();
        let who = subject.to_string();
        let event = self
            .shared
            .store
            .call(move |db| db.clear_passback(&who, ov, nonce.as_ref(), now))
            .await
            .map_err(|e| Refusal::StoreError(format!("the override was not recorded: {e}")))??;
        self.shared.publish_decision(origin.source, &event);
        tracing::warn!(subject, by = %origin.describe(), "override: anti-passback state cleared");
        Ok(format!(
            "anti-passback state of `{subject}` cleared; event seq {}",
            event.seq
        ))
    }

    /// A guard's override after a drill: forgets every subject's in/out state here; the
    /// event it records (`override.input` = `clear_passback_all`, no subject) tells the other
    /// gates of the site to forget what they knew before it.
    pub async fn clear_passback_all(
        &self,
        origin: &Origin,
        now: UnixMs,
    ) -> Result<String, Refusal> {
        self.check_unclaimed(origin, now).await?;
        let ov = origin.override_of(crate::store::CLEAR_PASSBACK_ALL);
        let nonce = origin.nonce.clone();
        let (event, cleared) = self
            .shared
            .store
            .call(move |db| db.clear_passback_all(ov, nonce.as_ref(), now))
            .await
            .map_err(|e| Refusal::StoreError(format!("the override was not recorded: {e}")))??;
        self.shared.publish_decision(origin.source, &event);
        tracing::warn!(cleared, by = %origin.describe(), "override: every anti-passback state cleared");
        Ok(format!(
            "anti-passback state of every subject cleared ({cleared} here); event seq {}",
            event.seq
        ))
    }

    /// Puts the gate in `mode`: recorded (with the nonce), persisted, then in force.
    pub async fn set_mode(
        &self,
        mode: Mode,
        origin: &Origin,
        now: UnixMs,
    ) -> Result<String, Refusal> {
        let _one_at_a_time = self.serial.lock().await;
        let epoch = {
            let latch = self.latch();
            Self::check_fire(&latch, mode, self.mode())?;
            latch.epoch
        };
        self.check_unclaimed(origin, now).await?;
        let from = self.mode();
        let detail = format!(
            "mode {} -> {} by {}{}",
            from.as_str(),
            mode.as_str(),
            origin.describe(),
            if from == mode {
                " (already in force)"
            } else {
                ""
            }
        );
        let (source, d, nonce) = (origin.source, detail.clone(), origin.nonce.clone());
        let recorded = self
            .shared
            .store
            .call(move |db| db.set_mode(mode, source, &d, nonce.as_ref(), now))
            .await;
        match recorded {
            Ok(Ok(_)) => {}
            Ok(Err(refusal)) => return Err(refusal),
            Err(e) if mode == Mode::EmergencyRelease => {
                // G9: an emergency release does not wait for the store.
                tracing::error!(error = %e, "{detail}: NOT RECORDED (store unavailable); in force anyway");
                if let (Some(n), Ok(mut u)) = (origin.nonce.clone(), self.unclaimed.lock()) {
                    u.push(n);
                }
                self.assume_emergency().await;
            }
            Err(e) => {
                return Err(Refusal::StoreError(format!(
                    "the mode change was not recorded, so it is not made: {e}"
                )));
            }
        }
        {
            // A release that came while the store recorded this change wins: it is recorded
            // after this one, so the store ends with it too.
            let mut latch = self.latch();
            Self::check_fire(&latch, mode, self.mode())?;
            if latch.epoch != epoch && mode != Mode::EmergencyRelease {
                return Err(Refusal::Unsupported(
                    "an emergency release came while this change was recorded; it stays".into(),
                ));
            }
            latch.epoch += 1;
            self.mode_tx.send_replace(mode);
        }
        self.shared.kick_outbox();
        tracing::warn!("{detail}");
        Ok(detail)
    }

    /// The clock challenge status shows now.
    pub fn clock_challenge(&self) -> String {
        self.challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .current(std::time::Instant::now())
    }

    /// An admin's signed attestation that the clock reads right now (`attest_time`): the
    /// challenge is taken once (a captured attestation cannot be played again, and one held
    /// back is refused after `CHALLENGE_TTL`), then the store lets the clock's high-water
    /// marks go back to now.
    pub async fn attest_time(
        &self,
        challenge: &str,
        origin: &Origin,
        now: UnixMs,
    ) -> Result<String, Refusal> {
        use crate::clock::{CHALLENGE_TTL, ChallengeError};
        let Some(stamp) = origin.nonce.clone() else {
            return Err(Refusal::Malformed(
                "a time attestation comes as a signed command".into(),
            ));
        };
        let _one_at_a_time = self.serial.lock().await;
        self.check_unclaimed(origin, now).await?;
        let taken = self
            .challenges
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(challenge, std::time::Instant::now());
        match taken {
            Ok(()) => {}
            Err(ChallengeError::Used) => {
                return Err(Refusal::Replayed(format!(
                    "challenge `{challenge}` was used before: an attestation is carried out \
                     once; read the gate's status for its current clock_challenge"
                )));
            }
            Err(ChallengeError::Unknown) => {
                return Err(Refusal::Stale(format!(
                    "challenge `{challenge}` is not one this gate takes now (a challenge is \
                     taken for {} min, and a restart replaces it): read the gate's status for \
                     its current clock_challenge",
                    CHALLENGE_TTL.as_secs() / 60
                )));
            }
        }
        let by = origin.describe();
        let detail = self
            .shared
            .store
            .call(move |db| db.attest_time(&stamp, &by, now))
            .await
            .map_err(|e| Refusal::StoreError(format!("the attestation was not recorded: {e}")))??;
        self.shared.kick_outbox();
        tracing::warn!("{detail}");
        Ok(detail)
    }

    /// Claims a command nonce for a command that changes nothing (resync).
    pub async fn claim(&self, origin: &Origin, now: UnixMs) -> Result<(), Refusal> {
        self.check_unclaimed(origin, now).await?;
        let Some(stamp) = origin.nonce.clone() else {
            return Ok(());
        };
        self.shared
            .store
            .call(move |db| db.claim_nonce(&stamp, now))
            .await
            .map_err(|e| Refusal::StoreError(e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_emergency_release_is_not_left_before_the_fire_contacts_are_read() {
        let mut latch = Latch {
            unread: ["relay1".to_string()].into(),
            started: Some(std::time::Instant::now()),
            ..Latch::default()
        };
        let leave = Control::check_fire(&latch, Mode::Normal, Mode::EmergencyRelease);
        assert!(
            matches!(&leave, Err(Refusal::Unsupported(m)) if m.contains("relay1") && m.contains("not been read")),
            "{leave:?}"
        );
        // Other changes are not held up by it.
        assert!(Control::check_fire(&latch, Mode::Lockdown, Mode::Normal).is_ok());
        // Once read (and off), or once the grace has passed, it may be left.
        latch.unread.clear();
        assert!(Control::check_fire(&latch, Mode::Normal, Mode::EmergencyRelease).is_ok());
        latch.unread.insert("relay1".into());
        latch.started = std::time::Instant::now().checked_sub(FIRE_READ_GRACE);
        assert!(Control::check_fire(&latch, Mode::Normal, Mode::EmergencyRelease).is_ok());
        // A fire contact on refuses every mode but the release.
        latch.fire.insert("relay1".into());
        assert!(Control::check_fire(&latch, Mode::Normal, Mode::EmergencyRelease).is_err());
        assert!(Control::check_fire(&latch, Mode::EmergencyRelease, Mode::Normal).is_ok());
    }
}
