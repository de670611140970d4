//! Opening what the centre sends: the place where the signed envelope of DESIGN.md
//! (`{"v":1,"key":…,"sig":…,"body":…}`, Ed25519) is checked.
//!
//! The foundation has no keys yet, so `Unsigned` passes the payload through as the body.
//! Signature checking replaces this with a verifier built from the admin keys in config;
//! nothing downstream changes, since every caller receives body bytes or a `Refusal`.

use super::contract::Refusal;

#[derive(Clone, Debug)]
pub enum Envelope {
    /// Lab mode: the payload is the body, unsigned.
    Unsigned,
}

impl Envelope {
    pub fn open<'a>(&self, payload: &'a [u8]) -> Result<&'a [u8], Refusal> {
        match self {
            Self::Unsigned => Ok(payload),
        }
    }
}
