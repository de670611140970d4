//! Face-terminal snapshots against the real binary: after a pass, the terminal's image is read
//! (after the release), shrunk to a 320 px JPEG, stored, recorded as a later fact of the pass
//! (`snapshot` naming it) and uploaded on `{root}/{site}/{gate}/snapshot/{pass id}`. A hostile
//! image (a decompression bomb, garbage) is a `snapshot_rejected` alarm, and the gate goes on.
//! Only the newest `keep` thumbnails are kept.

use std::io::Cursor;

use hw_sim::KIND_CARD;
use serde_json::Value;

use crate::harness::*;

fn jpeg(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut out, image::ImageFormat::Jpeg)
        .expect("encode");
    out.into_inner()
}

/// A PNG that declares 60000 x 60000 pixels in a few dozen bytes.
fn png_bomb() -> Vec<u8> {
    let mut ihdr = b"IHDR".to_vec();
    ihdr.extend(60_000u32.to_be_bytes());
    ihdr.extend(60_000u32.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend(13u32.to_be_bytes());
    out.extend(&ihdr);
    out.extend(crc32(&ihdr).to_be_bytes());
    // A tiny IDAT (an empty zlib stream): the decoder reads up to it before it sizes anything.
    let mut idat = b"IDAT".to_vec();
    idat.extend(b"x\x9c\x03\x00\x00\x00\x00\x01");
    out.extend(8u32.to_be_bytes());
    out.extend(&idat);
    out.extend(crc32(&idat).to_be_bytes());
    out.extend(b"\0\0\0\0IEND\xaeB`\x82");
    out
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Presents the staff card with `image` on reader2 (the face terminal here) and returns the
/// pass event.
async fn pass_with(devices: &Devices, centre: &Centre, image: Vec<u8>) -> Value {
    let before = centre.on(EVENT).len();
    let seq = devices
        .reader2
        .present_with_snapshot(KIND_CARD, "0012345678", 0, image)
        .expect("queued");
    wait_for("the pass acked", DEADLINE, || {
        devices.reader2.acked().contains(&seq).then_some(())
    })
    .await;
    wait_for("the pass event", DEADLINE, || {
        centre.on(EVENT)[before..]
            .iter()
            .map(Msg::json)
            .find(|e| e["reason"] == "staff")
    })
    .await
}

#[tokio::test]
async fn a_snapshot_is_shrunk_stored_uploaded_and_a_hostile_one_rejected() {
    let broker = Broker::start().await;
    let centre = Centre::with_staff(&broker).await;
    let devices = Devices::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_text(&dir.path().join("gated.db"), broker.port, &devices);
    let config = config.replace(
        "name = \"reader2\"\n",
        "name = \"reader2\"\nsnapshots = true\n",
    ) + "[snapshot]\nkeep = 2\nmax_bytes = 100000\n";
    assert!(config.contains("snapshots = true"));
    let daemon = Daemon::start_with_env(dir.path(), &config, &[]);
    centre
        .wait_json("the ack of staff@1", ACK, |a| a["ref"] == "staff@1")
        .await;

    let pass = pass_with(&devices, &centre, jpeg(1280, 720)).await;
    let id = pass["id"].as_str().expect("id").to_string();
    // The lane was released before the snapshot was read.
    let pulse = devices
        .relay
        .pulses()
        .into_iter()
        .find(|p| p.lane == 1 && p.exit)
        .expect("lane 1 released");
    let selected = wait_for("the snapshot selected", DEADLINE, || {
        devices.reader2.snapshot_selected_at()
    })
    .await;
    assert!(
        pulse.at <= selected,
        "the snapshot was read before the release: {:?} > {selected:?}",
        pulse.at
    );
    let fact = centre
        .wait_json("the snapshot fact", EVENT, |e| {
            e["reason"] == "passage" && e["ref"] == id.as_str()
        })
        .await;
    assert_eq!(fact["snapshot"], format!("snapshot/{id}"), "{fact}");
    let topic = format!("acs/hq/east-1/snapshot/{id}");
    let upload = wait_for("the uploaded thumbnail", DEADLINE, || {
        centre.on(&topic).first().cloned()
    })
    .await;
    let thumb = image::load_from_memory_with_format(&upload.payload, image::ImageFormat::Jpeg)
        .expect("the upload is a JPEG");
    assert_eq!((thumb.width(), thumb.height()), (320, 180));

    // A decompression bomb and plain garbage: alarms naming what was wrong; no crash.
    pass_with(&devices, &centre, png_bomb()).await;
    let a = centre
        .wait_json("the bomb rejected", ALARM, |a| {
            a["alarm"] == "snapshot_rejected"
        })
        .await;
    assert_eq!(a["source"], "reader2");
    assert!(
        a["detail"]
            .as_str()
            .is_some_and(|d| d.contains("60000x60000")),
        "{a}"
    );
    pass_with(&devices, &centre, b"not an image at all".to_vec()).await;
    wait_for("the garbage rejected", DEADLINE, || {
        let n = centre
            .on(ALARM)
            .iter()
            .map(Msg::json)
            .filter(|a| a["alarm"] == "snapshot_rejected")
            .count();
        (n == 2).then_some(())
    })
    .await;

    // Announced larger than [snapshot] max_bytes (100000 here): refused unread.
    pass_with(&devices, &centre, vec![0xFF; 110_000]).await;
    let a = wait_for("the oversized snapshot refused", DEADLINE, || {
        centre.on(ALARM).iter().map(Msg::json).find(|a| {
            a["alarm"] == "snapshot_rejected"
                && a["detail"]
                    .as_str()
                    .is_some_and(|d| d.contains("announced 110000 bytes"))
        })
    })
    .await;
    assert_eq!(a["source"], "reader2");

    // Retention: two more good snapshots; only the newest two are kept.
    // Encoded before either is presented: encoding blocks this thread, which also serves the
    // simulated terminal, and the gate reading the second snapshot meanwhile would time out.
    let (landscape, portrait) = (jpeg(640, 480), jpeg(480, 640));
    let second = pass_with(&devices, &centre, landscape).await;
    let third = pass_with(&devices, &centre, portrait).await;
    for p in [&second, &third] {
        let t = format!(
            "acs/hq/east-1/snapshot/{}",
            p["id"].as_str().unwrap_or_default()
        );
        let up = wait_for("an upload", DEADLINE, || centre.on(&t).first().cloned()).await;
        let img = image::load_from_memory(&up.payload).expect("a JPEG");
        assert_eq!(img.width().max(img.height()), 320);
    }
    let db = rusqlite::Connection::open(dir.path().join("gated.db")).expect("open the store");
    let kept: Vec<String> = db
        .prepare("SELECT event_id FROM snapshot ORDER BY ts")
        .expect("query")
        .query_map([], |r| r.get(0))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("ids");
    assert_eq!(
        kept,
        vec![
            second["id"].as_str().unwrap_or_default().to_string(),
            third["id"].as_str().unwrap_or_default().to_string()
        ]
    );
    assert!(!daemon.log().contains("panicked"));
}
