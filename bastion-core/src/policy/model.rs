//! The policy model. Every type is (de)serialised into the store's policy trees; the store's
//! schema version covers their layout.

use std::{collections::BTreeMap, net::IpAddr};

use serde::{Deserialize, Serialize};

use super::window::Window;
use crate::cidr::Cidr;

/// A person (or automation) that signs in to bastion. Identity comes from their key: in
/// transparent mode the SSH user name is the *target login*, not the bastion user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub name: String,
    /// OpenSSH public keys (`ssh-ed25519 AAAA... comment`), validated on the way in.
    pub keys: Vec<String>,
    /// OpenSSH user-CA public keys whose certificates (with this user's name as a principal)
    /// also authenticate the user.
    #[serde(default)]
    pub trusted_cas: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub members: Vec<String>,
}

/// A protected host registered by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    pub addr: IpAddr,
    pub port: u16,
    /// Pinned host keys (OpenSSH public key lines). A session to a target whose key is not
    /// among them is aborted; an empty list means "not enrolled yet", which also refuses.
    #[serde(default)]
    pub host_keys: Vec<String>,
}

/// Something a session may do on a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Right {
    Shell,
    Exec,
    Sftp,
    Forward,
    Agent,
    /// Raw TCP to the grant's `tcp_ports`, through bastiond's relay, from the grant's `sources`.
    Tcp,
}

impl Right {
    pub const ALL: [Right; 6] = [
        Right::Shell,
        Right::Exec,
        Right::Sftp,
        Right::Forward,
        Right::Agent,
        Right::Tcp,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Right::Shell => "shell",
            Right::Exec => "exec",
            Right::Sftp => "sftp",
            Right::Forward => "forward",
            Right::Agent => "agent",
            Right::Tcp => "tcp",
        }
    }

    pub fn parse(s: &str) -> Option<Right> {
        Right::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A set of rights (small and ordered, so it prints and compares stably).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Rights(Vec<Right>);

impl Rights {
    pub fn new(rights: impl IntoIterator<Item = Right>) -> Rights {
        let mut v: Vec<Right> = rights.into_iter().collect();
        v.sort();
        v.dedup();
        Rights(v)
    }

    pub fn contains(&self, r: Right) -> bool {
        self.0.contains(&r)
    }

    pub fn iter(&self) -> impl Iterator<Item = Right> + '_ {
        self.0.iter().copied()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantSubject {
    User(String),
    Group(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantObject {
    Target(String),
    Subnet(Cidr),
}

/// The target's name, or the subnet.
impl std::fmt::Display for GrantObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GrantObject::Target(t) => f.write_str(t),
            GrantObject::Subnet(c) => write!(f, "{c}"),
        }
    }
}

/// Permission for a subject to reach an object as one of `logins` with `rights`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub id: String,
    pub subject: GrantSubject,
    pub object: GrantObject,
    pub logins: Vec<String>,
    pub rights: Rights,
    /// Unix seconds before which the grant does not apply.
    #[serde(default)]
    pub not_before: Option<u64>,
    /// Unix seconds from which the grant no longer applies.
    #[serde(default)]
    pub not_after: Option<u64>,
    /// Recurring window (e.g. weekdays 08:00-18:00 UTC) within which the grant applies.
    #[serde(default)]
    pub window: Option<Window>,
    /// With the `tcp` right: the destination ports relayed. Raw TCP carries no identity, so
    /// the grant names the admin workstations (`sources`) it applies to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_ports: Vec<u16>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<Cidr>,
    /// Record relayed payload (zstd, like sessions), not only the flow.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture: bool,
    /// Capture the contents of files moved over SFTP and scp in sessions under this grant
    /// (up to `record.max_file_capture_mb` each; larger ones: hash and size).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capture_files: bool,
    /// Rules for exec requests under this grant; the first that matches decides.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command_rules: Vec<super::commands::CommandRule>,
    /// Sessions under this grant need the second factor (TOTP) at sign-in.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub require_mfa: bool,
}

/// Revoked user certificates (`bastionctl user ca revoke`): a certificate matching every field
/// that is set (a serial, a key id, or both; from one CA or any) no longer signs anyone in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub name: String,
    /// The CA's OpenSSH public key; any CA when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Who decides access requests for a target or subnet (`bastionctl target set web1
/// --approvers oncall-leads`): `approvals` distinct members of `group` must approve, and a
/// request asks for at most `max_secs` (the config's `policy.max_request_secs` when unset).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approvers {
    pub object: GrantObject,
    pub group: String,
    pub approvals: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_secs: Option<u64>,
}

impl Approvers {
    /// The name it is stored under: the target's name or the subnet.
    pub fn key(&self) -> String {
        self.object.to_string()
    }
}

/// A snapshot of the whole policy, as the evaluator sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub users: BTreeMap<String, User>,
    pub groups: BTreeMap<String, Group>,
    pub targets: BTreeMap<String, Target>,
    pub subnets: Vec<Cidr>,
    pub grants: BTreeMap<String, Grant>,
    pub revocations: BTreeMap<String, Revocation>,
    pub approvers: BTreeMap<String, Approvers>,
}

impl Policy {
    /// Whether `user` is a member of group `group`.
    pub fn is_member(&self, group: &str, user: &str) -> bool {
        self.groups
            .get(group)
            .is_some_and(|g| g.members.iter().any(|m| m == user))
    }

    /// Who decides requests for `object`: its own approvers, else those of the narrowest
    /// subnet holding it (a target by its address).
    pub fn approvers_for(&self, object: &GrantObject) -> Option<&Approvers> {
        if let Some(a) = self.approvers.get(&object.to_string()) {
            return Some(a);
        }
        let within = |a: &Approvers| match (&a.object, object) {
            (GrantObject::Subnet(outer), GrantObject::Target(t)) => {
                self.targets.get(t).is_some_and(|t| outer.contains(t.addr))
            }
            (GrantObject::Subnet(outer), GrantObject::Subnet(inner)) => outer.covers(inner),
            _ => false,
        };
        self.approvers
            .values()
            .filter(|a| within(a))
            .max_by_key(|a| match &a.object {
                GrantObject::Subnet(c) => c.prefix_len(),
                GrantObject::Target(_) => 0,
            })
    }
}

/// A name for a user, group, target or grant: short, printable, and safe to use inside
/// `login@target` user names and file names.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && !s.starts_with(['-', '.'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["alice", "web1", "db-01.prod", "ops_team"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-x", ".x", "a b", "a@b", "a/b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn rights_are_a_sorted_set() {
        let r = Rights::new([Right::Exec, Right::Shell, Right::Exec]);
        assert_eq!(r.iter().collect::<Vec<_>>(), [Right::Shell, Right::Exec]);
        assert_eq!(Right::parse("sftp"), Some(Right::Sftp));
        assert_eq!(Right::parse("root"), None);
    }
}

/// One stored policy object, as the control API carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Entity {
    User(User),
    Group(Group),
    Target(Target),
    Subnet(Cidr),
    Grant(Grant),
    Revocation(Revocation),
    Approvers(Approvers),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    User,
    Group,
    Target,
    Subnet,
    Grant,
    Revocation,
    Approvers,
}

impl EntityKind {
    pub const ALL: [EntityKind; 7] = [
        EntityKind::User,
        EntityKind::Group,
        EntityKind::Target,
        EntityKind::Subnet,
        EntityKind::Grant,
        EntityKind::Revocation,
        EntityKind::Approvers,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EntityKind::User => "user",
            EntityKind::Group => "group",
            EntityKind::Target => "target",
            EntityKind::Subnet => "subnet",
            EntityKind::Grant => "grant",
            EntityKind::Revocation => "revocation",
            EntityKind::Approvers => "approvers",
        }
    }
}

impl Entity {
    pub fn kind(&self) -> EntityKind {
        match self {
            Entity::User(_) => EntityKind::User,
            Entity::Group(_) => EntityKind::Group,
            Entity::Target(_) => EntityKind::Target,
            Entity::Subnet(_) => EntityKind::Subnet,
            Entity::Grant(_) => EntityKind::Grant,
            Entity::Revocation(_) => EntityKind::Revocation,
            Entity::Approvers(_) => EntityKind::Approvers,
        }
    }

    /// The name it is stored and addressed under.
    pub fn key(&self) -> String {
        match self {
            Entity::User(u) => u.name.clone(),
            Entity::Group(g) => g.name.clone(),
            Entity::Target(t) => t.name.clone(),
            Entity::Subnet(c) => c.to_string(),
            Entity::Grant(g) => g.id.clone(),
            Entity::Revocation(r) => r.name.clone(),
            Entity::Approvers(a) => a.key(),
        }
    }
}

impl Policy {
    pub fn insert(&mut self, e: Entity) {
        match e {
            Entity::User(u) => drop(self.users.insert(u.name.clone(), u)),
            Entity::Group(g) => drop(self.groups.insert(g.name.clone(), g)),
            Entity::Target(t) => drop(self.targets.insert(t.name.clone(), t)),
            Entity::Subnet(c) => {
                if !self.subnets.contains(&c) {
                    self.subnets.push(c);
                    self.subnets.sort();
                }
            }
            Entity::Grant(g) => drop(self.grants.insert(g.id.clone(), g)),
            Entity::Revocation(r) => drop(self.revocations.insert(r.name.clone(), r)),
            Entity::Approvers(a) => drop(self.approvers.insert(a.key(), a)),
        }
    }

    pub fn remove(&mut self, kind: EntityKind, key: &str) {
        match kind {
            EntityKind::User => drop(self.users.remove(key)),
            EntityKind::Group => drop(self.groups.remove(key)),
            EntityKind::Target => drop(self.targets.remove(key)),
            EntityKind::Subnet => self.subnets.retain(|c| c.to_string() != key),
            EntityKind::Grant => drop(self.grants.remove(key)),
            EntityKind::Revocation => drop(self.revocations.remove(key)),
            EntityKind::Approvers => drop(self.approvers.remove(key)),
        }
    }

    /// Every entity of `kind`, in name order.
    pub fn entities(&self, kind: EntityKind) -> Vec<Entity> {
        match kind {
            EntityKind::User => self.users.values().cloned().map(Entity::User).collect(),
            EntityKind::Group => self.groups.values().cloned().map(Entity::Group).collect(),
            EntityKind::Target => self.targets.values().cloned().map(Entity::Target).collect(),
            EntityKind::Subnet => self.subnets.iter().copied().map(Entity::Subnet).collect(),
            EntityKind::Grant => self.grants.values().cloned().map(Entity::Grant).collect(),
            EntityKind::Revocation => self
                .revocations
                .values()
                .cloned()
                .map(Entity::Revocation)
                .collect(),
            EntityKind::Approvers => self
                .approvers
                .values()
                .cloned()
                .map(Entity::Approvers)
                .collect(),
        }
    }
}
