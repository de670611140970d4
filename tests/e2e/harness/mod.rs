//! The shared harness: a real mosquitto on a free port, hw-sim devices on free ports, the real
//! `gated` binary, and an MQTT subscriber that records what an operator would see. Waits are
//! on conditions with a deadline, never fixed sleeps; nothing is shared between tests.
//!
//! One file per piece: `broker` (mosquitto), `recorder` (the recording MQTT subscriber, which
//! the bench uses too), `centre` (it, as the centre), `devices`
//! (hw-sim), `daemon` (`gated`), `world` (all of them as the reference gate, and the lists and
//! commands a test sends it), `proxy` (a TCP proxy that can lose replies), `tls` (certificates,
//! passwords, the TLS listener), `peer` (a raw client for the ACL tests), `gatectl` (the admin
//! tool). Tests take all of it with `use crate::harness::*`.

mod broker;
mod centre;
mod daemon;
mod devices;
mod gatectl;
mod peer;
mod proxy;
mod recorder;
mod tls;
mod world;

pub use broker::*;
pub use centre::*;
pub use daemon::*;
pub use devices::*;
pub use gatectl::*;
pub use peer::*;
pub use proxy::*;
pub use recorder::*;
pub use tls::*;
pub use world::*;

use std::net::TcpListener;
use std::time::{Duration, Instant};

pub const DEADLINE: Duration = Duration::from_secs(10);

/// The admin key of the tests: every gate the harness starts trusts it as `ops-test`.
pub fn admin() -> &'static gated_contract::envelope::AdminKey {
    static KEY: std::sync::OnceLock<gated_contract::envelope::AdminKey> =
        std::sync::OnceLock::new();
    KEY.get_or_init(|| gated_contract::envelope::AdminKey::generate("ops-test").expect("key"))
}

/// `body` in an envelope signed by the test admin key.
pub fn signed(body: impl AsRef<[u8]>) -> Vec<u8> {
    admin().seal(body.as_ref())
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free local port")
        .port()
}

/// Polls `cond` until it returns `Some`, failing the test after `deadline`.
pub async fn wait_for<T>(what: &str, deadline: Duration, mut cond: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
