//! `bastionctl archive list|verify|fetch|play|export|search`: the archive read straight from
//! the bucket, with read credentials and the appliance's audit public key only — on an
//! auditor's machine, with no bastiond and no store.

use std::{io::Write, path::PathBuf, process::ExitCode};

use bastion_archive::{Remote, Settings, remote::StreamReader, verify::Range};
use bastion_core::archive::{ArchivedKey, object};
use futures::StreamExt;

use crate::cli::{ArchiveCmd, Format};

/// Where the bucket is: the same settings as bastiond's `[archive]`.
#[derive(clap::Args, Clone)]
pub struct Bucket {
    /// s3://BUCKET[/PREFIX]
    #[arg(long = "url", env = "BASTION_ARCHIVE_URL")]
    pub url: String,
    /// The S3 endpoint (http://HOST:PORT); absent: AWS.
    #[arg(long, env = "BASTION_ARCHIVE_ENDPOINT")]
    pub endpoint: Option<String>,
    #[arg(long, env = "BASTION_ARCHIVE_REGION", default_value = "us-east-1")]
    pub region: String,
    /// TOML with access_key_id and secret_access_key, mode 0600.
    #[arg(long, env = "BASTION_ARCHIVE_CREDENTIALS")]
    pub credentials: PathBuf,
}

impl Bucket {
    fn connect(&self) -> Result<Remote, String> {
        Remote::connect(&Settings {
            url: self.url.clone(),
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials_file: self.credentials.clone(),
        })
        .map_err(|e| e.to_string())
    }
}

pub fn run(cmd: ArchiveCmd, json: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bastionctl: archive: cannot start a runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(command(cmd, json)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("bastionctl: archive: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The key of session `id` of `appliance`: found by listing (its day is in the key).
async fn session_key(remote: &Remote, appliance: &str, id: u64) -> Result<String, String> {
    let listed = remote
        .list(&format!(
            "{}sessions/",
            remote.location.appliance(appliance)
        ))
        .await
        .map_err(|e| e.to_string())?;
    listed
        .into_iter()
        .find(|l| {
            matches!(remote.location.parse_key(&l.key),
                Some((_, ArchivedKey::Session { id: found, .. })) if found == id)
        })
        .map(|l| l.key)
        .ok_or_else(|| format!("no archived session {id} of appliance `{appliance}`"))
}

/// The frames of an archived session, read block by block.
async fn frames(
    remote: &Remote,
    key: &str,
) -> Result<
    (
        bastion_core::session::SessionMeta,
        Vec<bastion_core::record::Frame>,
    ),
    String,
> {
    let stream = remote.open(key).await.map_err(|e| e.to_string())?;
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let mut r = object::ObjectReader::new(StreamReader::new(handle, stream));
        let header = r.header().map_err(|e| e.to_string())?;
        let mut frames = Vec::new();
        while let Some(b) = r.next_block().map_err(|e| e.to_string())? {
            frames.extend(
                bastion_core::record::block::decompress(&b.bytes)
                    .map_err(|e| format!("block {}: {e}", b.n))?,
            );
        }
        Ok((header.session, frames))
    })
    .await
    .map_err(|e| e.to_string())?
}

async fn command(cmd: ArchiveCmd, json: bool) -> Result<ExitCode, String> {
    let print = |v: &dyn erased::Json| -> Result<(), String> {
        println!("{}", v.pretty()?);
        Ok(())
    };
    match cmd {
        ArchiveCmd::Status => Err("archive status asks bastiond".into()),
        ArchiveCmd::List { at, appliance } => {
            let remote = at.connect()?;
            match appliance {
                None => {
                    let all = remote.appliances().await.map_err(|e| e.to_string())?;
                    if json {
                        print(&all)?;
                    } else if all.is_empty() {
                        println!("(no appliances in {})", remote.location);
                    } else {
                        all.iter().for_each(|a| println!("{a}"));
                    }
                }
                Some(a) => {
                    let listed = remote
                        .list(&remote.location.appliance(&a))
                        .await
                        .map_err(|e| e.to_string())?;
                    let rows: Vec<serde_json::Value> = listed
                        .iter()
                        .filter_map(|l| {
                            let (_, k) = remote.location.parse_key(&l.key)?;
                            Some(match k {
                                ArchivedKey::Session { day, id } => serde_json::json!({
                                    "kind": "session", "session": id, "day": day,
                                    "bytes": l.size, "object": l.key,
                                }),
                                ArchivedKey::Audit { first, last } => serde_json::json!({
                                    "kind": "audit", "first": first, "last": last,
                                    "bytes": l.size, "object": l.key,
                                }),
                            })
                        })
                        .collect();
                    if json {
                        print(&rows)?;
                    } else {
                        for r in &rows {
                            match r["kind"].as_str() {
                                Some("session") => println!(
                                    "session {:<8} {} {:>12} bytes  {}",
                                    r["session"],
                                    r["day"].as_str().unwrap_or(""),
                                    r["bytes"],
                                    r["object"].as_str().unwrap_or("")
                                ),
                                _ => println!(
                                    "audit   {}..{} {:>12} bytes  {}",
                                    r["first"],
                                    r["last"],
                                    r["bytes"],
                                    r["object"].as_str().unwrap_or("")
                                ),
                            }
                        }
                    }
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCmd::Verify {
            at,
            appliance,
            key,
            since,
            until,
        } => {
            let remote = at.connect()?;
            let line =
                std::fs::read_to_string(&key).map_err(|e| format!("{}: {e}", key.display()))?;
            let public = ssh_key::PublicKey::from_openssh(line.trim())
                .map_err(|e| format!("{}: not an OpenSSH public key: {e}", key.display()))?;
            let range = Range {
                since_micros: since.map(|s| s * 1_000_000),
                until_micros: until.map(|s| s * 1_000_000),
            };
            let report = bastion_archive::verify::verify(&remote, &appliance, &public, range)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                print(&report)?;
            } else {
                for s in &report.sessions {
                    println!(
                        "session {:<8} {:<10} {}",
                        s.session,
                        format!("{:?}", s.status).to_uppercase(),
                        s.detail
                    );
                }
                println!(
                    "audit: {} events in {} chunks (#{} to #{}), anchored through #{}",
                    report.audit_events,
                    report.audit_chunks,
                    report.audit_first.map_or("-".into(), |v| v.to_string()),
                    report.audit_last.map_or("-".into(), |v| v.to_string()),
                    report
                        .anchored_through
                        .map_or("-".into(), |v| v.to_string()),
                );
                for f in &report.findings {
                    println!("FINDING {f}");
                }
                println!(
                    "{}: {} sessions checked, {} findings",
                    appliance,
                    report.sessions.len(),
                    report.findings.len()
                );
            }
            Ok(if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        ArchiveCmd::Fetch {
            at,
            appliance,
            id,
            output,
        } => {
            let remote = at.connect()?;
            let key = session_key(&remote, &appliance, id).await?;
            let mut stream = remote.open(&key).await.map_err(|e| e.to_string())?;
            let mut file =
                std::fs::File::create(&output).map_err(|e| format!("{}: {e}", output.display()))?;
            let mut n = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                file.write_all(&chunk)
                    .map_err(|e| format!("{}: {e}", output.display()))?;
                n += chunk.len() as u64;
            }
            file.sync_all()
                .map_err(|e| format!("{}: {e}", output.display()))?;
            eprintln!("{key}: {n} bytes written to {}", output.display());
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCmd::Play {
            at,
            appliance,
            id,
            speed,
            no_wait,
        } => {
            let remote = at.connect()?;
            let key = session_key(&remote, &appliance, id).await?;
            let (meta, frames) = frames(&remote, &key).await?;
            let cast = bastion_core::record::export::asciicast(&meta, &frames);
            crate::play::play(&cast, speed, no_wait, 0.0)?;
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCmd::Export {
            at,
            appliance,
            id,
            format,
        } => {
            let remote = at.connect()?;
            let key = session_key(&remote, &appliance, id).await?;
            match format {
                Format::Sealed => {
                    return Err(
                        "the archived object is the sealed record: use `archive fetch`".into(),
                    );
                }
                Format::Asciicast => {
                    let (meta, frames) = frames(&remote, &key).await?;
                    println!(
                        "{}",
                        bastion_core::record::export::asciicast(&meta, &frames).trim_end()
                    );
                }
                Format::Json => {
                    let (meta, frames) = frames(&remote, &key).await?;
                    println!("{}", bastion_core::record::export::json(&meta, &frames));
                }
                Format::Html => {
                    // Judged by `archive verify` with the audit key; the page says not checked.
                    let (meta, frames) = frames(&remote, &key).await?;
                    let cast = bastion_core::record::export::asciicast(&meta, &frames);
                    let activity = bastion_core::record::export::activity(&frames);
                    print!("{}", crate::replay::page(&meta, &cast, &activity, None));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        ArchiveCmd::Search {
            at,
            text,
            appliance,
            limit,
        } => {
            let remote = at.connect()?;
            let hits = bastion_archive::search::search(&remote, &appliance, &text, limit)
                .await
                .map_err(|e| e.to_string())?;
            if json {
                print(&hits)?;
            } else if hits.is_empty() {
                println!("(no commands found)");
            } else {
                for h in &hits {
                    println!(
                        "{} {:<12} session {:<6} {}@{} {}",
                        crate::render::utc_micros(h.hit.at_micros),
                        h.appliance,
                        h.hit.session,
                        h.hit.login,
                        h.hit.target,
                        h.hit.line
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

mod erased {
    /// Anything printable as pretty JSON.
    pub trait Json {
        fn pretty(&self) -> Result<String, String>;
    }

    impl<T: serde::Serialize> Json for T {
        fn pretty(&self) -> Result<String, String> {
            serde_json::to_string_pretty(self).map_err(|e| e.to_string())
        }
    }
}
