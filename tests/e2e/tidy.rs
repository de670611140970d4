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

/// The layers of `src/`, low to high (ARCHITECTURE.md, "Invariants"). A module may import
/// from its own layer and the layers below it, never from a layer above: that is what keeps
/// the code free of import circles, and what lets a lower layer be read, tested and changed
/// without the ones above. `core` is the crate `gated-core` (re-exported as `gated::core`);
/// the contract is the crate `gated-contract`, which cargo already keeps below gated. `logs`
/// is the rate-limited logging every layer uses, and imports nothing of the crate.
/// `src/main.rs` and `src/bin/` are the top (each its own crate: `crate::` there is not the
/// library), and `src/lib.rs` only declares the modules; neither is read.
const LAYERS: &[&[&str]] = &[
    &["core", "logs", "wall"],
    &["config"],
    &["store"],
    &["hw", "sync"],
    &["lane", "control", "clock", "passage"],
    &["gate"],
    &["console", "demo", "admin"],
];

/// Items the crate root re-exports from a module (`#[macro_export]` macros), by that module.
const ROOT_ITEMS: &[(&str, &str)] = &[("limited_error", "logs")];

/// The upward imports that exist today (issue 14's import circle), file → module imported.
/// Each is a debt: the test fails on an upward import not listed here, AND on an entry here
/// that is no longer imported, so this list can only shrink. Remove an entry when the
/// refactor that ends it lands; never add one.
const UPWARD_ALLOWED: &[(&str, &str)] = &[
    // `gate::Shared` (store handle, health, mode, decision broadcast, outbox kick), held by
    // the device tasks, the clock watcher, Control, the MQTT link and the passage task; issue
    // 14 item 4 gives each a narrow handle instead. The passage task also takes the decision
    // broadcast's `gate::Decided`.
    ("src/clock.rs", "gate"),
    ("src/control.rs", "gate"),
    ("src/hw/gpio.rs", "gate"),
    ("src/hw/panel.rs", "gate"),
    ("src/hw/reader.rs", "gate"),
    ("src/hw/relay.rs", "gate"),
    ("src/hw/snapshot.rs", "gate"),
    ("src/passage.rs", "gate"),
    ("src/sync/link.rs", "gate"),
    // The link puts the clock watcher's state in the status under `clock::HEALTH_KEY`.
    ("src/sync/link.rs", "clock"),
    // The downlink carries out remote commands through `control::Control` (and `Origin`);
    // an explicit command handle passed down from the gate would end it.
    ("src/sync/downlink.rs", "control"),
];

fn layer_of(module: &str) -> Option<usize> {
    let module = ROOT_ITEMS
        .iter()
        .find(|(item, _)| *item == module)
        .map_or(module, |(_, m)| m);
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// The first path segment of every `crate::` path in `text`, with its line number and the path
/// as written. A group (`crate::{a::X, b}`) yields one per member. Comments are skipped: a
/// doc link is not an import.
fn crate_paths(text: &str) -> Vec<(usize, String, String)> {
    let code: String = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("//") {
                ""
            } else {
                // A trailing comment, as rustfmt writes it; a string holding " // " is cut
                // short, which can only hide an import written after it on the same line.
                line.split(" // ").next().unwrap_or("")
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        // `pub(crate)` and identifiers ending in `crate` are not paths.
        if code[..at].ends_with(|c: char| ident(c) && c != '$') {
            continue;
        }
        let line = code[..at].matches('\n').count() + 1;
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // The members of the group, split at its top-level commas.
            let (mut depth, mut start) = (0usize, 0usize);
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        let member = group[start..i].trim();
                        if !member.is_empty() {
                            let head: String = member.chars().take_while(|&c| ident(c)).collect();
                            out.push((line, head, format!("crate::{member}")));
                        }
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let member = group[start..i].trim();
                        let head: String = member.chars().take_while(|&c| ident(c)).collect();
                        out.push((line, head, format!("crate::{member}")));
                        start = i + 1;
                    }
                    _ => {}
                }
            }
        } else {
            let path: String = rest.chars().take_while(|&c| ident(c) || c == ':').collect();
            let head: String = path.chars().take_while(|&c| ident(c)).collect();
            let group = if rest[path.len()..].starts_with('{') {
                "{…}"
            } else {
                ""
            };
            out.push((line, head, format!("crate::{path}{group}")));
        }
    }
    out
}

/// The module a file of `src/` belongs to: its first directory, or its name.
fn module_of(relative: &Path) -> String {
    let first = relative.components().next().expect("a path under src/");
    let first = first.as_os_str().to_string_lossy();
    first.strip_suffix(".rs").unwrap_or(&first).to_string()
}

#[test]
fn no_module_of_src_imports_from_a_layer_above_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let files = sources(&src);
    assert!(!files.is_empty(), "src has sources");
    let mut upward: Vec<(String, String, usize, String)> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    for (path, text) in &files {
        let relative = Path::new(path)
            .strip_prefix(&src)
            .expect("a file under src/");
        let file = format!("src/{}", relative.display());
        let module = module_of(relative);
        if module == "main" || module == "bin" || module == "lib" {
            continue;
        }
        let Some(own) = layer_of(&module) else {
            errors.push(format!(
                "{file}: module `{module}` has no layer: add it to LAYERS in tests/e2e/tidy.rs \
                 and to the layer order in ARCHITECTURE.md"
            ));
            continue;
        };
        for (line, head, written) in crate_paths(text) {
            match layer_of(&head) {
                None => errors.push(format!(
                    "{file}:{line}: `{written}` names `{head}`, which has no layer in LAYERS"
                )),
                Some(theirs) if theirs > own => {
                    upward.push((file.clone(), head, line, written));
                }
                Some(_) => {}
            }
        }
    }
    for (file, head, line, written) in &upward {
        if !UPWARD_ALLOWED.contains(&(file.as_str(), head.as_str())) {
            let module = module_of(Path::new(file.strip_prefix("src/").unwrap_or(file)));
            errors.push(format!(
                "{file}:{line} imports `{written}`: `{module}` must not import from `{head}`, \
                 a higher layer (ARCHITECTURE.md, \"Invariants\"); pass what it needs down \
                 instead"
            ));
        }
    }
    for (file, head) in UPWARD_ALLOWED {
        if !upward.iter().any(|(f, h, ..)| f == file && h == head) {
            errors.push(format!(
                "UPWARD_ALLOWED lists {file} → `{head}`, which it does not import (any more): remove the \
                 entry (the list only shrinks)"
            ));
        }
    }
    assert!(
        errors.is_empty(),
        "layering (tests/e2e/tidy.rs):\n{}",
        errors.join("\n")
    );
}
