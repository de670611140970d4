//! The shell's clock: the one place that reads it, and the watcher that tells the store
//! whether it can be trusted. The core judges trust (`core::time::judge_clock`); this only
//! observes.
//!
//! A Pi has no real-time clock: after a power cut it starts at the time saved at the last
//! shutdown, or at 1970, until time sync corrects it. The watcher observes:
//! - whether time sync has synchronized the clock (`[clock] sync`): systemd-timesyncd touches
//!   `/run/systemd/timesync/synchronized` at each sync;
//! - jumps: every second it compares how far the wall clock moved with how far the monotonic
//!   clock did. A difference larger than `max_jump_s` is a `clock_jump` alarm, and the clock
//!   stays untrusted until time sync confirms it after the jump (the sync file is touched
//!   after it). With `sync = "none"` nothing can confirm it: it stays untrusted until gated
//!   restarts, which a guard does after checking the time.
//!
//! A clock that ran ahead by mistake and was set back leaves the gate behind what it has
//! already seen (its latest event, its command clock). The watcher raises `clock_behind`,
//! saying so and how to recover: an admin's signed `attest_time`, which must carry one of the
//! challenges kept here (`Challenges`), so that a captured attestation cannot be played again.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::config::{ClockConfig, SyncSource};
use crate::core::ClockSense;
use crate::gate::Shared;

use crate::wall::now_ms;

const TICK: Duration = Duration::from_secs(1);

/// The health registry entry the watcher sets on every change (status drops it from devices).
pub const HEALTH_KEY: &str = "clock";

/// How long a clock challenge is taken, by the monotonic clock: an attestation held back and
/// delivered later (with the gate's clock set back meanwhile) can only vouch for a time this
/// recent.
pub const CHALLENGE_TTL: Duration = Duration::from_secs(600);

/// How far behind what the gate has seen the clock must read before `clock_behind` is raised:
/// a small step back of time sync heals itself within seconds and needs nobody.
const BEHIND_ALARM_MS: i64 = 60_000;

/// How many used challenges are remembered, to call their reuse a replay.
const USED_KEPT: usize = 16;

/// The gate's clock challenges, in memory only (a restart forgets them all): at most two are
/// taken at a time, the current one and the one before it (so that an admin who read the
/// status just before it was replaced is not refused), each for `CHALLENGE_TTL` after it was
/// made; a new one is made when the current one is half that old, and when one is used.
#[derive(Debug, Default)]
pub struct Challenges {
    /// Newest last.
    live: Vec<(String, Instant)>,
    used: std::collections::VecDeque<String>,
}

/// Why a challenge was not taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChallengeError {
    /// It was used before.
    Used,
    /// Too old, or never this gate's (or made before a restart).
    Unknown,
}

impl Challenges {
    /// The challenge to show in status now.
    pub fn current(&mut self, now: Instant) -> String {
        self.live
            .retain(|(_, made)| now.saturating_duration_since(*made) < CHALLENGE_TTL);
        let fresh = self
            .live
            .last()
            .is_some_and(|(_, made)| now.saturating_duration_since(*made) < CHALLENGE_TTL / 2);
        if !fresh {
            self.push(now);
        }
        self.live.last().map(|(c, _)| c.clone()).unwrap_or_default()
    }

    /// Takes `challenge` once: it is never taken again, and a new one replaces it.
    pub fn take(&mut self, challenge: &str, now: Instant) -> Result<(), ChallengeError> {
        self.live
            .retain(|(_, made)| now.saturating_duration_since(*made) < CHALLENGE_TTL);
        let Some(i) = self.live.iter().position(|(c, _)| c == challenge) else {
            return Err(if self.used.iter().any(|u| u == challenge) {
                ChallengeError::Used
            } else {
                ChallengeError::Unknown
            });
        };
        let (used, _) = self.live.remove(i);
        if self.used.len() == USED_KEPT {
            self.used.pop_front();
        }
        self.used.push_back(used);
        self.push(now);
        Ok(())
    }

    fn push(&mut self, now: Instant) {
        use rand::RngCore as _;
        let mut b = [0u8; 16];
        rand::rng().fill_bytes(&mut b);
        self.live
            .push((b.iter().map(|x| format!("{x:02x}")).collect(), now));
        if self.live.len() > 2 {
            self.live.remove(0);
        }
    }
}

/// The alarm for a clock that reads earlier than what the gate has already seen.
fn behind_detail(b: &crate::store::Behind, now: i64) -> String {
    use gated_contract::format_ts;
    let mut seen = Vec::new();
    if let Some(t) = b.event {
        seen.push(format!("recorded an event at {}", format_ts(t)));
    }
    if let Some(t) = b.command {
        seen.push(format!("judged commands at {}", format_ts(t)));
    }
    let until = b.event.max(b.command).unwrap_or(now);
    format!(
        "the clock reads {} but this gate has already {}: the clock ran ahead before and was \
         set back. Until real time reaches {}, credentials limited in time are refused \
         clock_untrusted and commands other than lockdown are refused expired. If the clock is \
         right now, an admin attests it: gatectl cmd attest-time --gate {}; if it is not, fix time \
         sync first",
        format_ts(now),
        seen.join(" and "),
        format_ts(until),
        b.gate
    )
}

/// When the sync file was last touched (Unix ms), if it exists.
fn synced_at(path: &Path) -> Option<i64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    let d = m.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(d.as_millis() as i64)
}

/// A jump of the wall clock against the monotonic clock.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Jump {
    by_ms: i64,
    /// The wall clock at the tick before the jump.
    before: i64,
    /// Time sync made it (its file changed in the same tick).
    confirmed: bool,
}

/// What the watcher knows between ticks.
struct Watch {
    cfg: ClockConfig,
    wall: i64,
    mono: Instant,
    /// A jump not yet confirmed by time sync: the sync file's modification time when it
    /// happened. Time sync touches the file at each sync, so a time that differs from this one
    /// is a sync after the jump. (Times are not compared with the jumped clock: after a jump
    /// back, a file touched before it would look newer.)
    jumped: Option<Option<i64>>,
    /// The sync file's modification time at the previous tick.
    last_sync: Option<i64>,
}

impl Watch {
    fn new(cfg: ClockConfig) -> Self {
        Self {
            cfg,
            wall: now_ms(),
            mono: Instant::now(),
            jumped: None,
            last_sync: None,
        }
    }

    /// One observation. Returns the sense, and the jump (ms, signed) if one happened.
    fn observe(&mut self) -> (ClockSense, Option<Jump>) {
        self.observe_at(now_ms(), Instant::now())
    }

    fn observe_at(&mut self, wall: i64, mono: Instant) -> (ClockSense, Option<Jump>) {
        let before = self.wall;
        let moved = wall - self.wall;
        let elapsed = mono.duration_since(self.mono).as_millis() as i64;
        self.wall = wall;
        self.mono = mono;
        let skew = moved - elapsed;
        let jumped = skew.unsigned_abs() > self.cfg.max_jump.as_millis() as u64;
        let mut confirmed = false;
        let synced = match &self.cfg.sync {
            SyncSource::None => {
                if jumped {
                    self.jumped = Some(None);
                }
                None
            }
            SyncSource::File(p) => {
                let at = synced_at(p);
                // A step made by time sync itself (the first sync after boot) touches the file
                // in the same tick: confirmed at once.
                confirmed = jumped && at.is_some() && at != self.last_sync;
                if jumped && !confirmed {
                    self.jumped = Some(at);
                } else if let (Some(before), Some(now)) = (self.jumped, at)
                    && before != Some(now)
                {
                    self.jumped = None;
                }
                self.last_sync = at;
                Some(at.is_some())
            }
        };
        let sense = ClockSense {
            synced,
            jumped: self.jumped.is_some(),
        };
        let jump = jumped.then_some(Jump {
            by_ms: skew,
            before,
            confirmed,
        });
        (sense, jump)
    }
}

/// Reports the clock's sense to the store now, then watches it until shutdown.
pub async fn watch(
    cfg: ClockConfig,
    shared: Shared,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut w = Watch::new(cfg);
    let (mut sense, _) = w.observe();
    tell(&shared, sense).await;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        // Raised once each time the clock falls behind, not every second it stays there.
        let mut behind_raised = false;
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let (now, jump) = w.observe();
            if let Some(j) = jump {
                let by = j.by_ms as f64 / 1000.0;
                let detail = if j.confirmed {
                    format!(
                        "the wall clock moved {by:+.1} s: a step of time sync, which confirmed it"
                    )
                } else {
                    format!(
                        "the wall clock moved {by:+.1} s against the monotonic clock; credentials \
                         limited in time are refused clock_untrusted until time sync confirms it"
                    )
                };
                tracing::error!("clock jump: {detail}");
                let _ = shared.alarm("clock_jump", "clock", &detail).await;
                if !j.confirmed {
                    // Passes recorded in the second before the jump was seen may have raised
                    // the floor to the jumped time; it goes back to the last time seen before.
                    let back_to = j.before + TICK.as_millis() as i64;
                    if let Err(e) = shared.store.call(move |db| db.lower_floor(back_to)).await {
                        crate::limited_error!(error = %e, "the clock floor could not be lowered");
                    }
                }
            }
            if now != sense {
                tracing::warn!(?now, "clock sense changed");
                sense = now;
                tell(&shared, sense).await;
            }
            let wall = now_ms();
            match shared.store.call(move |db| db.clock_behind(wall)).await {
                Ok(Some(b))
                    if !behind_raised
                        && b.event
                            .max(b.command)
                            .is_some_and(|t| t - wall > BEHIND_ALARM_MS) =>
                {
                    behind_raised = true;
                    let detail = behind_detail(&b, wall);
                    tracing::error!("clock behind: {detail}");
                    let _ = shared.alarm("clock_behind", "clock", &detail).await;
                }
                // Raised already, or behind by a few seconds only.
                Ok(Some(_)) => {}
                Ok(None) => behind_raised = false,
                Err(e) => {
                    crate::limited_error!(error = %e, "the clock could not be compared with the store")
                }
            }
        }
    })
}

/// Hands the sense to the store, and marks it in the health registry so that status is
/// published again (status shows the clock at the top level, not among the devices).
async fn tell(shared: &Shared, sense: ClockSense) {
    let state = match (sense.jumped, sense.synced) {
        (true, _) => "jumped",
        (false, Some(false)) => "not_synced",
        (false, Some(true)) => "synced",
        (false, None) => "free_running",
    };
    shared.health.set(HEALTH_KEY, state);
    if let Err(e) = shared
        .store
        .call(move |db| {
            db.set_clock_sense(sense);
            Ok(())
        })
        .await
    {
        crate::limited_error!(error = %e, "the clock's state could not reach the store");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_clock_challenge_is_taken_once_and_only_while_fresh() {
        let t0 = Instant::now();
        let mut c = Challenges::default();
        let first = c.current(t0);
        assert_eq!(first.len(), 32);
        assert_eq!(c.current(t0 + Duration::from_secs(60)), first, "stable");
        // Replaced at half its life; the one before is still taken until its own end.
        let half = t0 + CHALLENGE_TTL / 2;
        let second = c.current(half);
        assert_ne!(second, first);
        assert_eq!(c.take(&first, half), Ok(()));
        // Taken once: the same challenge again is a replay.
        assert_eq!(c.take(&first, half), Err(ChallengeError::Used));
        // Using one replaces the current one too: status shows a new one.
        let third = c.current(half);
        assert_ne!(third, second);
        assert_eq!(
            c.take("not-a-challenge", half),
            Err(ChallengeError::Unknown)
        );
        // One held back past its life is refused (the monotonic clock, which no time sync
        // moves, says how old it is).
        let late = half + CHALLENGE_TTL;
        assert_eq!(c.take(&third, late), Err(ChallengeError::Unknown));
        // A restart forgets them all.
        let mut fresh = Challenges::default();
        let now = fresh.current(t0);
        assert_eq!(fresh.take(&second, t0), Err(ChallengeError::Unknown));
        assert_eq!(fresh.take(&now, t0), Ok(()));
    }

    #[test]
    fn a_jump_is_untrusted_until_time_sync_confirms_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("synced");
        let mut w = Watch::new(ClockConfig {
            sync: SyncSource::File(file.clone()),
            max_jump: Duration::from_secs(120),
        });
        let (wall, mono) = (w.wall, w.mono);
        let sec = Duration::from_secs(1);
        let (sense, jump) = w.observe_at(wall + 1_000, mono + sec);
        assert_eq!(jump, None);
        assert_eq!(
            sense,
            ClockSense {
                synced: Some(false),
                jumped: false
            }
        );
        std::fs::write(&file, b"").expect("touch");
        // Drift under the limit is no jump.
        let (sense, jump) = w.observe_at(wall + 62_000, mono + 2 * sec);
        assert_eq!(
            (sense.synced, sense.jumped, jump),
            (Some(true), false, None)
        );
        // Set back by a day: a jump, untrusted although the sync file is there, and stays so
        // while the file is not touched again.
        let back = wall - 86_400_000;
        let (sense, jump) = w.observe_at(back, mono + 3 * sec);
        assert!(
            jump.is_some_and(|j| j.by_ms < -86_000_000 && !j.confirmed),
            "{jump:?}"
        );
        assert!(sense.jumped);
        let (sense, jump) = w.observe_at(back + 1_000, mono + 4 * sec);
        assert!(sense.jumped && jump.is_none(), "unconfirmed");
        // Time sync touches the file after the jump: trusted again.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&file, b"x").expect("touch");
        let (sense, _) = w.observe_at(back + 2_000, mono + 5 * sec);
        assert!(!sense.jumped, "confirmed by a sync after the jump");
        // The first sync after boot steps the clock and touches the file in the same tick:
        // a confirmed jump, trusted at once.
        let fresh = dir.path().join("fresh");
        let mut boot = Watch::new(ClockConfig {
            sync: SyncSource::File(fresh.clone()),
            max_jump: Duration::from_secs(120),
        });
        let (wall, mono) = (boot.wall, boot.mono);
        let (sense, _) = boot.observe_at(wall + 1_000, mono + sec);
        assert_eq!(sense.synced, Some(false));
        std::fs::write(&fresh, b"").expect("touch");
        let (sense, jump) = boot.observe_at(wall + 3_600_000, mono + 2 * sec);
        assert!(jump.is_some_and(|j| j.confirmed), "{jump:?}");
        assert_eq!((sense.synced, sense.jumped), (Some(true), false));
        // Without a sync source, nothing confirms a jump.
        let mut free = Watch::new(ClockConfig {
            sync: SyncSource::None,
            max_jump: Duration::from_secs(120),
        });
        let (wall, mono) = (free.wall, free.mono);
        let (sense, _) = free.observe_at(wall + 600_000, mono + sec);
        assert_eq!(
            sense,
            ClockSense {
                synced: None,
                jumped: true
            }
        );
        let (sense, _) = free.observe_at(wall + 601_000, mono + 2 * sec);
        assert!(sense.jumped);
    }
}
