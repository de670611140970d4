//! The simulated devices of the reference gate.

use std::net::SocketAddr;

use hw_sim::{ReaderRegisters, RelayRegisters, SimReader, SimRelay, SimServer};

/// The reference gate: reader1 on lane 0 (entry), reader2 on lane 1 (exit), one relay board.
pub struct Devices {
    pub reader1_srv: SimServer,
    pub reader2_srv: SimServer,
    pub relay_srv: SimServer,
    pub reader1: SimReader,
    pub reader2: SimReader,
    pub relay: SimRelay,
}

impl Devices {
    pub async fn start() -> Devices {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("literal");
        let reader1_srv = SimServer::bind(any).await.expect("bind reader1");
        let reader2_srv = SimServer::bind(any).await.expect("bind reader2");
        let relay_srv = SimServer::bind(any).await.expect("bind relay");
        Devices {
            reader1: reader1_srv.add_reader(1, ReaderRegisters::default()),
            reader2: reader2_srv.add_reader(1, ReaderRegisters::default()),
            relay: relay_srv.add_relay(1, 2, RelayRegisters::default()),
            reader1_srv,
            reader2_srv,
            relay_srv,
        }
    }
}
