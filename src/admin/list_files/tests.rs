//! The list files, read: entries, and every problem named by line and field.

use super::*;

fn csv(list: ListName, text: &str) -> Result<Loaded, FileErrors> {
    read(list, "f.csv", text.as_bytes(), Format::Csv)
}

fn json(list: ListName, text: &str) -> Result<Loaded, FileErrors> {
    read(list, "f.json", text.as_bytes(), Format::Json)
}

fn messages(r: Result<Loaded, FileErrors>) -> Vec<String> {
    r.expect_err("must be refused")
        .to_string()
        .lines()
        .map(str::to_string)
        .collect()
}

const STAFF_HEADER: &str = "subject,name,card,face,valid_from,valid_until,gates\n";

#[test]
fn a_staff_csv_becomes_entries() {
    let text = format!(
        "{STAFF_HEADER}E1001,Li Wei,0012345678;0012345679,P1001,,2027-12-31T23:59:59Z,*\n\
         E1002,\"Zhang, San\",0099,,2026-01-01T00:00:00Z,,east-1;west-2\n"
    );
    let l = csv(ListName::Staff, &text).expect("valid");
    assert_eq!(l.lines, vec![2, 3]);
    let Entries::Staff(v) = l.entries else {
        panic!("staff entries")
    };
    assert_eq!(v[0].credentials.len(), 3);
    assert_eq!(v[0].valid_from, None);
    assert_eq!(v[0].gates, vec!["*"]);
    assert_eq!(v[1].name.as_deref(), Some("Zhang, San"));
    assert_eq!(v[1].gates, vec!["east-1", "west-2"]);
    assert_eq!(v[1].credentials[0].kind, CredentialKind::Card);
}

#[test]
fn a_calendar_csv_becomes_dates_and_bad_ones_are_named() {
    let text =
        "date,name,hours\n2026-10-01,National Day,\n2026-12-31,Short day,09:00-12:00 13:00-15:00\n";
    let l = csv(ListName::Calendar, text).expect("valid");
    let Entries::Calendar(v) = l.entries else {
        panic!("calendar entries")
    };
    assert_eq!(v.len(), 2);
    assert!(v[0].hours.is_empty());
    assert_eq!(v[1].hours, vec!["09:00-12:00", "13:00-15:00"]);
    assert_eq!(v[0].schedules, None);
    // A date may override only some schedules.
    let text =
        "date,name,hours,schedules\n2026-10-01,Office holiday,,office;front-desk\n2026-10-02,,,\n";
    let Entries::Calendar(v) = csv(ListName::Calendar, text).expect("valid").entries else {
        panic!("calendar entries")
    };
    assert_eq!(
        v[0].schedules,
        Some(vec!["office".to_string(), "front-desk".to_string()])
    );
    assert_eq!(v[1].schedules, None, "empty: every schedule");
    let m = messages(csv(
        ListName::Calendar,
        "date,name,hours\n2026-02-30,x,\n2026-03-01,y,12:00-09:00\n",
    ));
    assert!(
        m.iter()
            .any(|l| l.starts_with("f.csv:2") && l.contains("2026-02-30")),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|l| l.starts_with("f.csv:3") && l.contains("12:00-09:00")),
        "{m:?}"
    );
    // Staff files may carry schedule and group columns, or leave them out.
    let staff =
        "subject,name,card,face,valid_from,valid_until,gates,schedule,group\nE1,,1,,,,*,office,\n";
    let Entries::Staff(v) = csv(ListName::Staff, staff).expect("valid").entries else {
        panic!("staff entries")
    };
    assert_eq!(v[0].schedule.as_deref(), Some("office"));
    assert_eq!(v[0].group, None);
}

#[test]
fn a_staff_file_marks_responders_lockdown_exempt_yes_or_no() {
    let head = "subject,name,card,face,valid_from,valid_until,gates,lockdown_exempt\n";
    let ok = format!("{head}E1,,1,,,,*,yes\nE2,,2,,,,*,\nE3,,3,,,,*,No\n");
    let Entries::Staff(v) = csv(ListName::Staff, &ok).expect("valid").entries else {
        panic!("staff entries")
    };
    let exempt: Vec<bool> = v.iter().map(|e| e.lockdown_exempt).collect();
    assert_eq!(exempt, [true, false, false]);
    let m = messages(csv(ListName::Staff, &format!("{head}E1,,1,,,,*,maybe\n")));
    assert_eq!(
        m,
        ["f.csv:2: lockdown_exempt: `maybe` is not yes or no"],
        "{m:?}"
    );
}

#[test]
fn columns_may_come_in_any_order_but_all_must_be_there() {
    let ok = "gates,valid_until,valid_from,face,card,name,subject\n*,,,,0012,,E1\n";
    assert!(csv(ListName::Staff, ok).is_ok());
    let m = messages(csv(
        ListName::Staff,
        "subject,name,card,gates,colour\nE1,,1,*,red\n",
    ));
    assert!(m.contains(&"f.csv:1: colour: not a column of a staff file (its columns are subject,name,card,face,valid_from,valid_until,gates,schedule,group,lockdown_exempt)".to_string()), "{m:?}");
    assert!(
        m.iter()
            .any(|l| l.starts_with("f.csv:1: valid_until: missing column")),
        "{m:?}"
    );
    assert!(messages(csv(ListName::Staff, ""))[0].contains("the file is empty"));
}

#[test]
fn every_bad_row_is_named_by_line_and_field() {
    let text = format!(
        "{STAFF_HEADER}E1,A,0012,,,2027-01-01T00:00:00Z,*\n\
         ,B,0013,,,,*\n\
         E3,C,00½,,,tomorrow,*\n\
         E4,D,0015,,,,\n\
         E5,E,0016,,2027-01-02T00:00:00Z,2027-01-01T00:00:00Z,a/b\n\
         E1,F,0017,,,,*\n\
         E7,G,0012,,,,*\n\
         E8,H,1\n"
    );
    let m = messages(csv(ListName::Staff, &text));
    let want = [
        "f.csv:3: subject: is empty, and is required",
        "f.csv:4: card: `00½` is not ASCII (credentials travel through the reader as ASCII)",
        "f.csv:4: valid_until: `tomorrow` is not an RFC 3339 time",
        "f.csv:5: gates: is empty (write * for every gate)",
        "f.csv:6: valid_until: is before valid_from",
        "f.csv:6: gates: `a/b` is not a gate id",
        "f.csv:7: subject: `E1` is already on line 2",
        "f.csv:8: card: `0012` is already held by the entry on line 2",
        "f.csv:9: the row has 3 fields, the header has 7",
    ];
    for w in want {
        assert!(m.iter().any(|l| l.starts_with(w)), "no `{w}` in {m:#?}");
    }
    assert_eq!(m.len(), want.len(), "{m:#?}");
}

#[test]
fn a_bad_date_is_shown_with_one_that_would_be_accepted() {
    let text = format!("{STAFF_HEADER}E1,A,0012,,2027-01-01,31/12/2027,*\n");
    let m = messages(csv(ListName::Staff, &text));
    assert_eq!(
        m,
        [
            "f.csv:2: valid_from: `2027-01-01` is not an RFC 3339 time (premature end of \
             input): write a date and time with its offset, like 2027-12-31T23:59:59Z or \
             2027-12-31T18:00:00+08:00",
            "f.csv:2: valid_until: `31/12/2027` is not an RFC 3339 time (premature end of \
             input): write a date and time with its offset, like 2027-12-31T23:59:59Z or \
             2027-12-31T18:00:00+08:00",
        ],
        "{m:#?}"
    );
    let m = messages(csv(ListName::Calendar, "date,name,hours\n1.10.2026,x,\n"));
    assert_eq!(
        m,
        ["f.csv:2: date: `1.10.2026` is not a date YYYY-MM-DD, like 2026-10-01"],
        "{m:#?}"
    );
}

#[test]
fn visitors_and_deny_csv() {
    let v = "invitation,visitor,host,qr,valid_from,valid_until,gates,max_entries\n\
             INV-1,Zhang San,E1001,TOKEN1,2026-11-21T08:00:00Z,2026-11-21T18:00:00Z,east-1,2\n\
             INV-2,,,TOKEN2,,,*,\n";
    let l = csv(ListName::Visitors, v).expect("valid");
    let Entries::Visitors(v) = l.entries else {
        panic!("visitors")
    };
    assert_eq!(v[0].max_entries, Some(2));
    assert_eq!(v[1].max_entries, None);
    assert_eq!(v[0].credentials[0].kind, CredentialKind::Qr);
    let bad = "invitation,visitor,host,qr,valid_from,valid_until,gates,max_entries\n\
               INV-1,,,,,,*,two\nINV-2,,,T,,,*,0\n";
    let m = messages(csv(ListName::Visitors, bad));
    assert!(
        m.iter().any(|l| l.starts_with("f.csv:2: qr: is empty")),
        "{m:?}"
    );
    assert!(
        m.contains(&"f.csv:2: max_entries: `two` is not a whole number".to_string()),
        "{m:?}"
    );
    assert!(
        m.iter()
            .any(|l| l.starts_with("f.csv:3: max_entries: is 0")),
        "{m:?}"
    );

    let d = "kind,id,reason\ncard,0099887766,reported lost\nQR,ABC,\nbadge,1,x\ncard,0099887766,again\n";
    let m = messages(csv(ListName::Deny, d));
    assert!(
        m.iter()
            .any(|l| l.starts_with("f.csv:4: kind: `badge` is not a credential kind")),
        "{m:?}"
    );
    assert!(
        m.contains(&"f.csv:5: id: `card:0099887766` is already on line 2".to_string()),
        "{m:?}"
    );
    let ok = csv(ListName::Deny, "kind,id,reason\ncard,1,lost\nqr,A,\n").expect("valid");
    let Entries::Deny(d) = ok.entries else {
        panic!("deny")
    };
    assert_eq!(d[1].kind, CredentialKind::Qr);
    assert_eq!(d[1].reason, None);
}

#[test]
fn a_json_array_is_read_and_errors_name_the_entry_line() {
    let ok = r#"[
  {"subject":"E1001","name":"Li Wei",
   "credentials":[{"kind":"card","id":"0012345678"}],
   "valid_from":null,"valid_until":"2027-12-31T23:59:59Z","gates":["*"]},
  {"subject":"E1002","credentials":[],"gates":["east-1"]}
]"#;
    let l = json(ListName::Staff, ok).expect("valid");
    assert_eq!(l.lines, vec![2, 5]);
    let bad = r#"[
  {"subject":"E1","credentials":[],"gates":["*"]},
  {"subject":"E2","credentials":[],"gates":["*"],
   "valid_untill":"2027-01-01T00:00:00Z"},
  {"subject":"E3","credentials":[],"gates":[]},
  {"subject":"E1","credentials":[],"gates":["*"]}
]"#;
    let m = messages(json(ListName::Staff, bad));
    assert!(
        m[0].starts_with("f.json:3: ") && m[0].contains("unknown field `valid_untill`"),
        "{m:?}"
    );
    assert!(m[1].starts_with("f.json:5: gates is empty"), "{m:?}");
    assert_eq!(m[2], "f.json:6: subject: `E1` is already on line 2");
    let syntax = messages(json(ListName::Staff, "[\n {\"subject\": }\n]"));
    assert!(syntax[0].starts_with("f.json:2: column "), "{syntax:?}");
    let object = messages(json(ListName::Staff, "{\"list\":\"staff\"}"));
    assert!(object[0].contains("array of entries"), "{object:?}");
}

#[test]
fn many_problems_are_counted_past_the_ones_listed() {
    let mut text = STAFF_HEADER.to_string();
    for _ in 0..60 {
        text.push_str(",x,,,,,*\n");
    }
    let e = csv(ListName::Staff, &text).expect_err("refused");
    assert_eq!((e.errors.len(), e.total), (MAX_REPORTED, 60));
    assert!(e.to_string().ends_with("f.csv: … and 10 more problems"));
}

#[test]
fn the_format_follows_the_extension() {
    assert_eq!(Format::of(Path::new("a/staff.CSV")), Ok(Format::Csv));
    assert_eq!(Format::of(Path::new("v.json")), Ok(Format::Json));
    assert!(Format::of(Path::new("staff.xlsx")).is_err());
}
