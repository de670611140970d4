//! `gatectl invite`: one visitor's invitation, with its code and QR image.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::edit::edit;
use super::keys::load_key;
use super::publish::plural;
use super::{Site, now, say};
use crate::admin::Failure;
use crate::admin::lists;
use crate::core::CredentialKind;
use gated_contract::{CredentialRef, Entries, ListName, VisitorEntry, format_ts, parse_ts};

pub struct InviteRequest {
    pub visitor: String,
    pub host: Option<String>,
    pub from: Option<String>,
    pub until: String,
    pub gates: Vec<String>,
    pub entries: u32,
    /// A weekly schedule of the gates' config (`[policy.schedule.NAME]`).
    pub schedule: Option<String>,
    /// How long invitations stay in the list past their window (`lists::KEEP_EXPIRED_DAYS`).
    pub keep_expired_ms: i64,
    pub qr: Option<PathBuf>,
    pub id: Option<String>,
    pub wait: Duration,
}

pub(super) fn check_text(what: &str, field: &str, v: &str) -> Result<(), Failure> {
    if v.is_empty() || v.len() > 64 || v.chars().any(char::is_control) {
        return Err(Failure::new(
            what,
            format!("{field} must be 1..=64 bytes without control characters"),
        )
        .with_exit(64));
    }
    Ok(())
}

pub(super) fn check_gates(what: &str, gates: &[String]) -> Result<(), Failure> {
    if gates.is_empty() {
        return Err(
            Failure::new(what, "--gates is empty (give gate ids, or * for all)").with_exit(64),
        );
    }
    for g in gates {
        if g != "*" && !gated_contract::is_safe_name(g) {
            return Err(Failure::new(
                what,
                format!("--gates: `{}` is not a gate id", g.escape_debug()),
            )
            .with_exit(64));
        }
    }
    Ok(())
}

/// Writes the QR code of `token` as a PNG: 8 pixels per module, with the quiet zone.
pub fn write_qr(token: &str, path: &Path) -> Result<(u32, u32), String> {
    let code = qrcode::QrCode::with_error_correction_level(token, qrcode::EcLevel::M)
        .map_err(|e| format!("cannot encode the code as a QR code: {e}"))?;
    let img = code
        .render::<image::Luma<u8>>()
        .module_dimensions(8, 8)
        .build();
    img.save_with_format(path, image::ImageFormat::Png)
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((code.width() as u32, img.width()))
}

/// `gatectl invite`: one visitor's invitation, published, with its code and QR image.
pub async fn invite(
    site: &Site,
    key: Option<&Path>,
    req: InviteRequest,
    out: &mut dyn Write,
) -> Result<(), Failure> {
    let what = "invite";
    let key = load_key(key, what)?;
    let now_ms = now();
    let time = |field: &str, t: &str| {
        parse_ts(t).map_err(|e| Failure::new(what, format!("{field}: {e}")).with_exit(64))
    };
    let from = req.from.clone().unwrap_or_else(|| format_ts(now_ms));
    let (from_ms, until_ms) = (time("--from", &from)?, time("--until", &req.until)?);
    if until_ms < now_ms {
        return Err(
            Failure::new(what, format!("--until {} is already past", req.until)).with_exit(64),
        );
    }
    if from_ms > until_ms {
        return Err(Failure::new(what, "--from is after --until").with_exit(64));
    }
    check_gates(what, &req.gates)?;
    check_text(what, "--visitor", &req.visitor)?;
    if let Some(h) = &req.host {
        check_text(what, "--host", h)?;
    }
    if req.entries == 0 {
        return Err(Failure::new(what, "--entries must be at least 1").with_exit(64));
    }
    if let Some(s) = &req.schedule
        && !gated_contract::is_safe_name(s)
    {
        return Err(Failure::new(
            what,
            format!(
                "--schedule: `{}` is not a schedule name (1..=64 of [A-Za-z0-9_-])",
                s.escape_debug()
            ),
        )
        .with_exit(64));
    }
    let id = req.id.clone().unwrap_or_else(lists::new_invitation_id);
    check_text(what, "--id", &id)?;
    let token = lists::new_token();
    let inv = VisitorEntry {
        invitation: id.clone(),
        visitor: Some(req.visitor.clone()),
        host: req.host.clone(),
        credentials: vec![CredentialRef {
            kind: CredentialKind::Qr,
            id: token.clone(),
        }],
        valid_from: Some(from.clone()),
        valid_until: Some(req.until.clone()),
        gates: req.gates.clone(),
        max_entries: Some(req.entries),
        schedule: req.schedule.clone(),
    };
    // The image first: if it cannot be written, nothing is published.
    let qr = match &req.qr {
        Some(path) => Some((
            path,
            write_qr(&token, path).map_err(|e| Failure::new(what, e))?,
        )),
        None => None,
    };
    let published = edit(
        site,
        &key,
        ListName::Visitors,
        what,
        req.wait,
        |current, now| match current {
            Entries::Visitors(v) => lists::invite(v, inv, now, req.keep_expired_ms),
            _ => Err("the retained visitors snapshot is not a visitors list".into()),
        },
    )
    .await;
    let published = match published {
        Ok(p) => p,
        Err(e) => {
            // The invitation was not published: leave no code that looks valid.
            if let Some((path, _)) = &qr {
                let _ = std::fs::remove_file(path);
            }
            return Err(e);
        }
    };
    say(out, format_args!("invitation    {id}"))?;
    say(out, format_args!("code          {token}"))?;
    say(
        out,
        format_args!(
            "visitor       {}{}",
            req.visitor,
            req.host
                .as_deref()
                .map(|h| format!(" (host {h})"))
                .unwrap_or_default()
        ),
    )?;
    say(
        out,
        format_args!(
            "valid         {from} .. {} at {}, {}{}",
            req.until,
            req.gates.join(","),
            plural(req.entries as usize, "entry", "entries"),
            req.schedule
                .as_deref()
                .map(|s| format!(", in the hours of schedule `{s}`"))
                .unwrap_or_default()
        ),
    )?;
    if let Some((path, (modules, px))) = &qr {
        say(
            out,
            format_args!(
                "qr            {} ({modules}x{modules} modules, {px}x{px} px)",
                path.display()
            ),
        )?;
    }
    published.print(what, out)
}
