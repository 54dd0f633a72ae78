//! The actor's side of the self-service menu: a connection that signed in naming no target runs
//! the menu ([`crate::menu`]) on its first session channel, recorded as a session of its own;
//! a picked target turns that channel into a normal routed session. Also where users hear of
//! decisions on their access requests.

use super::*;

/// The menu's recording, and where its channel comes back when the user picks a target.
pub(super) struct MenuRoute {
    pub(super) session: u64,
    pub(super) recorder: Recorder,
    pub(super) writer: tokio::task::JoinHandle<SessionMeta>,
    pub(super) picks: mpsc::Receiver<menu::Pick>,
    /// Administrator controls (kill), registered live under the menu's session id.
    pub(super) control_rx: mpsc::Receiver<live::Control>,
}

/// The target name the menu's own recording carries.
pub(super) const MENU_TARGET: &str = "bastion-menu";

impl SessionActor {
    /// Signed in on the explicit listener with a user name naming no target: the menu.
    pub(super) fn menu_sign_in(&self) -> bool {
        matches!(&self.phase, Phase::SignedIn(identity)
            if self.arrival == username::Arrival::Explicit && !identity.username.contains('@'))
    }

    /// Starts the menu on the connection's first session channel, recorded as a session.
    pub(super) async fn open_menu(
        &mut self,
        down: russh::Channel<russh::server::Msg>,
        reply: russh::server::ChannelOpenHandle,
    ) -> Result<(), (String, russh::server::ChannelOpenHandle)> {
        let Phase::SignedIn(identity) = std::mem::replace(&mut self.phase, Phase::Connecting)
        else {
            return Err(("not signed in".into(), reply));
        };
        if self.ctx.require_mfa && !identity.second_factor {
            let reason = "the menu is not offered while ssh.require_mfa is set (a connection naming no target gives no code); sign in as LOGIN@TARGET".to_owned();
            self.phase = Phase::SignedIn(identity);
            return Err((reason, reply));
        }
        match self.start_menu(&identity).await {
            Ok((session, recorder, writer)) => {
                reply.accept().await;
                let channel_id = down.id();
                let _ = recorder
                    .record(Kind::Open, u32::from(channel_id), "session".into())
                    .await;
                let (picks_tx, picks) = mpsc::channel(1);
                let stderr = Box::new(down.make_writer_ext(Some(1)));
                let ctl = menu::spawn(
                    self.ctx.clone(),
                    identity.user.clone(),
                    recorder.clone(),
                    down,
                    picks_tx,
                );
                self.channels
                    .insert(channel_id, ChannelEntry { ctl, stderr });
                self.phase = Phase::Menu {
                    identity,
                    menu: Box::new(MenuRoute {
                        session,
                        recorder,
                        writer,
                        picks,
                        control_rx: self.ctx.live.register(session),
                    }),
                };
                Ok(())
            }
            Err(reason) => {
                self.phase = Phase::SignedIn(identity);
                Err((reason, reply))
            }
        }
    }

    pub(super) async fn start_menu(
        &self,
        identity: &Identity,
    ) -> Result<(u64, Recorder, tokio::task::JoinHandle<SessionMeta>), String> {
        let session = self
            .ctx
            .store
            .new_session_id()
            .map_err(|e| format!("internal: {e}"))?;
        let meta = SessionMeta {
            user: identity.user.clone(),
            login: identity.user.clone(),
            target: MENU_TARGET.into(),
            client_addr: Some(self.client),
            grant: MENU_TARGET.into(),
            arrival: self.arrival.label().into(),
            ..SessionMeta::starting(session, SocketAddr::from(([0, 0, 0, 0], 0)))
        };
        let (recorder, writer) = self.ctx.start_recording(meta).await?;
        self.audit_checked(AuditKind::SessionStarted {
            session,
            client: self.client.to_string(),
            user: identity.user.clone(),
            login: identity.user.clone(),
            target: MENU_TARGET.into(),
            grant: MENU_TARGET.into(),
            arrival: self.arrival.label().into(),
        })
        .await
        .map_err(|e| format!("internal: the audit stream cannot be written ({e})"))?;
        Ok((session, recorder, writer))
    }

    /// The user picked a target in the menu: the menu's record is closed, and its channel
    /// becomes a normal session to `login@target` (routed, judged and recorded as any other).
    pub(super) async fn picked(&mut self, pick: menu::Pick) {
        let Phase::Menu { mut identity, menu } =
            std::mem::replace(&mut self.phase, Phase::Connecting)
        else {
            return;
        };
        self.ctx.live.remove(menu.session);
        self.close_record(menu.session, menu.recorder, menu.writer)
            .await;
        identity.username = pick.destination;
        self.phase = Phase::SignedIn(identity);
        let channel = pick.down.id();
        // The menu already accepted a shell: a session that cannot have one is told why and
        // closed rather than left open with nothing behind it.
        let opened = match self
            .open_target(&OpenKind::Session, u32::from(channel))
            .await
        {
            Ok(opened) => self.allowed(&[Right::Shell]).map(|_| opened),
            Err(reason) => Err(reason),
        };
        let (up, recorder) = match opened {
            Ok(o) => o,
            Err(reason) => {
                let text = format!("bastion: {reason}\r\n");
                let _ = pick.down.extended_data_bytes(1, text.into_bytes()).await;
                let _ = pick.down.exit_status(1).await;
                let _ = pick.down.close().await;
                return;
            }
        };
        let _ = recorder
            .record(Kind::Open, u32::from(channel), "session".into())
            .await;
        let (ctl, ctl_rx) = channel::control();
        if let Some(entry) = self.channels.get_mut(&channel) {
            entry.ctl = ctl;
        }
        // The terminal the menu had, then a shell: judged like the client's own requests, and
        // queued before the pump starts so they reach the target ahead of what the user types.
        for request in pick.pty.into_iter().chain([Request::Shell]) {
            let (reply, _) = tokio::sync::oneshot::channel();
            if self.request(channel, request, reply).await.is_break() {
                return;
            }
        }
        channel::start(pick.down, up, recorder, self.to_actor.clone(), ctl_rx);
    }

    /// Tells the user, on `channel`'s stderr, of decisions on their access requests they have
    /// not heard of yet (once: at the first shell after the decision, or in the menu).
    pub(super) async fn tell_news(&mut self, channel: ChannelId) {
        let Phase::Routed { identity, route } = &self.phase else {
            return;
        };
        let recorder = route.recorder.clone();
        let (ctx, user, now) = (self.ctx.clone(), identity.user.clone(), now_secs());
        let news = tokio::task::spawn_blocking(move || crate::tickets::news(&ctx, &user, now))
            .await
            .unwrap_or_default();
        for line in news {
            let told = format!("bastion: {line}");
            let _ = recorder
                .record(Kind::Notice, u32::from(channel), told.clone().into())
                .await;
            self.tell_channel(channel, &told).await;
        }
    }
}
