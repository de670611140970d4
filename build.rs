//! Stamps the build time into the binary (`GATED_BUILD_MS`): a clock that reads earlier than
//! the build has certainly reset (a Pi has no real-time clock). `SOURCE_DATE_EPOCH` wins when
//! set (reproducible builds). A day is taken off, so that a build machine whose clock runs a
//! little ahead does not leave the gates distrusting a correct clock.

use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=src");
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0)
        });
    let ms = (secs - 86_400).max(0) * 1000;
    println!("cargo:rustc-env=GATED_BUILD_MS={ms}");
}
