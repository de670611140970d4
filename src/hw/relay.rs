//! The relay board task: the one owner of a relay board's connection. Lanes send it pulse
//! commands; it writes `ms` to holding 100+2n (entry) / 101+2n (exit). The board times the
//! pulse itself, so a crashed daemon cannot leave a lane open.
//!
//! It also follows the gate's mode: in `hold_open` and `emergency_release` the hold coils of
//! its lanes (coil 2n / 2n+1) are on, otherwise off. The coils are written on every mode
//! change and written again after any error (a board that lost power comes back with its
//! coils off), until the board has taken them.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::modbus::ModbusTcp;
use super::{Backoff, DeviceError};
use crate::config::RelayConfig;
use crate::core::{Direction, Mode};
use crate::gate::Shared;

struct Pulse {
    channel: u16,
    direction: Direction,
    ms: u16,
    reply: oneshot::Sender<Result<(), DeviceError>>,
}

#[derive(Clone)]
pub struct RelayHandle {
    name: String,
    tx: mpsc::Sender<Pulse>,
}

impl RelayHandle {
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

/// How often an idle board is read, so that status shows a dead board before a pass needs it.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// Starts the task of one board; `channels` are the lane numbers on it that the gate uses.
pub fn spawn(
    cfg: RelayConfig,
    channels: Vec<u16>,
    shared: Shared,
    shutdown: watch::Receiver<bool>,
) -> RelayHandle {
    let (tx, rx) = mpsc::channel(64);
    let handle = RelayHandle {
        name: cfg.name.clone(),
        tx,
    };
    tokio::spawn(run(cfg, channels, shared, rx, shutdown));
    handle
}

/// Whether a mode holds the lanes open.
pub fn holds_open(mode: Mode) -> bool {
    matches!(mode, Mode::HoldOpen | Mode::EmergencyRelease)
}

/// Writes the hold coils of every channel: entry and exit together.
async fn write_holds(
    conn: &mut ModbusTcp,
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

fn register(cfg: &RelayConfig, channel: u16, direction: Direction) -> u16 {
    let exit = u16::from(direction == Direction::Out);
    cfg.pulse_base.wrapping_add(2 * channel + exit)
}

async fn run(
    cfg: RelayConfig,
    channels: Vec<u16>,
    shared: Shared,
    mut rx: mpsc::Receiver<Pulse>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = ModbusTcp::new(&cfg.address, cfg.unit, cfg.timeout);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut next_check = tokio::time::Instant::now();
    let mut mode = shared.mode.clone();
    // The hold state the board should have, and whether it has confirmed it. At start the
    // coils are written whatever the mode: a restart must not leave a lane held open.
    let mut hold = holds_open(*mode.borrow_and_update());
    let mut hold_confirmed = false;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            Ok(()) = mode.changed() => {
                hold = holds_open(*mode.borrow_and_update());
                hold_confirmed = false;
                next_check = tokio::time::Instant::now(); // write them now
            }
            cmd = rx.recv() => {
                let Some(p) = cmd else { return };
                let reg = register(&cfg, p.channel, p.direction);
                // One retry on a fresh connection: a pulse is only worth giving while the
                // person is still at the turnstile, so no long retry loop.
                let mut r = conn.write_single_register(reg, p.ms).await;
                if r.is_err() {
                    // Whatever went wrong (a board that rebooted comes back with its coils
                    // off), the hold coils are written again at once.
                    hold_confirmed = false;
                    next_check = tokio::time::Instant::now();
                }
                if matches!(r, Err(DeviceError::Timeout(_) | DeviceError::Transport(_))) {
                    r = conn.write_single_register(reg, p.ms).await;
                }
                shared.report(&cfg.name, r.clone()).await;
                if r.is_ok() {
                    backoff.reset();
                }
                let _ = p.reply.send(r);
            }
            _ = tokio::time::sleep_until(next_check) => {
                let r = if hold_confirmed {
                    // Fire (0) and tamper (1) contacts; acting on them comes with the panel work.
                    conn.read_discrete_inputs(0, 2).await.map(|_| ())
                } else {
                    let r = write_holds(&mut conn, &cfg, &channels, hold).await;
                    match &r {
                        Ok(()) => tracing::info!(relay = %cfg.name, hold, "hold coils written"),
                        Err(e) => tracing::warn!(relay = %cfg.name, hold, error = %e, "hold coils not written; will retry"),
                    }
                    r
                };
                let ok = r.is_ok();
                // Whatever happened to a board that failed, its coils are written again once
                // it answers (a power cycle turns them off).
                hold_confirmed = ok;
                shared.report(&cfg.name, r).await;
                next_check = tokio::time::Instant::now()
                    + if ok { backoff.reset(); HEARTBEAT } else { backoff.next_delay() };
            }
        }
    }
}
