//! Human-readable output.

use bastion_core::{
    audit::{Actor, AuditEvent, AuditKind},
    policy::{Entity, GrantObject, GrantSubject},
    protocol::{ProbeResult, Response, Status},
    session::SessionMeta,
};

pub fn response(r: &Response) {
    match r {
        Response::Status(s) => status(s),
        Response::ArchiveStatus(a) => archive_status(a),
        Response::Probe(p) => probe(p),
        Response::Changed(e) => println!("{}", event_line(e)),
        Response::MfaEnrolled { uri, event } => mfa_enrolled(uri, event),
        Response::Tickets { tickets } if tickets.is_empty() => println!("(no requests)"),
        Response::Tickets { tickets } => tickets.iter().for_each(|t| println!("{}", t.summary())),
        Response::Entities { entities } if entities.is_empty() => println!("(none)"),
        Response::Entities { entities } => entities.iter().for_each(entity),
        Response::Audit { events } => events.iter().for_each(|e| println!("{}", event_line(e))),
        Response::Watch { output, .. } => {
            use std::io::Write;
            let mut out = std::io::stdout();
            let _ = out.write_all(output);
            let _ = out.flush();
        }
        Response::Files { files } if files.is_empty() => println!("(no files)"),
        Response::Files { files } => files.iter().for_each(file),
        Response::FileData { .. } => println!("(file data)"),
        Response::StoreStats(s) => {
            println!(
                "store          {} ({:.1} MiB on disk)",
                s.path,
                s.size_bytes as f64 / (1 << 20) as f64
            );
            println!(
                "sessions       {} carrying {:.1} MiB, recorded in {:.1} MiB{}",
                s.sessions,
                s.carried_bytes as f64 / (1 << 20) as f64,
                s.recorded_bytes as f64 / (1 << 20) as f64,
                if s.recorded_bytes > 0 {
                    format!(
                        " ({:.1}x smaller)",
                        s.carried_bytes as f64 / s.recorded_bytes as f64
                    )
                } else {
                    String::new()
                }
            );
            if let (Some(o), Some(n)) = (s.oldest_micros, s.newest_micros) {
                println!("oldest/newest  {} / {}", utc(o), utc(n));
            }
            println!("audit events   {}", s.audit_events);
        }
        Response::Verify {
            sessions,
            audit,
            findings,
        } => {
            for s in sessions {
                let status = serde_json::to_value(s.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_uppercase))
                    .unwrap_or_default();
                println!("session {:<8} {status:<9} {}", s.session, s.detail);
            }
            match &audit.broken {
                None => println!(
                    "audit    {} events, chain intact ({} before integrity)",
                    audit.events, audit.legacy
                ),
                Some((seq, what)) => println!("audit    TAMPERED  event #{seq}: {what}"),
            }
            for f in findings {
                println!("TAMPERED {f}");
            }
        }
        Response::Search {
            hits,
            searched,
            complete,
            micros,
        } => search(hits, *searched, *complete, *micros),
        Response::Flows { events, lost_total } => {
            if events.is_empty() {
                println!("(no flows)");
            }
            events.iter().for_each(|e| println!("{}", event_line(e)));
            println!("flow events lost by the kernel (ring buffer full): {lost_total}");
        }
        Response::Sessions { sessions } if sessions.is_empty() => println!("(no sessions)"),
        Response::Sessions { sessions } => sessions_table(sessions),
        Response::Session { session, activity } => {
            sessions_table(std::slice::from_ref(session));
            println!();
            for a in activity {
                println!(
                    "  +{:>9.3}s  ch{:<3} {}",
                    a.t_micros as f64 / 1e6,
                    a.channel,
                    a.what
                );
            }
        }
        Response::Export { content, .. } => print!("{content}"),
        Response::Ca {
            user_ca,
            host_ca,
            known_hosts,
            audit_key,
        } => ca(user_ca, host_ca, known_hosts, audit_key, None),
        Response::Accounts { accounts } if accounts.is_empty() => println!("(no stored accounts)"),
        Response::Accounts { accounts } => {
            for a in accounts {
                println!("account {}@{}  {}", a.login, a.target, a.fingerprint);
            }
        }
        Response::HostKey {
            addr,
            key,
            fingerprint,
        } => {
            println!(
                "{addr} presents {} {fingerprint}",
                key.split_whitespace().next().unwrap_or("?")
            )
        }
        Response::Error { error } => eprintln!("bastionctl: bastiond: {error}"),
    }
}

/// `VERDICT PROTO SRC -> DST (HOOK, pid P comm, cgroup C) xN`
pub fn flow_line(f: &bastion_core::flow::Flow) -> String {
    let end = |a: Option<std::net::IpAddr>, port: u16| match (a, port) {
        (Some(a), 0) => a.to_string(),
        (Some(std::net::IpAddr::V6(a)), p) => format!("[{a}]:{p}"),
        (Some(a), p) => format!("{a}:{p}"),
        (None, _) => "local".into(),
    };
    let who = match (&f.pid, &f.comm) {
        (Some(pid), Some(comm)) => format!("pid {pid} {comm}, "),
        (Some(pid), None) => format!("pid {pid}, "),
        _ => String::new(),
    };
    let cgroup = if f.cgroup == 0 {
        "forwarded".to_string()
    } else {
        format!("cgroup {}", f.cgroup)
    };
    if let Some(r) = &f.relay {
        let mut line = format!(
            "{} tcp {} -> {} (relay",
            if f.allowed { "relayed" } else { "DENIED" },
            end(f.src, f.sport),
            end(f.dst, f.dport),
        );
        if let (Some(g), Some(s)) = (&r.grant, &r.subject) {
            line += &format!(", grant {g} for {s}");
        }
        if f.allowed {
            line += &format!(
                ", {} bytes up, {} down, {} ms",
                r.bytes_up, r.bytes_down, r.duration_ms
            );
        }
        if let Some(id) = r.session {
            line += &format!(", recorded as session {id}");
        }
        if let Some(why) = &r.reason {
            line += &format!(": {why}");
        }
        return line + ")";
    }
    format!(
        "{} {} {} -> {} ({}, {who}{cgroup}){}",
        if f.allowed { "allowed" } else { "DENIED" },
        f.proto,
        end(f.src, f.sport),
        end(f.dst, f.dport),
        f.hook,
        if f.count > 1 {
            format!(" x{}", f.count)
        } else {
            String::new()
        }
    )
}

/// `ca show`: both CAs with what to do with them, or (`only`: known_hosts, user CA) one bare line.
/// One part of `ca show`, printed bare for scripts.
#[derive(Clone, Copy)]
pub enum CaPart {
    KnownHosts,
    UserCa,
    AuditKey,
}

pub fn ca(user_ca: &str, host_ca: &str, known_hosts: &str, audit_key: &str, only: Option<CaPart>) {
    match only {
        Some(CaPart::KnownHosts) => println!("{known_hosts}"),
        Some(CaPart::UserCa) => println!("{user_ca}"),
        Some(CaPart::AuditKey) => println!("{audit_key}"),
        None => {
            println!("# Admins' clients: add this line to ~/.ssh/known_hosts (host CA {host_ca})");
            println!("{known_hosts}");
            println!("# Targets: put this key in sshd's TrustedUserCAKeys (user CA)");
            println!("{user_ca}");
            println!("# Auditors: the key that seals session records (verify --file --key)");
            println!("{audit_key}");
        }
    }
}

fn status(s: &Status) {
    let e = &s.enforcement;
    println!(
        "bastiond {} (pid {}), up {}",
        s.version,
        s.pid,
        duration(s.uptime_secs)
    );
    println!(
        "{:<14}{} (schema v{}, {})",
        "store",
        s.store.path.display(),
        s.store.schema_version,
        bytes(s.store.size_bytes)
    );
    let hooks: Vec<String> = e
        .hooks
        .iter()
        .map(|h| {
            format!(
                "{} ({})",
                h.program,
                serde_json::to_value(h.link)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            )
        })
        .collect();
    println!(
        "{:<14}enforcing on {}: {}",
        "enforcement",
        e.cgroup_root.display(),
        hooks.join(", ")
    );
    for r in &e.unprotected_routes {
        println!(
            "{:<14}protected {} is routed through {} (route {}), which has no egress program",
            "WARNING", r.prefix, r.iface, r.route
        );
    }
    let subnets: Vec<String> = e
        .protected_subnets
        .iter()
        .map(ToString::to_string)
        .collect();
    println!(
        "{:<14}{}",
        "protected",
        if subnets.is_empty() {
            "(none)".to_owned()
        } else {
            subnets.join(", ")
        }
    );
    println!(
        "{:<14}{} (cgroup id {})",
        "exempt",
        e.daemon_cgroup.display(),
        e.daemon_cgroup_id
    );
    println!(
        "{:<14}{} refused, {} allowed (bastiond)",
        "connects", e.denied, e.allowed
    );
    println!("{:<14}{}", "pins", e.bpffs_dir.display());
    if let Some(table) = &e.intercept_table {
        println!(
            "{:<14}nftables table inet {table} steers SSH (and granted TCP ports) to bastiond",
            "intercepting"
        );
    }
}

fn sessions_table(sessions: &[SessionMeta]) {
    println!(
        "{:<8} {:<11} {:<12} {:<28} {:<12} {:<22} {:<20} {:>9} {:>11} {:>11}",
        "ID",
        "STATE",
        "USER",
        "LOGIN@TARGET",
        "VIA",
        "CLIENT",
        "STARTED",
        "DURATION",
        "BYTES IN",
        "BYTES OUT"
    );
    for s in sessions {
        let duration = s
            .ended_micros
            .map(|e| duration(e.saturating_sub(s.started_micros) / 1_000_000))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<8} {:<11} {:<12} {:<28} {:<12} {:<22} {:<20} {:>9} {:>11} {:>11}",
            s.id,
            serde_json::to_value(s.state)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            s.user,
            format!("{}@{}", s.login, s.target),
            if s.arrival.is_empty() {
                "explicit"
            } else {
                &s.arrival
            },
            s.client_addr.map(|a| a.to_string()).unwrap_or_default(),
            utc(s.started_micros),
            duration,
            s.bytes_in,
            s.bytes_out
        );
    }
}

fn probe(p: &ProbeResult) {
    println!(
        "{} reachable from bastiond in {} µs: {}",
        p.addr, p.connect_micros, p.banner
    );
}

/// The enrolment as a person scans it: the QR code of the otpauth URI, drawn with half-block
/// characters (two modules per character cell, dark on light with a quiet zone), then the URI.
fn mfa_enrolled(uri: &str, event: &AuditEvent) {
    println!("{}", event_line(event));
    match qrcode::QrCode::new(uri.as_bytes()) {
        Ok(code) => println!(
            "\n{}\n",
            code.render::<qrcode::render::unicode::Dense1x2>()
                .dark_color(qrcode::render::unicode::Dense1x2::Light)
                .light_color(qrcode::render::unicode::Dense1x2::Dark)
                .build()
        ),
        Err(e) => eprintln!("(no QR code: {e})"),
    }
    println!("{uri}");
    println!(
        "Scan the code (or enter the URI) in an authenticator app; it is shown only now. \
         Sign-ins under grants with --require-mfa then ask for a verification code."
    );
}

fn entity(e: &Entity) {
    match e {
        Entity::User(u) => {
            let keys: Vec<&str> = u
                .keys
                .iter()
                .map(|k| k.split_whitespace().next().unwrap_or("?"))
                .collect();
            println!(
                "user   {:<16} keys: {}  trusted CAs: {}",
                u.name,
                if keys.is_empty() {
                    "-".into()
                } else {
                    keys.join(",")
                },
                u.trusted_cas.len()
            );
        }
        Entity::Group(g) => println!("group  {:<16} members: {}", g.name, g.members.join(",")),
        Entity::Target(t) => println!(
            "target {:<16} {}:{}  host keys: {}",
            t.name,
            t.addr,
            t.port,
            if t.host_keys.is_empty() {
                "none pinned".to_owned()
            } else {
                t.host_keys.len().to_string()
            }
        ),
        Entity::Subnet(c) => println!("subnet {c}"),
        Entity::Approvers(a) => println!(
            "approvers of {:<10} group {}, {} approval(s), requests up to {}",
            a.key(),
            a.group,
            a.approvals,
            a.max_secs
                .map(bastion_core::ticket::duration_text)
                .unwrap_or_else(|| "the configured maximum".into())
        ),
        Entity::Revocation(r) => {
            let mut what = Vec::new();
            if let Some(serial) = r.serial {
                what.push(format!("serial {serial}"));
            }
            if let Some(id) = &r.key_id {
                what.push(format!("key id {id:?}"));
            }
            let ca =
                r.ca.as_deref()
                    .and_then(|k| ssh_key::PublicKey::from_openssh(k).ok())
                    .map(|k| format!("CA {}", k.fingerprint(ssh_key::HashAlg::Sha256)))
                    .unwrap_or_else(|| "any CA".into());
            println!("revoked {:<15} {} from {ca}", r.name, what.join(", "));
        }
        Entity::Grant(g) => {
            let subject = match &g.subject {
                GrantSubject::User(u) => format!("user {u}"),
                GrantSubject::Group(g) => format!("group {g}"),
            };
            let object = match &g.object {
                GrantObject::Target(t) => format!("target {t}"),
                GrantObject::Subnet(c) => format!("subnet {c}"),
            };
            let rights: Vec<&str> = g.rights.iter().map(|r| r.as_str()).collect();
            let mut when = Vec::new();
            if let Some(t) = g.not_before {
                when.push(format!("from {t}"));
            }
            if let Some(t) = g.not_after {
                when.push(format!("until {t}"));
            }
            if let Some(w) = g.window {
                when.push(format!("during {w} UTC"));
            }
            for r in &g.command_rules {
                when.push(format!("{} command `{}`", r.action.as_str(), r.pattern));
            }
            if g.require_mfa {
                when.push("second factor required".into());
            }
            if !g.tcp_ports.is_empty() {
                let ports: Vec<String> = g.tcp_ports.iter().map(u16::to_string).collect();
                let from: Vec<String> = g.sources.iter().map(|c| c.to_string()).collect();
                when.push(format!(
                    "tcp ports {} from {}{}",
                    ports.join(","),
                    from.join(","),
                    if g.capture { " (payload captured)" } else { "" }
                ));
            }
            println!(
                "grant  {:<16} {subject} -> {object} as {} [{}]{}",
                g.id,
                g.logins.join(","),
                rights.join(","),
                if when.is_empty() {
                    String::new()
                } else {
                    format!(" {}", when.join(", "))
                }
            );
        }
    }
}

pub fn event_line(e: &AuditEvent) -> String {
    let who = match &e.actor {
        Actor::Admin { uid, .. } => format!("uid {uid}"),
        Actor::Daemon => "bastiond".to_owned(),
    };
    let what = match &e.kind {
        AuditKind::DaemonStarted { version, pid } => {
            format!("bastiond {version} started (pid {pid})")
        }
        AuditKind::PolicyAdded { kind, name } => format!("added {} {name}", kind.as_str()),
        AuditKind::PolicyRemoved { kind, name } => format!("removed {} {name}", kind.as_str()),
        AuditKind::Login {
            client,
            username,
            fingerprint,
            user,
            accepted,
            reason,
        } => format!(
            "login {} for `{username}` from {client} with {fingerprint}{}{}",
            if *accepted { "accepted" } else { "refused" },
            user.as_ref()
                .map(|u| format!(" (user {u})"))
                .unwrap_or_default(),
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        AuditKind::SecondFactor {
            client,
            username,
            user,
            outcome,
            reason,
        } => format!(
            "second factor {outcome} for {user} (`{username}`) from {client}{}",
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        AuditKind::MfaEnrolled { user } => format!("{user} enrolled a TOTP second factor"),
        AuditKind::MfaRemoved { user } => format!("{user}'s TOTP second factor removed"),
        AuditKind::SessionRefused {
            client,
            user,
            username,
            reason,
        } => {
            format!("session refused for {user} (`{username}`) from {client}: {reason}")
        }
        AuditKind::SessionStarted {
            session,
            client,
            user,
            login,
            target,
            grant,
            arrival,
        } => format!(
            "session {session} started: {user} as {login}@{target} from {client} (grant {grant}{}{arrival})",
            if arrival.is_empty() { "" } else { ", " }
        ),
        AuditKind::RequestRefused {
            session,
            channel,
            request,
            reason,
        } => format!("session {session} channel {channel}: {request} refused: {reason}"),
        AuditKind::SessionEnded {
            session,
            bytes_in,
            bytes_out,
        } => format!("session {session} ended ({bytes_in} bytes in, {bytes_out} bytes out)"),
        AuditKind::SignInThrottled {
            client,
            username,
            remaining_secs,
        } => format!(
            "sign-in as `{username}` from {client} throttled after repeated failures ({remaining_secs}s left)"
        ),
        AuditKind::AccountAdded {
            target,
            login,
            fingerprint,
        } => {
            format!("stored a sealed key for {login}@{target} ({fingerprint})")
        }
        AuditKind::AccountRemoved { target, login } => {
            format!("removed the stored key for {login}@{target}")
        }
        AuditKind::SessionsInterrupted { sessions } => {
            format!("sessions interrupted by a bastiond stop: {sessions:?}")
        }
        AuditKind::Flow(f) => format!("flow {}", flow_line(f)),
        AuditKind::AuditSuppressed {
            minute_secs,
            total,
            sources,
            other_sources,
            over_budget,
        } => {
            let named: Vec<String> = sources
                .iter()
                .map(|s| format!("{} ×{}", s.source, s.count))
                .collect();
            format!(
                "{total} events of unauthenticated sources not stored one by one in the minute from {minute_secs}: {}{}{}",
                named.join(", "),
                if *other_sources > 0 {
                    format!(", other sources ×{other_sources}")
                } else {
                    String::new()
                },
                if *over_budget > 0 {
                    format!("; {over_budget} over the hourly budget")
                } else {
                    String::new()
                }
            )
        }
        AuditKind::AuditExpired {
            through_seq,
            count,
            retention_secs,
        } => format!(
            "{count} audit events deleted by retention ({retention_secs}s): the stream now starts after {through_seq}"
        ),
        AuditKind::ProtectedInterface {
            iface,
            state,
            detail,
        } => match detail {
            Some(d) => format!("protected interface {iface}: egress program {state} ({d})"),
            None => format!("protected interface {iface}: egress program {state}"),
        },
        AuditKind::UnprotectedRoute {
            prefix,
            route,
            iface,
            resolved: false,
        } => format!(
            "WARNING protected {prefix} is routed through unprotected interface {iface} (route {route})"
        ),
        AuditKind::UnprotectedRoute {
            prefix,
            route,
            iface,
            resolved: true,
        } => format!("protected {prefix} no longer routed through {iface} (route {route} gone)"),
        AuditKind::CgroupJoined { cgroup, pid, comm } => format!(
            "ALERT pid {pid} ({}) joined bastiond's cgroup {cgroup}: it shares bastiond's exemption",
            comm.as_deref().unwrap_or("?")
        ),
        AuditKind::CommandRule {
            session,
            channel,
            command,
            rule,
            action,
            grant,
        } => format!(
            "session {session} ch{channel}: command `{command}` matched {action} rule `{rule}` (grant {grant})"
        ),
        AuditKind::SessionsExpired {
            sessions,
            retention_secs,
        } => format!(
            "sessions deleted after {} of retention: {sessions:?}",
            duration(*retention_secs)
        ),
        AuditKind::SessionArchived {
            session,
            object,
            bytes,
            sha256,
            status,
        } => format!(
            "session {session} archived as {object} ({bytes} bytes, sha256 {sha256}, read back {status})"
        ),
        AuditKind::ArchiveBacklog {
            pending,
            pending_bytes,
            oldest_micros,
            free_mb,
            alert_mb,
            last_error,
        } => format!(
            "ALERT archive backlog: {pending} records ({pending_bytes} bytes) not archived, oldest queued {}, {free_mb} MiB free (alert at {alert_mb} MiB); last error: {last_error}",
            utc_micros(*oldest_micros)
        ),
        AuditKind::ArchiveRecovered { pending, free_mb } => {
            format!("archive reachable again: {pending} records waiting, {free_mb} MiB free")
        }
        AuditKind::StoreFloorReached { free_mb, floor_mb } => format!(
            "ALERT audit store at its floor ({free_mb} MiB free, floor {floor_mb} MiB): new sessions refused"
        ),
        AuditKind::RecordingFailed {
            session,
            stored_blocks,
            reason,
        } => format!(
            "ALERT session {session}: recording failed, session ended; the record stops after block {stored_blocks}: {reason}"
        ),
        AuditKind::SessionKilled { session, reason } => {
            format!("session {session} killed: {reason}")
        }
        AuditKind::AccessEnding {
            session,
            ends_at,
            grant,
        } => format!(
            "session {session} warned: access ends at {} under grant {grant}",
            utc(ends_at.saturating_mul(1_000_000))
        ),
        AuditKind::AccessRequested {
            request,
            requester,
            what,
            reason,
            approvers,
        } => format!(
            "request #{request} by {requester}: {what}, reason \"{reason}\" (approvers: {approvers})"
        ),
        AuditKind::RequestApproved {
            request,
            requester,
            approver,
            approvals,
            needed,
            grant,
            reason,
        } => format!(
            "request #{request} of {requester} approved by {approver} ({approvals}/{needed}){}{}",
            grant
                .as_ref()
                .map(|g| format!(": grant {g} created"))
                .unwrap_or_default(),
            reason
                .as_ref()
                .map(|r| format!(", reason \"{r}\""))
                .unwrap_or_default()
        ),
        AuditKind::RequestDenied {
            request,
            requester,
            by,
            reason,
        } => format!(
            "request #{request} of {requester} denied by {by}{}",
            reason
                .as_ref()
                .map(|r| format!(": {r}"))
                .unwrap_or_default()
        ),
        AuditKind::RequestExpired { request, requester } => {
            format!("request #{request} of {requester} expired undecided")
        }
        AuditKind::AccessEnded { session, reason } => {
            format!("session {session} ended: access no longer holds: {reason}")
        }
        AuditKind::Anchor { at_seq, head, .. } => {
            format!("anchor: the audit key signs chain head {head} at #{at_seq}")
        }
        AuditKind::FlowsUncounted {
            suppressed,
            lost,
            lost_total,
        } => format!(
            "flow events not stored one by one: {suppressed} over the rate cap, {lost} lost to a full ring buffer ({lost_total} lost in all)"
        ),
    };
    format!("#{:<6} {} {who}: {what}", e.seq, utc(e.time_micros))
}

fn archive_status(a: &bastion_core::protocol::ArchiveStatus) {
    let when = |t: Option<u64>| t.map_or_else(|| "-".into(), utc);
    println!("archive      {} (appliance {})", a.url, a.appliance);
    println!(
        "pending      {} sessions, {} ({} retrying), oldest queued {}",
        a.pending,
        bytes(a.pending_bytes),
        a.retrying,
        when(a.oldest_queued_micros)
    );
    println!(
        "archived     {} sessions, {} since start; last at {}, {}/s",
        a.archived_sessions,
        bytes(a.archived_bytes),
        when(a.last_success_micros),
        bytes(a.last_rate_bytes_per_sec)
    );
    println!(
        "audit        archived through #{} of {} events",
        a.audit_archived_through, a.audit_events
    );
    match (&a.last_error, a.last_error_micros) {
        (Some(e), t) => println!("last error   {} {e}", when(t)),
        (None, _) => println!("last error   -"),
    }
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
pub fn utc_micros(micros: u64) -> String {
    bastion_core::clock::rfc3339_micros(micros)
}

/// `YYYY-MM-DDTHH:MM:SSZ` from Unix microseconds.
fn utc(micros: u64) -> String {
    let (y, m, d, hh, mm, ss) = bastion_core::clock::civil(micros / 1_000_000);
    format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
}

fn duration(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// `[HH:]MM:SS.mmm`, what `session play --from` takes.
fn offset(micros: u64) -> String {
    let (s, ms) = (micros / 1_000_000, (micros / 1000) % 1000);
    match s / 3600 {
        0 => format!("{:02}:{:02}.{ms:03}", s / 60, s % 60),
        h => format!("{h}:{:02}:{:02}.{ms:03}", (s / 60) % 60, s % 60),
    }
}

fn search(hits: &[bastion_core::session::CommandHit], searched: u64, complete: bool, micros: u64) {
    use bastion_core::session::CommandSource;
    for h in hits {
        let mark = match h.source {
            CommandSource::Shell => "$",
            CommandSource::Exec => "exec",
            CommandSource::Refused => "refused $",
            CommandSource::Output => "out",
            CommandSource::File => "file",
        };
        let mut line = h.line.replace('\n', "\\n ");
        if !h.doubts.is_empty() {
            let d: Vec<&str> = h.doubts.iter().map(|d| d.as_str()).collect();
            line.push_str(&format!("  [uncertain: {}]", d.join(", ")));
        }
        println!(
            "{}  session {:<6} +{:<12} {}@{} ({})  {mark} {line}",
            utc(h.at_micros),
            h.session,
            offset(h.offset_micros),
            h.login,
            h.target,
            h.user,
        );
    }
    println!(
        "{} found, {searched} searched in {:.1} ms{}",
        hits.len(),
        micros as f64 / 1000.0,
        if complete {
            ""
        } else {
            " (stopped at the output budget: narrow the search)"
        }
    );
    if let Some(h) = hits.first() {
        println!(
            "replay: bastionctl session play {} --from {}",
            h.session,
            offset(h.offset_micros)
        );
    }
}

/// One line per file: index, direction, size, SHA-256, captured or not, path.
fn file(f: &bastion_core::record::files::CapturedFile) {
    let state = match (f.captured, f.same_as, f.truncated) {
        (true, Some(first), _) => format!("captured (as file {first})"),
        (true, None, _) => "captured".to_owned(),
        (false, _, true) => "too large: hash and size only".to_owned(),
        (false, _, false) => "not captured".to_owned(),
    };
    println!(
        "{:<4} {:<8} {:>12} {} {state}  {}{}",
        f.index,
        f.direction.as_str(),
        f.size,
        f.sha256.as_deref().unwrap_or("(hash unknown)"),
        f.path,
        f.note
            .as_deref()
            .map(|n| format!("  [{n}]"))
            .unwrap_or_default()
    );
}

#[cfg(test)]
mod tests {
    #[test]
    fn utc_dates() {
        assert_eq!(super::utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            super::utc(1_795_737_600_000_000 + 3_723_000_000),
            "2026-11-27T01:02:03Z"
        );
        assert_eq!(super::utc(951_782_400_000_000), "2000-02-29T00:00:00Z");
    }
}
