//! `decide`: the one function every credential goes through.
//!
//! Order of evaluation (first match wins):
//! 1. deny list → `denylisted`, whatever else says yes, in every mode;
//! 2. mode: emergency release → `emergency_release`, lockdown → `lockdown`,
//!    hold-open → `hold_open` (the lane is open anyway; the pass is logged);
//! 3. a face below the minimum score → `low_face_score`;
//! 4. a staff entry: window (`not_yet_valid`, `expired`), then gate (`wrong_gate`) → `staff`;
//! 5. an invitation: window, gate, then entries (`entries_exhausted`) → `visitor`;
//! 6. nothing → `unknown_credential`.
//!
//! A credential held by both a staff entry and an invitation is granted if either grants;
//! when both refuse, the staff entry's reason is reported.

use super::{Credential, CredentialKind, Lookups, Mode, Policy, Reason, UnixMs, Validity};

/// The core's answer for one credential.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    pub reason: Reason,
    /// Staff id or invitation id, when one matched (also on a refusal).
    pub subject: Option<String>,
    /// The invitation whose entry this grant uses up.
    pub consumes_entry: Option<String>,
}

impl Verdict {
    fn new(reason: Reason, subject: Option<String>) -> Self {
        Self {
            reason,
            subject,
            consumes_entry: None,
        }
    }

    pub fn granted(&self) -> bool {
        self.reason.is_granted()
    }
}

/// Decides one credential at `gate` at time `now`. Pure: same input, same output.
pub fn decide(
    credential: &Credential,
    lookups: &Lookups,
    gate: &str,
    mode: Mode,
    policy: &Policy,
    now: UnixMs,
) -> Verdict {
    let known_subject = lookups
        .staff
        .as_ref()
        .map(|s| s.subject.clone())
        .or_else(|| lookups.invitation.as_ref().map(|i| i.invitation.clone()));

    if lookups.denied.is_some() {
        return Verdict::new(Reason::Denylisted, known_subject);
    }
    match mode {
        Mode::EmergencyRelease => return Verdict::new(Reason::EmergencyRelease, known_subject),
        Mode::Lockdown => return Verdict::new(Reason::Lockdown, known_subject),
        Mode::HoldOpen => return Verdict::new(Reason::HoldOpen, known_subject),
        Mode::Normal => {}
    }
    if credential.kind == CredentialKind::Face {
        // A missing score is treated as zero: a face terminal that does not say how sure it
        // is has not identified anyone.
        let score = credential.score.unwrap_or(0.0);
        if score.is_nan() || score < policy.min_face_score {
            return Verdict::new(Reason::LowFaceScore, known_subject);
        }
    }

    let staff = lookups.staff.as_ref().map(|s| {
        let reason = check_validity(&s.validity, gate, now).unwrap_or(Reason::Staff);
        Verdict::new(reason, Some(s.subject.clone()))
    });
    if let Some(v) = &staff
        && v.granted()
    {
        return v.clone();
    }

    let visitor = lookups.invitation.as_ref().map(|inv| {
        let refusal = check_validity(&inv.validity, gate, now).or_else(|| {
            inv.max_entries
                .filter(|max| inv.used >= *max)
                .map(|_| Reason::EntriesExhausted)
        });
        match refusal {
            Some(reason) => Verdict::new(reason, Some(inv.invitation.clone())),
            None => Verdict {
                reason: Reason::Visitor,
                subject: Some(inv.invitation.clone()),
                consumes_entry: Some(inv.invitation.clone()),
            },
        }
    });

    match (staff, visitor) {
        (_, Some(v)) if v.granted() => v,
        (Some(s), _) => s,
        (None, Some(v)) => v,
        (None, None) => Verdict::new(Reason::UnknownCredential, None),
    }
}

/// The refusal a validity window and gate scope give at `now`, if any.
fn check_validity(v: &Validity, gate: &str, now: UnixMs) -> Option<Reason> {
    if v.valid_from.is_some_and(|from| now < from) {
        return Some(Reason::NotYetValid);
    }
    if v.valid_until.is_some_and(|until| now > until) {
        return Some(Reason::Expired);
    }
    if !v.gates.iter().any(|g| g == "*" || g == gate) {
        return Some(Reason::WrongGate);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{InvitationMatch, StaffMatch};
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
            }),
            ..Lookups::default()
        }
    }

    fn run(c: &Credential, l: &Lookups, mode: Mode) -> Verdict {
        decide(c, l, GATE, mode, &Policy::default(), NOW)
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

    #[test]
    fn staff_refusal_falls_back_to_a_valid_invitation() {
        let mut l = invitation(everywhere(), Some(1), 0);
        l.staff = Some(StaffMatch {
            subject: "E1".into(),
            validity: Validity {
                valid_until: Some(NOW - 1),
                ..everywhere()
            },
        });
        assert_eq!(run(&card("1"), &l, Mode::Normal).reason, Reason::Visitor);
        if let Some(i) = l.invitation.as_mut() {
            i.used = 1;
        }
        let v = run(&card("1"), &l, Mode::Normal);
        assert_eq!(v.reason, Reason::Expired);
        assert_eq!(v.subject.as_deref(), Some("E1"));
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
        let staff = prop::option::of(arb_validity().prop_map(|validity| StaffMatch {
            subject: "E1".into(),
            validity,
        }));
        let inv = prop::option::of(
            (arb_validity(), prop::option::of(0u32..4), 0u32..5).prop_map(
                |(validity, max_entries, used)| InvitationMatch {
                    invitation: "INV".into(),
                    validity,
                    max_entries,
                    used,
                },
            ),
        );
        let denied = prop::option::of(Just("lost".to_string()));
        (denied, staff, inv).prop_map(|(denied, staff, invitation)| Lookups {
            denied,
            staff,
            invitation,
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
            let v = decide(&c, &l, GATE, mode, &Policy::default(), now);
            prop_assert_eq!(v.reason, Reason::Denylisted);
        }

        #[test]
        fn lockdown_grants_nothing(
            c in arb_credential(), l in arb_lookups(), now in NOW - 20_000..NOW + 20_000,
        ) {
            let v = decide(&c, &l, GATE, Mode::Lockdown, &Policy::default(), now);
            prop_assert!(!v.granted());
        }

        #[test]
        fn in_normal_mode_a_grant_is_always_backed_by_a_valid_entry(
            c in arb_credential(), l in arb_lookups(), now in NOW - 20_000..NOW + 20_000,
        ) {
            let v = decide(&c, &l, GATE, Mode::Normal, &Policy::default(), now);
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
            let v = decide(&c, &l, GATE, mode, &Policy::default(), now);
            prop_assert_ne!(v.reason, Reason::Visitor);
            prop_assert_eq!(v.consumes_entry, None);
        }
    }
}
