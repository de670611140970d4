//! The signed envelope (docs/design.md) of every list and command the centre sends:
//! `{"v":1,"key":"<key id>","sig":"<base64 Ed25519 signature of the body bytes>","body":"<base64 of the body JSON>"}`.
//!
//! A gate holds the admin public keys of its config (several at once: that is how keys are
//! rotated) and opens an envelope only if its signature verifies under the key it names. The
//! body is parsed only after that, so nothing an attacker writes reaches the list parser.
//! Unsigned bodies are refused unless the lab-only `allow_unsigned` is on.
//!
//! `AdminKey` is the signing side, used by `gatectl` and by the tests.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

use crate::{MAX_ECHO_BYTES, Refusal, bounded};

/// The one envelope version this gated knows.
pub const ENVELOPE_VERSION: u32 = 1;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    v: u32,
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(borrow)]
    sig: Cow<'a, str>,
    #[serde(borrow)]
    body: Cow<'a, str>,
}

#[derive(Serialize)]
struct WireOut<'a> {
    v: u32,
    key: &'a str,
    sig: String,
    body: String,
}

/// Only which envelope fields are present: tells an unsigned body from a broken envelope
/// without building a tree of a large message.
#[derive(Deserialize)]
struct Probe {
    v: Option<serde::de::IgnoredAny>,
    key: Option<serde::de::IgnoredAny>,
    sig: Option<serde::de::IgnoredAny>,
    body: Option<serde::de::IgnoredAny>,
}

/// What an opened message holds: the body bytes, and the key that signed them (`None` for an
/// unsigned body accepted in lab mode).
#[derive(Debug)]
pub struct Opened {
    pub body: Vec<u8>,
    pub key: Option<String>,
}

/// Checks envelopes against the admin keys a gate trusts.
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: BTreeMap<String, VerifyingKey>,
    allow_unsigned: bool,
}

impl Verifier {
    pub fn new(keys: BTreeMap<String, VerifyingKey>, allow_unsigned: bool) -> Self {
        Self {
            keys,
            allow_unsigned,
        }
    }

    pub fn open(&self, payload: &[u8]) -> Result<Opened, Refusal> {
        let probe: Probe = serde_json::from_slice(payload).map_err(|e| {
            Refusal::Malformed(format!(
                "not a JSON object ({}); expected a signed envelope",
                bounded(&e.to_string(), MAX_ECHO_BYTES * 2)
            ))
        })?;
        if probe.v.is_none() && probe.key.is_none() && probe.sig.is_none() && probe.body.is_none() {
            if self.allow_unsigned {
                return Ok(Opened {
                    body: payload.to_vec(),
                    key: None,
                });
            }
            return Err(Refusal::Unsigned(
                "not a signed envelope {\"v\",\"key\",\"sig\",\"body\"}; this gate accepts only \
                 messages signed by a key in its [[trust.key]] config"
                    .into(),
            ));
        }
        let wire: Wire = serde_json::from_slice(payload).map_err(|e| {
            // serde quotes what it refused: an unknown field's name, a wrong `v`.
            let why = e.to_string();
            Refusal::Malformed(format!("envelope: {}", bounded(&why, MAX_ECHO_BYTES * 2)))
        })?;
        if wire.v != ENVELOPE_VERSION {
            return Err(Refusal::Malformed(format!(
                "envelope version {} is not known (this gate reads v{ENVELOPE_VERSION})",
                wire.v
            )));
        }
        // The sender is not authenticated yet: the ack names its key and nothing of the keys
        // this gate trusts (they are in its config, for the admins).
        let Some(public) = self.keys.get(wire.key.as_ref()) else {
            return Err(Refusal::UnknownKey(format!(
                "key `{}` is not trusted by this gate",
                bounded(&wire.key, MAX_ECHO_BYTES),
            )));
        };
        let sig = B64
            .decode(wire.sig.as_bytes())
            .ok()
            .and_then(|b| <[u8; 64]>::try_from(b).ok())
            .map(|b| Signature::from_bytes(&b))
            .ok_or_else(|| {
                // A broken encoding is a client's mistake, not a forgery: `malformed` tells the
                // integrator to look at how they encode, `bad_signature` at what they sign.
                Refusal::Malformed(
                    "envelope `sig` is not the standard, padded base64 of a 64-byte Ed25519 \
                     signature"
                        .into(),
                )
            })?;
        let body = B64
            .decode(wire.body.as_bytes())
            .map_err(|e| Refusal::Malformed(format!("envelope `body` is not base64: {e}")))?;
        public.verify_strict(&body, &sig).map_err(|_| {
            Refusal::BadSignature(format!(
                "the signature does not verify under key `{}`",
                wire.key
            ))
        })?;
        Ok(Opened {
            body,
            key: Some(wire.key.into_owned()),
        })
    }
}

/// Key ids name keys in config and in envelopes: `[A-Za-z0-9_-]`, 1..=64.
pub fn check_key_id(id: &str) -> Result<(), String> {
    if crate::is_safe_name(id) {
        Ok(())
    } else {
        Err(format!(
            "key id `{}` must be 1..=64 characters of [A-Za-z0-9_-]",
            id.escape_debug()
        ))
    }
}

/// Parses a public key as written in config: the base64 of its 32 bytes.
pub fn parse_public_key(b64: &str) -> Result<VerifyingKey, String> {
    let bytes = B64
        .decode(b64.trim().as_bytes())
        .map_err(|e| format!("not base64: {e}"))?;
    let bytes = <[u8; 32]>::try_from(bytes)
        .map_err(|b| format!("{} bytes, an Ed25519 public key has 32", b.len()))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("not an Ed25519 public key: {e}"))
}

/// An admin's signing key, with its id.
pub struct AdminKey {
    pub id: String,
    signing: SigningKey,
}

/// The key file: TOML, written `0600` by `gatectl keygen`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    id: String,
    /// Base64 of the 32-byte Ed25519 secret.
    secret: String,
    /// Base64 of the public key, for the reader's convenience; checked against the secret.
    public: String,
}

impl AdminKey {
    pub fn generate(id: &str) -> Result<AdminKey, String> {
        check_key_id(id)?;
        let mut secret = [0u8; 32];
        rand::Rng::fill(&mut rand::rng(), &mut secret);
        Ok(AdminKey {
            id: id.to_string(),
            signing: SigningKey::from_bytes(&secret),
        })
    }

    /// The base64 public key, as `[[trust.key]] public = …` takes it.
    pub fn public_b64(&self) -> String {
        B64.encode(self.signing.verifying_key().as_bytes())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    pub fn to_file_text(&self) -> String {
        let f = KeyFile {
            id: self.id.clone(),
            secret: B64.encode(self.signing.to_bytes()),
            public: self.public_b64(),
        };
        format!(
            "# gated admin signing key. Keep it secret: whoever holds it can open every gate \
             that trusts `{}`.\n{}",
            self.id,
            toml::to_string(&f).unwrap_or_default()
        )
    }

    pub fn from_file_text(text: &str) -> Result<AdminKey, String> {
        let f: KeyFile = toml::from_str(text).map_err(|e| e.message().to_string())?;
        check_key_id(&f.id)?;
        let secret = B64
            .decode(f.secret.trim().as_bytes())
            .ok()
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
            .ok_or("`secret` is not the base64 of 32 bytes")?;
        let key = AdminKey {
            id: f.id,
            signing: SigningKey::from_bytes(&secret),
        };
        if key.public_b64() != f.public.trim() {
            return Err("`public` does not belong to `secret` (the file was edited?)".into());
        }
        Ok(key)
    }

    pub fn load(path: &Path) -> Result<AdminKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("key file {}: {e}", path.display()))?;
        Self::from_file_text(&text).map_err(|e| format!("key file {}: {e}", path.display()))
    }

    /// Wraps `body` in a signed envelope.
    pub fn seal(&self, body: &[u8]) -> Vec<u8> {
        let out = WireOut {
            v: ENVELOPE_VERSION,
            key: &self.id,
            sig: B64.encode(self.signing.sign(body).to_bytes()),
            body: B64.encode(body),
        };
        serde_json::to_vec(&out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verifier(keys: &[&AdminKey], allow_unsigned: bool) -> Verifier {
        Verifier::new(
            keys.iter()
                .map(|k| (k.id.clone(), k.verifying_key()))
                .collect(),
            allow_unsigned,
        )
    }

    #[test]
    fn a_sealed_body_opens_under_its_key_and_rotation_keeps_both() {
        let old = AdminKey::generate("ops-2025").expect("key");
        let new = AdminKey::generate("ops-2026").expect("key");
        let v = verifier(&[&old, &new], false);
        for k in [&old, &new] {
            let opened = v.open(&k.seal(b"{\"x\":1}")).expect("opens");
            assert_eq!(opened.body, b"{\"x\":1}");
            assert_eq!(opened.key.as_deref(), Some(k.id.as_str()));
        }
    }

    #[test]
    fn refusals_have_their_codes() {
        let k = AdminKey::generate("ops").expect("key");
        let other = AdminKey::generate("ops").expect("key");
        let stranger = AdminKey::generate("stranger").expect("key");
        let v = verifier(&[&k], false);
        let code = |p: &[u8]| v.open(p).expect_err("refused").code();
        assert_eq!(code(b"\x00\xffgarbage"), "malformed");
        assert_eq!(code(br#"{"list":"staff"}"#), "unsigned");
        assert_eq!(code(br#"{"v":1,"key":"ops"}"#), "malformed");
        assert_eq!(code(&stranger.seal(b"{}")), "unknown_key");
        // Same id, different secret: a forged key.
        assert_eq!(code(&other.seal(b"{}")), "bad_signature");
        // A body swapped under a valid signature.
        let mut env: serde_json::Value = serde_json::from_slice(&k.seal(b"{}")).expect("json");
        env["body"] = B64.encode(b"{\"evil\":1}").into();
        assert_eq!(
            code(&serde_json::to_vec(&env).expect("json")),
            "bad_signature"
        );
        env["v"] = 2.into();
        assert_eq!(code(&serde_json::to_vec(&env).expect("json")), "malformed");
    }

    #[test]
    fn a_wrongly_encoded_sig_is_malformed_not_a_bad_signature() {
        let k = AdminKey::generate("ops").expect("key");
        let v = verifier(&[&k], false);
        let mut env: serde_json::Value = serde_json::from_slice(&k.seal(b"{}")).expect("json");
        let good = env["sig"].as_str().expect("sig").to_string();
        let url_safe = good.replace('+', "-").replace('/', "_");
        let cases = [
            ("unpadded", good.trim_end_matches('=').to_string()),
            ("not base64", "!!!!".to_string()),
            ("32 bytes", B64.encode([0u8; 32])),
        ];
        for (what, sig) in cases
            .into_iter()
            .chain((url_safe != good).then(|| ("url-safe alphabet", url_safe.clone())))
        {
            env["sig"] = sig.into();
            let r = v
                .open(&serde_json::to_vec(&env).expect("json"))
                .expect_err(what);
            assert_eq!(r.code(), "malformed", "{what}: {r}");
        }
    }

    #[test]
    fn an_unknown_key_is_quoted_bounded_and_the_trusted_keys_are_not_named() {
        let k = AdminKey::generate("ops-secret-name").expect("key");
        let v = verifier(&[&k], false);
        let sig = B64.encode([0u8; 64]);
        let env =
            serde_json::json!({"v": 1, "key": "K".repeat(1 << 20), "sig": sig, "body": "e30="});
        let r = v
            .open(&serde_json::to_vec(&env).expect("json"))
            .expect_err("refused");
        assert_eq!(r.code(), "unknown_key");
        assert!(!r.detail().contains("ops-secret-name"), "{r}");
        assert!(r.detail().len() < 256, "{} bytes", r.detail().len());
        let mut field = serde_json::Map::new();
        field.insert("v".into(), 1.into());
        field.insert("F".repeat(1 << 20), 1.into());
        let r = v
            .open(&serde_json::to_vec(&field).expect("json"))
            .expect_err("refused");
        assert_eq!(r.code(), "malformed");
        assert!(r.detail().len() < 512, "{} bytes", r.detail().len());
    }

    #[test]
    fn the_example_placeholder_key_verifies_nothing() {
        let example = include_str!("../../config/gated.example.toml");
        let line = example
            .lines()
            .find(|l| l.starts_with("public = "))
            .expect("the example has a public key");
        let b64 = line.split('"').nth(1).expect("quoted");
        let placeholder = parse_public_key(b64).expect("parses");
        assert!(placeholder.is_weak());
        let k = AdminKey::generate("ops-2026").expect("key");
        let v = Verifier::new([("ops-2026".to_string(), placeholder)].into(), false);
        assert_eq!(
            v.open(&k.seal(b"{}")).expect_err("x").code(),
            "bad_signature"
        );
    }

    #[test]
    fn lab_mode_takes_unsigned_bodies_but_still_checks_envelopes() {
        let k = AdminKey::generate("ops").expect("key");
        let v = verifier(&[], true);
        let opened = v
            .open(br#"{"list":"staff"}"#)
            .expect("unsigned ok in lab mode");
        assert_eq!(opened.key, None);
        assert_eq!(v.open(&k.seal(b"{}")).expect_err("x").code(), "unknown_key");
    }

    #[test]
    fn key_files_round_trip_and_tampering_is_caught() {
        let k = AdminKey::generate("ops-1").expect("key");
        let text = k.to_file_text();
        let back = AdminKey::from_file_text(&text).expect("parses");
        assert_eq!(back.public_b64(), k.public_b64());
        let other = AdminKey::generate("ops-1").expect("key");
        let tampered = text.replace(&k.public_b64(), &other.public_b64());
        assert!(AdminKey::from_file_text(&tampered).is_err());
        assert!(AdminKey::generate("a/b").is_err());
        assert!(parse_public_key(&k.public_b64()).is_ok());
        assert!(parse_public_key("AAAA").is_err());
    }
}
