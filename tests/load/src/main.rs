//! lab-load: the load behind `cargo xtask bench`'s scale and store figures.
//!
//! - `lab-load idle N ADDR USER KEY`: opens N SSH sessions (PTY + shell) to bastiond at ADDR as
//!   USER (`login@target`) with the private key file KEY, 8 at a time (a session refused because
//!   the loaded target was slow is tried again, at most twice), prints `ready N retried R` and
//!   holds them until stdin closes.
//! - `lab-load ingest STORE MIB`: records MIB MiB (half incompressible, half terminal text) as
//!   one session through bastion's recorder into a fresh store at STORE; prints
//!   `{"mb_s": .., "stored_bytes": ..}`.
//! - `lab-load populate STORE N`: adds N shell commands (1000 per session) to the store at
//!   STORE, as the recorder writes them; prints `{"commands": N, "secs": ..}`.
//! - `lab-load s3-put CREDENTIALS ENDPOINT URL KEY FILE` and `s3-delete ... KEY`: what someone
//!   with write access to the archive's bucket could do to it (the archive tests' tampering),
//!   through the same client bastiond uses. URL is `s3://BUCKET[/PREFIX]`, KEY the whole key.

use std::{net::SocketAddr, path::Path, process::ExitCode, sync::Arc, time::Instant};

use bastion_core::{
    integrity,
    record::{Kind, block, frame::Frame},
    session::{CommandSource, NewCommand, SessionMeta, SessionState},
};
use bastion_proxy::keys::ApplianceKeys;
use bastion_store::Store;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("lab-load: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match args.as_slice() {
        ["idle", n, addr, user, key] => runtime.block_on(idle(n, addr, user, Path::new(key))),
        ["ingest", store, mib] => runtime.block_on(ingest(Path::new(store), mib)),
        ["populate", store, n] => populate(Path::new(store), n),
        ["s3-put", creds, endpoint, url, key, file] => runtime.block_on(async {
            let data = std::fs::read(file).map_err(err)?;
            s3(creds, endpoint, url)?.put(key, data.into()).await.map_err(err)
        }),
        ["s3-delete", creds, endpoint, url, key] => runtime.block_on(async {
            s3(creds, endpoint, url)?.delete(key).await.map_err(err)
        }),
        _ => {
            Err("usage: lab-load idle N ADDR USER KEY | ingest STORE MIB | populate STORE N | s3-put CREDS ENDPOINT URL KEY FILE | s3-delete CREDS ENDPOINT URL KEY".into())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lab-load: {e}");
            ExitCode::FAILURE
        }
    }
}

fn s3(creds: &str, endpoint: &str, url: &str) -> Result<bastion_archive::Remote, String> {
    bastion_archive::Remote::connect(&bastion_archive::Settings {
        url: url.into(),
        endpoint: Some(endpoint.into()),
        region: "garage".into(),
        credentials_file: creds.into(),
    })
    .map_err(err)
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

struct AnyHost;

impl russh::client::Handler for AnyHost {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        _key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// One idle interactive session: signed in, PTY, shell; kept open by holding the handles.
async fn session(
    addr: SocketAddr,
    user: String,
    key: Arc<russh::keys::PrivateKey>,
) -> Result<
    (
        russh::client::Handle<AnyHost>,
        russh::Channel<russh::client::Msg>,
    ),
    String,
> {
    let config = Arc::new(russh::client::Config::default());
    let mut h = russh::client::connect(config, addr, AnyHost)
        .await
        .map_err(err)?;
    let auth = h
        .authenticate_publickey(user, russh::keys::PrivateKeyWithHashAlg::new(key, None))
        .await
        .map_err(err)?;
    if !auth.success() {
        return Err("sign-in refused".into());
    }
    let ch = h.channel_open_session().await.map_err(err)?;
    ch.request_pty(true, "xterm", 80, 24, 0, 0, &[])
        .await
        .map_err(err)?;
    ch.request_shell(true).await.map_err(err)?;
    Ok((h, ch))
}

async fn idle(n: &str, addr: &str, user: &str, key: &Path) -> Result<(), String> {
    let n: usize = n.parse().map_err(err)?;
    let addr: SocketAddr = addr.parse().map_err(err)?;
    let key = Arc::new(russh::keys::load_secret_key(key, None).map_err(err)?);
    bastion::limits::raise_fd_limit().map_err(err)?;
    let mut held = Vec::with_capacity(n);
    let mut pending = tokio::task::JoinSet::new();
    let (mut started, mut retried) = (0, 0);
    while held.len() < n {
        while started < n && pending.len() < 8 {
            let (user, key) = (user.to_owned(), key.clone());
            pending.spawn(async move {
                let mut last = String::new();
                for attempt in 0..3 {
                    match session(addr, user.clone(), key.clone()).await {
                        Ok(s) => return Ok((s, attempt)),
                        Err(e) => last = e,
                    }
                }
                Err(last)
            });
            started += 1;
        }
        match pending.join_next().await {
            Some(Ok(Ok((s, attempts)))) => {
                held.push(s);
                retried += attempts;
            }
            Some(Ok(Err(e))) => return Err(format!("session {}: {e}", held.len() + 1)),
            Some(Err(e)) => return Err(err(e)),
            None => break,
        }
    }
    println!("ready {} retried {retried}", held.len());
    // Held until whoever started us closes stdin (bounded by them).
    let mut line = String::new();
    let _ = tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line)).await;
    drop(held);
    Ok(())
}

fn meta(store: &Store, user: &str) -> Result<SessionMeta, String> {
    let id = store.new_session_id().map_err(err)?;
    Ok(SessionMeta {
        user: user.into(),
        login: "root".into(),
        target: "web1".into(),
        grant: "bench".into(),
        ..SessionMeta::starting(id, SocketAddr::from(([203, 0, 113, 10], 22)))
    })
}

/// Terminal-like text: a long `ls -l`-style listing.
fn text_chunk(i: usize) -> Vec<u8> {
    let mut s = String::new();
    for j in 0..400 {
        s.push_str(&format!(
            "-rw-r--r-- 1 root root {:>8} Nov 28 01:{:02} /var/log/app-{i}/part-{j}.log\r\n",
            (i * 7919 + j * 104_729) % 10_000_000,
            j % 60
        ));
    }
    s.into_bytes()
}

async fn ingest(dir: &Path, mib: &str) -> Result<(), String> {
    let mib: usize = mib.parse().map_err(err)?;
    let store = Arc::new(Store::open(&dir.join("store")).map_err(err)?);
    let keys = Arc::new(ApplianceKeys::load_or_generate(&dir.join("keys")).map_err(err)?);
    let meta = meta(&store, "bench")?;
    store.put_session(&meta).map_err(err)?;
    // The data is made before the clock starts, so the figures are the recorder's alone: 64
    // random chunks (no repeat within a block: each block holds a few distinct ones) and 64
    // listing chunks, taken in turn.
    const POOL: usize = 64;
    let mut urandom = std::fs::File::open("/dev/urandom").map_err(err)?;
    let mut pool = Vec::with_capacity(2 * POOL);
    for i in 0..POOL {
        let mut random = vec![0u8; 32 * 1024];
        std::io::Read::read_exact(&mut urandom, &mut random).map_err(err)?;
        pool.push(bytes::Bytes::from(random));
        pool.push(bytes::Bytes::from(text_chunk(i)));
    }
    let total = mib << 20;
    let t0 = Instant::now();
    let cpu0 = cpu_secs();
    let (rec, writer) = bastion_record::spawn(
        store.clone(),
        bastion_record::Settings {
            audit_key: keys.audit_key.clone(),
            flush_interval: std::time::Duration::from_millis(100),
            floor_bytes: 0,
            quota_bytes: None,
        },
        meta,
    );
    let mut sent = 0;
    for data in pool.iter().cycle() {
        if sent >= total {
            break;
        }
        sent += data.len();
        rec.record(Kind::Output, 0, data.clone())
            .await
            .map_err(err)?;
    }
    drop(rec);
    let done = writer.await.map_err(err)?;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu0;
    println!(
        "{}",
        serde_json::json!({
            "mb_s": sent as f64 / 1e6 / secs,
            "mb_per_cpu_s": sent as f64 / 1e6 / cpu,
            "bytes": sent,
            "stored_bytes": done.stored_bytes,
            "sealed": done.seal.is_some() && done.state == SessionState::Closed,
        })
    );
    Ok(())
}

/// CPU time (user and system) of this process so far, in seconds.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed value it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Commands as admins type them; one in a thousand restarts a service (something to find).
fn command_line(i: usize) -> String {
    const VERBS: [&str; 8] = [
        "ls -la /var/log",
        "tail -n 100 /var/log/syslog",
        "grep -r error /etc",
        "df -h",
        "ps aux --sort=-rss",
        "journalctl -u app --since today",
        "cat /proc/meminfo",
        "du -sh /srv/data",
    ];
    if i % 1000 == 999 {
        format!("systemctl restart nginx-{i}")
    } else {
        format!("{} # {i}", VERBS[i % VERBS.len()])
    }
}

fn populate(dir: &Path, n: &str) -> Result<(), String> {
    let n: usize = n.parse().map_err(err)?;
    let store = Store::open(dir).map_err(err)?;
    let t0 = Instant::now();
    let mut done = 0;
    // Sessions one after another over the past (2 s per command), as an appliance accumulates
    // them; the newest ends now.
    let span = 2_000_000 * n as u64;
    let first = bastion_core::audit::now_micros().saturating_sub(span);
    while done < n {
        let mut meta = meta(&store, if done % 2000 == 0 { "alice" } else { "bob" })?;
        meta.started_micros = first + 2_000_000 * done as u64;
        let count = (n - done).min(1000);
        let commands: Vec<NewCommand> = (0..count)
            .map(|k| NewCommand {
                t_micros: k as u64 * 2_000_000,
                channel: 0,
                source: CommandSource::Shell,
                doubts: Vec::new(),
                line: command_line(done + k),
            })
            .collect();
        // A block that records them, as the recorder would write it.
        let mut raw = Vec::new();
        for c in &commands {
            let line = serde_json::json!({ "line": c.line }).to_string();
            Frame {
                kind: Kind::Command,
                channel: 0,
                t_micros: c.t_micros,
                data: bytes::Bytes::from(line),
            }
            .encode(&mut raw);
        }
        let stored = block::compress(&raw).map_err(err)?;
        let chain = integrity::next(&integrity::genesis(meta.id), 0, &stored);
        meta.blocks = 1;
        meta.stored_bytes = stored.len() as u64;
        meta.chain = Some(integrity::hex(&chain));
        meta.state = SessionState::Closed;
        meta.ended_micros = Some(meta.started_micros + count as u64 * 2_000_000);
        store
            .put_block(
                &mut store.segment_writer(meta.id),
                &meta,
                0,
                &stored,
                &chain,
                0,
                &commands,
            )
            .map_err(err)?;
        done += count;
    }
    println!(
        "{}",
        serde_json::json!({ "commands": store.command_count(), "secs": t0.elapsed().as_secs_f64() })
    );
    Ok(())
}
