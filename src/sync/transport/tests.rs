use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;

use super::*;

/// A CA named `ca_name` and a broker certificate it signed for `names`, as PEM.
struct Pki {
    ca: String,
    cert: String,
    key: String,
}

fn pki(ca_name: &str, names: &[&str]) -> Pki {
    let ca_key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, ca_name);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = p.self_signed(&ca_key).expect("CA cert");
    let issuer = Issuer::new(p, ca_key);
    let key = KeyPair::generate().expect("broker key");
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut p = CertificateParams::new(names).expect("broker params");
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let cert = p.signed_by(&key, &issuer).expect("broker cert");
    Pki {
        ca: ca.pem(),
        cert: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn tls(ca_file: PathBuf, server_name: &str) -> TlsConfig {
    TlsConfig {
        ca_file,
        client: None,
        server_name: server_name.into(),
    }
}

fn server_config(p: &Pki) -> Arc<ServerConfig> {
    let certs = CertificateDer::pem_slice_iter(p.cert.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("cert");
    let key = PrivateKeyDer::from_pem_slice(p.key.as_bytes()).expect("key");
    Arc::new(
        ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
    )
}

/// A TLS handshake in memory, the client told it is connecting to `host` as rumqttc tells it.
/// Returns the client's error, if it refused the server.
fn handshake(
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    host: &str,
) -> Result<(), rustls::Error> {
    let name = ServerName::try_from(host.to_string()).expect("host");
    let mut c = rustls::ClientConnection::new(client, name)?;
    let mut s = rustls::ServerConnection::new(server).expect("server connection");
    for _ in 0..10 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client writes");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server reads");
        }
        s.process_new_packets()
            .expect("the server accepts the client");
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server writes");
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client reads");
        }
        c.process_new_packets()?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok(());
        }
    }
    panic!("the handshake did not finish");
}

#[test]
fn the_certificate_is_checked_for_server_name_not_for_the_host_rumqttc_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki("unit-test CA", &["broker.test"]);
    let ca = write(dir.path(), "ca.pem", &p.ca);
    let server = server_config(&p);

    // host 127.0.0.1 (not in the certificate), server_name broker.test (in it): accepted.
    let s = load(Some(&tls(ca.clone(), "broker.test")), None).expect("load");
    let client = s.tls.clone().expect("tls");
    handshake(client, server.clone(), "127.0.0.1").expect("pinned to broker.test");

    // server_name defaults to the host: 127.0.0.1 is not in the certificate, refused.
    let s = load(Some(&tls(ca.clone(), "127.0.0.1")), None).expect("load");
    let e = handshake(s.tls.expect("tls"), server.clone(), "127.0.0.1").expect_err("wrong name");
    assert!(
        matches!(
            e,
            rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{e:?}"
    );
    let t = tls(ca, "127.0.0.1");
    let why = tls_failure(&as_rumqttc(e), &t).expect("a TLS failure");
    assert!(why.contains("not valid for `127.0.0.1`"), "{why}");

    // Another CA: refused as untrusted, and the message names the CA file. (A CA of the same
    // name gives BadSignature instead, which reads the same.)
    let other = write(dir.path(), "other-ca.pem", &pki("other CA", &["x"]).ca);
    let t = tls(other.clone(), "broker.test");
    let s = load(Some(&t), None).expect("load");
    let e = handshake(s.tls.expect("tls"), server, "broker.test").expect_err("wrong CA");
    let why = tls_failure(&as_rumqttc(e), &t).expect("a TLS failure");
    assert!(
        why.starts_with(&format!(
            "the broker's certificate is not trusted by mqtt.tls.ca_file ({})",
            other.display()
        )) && why.ends_with("invalid peer certificate: UnknownIssuer"),
        "{why}"
    );
}

/// What rumqttc returns for a failed handshake: tokio-rustls wraps the rustls error in an
/// `io::Error`.
fn as_rumqttc(e: rustls::Error) -> ConnectionError {
    ConnectionError::Tls(rumqttc::TlsError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        e,
    )))
}

#[test]
fn other_connection_errors_are_not_tls_failures() {
    let t = tls("/x/ca.pem".into(), "h");
    let refused = ConnectionError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
    assert_eq!(tls_failure(&refused, &t), None);
}

#[test]
fn bad_tls_files_are_named_with_what_is_wrong() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope.pem");
    let e = load(Some(&tls(missing.clone(), "h")), None).expect_err("missing");
    assert!(
        e.to_string().starts_with(&format!(
            "mqtt.tls.ca_file {}: cannot read:",
            missing.display()
        )),
        "{e}"
    );

    let empty = write(dir.path(), "empty.pem", "not a certificate\n");
    let e = load(Some(&tls(empty.clone(), "h")), None).expect_err("empty");
    assert!(
        e.to_string().starts_with(&format!(
            "mqtt.tls.ca_file {}: no certificate in it",
            empty.display()
        )),
        "{e}"
    );

    let p = pki("unit-test CA", &["h"]);
    let ca = write(dir.path(), "ca.pem", &p.ca);
    let cert = write(dir.path(), "gate.pem", &p.cert);
    let nokey = write(dir.path(), "gate.key", &p.cert);
    let mut t = tls(ca, "h");
    t.client = Some((cert.clone(), nokey.clone()));
    let e = load(Some(&t), None).expect_err("no key");
    assert!(
        e.to_string().starts_with(&format!(
            "mqtt.tls.key_file {}: no private key in it",
            nokey.display()
        )),
        "{e}"
    );

    // A key that is not the certificate's.
    let other_key = write(
        dir.path(),
        "other.key",
        &KeyPair::generate().expect("key").serialize_pem(),
    );
    t.client = Some((cert.clone(), other_key));
    let e = load(Some(&t), None)
        .expect_err("mismatched key")
        .to_string();
    assert!(
        e.contains(&format!("mqtt.tls.cert_file {}", cert.display()))
            && e.contains("not a usable client certificate and key"),
        "{e}"
    );

    let e = load(
        Some(&tls(write(dir.path(), "c.pem", &p.ca), "not a name!")),
        None,
    )
    .expect_err("bad server name");
    assert!(
        e.to_string().contains("mqtt.tls.server_name `not a name!`"),
        "{e}"
    );
}

#[test]
fn the_login_file_has_two_lines() {
    let ok = |t: &str| parse_login(t).map(|(u, p)| format!("{u}|{p}"));
    assert_eq!(ok("gate\nsecret\n").as_deref(), Some("gate|secret"));
    assert_eq!(
        ok("gate\r\npass word\r\n").as_deref(),
        Some("gate|pass word")
    );
    assert_eq!(ok("gate\nsecret").as_deref(), Some("gate|secret"));
    for bad in [
        "", "gate", "gate\n", "gate\n\n", "\nsecret", "a\nb\nc", "a\nb\n\n",
    ] {
        assert_eq!(ok(bad), None, "{bad:?}");
    }
}

#[test]
fn a_bad_login_file_is_named_and_the_login_is_never_printed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let one = write(dir.path(), "auth", "gate-hq-east-1\n");
    let e = load(None, Some(&AuthSource::File(one.clone()))).expect_err("one line");
    assert_eq!(
        e.to_string(),
        format!(
            "mqtt.auth.file {}: must have two lines: username, then password",
            one.display()
        )
    );

    let good = write(dir.path(), "auth2", "gate-hq-east-1\nHunter2-secret\n");
    let s = load(None, Some(&AuthSource::File(good))).expect("load");
    let shown = format!("{s:?}");
    assert!(
        shown.contains("mqtt.auth.file")
            && !shown.contains("gate-hq-east-1")
            && !shown.contains("Hunter2"),
        "{shown}"
    );
    let mut o = MqttOptions::new("id", "127.0.0.1", 1883);
    apply(&mut o, &s);
    let login = o.credentials().expect("credentials set");
    assert_eq!(
        (login.username.as_str(), login.password.as_str()),
        ("gate-hq-east-1", "Hunter2-secret")
    );
}

#[test]
fn a_systemd_credential_is_read_from_the_credentials_directory() {
    let e = read_credential("mqtt-auth", None).expect_err("no directory");
    assert_eq!(
        e.to_string(),
        "systemd credential `mqtt-auth`: $CREDENTIALS_DIRECTORY is not set (is LoadCredential= in \
         the unit?)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let e = read_credential("mqtt-auth", Some(dir.path().into())).expect_err("missing");
    assert!(
        e.to_string().starts_with(&format!(
            "systemd credential `mqtt-auth` ({}): cannot read:",
            dir.path().join("mqtt-auth").display()
        )),
        "{e}"
    );
    write(dir.path(), "mqtt-auth", "u\np\n");
    let login = read_credential("mqtt-auth", Some(dir.path().into())).expect("read");
    assert_eq!(login, ("u".to_string(), "p".to_string()));
}

#[test]
fn client_id_in_the_certificate_path_gives_each_connection_its_own_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = pki("test CA", &["broker"]);
    let ca = write(dir.path(), "ca.pem", &p.ca);
    // The same certificate serves both names here: what counts is which file each id reads.
    for id in ["gated-hq-east-1", "gated-hq-east-1-lists"] {
        write(dir.path(), &format!("{id}.pem"), &p.cert);
        write(dir.path(), &format!("{id}.key"), &p.key);
    }
    let mut t = tls(ca, "broker");
    t.client = Some((
        dir.path().join("{client_id}.pem"),
        dir.path().join("{client_id}.key"),
    ));
    let ids = [
        "gated-hq-east-1".to_string(),
        "gated-hq-east-1-lists".into(),
    ];
    let s = load_for(Some(&t), None, &ids).expect("both certificates load");
    assert_eq!(
        s.tls_by_client.keys().collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );
    assert!(s.tls.is_none(), "no certificate is shared");
    for id in &ids {
        let mut o = MqttOptions::new(id, "127.0.0.1", 8883);
        apply(&mut o, &s);
        assert!(
            matches!(o.transport(), Transport::Tls(TlsConfiguration::Rustls(c)) if Arc::ptr_eq(&c, &s.tls_by_client[id])),
            "{id} did not get its own certificate"
        );
    }

    // A connection whose file is missing stops the load, and the error names that file.
    let peers = dir.path().join("gated-hq-east-1-peers.pem");
    let mut three = ids.to_vec();
    three.push("gated-hq-east-1-peers".into());
    let err = load_for(Some(&t), None, &three).expect_err("no certificate for -peers");
    assert!(
        err.to_string().starts_with(&format!(
            "mqtt.tls.cert_file {}: cannot read",
            peers.display()
        )),
        "{err}"
    );

    // A tool with no client ids of the gate's (gatectl) gets an error, not a plain connection.
    let err = load(Some(&t), None).expect_err("nothing to fill in");
    assert!(
        err.to_string()
            .contains("{client_id} is filled in only for a gate's own connections"),
        "{err}"
    );
}
