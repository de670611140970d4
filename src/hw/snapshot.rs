//! Face-terminal snapshots: untrusted JPEG/PNG bytes read over Modbus, turned into a small JPEG
//! thumbnail to store and upload.
//!
//! The bytes are hostile (malformed, truncated, decompression bombs, huge), so the pipeline is:
//!
//! 1. refuse on length alone (`max_bytes`, empty) before touching the content;
//! 2. guess the format from the magic bytes; only JPEG and PNG go on;
//! 3. parse the header only and refuse dimensions over `max_width` x `max_height` before any
//!    pixel buffer exists (a 60000x60000 PNG bomb costs a few hundred bytes of parsing);
//! 4. decode with `image::Limits` set on the decoder (strict width/height, so a header that lies
//!    is still caught) and with the output buffer reserved against `max_alloc` first;
//! 5. shrink (aspect kept, longest side `thumb_px`, never upscaled), RGB8, JPEG at
//!    `jpeg_quality`.
//!
//! [`thumbnail`] is pure and blocking; the caller runs it in `spawn_blocking`.

use std::io::Cursor;

use image::codecs::jpeg::JpegEncoder;
use image::error::{ImageError, LimitErrorKind};
use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

/// Bounds applied to one snapshot.
#[derive(Clone, Debug)]
pub struct SnapshotLimits {
    /// Input size limit in bytes, checked before anything else.
    pub max_bytes: usize,
    /// Largest accepted source width in pixels.
    pub max_width: u32,
    /// Largest accepted source height in pixels.
    pub max_height: u32,
    /// Decoder allocation limit in bytes (the decoded image buffer counts towards it).
    pub max_alloc: u64,
    /// Longest side of the thumbnail in pixels (0 is treated as 1).
    pub thumb_px: u32,
    /// JPEG quality of the thumbnail, 1..=100 (clamped).
    pub jpeg_quality: u8,
}

/// The limits a config's `[snapshot]` sets; the decoder's allocation limit is not configured.
impl From<&crate::config::SnapshotConfig> for SnapshotLimits {
    fn from(c: &crate::config::SnapshotConfig) -> Self {
        Self {
            max_bytes: c.max_bytes,
            max_width: c.max_width,
            max_height: c.max_height,
            max_alloc: 64 * 1024 * 1024,
            thumb_px: c.thumb_px,
            jpeg_quality: c.jpeg_quality,
        }
    }
}

/// Those of a config without `[snapshot]`: the defaults are written once, in config.
impl Default for SnapshotLimits {
    fn default() -> Self {
        Self::from(&crate::config::SnapshotConfig::default())
    }
}

/// Why a snapshot was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {bytes} bytes, over the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("snapshot is empty (0 bytes)")]
    Empty,
    #[error("snapshot is not a JPEG or PNG image (unrecognised or unsupported format)")]
    UnknownFormat,
    #[error(
        "snapshot is {width}x{height} pixels, over the limit of {max_width}x{max_height} pixels"
    )]
    Dimensions {
        width: u32,
        height: u32,
        max_width: u32,
        max_height: u32,
    },
    #[error("cannot decode snapshot: {0}")]
    Decode(String),
    #[error("cannot encode thumbnail: {0}")]
    Encode(String),
}

/// A JPEG thumbnail of a snapshot, with what it was made from.
#[derive(Clone, Debug)]
pub struct Thumbnail {
    /// JPEG bytes (baseline, RGB).
    pub jpeg: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// `"jpeg"` or `"png"`.
    pub source_format: &'static str,
    pub source_width: u32,
    pub source_height: u32,
}

/// Turns untrusted snapshot bytes into a JPEG thumbnail.
///
/// Pure and blocking (the caller runs it in `spawn_blocking`). Never panics on any input;
/// allocation is bounded by `max_bytes` (input copy), `max_alloc` (decoded buffer) and the
/// thumbnail size.
pub fn thumbnail(bytes: &[u8], limits: &SnapshotLimits) -> Result<Thumbnail, SnapshotError> {
    // 1. Length first: nothing else looks at the bytes before this.
    if bytes.len() > limits.max_bytes {
        return Err(SnapshotError::TooLarge {
            bytes: bytes.len(),
            max: limits.max_bytes,
        });
    }
    if bytes.is_empty() {
        return Err(SnapshotError::Empty);
    }

    // 2. Format from the magic bytes only.
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| SnapshotError::Decode(format!("reading the format signature: {e}")))?;
    let (format, source_format) = match reader.format() {
        Some(ImageFormat::Jpeg) => (ImageFormat::Jpeg, "jpeg"),
        Some(ImageFormat::Png) => (ImageFormat::Png, "png"),
        _ => return Err(SnapshotError::UnknownFormat),
    };

    // 3. Header only. No width/height limits here, so that the decoder reports the real
    // numbers instead of a bare "limit exceeded" (the PNG decoder checks dimension limits in its
    // constructor); `max_alloc` is set because the PNG decoder sizes its chunk buffers from it.
    let mut header_limits = Limits::no_limits();
    header_limits.max_alloc = Some(limits.max_alloc);
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    reader.limits(header_limits);
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| decode_error(source_format, "header", &e))?;
    let (width, height) = decoder.dimensions();
    if width > limits.max_width || height > limits.max_height {
        return Err(SnapshotError::Dimensions {
            width,
            height,
            max_width: limits.max_width,
            max_height: limits.max_height,
        });
    }
    if width == 0 || height == 0 {
        return Err(SnapshotError::Decode(format!(
            "{source_format} header declares an empty image ({width}x{height})"
        )));
    }

    // 4. Decode with the full limits on the decoder. `set_limits` re-checks the dimensions
    // (strict); the JPEG decoder also hands them to zune-jpeg, which enforces them on the frame
    // it actually decodes. `DynamicImage::from_decoder` itself does NOT charge the output
    // buffer to `max_alloc` (only `ImageReader::decode` does, and the JPEG decoder ignores
    // `max_alloc` entirely), so reserve it here before the buffer is allocated.
    let mut decode_limits = Limits::no_limits();
    decode_limits.max_image_width = Some(limits.max_width);
    decode_limits.max_image_height = Some(limits.max_height);
    decode_limits.max_alloc = Some(limits.max_alloc);
    let needed = decoder.total_bytes();
    if needed > limits.max_alloc {
        return Err(SnapshotError::Decode(format!(
            "{source_format} image {width}x{height} ({:?}) needs {needed} bytes, over the \
             decoder allocation limit of {} bytes",
            decoder.color_type(),
            limits.max_alloc
        )));
    }
    let mut buffer_limits = decode_limits.clone();
    buffer_limits
        .reserve(needed)
        .map_err(|e| decode_error(source_format, "allocation", &e))?;
    decoder
        .set_limits(decode_limits)
        .map_err(|e| decode_error(source_format, "limits", &e))?;
    let image = DynamicImage::from_decoder(decoder)
        .map_err(|e| decode_error(source_format, "pixels", &e))?;
    // Belt and braces: what came out must be what the header promised.
    if image.width() != width || image.height() != height {
        return Err(SnapshotError::Decode(format!(
            "{source_format} decoded to {}x{} but its header declares {width}x{height}",
            image.width(),
            image.height()
        )));
    }

    // 5. Shrink, RGB8, JPEG.
    let (thumb_w, thumb_h) = fit_within(width, height, limits.thumb_px.max(1));
    let rgb = if (thumb_w, thumb_h) == (width, height) {
        image.into_rgb8()
    } else {
        image.thumbnail_exact(thumb_w, thumb_h).into_rgb8()
    };
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, limits.jpeg_quality.clamp(1, 100))
        .encode_image(&rgb)
        .map_err(|e| SnapshotError::Encode(format!("{thumb_w}x{thumb_h} RGB8 JPEG: {e}")))?;

    Ok(Thumbnail {
        jpeg,
        width: thumb_w,
        height: thumb_h,
        source_format,
        source_width: width,
        source_height: height,
    })
}

/// The size that keeps the aspect ratio with the longest side `max_side`, or the size itself
/// if it already fits (never upscales). Both sides are at least 1.
fn fit_within(width: u32, height: u32, max_side: u32) -> (u32, u32) {
    let longest = width.max(height);
    if longest <= max_side || longest == 0 {
        return (width, height);
    }
    // Rounded `side * max_side / longest`, in u64 so it cannot overflow; the result is
    // <= max_side, so it fits back in u32.
    let scale = |side: u32| -> u32 {
        let (side, max_side, longest) = (u64::from(side), u64::from(max_side), u64::from(longest));
        let scaled = (side * max_side + longest / 2) / longest;
        u32::try_from(scaled.max(1)).unwrap_or(u32::MAX)
    };
    (scale(width), scale(height))
}

/// Maps an `image` error at a given stage to a message naming the format and the stage.
fn decode_error(format: &str, stage: &str, e: &ImageError) -> SnapshotError {
    match e {
        ImageError::Limits(l) => match l.kind() {
            LimitErrorKind::DimensionError => SnapshotError::Decode(format!(
                "{format} {stage}: image dimensions exceed the decoder limits ({e})"
            )),
            LimitErrorKind::InsufficientMemory => SnapshotError::Decode(format!(
                "{format} {stage}: decoding would exceed the allocation limit ({e})"
            )),
            _ => SnapshotError::Decode(format!("{format} {stage}: {e}")),
        },
        _ => SnapshotError::Decode(format!("{format} {stage}: {e}")),
    }
}

/// The largest thumbnail stored: it must be uploaded in one MQTT packet, whose outgoing limit
/// is 1 MiB (with room for the topic and header).
pub const MAX_UPLOAD: usize = 1000 * 1024;

/// A snapshot read from a terminal, for the snapshot task.
pub struct Job {
    pub reader: String,
    /// The pass it shows.
    pub event: gated_contract::PassEvent,
    pub bytes: Vec<u8>,
}

/// The snapshot task: decodes each snapshot off the async threads (`spawn_blocking`), stores
/// its thumbnail and records it as a later fact of the pass; the uplink uploads it. A snapshot
/// refused by the limits is a `snapshot_rejected` alarm naming the reader and what was wrong.
pub async fn run(
    mut jobs: tokio::sync::mpsc::Receiver<Job>,
    cfg: crate::config::SnapshotConfig,
    shared: crate::gate::Shared,
) {
    while let Some(job) = jobs.recv().await {
        let limits = SnapshotLimits::from(&cfg);
        let Job {
            reader,
            event,
            bytes,
        } = job;
        let made = tokio::task::spawn_blocking(move || thumbnail(&bytes, &limits)).await;
        let thumb = match made {
            // An upload must fit in one MQTT packet (rumqttc's outgoing limit, 1 MiB).
            Ok(Ok(t)) if t.jpeg.len() > MAX_UPLOAD => {
                let detail = format!(
                    "snapshot of pass {} rejected: its thumbnail is {} bytes, over the {} an \
                     upload may carry; lower [snapshot] thumb_px or jpeg_quality",
                    event.id,
                    t.jpeg.len(),
                    MAX_UPLOAD
                );
                tracing::warn!(reader, "{detail}");
                let _ = shared.alarm("snapshot_rejected", &reader, &detail).await;
                continue;
            }
            Ok(Ok(t)) => t,
            Ok(Err(e)) => {
                let detail = format!("snapshot of pass {} rejected: {e}", event.id);
                tracing::warn!(reader, "{detail}");
                let _ = shared.alarm("snapshot_rejected", &reader, &detail).await;
                continue;
            }
            Err(e) => {
                tracing::error!(reader, error = %e, "snapshot decoding stopped");
                continue;
            }
        };
        let keep = cfg.keep;
        let now = crate::wall::now_ms();
        match shared
            .store
            .call(move |db| db.store_snapshot(&event, &thumb.jpeg, keep, now))
            .await
        {
            Ok(e) => shared.publish_decision(&reader, &e),
            Err(e) => crate::limited_error!(reader, error = %e, "snapshot not stored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::codecs::png::PngEncoder;
    use image::{ExtendedColorType, ImageEncoder, Rgb, RgbImage, Rgba, RgbaImage};
    use std::time::{Duration, Instant};

    /// The limits of a config without `[snapshot]`, and of one that sets them.
    #[test]
    fn the_limits_are_the_configs_and_the_allocation_limit_is_fixed() {
        let d = SnapshotLimits::default();
        assert_eq!(
            (d.max_bytes, d.max_width, d.max_height, d.max_alloc),
            (120 * 1024, 4096, 4096, 64 * 1024 * 1024)
        );
        assert_eq!((d.thumb_px, d.jpeg_quality), (320, 80));
        let c = crate::config::SnapshotConfig {
            max_bytes: 2048,
            max_width: 100,
            max_height: 200,
            thumb_px: 50,
            jpeg_quality: 60,
            keep: 3,
        };
        let l = SnapshotLimits::from(&c);
        assert_eq!(
            (l.max_bytes, l.max_width, l.max_height, l.max_alloc),
            (2048, 100, 200, 64 * 1024 * 1024)
        );
        assert_eq!((l.thumb_px, l.jpeg_quality), (50, 60));
    }

    /// Tiny xorshift64 so the tests need no `rand`.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n).map(|_| self.next() as u8).collect()
        }
    }

    /// A smooth picture (gradients and a disc), so it compresses like a photo: a 1280x720
    /// JPEG of it stays under the default 120 KiB.
    fn test_rgb(width: u32, height: u32) -> RgbImage {
        let (w, h) = (u64::from(width), u64::from(height));
        RgbImage::from_fn(width, height, |x, y| {
            let (x, y) = (u64::from(x), u64::from(y));
            let (dx, dy) = (x.abs_diff(w / 2), y.abs_diff(h / 2));
            let r = w.min(h) / 3;
            let disc = if dx * dx + dy * dy < r * r { 100 } else { 0 };
            Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 60 + disc])
        })
    }

    fn jpeg_bytes(width: u32, height: u32) -> Vec<u8> {
        let mut out = Vec::new();
        JpegEncoder::new_with_quality(&mut out, 85)
            .encode_image(&test_rgb(width, height))
            .unwrap();
        out
    }

    fn png_bytes(width: u32, height: u32) -> Vec<u8> {
        let img = test_rgb(width, height);
        let mut out = Vec::new();
        PngEncoder::new(&mut out)
            .write_image(img.as_raw(), width, height, ExtendedColorType::Rgb8)
            .unwrap();
        out
    }

    /// Decodes the thumbnail back and checks it is a JPEG of the claimed size.
    fn check_output(t: &Thumbnail, width: u32, height: u32) {
        assert_eq!((t.width, t.height), (width, height));
        assert!(t.jpeg.starts_with(&[0xFF, 0xD8]), "output is not a JPEG");
        let back = ImageReader::new(Cursor::new(&t.jpeg))
            .with_guessed_format()
            .unwrap();
        assert_eq!(back.format(), Some(ImageFormat::Jpeg));
        let back = back.decode().unwrap();
        assert_eq!((back.width(), back.height()), (width, height));
    }

    /// CRC-32 (IEEE, as in PNG), bit by bit, no table.
    fn crc32(data: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn png_chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        let crc = crc32(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    /// A hand-built PNG declaring `width`x`height` RGB8 with a tiny IDAT.
    fn png_bomb(width: u32, height: u32) -> Vec<u8> {
        let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = Vec::new();
        ihdr.extend_from_slice(&width.to_be_bytes());
        ihdr.extend_from_slice(&height.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit, RGB, deflate, filter 0, no interlace
        png_chunk(&mut out, b"IHDR", &ihdr);
        // A zlib header and the first bytes of a deflate stream. A real bomb would be a long
        // run of zeroes compressing ~1000:1; decoding must never get far enough to matter.
        png_chunk(
            &mut out,
            b"IDAT",
            &[0x78, 0x9C, 0xED, 0xC1, 0x01, 0x0D, 0x00, 0x00],
        );
        png_chunk(&mut out, b"IEND", &[]);
        out
    }

    /// Recomputes every chunk CRC of a (possibly mutated) PNG, so mutations reach the decoder
    /// past the CRC check. Stops at the first chunk that does not fit.
    fn fix_png_crcs(png: &mut [u8]) {
        let mut at = 8;
        while at + 12 <= png.len() {
            let len = u32::from_be_bytes([png[at], png[at + 1], png[at + 2], png[at + 3]]) as usize;
            let Some(end) = (at + 8).checked_add(len) else {
                return;
            };
            if end + 4 > png.len() {
                return;
            }
            let crc = crc32(&png[at + 4..end]);
            png[end..end + 4].copy_from_slice(&crc.to_be_bytes());
            at = end + 4;
        }
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn landscape_jpeg_becomes_320x180_jpeg() {
        let input = jpeg_bytes(1280, 720);
        assert!(input.len() <= SnapshotLimits::default().max_bytes);
        let t = thumbnail(&input, &SnapshotLimits::default()).unwrap();
        check_output(&t, 320, 180);
        assert_eq!(t.source_format, "jpeg");
        assert_eq!((t.source_width, t.source_height), (1280, 720));
    }

    #[test]
    fn small_png_is_not_upscaled() {
        let t = thumbnail(&png_bytes(200, 100), &SnapshotLimits::default()).unwrap();
        check_output(&t, 200, 100);
        assert_eq!(t.source_format, "png");
        assert_eq!((t.source_width, t.source_height), (200, 100));
    }

    #[test]
    fn portrait_keeps_aspect_ratio() {
        let t = thumbnail(&jpeg_bytes(480, 640), &SnapshotLimits::default()).unwrap();
        check_output(&t, 240, 320);
        let t = thumbnail(&png_bytes(480, 640), &SnapshotLimits::default()).unwrap();
        check_output(&t, 240, 320);
    }

    #[test]
    fn rgba_png_becomes_rgb_jpeg() {
        let img = RgbaImage::from_fn(400, 300, |x, y| {
            Rgba([
                (x * 255 / 400) as u8,
                (y * 255 / 300) as u8,
                0,
                (x * 255 / 400) as u8,
            ])
        });
        let mut png = Vec::new();
        PngEncoder::new(&mut png)
            .write_image(img.as_raw(), 400, 300, ExtendedColorType::Rgba8)
            .unwrap();
        let t = thumbnail(&png, &SnapshotLimits::default()).unwrap();
        check_output(&t, 320, 240);
    }

    #[test]
    fn fit_within_rounds_and_never_reaches_zero() {
        assert_eq!(fit_within(1280, 720, 320), (320, 180));
        assert_eq!(fit_within(480, 640, 320), (240, 320));
        assert_eq!(fit_within(200, 100, 320), (200, 100));
        assert_eq!(fit_within(4096, 1, 320), (320, 1));
        assert_eq!(fit_within(u32::MAX, u32::MAX - 1, 320), (320, 320));
        assert_eq!(fit_within(1000, 333, 320), (320, 107));
    }

    #[test]
    fn empty_input_is_empty() {
        let e = thumbnail(&[], &SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotError::Empty), "{e}");
    }

    #[test]
    fn random_bytes_are_refused() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let noise = rng.bytes(4096);
        let e = thumbnail(&noise, &SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotError::UnknownFormat), "{e}");

        // Noise behind a valid signature goes to the decoder, which must refuse it.
        for magic in [&b"\xFF\xD8\xFF"[..], &b"\x89PNG\r\n\x1a\n"[..]] {
            for _ in 0..50 {
                let mut bytes = magic.to_vec();
                let n = rng.below(2048);
                bytes.extend(rng.bytes(n));
                let e = thumbnail(&bytes, &SnapshotLimits::default()).unwrap_err();
                assert!(matches!(e, SnapshotError::Decode(_)), "{e}");
            }
        }
    }

    #[test]
    fn truncated_jpeg_does_not_panic() {
        let full = jpeg_bytes(640, 480);
        let half = &full[..full.len() / 2];
        // Either outcome is acceptable; reaching this line at all is the test.
        match thumbnail(half, &SnapshotLimits::default()) {
            Ok(t) => {
                println!(
                    "truncated JPEG: decoded leniently to a {}x{} thumbnail",
                    t.width, t.height
                );
                check_output(&t, 320, 240);
            }
            Err(e) => println!("truncated JPEG: refused: {e}"),
        }
        // Truncated inside the header: must be a decode error.
        let e = thumbnail(&full[..20], &SnapshotLimits::default()).unwrap_err();
        assert!(matches!(e, SnapshotError::Decode(_)), "{e}");
    }

    #[test]
    fn gif_and_bmp_are_unknown_format() {
        let mut gif = b"GIF89a".to_vec();
        gif.extend_from_slice(&[10, 0, 10, 0, 0x80, 0, 0]);
        gif.extend_from_slice(&[0; 32]);
        let mut bmp = b"BM".to_vec();
        bmp.extend_from_slice(&[0x46, 0, 0, 0, 0, 0, 0, 0, 0x36, 0, 0, 0, 0x28, 0, 0, 0]);
        bmp.extend_from_slice(&[0; 48]);
        let webp = b"RIFF\x24\x00\x00\x00WEBPVP8 ".to_vec();
        for bytes in [gif, bmp, webp] {
            let e = thumbnail(&bytes, &SnapshotLimits::default()).unwrap_err();
            assert!(matches!(e, SnapshotError::UnknownFormat), "{e}");
        }
    }

    #[test]
    fn png_bomb_is_refused_on_dimensions_quickly() {
        let bomb = png_bomb(60_000, 60_000);
        assert!(bomb.len() < 100);
        let started = Instant::now();
        let e = thumbnail(&bomb, &SnapshotLimits::default()).unwrap_err();
        let took = started.elapsed();
        assert!(e.to_string().contains("60000x60000"), "{e}");
        match e {
            SnapshotError::Dimensions {
                width,
                height,
                max_width,
                max_height,
            } => {
                assert_eq!((width, height), (60_000, 60_000));
                assert_eq!((max_width, max_height), (4096, 4096));
            }
            other => panic!("expected Dimensions, got {other}"),
        }
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    #[test]
    fn png_bomb_within_dimensions_is_caught_by_the_allocation_limit() {
        // Dimensions allowed, so only max_alloc stands between the bomb and 10.8 GB.
        let limits = SnapshotLimits {
            max_width: 60_000,
            max_height: 60_000,
            ..SnapshotLimits::default()
        };
        let started = Instant::now();
        let e = thumbnail(&png_bomb(60_000, 60_000), &limits).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        match &e {
            SnapshotError::Decode(msg) => assert!(msg.contains("allocation limit"), "{msg}"),
            other => panic!("expected Decode, got {other}"),
        }
    }

    #[test]
    fn jpeg_over_the_allocation_limit_is_refused_before_decoding() {
        let limits = SnapshotLimits {
            max_alloc: 1_000_000,
            ..SnapshotLimits::default()
        };
        // 1280x720 RGB8 = 2 764 800 bytes > 1 000 000.
        let e = thumbnail(&jpeg_bytes(1280, 720), &limits).unwrap_err();
        match &e {
            SnapshotError::Decode(msg) => {
                assert!(msg.contains("2764800") && msg.contains("1000000"), "{msg}")
            }
            other => panic!("expected Decode, got {other}"),
        }
    }

    #[test]
    fn wide_png_is_refused_on_dimensions() {
        let e = thumbnail(&png_bytes(5000, 10), &SnapshotLimits::default()).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Dimensions {
                    width: 5000,
                    height: 10,
                    max_width: 4096,
                    max_height: 4096
                }
            ),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "snapshot is 5000x10 pixels, over the limit of 4096x4096 pixels"
        );
    }

    #[test]
    fn jpeg_over_max_dims_is_refused_on_dimensions() {
        let limits = SnapshotLimits {
            max_width: 100,
            ..SnapshotLimits::default()
        };
        let e = thumbnail(&jpeg_bytes(200, 50), &limits).unwrap_err();
        assert!(
            matches!(
                e,
                SnapshotError::Dimensions {
                    width: 200,
                    height: 50,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn one_byte_over_max_bytes_is_too_large() {
        let limits = SnapshotLimits::default();
        // Zeroes would be UnknownFormat if the content were looked at: TooLarge proves the
        // length is checked first.
        let zeroes = vec![0u8; limits.max_bytes + 1];
        let e = thumbnail(&zeroes, &limits).unwrap_err();
        assert!(
            matches!(e, SnapshotError::TooLarge { bytes, max } if bytes == 120 * 1024 + 1 && max == 120 * 1024),
            "{e}"
        );
        assert_eq!(
            e.to_string(),
            "snapshot is 122881 bytes, over the limit of 122880 bytes"
        );

        // A valid JPEG one byte over a tighter limit, and exactly at it.
        let jpeg = jpeg_bytes(64, 48);
        let tight = SnapshotLimits {
            max_bytes: jpeg.len() - 1,
            ..SnapshotLimits::default()
        };
        assert!(matches!(
            thumbnail(&jpeg, &tight),
            Err(SnapshotError::TooLarge { .. })
        ));
        let exact = SnapshotLimits {
            max_bytes: jpeg.len(),
            ..SnapshotLimits::default()
        };
        assert!(thumbnail(&jpeg, &exact).is_ok());
    }

    #[test]
    fn zero_thumb_px_and_extreme_quality_do_not_break() {
        let limits = SnapshotLimits {
            thumb_px: 0,
            jpeg_quality: 0,
            ..SnapshotLimits::default()
        };
        let t = thumbnail(&jpeg_bytes(64, 48), &limits).unwrap();
        check_output(&t, 1, 1);
        let limits = SnapshotLimits {
            jpeg_quality: 255,
            ..SnapshotLimits::default()
        };
        let t = thumbnail(&png_bytes(64, 48), &limits).unwrap();
        check_output(&t, 64, 48);
    }

    /// Flips 1..=8 random bytes of `valid` per round; any Ok must be a sane JPEG thumbnail.
    fn mutate_and_run(valid: &[u8], rounds: usize, seed: u64, fix_crcs: bool) -> (usize, usize) {
        let limits = SnapshotLimits::default();
        let mut rng = XorShift(seed);
        let (mut ok, mut err) = (0, 0);
        for round in 0..rounds {
            let mut bytes = valid.to_vec();
            for _ in 0..=rng.below(8) {
                let at = rng.below(bytes.len());
                bytes[at] ^= (rng.next() as u8) | 1; // never a no-op flip
            }
            if fix_crcs && round % 2 == 0 {
                fix_png_crcs(&mut bytes);
            }
            if round % 10 == 0 {
                let keep = 1 + rng.below(bytes.len());
                bytes.truncate(keep);
            }
            match thumbnail(&bytes, &limits) {
                Ok(t) => {
                    ok += 1;
                    assert!(t.jpeg.starts_with(&[0xFF, 0xD8]));
                    assert!(t.width >= 1 && t.width <= limits.thumb_px);
                    assert!(t.height >= 1 && t.height <= limits.thumb_px);
                }
                Err(_) => err += 1,
            }
        }
        (ok, err)
    }

    #[test]
    fn random_mutations_never_panic() {
        let (ok, err) = mutate_and_run(&jpeg_bytes(96, 64), 200, 0xDEAD_BEEF_1234_5678, false);
        println!("mutated JPEG: {ok} thumbnails, {err} errors");
        // Both outcomes are reached: the mutations get past the format checks, and are caught.
        assert!(ok > 0 && err > 0, "JPEG: {ok} thumbnails, {err} errors");
        let (ok, err) = mutate_and_run(&png_bytes(96, 64), 200, 0x0123_4567_89AB_CDEF, true);
        println!("mutated PNG: {ok} thumbnails, {err} errors");
        assert!(ok > 0 && err > 0, "PNG: {ok} thumbnails, {err} errors");
    }
}
