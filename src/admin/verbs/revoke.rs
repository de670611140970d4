//! `gatectl revoke`: an invitation or a staff member off their list, or a credential onto
//! the deny list.

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use super::Site;
use super::edit::edit;
use super::keys::load_key;
use crate::admin::Failure;
use crate::admin::lists;
use crate::core::CredentialKind;
use gated_contract::{DenyEntry, Entries, ListName};

pub enum RevokeTarget {
    /// The id, and how long invitations stay in the list past their window.
    Invitation(String, i64),
    Staff(String),
    /// `kind`, `id`, and why.
    Credential(CredentialKind, String, Option<String>),
}

/// Parses `KIND:ID` as `revoke credential` takes it.
pub fn parse_credential(s: &str) -> Result<(CredentialKind, String), String> {
    let (kind, id) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not KIND:ID (for example card:0012345678)"))?;
    let kind = CredentialKind::parse(&kind.to_ascii_lowercase())
        .ok_or_else(|| format!("`{kind}` is not a credential kind (card, qr, face, pin)"))?;
    if id.is_empty() || id.len() > 64 || !id.is_ascii() || id.chars().any(|c| c.is_ascii_control())
    {
        return Err(format!("`{id}` must be 1..=64 ASCII characters"));
    }
    Ok((kind, id.to_string()))
}

/// `gatectl revoke`: an invitation or a staff member off their list, or a credential onto the
/// deny list.
pub async fn revoke(
    site: &Site,
    key: Option<&Path>,
    target: RevokeTarget,
    wait: Duration,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let what = "revoke";
    let key = load_key(key, what)?;
    let published = match target {
        RevokeTarget::Invitation(id, keep_ms) => {
            edit(
                site,
                &key,
                ListName::Visitors,
                what,
                wait,
                |current, now| match current {
                    Entries::Visitors(v) => lists::revoke_invitation(v, &id, now, keep_ms),
                    _ => Err("not a visitors list".into()),
                },
            )
            .await
        }
        RevokeTarget::Staff(subject) => {
            edit(
                site,
                &key,
                ListName::Staff,
                what,
                wait,
                |current, _| match current {
                    Entries::Staff(v) => lists::revoke_staff(v, &subject),
                    _ => Err("not a staff list".into()),
                },
            )
            .await
        }
        RevokeTarget::Credential(kind, id, reason) => {
            let entry = DenyEntry { kind, id, reason };
            edit(
                site,
                &key,
                ListName::Deny,
                what,
                wait,
                |current, _| match current {
                    Entries::Deny(v) => lists::deny(v, entry),
                    _ => Err("not a deny list".into()),
                },
            )
            .await
        }
    }?;
    published.print(what, out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_for_revoke() {
        assert_eq!(
            parse_credential("card:0012345678"),
            Ok((CredentialKind::Card, "0012345678".into()))
        );
        assert_eq!(
            parse_credential("QR:AB:C"),
            Ok((CredentialKind::Qr, "AB:C".into()))
        );
        assert!(parse_credential("0012345678").is_err());
        assert!(parse_credential("badge:1").is_err());
        assert!(parse_credential("card:").is_err());
    }
}
