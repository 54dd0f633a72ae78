//! The second factor at sign-in: whether a key or certificate that was just accepted still
//! needs a TOTP code (`ssh.require_mfa`, or a grant the session could use asking for it), and
//! checking a code once (the store remembers the last step used, so a code is never accepted
//! twice, even by two connections racing with it).

use bastion_core::{
    keys::{Secret, totp_context},
    policy::{self, Right},
    totp,
};

use super::{ProxyContext, rights::first_grant, username::Arrival};

/// Every right a session may exercise: if the grant that would allow any of them asks for the
/// second factor, the sign-in does, so no request slips through under another grant.
const RIGHTS: [Right; 5] = [
    Right::Shell,
    Right::Exec,
    Right::Sftp,
    Right::Forward,
    Right::Agent,
];

/// Whether `user`, arriving as `arrival` with SSH user name `username`, must give a code. A
/// destination that does not resolve needs none here: the session is refused when it routes.
pub fn required(
    ctx: &ProxyContext,
    arrival: &Arrival,
    user: &str,
    username: &str,
    now: u64,
) -> bool {
    if ctx.require_mfa {
        return true;
    }
    let Ok((dest, port)) = arrival.destination(username) else {
        return false;
    };
    let policy = ctx.policy();
    let Ok(mut target) = policy::resolve_target(&policy, &dest.target, &ctx.config_subnets) else {
        return false;
    };
    if let Some(port) = port {
        target.port = port;
    }
    RIGHTS.iter().any(|&right| {
        first_grant(&policy, user, &target, &dest.login, &[right], now)
            .ok()
            .and_then(|grant| policy.grants.get(&grant).map(|g| g.require_mfa))
            .unwrap_or(false)
    })
}

/// Checks `answers` (one code) for `user` at `now`: Ok once per code, else why not.
pub async fn check(
    ctx: &ProxyContext,
    user: &str,
    answers: Vec<Secret>,
    now: u64,
) -> Result<(), String> {
    let [code] = &answers[..] else {
        return Err(format!("{} answers to one prompt", answers.len()));
    };
    let (store, keys, user, code) = (
        ctx.store.clone(),
        ctx.keys.clone(),
        user.to_owned(),
        code.expose().to_owned(),
    );
    let code = zeroize::Zeroizing::new(code);
    tokio::task::spawn_blocking(move || {
        let stored = store
            .totp(&user)
            .map_err(|e| format!("internal: {e}"))?
            .ok_or_else(|| format!("{user} has no second factor enrolled"))?;
        let text = keys
            .open(&totp_context(&user), &stored.sealed)
            .map_err(|e| format!("internal: {e}"))?;
        let secret = totp::unsealed(text.expose())
            .ok_or("internal: the stored TOTP secret is unreadable")?;
        let step = totp::matching_step(&secret, &code, now).ok_or("wrong code")?;
        match store.use_totp_step(&user, step) {
            Ok(true) => Ok(()),
            Ok(false) => Err("code already used".into()),
            Err(e) => Err(format!("internal: {e}")),
        }
    })
    .await
    .map_err(|e| format!("internal: {e}"))?
}
