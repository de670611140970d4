//! TLS and logins: certificates, password files, the broker's TLS listener.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use rumqttc::MqttOptions;

use super::*;

/// A CA, a broker certificate for 127.0.0.1 and localhost, and a client certificate for the
/// gate, all generated for one test (rcgen), as PEM files in a temporary directory.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Pki {
    pub fn generate() -> Pki {
        use rcgen::{ExtendedKeyUsagePurpose as Eku, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let (ca_pem, issuer) = new_ca("gated e2e CA");
        let leaf = |names: &[&str], eku: Eku| {
            let key = KeyPair::generate().expect("key");
            let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
            let mut p = rcgen::CertificateParams::new(names).expect("params");
            p.extended_key_usages = vec![eku];
            let cert = p.signed_by(&key, &issuer).expect("sign");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf(&["127.0.0.1", "localhost"], Eku::ServerAuth);
        let (client_cert, client_key) = leaf(&["gate-hq-east-1"], Eku::ClientAuth);
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write PEM");
            p
        };
        Pki {
            ca: write("ca.pem", &ca_pem),
            server_cert: write("server.pem", &server_cert),
            server_key: write("server.key", &server_key),
            client_cert: write("client.pem", &client_cert),
            client_key: write("client.key", &client_key),
            dir,
        }
    }

    /// The PEM of another CA, which signed nothing of this test's, written into the directory.
    pub fn other_ca(&self) -> PathBuf {
        let p = self.dir.path().join("other-ca.pem");
        std::fs::write(&p, new_ca("some other CA").0).expect("write PEM");
        p
    }

    /// `[mqtt.tls]` for the gate: this CA, and the client certificate.
    pub fn gate_toml(&self, ca: &Path) -> String {
        format!(
            "[mqtt.tls]\nca_file = \"{}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\n",
            ca.display(),
            self.client_cert.display(),
            self.client_key.display()
        )
    }
}

pub fn new_ca(name: &str) -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let key = rcgen::KeyPair::generate().expect("CA key");
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = p.self_signed(&key).expect("CA cert");
    (cert.pem(), rcgen::Issuer::new(p, key))
}

/// Per-user rules for `Secure`'s password logins: one user per gate for all its connections.
const PASSWORD_ACL: &str = "\
user gate-hq-east-1
topic write acs/hq/east-1/event
topic write acs/hq/east-1/alarm
topic write acs/hq/east-1/status
topic write acs/hq/east-1/ack
topic write acs/hq/east-1/snapshot/#
topic read acs/hq/lists/#
topic read acs/hq/east-1/cmd
topic read acs/hq/west-1/event

user centre
topic read acs/#
topic write acs/+/lists/#
topic write acs/+/+/cmd
";

/// The broker users of the TLS tests.
pub const GATE_USER: &str = "gate-hq-east-1";
pub const GATE_PASSWORD: &str = "pw-east-1-Zq8v";
pub const WEST_USER: &str = "gate-hq-west-1";
pub const CENTRE_USER: &str = "centre";
pub const CENTRE_PASSWORD: &str = "pw-centre-K3m1";

/// Writes a mosquitto password file with `mosquitto_passwd -b`.
pub fn password_file(path: &Path, users: &[(&str, &str)]) {
    let bin = [
        "/usr/bin/mosquitto_passwd",
        "/usr/local/bin/mosquitto_passwd",
    ]
    .into_iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
    .unwrap_or_else(|| PathBuf::from("mosquitto_passwd"));
    for (i, (user, password)) in users.iter().enumerate() {
        let mut cmd = Command::new(&bin);
        if i == 0 {
            cmd.arg("-c");
        }
        let out = cmd
            .arg("-b")
            .arg(path)
            .arg(user)
            .arg(password)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run mosquitto_passwd ({e}): the TLS tests need it; it comes with the \
                     broker: `apt-get install -y mosquitto`"
                )
            });
        assert!(
            out.status.success(),
            "mosquitto_passwd failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// A file of two lines, username then password, mode 600: what `[mqtt.auth]` reads.
pub fn login_file(path: &Path, user: &str, password: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, format!("{user}\n{password}\n")).expect("write login");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

/// The TLS side of a broker started by `Secure::start`: the test's PKI and the TLS port.
pub struct Secure {
    pub pki: Pki,
    pub tls_port: u16,
}

impl Secure {
    /// A broker with a password login per gate: a TLS listener on `tls_port` that requires a
    /// client certificate signed by the test CA, a password per user, and `PASSWORD_ACL`.
    /// (The shipped setup, one certificate per connection, is tested in broker.rs.) The harness's own plain listener (`broker.port`)
    /// stays open and anonymous, for the test's centre.
    pub async fn start() -> (Secure, Broker) {
        let pki = Pki::generate();
        let passwd = pki.dir.path().join("passwd");
        password_file(
            &passwd,
            &[
                (GATE_USER, GATE_PASSWORD),
                (WEST_USER, "pw-west-1-Lx2c"),
                (CENTRE_USER, CENTRE_PASSWORD),
            ],
        );
        let acl = pki.dir.path().join("acl");
        std::fs::write(&acl, PASSWORD_ACL).expect("write ACL");
        let tls_port = free_port();
        // Per-listener settings keep the secure listener's users and ACL off the plain one.
        let broker = Broker::start_with(&format!(
            "per_listener_settings true\nlistener {tls_port} 127.0.0.1\ncafile {ca}\n\
             certfile {cert}\nkeyfile {key}\nrequire_certificate true\nallow_anonymous false\n\
             password_file {passwd}\nacl_file {acl}\n",
            acl = acl.display(),
            ca = pki.ca.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            passwd = passwd.display(),
        ))
        .await;
        assert!(
            broker
                .log()
                .contains(&format!("listen socket on port {tls_port}")),
            "the TLS listener is not up; mosquitto's log:\n{}",
            broker.log()
        );
        (Secure { pki, tls_port }, broker)
    }

    /// Client options for a raw MQTT client on the TLS listener, through the daemon's own
    /// transport code (as gatectl uses it): the test CA, the client certificate, `user`.
    pub fn client_options(&self, id: &str, user: &str, password: &str) -> MqttOptions {
        let login = self.pki.dir.path().join(format!("login-{id}"));
        login_file(&login, user, password);
        let tls = gated::config::TlsConfig {
            ca_file: self.pki.ca.clone(),
            client: Some((self.pki.client_cert.clone(), self.pki.client_key.clone())),
            server_name: "127.0.0.1".into(),
        };
        let secrets =
            gated::sync::transport::load(Some(&tls), Some(&gated::config::AuthSource::File(login)))
                .expect("client secrets");
        let mut o = MqttOptions::new(id, "127.0.0.1", self.tls_port);
        o.set_keep_alive(Duration::from_secs(5));
        gated::sync::transport::apply(&mut o, &secrets);
        o
    }
}

impl World {
    /// The reference gate reaching `secure`'s TLS listener with `mqtt_extra` (its `[mqtt.tls]`
    /// and `[mqtt.auth]` tables) and `env`; the centre on the plain listener has published
    /// staff list version 1. When `connects`, waits for the gate's ack of it, as `start` does.
    pub async fn over_tls(
        secure: &Secure,
        broker: Broker,
        mqtt_extra: &str,
        env: &[(&str, &Path)],
        connects: bool,
    ) -> World {
        Self::launch(broker, None, secure.tls_port, mqtt_extra, env, connects).await
    }
}
