//! The relay board task: the one owner of a relay board's connection. Lanes send it pulse
//! commands; it writes `ms` to holding 100+2n (entry) / 101+2n (exit). The board times the
//! pulse itself, so a crashed daemon cannot leave a lane open.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::modbus::ModbusTcp;
use super::{Backoff, DeviceError};
use crate::config::RelayConfig;
use crate::core::Direction;
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

pub fn spawn(cfg: RelayConfig, shared: Shared, shutdown: watch::Receiver<bool>) -> RelayHandle {
    let (tx, rx) = mpsc::channel(64);
    let handle = RelayHandle {
        name: cfg.name.clone(),
        tx,
    };
    tokio::spawn(run(cfg, shared, rx, shutdown));
    handle
}

fn register(cfg: &RelayConfig, channel: u16, direction: Direction) -> u16 {
    let exit = u16::from(direction == Direction::Out);
    cfg.pulse_base.wrapping_add(2 * channel + exit)
}

async fn run(
    cfg: RelayConfig,
    shared: Shared,
    mut rx: mpsc::Receiver<Pulse>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut conn = ModbusTcp::new(&cfg.address, cfg.unit, cfg.timeout);
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut next_check = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            cmd = rx.recv() => {
                let Some(p) = cmd else { return };
                let reg = register(&cfg, p.channel, p.direction);
                // One retry on a fresh connection: a pulse is only worth giving while the
                // person is still at the turnstile, so no long retry loop.
                let mut r = conn.write_single_register(reg, p.ms).await;
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
                // Fire (0) and tamper (1) contacts; acting on them comes with the panel work.
                let r = conn.read_discrete_inputs(0, 2).await.map(|_| ());
                let ok = r.is_ok();
                shared.report(&cfg.name, r).await;
                next_check = tokio::time::Instant::now()
                    + if ok { backoff.reset(); HEARTBEAT } else { backoff.next_delay() };
            }
        }
    }
}
