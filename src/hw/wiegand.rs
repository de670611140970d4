//! Wiegand decoding: turns the falling edges of a card reader's D0/D1 lines into a card, or
//! into a rejection that says what was wrong with the frame.
//!
//! The edges come from user-space GPIO interrupts, which can miss or duplicate edges under
//! load. One lost or extra edge shifts every later bit, and a shifted frame can still pass both
//! parity checks (parity only catches an odd number of flips per half). So parity is the last
//! line of defence, not the first: any frame with a timing fault (edges too close, both lines
//! at once, time going backwards) or the wrong length is rejected whole, never repaired.
//!
//! Pure and clock-free: every time arrives as an argument, in monotonic microseconds, so the
//! whole module is tested from simulated edge streams.

use std::fmt;

/// Most bits a frame may hold. Longer frames are counted but not stored (bounded memory).
pub const MAX_BITS: usize = 64;

/// Which data line an edge came on: a pulse on D0 is a 0 bit, a pulse on D1 a 1 bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Line {
    D0,
    D1,
}

/// One falling edge as the GPIO layer reports it; `at_us` is a monotonic time in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    pub line: Line,
    pub at_us: u64,
}

/// The frame layouts the decoder knows. Both are `even parity, data, odd parity`, each parity
/// bit covering its half of the data bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// 26 bits: even parity, 8-bit facility, 16-bit number, odd parity.
    W26,
    /// 34 bits: even parity, 16-bit facility, 16-bit number, odd parity.
    W34,
}

impl Format {
    /// Frame length in bits, parity included.
    pub fn bits(self) -> usize {
        match self {
            Self::W26 => 26,
            Self::W34 => 34,
        }
    }

    /// Data bits, parity excluded.
    pub fn data_bits(self) -> usize {
        self.bits() - 2
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Wiegand-{}", self.bits())
    }
}

/// How the decoder splits edges into frames and which frames it accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WiegandConfig {
    /// A frame ends when no edge has come for this long. Bits are at most 20 ms apart, so
    /// 25 ms ends a frame soon after its last bit without cutting a slow reader's frame.
    pub frame_timeout_us: u64,
    /// Two edges closer than this are a glitch (bit pulses are at least 200 µs apart). A gap of
    /// 0 is always a glitch, even when this is 0.
    pub min_gap_us: u64,
    /// Only frames of these formats become cards; any other length is `WrongLength`.
    pub formats: Vec<Format>,
}

impl Default for WiegandConfig {
    fn default() -> Self {
        Self {
            frame_timeout_us: 25_000,
            min_gap_us: 150,
            formats: vec![Format::W26, Format::W34],
        }
    }
}

/// A decoded frame that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Card {
    pub format: Format,
    pub facility: u32,
    pub number: u32,
    /// The whole frame as received, parity bits included, first bit most significant.
    pub bits: u64,
}

impl Card {
    /// The data bits without parity (`facility << 16 | number`).
    pub fn data(&self) -> u64 {
        (self.bits >> 1) & low_mask(self.format.data_bits())
    }

    /// The credential id sent to the decision core: the data bits without parity as a
    /// zero-padded decimal, 8 digits for W26 (24 bits) and 10 for W34 (32 bits).
    ///
    /// Why this form: it is what most access systems and enrolment desks print for a card, so
    /// an operator can type it from the card or an export; it is one number, so no separator
    /// convention has to be agreed; and the fixed width per format keeps a W26 card and a W34
    /// card with the same value from ever sharing an id.
    pub fn id(&self) -> String {
        match self.format {
            Format::W26 => format!("{:08}", self.data()),
            Format::W34 => format!("{:010}", self.data()),
        }
    }
}

/// What made a glitch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GlitchKind {
    /// Two edges on the same line closer than `min_gap_us`: a bounce or noise.
    TooClose { gap_us: u64 },
    /// The edge's timestamp is before the previous edge's: a bug upstream of the decoder.
    Backwards { by_us: u64 },
}

/// Why a frame did not become a card. Every variant names the frame's bit count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejected {
    /// Edge number `at_bit` (0-based) came too soon after the previous one, or before it.
    Glitch {
        bits: usize,
        at_bit: usize,
        kind: GlitchKind,
    },
    /// Edge number `at_bit` fell on the other line within `gap_us` of the previous edge: D0 and
    /// D1 falling together is a wiring fault or noise.
    BothLines {
        bits: usize,
        at_bit: usize,
        gap_us: u64,
    },
    /// The length is not one of the configured formats. `raw` is the frame, first bit most
    /// significant.
    WrongLength { bits: usize, raw: u64 },
    /// A parity bit does not match; `which` is `"leading even"` or `"trailing odd"`.
    Parity {
        which: &'static str,
        format: Format,
        raw: u64,
    },
    /// More than `MAX_BITS` edges in one frame: a stuck line or noise.
    Overflow { bits: usize },
    /// The frame was ended by the timer, then an edge arrived that the edges' own times put
    /// inside it: its bits were delivered late (a stalled interrupt thread), and it was cut.
    Split { bits: usize, gap_us: u64 },
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::Glitch {
                bits,
                at_bit,
                kind: GlitchKind::TooClose { gap_us },
            } => write!(
                f,
                "glitch in {bits}-bit frame: edge #{at_bit} came {gap_us} µs after the previous one on the same line"
            ),
            Self::Glitch {
                bits,
                at_bit,
                kind: GlitchKind::Backwards { by_us },
            } => write!(
                f,
                "glitch in {bits}-bit frame: edge #{at_bit} is timestamped {by_us} µs before the previous one (time went backwards)"
            ),
            Self::BothLines {
                bits,
                at_bit,
                gap_us,
            } => write!(
                f,
                "D0 and D1 both fell within {gap_us} µs at edge #{at_bit} of a {bits}-bit frame (wiring fault or noise)"
            ),
            Self::WrongLength { bits, raw } => write!(
                f,
                "frame of {bits} bits matches no configured format: {raw:0bits$b}"
            ),
            Self::Parity { which, format, raw } => write!(
                f,
                "{format} frame fails the {which} parity: {raw:0width$b}",
                width = format.bits()
            ),
            Self::Overflow { bits } => {
                write!(f, "frame of {bits} bits is longer than {MAX_BITS}")
            }
            Self::Split { bits, gap_us } => write!(
                f,
                "{bits}-bit frame cut short: another bit came {gap_us} µs after its last one \
                 (the bits were delivered late)"
            ),
        }
    }
}

impl std::error::Error for Rejected {}

/// The first timing fault seen in a frame; the bit count is filled in when the frame ends.
#[derive(Debug, Clone, Copy)]
enum Damage {
    Glitch { at_bit: usize, kind: GlitchKind },
    BothLines { at_bit: usize, gap_us: u64 },
}

/// The frame being received.
#[derive(Debug)]
struct Frame {
    /// The first `MAX_BITS` bits, first bit most significant.
    raw: u64,
    /// Edges seen, stored or not; saturates instead of overflowing.
    count: usize,
    /// The first fault. Only the first is kept: later faults are usually its consequences.
    damage: Option<Damage>,
    last: Edge,
}

/// Splits an edge stream into frames and decodes them. Holds one frame at a time in a fixed
/// amount of memory, however many edges arrive.
#[derive(Debug)]
pub struct Decoder {
    cfg: WiegandConfig,
    frame: Option<Frame>,
    /// The last edge's time, kept across frames so that time going backwards between frames is
    /// caught too.
    last_at: Option<u64>,
}

impl Decoder {
    pub fn new(cfg: WiegandConfig) -> Self {
        Self {
            cfg,
            frame: None,
            last_at: None,
        }
    }

    /// Feeds one edge. If the edge comes at least the frame timeout after the previous edge,
    /// the previous frame is finished first and its outcome returned; the edge starts a new
    /// frame.
    ///
    /// An edge too close to the previous one, on the other line at nearly the same time, or
    /// timestamped before it marks the whole frame damaged instead of being dropped: dropping
    /// it would be a guess, and a wrong guess shifts the bits. After a backwards timestamp the
    /// decoder follows the new time base, so one bad timestamp cannot lock the reader out.
    pub fn edge(&mut self, e: Edge) -> Option<Result<Card, Rejected>> {
        let backwards_by = self
            .last_at
            .and_then(|last| last.checked_sub(e.at_us))
            .filter(|&by| by > 0);
        self.last_at = Some(e.at_us);

        let mut finished = None;
        if let Some(frame) = self.frame.as_mut() {
            if backwards_by.is_none()
                && e.at_us.saturating_sub(frame.last.at_us) >= self.cfg.frame_timeout_us
            {
                finished = self.frame.take();
            } else {
                let damage = match backwards_by {
                    Some(by_us) => Some(Damage::Glitch {
                        at_bit: frame.count,
                        kind: GlitchKind::Backwards { by_us },
                    }),
                    None => timing_fault(&self.cfg, frame.last, e, frame.count),
                };
                if frame.damage.is_none() {
                    frame.damage = damage;
                }
                frame.push(e);
                return None;
            }
        }

        let mut frame = Frame {
            raw: 0,
            count: 0,
            damage: backwards_by.map(|by_us| Damage::Glitch {
                at_bit: 0,
                kind: GlitchKind::Backwards { by_us },
            }),
            last: e,
        };
        frame.push(e);
        self.frame = Some(frame);
        finished.map(|f| self.finish(f))
    }

    /// Called by a timer: finishes the frame in progress if its last edge is at least the
    /// timeout old at `now_us`.
    ///
    /// `now_us` must come from the same clock as the edges, and the caller should feed every
    /// edge already queued before ticking: an edge delivered late, after a tick has closed its
    /// frame, would cut that frame short.
    pub fn tick(&mut self, now_us: u64) -> Option<Result<Card, Rejected>> {
        let deadline = self.deadline_us()?;
        if now_us < deadline {
            return None;
        }
        let frame = self.frame.take()?;
        Some(self.finish(frame))
    }

    /// When the caller should next call `tick` (the last edge + timeout), or `None` when idle.
    pub fn deadline_us(&self) -> Option<u64> {
        self.frame
            .as_ref()
            .map(|f| f.last.at_us.saturating_add(self.cfg.frame_timeout_us))
    }

    /// Checks a finished frame, most fundamental fault first: timing, length, then parity.
    fn finish(&self, frame: Frame) -> Result<Card, Rejected> {
        let bits = frame.count;
        match frame.damage {
            Some(Damage::Glitch { at_bit, kind }) => {
                return Err(Rejected::Glitch { bits, at_bit, kind });
            }
            Some(Damage::BothLines { at_bit, gap_us }) => {
                return Err(Rejected::BothLines {
                    bits,
                    at_bit,
                    gap_us,
                });
            }
            None => {}
        }
        if bits > MAX_BITS {
            return Err(Rejected::Overflow { bits });
        }
        let raw = frame.raw;
        let Some(format) = self.cfg.formats.iter().copied().find(|f| f.bits() == bits) else {
            return Err(Rejected::WrongLength { bits, raw });
        };
        // Each parity bit and the half of the data it covers are exactly half the frame.
        let half = bits / 2;
        if !(raw >> half).count_ones().is_multiple_of(2) {
            return Err(Rejected::Parity {
                which: "leading even",
                format,
                raw,
            });
        }
        if (raw & low_mask(half)).count_ones().is_multiple_of(2) {
            return Err(Rejected::Parity {
                which: "trailing odd",
                format,
                raw,
            });
        }
        let data = (raw >> 1) & low_mask(format.data_bits());
        Ok(Card {
            format,
            // Both formats end in a 16-bit number; the facility is what precedes it.
            facility: u32::try_from(data >> 16).unwrap_or(u32::MAX),
            number: u32::try_from(data & 0xFFFF).unwrap_or(u32::MAX),
            bits: raw,
        })
    }
}

impl Frame {
    /// Stores the edge's bit while there is room, and counts it always.
    fn push(&mut self, e: Edge) {
        if self.count < MAX_BITS {
            self.raw = (self.raw << 1) | u64::from(e.line == Line::D1);
        }
        self.count = self.count.saturating_add(1);
        self.last = e;
    }
}

/// A timing fault between two edges of one frame, `e` not before `prev`.
fn timing_fault(cfg: &WiegandConfig, prev: Edge, e: Edge, at_bit: usize) -> Option<Damage> {
    let gap_us = e.at_us.saturating_sub(prev.at_us);
    if gap_us >= cfg.min_gap_us.max(1) {
        return None;
    }
    Some(if prev.line == e.line {
        Damage::Glitch {
            at_bit,
            kind: GlitchKind::TooClose { gap_us },
        }
    } else {
        Damage::BothLines { at_bit, gap_us }
    })
}

/// The lowest `n` bits set (`n` ≤ 64).
fn low_mask(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPACING: u64 = 2_000;

    /// Edges for a bit string ('0' on D0, '1' on D1), `spacing` µs apart from `start`.
    fn edges(bits: &str, start: u64, spacing: u64) -> Vec<Edge> {
        bits.chars()
            .enumerate()
            .map(|(i, c)| Edge {
                line: if c == '1' { Line::D1 } else { Line::D0 },
                at_us: start + i as u64 * spacing,
            })
            .collect()
    }

    /// Feeds edges, then ticks past the deadline; returns every outcome in order.
    fn run(d: &mut Decoder, es: &[Edge]) -> Vec<Result<Card, Rejected>> {
        let mut out: Vec<_> = es.iter().filter_map(|&e| d.edge(e)).collect();
        if let Some(deadline) = d.deadline_us() {
            out.extend(d.tick(deadline));
        }
        assert_eq!(d.deadline_us(), None, "decoder idle after the last frame");
        out
    }

    fn decode_one(bits: &str) -> Result<Card, Rejected> {
        let mut d = Decoder::new(WiegandConfig::default());
        let mut out = run(&mut d, &edges(bits, 1_000, SPACING));
        assert_eq!(out.len(), 1, "one frame in {bits}");
        out.remove(0)
    }

    fn ones(s: &str) -> usize {
        s.chars().filter(|&c| c == '1').count()
    }

    /// A frame built in the test, independently of the decoder: parity from counted chars.
    fn build(data_bits: usize, data: u64) -> String {
        let d = format!("{data:0data_bits$b}");
        let (a, b) = d.split_at(data_bits / 2);
        let even = if ones(a) % 2 == 1 { "1" } else { "0" };
        let odd = if ones(b).is_multiple_of(2) { "1" } else { "0" };
        format!("{even}{d}{odd}")
    }

    /// Independent oracle: would a correct decoder accept this bit string?
    fn valid(s: &str) -> bool {
        if s.len() != 26 && s.len() != 34 {
            return false;
        }
        let half = s.len() / 2;
        ones(&s[..half]).is_multiple_of(2) && !ones(&s[half..]).is_multiple_of(2)
    }

    /// Facility 123, number 45678 (0xB26E), parity worked out by hand:
    /// W26 first 12 data bits 0111_1011_1011 have 9 ones -> even parity 1;
    ///     last 12 0010_0110_1110 have 6 ones -> odd parity 1.
    /// W34 first 16 0000_0000_0111_1011 have 6 ones -> even parity 0;
    ///     last 16 1011_0010_0110_1110 have 9 ones -> odd parity 0.
    const W26_123_45678: &str = "10111101110110010011011101";
    const W34_123_45678: &str = "0000000000111101110110010011011100";

    #[test]
    fn literal_vectors_are_what_the_builder_makes() {
        assert_eq!(W26_123_45678.len(), 26);
        assert_eq!(W34_123_45678.len(), 34);
        assert_eq!(build(24, 123 << 16 | 45678), W26_123_45678);
        assert_eq!(build(32, 123 << 16 | 45678), W34_123_45678);
    }

    #[test]
    fn valid_w26() {
        let c = decode_one(W26_123_45678).expect("valid W26");
        assert_eq!(c.format, Format::W26);
        assert_eq!((c.facility, c.number), (123, 45678));
        assert_eq!(
            c.bits,
            (1 << 25) | (0b0111_1011 << 17) | (0b1011_0010_0110_1110 << 1) | 1
        );
        assert_eq!(c.id(), "08106606");
    }

    #[test]
    fn valid_w34() {
        let c = decode_one(W34_123_45678).expect("valid W34");
        assert_eq!(c.format, Format::W34);
        assert_eq!((c.facility, c.number), (123, 45678));
        assert_eq!(c.id(), "0008106606");
        let c = decode_one(&build(32, 0xFFFF_FFFF)).expect("all ones");
        assert_eq!((c.facility, c.number), (0xFFFF, 0xFFFF));
        assert_eq!(c.id(), "4294967295");
    }

    #[test]
    fn bad_even_parity() {
        let mut s = W26_123_45678.to_string();
        s.replace_range(0..1, "0");
        let e = decode_one(&s).expect_err("bad even parity");
        assert!(matches!(
            e,
            Rejected::Parity {
                which: "leading even",
                format: Format::W26,
                ..
            }
        ));
        assert!(e.to_string().contains("leading even"), "{e}");
    }

    #[test]
    fn bad_odd_parity() {
        let mut s = W34_123_45678.to_string();
        s.replace_range(33..34, "1");
        let e = decode_one(&s).expect_err("bad odd parity");
        assert!(matches!(
            e,
            Rejected::Parity {
                which: "trailing odd",
                format: Format::W34,
                ..
            }
        ));
        // A flipped data bit in the second half is caught too.
        let mut s = W26_123_45678.to_string();
        s.replace_range(20..21, if &s[20..21] == "1" { "0" } else { "1" });
        assert!(matches!(
            decode_one(&s),
            Err(Rejected::Parity {
                which: "trailing odd",
                ..
            })
        ));
    }

    #[test]
    fn missing_bit() {
        let s = &W26_123_45678[..25];
        let e = decode_one(s).expect_err("25 bits");
        assert_eq!(
            e,
            Rejected::WrongLength {
                bits: 25,
                raw: (1 << 24) | (0b0111_1011 << 16) | 0b1011_0010_0110_1110
            }
        );
        assert!(e.to_string().contains("25 bits"), "{e}");
        assert!(e.to_string().contains(s), "{e}");
    }

    #[test]
    fn extra_bit() {
        let s = format!("{W26_123_45678}0");
        assert!(matches!(
            decode_one(&s),
            Err(Rejected::WrongLength { bits: 27, .. })
        ));
    }

    #[test]
    fn format_not_configured() {
        let cfg = WiegandConfig {
            formats: vec![Format::W26],
            ..WiegandConfig::default()
        };
        let mut d = Decoder::new(cfg);
        let out = run(&mut d, &edges(W34_123_45678, 0, SPACING));
        assert!(matches!(
            out[..],
            [Err(Rejected::WrongLength { bits: 34, .. })]
        ));
    }

    #[test]
    fn glitch_rejects_frame() {
        let mut es = edges(W26_123_45678, 1_000, SPACING);
        // A bounce: bit 10's line falls again 20 µs later.
        let bounce = Edge {
            line: es[10].line,
            at_us: es[10].at_us + 20,
        };
        es.insert(11, bounce);
        let mut d = Decoder::new(WiegandConfig::default());
        let out = run(&mut d, &es);
        assert_eq!(
            out,
            vec![Err(Rejected::Glitch {
                bits: 27,
                at_bit: 11,
                kind: GlitchKind::TooClose { gap_us: 20 }
            })]
        );
        assert!(
            out[0]
                .as_ref()
                .expect_err("glitch")
                .to_string()
                .contains("20 µs")
        );
        // Even if the bounce replaces a bit so the length is right, the frame is rejected.
        let mut es = edges(W26_123_45678, 1_000, SPACING);
        es[11] = Edge {
            line: es[10].line,
            at_us: es[10].at_us + 20,
        };
        assert!(matches!(
            run(&mut d, &es)[..],
            [Err(Rejected::Glitch { bits: 26, .. })]
        ));
        // And the decoder is ready for the next frame.
        assert!(matches!(
            run(&mut d, &edges(W26_123_45678, 10_000_000, SPACING))[..],
            [Ok(_)]
        ));
    }

    #[test]
    fn both_lines_at_once_rejected() {
        let mut es = edges(W26_123_45678, 1_000, SPACING);
        let other = if es[5].line == Line::D0 {
            Line::D1
        } else {
            Line::D0
        };
        es.insert(
            6,
            Edge {
                line: other,
                at_us: es[5].at_us,
            },
        );
        let mut d = Decoder::new(WiegandConfig::default());
        let out = run(&mut d, &es);
        assert_eq!(
            out,
            vec![Err(Rejected::BothLines {
                bits: 27,
                at_bit: 6,
                gap_us: 0
            })]
        );
        // Simultaneous edges are a fault even with the glitch filter off.
        let mut d = Decoder::new(WiegandConfig {
            min_gap_us: 0,
            ..WiegandConfig::default()
        });
        assert!(matches!(
            run(&mut d, &es)[..],
            [Err(Rejected::BothLines { .. })]
        ));
    }

    #[test]
    fn back_to_back_frames_both_decode() {
        let a = edges(W26_123_45678, 0, SPACING);
        let start_b = a[a.len() - 1].at_us + 30_000;
        let b = edges(W34_123_45678, start_b, SPACING);
        let mut d = Decoder::new(WiegandConfig::default());
        let out = run(&mut d, &[a, b].concat());
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].as_ref().map(|c| c.format), Ok(Format::W26));
        assert_eq!(out[1].as_ref().map(|c| c.format), Ok(Format::W34));
    }

    #[test]
    fn frame_ended_by_next_edge() {
        let mut d = Decoder::new(WiegandConfig::default());
        let es = edges(W26_123_45678, 0, SPACING);
        for &e in &es {
            assert_eq!(d.edge(e), None);
        }
        let last = es[es.len() - 1].at_us;
        // Exactly the timeout later: the previous frame ends, the edge starts the next one.
        let out = d.edge(Edge {
            line: Line::D0,
            at_us: last + 25_000,
        });
        assert_eq!(
            out.map(|r| r.map(|c| c.id())),
            Some(Ok("08106606".to_string()))
        );
        assert_eq!(d.deadline_us(), Some(last + 50_000));
        assert!(matches!(
            d.tick(last + 50_000),
            Some(Err(Rejected::WrongLength { bits: 1, .. }))
        ));
    }

    #[test]
    fn frame_ended_by_tick() {
        let mut d = Decoder::new(WiegandConfig::default());
        assert_eq!(d.deadline_us(), None);
        assert_eq!(d.tick(123), None);
        let es = edges(W26_123_45678, 0, SPACING);
        for &e in &es {
            assert_eq!(d.edge(e), None);
        }
        let last = es[es.len() - 1].at_us;
        assert_eq!(d.deadline_us(), Some(last + 25_000));
        assert_eq!(d.tick(last + 24_999), None, "too early");
        assert!(matches!(
            d.tick(last + 25_000),
            Some(Ok(Card { facility: 123, .. }))
        ));
        assert_eq!(d.deadline_us(), None);
        assert_eq!(d.tick(last + 100_000), None, "nothing left");
    }

    /// Tiny xorshift64, so the property test needs no crates and is reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_frames_decode_only_when_valid() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        let mut d = Decoder::new(WiegandConfig::default());
        let mut at = 0u64;
        let mut cards = 0;
        for _ in 0..1000 {
            // Half the frames have a card length, so valid ones are common enough to matter.
            let len = match rng.below(4) {
                0 => 26,
                1 => 34,
                _ => 1 + rng.below(70) as usize,
            };
            let s: String = (0..len)
                .map(|_| if rng.below(2) == 1 { '1' } else { '0' })
                .collect();
            let spacing = 200 + rng.below(19_800);
            let out = run(&mut d, &edges(&s, at, spacing));
            at += len as u64 * spacing + 100_000;
            assert_eq!(out.len(), 1, "{s}");
            match &out[0] {
                Ok(card) => {
                    assert!(valid(&s), "card from invalid frame {s}");
                    assert_eq!(format!("{:0len$b}", card.bits), s);
                    cards += 1;
                }
                Err(e) => assert!(!valid(&s), "valid frame {s} rejected: {e}"),
            }
        }
        assert!(cards > 50, "only {cards} valid frames generated");
    }

    #[test]
    fn memory_bounded_in_long_frame() {
        let mut d = Decoder::new(WiegandConfig::default());
        let s: String = (0..10_000)
            .map(|i| if i % 3 == 0 { '1' } else { '0' })
            .collect();
        let out = run(&mut d, &edges(&s, 0, 300));
        assert_eq!(out, vec![Err(Rejected::Overflow { bits: 10_000 })]);
        // The decoder holds one u64 of bits whatever the frame length.
        assert!(std::mem::size_of::<Frame>() <= 64);
        assert!(matches!(
            run(&mut d, &edges(W26_123_45678, 10_000_000, SPACING))[..],
            [Ok(_)]
        ));
        // 65 bits is already an overflow, 64 is only a wrong length.
        assert!(matches!(
            decode_one(&"0".repeat(65)),
            Err(Rejected::Overflow { bits: 65 })
        ));
        assert!(matches!(
            decode_one(&"1".repeat(64)),
            Err(Rejected::WrongLength {
                bits: 64,
                raw: u64::MAX
            })
        ));
    }

    #[test]
    fn backwards_time_is_a_glitch() {
        let mut d = Decoder::new(WiegandConfig::default());
        let mut es = edges(W26_123_45678, 1_000_000, SPACING);
        es[12].at_us = es[11].at_us - 5_000;
        let out = run(&mut d, &es);
        assert_eq!(out.len(), 1);
        let e = out[0].as_ref().expect_err("backwards");
        assert!(
            matches!(
                e,
                Rejected::Glitch {
                    at_bit: 12,
                    kind: GlitchKind::Backwards { by_us: 5_000 },
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("backwards"), "{e}");
        // Backwards across frames: the new frame is rejected, then the new time base is used.
        let out = run(&mut d, &edges(W26_123_45678, 0, SPACING));
        assert!(matches!(
            out[..],
            [Err(Rejected::Glitch {
                at_bit: 0,
                kind: GlitchKind::Backwards { .. },
                ..
            })]
        ));
        assert!(matches!(
            run(&mut d, &edges(W26_123_45678, 200_000, SPACING))[..],
            [Ok(_)]
        ));
        // A tick from before the last edge, and times at the end of the range, do not panic.
        d.edge(Edge {
            line: Line::D0,
            at_us: u64::MAX - 1,
        });
        assert_eq!(d.tick(0), None);
        assert_eq!(d.deadline_us(), Some(u64::MAX));
        assert!(d.tick(u64::MAX).is_some());
    }

    #[test]
    fn display_names_the_problem() {
        let e = Rejected::Parity {
            which: "leading even",
            format: Format::W26,
            raw: 0b11,
        };
        assert_eq!(
            e.to_string(),
            "Wiegand-26 frame fails the leading even parity: 00000000000000000000000011"
        );
        assert_eq!(
            Rejected::Overflow { bits: 70 }.to_string(),
            "frame of 70 bits is longer than 64"
        );
    }
}
