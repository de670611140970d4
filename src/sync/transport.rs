//! Transport security for the MQTT link: the TLS client configuration (rustls with ring, roots
//! only from `mqtt.tls.ca_file`, an optional client certificate) and the username and password
//! (from a file or a systemd credential).
//!
//! Everything is loaded once, at start, so a bad file stops the daemon with an error that names
//! the file and what is wrong with it, rather than failing on every reconnect. Neither the
//! username nor the password is ever logged: `Secrets` prints only where they came from, errors
//! name the file, and nothing logs a `MqttOptions` (rumqttc's `Debug` for it prints them).
//!
//! At run time, `tls_failure` and `login_refused` turn a connection error into one sentence
//! that says what it means and which config key to look at.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rumqttc::{ConnectionError, MqttOptions, TlsConfiguration, Transport};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::config::{AuthSource, TlsConfig};

/// What the link needs to reach the broker securely, loaded once at start.
#[derive(Clone, Default)]
pub struct Secrets {
    tls: Option<Arc<ClientConfig>>,
    /// With `{client_id}` in `mqtt.tls.cert_file` or `key_file`: each connection's own
    /// certificate, by client id (`load_for`). A broker that takes the client id from the
    /// certificate (docs/broker.md) needs one per connection.
    tls_by_client: std::collections::BTreeMap<String, Arc<ClientConfig>>,
    login: Option<(String, String)>,
    /// Where the login came from (`mqtt.auth.file /etc/gated/mqtt-auth`), for errors.
    login_source: Option<String>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Neither the username nor the password: neither may ever be logged.
        f.debug_struct("Secrets")
            .field("tls", &self.tls.is_some())
            .field(
                "tls_by_client",
                &self.tls_by_client.keys().collect::<Vec<_>>(),
            )
            .field("login", &self.login_source)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("{what}: cannot read: {source}")]
    Read {
        what: String,
        source: std::io::Error,
    },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error(
        "systemd credential `{name}`: $CREDENTIALS_DIRECTORY is not set (is LoadCredential= in the unit?)"
    )]
    NoCredentialsDirectory { name: String },
}

/// The placeholder in `mqtt.tls.cert_file` and `key_file` that `load_for` replaces with each
/// connection's client id.
pub const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

/// Loads the TLS configuration and the credentials the config points at.
pub fn load(tls: Option<&TlsConfig>, auth: Option<&AuthSource>) -> Result<Secrets, TransportError> {
    load_for(tls, auth, &[])
}

/// `load`, for a client that connects under each of `client_ids`: where the client
/// certificate's paths hold `{client_id}`, each id gets the certificate and key its paths name.
pub fn load_for(
    tls: Option<&TlsConfig>,
    auth: Option<&AuthSource>,
    client_ids: &[String],
) -> Result<Secrets, TransportError> {
    let per_client = tls.and_then(|t| {
        t.client.as_ref().filter(|(c, k)| {
            [c, k]
                .iter()
                .any(|p| p.to_string_lossy().contains(CLIENT_ID_PLACEHOLDER))
        })
    });
    let mut tls_by_client = std::collections::BTreeMap::new();
    let tls = match (tls, per_client) {
        // Without ids (gatectl) there is nothing to fill in, and no certificate would be sent.
        (Some(_), Some((cert, _))) if client_ids.is_empty() => {
            return Err(TransportError::Invalid {
                what: format!("client certificate {}", cert.display()),
                message: format!(
                    "{CLIENT_ID_PLACEHOLDER} is filled in only for a gate's own connections: \
                     give this tool a file of its own"
                ),
            });
        }
        (Some(t), Some((cert, key))) => {
            let expand = |p: &Path, id: &str| {
                PathBuf::from(p.to_string_lossy().replace(CLIENT_ID_PLACEHOLDER, id))
            };
            for id in client_ids {
                let mut own = t.clone();
                own.client = Some((expand(cert, id), expand(key, id)));
                tls_by_client.insert(id.clone(), client_config(&own)?);
            }
            None
        }
        (t, _) => t.map(client_config).transpose()?,
    };
    let (login, login_source) = match auth {
        None => (None, None),
        Some(AuthSource::File(path)) => {
            let what = format!("mqtt.auth.file {}", path.display());
            (Some(read_login(&what, path)?), Some(what))
        }
        Some(AuthSource::SystemdCredential(name)) => (
            Some(read_credential(
                name,
                std::env::var_os("CREDENTIALS_DIRECTORY").map(PathBuf::from),
            )?),
            Some(format!("systemd credential `{name}`")),
        ),
    };
    Ok(Secrets {
        tls,
        tls_by_client,
        login,
        login_source,
    })
}

/// Whether a login would cross the network in clear: a password without TLS to a broker that
/// is not on this machine.
pub fn login_in_clear(host: &str, tls: bool, auth: bool) -> bool {
    let local = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    auth && !tls && !local
}

/// Sets the transport (TLS or plain TCP) and the credentials on `o`.
pub fn apply(o: &mut MqttOptions, s: &Secrets) {
    if let Some(tls) = s.tls_by_client.get(&o.client_id()).or(s.tls.as_ref()) {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls.clone())));
    }
    if let Some((user, password)) = &s.login {
        o.set_credentials(user.clone(), password.clone());
    }
}

// ---- TLS ------------------------------------------------------------------------------------

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(t: &TlsConfig) -> Result<Arc<ClientConfig>, TransportError> {
    let ca_what = format!("mqtt.tls.ca_file {}", t.ca_file.display());
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs(&ca_what, &t.ca_file)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TransportError::Invalid {
            what: ca_what.clone(),
            message: format!("certificate {} is not a usable CA certificate: {e}", i + 1),
        })?;
    }
    let server_name =
        ServerName::try_from(t.server_name.clone()).map_err(|_| TransportError::Invalid {
            what: format!("mqtt.tls.server_name `{}`", t.server_name),
            message: "is neither a DNS name nor an IP address".into(),
        })?;
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError::Invalid {
            what: "mqtt.tls".into(),
            message: format!("the ring provider offers no TLS version: {e}"),
        })?;
    // rumqttc passes `mqtt.host` to rustls as the server name, and offers no way to change it.
    // So the verifier is pinned to `mqtt.tls.server_name` (default: the host): the same WebPKI
    // check against the same roots, for that name. SNI still carries the host (none for an IP).
    let inner = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| TransportError::Invalid {
            what: ca_what.clone(),
            message: format!("cannot build a verifier from it: {e}"),
        })?;
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedName {
            inner,
            name: server_name.to_owned(),
        }));
    let config = match &t.client {
        None => builder.with_no_client_auth(),
        Some((cert_file, key_file)) => {
            let cert_what = format!("mqtt.tls.cert_file {}", cert_file.display());
            let key_what = format!("mqtt.tls.key_file {}", key_file.display());
            let certs = read_certs(&cert_what, cert_file)?;
            let key = read_key(&key_what, key_file)?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| TransportError::Invalid {
                    what: format!("{cert_what} with {key_what}"),
                    message: format!("not a usable client certificate and key: {e}"),
                })?
        }
    };
    Ok(Arc::new(config))
}

/// Every certificate in a PEM file; an error if there is none.
fn read_certs(what: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let text = read(what, path)?;
    let certs = CertificateDer::pem_slice_iter(&text)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TransportError::Invalid {
            what: what.to_string(),
            message: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TransportError::Invalid {
            what: what.to_string(),
            message: "no certificate in it (expected PEM `BEGIN CERTIFICATE`)".into(),
        });
    }
    Ok(certs)
}

fn read_key(what: &str, path: &Path) -> Result<PrivateKeyDer<'static>, TransportError> {
    let text = read(what, path)?;
    PrivateKeyDer::from_pem_slice(&text).map_err(|e| TransportError::Invalid {
        what: what.to_string(),
        message: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "no private key in it (expected PEM PKCS#8, PKCS#1 or SEC1)".into()
            }
            e => format!("not valid PEM: {e}"),
        },
    })
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|source| TransportError::Read {
        what: what.to_string(),
        source,
    })
}

/// Checks the broker's certificate for `name` instead of the name rumqttc passes (the host).
#[derive(Debug)]
struct PinnedName {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for PinnedName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _host: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// When `e` is a TLS failure, what it means for the operator, naming the config key to look
/// at; `None` for any other connection error.
pub fn tls_failure(e: &ConnectionError, t: &TlsConfig) -> Option<String> {
    use rustls::CertificateError as C;
    let Some(r) = rustls_error(e) else {
        return match e {
            ConnectionError::Tls(rumqttc::TlsError::DNSName(_)) => Some(format!(
                "mqtt.host is not a valid TLS server name ({e}); set mqtt.tls.server_name"
            )),
            // Handshake I/O: the broker closed the connection mid-handshake.
            ConnectionError::Tls(e) => Some(format!(
                "{e} (is the port a TLS listener, and does the broker accept this client?)"
            )),
            _ => None,
        };
    };
    let ca = t.ca_file.display();
    let meaning = match r {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => {
                format!("the broker's certificate is not trusted by mqtt.tls.ca_file ({ca})")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the broker's certificate is not valid for `{}` (mqtt.tls.server_name, default \
                 mqtt.host)",
                t.server_name
            ),
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => {
                "the broker's certificate is outside its validity period (or this gate's clock \
                 is wrong)"
                    .to_string()
            }
            _ => format!("the broker's certificate was refused (mqtt.tls.ca_file {ca})"),
        },
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            "the broker requires a client certificate: set mqtt.tls.cert_file and key_file"
                .to_string()
        }
        rustls::Error::AlertReceived(_) => match &t.client {
            None => "the broker refused the handshake (it may require a client certificate: \
                     mqtt.tls.cert_file and key_file are not set)"
                .to_string(),
            Some((cert, _)) => format!(
                "the broker refused the handshake (it may not trust this gate's certificate, \
                 mqtt.tls.cert_file {})",
                cert.display()
            ),
        },
        rustls::Error::InvalidMessage(_) => {
            "the broker does not speak TLS on this port (a plain MQTT listener?)".to_string()
        }
        _ => "TLS failed".to_string(),
    };
    Some(format!("{meaning}: {r}"))
}

/// The rustls error inside a connection error, if any. `io::Error::source` skips the error it
/// wraps, so each `io::Error` on the chain is looked into with `get_ref`.
fn rustls_error(e: &ConnectionError) -> Option<&rustls::Error> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(r) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

// ---- credentials ----------------------------------------------------------------------------

/// When `e` is the broker refusing the login, what to check; `None` otherwise.
pub fn login_refused(e: &ConnectionError, s: &Secrets) -> Option<String> {
    use rumqttc::ConnectReturnCode as R;
    let ConnectionError::ConnectionRefused(code @ (R::BadUserNamePassword | R::NotAuthorized)) = e
    else {
        return None;
    };
    Some(match &s.login_source {
        Some(source) => format!(
            "the broker refused the username and password of {source} ({code:?}): check them \
             against the broker's password_file"
        ),
        None => format!(
            "the broker refused an anonymous client ({code:?}): set [mqtt.auth] (file or \
             systemd_credential)"
        ),
    })
}

fn read_credential(name: &str, dir: Option<PathBuf>) -> Result<(String, String), TransportError> {
    let dir = dir.filter(|d| !d.as_os_str().is_empty()).ok_or_else(|| {
        TransportError::NoCredentialsDirectory {
            name: name.to_string(),
        }
    })?;
    let path = dir.join(name);
    read_login(
        &format!("systemd credential `{name}` ({})", path.display()),
        &path,
    )
}

/// A file of two lines: the username, then the password.
fn read_login(what: &str, path: &Path) -> Result<(String, String), TransportError> {
    let bytes = read(what, path)?;
    warn_if_readable_by_others(what, path);
    let text = String::from_utf8(bytes).map_err(|_| TransportError::Invalid {
        what: what.to_string(),
        message: "is not UTF-8".into(),
    })?;
    parse_login(&text).ok_or_else(|| TransportError::Invalid {
        what: what.to_string(),
        message: "must have two lines: username, then password".into(),
    })
}

/// Exactly two non-empty lines (a final newline is optional; CRLF is accepted). The password is
/// taken as it is, spaces included.
fn parse_login(text: &str) -> Option<(String, String)> {
    let text = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .unwrap_or(text);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let (user, password) = (lines.next()?, lines.next()?);
    if lines.next().is_some() || user.is_empty() || password.is_empty() {
        return None;
    }
    Some((user.to_string(), password.to_string()))
}

fn warn_if_readable_by_others(what: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                "{what}: readable by group or others (mode {:o}); it holds the MQTT password: \
                 chmod 600 it",
                mode & 0o777
            );
        }
    }
}

#[cfg(test)]
mod tests;
