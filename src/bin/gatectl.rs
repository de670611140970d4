//! `gatectl`, the admin's tool: parse the command line, then call `gated::admin::verbs`.
//!
//! Exit codes: 0 done; 1 failed, or a gate refused; 2 sent, but a gate that is online (for
//! `cmd`: the gate) did not ack in time; 3 `cmd` to a gate whose status says offline (nothing
//! sent), or that went offline before it acked; 64 usage.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use gated::admin::Failure;
use gated::admin::lists::CommandRequest;
use gated::admin::mqtt::Endpoint;
use gated::admin::verbs::{self, InviteRequest, PushRequest, RevokeTarget, Site, TailRequest};
use gated::core::Direction;
use gated_contract::{CommandKind, ListName};

const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "gatectl",
    version,
    args_override_self = true,
    about = "The admin's tool for gated: keys, lists, invitations, remote commands, live events and status",
    after_help = "Exit codes: 0 done; 1 failed, or a gate refused (every refusal is printed with its\n\
reason); 2 sent, but a gate whose status says online did not ack within --wait; 3 `cmd` to a\n\
gate whose status says offline (nothing sent) or that went offline before it acked; 64 usage.\n\n\
Example:\n  export GATECTL_BROKER=broker.example:1883 GATECTL_SITE=hq GATECTL_KEY=~/.gatectl/ops.key\n  \
gatectl push staff --file staff.csv && gatectl status"
)]
struct Cli {
    /// The MQTT broker.
    #[arg(
        long,
        global = true,
        env = "GATECTL_BROKER",
        default_value = "127.0.0.1:1883",
        value_name = "HOST:PORT"
    )]
    broker: Endpoint,
    /// The topic root (the gates' `mqtt.root`).
    #[arg(
        long,
        global = true,
        env = "GATECTL_ROOT",
        default_value = "acs",
        value_name = "ROOT"
    )]
    root: String,
    /// The site (the gates' `gate.site`); needed by everything but keygen.
    #[arg(long, global = true, env = "GATECTL_SITE", value_name = "SITE")]
    site: Option<String>,
    /// The admin signing key (written by `gatectl keygen`); needed by push, invite, revoke, cmd.
    #[arg(long, global = true, env = "GATECTL_KEY", value_name = "FILE")]
    key: Option<PathBuf>,
    /// Another admin key whose retained lists gatectl may build on (repeatable; the env var
    /// takes a comma-separated list). Your own key is always trusted.
    #[arg(
        long,
        global = true,
        env = "GATECTL_TRUST",
        value_name = "ID=PUBKEY",
        value_delimiter = ','
    )]
    trust: Vec<String>,
    /// The CA that signs the broker's certificate (PEM): connect over TLS.
    #[arg(long, global = true, env = "GATECTL_TLS_CA", value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// A client certificate (PEM), with --tls-key, for brokers that require one.
    #[arg(
        long,
        global = true,
        env = "GATECTL_TLS_CERT",
        value_name = "FILE",
        requires = "tls_ca"
    )]
    tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(
        long,
        global = true,
        env = "GATECTL_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// The name the broker's certificate carries (default: the --broker host).
    #[arg(
        long,
        global = true,
        env = "GATECTL_TLS_SERVER_NAME",
        value_name = "NAME",
        requires = "tls_ca"
    )]
    tls_server_name: Option<String>,
    /// A file of two lines, username then password, for the broker's login.
    #[arg(long, global = true, env = "GATECTL_AUTH_FILE", value_name = "FILE")]
    auth_file: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Sub,
}

#[derive(Clone, Copy, ValueEnum)]
enum List {
    Staff,
    Visitors,
    Deny,
    /// Holidays and exception dates of the schedules (CSV: date,name,hours[,schedules]).
    Calendar,
}

impl From<List> for ListName {
    fn from(l: List) -> ListName {
        match l {
            List::Staff => ListName::Staff,
            List::Visitors => ListName::Visitors,
            List::Deny => ListName::Deny,
            List::Calendar => ListName::Calendar,
        }
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Dir {
    In,
    Out,
}

#[derive(Args)]
struct Keep {
    /// How many days invitations stay in the visitors list past their window, so that their
    /// codes are refused `expired` rather than `unknown_credential`; older ones leave the list.
    #[arg(
        long,
        value_name = "DAYS",
        env = "GATECTL_KEEP_EXPIRED_DAYS",
        default_value_t = gated::admin::lists::KEEP_EXPIRED_DAYS
    )]
    keep_expired_days: u32,
}

#[derive(Args)]
struct Wait {
    /// How long to wait for the gates' acks, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    wait: u64,
}

#[derive(Subcommand)]
enum Sub {
    /// Make a new admin signing key, and print the [[trust.key]] block for the gates.
    #[command(
        after_help = "Missing directories on the way to FILE are made, mode 0700. The key file also holds\n\
the public line of the block (grep ^public FILE).\n\n\
Example:\n  gatectl keygen --id ops-2026 --out ~/.gatectl/ops-2026.key"
    )]
    Keygen {
        /// The key's id, as gates name it in [[trust.key]] (1..=64 of [A-Za-z0-9_-]).
        #[arg(long)]
        id: String,
        /// Where to write the secret key (mode 0600; an existing file is never overwritten).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Publish a whole list from a CSV or JSON file, as the next version, retained.
    #[command(
        after_help = "CSV files have a header row with exactly these columns, in any order:\n  \
staff:    subject,name,card,face,valid_from,valid_until,gates\n  \
visitors: invitation,visitor,host,qr,valid_from,valid_until,gates,max_entries[,schedule]\n  \
deny:     kind,id,reason\n\
card, face, qr and gates take several values separated by `;`; gates `*` is every gate; an empty\n\
field is none (times are RFC 3339, like 2027-12-31T23:59:59Z). JSON files are an array of entries as in a snapshot.\n\
Every row is checked first; any problem is reported as FILE:LINE: field: what, and nothing is sent.\n\
A staff entry whose valid_until is already past is named in a warning and published; a file\n\
whose every entry is past is refused, like an empty one, unless --allow-empty.\n\n\
Example:\n  gatectl push staff --file staff.csv\n  \
east-1: staff@43 ok (version 43 in force)"
    )]
    Push {
        list: List,
        /// The list: F.csv or F.json.
        #[arg(long, value_name = "FILE")]
        file: PathBuf,
        /// Publish as this version, without reading it from a trusted retained snapshot.
        #[arg(long, value_name = "N")]
        force_version: Option<u64>,
        /// Publish even a file with no entries, or (staff) only entries already past: it lets
        /// nobody in at any gate.
        #[arg(long)]
        allow_empty: bool,
        #[command(flatten)]
        wait: Wait,
    },
    /// Invite one visitor: publish the invitation, print its code, write its QR code.
    #[command(
        after_help = "The invitation goes out as a delta and in the new retained visitors snapshot,\n\
so gates that are offline now learn it when they reconnect. Invitations whose window ended\n\
more than --keep-expired-days ago leave the list on the way.\n\n\
Example (from now, --from's default, until 18:00 tomorrow in the local time zone):\n  \
gatectl invite --visitor \"Zhang San\" --host E1001 --until \"$(date -d 'tomorrow 18:00' +%FT%T%:z)\" \\\n    \
--gates east-1 --entries 2 --qr zhang.png"
    )]
    Invite {
        /// The visitor's name.
        #[arg(long)]
        visitor: String,
        /// The staff subject who hosts the visit.
        #[arg(long, value_name = "SUBJECT")]
        host: Option<String>,
        /// Start of the window, RFC 3339 (default: now).
        #[arg(long, value_name = "TIME")]
        from: Option<String>,
        /// End of the window, RFC 3339.
        #[arg(long, value_name = "TIME")]
        until: String,
        /// The gates it opens, comma-separated (`*` for every gate).
        #[arg(long, value_name = "G1,G2", value_delimiter = ',', required = true)]
        gates: Vec<String>,
        /// How many entries it allows.
        #[arg(long, value_name = "N")]
        entries: u32,
        /// Only in the hours of this schedule (a `[policy.schedule.NAME]` of the gates'
        /// config; a gate that does not define it refuses the code `outside_schedule`).
        #[arg(long, value_name = "NAME")]
        schedule: Option<String>,
        /// Write the QR code (of the code) as a PNG here.
        #[arg(long, value_name = "FILE.png")]
        qr: Option<PathBuf>,
        /// The invitation id (default: INV- and a random suffix).
        #[arg(long, value_name = "INV-…")]
        id: Option<String>,
        #[command(flatten)]
        keep: Keep,
        #[command(flatten)]
        wait: Wait,
    },
    /// Take an invitation or a staff member off their list, or put a credential on the deny list.
    #[command(after_help = "Examples:\n  gatectl revoke invitation INV-7K3Q2M4A\n  \
gatectl revoke staff E1002\n  gatectl revoke credential card:0099887766 --reason \"reported lost\"")]
    Revoke {
        #[command(subcommand)]
        what: Revoke,
    },
    /// Show live events and alarms, one line each, without duplicates.
    #[command(after_help = "Example:\n  gatectl tail --gate east-1\n  \
2026-11-21T08:01:02.345Z east-1 #1042 lane 0 in  GRANTED staff      card:0012345678 E1001")]
    Tail {
        /// Only this gate.
        #[arg(long, value_name = "GATE")]
        gate: Option<String>,
        /// Print each message as it came, one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Show the gates' acks too.
        #[arg(long)]
        acks: bool,
        /// Exit after printing N lines.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Exit after SECS seconds (an error if --count lines were not printed by then).
        #[arg(long, value_name = "SECS")]
        timeout: Option<u64>,
    },
    /// A table of the site's gates, from their retained status.
    #[command(
        after_help = "STAFF_V, VISITORS_V, DENY_V: the version of each list in force (staff@43), not a\n\
head count. OUTBOX: events not yet acknowledged by the broker. AGE: since the status was\n\
published. PROBLEMS: devices not ok, and the clock when it is not trusted.\n\n\
Example:\n  gatectl status\n  \
GATE    ONLINE  MODE    STAFF_V  VISITORS_V  DENY_V  OUTBOX  AGE  PROBLEMS\n  \
east-1  yes     normal  43       7           3       0       12s  reader1:timeout"
    )]
    Status {
        /// One JSON object: gate → its status, as published.
        #[arg(long)]
        json: bool,
    },
    /// Send a signed command to one gate and wait for its ack.
    #[command(
        after_help = "Exit 0 when the gate carried it out, 1 when it refused (with its reason), 2 when no\n\
ack came in time, 3 when the gate's status says it is offline (then nothing is sent) or it went\n\
offline before it acked.\n\n\
`attest-time` vouches that the gate's clock reads right now (after a clock that ran ahead\n\
by mistake was set back): it carries the challenge of the gate's status, is valid for at\n\
most 300 s, and is refused if the gate's clock and this machine's are 5 min apart.\n\n\
Example:\n  gatectl cmd open --gate east-1 --lane 0 --direction in\n  \
east-1: open ok (lane 0 in released for 3000 ms; event seq 1043)"
    )]
    Cmd {
        action: CommandKind,
        /// The gate.
        #[arg(long, value_name = "GATE")]
        gate: String,
        /// For `open`: the lane to release.
        #[arg(long, value_name = "N")]
        lane: Option<u16>,
        /// For `open`: the direction (default in).
        #[arg(long)]
        direction: Option<Dir>,
        /// For `clear-passback`: the staff id or invitation id whose anti-passback state the
        /// gates of the site forget.
        #[arg(long, value_name = "SUBJECT")]
        subject: Option<String>,
        /// How long the gate may carry it out, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 60)]
        ttl: u64,
        /// How long to wait for the ack, in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 5)]
        wait: u64,
    },
}

#[derive(Subcommand)]
enum Revoke {
    /// Remove an invitation from the visitors list.
    #[command(after_help = "Example:\n  gatectl revoke invitation INV-7K3Q2M4A")]
    Invitation {
        id: String,
        #[command(flatten)]
        keep: Keep,
        #[command(flatten)]
        wait: Wait,
    },
    /// Remove a staff member (all their credentials) from the staff list.
    #[command(after_help = "Example:\n  gatectl revoke staff E1002")]
    Staff {
        subject: String,
        #[command(flatten)]
        wait: Wait,
    },
    /// Put one credential on the deny list: it is refused whatever else says yes.
    #[command(
        after_help = "Example:\n  gatectl revoke credential card:0099887766 --reason \"reported lost\""
    )]
    Credential {
        /// KIND:ID, KIND one of card, qr, face, pin.
        #[arg(value_name = "KIND:ID")]
        credential: String,
        #[arg(long)]
        reason: Option<String>,
        #[command(flatten)]
        wait: Wait,
    },
}

fn site(cli: &Cli, what: &str) -> Result<Site, Failure> {
    let usage = |why: String| Failure::new(what, why).with_exit(EX_USAGE);
    let site = cli
        .site
        .clone()
        .ok_or_else(|| usage("--site (or GATECTL_SITE) is required".into()))?;
    for (name, v) in [("--site", &site), ("--root", &cli.root)] {
        if !gated_contract::is_safe_name(v) {
            return Err(usage(format!(
                "{name} `{v}` must be 1..=64 of [A-Za-z0-9_-]"
            )));
        }
    }
    let mut trust = Vec::new();
    for t in &cli.trust {
        let (id, public) = t
            .split_once('=')
            .ok_or_else(|| usage(format!("--trust `{t}` is not ID=PUBKEY")))?;
        gated_contract::envelope::check_key_id(id).map_err(|e| usage(format!("--trust: {e}")))?;
        let key = gated_contract::envelope::parse_public_key(public)
            .map_err(|e| usage(format!("--trust {id}: {e}")))?;
        trust.push((id.to_string(), key));
    }
    let tls = match (&cli.tls_ca, &cli.tls_cert, &cli.tls_key) {
        (None, _, _) => None,
        (Some(ca), cert, key) => Some(gated::config::TlsConfig {
            ca_file: ca.clone(),
            client: match (cert, key) {
                (Some(c), Some(k)) => Some((c.clone(), k.clone())),
                (None, None) => None,
                _ => return Err(usage("--tls-cert and --tls-key go together".into())),
            },
            server_name: cli
                .tls_server_name
                .clone()
                .unwrap_or_else(|| cli.broker.host.clone()),
        }),
    };
    let auth = cli.auth_file.clone().map(gated::config::AuthSource::File);
    if gated::sync::transport::login_in_clear(&cli.broker.host, tls.is_some(), auth.is_some()) {
        eprintln!(
            "gatectl: warning: the password goes to {} without TLS (add --tls-ca)",
            cli.broker.host
        );
    }
    let secrets = gated::sync::transport::load(tls.as_ref(), auth.as_ref())
        .map_err(|e| Failure::new("broker connection settings", e))?;
    Ok(Site {
        broker: cli.broker.clone(),
        root: cli.root.clone(),
        site,
        trust,
        secrets,
        tls,
    })
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let mut stdout = std::io::stdout();
    let out = &mut stdout;
    let key = cli.key.as_deref();
    match &cli.cmd {
        Sub::Keygen { id, out: path } => verbs::keygen(id, path, out),
        Sub::Push {
            list,
            file,
            force_version,
            allow_empty,
            wait,
        } => {
            let list = ListName::from(*list);
            let s = site(&cli, &format!("push {}", list.as_str()))?;
            let req = PushRequest {
                list,
                file: file.clone(),
                force_version: *force_version,
                allow_empty: *allow_empty,
                wait: Duration::from_secs(wait.wait),
            };
            verbs::push(&s, key, req, out).await
        }
        Sub::Invite {
            visitor,
            host,
            from,
            until,
            gates,
            entries,
            schedule,
            qr,
            id,
            keep,
            wait,
        } => {
            let s = site(&cli, "invite")?;
            let req = InviteRequest {
                visitor: visitor.clone(),
                host: host.clone(),
                from: from.clone(),
                until: until.clone(),
                gates: gates.clone(),
                entries: *entries,
                schedule: schedule.clone(),
                keep_expired_ms: gated::admin::lists::days_ms(keep.keep_expired_days),
                qr: qr.clone(),
                id: id.clone(),
                wait: Duration::from_secs(wait.wait),
            };
            verbs::invite(&s, key, req, out).await
        }
        Sub::Revoke { what } => {
            let s = site(&cli, "revoke")?;
            let (target, wait) = match what {
                Revoke::Invitation { id, keep, wait } => (
                    RevokeTarget::Invitation(
                        id.clone(),
                        gated::admin::lists::days_ms(keep.keep_expired_days),
                    ),
                    wait,
                ),
                Revoke::Staff { subject, wait } => (RevokeTarget::Staff(subject.clone()), wait),
                Revoke::Credential {
                    credential,
                    reason,
                    wait,
                } => {
                    let (kind, id) = verbs::parse_credential(credential)
                        .map_err(|e| Failure::new("revoke", e).with_exit(EX_USAGE))?;
                    (RevokeTarget::Credential(kind, id, reason.clone()), wait)
                }
            };
            verbs::revoke(&s, key, target, Duration::from_secs(wait.wait), out).await
        }
        Sub::Tail {
            gate,
            json,
            acks,
            count,
            timeout,
        } => {
            let s = site(&cli, "tail")?;
            let req = TailRequest {
                gate: gate.clone(),
                json: *json,
                acks: *acks,
                count: *count,
                timeout: timeout.map(Duration::from_secs),
            };
            verbs::tail(&s, req, out).await
        }
        Sub::Status { json } => {
            let s = site(&cli, "status")?;
            verbs::status(&s, *json, out).await
        }
        Sub::Cmd {
            action,
            gate,
            lane,
            direction,
            subject,
            ttl,
            wait,
        } => {
            let kind = *action;
            let what = format!("cmd {}", kind.as_str());
            let s = site(&cli, &what)?;
            let usage = |why: &str| Failure::new(&what, why).with_exit(EX_USAGE);
            let direction = direction.map(|d| match d {
                Dir::In => Direction::In,
                Dir::Out => Direction::Out,
            });
            match (kind, lane) {
                (CommandKind::Open, None) => return Err(usage("open needs --lane N")),
                (CommandKind::Open, Some(_)) => {}
                _ if lane.is_some() || direction.is_some() => {
                    return Err(usage("--lane and --direction are only for open"));
                }
                _ => {}
            }
            match (kind, subject) {
                (CommandKind::ClearPassback, None) => {
                    return Err(usage("clear-passback needs --subject ID"));
                }
                (CommandKind::ClearPassback, Some(_)) | (_, None) => {}
                (_, Some(_)) => return Err(usage("--subject is only for clear-passback")),
            }
            let req = CommandRequest {
                site: s.site.clone(),
                gate: gate.clone(),
                cmd: kind,
                lane: *lane,
                direction,
                subject: subject.clone(),
                challenge: None,
                ttl_ms: i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX),
            };
            verbs::cmd(&s, key, req, Duration::from_secs(*wait), out).await
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let usage = e.use_stderr();
            let _ = e.print();
            return if usage {
                ExitCode::from(EX_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatectl: starting: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) if f.exit == 0 => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("gatectl: {f}");
            ExitCode::from(f.exit)
        }
    }
}
