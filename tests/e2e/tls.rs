//! Transport security: MQTT over TLS against a mosquitto TLS listener with certificates made by
//! the test, a client certificate, the username and password from a file or a systemd
//! credential, clear errors for a broker the gate must not trust and for bad files, and a
//! per-user ACL.

use std::path::Path;

use hw_sim::KIND_CARD;

use crate::harness::*;

fn auth_file_toml(path: &Path) -> String {
    format!("[mqtt.auth]\nfile = \"{}\"\n", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_client_certificate_and_a_password_file_a_swipe_reaches_the_centre() {
    let (secure, broker) = Secure::start().await;
    let login = secure.pki.dir.path().join("mqtt-auth");
    login_file(&login, GATE_USER, GATE_PASSWORD);
    let extra = secure.pki.gate_toml(&secure.pki.ca) + &auth_file_toml(&login);
    // Waits for the ack of the staff list: the list connection works over TLS under the ACL.
    let w = World::over_tls(&secure, broker, &extra, &[], true).await;

    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let e = w
        .centre
        .wait_json("the pass event, sent over TLS", EVENT, |_| true)
        .await;
    assert_eq!(
        (e["decision"].as_str(), e["subject"].as_str()),
        (Some("granted"), Some("E1001"))
    );
    w.centre
        .wait_json("the online status", STATUS, |s| s["online"] == true)
        .await;

    // Both connections came in as the gate's one user, on the TLS listener.
    let log = w.broker.log_text();
    for id in ["gated-hq-east-1", "gated-hq-east-1-lists"] {
        assert!(
            log.contains(&format!("as {id} (")) && log.contains(&format!("u'{GATE_USER}'")),
            "{id} did not connect as {GATE_USER}:\n{log}"
        );
    }
    let daemon_log = w.daemon.log();
    assert!(
        !daemon_log.contains(GATE_PASSWORD) && !daemon_log.contains(GATE_USER),
        "the login is in the log:\n{daemon_log}"
    );
    assert!(
        !daemon_log.contains("readable by group or others"),
        "a mode 600 file needs no warning:\n{daemon_log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_username_and_password_can_come_from_a_systemd_credential() {
    let (secure, broker) = Secure::start().await;
    // What systemd's LoadCredential=mqtt-auth:… gives the service.
    let creds = tempfile::tempdir().expect("tempdir");
    login_file(&creds.path().join("mqtt-auth"), GATE_USER, GATE_PASSWORD);
    // host is 127.0.0.1; the certificate is also checked for the server_name `localhost`,
    // which it carries.
    let extra = secure.pki.gate_toml(&secure.pki.ca)
        + "server_name = \"localhost\"\n[mqtt.auth]\nsystemd_credential = \"mqtt-auth\"\n";
    let w = World::over_tls(
        &secure,
        broker,
        &extra,
        &[("CREDENTIALS_DIRECTORY", creds.path())],
        true,
    )
    .await;
    w.devices
        .reader2
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    let e = w
        .centre
        .wait_json("the pass event, sent over TLS", EVENT, |_| true)
        .await;
    assert_eq!(e["decision"], "granted");
    let log = w.daemon.log();
    assert!(
        !log.contains(GATE_PASSWORD) && !log.contains(GATE_USER),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let (secure, broker) = Secure::start().await;
    let login = secure.pki.dir.path().join("mqtt-auth");
    login_file(&login, GATE_USER, GATE_PASSWORD);
    let other = secure.pki.other_ca();
    let extra = secure.pki.gate_toml(&other) + &auth_file_toml(&login);
    let mut w = World::over_tls(&secure, broker, &extra, &[], false).await;

    let line = format!(
        "TLS handshake with broker 127.0.0.1:{} failed: the broker's certificate is not trusted \
         by mqtt.tls.ca_file ({}): invalid peer certificate: UnknownIssuer",
        secure.tls_port,
        other.display()
    );
    // Both connections fail, and each tries again (with backoff): at least four lines.
    wait_for("the TLS error, retried, in gated's log", DEADLINE, || {
        (w.daemon.log().matches(&line).count() >= 4).then_some(())
    })
    .await;

    // The gate keeps deciding locally: the swipe is decided and recorded (denied: the list
    // never arrived), and waits in the outbox.
    w.devices
        .reader1
        .present(KIND_CARD, "0012345678", 0)
        .expect("present");
    wait_for("the local decision", DEADLINE, || {
        let log = w.daemon.log();
        (log.contains("gated::pass") && log.contains("card:0012345678")).then_some(())
    })
    .await;
    assert!(w.daemon.is_running(), "gated must keep running");

    // Nothing reached the broker: no message from the gate, no session for its user.
    let from_gate: Vec<_> = w
        .centre
        .all()
        .into_iter()
        .filter(|m| m.topic.starts_with("acs/hq/east-1/"))
        .map(|m| m.topic)
        .collect();
    assert!(from_gate.is_empty(), "{from_gate:?}");
    let log = w.broker.log_text();
    assert!(!log.contains(&format!("u'{GATE_USER}'")), "{log}");
    assert!(!w.daemon.log().contains("MQTT connected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gate_without_a_client_certificate_is_told_the_broker_requires_one() {
    let (secure, broker) = Secure::start().await;
    let login = secure.pki.dir.path().join("mqtt-auth");
    login_file(&login, GATE_USER, GATE_PASSWORD);
    let extra = format!("[mqtt.tls]\nca_file = \"{}\"\n", secure.pki.ca.display())
        + &auth_file_toml(&login);
    let w = World::over_tls(&secure, broker, &extra, &[], false).await;
    let line = format!(
        "TLS handshake with broker 127.0.0.1:{} failed: the broker requires a client \
         certificate: set mqtt.tls.cert_file and key_file: received fatal alert: \
         CertificateRequired",
        secure.tls_port
    );
    wait_for("the TLS error in gated's log", DEADLINE, || {
        w.daemon.log().contains(&line).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_a_clear_error_that_names_the_file_not_the_secret() {
    let (secure, broker) = Secure::start().await;
    let login = secure.pki.dir.path().join("mqtt-auth");
    login_file(&login, GATE_USER, "not-the-password");
    let extra = secure.pki.gate_toml(&secure.pki.ca) + &auth_file_toml(&login);
    let w = World::over_tls(&secure, broker, &extra, &[], false).await;
    let line = format!(
        "MQTT login to broker 127.0.0.1:{} failed: the broker refused the username and \
         password of mqtt.auth.file {} (NotAuthorized): check them against the broker's \
         password_file",
        secure.tls_port,
        login.display()
    );
    wait_for("the login error in gated's log", DEADLINE, || {
        w.daemon.log().contains(&line).then_some(())
    })
    .await;
    let log = w.daemon.log();
    assert!(
        !log.contains("not-the-password") && !log.contains(GATE_USER),
        "{log}"
    );
}

/// In-process, to read the health registry: a certificate without the configured name shows
/// as `tls_error` (not `disconnected`) for both connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_certificate_without_the_server_name_shows_as_tls_error() {
    let (secure, _broker) = Secure::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let login = dir.path().join("mqtt-auth");
    login_file(&login, GATE_USER, GATE_PASSWORD);
    let text = format!(
        "[gate]\nsite = \"hq\"\ngate = \"east-1\"\n[store]\npath = \"{db}\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n[[trust.key]]\nid = \"ops-test\"\n\
         public = \"{admin}\"\n{tls}server_name = \"broker.invalid\"\n{auth}",
        db = dir.path().join("gated.db").display(),
        port = secure.tls_port,
        admin = admin().public_b64(),
        tls = secure.pki.gate_toml(&secure.pki.ca),
        auth = auth_file_toml(&login),
    );
    let cfg = gated::config::Config::parse("tls.toml", &text).expect("config");
    let gate = gated::gate::Gate::start(&cfg).await.expect("start");
    let health = gate.shared.health.clone();
    wait_for("tls_error for both connections", DEADLINE, || {
        let h = health.snapshot();
        (h.get("broker").map(String::as_str) == Some("tls_error")
            && h.get("mqtt_lists").map(String::as_str) == Some("tls_error"))
        .then_some(())
    })
    .await;
    gate.stop().await;
}

/// Runs `gated run` on `config` until it exits (within the deadline): stderr and exit code.
async fn gated_run(dir: &Path, config: &str, env: &[(&str, &Path)]) -> (Option<i32>, String) {
    let path = dir.join("gated.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_gated"));
    cmd.arg("run")
        .arg("--config")
        .arg(&path)
        .env_remove("CREDENTIALS_DIRECTORY")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .expect("gated must stop at start")
        .expect("run gated");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn gated_run_stops_at_start_on_a_bad_tls_or_auth_file_and_names_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = format!(
        "[gate]\nsite = \"hq\"\ngate = \"east-1\"\n[store]\npath = \"{}\"\n\
         [mqtt]\nhost = \"127.0.0.1\"\nport = 1\n[trust]\nallow_unsigned = true\n",
        dir.path().join("gated.db").display()
    );

    let missing = dir.path().join("no-such-ca.pem");
    let (code, err) = gated_run(
        dir.path(),
        &format!("{base}[mqtt.tls]\nca_file = \"{}\"\n", missing.display()),
        &[],
    )
    .await;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains(&format!(
            "mqtt.tls.ca_file {}: cannot read",
            missing.display()
        )),
        "{err}"
    );

    // One line, and readable by others: refused, and the mode is warned about.
    let one_line = dir.path().join("mqtt-auth");
    std::fs::write(&one_line, "gate-hq-east-1\n").expect("write");
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&one_line, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    }
    let (code, err) = gated_run(
        dir.path(),
        &format!("{base}{}", auth_file_toml(&one_line)),
        &[],
    )
    .await;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains(&format!(
            "mqtt.auth.file {}: must have two lines: username, then password",
            one_line.display()
        )),
        "{err}"
    );
    assert!(
        err.contains("readable by group or others (mode 644)"),
        "{err}"
    );

    let credential = format!("{base}[mqtt.auth]\nsystemd_credential = \"mqtt-auth\"\n");
    let (code, err) = gated_run(dir.path(), &credential, &[]).await;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains(
            "systemd credential `mqtt-auth`: $CREDENTIALS_DIRECTORY is not set (is \
             LoadCredential= in the unit?)"
        ),
        "{err}"
    );
    let creds = tempfile::tempdir().expect("tempdir");
    let (code, err) = gated_run(
        dir.path(),
        &credential,
        &[("CREDENTIALS_DIRECTORY", creds.path())],
    )
    .await;
    assert!(code.is_some_and(|c| c != 0), "exit {code:?}: {err}");
    assert!(
        err.contains(&format!(
            "systemd credential `mqtt-auth` ({}): cannot read",
            creds.path().join("mqtt-auth").display()
        )),
        "{err}"
    );
    assert!(
        !dir.path().join("gated.db").exists(),
        "nothing starts before the files are read"
    );
}

/// A per-user ACL (the password setup): a gate publishes only under its own topics and reads
/// only its site's lists and its own commands; the centre reads all and sends both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_per_user_acl_keeps_a_gate_to_its_own_topics() {
    let (secure, _broker) = Secure::start().await;
    let centre = Peer::connect(
        secure.client_options("acl-centre", CENTRE_USER, CENTRE_PASSWORD),
        &["acs/#"],
    )
    .await;
    let east = Peer::connect(
        secure.client_options("gated-hq-east-1", GATE_USER, GATE_PASSWORD),
        &[
            "acs/hq/east-1/cmd",
            "acs/hq/west-1/cmd",
            "acs/hq/lists/#",
            "acs/other/lists/#",
        ],
    )
    .await;
    eprintln!("mosquitto's SUBACK for the gate: {:?}", east.subacks());

    // Reading. One connection delivers in order: once the last message is in, an earlier one
    // that was allowed would be in too.
    centre.publish("acs/hq/west-1/cmd", "for west-1").await;
    centre
        .publish("acs/other/lists/staff", "other site's list")
        .await;
    centre.publish("acs/hq/lists/staff", "hq list").await;
    centre.publish("acs/hq/east-1/cmd", "for east-1").await;
    east.wait("acs/hq/east-1/cmd", "for east-1").await;
    assert_eq!(east.on("acs/hq/lists/staff"), ["hq list"]);
    assert!(east.on("acs/hq/west-1/cmd").is_empty(), "read west-1's cmd");
    assert!(
        east.on("acs/other/lists/staff").is_empty(),
        "read another site's list"
    );

    // Writing: forged messages first, then its own event.
    east.publish("acs/hq/west-1/event", "forged west-1 event")
        .await;
    east.publish("acs/hq/lists/staff", "forged list").await;
    east.publish("acs/hq/east-1/cmd", "self-issued cmd").await;
    east.publish("acs/hq/east-1/event", "own event").await;
    centre.wait("acs/hq/east-1/event", "own event").await;
    assert!(
        centre.on("acs/hq/west-1/event").is_empty(),
        "east-1 published as west-1"
    );
    assert_eq!(
        centre.on("acs/hq/lists/staff"),
        ["hq list"],
        "east-1 published a list"
    );
    assert_eq!(
        centre.on("acs/hq/east-1/cmd"),
        ["for east-1"],
        "east-1 published a command"
    );

    // The gate's second connection (lists) works under the same user.
    let lists = Peer::connect(
        secure.client_options("gated-hq-east-1-lists", GATE_USER, GATE_PASSWORD),
        &["acs/hq/lists/#"],
    )
    .await;
    centre.publish("acs/hq/lists/visitors", "hq visitors").await;
    lists.wait("acs/hq/lists/visitors", "hq visitors").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gatectl_speaks_tls_with_a_client_certificate_and_a_login_file() {
    let (secure, broker) = Secure::start().await;
    let login = secure.pki.dir.path().join("mqtt-auth");
    login_file(&login, GATE_USER, GATE_PASSWORD);
    let extra = secure.pki.gate_toml(&secure.pki.ca) + &auth_file_toml(&login);
    let w = World::over_tls(&secure, broker, &extra, &[], true).await;

    let centre_login = secure.pki.dir.path().join("centre-auth");
    login_file(&centre_login, CENTRE_USER, CENTRE_PASSWORD);
    let g = Gatectl::new(secure.tls_port);
    let p = |p: &Path| p.display().to_string();
    let (ca, cert, key, auth) = (
        p(&secure.pki.ca),
        p(&secure.pki.client_cert),
        p(&secure.pki.client_key),
        p(&centre_login),
    );
    let tls = [
        "--tls-ca",
        &ca,
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--auth-file",
        &auth,
    ];
    let ran = g
        .run(
            &[
                &tls[..],
                &["cmd", "open", "--gate", "east-1", "--lane", "0"],
            ]
            .concat(),
        )
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("east-1: open ok"), "{ran:?}");
    w.centre
        .wait_json("the override, commanded over TLS", EVENT, |e| {
            e["reason"] == "override_remote"
        })
        .await;

    // The wrong CA: a clear error, nothing sent.
    let other = p(&secure.pki.other_ca());
    let ran = g
        .run(&[
            "--tls-ca",
            &other,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--auth-file",
            &auth,
            "cmd",
            "resync",
            "--gate",
            "east-1",
        ])
        .await;
    assert_ne!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stderr.contains("certificate is not trusted by") && ran.stderr.contains(&other),
        "{ran:?}"
    );
    assert!(!ran.stderr.contains(CENTRE_PASSWORD), "{ran:?}");
}
