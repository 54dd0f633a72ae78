//! Command rules on grants (pure): shell-style patterns matched against the exact command of an
//! exec request before it reaches the target, and against each line entered at an interactive
//! shell before its Enter does (`proxy::shell`). The first rule that matches decides.
//!
//! Exec-level control is exact: bastiond sees the whole command the client sends. Inside an
//! interactive PTY, filtering can only be best effort (what is typed is not what runs).

use serde::{Deserialize, Serialize};

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// The command is not sent; the user is told why.
    Deny,
    /// The command runs; an audit event is raised.
    Alert,
    /// The command is not sent and the session ends with a message.
    Terminate,
    /// The command waits until an approver approves it (a ticket); refused when it is denied
    /// or not approved within `policy.review_timeout_secs`.
    Review,
}

impl RuleAction {
    pub fn as_str(self) -> &'static str {
        match self {
            RuleAction::Deny => "deny",
            RuleAction::Alert => "alert",
            RuleAction::Terminate => "terminate",
            RuleAction::Review => "review",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandRule {
    /// `*` matches any run of characters, `?` one; everything else itself. The whole command
    /// must match (`rm *` matches `rm -rf /`, not `echo rm x`).
    pub pattern: String,
    pub action: RuleAction,
}

/// The first rule matching `command`, if any.
pub fn first_match<'a>(rules: &'a [CommandRule], command: &str) -> Option<&'a CommandRule> {
    rules.iter().find(|r| glob(&r.pattern, command))
}

/// Shell-style matching of the whole `text` (iterative, linear backtracking on the last `*`).
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        for (pattern, text, want) in [
            ("rm *", "rm -rf /", true),
            ("rm *", "echo rm x", false),
            ("rm *", "rm", false),
            ("*shadow*", "cat /etc/shadow", true),
            ("systemctl ??op *", "systemctl stop nginx", true),
            ("systemctl ??op *", "systemctl start nginx", false),
            ("*", "", true),
            ("", "", true),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("ls", "ls -l", false),
        ] {
            assert_eq!(glob(pattern, text), want, "{pattern:?} vs {text:?}");
        }
    }

    #[test]
    fn first_matching_rule_decides() {
        let rule = |pattern: &str, action| CommandRule {
            pattern: pattern.into(),
            action,
        };
        let rules = [
            rule("rm *", RuleAction::Deny),
            rule("shutdown*", RuleAction::Terminate),
            rule("*", RuleAction::Alert),
        ];
        assert_eq!(
            first_match(&rules, "rm -rf /").map(|r| r.action),
            Some(RuleAction::Deny)
        );
        assert_eq!(
            first_match(&rules, "shutdown -h now").map(|r| r.action),
            Some(RuleAction::Terminate)
        );
        assert_eq!(
            first_match(&rules, "uptime").map(|r| r.action),
            Some(RuleAction::Alert)
        );
        assert_eq!(first_match(&rules[..2], "uptime"), None);
    }
}
