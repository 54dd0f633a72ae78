//! The session actor: one per client connection, the only place its state lives. It decides
//! sign-in, resolves `login@target`, applies policy, dials the target once, opens a channel pump
//! per client channel, and writes the session's audit events and record.

mod held;
mod self_service;
mod sign_in;
mod standing;

use held::Released;
use self_service::MenuRoute;
use standing::access_due;

use std::{
    collections::HashMap,
    net::SocketAddr,
    ops::ControlFlow,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bastion_core::{
    audit::{Actor, AuditKind},
    clock::now_secs,
    policy::{self, ResolvedTarget, Right},
    record::Kind,
    session::SessionMeta,
};
use bastion_record::Recorder;
use russh::{ChannelId, ChannelOpenFailure, keys::HashAlg};
use tokio::{io::AsyncWriteExt, sync::mpsc};

use super::{
    ProxyContext, access, channel,
    events::{Challenge, Event, OpenKind, Request, SignIn},
    forward::{self, Destination},
    identity, live, menu, review,
    rights::{first_grant, open_label, request_name, right_for},
    second_factor,
    shell::{self, RuleHit},
    upstream::{self, AgentChannel, Upstream},
    username,
};

/// The signed-in identity of the connection.
struct Identity {
    user: String,
    username: String,
    /// What the certificate it signed in with allows (everything, for a plain key).
    restrictions: identity::Restrictions,
    /// Whether it gave the second factor: grants that require one are refused otherwise,
    /// whenever they are asked (a window opening or a policy change after sign-in included).
    second_factor: bool,
}

/// A key or certificate accepted as the first factor, waiting for its code.
struct Pending {
    user: String,
    username: String,
    key: russh::keys::PublicKey,
    restrictions: identity::Restrictions,
}

/// What the first channel established: where the session goes and under which grant, and the
/// mailboxes that exist only for a routed session.
struct Route {
    session: u64,
    login: String,
    target: ResolvedTarget,
    upstream: Upstream,
    recorder: Recorder,
    writer: tokio::task::JoinHandle<SessionMeta>,
    /// Agent channels the target opens; only accepted after an allowed agent request.
    agent_rx: mpsc::Receiver<AgentChannel>,
    agent_allowed: bool,
    /// Administrator controls (kill), registered live under the session id.
    control_rx: mpsc::Receiver<live::Control>,
    /// The access the session uses, judged again on policy changes and at known ends.
    access: access::Watch,
    /// The rights its channels use (each entry: any one of them suffices).
    needs: Vec<&'static [Right]>,
    /// Files its channels captured (numbering and contents by hash).
    files: Arc<crate::capture::SessionFiles>,
}

/// What a routed session needs before any channel asks for more: something a session channel
/// can use (as routing checked).
const SESSION_RIGHTS: &[Right] = &[Right::Shell, Right::Exec, Right::Sftp];

/// How long a client whose session bastion ended has to leave by itself (its channels closed,
/// so an OpenSSH client does at once) before it is disconnected.
const DISCONNECT_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

impl Route {
    /// Notes that a channel of the session uses one of `rights`.
    fn uses(&mut self, rights: &'static [Right]) {
        if !self.needs.contains(&rights) {
            self.needs.push(rights);
        }
    }
}

/// Where the connection is in its life. Each phase holds exactly what it has established, so a
/// route without a signed-in user, or a recording without a route, cannot be written. Ending is
/// not a phase: the event loop stops and [`SessionActor::finish`] consumes the last phase.
enum Phase {
    /// Connected; keys and certificates are being tried.
    Connecting,
    /// Signed in as a bastion user; no channel has asked for the target yet.
    SignedIn(Identity),
    /// The first channel routed the session: the target is dialled and recorded.
    Routed {
        identity: Identity,
        // Boxed: by far the largest phase, and the phase moves at every transition.
        route: Box<Route>,
    },
    /// Routing was refused; every later channel is refused with the same reason.
    Refused { reason: String },
    /// Signed in without naming a target: the self-service menu runs on the first session
    /// channel, recorded as a session of its own.
    Menu {
        identity: Identity,
        menu: Box<MenuRoute>,
    },
}

struct ChannelEntry {
    ctl: mpsc::Sender<channel::Ctl>,
    /// Writes to the client's stderr on this channel (refusal reasons).
    stderr: Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>,
}

pub struct SessionActor {
    ctx: Arc<ProxyContext>,
    client: SocketAddr,
    arrival: username::Arrival,
    events: mpsc::Receiver<Event>,
    phase: Phase,
    channels: HashMap<ChannelId, ChannelEntry>,
    /// Set once signed in (the listener's login-grace watchdog reads it).
    signed_in: Arc<AtomicBool>,
    /// Whether this connection already logged that its source is rate limited.
    limited_logged: bool,
    /// Opens channels toward the client (agent forwarding).
    client_handle: Option<russh::server::Handle>,
    /// Shell lines that matched a command rule, from the channel pumps.
    to_actor: shell::ToActor,
    hits_rx: mpsc::Receiver<RuleHit>,
    /// Shell lines a review rule holds, waiting for their decision.
    holds_rx: mpsc::Receiver<shell::Hold>,
    /// Exec requests held for review, back once decided.
    released_tx: mpsc::Sender<Released>,
    released_rx: mpsc::Receiver<Released>,
    /// Tickets this connection's held commands filed (withdrawn when it ends undecided).
    held_tickets: Vec<u64>,
    /// Keys or certificates refused on this connection so far.
    refused_attempts: u32,
    /// The SSH user name last tried (charged with the source when the connection fails).
    last_username: String,
    /// A first factor accepted on this connection, waiting for the second.
    pending: Option<Pending>,
    /// Wrong second-factor codes on this connection.
    wrong_codes: u32,
}

impl SessionActor {
    pub fn new(
        ctx: Arc<ProxyContext>,
        client: SocketAddr,
        arrival: username::Arrival,
        events: mpsc::Receiver<Event>,
        signed_in: Arc<AtomicBool>,
    ) -> Self {
        let (hits_tx, hits_rx) = mpsc::channel(16);
        let (holds_tx, holds_rx) = mpsc::channel(4);
        let (released_tx, released_rx) = mpsc::channel(4);
        SessionActor {
            to_actor: shell::ToActor {
                hits: hits_tx,
                holds: holds_tx,
            },
            hits_rx,
            holds_rx,
            released_tx,
            released_rx,
            held_tickets: Vec::new(),
            ctx,
            client,
            arrival,
            events,
            phase: Phase::Connecting,
            channels: HashMap::new(),
            signed_in,
            limited_logged: false,
            client_handle: None,
            refused_attempts: 0,
            last_username: String::new(),
            pending: None,
            wrong_codes: 0,
        }
    }

    pub async fn run(mut self) {
        loop {
            // A routed session's own mailboxes; before routing these branches never fire.
            // Not a `Recorder` clone: the menu's record must be able to close while this waits.
            let failure = match &self.phase {
                Phase::Routed { route, .. } => Some(route.recorder.failure()),
                Phase::Menu { menu, .. } => Some(menu.recorder.failure()),
                _ => None,
            };

            let (agents, controls, access, picks) = match &mut self.phase {
                Phase::Routed { route, .. } => (
                    Some(&mut route.agent_rx),
                    Some(&mut route.control_rx),
                    Some(&mut route.access),
                    None,
                ),
                Phase::Menu { menu, .. } => (
                    None,
                    Some(&mut menu.control_rx),
                    None,
                    Some(&mut menu.picks),
                ),
                _ => (None, None, None, None),
            };
            let event = tokio::select! {
                e = self.events.recv() => match e {
                    Some(e) => e,
                    None => break,
                },
                Some(pick) = recv_opt(picks) => {
                    self.picked(pick).await;
                    continue;
                }
                Some(agent) = recv_opt(agents) => {
                    self.target_agent(agent).await;
                    continue;
                }
                Some(hold) = self.holds_rx.recv() => {
                    self.hold_line(hold).await;
                    continue;
                }
                Some(released) = self.released_rx.recv() => {
                    self.released(released).await;
                    continue;
                }
                Some(hit) = self.hits_rx.recv() => {
                    match self.rule_hit(hit).await {
                        ControlFlow::Continue(()) => continue,
                        ControlFlow::Break(()) => break,
                    }
                }
                why = recording_failed(failure) => {
                    self.kill(&format!(
                        "recording failed ({why}): the session is ended so nothing is carried off the record"
                    ))
                    .await;
                    break;
                }
                () = access_due(access) => {
                    match self.judge_access().await {
                        ControlFlow::Continue(()) => continue,
                        ControlFlow::Break(()) => break,
                    }
                }
                Some(control) = recv_opt(controls) => {
                    match control {
                        live::Control::Kill { reason } => {
                            self.kill(&format!("session killed by an administrator: {reason}"))
                                .await
                        }
                    }
                    break;
                }
            };
            if self.event(event).await.is_break() {
                break;
            }
        }
        self.finish().await;
    }

    /// Handles one event from the russh handler; `Break` ends the session.
    async fn event(&mut self, event: Event) -> ControlFlow<()> {
        match event {
            Event::ClientHandle(h) => self.client_handle = Some(h),
            Event::KeyOffered { user, key, reply } => {
                if self.rate_limited(&user).await {
                    let _ = reply.send(false);
                    return ControlFlow::Continue(());
                }
                // A certificate is offered by its inner key, which nobody registers: when a
                // user trusts a CA, let the client prove possession and judge the certificate.
                let policy = self.ctx.policy();
                let ok = identity::key_owner(&policy, &key).is_some()
                    || policy.users.values().any(|u| !u.trusted_cas.is_empty());
                if !ok {
                    self.failed(&user, &key, None).await;
                }
                let _ = reply.send(ok);
            }
            Event::KeyVerified { user, key, reply } => {
                if self.rate_limited(&user).await {
                    let _ = reply.send(SignIn::Refused);
                    return ControlFlow::Continue(());
                }
                let owner = identity::key_owner(&self.ctx.policy(), &key);
                let answer = match owner {
                    Some(owner) => {
                        self.accepted(user, key, owner, identity::Restrictions::NONE)
                            .await
                    }
                    None => {
                        self.failed(&user, &key, None).await;
                        SignIn::Refused
                    }
                };
                let _ = reply.send(answer);
            }
            Event::KeyboardInteractive {
                user,
                answers,
                reply,
            } => {
                let answer = self.keyboard_interactive(user, answers).await;
                let _ = reply.send(answer);
            }
            Event::CertVerified { user, cert, reply } => {
                if self.rate_limited(&user).await {
                    let _ = reply.send(SignIn::Refused);
                    return ControlFlow::Continue(());
                }
                let key = russh::keys::PublicKey::from(cert.public_key().clone());
                let owner =
                    identity::cert_owner(&self.ctx.policy(), &cert, self.client.ip(), now_secs());
                let answer = match owner {
                    Ok((owner, restrictions)) => {
                        self.accepted(user, key, owner, restrictions).await
                    }
                    Err(why) => {
                        tracing::info!(client = %self.client, %why, "certificate refused");
                        self.failed(&user, &key, Some(why)).await;
                        SignIn::Refused
                    }
                };
                let _ = reply.send(answer);
            }
            Event::Open {
                kind,
                channel,
                reply,
            } => {
                if let Err((reason, reply)) = self.open(kind, channel, reply).await {
                    reply
                        .reject(ChannelOpenFailure::Other {
                            code: 1, // SSH_OPEN_ADMINISTRATIVELY_PROHIBITED
                            reason: format!("bastion: {reason}"),
                        })
                        .await
                }
            }
            Event::Request {
                channel,
                request,
                reply,
            } => return self.request(channel, request, reply).await,
        }
        ControlFlow::Continue(())
    }

    /// Opens the target side of a client channel, accepts the client's channel, and only then
    /// starts pumping (a target may talk first, e.g. a forwarded service's banner).
    async fn open(
        &mut self,
        mut kind: OpenKind,
        down: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
    ) -> Result<(), (String, russh::server::ChannelOpenHandle)> {
        if let OpenKind::DirectTcpip { host, port, .. } = &mut kind {
            let permitted = self.restrictions().forward();
            let judged = match permitted {
                Ok(()) => {
                    forward::destination(&self.ctx.policy(), &self.ctx.config_subnets, host).await
                }
                Err(e) => Err(e),
            }
            .and_then(|dest| match dest {
                // The target dials the address that was judged, not the name.
                Destination::Outside(addr) => {
                    *host = addr.to_string();
                    Ok(None)
                }
                Destination::Protected(as_host) => self
                    .jump_target(&as_host, *port)
                    .map(|config| Some((as_host, config))),
            });
            match judged {
                Ok(None) => {}
                Ok(Some((as_host, (port, config)))) => {
                    reply.accept().await;
                    self.jump(down, as_host, port, config);
                    return Ok(());
                }
                Err(reason) => {
                    self.refuse(
                        u32::from(down.id()),
                        format!("forward to {host}:{port}"),
                        reason.clone(),
                    )
                    .await;
                    return Err((reason, reply));
                }
            }
        }
        if matches!(kind, OpenKind::Session) && self.menu_sign_in() {
            return self.open_menu(down, reply).await;
        }
        match self.open_target(&kind, u32::from(down.id())).await {
            Err(reason) => Err((reason, reply)),
            Ok((up, recorder)) => {
                reply.accept().await;
                let channel_id = down.id();
                if recorder
                    .record(Kind::Open, u32::from(channel_id), open_label(&kind).into())
                    .await
                    .is_err()
                {
                    // Recording has failed and the session is ending: nothing is carried.
                    return Ok(());
                }
                let stderr = Box::new(down.make_writer_ext(Some(1)));
                let ctl = channel::spawn(down, up, recorder, self.to_actor.clone());
                self.channels
                    .insert(channel_id, ChannelEntry { ctl, stderr });
                Ok(())
            }
        }
    }

    /// `(port, server config)` for a `direct-tcpip` to protected `host` (as
    /// [`forward::destination`] names it) when it is SSH, which bastiond answers itself
    /// (ProxyJump). Other ports of protected addresses are refused: a forward must never become
    /// a way around the audited path.
    fn jump_target(
        &self,
        host: &str,
        port: u32,
    ) -> Result<(u16, Arc<russh::server::Config>), String> {
        let target = policy::resolve_target(&self.ctx.policy(), host, &self.ctx.config_subnets)
            .map_err(|e| e.to_string())?;
        match u16::try_from(port) {
            Ok(p) if p == target.port || p == 22 => Ok((p, self.ctx.answer_as(host)?)),
            _ => Err(format!(
                "{host} is protected: only SSH to it is carried (as an audited session), not port {port}"
            )),
        }
    }

    /// Serves an SSH session inside the accepted `direct-tcpip` channel, as `host`: the inner
    /// session signs in, is authorized and recorded like any other.
    fn jump(
        &self,
        down: russh::Channel<russh::server::Msg>,
        host: String,
        port: u16,
        config: Arc<russh::server::Config>,
    ) {
        let (ctx, peer) = (self.ctx.clone(), self.client);
        tracing::info!(client = %peer, %host, port, "ProxyJump: serving the inner SSH session");
        let arrival = username::Arrival::Jump { host, port };
        tokio::spawn(super::listener::serve(
            ctx,
            down.into_stream(),
            peer,
            arrival,
            config,
        ));
    }

    /// Routes the connection if needed, checks policy for `kind`, and opens the target side;
    /// returns it with the session's recorder.
    async fn open_target(
        &mut self,
        kind: &OpenKind,
        id: u32,
    ) -> Result<(russh::Channel<russh::client::Msg>, Recorder), String> {
        self.ensure_routed().await?;
        if let OpenKind::DirectTcpip { host, port, .. } = kind
            && let Err(reason) = self.allowed(&[Right::Forward])
        {
            self.refuse(id, format!("forward to {host}:{port}"), reason.clone())
                .await;
            return Err(reason);
        }
        let Phase::Routed { route, .. } = &mut self.phase else {
            return Err("not routed".into());
        };
        if let OpenKind::DirectTcpip { .. } = kind {
            route.uses(&[Right::Forward]);
        }
        let handle = &route.upstream.handle;
        let channel = match kind {
            OpenKind::Session => handle.channel_open_session().await,
            OpenKind::DirectTcpip {
                host,
                port,
                originator,
                originator_port,
            } => {
                handle
                    .channel_open_direct_tcpip(
                        host.clone(),
                        *port,
                        originator.clone(),
                        *originator_port,
                    )
                    .await
            }
        }
        .map_err(|e| format!("target {}: cannot open the channel: {e}", route.target))?;
        Ok((channel, route.recorder.clone()))
    }

    /// Signed in → routed (or refused, for good) at the first channel; routed stays routed.
    async fn ensure_routed(&mut self) -> Result<(), String> {
        match std::mem::replace(&mut self.phase, Phase::Connecting) {
            Phase::SignedIn(identity) => match self.route(&identity).await {
                Ok(route) => {
                    self.phase = Phase::Routed {
                        identity,
                        route: Box::new(route),
                    };
                    Ok(())
                }
                Err(reason) => {
                    self.audit(AuditKind::SessionRefused {
                        client: self.client.to_string(),
                        user: identity.user,
                        username: identity.username,
                        reason: reason.clone(),
                    })
                    .await;
                    self.phase = Phase::Refused {
                        reason: reason.clone(),
                    };
                    Err(reason)
                }
            },
            phase => {
                let result = match &phase {
                    Phase::Routed { .. } => Ok(()),
                    Phase::Refused { reason } => Err(reason.clone()),
                    Phase::Connecting | Phase::SignedIn(_) => Err("not signed in".into()),
                    Phase::Menu { .. } => Err("this connection runs the menu".into()),
                };
                self.phase = phase;
                result
            }
        }
    }

    /// What the signed-in identity's certificate allows (nothing before sign-in).
    fn restrictions(&self) -> &identity::Restrictions {
        match &self.phase {
            Phase::SignedIn(identity)
            | Phase::Routed { identity, .. }
            | Phase::Menu { identity, .. } => &identity.restrictions,
            Phase::Connecting | Phase::Refused { .. } => &identity::Restrictions::DENY_ALL,
        }
    }

    /// Ok if any of `rights` is granted to the signed-in user on the routed target, else the
    /// reason (of the first right) it is not.
    fn allowed(&self, rights: &[Right]) -> Result<String, String> {
        let Phase::Routed { identity, route } = &self.phase else {
            return Err("not signed in".into());
        };
        let policy = self.ctx.policy();
        let grant = first_grant(
            &policy,
            &identity.user,
            &route.target,
            &route.login,
            rights,
            now_secs(),
        )?;
        second_factor::given_for(&self.ctx, &policy, &grant, identity.second_factor)?;
        Ok(grant)
    }

    /// The stored account key for `login` on the named target, unsealed, if there is one.
    async fn stored_key(
        &self,
        target: Option<&str>,
        login: &str,
    ) -> Result<Option<russh::keys::PrivateKey>, String> {
        let Some(target) = target else {
            return Ok(None);
        };
        let store = self.ctx.store.clone();
        let (t, l) = (target.to_owned(), login.to_owned());
        let stored = tokio::task::spawn_blocking(move || store.account(&t, &l))
            .await
            .map_err(|e| format!("internal: {e}"))?
            .map_err(|e| format!("internal: {e}"))?;
        let Some(account) = stored else {
            return Ok(None);
        };
        let secret = self
            .ctx
            .keys
            .open(
                &bastion_core::keys::account_context(target, login),
                &account.sealed,
            )
            .map_err(|e| format!("internal: {e}"))?;
        russh::keys::PrivateKey::from_openssh(secret.expose())
            .map(Some)
            .map_err(|e| format!("internal: stored key for {login}@{target}: {e}"))
    }

    /// Records and audits a refused request or channel (the caller tells the client). Before
    /// the session is routed (a forward is judged first) there is no record yet: the refusal is
    /// audited against the signed-in user.
    async fn refuse(&self, channel: u32, what: String, reason: String) {
        let route = match &self.phase {
            Phase::Routed { route, .. } => route,
            Phase::SignedIn(identity) => {
                self.audit(AuditKind::SessionRefused {
                    client: self.client.to_string(),
                    user: identity.user.clone(),
                    username: identity.username.clone(),
                    reason: format!("{what}: {reason}"),
                })
                .await;
                return;
            }
            Phase::Connecting | Phase::Refused { .. } | Phase::Menu { .. } => return,
        };
        // A refusal stands whether or not it could still be recorded (it is audited below).
        let _ = route
            .recorder
            .record(Kind::Refused, channel, format!("{what}: {reason}").into())
            .await;
        self.audit(AuditKind::RequestRefused {
            session: route.session,
            channel,
            request: what,
            reason,
        })
        .await;
    }

    /// Resolves, authorizes and dials the destination of this connection.
    async fn route(&self, identity: &Identity) -> Result<Route, String> {
        let (dest, port) = self
            .arrival
            .destination(&identity.username)
            .map_err(|e| e.to_string())?;
        let policy = self.ctx.policy();
        let mut target = policy::resolve_target(&policy, &dest.target, &self.ctx.config_subnets)
            .map_err(|e| e.to_string())?;
        // An intercepted or jumped connection goes where the client sent it.
        if let Some(port) = port {
            target.port = port;
        }
        // Opening a session needs some right that a session channel can use.
        let grant = first_grant(
            &policy,
            &identity.user,
            &target,
            &dest.login,
            &[Right::Shell, Right::Exec, Right::Sftp],
            now_secs(),
        )?;
        second_factor::given_for(&self.ctx, &policy, &grant, identity.second_factor)?;
        let pinned = target
            .name
            .as_ref()
            .and_then(|n| policy.targets.get(n))
            .map(|t| t.host_keys.clone())
            .unwrap_or_default();
        let session = self
            .ctx
            .store
            .new_session_id()
            .map_err(|e| format!("internal: {e}"))?;
        let key_id = format!("bastion:{}:session-{session}", identity.user);
        let (agent_tx, agent_rx) = mpsc::channel(4);
        let fallback = self.stored_key(target.name.as_deref(), &dest.login).await?;
        let upstream = upstream::connect(
            self.ctx.client_config.clone(),
            &self.ctx.keys,
            upstream::Dial {
                target: &target.to_string(),
                addr: SocketAddr::new(target.addr, target.port),
                pinned: &pinned,
                login: &dest.login,
                key_id: &key_id,
                mark: self.ctx.upstream_mark,
                timeout: self.ctx.connect_timeout,
                agent: agent_tx,
                fallback,
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let meta = SessionMeta {
            user: identity.user.clone(),
            login: dest.login.clone(),
            target: target.to_string(),
            client_addr: Some(self.client),
            grant: grant.clone(),
            arrival: self.arrival.label().into(),
            ..SessionMeta::starting(session, SocketAddr::new(target.addr, target.port))
        };
        let (recorder, writer) = self.ctx.start_recording(meta).await?;
        // A session whose start is not on the audit stream is not carried: while the stream
        // cannot be written, every new session is refused.
        self.audit_checked(AuditKind::SessionStarted {
            session,
            client: self.client.to_string(),
            user: identity.user.clone(),
            login: dest.login.clone(),
            target: target.to_string(),
            grant,
            arrival: self.arrival.label().into(),
        })
        .await
        .map_err(|e| {
            format!("internal: the audit stream cannot be written ({e}): new sessions are refused until it can")
        })?;
        tracing::info!(session, user = %identity.user, login = %dest.login, target = %target, client = %self.client, "session started");
        Ok(Route {
            session,
            login: dest.login,
            target,
            upstream,
            recorder,
            writer,
            agent_rx,
            agent_allowed: false,
            control_rx: self.ctx.live.register(session),
            access: self.ctx.access_watch(),
            needs: vec![SESSION_RIGHTS],
            files: Arc::default(),
        })
    }

    /// Checks a channel request against the grant and forwards it; `Break` when a terminate
    /// rule ends the session.
    async fn request(
        &mut self,
        channel: ChannelId,
        request: Request,
        reply: tokio::sync::oneshot::Sender<bool>,
    ) -> ControlFlow<()> {
        // The menu answers its channel's requests itself: nothing reaches a target. What the
        // certificate does not permit (a PTY, anything but its forced command) it never gets.
        if let Phase::Menu { .. } = self.phase {
            if let Err(reason) = self.restrictions().request(&request) {
                let _ = reply.send(false);
                self.tell_channel(channel, &format!("bastion: {reason}"))
                    .await;
                return ControlFlow::Continue(());
            }
            match self.channels.get(&channel) {
                Some(entry) => {
                    let _ = entry
                        .ctl
                        .send(channel::Ctl::Request { request, reply })
                        .await;
                }
                None => drop(reply.send(false)),
            }
            return ControlFlow::Continue(());
        }
        let verdict = match right_for(&request) {
            Err(reason) => Err(reason),
            Ok(None) => Ok(None),
            Ok(Some(rights)) => self.allowed(rights).map(Some),
        }
        .and_then(|grant| {
            self.restrictions().request(&request)?;
            match &request {
                Request::Env { name, value } => self.ctx.env.judge(name, value).map(|()| grant),
                _ => Ok(grant),
            }
        });
        let mut review = None;
        if let Ok(Some(grant)) = &verdict {
            match self.command_rules(grant, channel, &request).await {
                Ok(rule) => review = rule,
                Err((reason, terminate)) => {
                    let _ = reply.send(true);
                    self.end_exec(channel, &reason).await;
                    self.refuse(u32::from(channel), request_name(&request), reason.clone())
                        .await;
                    if terminate {
                        self.kill(&format!("session ended: {reason}")).await;
                        return ControlFlow::Break(());
                    }
                    return ControlFlow::Continue(());
                }
            }
        }
        if let Err(reason) = verdict {
            self.tell_channel(channel, &format!("bastion: {reason}"))
                .await;
            let _ = reply.send(false);
            self.refuse(u32::from(channel), request_name(&request), reason)
                .await;
            return ControlFlow::Continue(());
        }
        if let Phase::Routed { route, .. } = &mut self.phase {
            if let Ok(Some(rights)) = right_for(&request) {
                route.uses(rights);
            }
            if matches!(request, Request::Agent) {
                route.agent_allowed = true;
            }
        }
        if let Some(rule) = review {
            // The pump reads nothing more from the client until the command is decided; told
            // before the client's next message is read (that waits for this reply). A held
            // scp, once approved, has its files followed like any other.
            if let Some(entry) = self.channels.get(&channel) {
                if let Some(files) = self.files_for(&request, &verdict) {
                    let _ = entry.ctl.send(channel::Ctl::CaptureFiles(files)).await;
                }
                let _ = entry.ctl.send(channel::Ctl::HoldInput).await;
            }
            // Accepted toward the client, so it reads why it waits; the target sees nothing
            // until the command is approved.
            let _ = reply.send(true);
            self.hold_exec(channel, request, rule).await;
            return ControlFlow::Continue(());
        }
        match self.channels.get(&channel) {
            Some(entry) => {
                // A shell's lines are checked in the pump (best effort), under the same grant.
                if let (Request::Shell, Ok(Some(grant))) = (&request, &verdict) {
                    let rules = self
                        .ctx
                        .policy()
                        .grants
                        .get(grant)
                        .map(|g| g.command_rules.clone())
                        .unwrap_or_default();
                    let _ = entry
                        .ctl
                        .send(channel::Ctl::CommandRules {
                            grant: grant.clone(),
                            rules,
                        })
                        .await;
                }
                if let Some(capture) = self.files_for(&request, &verdict) {
                    let _ = entry.ctl.send(channel::Ctl::CaptureFiles(capture)).await;
                }
                let shell = matches!(request, Request::Shell);
                if entry
                    .ctl
                    .send(channel::Ctl::Request { request, reply })
                    .await
                    .is_err()
                {
                    tracing::debug!(
                        channel = u32::from(channel),
                        "channel pump gone before the request"
                    );
                }
                if shell {
                    self.tell_news(channel).await;
                }
            }
            None => {
                let _ = reply.send(false);
            }
        }
        ControlFlow::Continue(())
    }

    /// Following the files of a request that may move some (an exec, which may be scp; the
    /// sftp subsystem): always listed and hashed, their contents staged when the config or the
    /// request's grant captures files.
    fn files_for(
        &self,
        request: &Request,
        verdict: &Result<Option<String>, String>,
    ) -> Option<channel::CaptureFiles> {
        let (Phase::Routed { route, .. }, Ok(Some(grant))) = (&self.phase, verdict) else {
            return None;
        };
        if !matches!(request, Request::Exec { .. } | Request::Subsystem { .. }) {
            return None;
        }
        let capture = self.ctx.capture_files
            || self
                .ctx
                .policy()
                .grants
                .get(grant)
                .is_some_and(|g| g.capture_files);
        Some(channel::CaptureFiles {
            settings: capture.then(|| self.ctx.capture.clone()),
            session: route.files.clone(),
        })
    }

    /// Applies `grant`'s command rules to an exec request (exactly as the client sent it):
    /// `Err((why, terminate))` stops it, and a terminate rule ends the session; an alert is
    /// audited and lets it run; `Ok(Some(rule))`: a review rule holds it.
    async fn command_rules(
        &mut self,
        grant: &str,
        channel: ChannelId,
        request: &Request,
    ) -> Result<Option<policy::commands::CommandRule>, (String, bool)> {
        let Request::Exec { command } = request else {
            return Ok(None);
        };
        let command = String::from_utf8_lossy(command).into_owned();
        let policy = self.ctx.policy();
        let Some(rule) = policy
            .grants
            .get(grant)
            .and_then(|g| policy::commands::first_match(&g.command_rules, &command))
        else {
            return Ok(None);
        };
        let Phase::Routed { route, .. } = &self.phase else {
            return Ok(None);
        };
        let session = route.session;
        self.audit(AuditKind::CommandRule {
            session,
            channel: u32::from(channel),
            command: command.chars().take(1024).collect(),
            rule: rule.pattern.clone(),
            action: rule.action.as_str().into(),
            grant: grant.to_owned(),
        })
        .await;
        match rule.action {
            policy::commands::RuleAction::Alert => Ok(None),
            policy::commands::RuleAction::Review => Ok(Some(rule.clone())),
            policy::commands::RuleAction::Deny => Err((
                format!("command denied by rule `{}` of grant {grant}", rule.pattern),
                false,
            )),
            policy::commands::RuleAction::Terminate => Err((
                format!(
                    "command `{command}` matches rule `{}` of grant {grant}",
                    rule.pattern
                ),
                true,
            )),
        }
    }

    /// A shell line matched a command rule in a channel pump (which already withheld a denied
    /// line): audit it, and end the session for a terminate rule.
    async fn rule_hit(&mut self, hit: RuleHit) -> ControlFlow<()> {
        let Phase::Routed { route, .. } = &self.phase else {
            return ControlFlow::Continue(());
        };
        let session = route.session;
        self.audit(AuditKind::CommandRule {
            session,
            channel: hit.channel,
            command: hit.line.chars().take(1024).collect(),
            rule: hit.rule.pattern.clone(),
            action: hit.rule.action.as_str().into(),
            grant: hit.grant.clone(),
        })
        .await;
        if hit.rule.action == policy::commands::RuleAction::Terminate {
            self.kill(&format!(
                "session ended: command `{}` matches rule `{}` of grant {}",
                hit.line, hit.rule.pattern, hit.grant
            ))
            .await;
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }

    /// Answers an exec request the target never sees: accepted toward the client so it reads
    /// the reason (a refused request can overtake it), then exit status 126 and close.
    async fn end_exec(&mut self, channel: ChannelId, reason: &str) {
        let Some(h) = &self.client_handle else { return };
        let _ = h
            .extended_data(channel, 1, format!("bastion: {reason}\r\n").into_bytes())
            .await;
        let _ = h.exit_status_request(channel, 126).await;
        let _ = h.eof(channel).await;
        let _ = h.close(channel).await;
    }

    /// The target opened an agent channel: carry it to the client's agent if forwarding was
    /// requested and allowed, else refuse it.
    async fn target_agent(&mut self, agent: AgentChannel) {
        let carried = match (&self.phase, &self.client_handle) {
            (Phase::Routed { route, .. }, Some(handle)) if route.agent_allowed => {
                Some((route, handle))
            }
            _ => None,
        };
        let Some((route, handle)) = carried else {
            tracing::warn!(client = %self.client, "target opened an agent channel that was not allowed");
            agent
                .reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return;
        };
        match handle.channel_open_agent().await {
            Ok(down) => {
                agent.reply.accept().await;
                let id = u32::from(down.id());
                if route
                    .recorder
                    .record(Kind::Open, id, "auth-agent".into())
                    .await
                    .is_err()
                {
                    // Recording has failed and the session is ending: nothing is carried.
                    return;
                }
                let _ctl = channel::spawn(
                    down,
                    agent.channel,
                    route.recorder.clone(),
                    self.to_actor.clone(),
                );
            }
            Err(e) => {
                tracing::info!(client = %self.client, error = %e, "client refused the agent channel");
                agent.reply.reject(ChannelOpenFailure::ConnectFailed).await;
            }
        }
    }

    /// Writes `message` as a line to the client's stderr on `channel`.
    async fn tell_channel(&mut self, channel: ChannelId, message: &str) {
        if let Some(entry) = self.channels.get_mut(&channel) {
            let _ = entry
                .stderr
                .write_all(format!("{message}\r\n").as_bytes())
                .await;
            let _ = entry.stderr.flush().await;
        }
    }

    /// Writes `message` on its own line to the client's stderr on every open channel.
    async fn tell_every_channel(&mut self, message: &str) {
        for entry in self.channels.values_mut() {
            let _ = entry
                .stderr
                .write_all(format!("\r\n{message}\r\n").as_bytes())
                .await;
            let _ = entry.stderr.flush().await;
        }
    }

    /// Ends the session (an administrator's kill, a terminate rule): the client is told `why` on
    /// every channel, whose close follows, and in the disconnect message if it has not left by
    /// then; the record shows it before it closes.
    async fn kill(&mut self, why: &str) {
        let message = format!("bastion: {why}");
        let recorder = match &self.phase {
            Phase::Routed { route, .. } => Some(&route.recorder),
            Phase::Menu { menu, .. } => Some(&menu.recorder),
            _ => None,
        };
        if let Some(recorder) = recorder {
            // Not recordable when recording is what failed; the client is told all the same.
            let _ = recorder
                .record(Kind::Refused, 0, message.clone().into())
                .await;
        }
        self.tell_every_channel(&message).await;
        if let Some(h) = self.client_handle.clone() {
            // The channels close now and the connection a moment later. OpenSSH's client exits
            // on a disconnect without writing what it has read but not yet shown, and a
            // disconnect that arrived with the reason just told lost the reason (seen under
            // load). With its channels closed the client shows everything and leaves by itself;
            // the disconnect is for one that does not. The target side ends with this session.
            for id in self.channels.keys() {
                let _ = h.eof(*id).await;
                let _ = h.close(*id).await;
            }
            tokio::spawn(async move {
                tokio::time::sleep(DISCONNECT_GRACE).await;
                let _ = h
                    .disconnect(russh::Disconnect::ByApplication, message, String::new())
                    .await;
            });
        }
        tracing::info!(client = %self.client, %why, "session ended by bastion");
    }

    /// Consumes the last phase: a connection that never signed in is charged against its
    /// source; a routed session's recording is closed (sealed) and its end audited.
    async fn finish(mut self) {
        if matches!(self.phase, Phase::Connecting)
            && self.refused_attempts > 0
            && self.ctx.failed_login(self.client.ip(), &self.last_username)
        {
            tracing::warn!(client = %self.client.ip(), username = %self.last_username, "too many failed sign-ins: source or user name refused for a while");
        }
        self.channels.clear();
        // A held command cannot run any more: its request is not left to be approved.
        let held = std::mem::take(&mut self.held_tickets);
        if !held.is_empty() {
            let (ctx, now) = (self.ctx.clone(), now_secs());
            let _ = tokio::task::spawn_blocking(move || {
                for id in held {
                    if let Err(e) = super::tickets::withdraw(&ctx, id, now) {
                        tracing::warn!(request = id, error = %e, "cannot withdraw a held command's request");
                    }
                }
            })
            .await;
        }
        match std::mem::replace(&mut self.phase, Phase::Connecting) {
            Phase::Routed { route, .. } => {
                self.ctx.live.remove(route.session);
                drop(route.upstream);
                self.close_record(route.session, route.recorder, route.writer)
                    .await;
            }
            Phase::Menu { menu, .. } => {
                self.ctx.live.remove(menu.session);
                self.close_record(menu.session, menu.recorder, menu.writer)
                    .await
            }
            _ => {}
        }
    }

    /// Closes a session's record (the writer seals it) and audits its end.
    async fn close_record(
        &self,
        session: u64,
        recorder: Recorder,
        writer: tokio::task::JoinHandle<SessionMeta>,
    ) {
        drop(recorder);
        match writer.await {
            Ok(meta) => {
                tracing::info!(
                    session = meta.id,
                    bytes_in = meta.bytes_in,
                    bytes_out = meta.bytes_out,
                    "session ended"
                );
                self.audit(AuditKind::SessionEnded {
                    session: meta.id,
                    bytes_in: meta.bytes_in,
                    bytes_out: meta.bytes_out,
                })
                .await;
                // The seal and the end on the stream, then an anchor over both.
                self.ctx.anchor_now.notify_one();
            }
            Err(e) => tracing::error!(session, error = %e, "recorder task failed"),
        }
    }

    async fn audit(&self, kind: AuditKind) {
        // Logged by `audit_checked`; the callers here have nothing left to refuse.
        let _ = self.audit_checked(kind).await;
    }

    /// Stores an audit event (held to the flood budget when an unauthenticated client caused
    /// it); says why when it cannot.
    async fn audit_checked(&self, kind: AuditKind) -> Result<(), String> {
        let store = self.ctx.store.clone();
        let result =
            tokio::task::spawn_blocking(move || store.append_audits(Actor::Daemon, vec![kind]))
                .await;
        let e = match result {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::error!(error = %e, "audit event could not be stored");
        Err(e)
    }
}

/// Resolves with why once the session's recording has failed; never otherwise.
async fn recording_failed(failure: Option<impl std::future::Future<Output = String>>) -> String {
    match failure {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Receives from `rx` if there is one; never resolves otherwise (a disabled `select!` branch).
async fn recv_opt<T>(rx: Option<&mut mpsc::Receiver<T>>) -> Option<T> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
