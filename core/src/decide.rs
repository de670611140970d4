//! `decide`: the one function every credential goes through.
//!
//! Order of evaluation (first refusal wins; `docs/policy.md` has the table):
//! 1. deny list → `denylisted`, whatever else says yes, in every mode;
//! 2. mode: emergency release → `emergency_release`, lockdown → `lockdown` (a responder's
//!    staff entry, `lockdown_exempt`: `lockdown_exempt` after its own checks),
//!    hold-open → `hold_open` (the lane is open anyway; the pass is logged, and moves the
//!    subject's anti-passback state as any other pass);
//! 3. free exit on this lane direction → `free_exit` (no entry needed);
//! 4. a face below the minimum score → `low_face_score`;
//! 5. the gate's and the lane's opening hours → `clock_untrusted` while the clock is not
//!    trusted, else `outside_schedule`;
//! 6. the credential's entry, a staff entry first, then an invitation:
//!    gates (`wrong_gate`), contact with the centre (`offline_limit`), then, if the entry is
//!    limited in time (a window or a schedule), the clock (`clock_untrusted`), the window
//!    (`not_yet_valid`, `expired`) and the schedule (`outside_schedule`); for an invitation
//!    its entries (`entries_exhausted`); then anti-passback (`anti_passback` when hard).
//!    An exit is judged by the limits `policy.exit` applies to it (by default the window, the
//!    schedule and the offline limit within a grace), and uses no entry;
//! 7. on a two-factor lane, the other factor of the same subject within the window, else
//!    `second_factor_required`;
//! 8. nothing matched → `unknown_credential`.
//!
//! A credential held by both a staff entry and an invitation is granted if either grants;
//! when both refuse, the staff entry's reason is reported.

use crate::time::{self, Calendar};
use crate::{
    Context, Credential, CredentialKind, Direction, Factor, FirstFactor, FreeExit, LastPass,
    Lookups, Mode, PassbackMode, Policy, Reason, UnixMs, Validity,
};

/// What a decision does to the lane's waiting first factor (two-factor lanes).
#[derive(Clone, Debug, PartialEq, Default)]
pub enum FactorChange {
    #[default]
    Keep,
    /// This credential is the first factor: it waits for the second.
    Set(FirstFactor),
    /// The second factor completed the pair.
    Clear,
}

/// The core's answer for one credential.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub reason: Reason,
    /// Staff id or invitation id, when one matched (also on a refusal).
    pub subject: Option<String>,
    /// The invitation whose entry this grant uses up.
    pub consumes_entry: Option<String>,
    /// Granted, but against soft anti-passback: the event carries the flag `anti_passback`.
    pub passback_flag: bool,
    pub factor: FactorChange,
}

impl Verdict {
    fn new(reason: Reason, subject: Option<String>) -> Self {
        Self {
            reason,
            subject,
            consumes_entry: None,
            passback_flag: false,
            factor: FactorChange::Keep,
        }
    }

    pub fn granted(&self) -> bool {
        self.reason.is_granted()
    }

    /// The subject whose in/out state this pass moves (anti-passback): any pass of a known
    /// subject by credential, in every mode that lets it through (a grant, a free exit, a
    /// pass under hold-open or emergency release). A refusal moves nobody.
    pub fn moves(&self) -> Option<&str> {
        self.reason
            .moves_passback()
            .then_some(self.subject.as_deref())
            .flatten()
    }
}

/// Decides one credential. Pure: same input, same output.
pub fn decide(
    credential: &Credential,
    lookups: &Lookups,
    ctx: &Context,
    policy: &Policy,
) -> Verdict {
    let known_subject = lookups
        .staff
        .as_ref()
        .map(|s| s.subject.clone())
        .or_else(|| lookups.invitation.as_ref().map(|i| i.invitation.clone()));

    if lookups.denied.is_some() {
        return Verdict::new(Reason::Denylisted, known_subject);
    }
    // Before every mode and rule: a stale swipe releases nothing, whatever it would have been
    // granted, and moves nobody (nobody knows whether its holder went through).
    if ctx
        .swipe_age
        .is_some_and(|a| a.is_stale(policy.max_swipe_age_ms))
    {
        return Verdict::new(Reason::StaleSwipe, known_subject);
    }
    // A missing score is treated as zero: a face terminal that does not say how sure it is
    // has not identified anyone.
    let unsure_face = credential.kind == CredentialKind::Face && {
        let score = credential.score.unwrap_or(0.0);
        score.is_nan() || score < policy.min_face_score
    };
    // Where the lane releases anyway (an open mode, a free direction), the pass still moves
    // the subject it names: a face below the score names nobody, so that it moves nobody.
    let named = if unsure_face {
        None
    } else {
        known_subject.clone()
    };
    match ctx.mode {
        Mode::EmergencyRelease => return Verdict::new(Reason::EmergencyRelease, named),
        Mode::Lockdown if lookups.incomplete => {
            return Verdict::new(Reason::Lockdown, known_subject);
        }
        Mode::Lockdown => {
            return lockdown_exempt(credential, lookups, ctx, policy)
                .unwrap_or_else(|| Verdict::new(Reason::Lockdown, known_subject));
        }
        Mode::HoldOpen => return Verdict::new(Reason::HoldOpen, named),
        Mode::Normal => {}
    }
    let lane = policy.lanes.get(&ctx.lane);
    if lane.is_some_and(|l| l.free(ctx.direction) == FreeExit::Open) {
        return Verdict::new(Reason::FreeExit, named);
    }
    if unsure_face {
        return Verdict::new(Reason::LowFaceScore, known_subject);
    }
    if lookups.incomplete {
        return Verdict::new(Reason::StoreUnavailable, known_subject);
    }
    let hours = [
        policy.gate_hours.as_deref(),
        lane.and_then(|l| l.hours.as_deref()),
    ];
    for name in hours.into_iter().flatten() {
        if !ctx.clock.trusted() {
            return Verdict::new(Reason::ClockUntrusted, known_subject);
        }
        if !schedule_open(policy, ctx.calendar, name, ctx.now) {
            return Verdict::new(Reason::OutsideSchedule, known_subject);
        }
    }

    let staff = lookups.staff.as_ref().map(|s| {
        let schedule = policy.schedule_of(s);
        let entry = Entry {
            validity: &s.validity,
            schedule,
            max_offline: policy.staff_max_offline,
            last: s.last.as_ref(),
        };
        match judge(&entry, ctx, policy) {
            Err(reason) => Verdict::new(reason, Some(s.subject.clone())),
            Ok(flag) => Verdict {
                passback_flag: flag,
                ..Verdict::new(Reason::Staff, Some(s.subject.clone()))
            },
        }
    });
    let chosen = match staff {
        Some(v) if v.granted() => Some(v),
        staff => {
            let visitor = lookups.invitation.as_ref().map(|inv| {
                let entry = Entry {
                    validity: &inv.validity,
                    schedule: inv.schedule.as_deref(),
                    max_offline: policy.visitors_max_offline,
                    last: inv.last.as_ref(),
                };
                // An exit uses no entry (unless the site counts them): a visitor who came in
                // on their last entry must still get out.
                let counts = policy.uses_entry(ctx.direction);
                let exhausted = counts && inv.max_entries.is_some_and(|max| inv.used >= max);
                let judged = judge(&entry, ctx, policy).and_then(|flag| {
                    // Entries are counted after the time checks and before anti-passback.
                    if exhausted {
                        Err(Reason::EntriesExhausted)
                    } else {
                        Ok(flag)
                    }
                });
                match judged {
                    Err(reason) => Verdict::new(reason, Some(inv.invitation.clone())),
                    Ok(flag) => Verdict {
                        consumes_entry: counts.then(|| inv.invitation.clone()),
                        passback_flag: flag,
                        ..Verdict::new(Reason::Visitor, Some(inv.invitation.clone()))
                    },
                }
            });
            match (staff, visitor) {
                (_, Some(v)) if v.granted() => Some(v),
                (Some(s), _) => Some(s),
                (None, v) => v,
            }
        }
    };
    let Some(v) = chosen else {
        return Verdict::new(Reason::UnknownCredential, None);
    };
    match lane.and_then(|l| l.two_factor_ms) {
        Some(window) if v.granted() => second_factor(v, credential.kind, ctx, window),
        _ => v,
    }
}

/// A responder's credential in a lockdown: `None` unless a staff entry marked
/// `lockdown_exempt` holds it. Its gates, window, offline limit and face score still apply, and
/// a two-factor lane still asks for both factors; its schedule and anti-passback do not (a
/// responder comes when called, and may have to go in and out again).
fn lockdown_exempt(
    credential: &Credential,
    lookups: &Lookups,
    ctx: &Context,
    policy: &Policy,
) -> Option<Verdict> {
    let s = lookups.staff.as_ref().filter(|s| s.lockdown_exempt)?;
    let subject = Some(s.subject.clone());
    let unsure_face = credential.kind == CredentialKind::Face
        && credential
            .score
            .is_none_or(|score| score.is_nan() || score < policy.min_face_score);
    if unsure_face {
        return Some(Verdict::new(Reason::LowFaceScore, subject));
    }
    let entry = Entry {
        validity: &s.validity,
        schedule: None,
        max_offline: policy.staff_max_offline,
        last: None,
    };
    let v = match judge(&entry, ctx, policy) {
        Err(reason) => Verdict::new(reason, subject),
        Ok(_) => Verdict::new(Reason::LockdownExempt, subject),
    };
    let window = policy.lanes.get(&ctx.lane).and_then(|l| l.two_factor_ms);
    Some(match window {
        Some(window) if v.granted() => second_factor(v, credential.kind, ctx, window),
        _ => v,
    })
}

/// Decides a press of a lane's request button (`FreeExit::Button`): no credential, so only
/// the mode and the lane's rule count. `None`: the button does not release this direction.
pub fn decide_button(mode: Mode, free: FreeExit) -> Option<Reason> {
    if free != FreeExit::Button {
        return None;
    }
    Some(match mode {
        Mode::Normal => Reason::FreeExit,
        Mode::Lockdown => Reason::Lockdown,
        Mode::HoldOpen => Reason::HoldOpen,
        Mode::EmergencyRelease => Reason::EmergencyRelease,
    })
}

/// A list entry as the rules see it.
struct Entry<'a> {
    validity: &'a Validity,
    schedule: Option<&'a str>,
    max_offline: Option<i64>,
    last: Option<&'a LastPass>,
}

/// Judges an entry at this gate and moment: `Ok(flag)` grants, with the soft anti-passback
/// flag; `Err` is the refusal. An exit is judged by the limits `policy.exit` applies to it,
/// each with its slack (`ExitRules::slack`).
fn judge(e: &Entry, ctx: &Context, policy: &Policy) -> Result<bool, Reason> {
    let v = e.validity;
    if !v.gates.iter().any(|g| g == "*" || g == ctx.gate) {
        return Err(Reason::WrongGate);
    }
    let rules = &policy.exit;
    let slack = |limit| rules.slack(limit, ctx.direction);
    if let (Some(max), Some(off), Some(more)) =
        (e.max_offline, ctx.offline_ms, slack(rules.offline_limit))
        && off > max.saturating_add(more)
    {
        return Err(Reason::OfflineLimit);
    }
    let window = slack(rules.window).filter(|_| v.valid_from.is_some() || v.valid_until.is_some());
    let schedule = e.schedule.zip(slack(rules.schedule));
    if (window.is_some() || schedule.is_some()) && !ctx.clock.trusted() {
        return Err(Reason::ClockUntrusted);
    }
    if let Some(more) = window {
        if v.valid_from.is_some_and(|from| ctx.now < from) {
            return Err(Reason::NotYetValid);
        }
        if v.valid_until
            .is_some_and(|until| ctx.now > until.saturating_add(more))
        {
            return Err(Reason::Expired);
        }
    }
    if let Some((name, more)) = schedule
        && !schedule_open_within(policy, ctx.calendar, name, ctx.now, more)
    {
        return Err(Reason::OutsideSchedule);
    }
    passback(policy, e.last, ctx.direction, ctx.now)
}

/// Whether the named schedule was open at some moment of the last `within` ms (0: at `now`).
fn schedule_open_within(
    policy: &Policy,
    calendar: &Calendar,
    name: &str,
    now: UnixMs,
    within: i64,
) -> bool {
    if schedule_open(policy, calendar, name, now) {
        return true;
    }
    // Schedules open and close on whole minutes of wall time, and every zone in use today is
    // a whole number of minutes from UTC: a schedule is open or closed for a whole UTC minute,
    // so one look per minute back to `now - within` is exact.
    let first = now.saturating_sub(within).div_euclid(60_000) * 60_000;
    std::iter::successors(Some(first), |t| t.checked_add(60_000))
        .take_while(|t| *t < now)
        .any(|t| schedule_open(policy, calendar, name, t))
}

/// Whether the named schedule is open at `now`. A name this gate's config does not define is
/// closed: a list that names a schedule the gate cannot judge grants nothing through it.
fn schedule_open(policy: &Policy, calendar: &Calendar, name: &str, now: UnixMs) -> bool {
    policy
        .schedules
        .get(name)
        .is_some_and(|s| s.open_at(name, calendar, time::local(policy.tz, now)))
}

/// Anti-passback: the subject's last pass, if it still counts (after the last daily reset),
/// must have been in the other direction. `Ok(true)` is a soft violation.
fn passback(
    policy: &Policy,
    last: Option<&LastPass>,
    d: Direction,
    now: UnixMs,
) -> Result<bool, Reason> {
    let rule = policy.passback;
    if rule.mode == PassbackMode::Off {
        return Ok(false);
    }
    let since = rule
        .reset_at
        .map_or(UnixMs::MIN, |at| time::last_reset(policy.tz, at, now));
    let repeated = last.is_some_and(|l| l.direction == d && l.at >= since);
    match (repeated, rule.mode) {
        (false, _) => Ok(false),
        (true, PassbackMode::Hard) => Err(Reason::AntiPassback),
        (true, _) => Ok(true),
    }
}

/// A two-factor lane: `v` grants one factor; it opens only if the other factor of the same
/// subject was presented on this lane within `window` ms before.
fn second_factor(v: Verdict, kind: CredentialKind, ctx: &Context, window: i64) -> Verdict {
    let factor = Factor::of(kind);
    let Some(subject) = v.subject.clone() else {
        return Verdict::new(Reason::SecondFactorRequired, None);
    };
    let completes = ctx.first_factor.is_some_and(|f| {
        f.subject == subject
            && f.factor != factor
            && f.direction == ctx.direction
            && ctx.now >= f.at
            && ctx.now - f.at <= window
    });
    if completes {
        return Verdict {
            factor: FactorChange::Clear,
            ..v
        };
    }
    Verdict {
        factor: FactorChange::Set(FirstFactor {
            subject: subject.clone(),
            factor,
            direction: ctx.direction,
            at: ctx.now,
        }),
        ..Verdict::new(Reason::SecondFactorRequired, Some(subject))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClockState, InvitationMatch, StaffMatch, SwipeAge};
    use proptest::prelude::*;

    const NOW: UnixMs = 1_795_000_000_000;
    const GATE: &str = "east-1";

    fn card(id: &str) -> Credential {
        Credential {
            kind: CredentialKind::Card,
            id: id.into(),
            score: None,
        }
    }

    fn face(score: f64) -> Credential {
        Credential {
            kind: CredentialKind::Face,
            id: "P1001".into(),
            score: Some(score),
        }
    }

    fn everywhere() -> Validity {
        Validity {
            valid_from: None,
            valid_until: None,
            gates: vec!["*".into()],
        }
    }

    fn staff(validity: Validity) -> Lookups {
        Lookups {
            staff: Some(StaffMatch {
                subject: "E1001".into(),
                validity,
                schedule: None,
                group: None,
                lockdown_exempt: false,
                last: None,
            }),
            ..Lookups::default()
        }
    }

    fn invitation(validity: Validity, max: Option<u32>, used: u32) -> Lookups {
        Lookups {
            invitation: Some(InvitationMatch {
                invitation: "INV-1".into(),
                validity,
                max_entries: max,
                used,
                schedule: None,
                last: None,
            }),
            ..Lookups::default()
        }
    }

    fn ctx(mode: Mode, now: UnixMs) -> Context<'static> {
        static CALENDAR: std::sync::LazyLock<Calendar> =
            std::sync::LazyLock::new(Calendar::default);
        Context {
            gate: GATE,
            lane: 0,
            direction: Direction::In,
            mode,
            now,
            clock: ClockState::Synced,
            offline_ms: None,
            calendar: &CALENDAR,
            first_factor: None,
            swipe_age: None,
        }
    }

    fn run(c: &Credential, l: &Lookups, mode: Mode) -> Verdict {
        decide(c, l, &ctx(mode, NOW), &Policy::default())
    }

    fn at(c: &Credential, l: &Lookups, mode: Mode, now: UnixMs) -> Verdict {
        decide(c, l, &ctx(mode, now), &Policy::default())
    }

    #[test]
    fn staff_card_is_granted_with_subject() {
        let v = run(&card("1"), &staff(everywhere()), Mode::Normal);
        assert_eq!(v.reason, Reason::Staff);
        assert_eq!(v.subject.as_deref(), Some("E1001"));
        assert_eq!(v.consumes_entry, None);
    }

    #[test]
    fn unknown_card_is_denied() {
        let v = run(&card("1"), &Lookups::default(), Mode::Normal);
        assert_eq!(v.reason, Reason::UnknownCredential);
        assert_eq!(v.subject, None);
    }

    #[test]
    fn deny_list_wins_over_staff_and_every_mode() {
        let mut l = staff(everywhere());
        l.denied = Some("reported lost".into());
        for mode in [
            Mode::Normal,
            Mode::Lockdown,
            Mode::HoldOpen,
            Mode::EmergencyRelease,
        ] {
            assert_eq!(run(&card("1"), &l, mode).reason, Reason::Denylisted);
        }
    }

    #[test]
    /// Issue 22 (review of the salvage): a deny list or calendar a salvage lost left revoked
    /// cards granted until its snapshot came.
    fn with_lists_lost_nothing_that_needs_them_is_granted() {
        let mut lost = staff(everywhere());
        lost.incomplete = true;
        let refused = run(&card("1"), &lost, Mode::Normal);
        assert_eq!(refused.reason, Reason::StoreUnavailable);
        assert!(!refused.granted());
        if let Some(s) = lost.staff.as_mut() {
            s.lockdown_exempt = true;
        }
        assert_eq!(
            run(&card("1"), &lost, Mode::Lockdown).reason,
            Reason::Lockdown
        );
        // What needs no list still opens: the open modes.
        assert_eq!(
            run(&card("1"), &lost, Mode::HoldOpen).reason,
            Reason::HoldOpen
        );
        assert_eq!(
            run(&card("1"), &staff(everywhere()), Mode::Normal).reason,
            Reason::Staff
        );
    }

    #[test]
    fn a_stale_swipe_is_refused_in_every_mode_and_moves_nobody() {
        let policy = Policy::default();
        let max = policy.max_swipe_age_ms;
        let with_age = |mode, age| Context {
            swipe_age: age,
            ..ctx(mode, NOW)
        };
        let decide_at = |mode, age| {
            decide(
                &card("1"),
                &staff(everywhere()),
                &with_age(mode, age),
                &policy,
            )
        };
        // At the limit, or with no queue behind it, it is a pass like any other.
        assert_eq!(decide_at(Mode::Normal, None).reason, Reason::Staff);
        assert_eq!(
            decide_at(Mode::Normal, Some(SwipeAge::Known(max))).reason,
            Reason::Staff
        );
        for mode in [
            Mode::Normal,
            Mode::Lockdown,
            Mode::HoldOpen,
            Mode::EmergencyRelease,
        ] {
            for age in [SwipeAge::Known(max + 1), SwipeAge::Unknown] {
                let v = decide_at(mode, Some(age));
                assert_eq!(v.reason, Reason::StaleSwipe, "{mode:?} {age:?}");
                assert!(!v.granted(), "a stale swipe never releases");
                assert_eq!(v.subject.as_deref(), Some("E1001"));
            }
        }
        assert!(!Reason::StaleSwipe.moves_passback());
        // The deny list still names what it is.
        let mut denied = staff(everywhere());
        denied.denied = Some("lost".into());
        let v = decide(
            &card("1"),
            &denied,
            &with_age(Mode::Normal, Some(SwipeAge::Unknown)),
            &policy,
        );
        assert_eq!(v.reason, Reason::Denylisted);
    }

    #[test]
    fn window_bounds_are_inclusive() {
        let at_edges = Validity {
            valid_from: Some(NOW),
            valid_until: Some(NOW),
            gates: vec![GATE.into()],
        };
        assert_eq!(
            run(&card("1"), &staff(at_edges), Mode::Normal).reason,
            Reason::Staff
        );
        let future = Validity {
            valid_from: Some(NOW + 1),
            ..everywhere()
        };
        assert_eq!(
            run(&card("1"), &staff(future), Mode::Normal).reason,
            Reason::NotYetValid
        );
        let past = Validity {
            valid_until: Some(NOW - 1),
            ..everywhere()
        };
        assert_eq!(
            run(&card("1"), &staff(past), Mode::Normal).reason,
            Reason::Expired
        );
    }

    #[test]
    fn other_gate_is_wrong_gate() {
        let elsewhere = Validity {
            gates: vec!["west-2".into()],
            ..everywhere()
        };
        assert_eq!(
            run(&card("1"), &staff(elsewhere), Mode::Normal).reason,
            Reason::WrongGate
        );
        let nowhere = Validity {
            gates: vec![],
            ..everywhere()
        };
        assert_eq!(
            run(&card("1"), &staff(nowhere), Mode::Normal).reason,
            Reason::WrongGate
        );
    }

    #[test]
    fn visitor_entries_count_down() {
        let qr = Credential {
            kind: CredentialKind::Qr,
            id: "tok".into(),
            score: None,
        };
        let v = run(&qr, &invitation(everywhere(), Some(2), 1), Mode::Normal);
        assert_eq!(v.reason, Reason::Visitor);
        assert_eq!(v.consumes_entry.as_deref(), Some("INV-1"));
        let v = run(&qr, &invitation(everywhere(), Some(2), 2), Mode::Normal);
        assert_eq!(v.reason, Reason::EntriesExhausted);
        assert_eq!(v.consumes_entry, None);
        let v = run(&qr, &invitation(everywhere(), None, 500), Mode::Normal);
        assert_eq!(v.reason, Reason::Visitor);
    }

    #[test]
    fn face_score_threshold() {
        let l = staff(everywhere());
        assert_eq!(
            run(&face(0.79), &l, Mode::Normal).reason,
            Reason::LowFaceScore
        );
        assert_eq!(run(&face(0.80), &l, Mode::Normal).reason, Reason::Staff);
        assert_eq!(
            run(&face(f64::NAN), &l, Mode::Normal).reason,
            Reason::LowFaceScore
        );
        let no_score = Credential {
            score: None,
            ..face(1.0)
        };
        assert_eq!(
            run(&no_score, &l, Mode::Normal).reason,
            Reason::LowFaceScore
        );
    }

    #[test]
    fn modes() {
        let l = staff(everywhere());
        assert_eq!(run(&card("1"), &l, Mode::Lockdown).reason, Reason::Lockdown);
        assert_eq!(run(&card("1"), &l, Mode::HoldOpen).reason, Reason::HoldOpen);
        let v = run(&card("1"), &Lookups::default(), Mode::EmergencyRelease);
        assert_eq!(v.reason, Reason::EmergencyRelease);
    }

    /// After an evacuation (emergency release) or a hold-open, the pass each known subject
    /// made by credential is their last one: a staff member who badged out under emergency
    /// release comes back in in normal mode.
    #[test]
    fn a_pass_in_an_open_mode_moves_its_subject() {
        let hard = Policy {
            passback: Passback {
                mode: PassbackMode::Hard,
                reset_at: None,
            },
            ..Policy::default()
        };
        for open in [Mode::EmergencyRelease, Mode::HoldOpen] {
            let mut l = staff(everywhere());
            let mut last = Some(LastPass {
                direction: Direction::In,
                at: NOW - 1,
            });
            if let Some(s) = l.staff.as_mut() {
                s.last = last.clone();
            }
            let out = Context {
                direction: Direction::Out,
                ..ctx(open, NOW)
            };
            let v = decide(&card("1"), &l, &out, &hard);
            assert_eq!(v.moves(), Some("E1001"), "{open:?}");
            if v.moves().is_some() {
                last = Some(LastPass {
                    direction: Direction::Out,
                    at: NOW,
                });
            }
            if let Some(s) = l.staff.as_mut() {
                s.last = last;
            }
            let back = decide(&card("1"), &l, &ctx(Mode::Normal, NOW + 1), &hard);
            assert_eq!(back.reason, Reason::Staff, "{open:?}");
        }
        // A face below the score names nobody, and moves nobody, in an open mode too.
        let v = run(&face(0.1), &staff(everywhere()), Mode::EmergencyRelease);
        assert_eq!((v.reason, v.moves()), (Reason::EmergencyRelease, None));
        // Refusals move nobody: lockdown, the deny list.
        let v = run(&card("1"), &staff(everywhere()), Mode::Lockdown);
        assert_eq!(v.moves(), None);
        let mut denied = staff(everywhere());
        denied.denied = Some("lost".into());
        assert_eq!(run(&card("1"), &denied, Mode::HoldOpen).moves(), None);
    }

    #[test]
    fn a_lockdown_exempt_entry_passes_a_lockdown_within_its_window_and_gates() {
        let mut l = staff(everywhere());
        assert_eq!(run(&card("1"), &l, Mode::Lockdown).reason, Reason::Lockdown);
        if let Some(s) = l.staff.as_mut() {
            s.lockdown_exempt = true;
            // Outside office hours too: a responder comes when called.
            s.schedule = Some("never".into());
        }
        let v = run(&card("1"), &l, Mode::Lockdown);
        assert_eq!(
            (v.reason, v.subject.as_deref()),
            (Reason::LockdownExempt, Some("E1001"))
        );
        assert!(v.granted());
        assert_eq!(v.moves(), Some("E1001"), "its direction is recorded");
        // In normal mode the flag changes nothing: the schedule applies.
        assert_eq!(
            run(&card("1"), &l, Mode::Normal).reason,
            Reason::OutsideSchedule
        );
        let expired = |l: &mut Lookups| {
            if let Some(s) = l.staff.as_mut() {
                s.validity.valid_until = Some(NOW - 1);
            }
        };
        let mut old = l.clone();
        expired(&mut old);
        assert_eq!(
            run(&card("1"), &old, Mode::Lockdown).reason,
            Reason::Expired
        );
        let mut elsewhere = l.clone();
        if let Some(s) = elsewhere.staff.as_mut() {
            s.validity.gates = vec!["west-2".into()];
        }
        assert_eq!(
            run(&card("1"), &elsewhere, Mode::Lockdown).reason,
            Reason::WrongGate
        );
        let mut denied = l.clone();
        denied.denied = Some("reported lost".into());
        assert_eq!(
            run(&card("1"), &denied, Mode::Lockdown).reason,
            Reason::Denylisted
        );
        let blurred = Credential {
            kind: CredentialKind::Face,
            id: "P1".into(),
            score: Some(0.1),
        };
        assert_eq!(
            run(&blurred, &l, Mode::Lockdown).reason,
            Reason::LowFaceScore
        );
    }

    #[test]
    fn staff_refusal_falls_back_to_a_valid_invitation() {
        let mut l = invitation(everywhere(), Some(1), 0);
        l.staff = Some(StaffMatch {
            subject: "E1".into(),
            validity: Validity {
                valid_until: Some(NOW - 1),
                ..everywhere()
            },
            schedule: None,
            group: None,
            lockdown_exempt: false,
            last: None,
        });
        assert_eq!(run(&card("1"), &l, Mode::Normal).reason, Reason::Visitor);
        if let Some(i) = l.invitation.as_mut() {
            i.used = 1;
        }
        let v = run(&card("1"), &l, Mode::Normal);
        assert_eq!(v.reason, Reason::Expired);
        assert_eq!(v.subject.as_deref(), Some("E1"));
    }

    // ---- the rules of schedules, anti-passback, clock, offline, two factors, free exit ---

    use crate::time::Untrust;
    use crate::{
        ExitLimit, ExitRules, Factor, FirstFactor, FreeExit, LaneRules, Passback, PassbackMode,
    };

    /// Monday 2026-11-23 12:00 UTC.
    const MONDAY_NOON: UnixMs = 1_795_435_200_000;
    const HOUR: UnixMs = 3_600_000;

    use crate::time::tests::office;

    fn rich_policy() -> Policy {
        let mut p = Policy::default();
        p.schedules.insert("office".into(), office());
        p.groups.insert("cleaners".into(), "office".into());
        p
    }

    fn with_schedule(schedule: Option<&str>, group: Option<&str>) -> Lookups {
        let mut l = staff(everywhere());
        if let Some(s) = l.staff.as_mut() {
            s.schedule = schedule.map(String::from);
            s.group = group.map(String::from);
        }
        l
    }

    /// One example per reason code a credential can get: the whole table of docs/policy.md.
    #[test]
    fn every_reason_code_has_an_example() {
        let cal = Calendar::default();
        let base = Context {
            calendar: &cal,
            now: MONDAY_NOON,
            ..ctx(Mode::Normal, MONDAY_NOON)
        };
        let p = rich_policy();
        let check = |want: Reason, c: &Credential, l: &Lookups, ctx: &Context, p: &Policy| {
            assert_eq!(decide(c, l, ctx, p).reason, want, "{want:?}");
        };
        let s = staff(everywhere());
        let qr = Credential {
            kind: CredentialKind::Qr,
            id: "t".into(),
            score: None,
        };
        check(Reason::Staff, &card("1"), &s, &base, &p);
        check(
            Reason::Visitor,
            &qr,
            &invitation(everywhere(), Some(1), 0),
            &base,
            &p,
        );
        check(
            Reason::UnknownCredential,
            &card("1"),
            &Lookups::default(),
            &base,
            &p,
        );
        let mut denied = s.clone();
        denied.denied = Some("lost".into());
        check(Reason::Denylisted, &card("1"), &denied, &base, &p);
        for (mode, want) in [
            (Mode::EmergencyRelease, Reason::EmergencyRelease),
            (Mode::Lockdown, Reason::Lockdown),
            (Mode::HoldOpen, Reason::HoldOpen),
        ] {
            check(
                want,
                &card("1"),
                &s,
                &Context {
                    mode,
                    ..base.clone()
                },
                &p,
            );
        }
        let mut responder = s.clone();
        if let Some(r) = responder.staff.as_mut() {
            r.lockdown_exempt = true;
        }
        let lockdown = Context {
            mode: Mode::Lockdown,
            ..base.clone()
        };
        check(
            Reason::LockdownExempt,
            &card("1"),
            &responder,
            &lockdown,
            &p,
        );
        check(Reason::LowFaceScore, &face(0.1), &s, &base, &p);
        let later = Validity {
            valid_from: Some(MONDAY_NOON + 1),
            ..everywhere()
        };
        check(Reason::NotYetValid, &card("1"), &staff(later), &base, &p);
        let past = Validity {
            valid_until: Some(MONDAY_NOON - 1),
            ..everywhere()
        };
        check(Reason::Expired, &card("1"), &staff(past), &base, &p);
        let west = Validity {
            gates: vec!["west-2".into()],
            ..everywhere()
        };
        check(Reason::WrongGate, &card("1"), &staff(west), &base, &p);
        check(
            Reason::EntriesExhausted,
            &qr,
            &invitation(everywhere(), Some(1), 1),
            &base,
            &p,
        );
        let evening = Context {
            now: MONDAY_NOON + 7 * HOUR,
            ..base.clone()
        };
        check(
            Reason::OutsideSchedule,
            &card("1"),
            &with_schedule(Some("office"), None),
            &evening,
            &p,
        );
        let untrusted = Context {
            clock: ClockState::Untrusted(Untrust::NotSynced),
            ..base.clone()
        };
        check(
            Reason::ClockUntrusted,
            &qr,
            &invitation(
                Validity {
                    valid_until: Some(MONDAY_NOON + HOUR),
                    ..everywhere()
                },
                None,
                0,
            ),
            &untrusted,
            &p,
        );
        let offline = Context {
            offline_ms: Some(25 * HOUR),
            ..base.clone()
        };
        let limited = Policy {
            visitors_max_offline: Some(24 * HOUR),
            ..rich_policy()
        };
        check(
            Reason::OfflineLimit,
            &qr,
            &invitation(everywhere(), None, 0),
            &offline,
            &limited,
        );
        let hard = Policy {
            passback: Passback {
                mode: PassbackMode::Hard,
                reset_at: None,
            },
            ..rich_policy()
        };
        let mut inside = s.clone();
        if let Some(st) = inside.staff.as_mut() {
            st.last = Some(LastPass {
                direction: Direction::In,
                at: MONDAY_NOON - HOUR,
            });
        }
        check(Reason::AntiPassback, &card("1"), &inside, &base, &hard);
        let mut two = rich_policy();
        two.lanes.insert(
            0,
            LaneRules {
                two_factor_ms: Some(10_000),
                ..LaneRules::default()
            },
        );
        check(Reason::SecondFactorRequired, &card("1"), &s, &base, &two);
        let mut free = rich_policy();
        free.lanes.insert(
            0,
            LaneRules {
                free_in: FreeExit::Open,
                ..LaneRules::default()
            },
        );
        check(
            Reason::FreeExit,
            &card("1"),
            &Lookups::default(),
            &base,
            &free,
        );
        check(Reason::Denylisted, &card("1"), &denied, &base, &free);
    }

    /// A visitor's exit uses no entry: in, out, in with two entries; out on the last one.
    /// A site that counts every pass (`uses_entry`) gets the old count back.
    #[test]
    fn a_visitor_exit_uses_no_entry_and_is_granted_on_the_last_one() {
        let qr = Credential {
            kind: CredentialKind::Qr,
            id: "t".into(),
            score: None,
        };
        let out = Context {
            direction: Direction::Out,
            ..ctx(Mode::Normal, NOW)
        };
        let p = Policy::default();
        // Two entries: in (used 0 → 1), out (used stays 1), in (1 → 2), out, in refused.
        let mut used = 0;
        for (d, want) in [
            (Direction::In, Reason::Visitor),
            (Direction::Out, Reason::Visitor),
            (Direction::In, Reason::Visitor),
            (Direction::Out, Reason::Visitor),
            (Direction::In, Reason::EntriesExhausted),
        ] {
            let c = Context {
                direction: d,
                ..out.clone()
            };
            let v = decide(&qr, &invitation(everywhere(), Some(2), used), &c, &p);
            assert_eq!(v.reason, want, "{d:?} with {used} used");
            used += u32::from(v.consumes_entry.is_some());
        }
        assert_eq!(used, 2);
        let counting = Policy {
            exit: ExitRules {
                uses_entry: true,
                ..ExitRules::default()
            },
            ..Policy::default()
        };
        let v = decide(&qr, &invitation(everywhere(), Some(1), 1), &out, &counting);
        assert_eq!(v.reason, Reason::EntriesExhausted);
        let v = decide(&qr, &invitation(everywhere(), Some(2), 1), &out, &counting);
        assert_eq!(v.consumes_entry.as_deref(), Some("INV-1"));
    }

    /// Per direction: past `valid_until`, past the schedule and past the offline limit, an exit
    /// is granted within the grace and refused after it, while the entry is refused at once;
    /// `refuse` and `ignore` do what they say.
    #[test]
    fn exits_get_a_grace_on_the_window_the_schedule_and_the_offline_limit() {
        let cal = Calendar::default();
        let grace = 30 * 60_000;
        let judge_at = |l: &Lookups, d: Direction, now: UnixMs, off: Option<i64>, p: &Policy| {
            let c = Context {
                direction: d,
                calendar: &cal,
                offline_ms: off,
                ..ctx(Mode::Normal, now)
            };
            decide(&card("1"), l, &c, p).reason
        };
        // The schedule's grace is tested here; by default a schedule never refuses an exit.
        let p = Policy {
            staff_max_offline: Some(24 * HOUR),
            exit: ExitRules {
                schedule: ExitLimit::Grace,
                ..ExitRules::default()
            },
            ..rich_policy()
        };
        // The window: valid until noon.
        let until_noon = staff(Validity {
            valid_until: Some(MONDAY_NOON),
            ..everywhere()
        });
        for (after, out) in [
            (1, Reason::Staff),
            (grace, Reason::Staff),
            (grace + 1, Reason::Expired),
        ] {
            let now = MONDAY_NOON + after;
            assert_eq!(
                judge_at(&until_noon, Direction::In, now, None, &p),
                Reason::Expired
            );
            assert_eq!(
                judge_at(&until_noon, Direction::Out, now, None, &p),
                out,
                "{after}"
            );
        }
        // The schedule: office closes Monday 18:00 UTC.
        let closing = MONDAY_NOON + 6 * HOUR;
        let office = with_schedule(Some("office"), None);
        for (after, out) in [
            (0, Reason::Staff),
            (grace - 1, Reason::Staff),
            (grace + 60_000, Reason::OutsideSchedule),
        ] {
            let now = closing + after;
            assert_eq!(
                judge_at(&office, Direction::In, now, None, &p),
                Reason::OutsideSchedule
            );
            assert_eq!(
                judge_at(&office, Direction::Out, now, None, &p),
                out,
                "{after}"
            );
        }
        // The offline limit.
        let s = staff(everywhere());
        let day = 24 * HOUR;
        for (off, out) in [
            (day + grace, Reason::Staff),
            (day + grace + 1, Reason::OfflineLimit),
        ] {
            assert_eq!(
                judge_at(&s, Direction::In, MONDAY_NOON, Some(off), &p),
                Reason::OfflineLimit
            );
            assert_eq!(
                judge_at(&s, Direction::Out, MONDAY_NOON, Some(off), &p),
                out
            );
        }
        // `refuse` judges an exit as an entry; `ignore` never refuses it.
        for (limit, late) in [(ExitLimit::Refuse, false), (ExitLimit::Ignore, true)] {
            let q = Policy {
                exit: ExitRules {
                    window: limit,
                    schedule: limit,
                    offline_limit: limit,
                    ..ExitRules::default()
                },
                ..p.clone()
            };
            let far = 10 * day;
            let want = |r| if late { Reason::Staff } else { r };
            assert_eq!(
                judge_at(&until_noon, Direction::Out, MONDAY_NOON + 1, None, &q),
                want(Reason::Expired)
            );
            assert_eq!(
                judge_at(&office, Direction::Out, closing + far, None, &q),
                want(Reason::OutsideSchedule)
            );
            assert_eq!(
                judge_at(&s, Direction::Out, MONDAY_NOON, Some(far), &q),
                want(Reason::OfflineLimit)
            );
        }
        // What still refuses an exit: the deny list, lockdown, not yet valid, anti-passback.
        let mut denied = s.clone();
        denied.denied = Some("lost".into());
        assert_eq!(
            judge_at(&denied, Direction::Out, MONDAY_NOON, None, &p),
            Reason::Denylisted
        );
        let later = staff(Validity {
            valid_from: Some(MONDAY_NOON + 1),
            ..everywhere()
        });
        assert_eq!(
            judge_at(&later, Direction::Out, MONDAY_NOON, None, &p),
            Reason::NotYetValid
        );
        let c = Context {
            direction: Direction::Out,
            calendar: &cal,
            ..ctx(Mode::Lockdown, MONDAY_NOON)
        };
        assert_eq!(decide(&card("1"), &s, &c, &p).reason, Reason::Lockdown);
    }

    #[test]
    fn a_request_button_releases_only_a_button_direction_and_not_in_lockdown() {
        assert_eq!(
            decide_button(Mode::Normal, FreeExit::Button),
            Some(Reason::FreeExit)
        );
        assert_eq!(
            decide_button(Mode::Lockdown, FreeExit::Button),
            Some(Reason::Lockdown)
        );
        assert_eq!(
            decide_button(Mode::HoldOpen, FreeExit::Button),
            Some(Reason::HoldOpen)
        );
        assert_eq!(
            decide_button(Mode::EmergencyRelease, FreeExit::Button),
            Some(Reason::EmergencyRelease)
        );
        for free in [FreeExit::No, FreeExit::Open] {
            assert_eq!(decide_button(Mode::Normal, free), None);
        }
        // A credential on a button direction is decided as usual.
        let cal = Calendar::default();
        let mut p = rich_policy();
        p.lanes.insert(
            0,
            LaneRules {
                free_in: FreeExit::Button,
                ..LaneRules::default()
            },
        );
        let c = Context {
            calendar: &cal,
            ..ctx(Mode::Normal, MONDAY_NOON)
        };
        assert_eq!(
            decide(&card("1"), &Lookups::default(), &c, &p).reason,
            Reason::UnknownCredential
        );
    }

    #[test]
    fn an_invitation_with_a_schedule_opens_only_in_its_hours() {
        let cal = Calendar::default();
        let p = rich_policy();
        let at = |now| Context {
            calendar: &cal,
            ..ctx(Mode::Normal, now)
        };
        let mut l = invitation(everywhere(), Some(10), 0);
        let with = |l: &mut Lookups, s: &str| {
            if let Some(i) = l.invitation.as_mut() {
                i.schedule = Some(s.into());
            }
        };
        with(&mut l, "office");
        let qr = card("1");
        assert_eq!(
            decide(&qr, &l, &at(MONDAY_NOON), &p).reason,
            Reason::Visitor
        );
        let evening = decide(&qr, &l, &at(MONDAY_NOON + 10 * HOUR), &p);
        assert_eq!(
            (evening.reason, evening.consumes_entry),
            (Reason::OutsideSchedule, None)
        );
        // A schedule this gate does not know grants nothing, as for staff.
        with(&mut l, "contractors");
        assert_eq!(
            decide(&qr, &l, &at(MONDAY_NOON), &p).reason,
            Reason::OutsideSchedule
        );
    }

    #[test]
    fn schedules_by_entry_by_group_and_by_lane() {
        let cal = Calendar::default();
        let p = rich_policy();
        let noon = Context {
            calendar: &cal,
            ..ctx(Mode::Normal, MONDAY_NOON)
        };
        let night = Context {
            now: MONDAY_NOON + 10 * HOUR,
            ..noon.clone()
        };
        let by_group = with_schedule(None, Some("cleaners"));
        assert_eq!(
            decide(&card("1"), &by_group, &noon, &p).reason,
            Reason::Staff
        );
        assert_eq!(
            decide(&card("1"), &by_group, &night, &p).reason,
            Reason::OutsideSchedule
        );
        // A group or a schedule this gate does not know grants nothing (fail closed).
        let unmapped = with_schedule(None, Some("drivers"));
        assert_eq!(
            decide(&card("1"), &unmapped, &noon, &p).reason,
            Reason::OutsideSchedule
        );
        let unknown = with_schedule(Some("nope"), None);
        assert_eq!(
            decide(&card("1"), &unknown, &noon, &p).reason,
            Reason::OutsideSchedule
        );
        // Lane hours close the lane for everyone, staff with no schedule too.
        let mut lane = rich_policy();
        lane.lanes.insert(
            0,
            LaneRules {
                hours: Some("office".into()),
                ..LaneRules::default()
            },
        );
        let s = staff(everywhere());
        assert_eq!(decide(&card("1"), &s, &noon, &lane).reason, Reason::Staff);
        assert_eq!(
            decide(&card("1"), &s, &night, &lane).reason,
            Reason::OutsideSchedule
        );
        let gate = Policy {
            gate_hours: Some("office".into()),
            ..rich_policy()
        };
        assert_eq!(
            decide(&card("1"), &s, &night, &gate).reason,
            Reason::OutsideSchedule
        );
        // With an untrusted clock, hours are not judged at all.
        let untrusted = Context {
            clock: ClockState::Untrusted(Untrust::BeforeBuild),
            ..noon.clone()
        };
        assert_eq!(
            decide(&card("1"), &s, &untrusted, &gate).reason,
            Reason::ClockUntrusted
        );
    }

    #[test]
    fn staff_with_no_window_still_pass_on_an_untrusted_clock() {
        let cal = Calendar::default();
        let untrusted = Context {
            calendar: &cal,
            clock: ClockState::Untrusted(Untrust::BeforeLastEvent),
            ..ctx(Mode::Normal, MONDAY_NOON)
        };
        let p = rich_policy();
        assert_eq!(
            decide(&card("1"), &staff(everywhere()), &untrusted, &p).reason,
            Reason::Staff
        );
        let windowed = Validity {
            valid_until: Some(MONDAY_NOON + HOUR),
            ..everywhere()
        };
        assert_eq!(
            decide(&card("1"), &staff(windowed), &untrusted, &p).reason,
            Reason::ClockUntrusted
        );
    }

    #[test]
    fn anti_passback_soft_flags_and_resets_daily() {
        let cal = Calendar::default();
        let now = MONDAY_NOON;
        let c = Context {
            calendar: &cal,
            ..ctx(Mode::Normal, now)
        };
        let mut l = staff(everywhere());
        if let Some(s) = l.staff.as_mut() {
            s.last = Some(LastPass {
                direction: Direction::In,
                at: now - HOUR,
            });
        }
        let soft = Policy {
            passback: Passback {
                mode: PassbackMode::Soft,
                reset_at: None,
            },
            ..rich_policy()
        };
        let v = decide(&card("1"), &l, &c, &soft);
        assert_eq!(v.reason, Reason::Staff);
        assert!(v.passback_flag);
        // The other direction is fine.
        let out = Context {
            direction: Direction::Out,
            ..c.clone()
        };
        assert!(!decide(&card("1"), &l, &out, &soft).passback_flag);
        // Reset at 11:30 UTC: the 11:00 entry no longer counts at 12:00; at 11:00 it did.
        let reset = Policy {
            passback: Passback {
                mode: PassbackMode::Hard,
                reset_at: Some(11 * 60 + 30),
            },
            ..rich_policy()
        };
        assert_eq!(decide(&card("1"), &l, &c, &reset).reason, Reason::Staff);
        let before_reset = Context {
            now: now - HOUR + 60_000,
            ..c.clone()
        };
        assert_eq!(
            decide(&card("1"), &l, &before_reset, &reset).reason,
            Reason::AntiPassback
        );
    }

    #[test]
    fn two_factors_in_either_order_within_the_window() {
        let cal = Calendar::default();
        let mut p = rich_policy();
        p.lanes.insert(
            0,
            LaneRules {
                two_factor_ms: Some(10_000),
                ..LaneRules::default()
            },
        );
        let s = staff(everywhere());
        let first = |f: Factor, at: UnixMs| FirstFactor {
            subject: "E1001".into(),
            factor: f,
            direction: Direction::In,
            at,
        };
        for (presented, waiting) in [(card("1"), Factor::Face), (face(0.9), Factor::Token)] {
            let w = first(waiting, MONDAY_NOON - 5_000);
            let c = Context {
                calendar: &cal,
                first_factor: Some(&w),
                ..ctx(Mode::Normal, MONDAY_NOON)
            };
            let v = decide(&presented, &s, &c, &p);
            assert_eq!(v.reason, Reason::Staff);
            assert_eq!(v.factor, FactorChange::Clear);
        }
        // Too late, the same factor twice, another subject, or the other direction: refused,
        // and this one waits.
        for w in [
            first(Factor::Face, MONDAY_NOON - 10_001),
            first(Factor::Token, MONDAY_NOON - 1_000),
            FirstFactor {
                subject: "E2".into(),
                ..first(Factor::Face, MONDAY_NOON - 1_000)
            },
            FirstFactor {
                direction: Direction::Out,
                ..first(Factor::Face, MONDAY_NOON - 1_000)
            },
        ] {
            let c = Context {
                calendar: &cal,
                first_factor: Some(&w),
                ..ctx(Mode::Normal, MONDAY_NOON)
            };
            let v = decide(&card("1"), &s, &c, &p);
            assert_eq!(v.reason, Reason::SecondFactorRequired);
            assert_eq!(
                v.factor,
                FactorChange::Set(first(Factor::Token, MONDAY_NOON))
            );
        }
    }

    /// Runs a sequence of presentations through `decide`, carrying the state the store keeps
    /// (anti-passback, the waiting first factor) from one to the next as the store does.
    fn replay(
        steps: &[(Direction, CredentialKind, UnixMs)],
        p: &Policy,
        mut each: impl FnMut(Direction, CredentialKind, UnixMs, &Verdict),
    ) {
        let cal = Calendar::default();
        let mut last: Option<LastPass> = None;
        let mut waiting: Option<FirstFactor> = None;
        for (d, kind, now) in steps {
            let mut l = staff(everywhere());
            if let Some(s) = l.staff.as_mut() {
                s.last = last.clone();
            }
            let c = Credential {
                kind: *kind,
                id: "x".into(),
                score: (*kind == CredentialKind::Face).then_some(0.95),
            };
            let cx = Context {
                direction: *d,
                calendar: &cal,
                first_factor: waiting.as_ref(),
                ..ctx(Mode::Normal, *now)
            };
            let v = decide(&c, &l, &cx, p);
            if v.moves().is_some() {
                last = Some(LastPass {
                    direction: *d,
                    at: *now,
                });
            }
            match &v.factor {
                FactorChange::Set(f) => waiting = Some(f.clone()),
                FactorChange::Clear => waiting = None,
                FactorChange::Keep => {}
            }
            each(*d, *kind, *now, &v);
        }
    }

    fn arb_steps() -> impl Strategy<Value = Vec<(Direction, CredentialKind, UnixMs)>> {
        prop::collection::vec(
            (
                prop::sample::select(vec![Direction::In, Direction::Out]),
                prop::sample::select(vec![CredentialKind::Card, CredentialKind::Face]),
                0i64..20_000,
            ),
            1..30,
        )
        .prop_map(|v| {
            let mut t = MONDAY_NOON;
            v.into_iter()
                .map(|(d, k, gap)| {
                    t += gap;
                    (d, k, t)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn nothing_is_granted_outside_its_schedule(
            c in arb_credential(), now in MONDAY_NOON - 7 * 24 * HOUR..MONDAY_NOON + 7 * 24 * HOUR,
            lane_hours in any::<bool>(),
        ) {
            let cal = Calendar::default();
            let mut p = rich_policy();
            if lane_hours {
                p.lanes.insert(0, LaneRules { hours: Some("office".into()), ..LaneRules::default() });
            }
            let l = if lane_hours { staff(everywhere()) } else { with_schedule(Some("office"), None) };
            let cx = Context { calendar: &cal, ..ctx(Mode::Normal, now) };
            let v = decide(&c, &l, &cx, &p);
            let open = office().open_at("office", &cal, crate::time::local(p.tz, now));
            prop_assert!(!v.granted() || open, "granted at {} outside office hours", now);
        }

        #[test]
        fn hard_anti_passback_never_grants_a_direction_twice_in_a_row(steps in arb_steps()) {
            let p = Policy { passback: Passback { mode: PassbackMode::Hard, reset_at: None }, ..rich_policy() };
            let mut granted: Vec<Direction> = Vec::new();
            replay(&steps, &p, |d, _, _, v| if v.granted() { granted.push(d) });
            for pair in granted.windows(2) {
                prop_assert_ne!(pair[0], pair[1]);
            }
        }

        #[test]
        fn an_untrusted_clock_grants_nothing_limited_in_time(
            c in arb_credential(), mut l in arb_lookups(), why in prop::sample::select(vec![
                Untrust::NotSynced, Untrust::Jumped, Untrust::BeforeLastEvent, Untrust::BeforeBuild]),
            scheduled in any::<bool>(), now in NOW - 20_000..NOW + 20_000,
        ) {
            let cal = Calendar::default();
            if let (true, Some(s)) = (scheduled, l.staff.as_mut()) {
                s.schedule = Some("office".into());
            }
            let cx = Context { calendar: &cal, clock: ClockState::Untrusted(why), ..ctx(Mode::Normal, now) };
            let v = decide(&c, &l, &cx, &rich_policy());
            let timed = |v: &Validity| v.valid_from.is_some() || v.valid_until.is_some();
            match v.reason {
                Reason::Staff => {
                    let s = l.staff.as_ref().expect("staff");
                    prop_assert!(!timed(&s.validity) && s.schedule.is_none());
                }
                Reason::Visitor => {
                    prop_assert!(!timed(&l.invitation.as_ref().expect("invitation").validity));
                }
                other => prop_assert!(!other.is_granted()),
            }
        }

        #[test]
        fn on_a_two_factor_lane_one_factor_never_grants(
            steps in arb_steps(), kind in prop::sample::select(vec![CredentialKind::Card, CredentialKind::Face]),
        ) {
            let mut p = rich_policy();
            p.lanes.insert(0, LaneRules { two_factor_ms: Some(10_000), ..LaneRules::default() });
            let one: Vec<_> = steps.iter().map(|(d, _, t)| (*d, kind, *t)).collect();
            replay(&one, &p, |_, _, _, v| assert!(!v.granted(), "one factor granted"));
            // And with both: every grant completes a pair of different factors within 10 s.
            let mut prev: Option<(CredentialKind, UnixMs)> = None;
            replay(&steps, &p, |_, k, t, v| {
                if v.granted() {
                    let (pk, pt) = prev.expect("a grant follows a first factor");
                    assert!(Factor::of(pk) != Factor::of(k) && t - pt <= 10_000);
                }
                prev = Some((k, t));
            });
        }
    }

    // ---- properties -------------------------------------------------------------------

    fn arb_validity() -> impl Strategy<Value = Validity> {
        let t = prop::option::of(NOW - 10_000..NOW + 10_000);
        let gates = prop::collection::vec(
            prop::sample::select(vec!["*", GATE, "west-2", "north"]),
            0..3,
        );
        (t.clone(), t, gates).prop_map(|(from, until, gates)| Validity {
            valid_from: from,
            valid_until: until,
            gates: gates.into_iter().map(String::from).collect(),
        })
    }

    fn arb_lookups() -> impl Strategy<Value = Lookups> {
        let staff = prop::option::of((arb_validity(), any::<bool>()).prop_map(
            |(validity, lockdown_exempt)| StaffMatch {
                subject: "E1".into(),
                validity,
                schedule: None,
                group: None,
                lockdown_exempt,
                last: None,
            },
        ));
        let inv = prop::option::of(
            (arb_validity(), prop::option::of(0u32..4), 0u32..5).prop_map(
                |(validity, max_entries, used)| InvitationMatch {
                    invitation: "INV".into(),
                    validity,
                    max_entries,
                    used,
                    schedule: None,
                    last: None,
                },
            ),
        );
        let denied = prop::option::of(Just("lost".to_string()));
        (denied, staff, inv).prop_map(|(denied, staff, invitation)| Lookups {
            denied,
            staff,
            invitation,
            incomplete: false,
        })
    }

    fn arb_credential() -> impl Strategy<Value = Credential> {
        (
            prop::sample::select(CredentialKind::ALL.to_vec()),
            prop::option::of(0.0f64..=1.0),
        )
            .prop_map(|(kind, score)| Credential {
                kind,
                id: "X".into(),
                score,
            })
    }

    fn arb_mode() -> impl Strategy<Value = Mode> {
        prop::sample::select(vec![
            Mode::Normal,
            Mode::Lockdown,
            Mode::HoldOpen,
            Mode::EmergencyRelease,
        ])
    }

    fn in_window(v: &Validity, now: UnixMs) -> bool {
        v.valid_from.is_none_or(|f| now >= f) && v.valid_until.is_none_or(|u| now <= u)
    }

    proptest! {
        #[test]
        fn a_denied_credential_is_never_granted(
            c in arb_credential(), mut l in arb_lookups(), mode in arb_mode(),
            now in NOW - 20_000..NOW + 20_000,
        ) {
            l.denied = Some("lost".into());
            let v = at(&c, &l, mode, now);
            prop_assert_eq!(v.reason, Reason::Denylisted);
        }

        /// Every pass of a known subject by credential moves that subject, in every mode; a
        /// refusal, an unknown credential and an unsure face move nobody.
        #[test]
        fn every_pass_of_a_known_subject_moves_it(
            c in arb_credential(), l in arb_lookups(), mode in arb_mode(),
            now in NOW - 20_000..NOW + 20_000,
        ) {
            let v = at(&c, &l, mode, now);
            let names: Vec<&str> = l.staff.iter().map(|s| s.subject.as_str())
                .chain(l.invitation.iter().map(|i| i.invitation.as_str())).collect();
            let unsure = c.kind == CredentialKind::Face
                && c.score.is_none_or(|s| s < Policy::default().min_face_score);
            match v.moves() {
                Some(who) => prop_assert!(v.granted() && !unsure && names.contains(&who)),
                None => prop_assert!(!v.granted() || unsure || names.is_empty(),
                    "{:?} {:?} moved nobody", mode, v.reason),
            }
        }

        /// A visitor inside with a valid invitation always gets out in normal mode, whatever
        /// entries are left, and up to the grace after `valid_until`; the exit uses no entry.
        #[test]
        fn a_visitor_inside_with_a_valid_invitation_always_gets_out(
            c in arb_credential(), mut l in arb_lookups(), max in prop::option::of(0u32..4),
            used in 0u32..6, late in 0i64..=30 * 60_000, now in NOW - 20_000..NOW + 20_000,
        ) {
            l.denied = None;
            l.staff = None;
            let Some(i) = l.invitation.as_mut() else { return Ok(()) };
            i.validity.gates = vec!["*".into()];
            i.validity.valid_from = i.validity.valid_from.map(|f| f.min(now));
            i.validity.valid_until = Some(now - late);
            i.max_entries = max;
            i.used = used;
            i.last = Some(LastPass { direction: Direction::In, at: now - 1 });
            let known = c.kind != CredentialKind::Face
                || c.score.is_some_and(|s| s >= Policy::default().min_face_score);
            let hard = Policy {
                passback: Passback { mode: PassbackMode::Hard, reset_at: None },
                ..Policy::default()
            };
            let cx = Context { direction: Direction::Out, ..ctx(Mode::Normal, now) };
            let v = decide(&c, &l, &cx, &hard);
            if known {
                prop_assert_eq!(v.reason, Reason::Visitor);
                prop_assert_eq!(v.consumes_entry, None);
            }
        }

        #[test]
        fn lockdown_grants_nothing_but_a_valid_exempt_staff_entry(
            c in arb_credential(), l in arb_lookups(), now in NOW - 20_000..NOW + 20_000,
        ) {
            let v = at(&c, &l, Mode::Lockdown, now);
            if v.granted() {
                prop_assert_eq!(v.reason, Reason::LockdownExempt);
                let s = l.staff.as_ref().expect("exempt grant without staff entry");
                prop_assert!(s.lockdown_exempt, "a lockdown let a non-exempt entry pass");
                prop_assert!(in_window(&s.validity, now), "expired responder passed a lockdown");
            }
        }

        #[test]
        fn in_normal_mode_a_grant_is_always_backed_by_a_valid_entry(
            c in arb_credential(), l in arb_lookups(), now in NOW - 20_000..NOW + 20_000,
        ) {
            let v = at(&c, &l, Mode::Normal, now);
            match v.reason {
                Reason::Staff => {
                    let s = l.staff.as_ref().expect("staff grant without staff entry");
                    prop_assert!(in_window(&s.validity, now), "expired or not-yet-valid staff granted");
                }
                Reason::Visitor => {
                    let i = l.invitation.as_ref().expect("visitor grant without invitation");
                    prop_assert!(in_window(&i.validity, now), "expired or not-yet-valid invitation granted");
                    prop_assert!(i.max_entries.is_none_or(|m| i.used < m), "exhausted invitation granted");
                    prop_assert_eq!(v.consumes_entry.as_deref(), Some(i.invitation.as_str()));
                }
                other => prop_assert!(!other.is_granted(), "unexpected grant {:?}", other),
            }
            if v.granted() && c.kind == CredentialKind::Face {
                prop_assert!(c.score.is_some_and(|s| s >= Policy::default().min_face_score));
            }
        }

        #[test]
        fn an_invitation_with_no_entries_left_is_never_granted(
            c in arb_credential(), mut l in arb_lookups(), mode in arb_mode(), max in 0u32..4,
            extra in 0u32..3, now in NOW - 20_000..NOW + 20_000,
        ) {
            l.staff = None;
            if let Some(i) = l.invitation.as_mut() {
                i.max_entries = Some(max);
                i.used = max + extra;
            }
            let v = at(&c, &l, mode, now);
            prop_assert_ne!(v.reason, Reason::Visitor);
            prop_assert_eq!(v.consumes_entry, None);
        }
    }
}
