//! Architecture invariants that a grep can enforce (as rust-analyzer's tidy test does).

use std::path::Path;

fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).expect("read source");
            out.push((path.display().to_string(), text));
        }
    }
    out
}

#[test]
fn the_core_does_no_io_and_reads_no_clock() {
    let core = Path::new(env!("CARGO_MANIFEST_DIR")).join("core/src");
    let files = sources(&core);
    assert!(!files.is_empty(), "core/src has sources");
    let forbidden = [
        "tokio::",
        "rusqlite::",
        "rumqttc::",
        "tokio_modbus::",
        "rppal::",
        "std::fs",
        "std::net",
        "std::thread",
        "::now(",
    ];
    for (path, text) in files {
        for word in forbidden {
            assert!(
                !text.contains(word),
                "{path} names `{word}`: the core must stay pure"
            );
        }
    }
}

/// The contract crate is data and its checks: a central service or a tool that speaks the
/// contract must be able to use it without an async runtime, SQLite or an MQTT client.
#[test]
fn the_contract_crate_holds_no_runtime_store_or_mqtt_client() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("contract");
    let mut files = sources(&dir.join("src"));
    assert!(!files.is_empty(), "contract/src has sources");
    let manifest = dir.join("Cargo.toml");
    files.push((
        manifest.display().to_string(),
        std::fs::read_to_string(&manifest).expect("read contract/Cargo.toml"),
    ));
    for (path, text) in files {
        for word in ["tokio", "rusqlite", "rumqttc"] {
            // The manifest's comment names them to say they are not there.
            let named = text
                .lines()
                .filter(|l| !l.trim_start().starts_with('#') && !l.trim_start().starts_with("//"))
                .any(|l| l.contains(word));
            assert!(
                !named,
                "{path} names `{word}`: the contract crate holds no runtime, store or MQTT client"
            );
        }
    }
}
