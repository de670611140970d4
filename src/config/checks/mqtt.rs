//! `[mqtt]` and `[trust]`: how the gate reaches its centre, and whose signatures it obeys.

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::Checker;
use crate::config::raw::{RawAuth, RawGate, RawMqtt, RawTrust};
use crate::config::{AuthSource, ConfigError, MqttConfig, TlsConfig, TrustConfig, is_safe_name};
use gated_contract::envelope::{check_key_id, parse_public_key};

impl Checker<'_> {
    pub(super) fn mqtt(
        &self,
        raw: Option<Spanned<RawMqtt>>,
        gate: &RawGate,
    ) -> Result<Option<MqttConfig>, ConfigError> {
        Ok(match raw {
            None => None,
            Some(m) => {
                let span = m.span();
                let m = m.into_inner();
                if m.host.is_empty() {
                    return self.err(span, "mqtt.host", "must not be empty");
                }
                if !is_safe_name(&m.root) {
                    return self.err(
                        span,
                        "mqtt.root",
                        format!("`{}` must be of [A-Za-z0-9_-]", m.root),
                    );
                }
                if !(1..=65535).contains(&m.keep_alive_s) {
                    return self.err(span, "mqtt.keep_alive_s", "must be 1..=65535 seconds");
                }
                if !(64 * 1024..=256 * 1024 * 1024).contains(&m.max_message_bytes) {
                    return self.err(span, "mqtt.max_message_bytes", "must be 64 KiB..=256 MiB");
                }
                if !(1..=1000).contains(&m.inflight) {
                    return self.err(span, "mqtt.inflight", "must be 1..=1000");
                }
                if m.status_interval_s == 0 {
                    return self.err(span, "mqtt.status_interval_s", "must be at least 1");
                }
                let client_id = m
                    .client_id
                    .unwrap_or_else(|| format!("gated-{}-{}", gate.site, gate.gate));
                let tls = match m.tls {
                    None => None,
                    Some(t) => {
                        let client = match (t.cert_file, t.key_file) {
                            (None, None) => None,
                            (Some(c), Some(k)) => Some((c, k)),
                            _ => {
                                return self.err(
                                    span,
                                    "mqtt.tls",
                                    "cert_file and key_file go together (client certificate)",
                                );
                            }
                        };
                        Some(TlsConfig {
                            ca_file: t.ca_file,
                            client,
                            server_name: t.server_name.unwrap_or_else(|| m.host.clone()),
                        })
                    }
                };
                let auth = match m.auth {
                    None => None,
                    Some(RawAuth {
                        file: Some(f),
                        systemd_credential: None,
                    }) => Some(AuthSource::File(f)),
                    Some(RawAuth {
                        file: None,
                        systemd_credential: Some(name),
                    }) => {
                        if !is_safe_name(&name) {
                            return self.err(
                                span,
                                "mqtt.auth.systemd_credential",
                                format!("`{name}` is not a credential name ([A-Za-z0-9_-])"),
                            );
                        }
                        Some(AuthSource::SystemdCredential(name))
                    }
                    Some(_) => {
                        return self.err(
                            span,
                            "mqtt.auth",
                            "give exactly one of `file` or `systemd_credential`",
                        );
                    }
                };
                Some(MqttConfig {
                    host: m.host,
                    port: m.port.unwrap_or(if tls.is_some() { 8883 } else { 1883 }),
                    root: m.root,
                    client_id,
                    keep_alive: Duration::from_secs(m.keep_alive_s),
                    max_message_bytes: m.max_message_bytes,
                    status_interval: Duration::from_secs(m.status_interval_s),
                    inflight: m.inflight,
                    tls,
                    auth,
                    demo: false,
                })
            }
        })
    }

    /// `mqtt_span` is where an error about `[mqtt]` with no key points (0..0 without `[mqtt]`).
    pub(super) fn trust(
        &self,
        raw: Option<Spanned<RawTrust>>,
        with_mqtt: bool,
        mqtt_span: std::ops::Range<usize>,
    ) -> Result<TrustConfig, ConfigError> {
        let trust = match raw {
            None => TrustConfig::default(),
            Some(t) => {
                let span = t.span();
                let t = t.into_inner();
                let mut keys = BTreeMap::new();
                for (i, k) in t.key.into_iter().enumerate() {
                    if let Err(e) = check_key_id(&k.id) {
                        return self.err(span, &format!("trust.key[{i}].id"), e);
                    }
                    let public = match parse_public_key(&k.public) {
                        Ok(p) => p,
                        Err(e) => {
                            return self.err(span, &format!("trust.key[{i}].public"), e);
                        }
                    };
                    // A placeholder (the example's) can never verify a signature: with a
                    // centre, the gate would refuse every list and command it sends.
                    if public.is_weak() && with_mqtt && !t.allow_unsigned {
                        return self.err(
                            span,
                            &format!("trust.key[{i}].public"),
                            format!(
                                "key `{}` is a placeholder (a small-order point, as in the \
                                 example config) that can never verify a signature, so every \
                                 list and command from [mqtt] would be refused: replace it with \
                                 a real key (`gatectl keygen` prints the block)",
                                k.id
                            ),
                        );
                    }
                    if keys.insert(k.id.clone(), public).is_some() {
                        return self.err(
                            span,
                            &format!("trust.key[{i}].id"),
                            format!("key id `{}` is listed twice", k.id),
                        );
                    }
                }
                TrustConfig {
                    keys,
                    allow_unsigned: t.allow_unsigned,
                }
            }
        };
        if with_mqtt && trust.keys.is_empty() && !trust.allow_unsigned {
            return self.err(
                mqtt_span,
                "trust.key",
                "no admin key is trusted, so every list and command would be refused: add a \
                 [[trust.key]] (`gatectl keygen` prints one), or for a lab only set \
                 trust.allow_unsigned = true",
            );
        }
        Ok(trust)
    }
}
