//! One Modbus TCP connection to one unit, with a timeout on every call and a reconnect after
//! any timeout or transport error (a late reply must never be taken for the next request's:
//! tokio-modbus #324, so the context is dropped, not reused).

use std::time::Duration;

use tokio::time::timeout;
use tokio_modbus::client::{Context, Reader, Writer, tcp};
use tokio_modbus::{ExceptionCode, Slave};

use super::DeviceError;

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
                Err(DeviceError::Transport(e.to_string()))
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
        if v.len() != usize::from(cnt) {
            self.ctx = None;
            return Err(DeviceError::Garbage(format!(
                "asked for {cnt} input registers at {addr}, got {}",
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
