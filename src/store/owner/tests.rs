//! The owner thread's write health, without a store.

use super::*;

/// Failing writes are logged once and then once per 10 s with their count (not 66 lines a
/// second), and after 60 s of nothing but failures the process is to end; one success resets.
#[test]
fn failing_writes_are_logged_sparingly_and_given_up_after_a_bound() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    let mut h = WriteHealth::new(t0);
    assert_eq!(h.failed(at(0), false), Failing::Log { failures: 1 });
    let quiet = (1..660)
        .filter(|i| h.failed(at(i * 15), false) == Failing::Quiet)
        .count();
    assert_eq!(quiet, 659, "66 failures a second for 10 s: no line");
    assert_eq!(h.failed(at(10_000), false), Failing::Log { failures: 660 });
    assert_eq!(h.failed(at(59_999), false), Failing::Log { failures: 1 });
    assert_eq!(h.failed(at(60_000), false), Failing::GiveUp);

    h.passes = 3;
    assert_eq!(
        h.succeeded(at(60_500)),
        Some((std::time::Duration::from_millis(60_500), 3))
    );
    assert_eq!(h.succeeded(at(60_600)), None, "recovered once");
    assert_eq!(h.failed(at(61_000), false), Failing::Log { failures: 1 });
    assert_eq!(h.failed(at(120_999), false), Failing::Log { failures: 1 });
    assert_eq!(
        h.failed(at(121_000), false),
        Failing::GiveUp,
        "the bound starts again"
    );
}

/// While writes fail the owner thread tries again after 1 s, doubling to 8 s, and opens a
/// new connection only after the kind of error a new one may cure; an idle store is probed
/// 30 s after its last write.
#[test]
fn failing_writes_are_retried_with_backoff_and_an_idle_store_is_probed() {
    let t0 = Instant::now();
    let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
    let s = std::time::Duration::from_secs;
    let mut h = WriteHealth::new(t0);
    assert_eq!(h.wait(t0), s(30), "idle: the probe");
    h.failed(at(0), true);
    assert_eq!(h.wait(at(0)), s(1));
    assert!(!h.reconnect_due(at(999)) && h.reconnect_due(at(1000)));
    h.failed(at(500), true); // a pass in between does not move the next try
    assert_eq!(h.wait(at(500)), std::time::Duration::from_millis(500));
    let mut t = 1000;
    for want in [2, 4, 8, 8] {
        h.failed(at(t), true);
        assert_eq!(h.wait(at(t)), s(want), "after the try at {t} ms");
        t += want * 1000;
    }
    h.failed(at(t), false);
    assert!(
        !h.reconnect_due(at(t + 60_000)),
        "busy: the same connection"
    );
    h.succeeded(at(t + 1));
    assert_eq!(h.wait(at(t + 1)), s(30));
}

fn sqlite_error(code: i32) -> StoreError {
    StoreError::Sqlite(rusqlite::Error::SqliteFailure(
        rusqlite::ffi::Error::new(code),
        None,
    ))
}

#[test]
fn read_only_io_and_open_errors_call_for_a_new_connection_busy_and_full_do_not() {
    use rusqlite::ffi;
    for code in [
        ffi::SQLITE_READONLY,
        ffi::SQLITE_READONLY_RECOVERY,
        ffi::SQLITE_IOERR,
        ffi::SQLITE_IOERR_WRITE,
        ffi::SQLITE_IOERR_FSYNC,
        ffi::SQLITE_CANTOPEN,
    ] {
        assert!(needs_reconnect(&sqlite_error(code)), "{code}");
    }
    for code in [ffi::SQLITE_BUSY, ffi::SQLITE_FULL, ffi::SQLITE_CORRUPT] {
        assert!(!needs_reconnect(&sqlite_error(code)), "{code}");
    }
}
