//! The russh server handler. It only translates callbacks into [`Event`]s for the session actor
//! and relays the actor's answers; all state and decisions live in the actor.

use std::borrow::Cow;

use bastion_core::keys::Secret;
use russh::{
    Channel, ChannelId, MethodKind, MethodSet, Pty,
    server::{
        self, Auth, ChannelOpenHandle, Msg, PublicKeyOffer, Response, Session, VerifiedPublicKey,
    },
};
use tokio::sync::{mpsc, oneshot};

use super::events::{Challenge, Event, OpenKind, Request, SignIn};

pub struct ClientHandler {
    events: mpsc::Sender<Event>,
}

impl ClientHandler {
    pub fn new(events: mpsc::Sender<Event>) -> Self {
        ClientHandler { events }
    }

    /// Sends an event and waits for the actor's yes/no; a gone actor means no.
    async fn ask(&self, make: impl FnOnce(oneshot::Sender<bool>) -> Event) -> bool {
        self.answer(make).await.unwrap_or(false)
    }

    /// Sends an event and waits for the actor's answer; `None` when the actor is gone.
    async fn answer<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Event) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        self.events.send(make(tx)).await.ok()?;
        rx.await.ok()
    }

    async fn request(
        &self,
        channel: ChannelId,
        request: Request,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        let ok = self
            .ask(|reply| Event::Request {
                channel,
                request,
                reply,
            })
            .await;
        if ok {
            session.channel_success(channel)
        } else {
            session.channel_failure(channel)
        }
    }
}

fn verdict(ok: bool) -> Auth {
    if ok { Auth::Accept } else { Auth::reject() }
}

/// What russh answers for a verified key or certificate. A second factor is asked for as a
/// partial success that leaves keyboard-interactive as the only method.
fn sign_in(answer: Option<SignIn>) -> Auth {
    match answer {
        Some(SignIn::Accepted) => Auth::Accept,
        Some(SignIn::SecondFactor) => Auth::Reject {
            proceed_with_methods: Some(MethodSet::from(&[MethodKind::KeyboardInteractive][..])),
            partial_success: true,
        },
        Some(SignIn::Refused) | None => Auth::reject(),
    }
}

/// Answers read from a keyboard-interactive response: one is expected, so at most two are
/// kept (a client sending thousands costs nothing more), each at most 64 bytes.
fn answers(response: Option<Response<'_>>) -> Option<Vec<Secret>> {
    response.map(|r| {
        r.take(2)
            .map(|b| Secret::new(String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()))
            .collect()
    })
}

impl server::Handler for ClientHandler {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        let key = offer.public_key.clone();
        let user = user.to_owned();
        Ok(verdict(
            self.ask(|reply| Event::KeyOffered { user, key, reply })
                .await,
        ))
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let key = key.public_key.clone();
        let user = user.to_owned();
        Ok(sign_in(
            self.answer(|reply| Event::KeyVerified { user, key, reply })
                .await,
        ))
    }

    async fn auth_openssh_certificate(
        &mut self,
        user: &str,
        certificate: &russh::keys::Certificate,
    ) -> Result<Auth, Self::Error> {
        let cert = Box::new(certificate.clone());
        let user = user.to_owned();
        Ok(sign_in(
            self.answer(|reply| Event::CertVerified { user, cert, reply })
                .await,
        ))
    }

    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        user: &str,
        _submethods: &str,
        response: Option<Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        let user = user.to_owned();
        let answers = answers(response);
        let challenge = self
            .answer(|reply| Event::KeyboardInteractive {
                user,
                answers,
                reply,
            })
            .await;
        Ok(match challenge {
            Some(Challenge::Prompt { instructions }) => Auth::Partial {
                name: Cow::Borrowed("bastion"),
                instructions: Cow::Owned(instructions),
                prompts: Cow::Owned(vec![(Cow::Borrowed("Verification code: "), false)]),
            },
            Some(Challenge::Accepted) => Auth::Accept,
            Some(Challenge::Refused { retry: true }) => sign_in(Some(SignIn::SecondFactor)),
            Some(Challenge::Refused { retry: false }) | None => Auth::reject(),
        })
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        let _ = self
            .events
            .send(Event::ClientHandle(session.handle()))
            .await;
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // If the actor is gone, dropping `reply` refuses the channel.
        let _ = self
            .events
            .send(Event::Open {
                kind: OpenKind::Session,
                channel,
                reply,
            })
            .await;
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host: &str,
        port: u32,
        originator: &str,
        originator_port: u32,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let kind = OpenKind::DirectTcpip {
            host: host.to_owned(),
            port,
            originator: originator.to_owned(),
            originator_port,
        };
        let _ = self
            .events
            .send(Event::Open {
                kind,
                channel,
                reply,
            })
            .await;
        Ok(())
    }

    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        cols: u32,
        rows: u32,
        pix_width: u32,
        pix_height: u32,
        modes: &[(Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = Request::Pty {
            term: term.to_owned(),
            cols,
            rows,
            pix_width,
            pix_height,
            modes: modes.to_vec(),
        };
        self.request(channel, request, session).await
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.request(channel, Request::Shell, session).await
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = Request::Exec {
            command: data.to_vec(),
        };
        self.request(channel, request, session).await
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = Request::Subsystem {
            name: name.to_owned(),
        };
        self.request(channel, request, session).await
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let request = Request::Env {
            name: name.to_owned(),
            value: value.to_owned(),
        };
        self.request(channel, request, session).await
    }

    async fn agent_request(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        // russh answers this request itself from the returned bool.
        Ok(self
            .ask(|reply| Event::Request {
                channel,
                request: Request::Agent,
                reply,
            })
            .await)
    }
}
