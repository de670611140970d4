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

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::watch;

use crate::config::{ClockConfig, SyncSource};
use crate::core::ClockSense;
use crate::gate::Shared;

/// Now, in Unix milliseconds (UTC).
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

const TICK: Duration = Duration::from_secs(1);

/// When the sync file was last touched (Unix ms), if it exists.
fn synced_at(path: &Path) -> Option<i64> {
    let m = std::fs::metadata(path).ok()?.modified().ok()?;
    let d = m.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    Some(d.as_millis() as i64)
}

/// What the watcher knows between ticks.
struct Watch {
    cfg: ClockConfig,
    wall: i64,
    mono: Instant,
    /// The wall time just after the last jump not yet confirmed by time sync.
    jumped_at: Option<i64>,
}

impl Watch {
    fn new(cfg: ClockConfig) -> Self {
        Self {
            cfg,
            wall: now_ms(),
            mono: Instant::now(),
            jumped_at: None,
        }
    }

    /// One observation. Returns the sense, and the jump (ms, signed) if one happened.
    fn observe(&mut self) -> (ClockSense, Option<i64>) {
        let (wall, mono) = (now_ms(), Instant::now());
        let moved = wall - self.wall;
        let elapsed = mono.duration_since(self.mono).as_millis() as i64;
        self.wall = wall;
        self.mono = mono;
        let skew = moved - elapsed;
        let jump = (skew.unsigned_abs() > self.cfg.max_jump.as_millis() as u64).then_some(skew);
        if jump.is_some() {
            self.jumped_at = Some(wall);
        }
        let synced = match &self.cfg.sync {
            SyncSource::None => None,
            SyncSource::File(p) => {
                let at = synced_at(p);
                if let (Some(j), Some(s)) = (self.jumped_at, at)
                    && s >= j
                {
                    self.jumped_at = None;
                }
                Some(at.is_some())
            }
        };
        let sense = ClockSense {
            synced,
            jumped: self.jumped_at.is_some(),
        };
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
        loop {
            tokio::select! {
                _ = shutdown.changed() => return,
                _ = tick.tick() => {}
            }
            let (now, jump) = w.observe();
            if let Some(ms) = jump {
                let detail = format!(
                    "the wall clock moved {:+.1} s against the monotonic clock; credentials \
                     limited in time are refused clock_untrusted until time sync confirms it",
                    ms as f64 / 1000.0
                );
                tracing::error!("clock jump: {detail}");
                let _ = shared.alarm("clock_jump", "clock", &detail).await;
            }
            if now != sense {
                tracing::warn!(?now, "clock sense changed");
                sense = now;
                tell(&shared, sense).await;
            }
        }
    })
}

async fn tell(shared: &Shared, sense: ClockSense) {
    if let Err(e) = shared
        .store
        .call(move |db| {
            db.set_clock_sense(sense);
            Ok(())
        })
        .await
    {
        tracing::error!(error = %e, "the clock's state could not reach the store");
    }
}
