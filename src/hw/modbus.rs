//! A device's Modbus link: its own TCP connection (`ModbusTcp`) or its unit on an RS-485 bus
//! (`bus::BusHandle`), behind one type, `Modbus`, that the device tasks use.
//!
//! Over TCP: one connection to one unit, with a timeout on every call and a reconnect after
//! any timeout or transport error (a late reply must never be taken for the next request's:
//! tokio-modbus #324, so the context is dropped, not reused).

use std::time::Duration;

use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader, Writer, tcp};
use tokio_modbus::{ExceptionCode, Slave};

use super::DeviceError;
use super::bus::{BusHandle, Buses, Op, Reply};
use crate::config::Link;

/// One device's link, whichever transport. Every reply's length is checked here.
pub enum Modbus {
    Tcp(ModbusTcp),
    Rtu {
        bus: BusHandle,
        unit: u8,
        timeout: Duration,
    },
}

impl Modbus {
    pub fn new(link: &Link, unit: u8, timeout: Duration, buses: &Buses) -> Self {
        match link {
            Link::Tcp(address) => Modbus::Tcp(ModbusTcp::new(address, unit, timeout)),
            Link::Rtu(serial) => Modbus::Rtu {
                bus: buses.get(serial),
                unit,
                timeout,
            },
        }
    }

    async fn rtu(
        bus: &BusHandle,
        unit: u8,
        timeout: Duration,
        op: Op,
    ) -> Result<Reply, DeviceError> {
        bus.call(unit, op, timeout).await
    }

    pub async fn read_input_registers(
        &mut self,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<u16>, DeviceError> {
        match self {
            Modbus::Tcp(t) => t.read_input_registers(addr, cnt).await,
            Modbus::Rtu { bus, unit, timeout } => {
                let r = Self::rtu(bus, *unit, *timeout, Op::ReadInputRegisters(addr, cnt)).await?;
                words(r, addr, cnt, "input registers")
            }
        }
    }

    pub async fn read_discrete_inputs(
        &mut self,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, DeviceError> {
        match self {
            Modbus::Tcp(t) => t.read_discrete_inputs(addr, cnt).await,
            Modbus::Rtu { bus, unit, timeout } => {
                match Self::rtu(bus, *unit, *timeout, Op::ReadDiscreteInputs(addr, cnt)).await? {
                    Reply::Bits(v) if v.len() >= usize::from(cnt) => Ok(v),
                    other => Err(DeviceError::Garbage(format!(
                        "asked for {cnt} discrete inputs at {addr}, got {other:?}"
                    ))),
                }
            }
        }
    }

    pub async fn write_multiple_coils(
        &mut self,
        addr: u16,
        values: &[bool],
    ) -> Result<(), DeviceError> {
        match self {
            Modbus::Tcp(t) => t.write_multiple_coils(addr, values).await,
            Modbus::Rtu { bus, unit, timeout } => Self::rtu(
                bus,
                *unit,
                *timeout,
                Op::WriteMultipleCoils(addr, values.to_vec()),
            )
            .await
            .map(drop),
        }
    }

    pub async fn write_single_register(
        &mut self,
        addr: u16,
        value: u16,
    ) -> Result<(), DeviceError> {
        match self {
            Modbus::Tcp(t) => t.write_single_register(addr, value).await,
            Modbus::Rtu { bus, unit, timeout } => {
                Self::rtu(bus, *unit, *timeout, Op::WriteSingleRegister(addr, value))
                    .await
                    .map(drop)
            }
        }
    }
}

/// A broken frame (a wrong function, a header that does not match) is the device talking
/// nonsense, shown as `garbage`; an I/O error is a broken link.
pub(super) fn transport(e: tokio_modbus::Error) -> DeviceError {
    match e {
        tokio_modbus::Error::Protocol(p) => DeviceError::Garbage(p.to_string()),
        tokio_modbus::Error::Transport(io) => DeviceError::Transport(io.to_string()),
    }
}

fn words(r: Reply, addr: u16, cnt: u16, what: &str) -> Result<Vec<u16>, DeviceError> {
    match r {
        Reply::Words(v) if v.len() == usize::from(cnt) => Ok(v),
        other => Err(DeviceError::Garbage(format!(
            "asked for {cnt} {what} at {addr}, got {other:?}"
        ))),
    }
}

pub struct ModbusTcp {
    address: String,
    unit: u8,
    timeout: Duration,
    ctx: Option<Context>,
}

type Raw<T> =
    Result<Result<Result<T, ExceptionCode>, tokio_modbus::Error>, tokio::time::error::Elapsed>;

impl ModbusTcp {
    pub fn new(address: &str, unit: u8, timeout: Duration) -> Self {
        Self {
            address: address.to_string(),
            unit,
            timeout,
            ctx: None,
        }
    }

    fn ms(&self) -> u64 {
        self.timeout.as_millis() as u64
    }

    async fn context(&mut self) -> Result<&mut Context, DeviceError> {
        if self.ctx.is_none() {
            let connect = async {
                let addr = tokio::net::lookup_host(&self.address)
                    .await?
                    .next()
                    .ok_or_else(|| std::io::Error::other("no address"))?;
                tcp::connect_slave(addr, Slave(self.unit)).await
            };
            let ctx = match timeout(self.timeout, connect).await {
                Err(_) => return Err(DeviceError::Timeout(self.ms())),
                Ok(Err(e)) => return Err(DeviceError::Connect(format!("{}: {e}", self.address))),
                Ok(Ok(ctx)) => ctx,
            };
            self.ctx = Some(ctx);
        }
        self.ctx
            .as_mut()
            .ok_or_else(|| DeviceError::Connect("not connected".into()))
    }

    fn settle<T>(&mut self, r: Raw<T>) -> Result<T, DeviceError> {
        match r {
            Err(_) => {
                self.ctx = None;
                Err(DeviceError::Timeout(self.ms()))
            }
            Ok(Err(e)) => {
                self.ctx = None;
                Err(transport(e))
            }
            Ok(Ok(Err(code))) => Err(DeviceError::Exception(format!("{code:?}"))),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }

    pub async fn read_input_registers(
        &mut self,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<u16>, DeviceError> {
        let t = self.timeout;
        let ctx = self.context().await?;
        let r = timeout(t, ctx.read_input_registers(addr, cnt)).await;
        let v = self.settle(r)?;
        self.exactly(v, addr, cnt, "input registers")
    }

    /// A register read that did not return what was asked is garbage; the connection is
    /// rebuilt (the reply may belong to another request).
    fn exactly(
        &mut self,
        v: Vec<u16>,
        addr: u16,
        cnt: u16,
        what: &str,
    ) -> Result<Vec<u16>, DeviceError> {
        if v.len() != usize::from(cnt) {
            self.ctx = None;
            return Err(DeviceError::Garbage(format!(
                "asked for {cnt} {what} at {addr}, got {}",
                v.len()
            )));
        }
        Ok(v)
    }

    pub async fn read_discrete_inputs(
        &mut self,
        addr: u16,
        cnt: u16,
    ) -> Result<Vec<bool>, DeviceError> {
        let t = self.timeout;
        let ctx = self.context().await?;
        let r = timeout(t, ctx.read_discrete_inputs(addr, cnt)).await;
        let v = self.settle(r)?;
        if v.len() < usize::from(cnt) {
            self.ctx = None;
            return Err(DeviceError::Garbage(format!(
                "asked for {cnt} discrete inputs at {addr}, got {}",
                v.len()
            )));
        }
        Ok(v)
    }

    pub async fn write_multiple_coils(
        &mut self,
        addr: u16,
        values: &[bool],
    ) -> Result<(), DeviceError> {
        let t = self.timeout;
        let ctx = self.context().await?;
        let r = timeout(t, ctx.write_multiple_coils(addr, values)).await;
        self.settle(r)
    }

    pub async fn write_single_register(
        &mut self,
        addr: u16,
        value: u16,
    ) -> Result<(), DeviceError> {
        let t = self.timeout;
        let ctx = self.context().await?;
        let r = timeout(t, ctx.write_single_register(addr, value)).await;
        self.settle(r)
    }
}
