//! The shared harness: connecting clients, and waiting on conditions with a deadline instead
//! of sleeping for a fixed time.

use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_modbus::Slave;
use tokio_modbus::client::{Context, tcp};

/// Longest any single step may take before the test fails (instead of hanging).
pub const DEADLINE: Duration = Duration::from_secs(5);
/// How long a request must go unanswered to count as "no reply". Proving an absence needs
/// some wait; this one is short because a local reply takes well under a millisecond.
pub const SILENCE: Duration = Duration::from_millis(300);

pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().expect("literal address")
}

/// Awaits `fut`, failing the test if it takes longer than [`DEADLINE`].
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(DEADLINE, fut)
        .await
        .expect("step did not finish within the deadline")
}

pub async fn connect(addr: SocketAddr, unit: u8) -> Context {
    within(tcp::connect_slave(addr, Slave(unit)))
        .await
        .expect("connect to the simulator")
}

/// Polls `cond` until it holds, failing the test after [`DEADLINE`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Like [`eventually`], for a condition that needs I/O to check.
pub async fn eventually_async<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The credential a reader shows in input registers 3..36 (len, then bytes high first).
pub fn credential(regs: &[u16]) -> String {
    let len = usize::from(regs[3]);
    let bytes: Vec<u8> = regs[4..].iter().flat_map(|r| r.to_be_bytes()).collect();
    String::from_utf8_lossy(&bytes[..len]).into_owned()
}
