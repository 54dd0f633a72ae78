//! The actor's side of sign-in: keys and certificates judged ([`crate::identity`]), the
//! second factor asked and checked ([`crate::second_factor`]), failures charged against the
//! source and user name, every step audited.

use super::*;

impl SessionActor {
    /// True (and audited once per connection) while the client's source or user name is refused.
    pub(super) async fn rate_limited(&mut self, username: &str) -> bool {
        self.last_username = username.chars().take(256).collect();
        let Err(remaining) = self.ctx.limited(self.client.ip(), username) else {
            return false;
        };
        // A throttled attempt is still a failed connection (for the user name's count too).
        self.refused_attempts += 1;
        if !self.limited_logged {
            self.limited_logged = true;
            self.audit(AuditKind::SignInThrottled {
                client: self.client.to_string(),
                username: username.chars().take(256).collect(),
                remaining_secs: remaining.as_secs(),
            })
            .await;
        }
        true
    }

    /// A key or certificate proved `owner`: signed in, or (when a grant or the config asks for
    /// it) waiting for the second factor, which the user must have enrolled.
    pub(super) async fn accepted(
        &mut self,
        username: String,
        key: russh::keys::PublicKey,
        owner: String,
        restrictions: identity::Restrictions,
    ) -> SignIn {
        if !second_factor::required(&self.ctx, &self.arrival, &owner, &username, now_secs()) {
            self.audit_login(&username, &key, Some(owner.clone()), true, None)
                .await;
            return match self.sign_in(owner, username, restrictions, false) {
                true => SignIn::Accepted,
                false => SignIn::Refused,
            };
        }
        let store = self.ctx.store.clone();
        let who = owner.clone();
        let enrolled = tokio::task::spawn_blocking(move || store.totp(&who))
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
            .is_some();
        let (outcome, reason, answer) = if enrolled {
            let reason = format!("after key {}", key.fingerprint(HashAlg::Sha256));
            ("asked", reason, SignIn::SecondFactor)
        } else {
            self.refused_attempts += 1;
            (
                "refused",
                format!(
                    "a second factor is required and {owner} has none (bastionctl user mfa enroll {owner})"
                ),
                SignIn::Refused,
            )
        };
        self.audit(AuditKind::SecondFactor {
            client: self.client.to_string(),
            username: username.chars().take(256).collect(),
            user: owner.clone(),
            outcome: outcome.into(),
            reason: Some(reason),
        })
        .await;
        if answer == SignIn::SecondFactor {
            self.pending = Some(Pending {
                user: owner,
                username,
                key,
                restrictions,
            });
        }
        answer
    }

    /// keyboard-interactive: only the second factor of a key accepted on this connection, for
    /// the same user name; on its own it never signs anyone in.
    pub(super) async fn keyboard_interactive(
        &mut self,
        username: String,
        answers: Option<Vec<bastion_core::keys::Secret>>,
    ) -> Challenge {
        let Some(user) = self
            .pending
            .as_ref()
            .filter(|p| p.username == username)
            .map(|p| p.user.clone())
        else {
            return Challenge::Refused { retry: false };
        };
        let Some(answers) = answers else {
            return Challenge::Prompt {
                instructions: format!(
                    "bastion: {user} needs a second factor: the 6-digit code from your authenticator app."
                ),
            };
        };
        if self.rate_limited(&username).await {
            return Challenge::Refused { retry: false };
        }
        let checked = second_factor::check(&self.ctx, &user, answers, now_secs()).await;
        self.audit(AuditKind::SecondFactor {
            client: self.client.to_string(),
            username: username.chars().take(256).collect(),
            user,
            outcome: if checked.is_ok() {
                "accepted"
            } else {
                "refused"
            }
            .into(),
            reason: checked.as_ref().err().cloned(),
        })
        .await;
        if checked.is_err() {
            // Charged at once, like a refused key, whatever the connection does next; and a
            // connection gets MAX_CODES tries.
            self.wrong_codes += 1;
            if self.ctx.failed_login(self.client.ip(), &username) {
                tracing::warn!(client = %self.client.ip(), %username, "too many failed sign-ins: source or user name refused for a while");
            }
            if self.wrong_codes >= second_factor::MAX_CODES {
                self.pending = None;
                return Challenge::Refused { retry: false };
            }
            return Challenge::Refused { retry: true };
        }
        let Some(p) = self.pending.take() else {
            return Challenge::Refused { retry: false };
        };
        self.audit_login(&p.username, &p.key, Some(p.user.clone()), true, None)
            .await;
        match self.sign_in(p.user, p.username, p.restrictions, true) {
            true => Challenge::Accepted,
            false => Challenge::Refused { retry: false },
        }
    }

    /// Connecting → signed in. SSH signs a connection in once; a later success changes nothing.
    pub(super) fn sign_in(
        &mut self,
        user: String,
        username: String,
        restrictions: identity::Restrictions,
        second_factor: bool,
    ) -> bool {
        if matches!(self.phase, Phase::Connecting) {
            self.phase = Phase::SignedIn(Identity {
                user,
                username,
                restrictions,
                second_factor,
            });
            self.signed_in.store(true, Ordering::SeqCst);
        }
        !matches!(self.phase, Phase::Connecting)
    }

    /// Audits a refused key or certificate. The source is charged once, when the connection ends
    /// without signing in: a client offering its plain key before its certificate is not failing.
    pub(super) async fn failed(
        &mut self,
        username: &str,
        key: &russh::keys::PublicKey,
        why: Option<String>,
    ) {
        self.audit_login(username, key, None, false, why).await;
        self.refused_attempts += 1;
    }

    pub(super) async fn audit_login(
        &self,
        username: &str,
        key: &russh::keys::PublicKey,
        user: Option<String>,
        accepted: bool,
        reason: Option<String>,
    ) {
        self.audit(AuditKind::Login {
            client: self.client.to_string(),
            username: username.chars().take(256).collect(),
            fingerprint: key.fingerprint(HashAlg::Sha256).to_string(),
            user,
            accepted,
            reason,
        })
        .await;
    }
}
