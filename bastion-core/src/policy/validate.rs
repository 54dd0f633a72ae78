//! Checks a policy change against the current policy before it is stored: names well formed,
//! keys parseable, references pointing at things that exist, nothing removed that is still
//! referenced. Pure, like the evaluator.

use super::model::{GrantObject, GrantSubject, Policy, Right, valid_name};
use crate::policy::Entity;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(
        "invalid name `{0}`: use letters, digits, `-`, `_`, `.` (at most 64, not starting with `-` or `.`)"
    )]
    BadName(String),
    #[error("{kind} `{name}` already exists; remove it first")]
    Exists { kind: &'static str, name: String },
    #[error("{kind} `{name}` does not exist")]
    Missing { kind: &'static str, name: String },
    #[error("{what}: not an OpenSSH public key: {reason}")]
    BadKey { what: String, reason: String },
    #[error("{kind} `{name}` is used by {users}; change those first")]
    InUse {
        kind: &'static str,
        name: String,
        users: String,
    },
    #[error("{0}")]
    Invalid(String),
}

/// Parses an OpenSSH public key line, returning its canonical text (type, base64, comment).
pub fn parse_key(what: &str, line: &str) -> Result<String, PolicyError> {
    ssh_key::PublicKey::from_openssh(line.trim())
        .map_err(|e| PolicyError::BadKey {
            what: what.to_owned(),
            reason: e.to_string(),
        })
        .and_then(|k| {
            k.to_openssh().map_err(|e| PolicyError::BadKey {
                what: what.to_owned(),
                reason: e.to_string(),
            })
        })
}

/// Whether two OpenSSH key lines are the same key (whatever their comments).
fn same_key(a: &str, b: &str) -> bool {
    match (
        ssh_key::PublicKey::from_openssh(a),
        ssh_key::PublicKey::from_openssh(b),
    ) {
        (Ok(a), Ok(b)) => a.key_data() == b.key_data(),
        _ => false,
    }
}

fn fingerprint(line: &str) -> String {
    ssh_key::PublicKey::from_openssh(line)
        .map(|k| k.fingerprint(ssh_key::HashAlg::Sha256).to_string())
        .unwrap_or_else(|_| "?".into())
}

fn name(n: &str) -> Result<(), PolicyError> {
    if valid_name(n) {
        Ok(())
    } else {
        Err(PolicyError::BadName(n.to_owned()))
    }
}

fn exists(p: &Policy, kind: &'static str, n: &str) -> bool {
    match kind {
        "user" => p.users.contains_key(n),
        "group" => p.groups.contains_key(n),
        "target" => p.targets.contains_key(n),
        "grant" => p.grants.contains_key(n),
        "subnet" => p.subnets.iter().any(|c| c.to_string() == n),
        "revocation" => p.revocations.contains_key(n),
        "approvers" => p.approvers.contains_key(n),
        _ => false,
    }
}

fn need(p: &Policy, kind: &'static str, n: &str) -> Result<(), PolicyError> {
    if exists(p, kind, n) {
        Ok(())
    } else {
        Err(PolicyError::Missing {
            kind,
            name: n.to_owned(),
        })
    }
}

/// Validates adding `entity` and returns it normalised (keys in canonical form).
pub fn check_add(p: &Policy, entity: Entity) -> Result<Entity, PolicyError> {
    let kind = entity.kind().as_str();
    let key = entity.key();
    // A subnet's approvers are keyed by the subnet, checked below.
    let subnet_key = match &entity {
        Entity::Subnet(_) => true,
        Entity::Approvers(a) => matches!(a.object, GrantObject::Subnet(_)),
        _ => false,
    };
    if !subnet_key {
        name(&key)?;
    }
    // Setting a target's or subnet's approvers again replaces them.
    if entity.kind() != super::EntityKind::Approvers && exists(p, kind, &key) {
        return Err(PolicyError::Exists { kind, name: key });
    }
    Ok(match entity {
        Entity::User(mut u) => {
            if u.keys.is_empty() && u.trusted_cas.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "user `{}` needs at least one key or trusted CA",
                    u.name
                )));
            }
            u.keys = u
                .keys
                .iter()
                .map(|k| parse_key(&format!("user {} key", u.name), k))
                .collect::<Result<_, _>>()?;
            u.trusted_cas = u
                .trusted_cas
                .iter()
                .map(|k| parse_key(&format!("user {} CA", u.name), k))
                .collect::<Result<_, _>>()?;
            // One key, one person: sessions are attributed by key.
            for key in &u.keys {
                if let Some(owner) = p
                    .users
                    .values()
                    .find(|o| o.keys.iter().any(|k| same_key(k, key)))
                {
                    return Err(PolicyError::Invalid(format!(
                        "user `{}`: key {} is already registered to user `{}`; a key identifies one person",
                        u.name,
                        fingerprint(key),
                        owner.name
                    )));
                }
            }
            Entity::User(u)
        }
        Entity::Group(g) => {
            for m in &g.members {
                need(p, "user", m)?;
            }
            Entity::Group(g)
        }
        Entity::Target(mut t) => {
            if t.port == 0 {
                return Err(PolicyError::Invalid(format!("target `{}`: port 0", t.name)));
            }
            t.host_keys = t
                .host_keys
                .iter()
                .map(|k| parse_key(&format!("target {} host key", t.name), k))
                .collect::<Result<_, _>>()?;
            Entity::Target(t)
        }
        Entity::Subnet(c) => Entity::Subnet(c),
        Entity::Approvers(a) => {
            need(p, "group", &a.group)?;
            if let GrantObject::Target(t) = &a.object {
                need(p, "target", t)?;
            }
            if !(1..=5).contains(&a.approvals) {
                return Err(PolicyError::Invalid(format!(
                    "approvers of {key}: --approvals must be 1 to 5, got {}",
                    a.approvals
                )));
            }
            if a.max_secs == Some(0) {
                return Err(PolicyError::Invalid(format!(
                    "approvers of {key}: the longest request must be positive"
                )));
            }
            Entity::Approvers(a)
        }
        Entity::Revocation(mut r) => {
            if r.serial.is_none() && r.key_id.is_none() {
                return Err(PolicyError::Invalid(format!(
                    "revocation `{}` names no certificate: give a serial, a key id or both",
                    r.name
                )));
            }
            r.ca =
                r.ca.map(|k| parse_key(&format!("revocation {} CA", r.name), &k))
                    .transpose()?;
            Entity::Revocation(r)
        }
        Entity::Grant(g) => {
            match &g.subject {
                GrantSubject::User(u) => need(p, "user", u)?,
                GrantSubject::Group(gr) => need(p, "group", gr)?,
            }
            if let GrantObject::Target(t) = &g.object {
                need(p, "target", t)?;
            }
            let tcp = g.rights.contains(Right::Tcp);
            let ssh = g.rights.iter().any(|r| r != Right::Tcp);
            if ssh && g.logins.is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}` names no login",
                    g.id
                )));
            }
            if tcp && (g.tcp_ports.is_empty() || g.sources.is_empty()) {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}`: the tcp right needs --tcp-port and --from (raw TCP carries no identity: name the admin addresses)",
                    g.id
                )));
            }
            if tcp && g.require_mfa {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}`: raw TCP carries no sign-in, so it cannot require a second factor",
                    g.id
                )));
            }
            if !tcp && (!g.tcp_ports.is_empty() || !g.sources.is_empty() || g.capture) {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}`: TCP ports, sources and capture need the tcp right",
                    g.id
                )));
            }
            if let Some(r) = g
                .command_rules
                .iter()
                .find(|r| r.pattern.is_empty() || r.pattern.len() > 1024)
            {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}`: command pattern `{}` must be 1 to 1024 characters",
                    g.id,
                    r.pattern.chars().take(40).collect::<String>()
                )));
            }
            if g.tcp_ports.contains(&0) {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}`: port 0 is not a port",
                    g.id
                )));
            }
            if g.rights.iter().next().is_none() {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}` grants no right",
                    g.id
                )));
            }
            if let (Some(a), Some(b)) = (g.not_before, g.not_after)
                && a >= b
            {
                return Err(PolicyError::Invalid(format!(
                    "grant `{}`: not_before is not before not_after",
                    g.id
                )));
            }
            Entity::Grant(g)
        }
    })
}

/// Validates removing the `kind` entity called `key`.
pub fn check_remove(p: &Policy, kind: super::EntityKind, key: &str) -> Result<(), PolicyError> {
    let k = kind.as_str();
    need(p, k, key)?;
    let mut users: Vec<String> = Vec::new();
    for g in p.grants.values() {
        let refers = match (kind, &g.subject, &g.object) {
            (super::EntityKind::User, GrantSubject::User(u), _) => u == key,
            (super::EntityKind::Group, GrantSubject::Group(gr), _) => gr == key,
            (super::EntityKind::Target, _, GrantObject::Target(t)) => t == key,
            _ => false,
        };
        if refers {
            users.push(format!("grant {}", g.id));
        }
    }
    users.extend(
        p.approvers
            .values()
            .filter(|a| match (kind, &a.object) {
                (super::EntityKind::Group, _) => a.group == key,
                (super::EntityKind::Target, GrantObject::Target(t)) => t == key,
                _ => false,
            })
            .map(|a| format!("approvers of {}", a.key())),
    );
    if kind == super::EntityKind::User {
        users.extend(
            p.groups
                .values()
                .filter(|g| g.members.iter().any(|m| m == key))
                .map(|g| format!("group {}", g.name)),
        );
    }
    if users.is_empty() {
        Ok(())
    } else {
        Err(PolicyError::InUse {
            kind: k,
            name: key.to_owned(),
            users: users.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Revocation, User};

    const KEY: &str = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGrXTNWkk3wSX0qUgc5HJCjI1F4R2sFYlh6tjDQ8ZJ5b alice@laptop";

    fn user(name: &str, key: &str) -> Entity {
        Entity::User(User {
            name: name.into(),
            keys: vec![key.into()],
            trusted_cas: vec![],
        })
    }

    #[test]
    fn a_key_belongs_to_one_user() {
        let mut p = Policy::default();
        p.insert(check_add(&p, user("alice", KEY)).unwrap());
        // The same key with another comment is the same key.
        let same = KEY.replace("alice@laptop", "bob@desk");
        let e = check_add(&p, user("bob", &same)).unwrap_err().to_string();
        assert!(e.contains("already registered to user `alice`"), "{e}");
    }

    #[test]
    fn raw_tcp_cannot_require_a_second_factor() {
        let mut p = Policy::default();
        p.insert(check_add(&p, user("alice", KEY)).unwrap());
        let grant: crate::policy::Grant = serde_json::from_value(serde_json::json!({
            "id": "db", "subject": {"user": "alice"}, "object": {"subnet": "203.0.113.0/24"},
            "logins": [], "rights": ["tcp"], "tcp_ports": [5432],
            "sources": ["198.51.100.0/24"], "require_mfa": true
        }))
        .unwrap();
        let e = check_add(&p, Entity::Grant(grant)).unwrap_err();
        assert!(
            e.to_string().contains("cannot require a second factor"),
            "{e}"
        );
    }

    #[test]
    fn a_revocation_names_a_certificate() {
        let p = Policy::default();
        let revocation = |serial, key_id: Option<&str>, ca: Option<&str>| {
            Entity::Revocation(Revocation {
                name: "r1".into(),
                serial,
                key_id: key_id.map(Into::into),
                ca: ca.map(Into::into),
            })
        };
        let e = check_add(&p, revocation(None, None, None)).unwrap_err();
        assert!(e.to_string().contains("names no certificate"), "{e}");
        let e = check_add(&p, revocation(Some(1), None, Some("not a key"))).unwrap_err();
        assert!(e.to_string().contains("revocation r1 CA"), "{e}");
        assert!(check_add(&p, revocation(None, Some("laptop"), Some(KEY))).is_ok());
    }
}
