//! The shipped broker setup, config/mosquitto.example.conf with config/mosquitto.acl.example,
//! on a real mosquitto: every connection's certificate is its login and its client id, so one
//! gate's stolen certificate cannot take another gate's client id and knock it off the broker.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rumqttc::MqttOptions;
use serde_json::Value;

use crate::harness::*;

/// The logins of this test: the three connections of west-1, the same of east-1, the centre.
const NAMES: [&str; 7] = [
    "gated-hq-west-1",
    "gated-hq-west-1-lists",
    "gated-hq-west-1-peers",
    "gated-hq-east-1",
    "gated-hq-east-1-lists",
    "gated-hq-east-1-peers",
    "centre",
];

/// west-1's connections.
const WEST: [&str; 3] = [
    "gated-hq-west-1",
    "gated-hq-west-1-lists",
    "gated-hq-west-1-peers",
];

/// mosquitto running the shipped config, on a free port, with certificates made for the test:
/// one per name in `NAMES`, its Common Name the name.
struct SiteBroker {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl SiteBroker {
    async fn start() -> SiteBroker {
        let mut dir = tempfile::tempdir().expect("tempdir");
        write_pki(dir.path());
        for _ in 0..5 {
            let port = free_port();
            let conf = dir.path().join("mosquitto.conf");
            std::fs::write(&conf, shipped_config(dir.path(), port)).expect("write config");
            let child = Command::new(mosquitto_bin())
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| {
                    panic!("cannot start mosquitto ({e}): `apt-get install -y mosquitto`")
                });
            let mut b = SiteBroker { port, dir, child };
            let listening = format!("listen socket on port {port}");
            let up = wait_for("mosquitto to listen or exit", DEADLINE, || {
                if b.log().contains(&listening) {
                    Some(true)
                } else {
                    matches!(b.child.try_wait(), Ok(Some(_))).then_some(false)
                }
            })
            .await;
            if up {
                return b;
            }
            // The port was taken between our probe and mosquitto's bind: another one.
            assert!(
                !b.log().contains("Error"),
                "mosquitto refused the shipped config:\n{}",
                b.log()
            );
            let _ = b.child.wait();
            dir = std::mem::replace(&mut b.dir, tempfile::tempdir().expect("tempdir"));
        }
        panic!("mosquitto would not start on a free port");
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("mosquitto.log")).unwrap_or_default()
    }

    /// Client options on the TLS listener with `cert`'s certificate, asking for `client_id`
    /// and, to show it is ignored, sending `client_id` as the username.
    fn options(&self, client_id: &str, cert: &str) -> MqttOptions {
        let d = self.dir.path();
        let tls = gated::config::TlsConfig {
            ca_file: d.join("ca.pem"),
            client: Some((d.join(format!("{cert}.pem")), d.join(format!("{cert}.key")))),
            server_name: "127.0.0.1".into(),
        };
        let secrets = gated::sync::transport::load(Some(&tls), None).expect("client TLS");
        let mut o = MqttOptions::new(client_id, "127.0.0.1", self.port);
        o.set_keep_alive(std::time::Duration::from_secs(5));
        gated::sync::transport::apply(&mut o, &secrets);
        o.set_credentials(client_id, "any password");
        o
    }

    /// How many times the broker accepted a connection under client id `id`.
    fn connections_as(&self, id: &str) -> usize {
        self.log().matches(&format!(" as {id} (")).count()
    }
}

impl Drop for SiteBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- mosquitto log ----\n{}", self.log());
        }
    }
}

/// config/mosquitto.example.conf as shipped, with only its paths and port made the test's.
fn shipped_config(dir: &Path, port: u16) -> String {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut text =
        std::fs::read_to_string(format!("{root}/config/mosquitto.example.conf")).expect("read");
    let acl = format!("{root}/config/mosquitto.acl.example");
    let d = dir.display();
    for (from, to) in [
        ("listener 8883\n", format!("listener {port} 127.0.0.1\n")),
        ("/etc/mosquitto/certs/", format!("{d}/")),
        ("/etc/mosquitto/acl", acl),
        ("/var/lib/mosquitto/", format!("{d}/")),
    ] {
        assert!(text.contains(from), "the shipped config has no `{from}`");
        text = text.replace(from, &to);
    }
    // Started as root, mosquitto would drop to the `mosquitto` user, which cannot write here.
    let user = Command::new("id")
        .arg("-un")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "root".into());
    text + &format!("log_dest file {d}/mosquitto.log\nlog_type all\nuser {user}\n")
}

/// The CA, the broker's certificate (127.0.0.1) and a client certificate per name of `NAMES`,
/// as `{name}.pem` and `{name}.key`: the layout `cert_file = ".../{client_id}.pem"` reads.
fn write_pki(dir: &Path) {
    use rcgen::{DnType, ExtendedKeyUsagePurpose as Eku, KeyPair};
    let (ca_pem, issuer) = new_ca("site hq test CA");
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).expect("write PEM");
    write("ca.pem", &ca_pem);
    let leaf = |file: &str, sans: Vec<String>, cn: &str, eku: Eku| {
        let key = KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(sans).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &issuer).expect("sign");
        write(&format!("{file}.pem"), &cert.pem());
        write(&format!("{file}.key"), &key.serialize_pem());
    };
    leaf(
        "broker",
        vec!["127.0.0.1".into()],
        "broker",
        Eku::ServerAuth,
    );
    for name in NAMES {
        leaf(name, Vec::new(), name, Eku::ClientAuth);
    }
}

/// The latest retained status of west-1 the centre has seen.
fn west_status(centre: &Peer) -> Option<Value> {
    centre
        .on("acs/hq/west-1/status")
        .last()
        .and_then(|s| serde_json::from_str(s).ok())
}

/// A signed `resync` for west-1; its ack comes back on west-1's list connection.
async fn resync_west(centre: &Peer, nonce: &str) {
    let body = command_body("resync", nonce, serde_json::json!({"gate": "west-1"}));
    let envelope = String::from_utf8(signed(body)).expect("the envelope is JSON");
    centre.publish("acs/hq/west-1/cmd", &envelope).await;
    wait_for(&format!("west-1's ack of {nonce}"), DEADLINE, || {
        centre
            .on("acs/hq/west-1/ack")
            .iter()
            .filter_map(|a| serde_json::from_str::<Value>(a).ok())
            .any(|a| a["ref"] == nonce && a["ok"] == true)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn east_1s_certificate_cannot_take_west_1s_client_id() {
    let broker = SiteBroker::start().await;
    let centre = Peer::connect(broker.options("centre", "centre"), &["acs/#"]).await;

    // west-1: the real gate, one certificate per connection through `{client_id}`.
    let devices = Devices::start().await;
    let gate_dir = tempfile::tempdir().expect("tempdir");
    let pki: PathBuf = broker.dir.path().to_path_buf();
    let config = config_text(&gate_dir.path().join("gated.db"), broker.port, &devices)
        .replace("gate = \"east-1\"", "gate = \"west-1\"")
        .replace("[policy]\n", "[policy]\npeers = [\"east-1\"]\n")
        + &format!(
            "[mqtt.tls]\nca_file = \"{p}/ca.pem\"\ncert_file = \"{p}/{{client_id}}.pem\"\n\
             key_file = \"{p}/{{client_id}}.key\"\n",
            p = pki.display()
        );
    let west = Daemon::start_with_env(gate_dir.path(), &config, &[]);
    wait_for(
        "west-1 online, with its list and peers connections up",
        DEADLINE,
        || {
            west_status(&centre)
                .filter(|s| {
                    s["online"] == true
                        && s["devices"]["mqtt_lists"] == "ok"
                        && s["devices"]["mqtt_peers"] == "ok"
                })
                .map(|_| ())
        },
    )
    .await;
    resync_west(&centre, "nonce-before-1").await;
    for id in WEST {
        assert_eq!(broker.connections_as(id), 1, "{id} connected once");
    }

    // east-1's certificates, asking for west-1's client ids (and sending west-1's names as
    // the username): each is connected under its own name.
    let mut intruders = Vec::new();
    for (asked, cert) in [
        ("gated-hq-west-1-lists", "gated-hq-east-1-lists"),
        ("gated-hq-west-1", "gated-hq-east-1"),
        ("gated-hq-west-1-peers", "gated-hq-east-1-peers"),
    ] {
        let intruder = Peer::connect(broker.options(asked, cert), &["acs/hq/west-1/cmd"]).await;
        let log = broker.log();
        assert!(
            log.contains(&format!(" as {cert} (")) && log.contains(&format!("u'{cert}')")),
            "{cert}'s certificate should connect as client and user {cert}:\n{log}"
        );
        intruders.push(intruder);
    }

    // west-1 was not disconnected: no takeover, no second connection, no last will; and its
    // list connection still answers. (mosquitto acknowledges a subscription the ACL denies,
    // and then delivers nothing on it: the broker sent the command to every subscriber before
    // west-1 could ack it.)
    resync_west(&centre, "nonce-after-1").await;
    for intruder in &intruders {
        assert!(
            intruder.on("acs/hq/west-1/cmd").is_empty(),
            "east-1 read west-1's command"
        );
    }
    let log = broker.log();
    assert!(
        !log.contains("already connected, closing old connection"),
        "a connection was taken over:\n{log}"
    );
    for id in WEST {
        assert_eq!(broker.connections_as(id), 1, "{id} was connected again");
    }
    let offline: Vec<String> = centre
        .on("acs/hq/west-1/status")
        .into_iter()
        .filter(|s| s.contains("\"online\":false"))
        .collect();
    assert!(offline.is_empty(), "west-1 went offline: {offline:?}");
    assert!(
        !west.log().contains("MQTT connection lost"),
        "{}",
        west.log()
    );
}
