//! The checkpoint thread against a real SQLite file.

use super::*;
use crate::core::Policy;
use crate::store::{Db, GateId};

const NOW: i64 = 1_795_000_000_000;

fn open(dir: &tempfile::TempDir) -> Db {
    let gate = GateId {
        site: "hq".into(),
        gate: "east-1".into(),
    };
    Db::open(&dir.path().join("g.db"), gate, Policy::default(), 1000).expect("open db")
}

/// The checkpoint thread's connection, like the owner's, is replaced after a read-only error:
/// pages committed to the log reach the database file again.
#[test]
fn the_checkpoint_thread_opens_a_new_connection_after_a_read_only_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("g.db");
    let mut db = open(&dir);
    let mut c = Checkpointer::open(&path).expect("checkpointer");
    c.conn =
        rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("read-only");
    db.probe(NOW).expect("write");
    let before = std::fs::read(&path).expect("read");
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    let t = std::thread::spawn(move || c.run(&stop));
    let end = Instant::now() + std::time::Duration::from_secs(5);
    while std::fs::read(&path).expect("read") == before {
        assert!(
            Instant::now() < end,
            "the log was not copied into the database within 5 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    drop(stop_tx);
    t.join().expect("checkpoint thread");
}
