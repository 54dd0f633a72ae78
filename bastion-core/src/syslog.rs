//! The audit stream as syslog: RFC 5424 messages (`bastionctl audit --format syslog`, and
//! bastiond's own TCP forwarder), framed by octet counting (RFC 6587) on stream transports.

use crate::audit::{AuditEvent, AuditKind};

/// One event as an RFC 5424 message: facility authpriv, severity warning for refusals and
/// breaches, notice otherwise; MSGID the event kind; the event as JSON in MSG.
pub fn rfc5424(ev: &AuditEvent, host: &str) -> String {
    let warning = matches!(
        &ev.kind,
        AuditKind::SessionRefused { .. }
            | AuditKind::RequestRefused { .. }
            | AuditKind::SignInThrottled { .. }
            | AuditKind::SessionKilled { .. }
            | AuditKind::AccessEnded { .. }
            | AuditKind::StoreFloorReached { .. }
            | AuditKind::ArchiveBacklog { .. }
            | AuditKind::FlowsUncounted { .. }
            | AuditKind::SessionsInterrupted { .. }
    ) || matches!(&ev.kind, AuditKind::Flow(f) if !f.allowed)
        || matches!(
            &ev.kind,
            AuditKind::Login {
                accepted: false,
                ..
            }
        );
    let pri = 10 * 8 + if warning { 4 } else { 5 };
    let json = serde_json::to_value(ev).unwrap_or_default();
    let msgid = json["event"].as_str().unwrap_or("-").to_owned();
    format!(
        "<{pri}>1 {} {host} bastiond - {msgid} [bastion@32473 seq=\"{}\"] {json}",
        crate::clock::rfc3339_micros(ev.time_micros),
        ev.seq
    )
}

/// `msg` framed for a stream transport by octet counting (RFC 6587 3.4.1): `LEN SP MSG`, so
/// a message may hold any byte, newlines included.
pub fn octet_counted(msg: &str) -> Vec<u8> {
    let mut out = format!("{} ", msg.len()).into_bytes();
    out.extend_from_slice(msg.as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Actor;

    #[test]
    fn syslog_lines_follow_rfc5424() {
        let ev = AuditEvent {
            seq: 42,
            time_micros: 1_795_737_600_000_123,
            actor: Actor::Daemon,
            kind: AuditKind::SessionKilled {
                session: 7,
                reason: "x".into(),
            },
            chain: None,
        };
        let line = rfc5424(&ev, "bastion");
        assert!(
            line.starts_with(
                "<84>1 2026-11-27T00:00:00.000123Z bastion bastiond - session_killed [bastion@32473 seq=\"42\"] {"
            ),
            "{line}"
        );
        assert!(line.ends_with('}'));
    }

    #[test]
    fn octet_counting_prefixes_the_length_in_bytes() {
        assert_eq!(octet_counted("<13>1 é"), b"8 <13>1 \xc3\xa9".to_vec());
    }
}
