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

/// Wrong codes one connection may give before keyboard-interactive is closed to it.
pub const MAX_CODES: u32 = 3;

/// Whether `user`, arriving as `arrival` with SSH user name `username`, must give a code. A user
/// name that names no destination needs none: such a connection ProxyJumps (whose inner session
/// signs in, and gives its code, itself; asking twice would need two codes from one time step)
/// or runs the menu, which `ssh.require_mfa` closes to a connection that gave no code. Every grant is checked again when it is used
/// ([`given_for`]), so a destination that does not resolve here cannot slip through later.
pub fn required(
    ctx: &ProxyContext,
    arrival: &Arrival,
    user: &str,
    username: &str,
    now: u64,
) -> bool {
    let Ok((dest, port)) = arrival.destination(username) else {
        return false;
    };
    if ctx.require_mfa {
        return true;
    }
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

/// Ok if `grant` may be used by an identity that did (`given`) or did not give the second
/// factor at sign-in.
pub fn given_for(
    ctx: &ProxyContext,
    policy: &policy::Policy,
    grant: &str,
    given: bool,
) -> Result<(), String> {
    let needs = ctx.require_mfa || policy.grants.get(grant).is_some_and(|g| g.require_mfa);
    if needs && !given {
        return Err(format!(
            "grant {grant} requires the second factor, which this connection did not give: sign in again"
        ));
    }
    Ok(())
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
