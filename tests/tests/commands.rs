//! Per-command events from interactive shells: a real bash on a real sshd, typed at through
//! bastiond by a scripted terminal, every editing feature the issue names, each line with its
//! ground truth; then PTY command rules (deny checked on the target's side, alert, terminate)
//! and search (filters, offsets that `session play --from` takes, output text).

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    process::{Child, ChildStdin, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bastion_lab::{Lab, bastiond::Bastiond, wait::LIMIT};

const PROMPT: &str = "corpus$ ";

/// A scripted terminal: `ssh -tt` through bastiond, keys written as a person would type them
/// (one group at a time, waiting for the shell to answer).
struct Term {
    child: Child,
    stdin: ChildStdin,
    out: Arc<Mutex<Vec<u8>>>,
    /// The thread copying ssh's output into `out`; joined once ssh exits, so what ssh printed
    /// last (a refusal before it hangs up) is in `out` before anyone reads it.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Term {
    fn open(lab: &Lab) -> Term {
        let mut child = lab
            .ssh_via_bastion("root@web1", &["-tt"])
            .unwrap()
            // The ground truth is an xterm's, whatever terminal runs the tests: under the
            // TERM=dumb of a CI runner, readline scrolls long lines sideways instead of wrapping.
            .env("TERM", "xterm")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let out = Arc::new(Mutex::new(Vec::new()));
        let sink = out.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut t = Term {
            child,
            stdin,
            out,
            reader: Some(reader),
        };
        // root's login shell prompts with `# ` (typing earlier would be typing ahead).
        t.wait_for("# ", 1);
        t.settle();
        // A known shell: no rc files, a fixed prompt, history in memory only.
        let home = lab.info().run_dir.display().to_string();
        t.send(
            format!(
                "exec env -i HOME={home} HISTFILE= TERM=xterm INPUTRC=/dev/null PS1='{PROMPT}' bash --norc --noprofile -i\r"
            )
            .as_bytes(),
        );
        t.wait_for(PROMPT, 1);
        t
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.out.lock().unwrap()).into_owned()
    }

    fn send(&mut self, keys: &[u8]) {
        self.stdin.write_all(keys).unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits (bounded) until `pat` was printed at least `n` times.
    fn wait_for(&self, pat: &str, n: usize) {
        let t0 = Instant::now();
        while self.text().matches(pat).count() < n {
            assert!(t0.elapsed() < LIMIT, "no `{pat}` x{n} in:\n{}", self.text());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits (bounded) until the output has been quiet for a moment.
    fn settle(&self) {
        let t0 = Instant::now();
        let mut last = self.out.lock().unwrap().len();
        let mut quiet = Instant::now();
        while quiet.elapsed() < Duration::from_millis(150) && t0.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
            let now = self.out.lock().unwrap().len();
            if now != last {
                last = now;
                quiet = Instant::now();
            }
        }
    }

    /// Types each group of keys, letting the shell answer in between; the last group ends the
    /// line, and the shell's next prompt is waited for.
    fn line(&mut self, groups: &[&[u8]]) {
        let prompts = self.text().matches(PROMPT).count();
        self.keys(groups);
        self.wait_for(PROMPT, prompts + 1);
    }

    /// Waits (bounded) for ssh to exit and for its output to be read to the end.
    fn exited(&mut self) -> std::process::ExitStatus {
        let t0 = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let reader = self.reader.take().unwrap();
                while !reader.is_finished() {
                    assert!(t0.elapsed() < LIMIT, "ssh's output never ended");
                    std::thread::sleep(Duration::from_millis(20));
                }
                reader.join().unwrap();
                return status;
            }
            if t0.elapsed() > LIMIT {
                let _ = self.child.kill();
                panic!("ssh did not exit; it showed:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Types each group of keys, letting the program answer in between.
    fn keys(&mut self, groups: &[&[u8]]) {
        for g in groups {
            self.send(g);
            self.settle();
        }
    }
}

/// The lines entered in `session`, oldest first, with their doubts and sources.
fn commands(b: &Bastiond, session: &str) -> Vec<(String, Vec<String>, String)> {
    let v: serde_json::Value = serde_json::from_str(
        &b.ctl_ok(&["--json", "search", "--session", session, "--limit", "500"])
            .unwrap(),
    )
    .unwrap();
    let mut hits: Vec<_> = v["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["line"].as_str().unwrap().to_owned(),
                h["doubts"]
                    .as_array()
                    .map(|d| d.iter().map(|x| x.as_str().unwrap().to_owned()).collect())
                    .unwrap_or_default(),
                h["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    hits.reverse();
    hits
}

fn session_id(b: &Bastiond) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&b.ctl_ok(&["--json", "session", "list"]).unwrap()).unwrap();
    v["sessions"][0]["id"].as_u64().unwrap().to_string()
}

fn wait_closed(b: &Bastiond, id: &str) {
    let start = std::time::Instant::now();
    while start.elapsed() < LIMIT {
        let v: serde_json::Value =
            serde_json::from_str(&b.ctl_ok(&["--json", "session", "show", id]).unwrap()).unwrap();
        if v["session"]["state"] == "closed" {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("session {id} did not close");
}

/// Keys typed (in groups), the line bash ran, and the doubts it must carry.
type Step<'a> = (Vec<&'a [u8]>, &'a str, &'a [&'a str]);

#[test]
fn every_line_of_an_edited_bash_session_matches_its_ground_truth() {
    let lab = Lab::up().expect("lab");
    let b = lab.start_bastiond().expect("bastiond");
    lab.enroll_alice(&b).unwrap();
    let mut t = Term::open(&lab);
    const LEFT: &[u8] = b"\x1b[D";
    const UP: &[u8] = b"\x1b[A";
    let long = format!("echo {}", "0123456789".repeat(15));
    let corpus: Vec<Step> = vec![
        (vec![b"echo one", b"\r"], "echo one", &[]),
        (vec![b"echo twx", b"\x7f", b"o", b"\r"], "echo two", &[]),
        (
            vec![b"garbage here", b"\x15", b"echo three", b"\r"],
            "echo three",
            &[],
        ),
        (vec![b"echo four junk", b"\x17", b"\r"], "echo four", &[]),
        (
            vec![b"echo fivexyz", LEFT, LEFT, LEFT, b"\x0b", b"\r"],
            "echo five",
            &[],
        ),
        (vec![b"echo sx", LEFT, b"i", b"\r"], "echo six", &[]),
        (vec![UP, UP, b"\r"], "echo five", &[]),
        (
            vec![b"echo /etc/hostn", b"\t", b"\r"],
            "echo /etc/hostname",
            &[],
        ),
        (vec![b"\x12thr", b"\r"], "echo three", &[]),
        (
            vec![b"\x1b[200~echo pasted\x1b[201~", b"\r"],
            "echo pasted",
            &[],
        ),
        (
            vec![b"\x1b[200~echo p1\necho p2\x1b[201~", b"\r"],
            "echo p1\necho p2",
            &[],
        ),
        (vec![long.as_bytes(), b"\r"], &long, &[]),
        (vec![b"read -s pw", b"\r"], "read -s pw", &[]),
        (vec![b"hunter2", b"\r"], "", &["no_echo"]),
        (
            vec![b"printf '\\e[?1049h'; read x; printf '\\e[?1049l'", b"\r"],
            "printf '\\e[?1049h'; read x; printf '\\e[?1049l'",
            &[],
        ),
        (vec![b"in-vim", b"\r"], "in-vim", &["full_screen"]),
        (
            vec![b"echo cancelled", b"\x03", b"echo after", b"\r"],
            "echo after",
            &[],
        ),
        (vec![b"clear", b"\r"], "clear", &[]),
        (vec![b"echo after-clear", b"\r"], "echo after-clear", &[]),
    ];
    for (keys, line, _) in &corpus {
        // Lines that start a program reading the terminal get no prompt until it ends.
        if line.starts_with("read -s") || line.starts_with("printf") {
            t.keys(keys);
        } else {
            t.line(keys);
        }
    }
    // A continuation line (PS2) is a line of its own, as the screen shows it.
    t.line(&[b"echo 'multi", b"\r", b"line'", b"\r"]);
    t.send(b"exit\r");
    t.exited();
    let id = session_id(&b);
    wait_closed(&b, &id);

    let mut expected: Vec<(String, Vec<String>, String)> = vec![(
        format!(
            "exec env -i HOME={} HISTFILE= TERM=xterm INPUTRC=/dev/null PS1='{PROMPT}' bash --norc --noprofile -i",
            lab.info().run_dir.display()
        ),
        vec![],
        "shell".into(),
    )];
    for (_, line, doubts) in &corpus {
        expected.push((
            line.to_string(),
            doubts.iter().map(|d| d.to_string()).collect(),
            "shell".into(),
        ));
    }
    for line in ["echo 'multi", "line'", "exit"] {
        expected.push((line.into(), vec![], "shell".into()));
    }
    let got = commands(&b, &id);
    for (i, (g, e)) in got.iter().zip(&expected).enumerate() {
        assert_eq!(
            g, e,
            "line {i}: got {g:?}, ground truth {e:?}\nall: {got:#?}"
        );
    }
    assert_eq!(got.len(), expected.len(), "{got:#?}");
}

#[test]
fn shell_rules_deny_before_the_target_runs_alert_and_terminate_and_search_finds_it_all() {
    let lab = Lab::up().expect("lab");
    let b = lab.start_bastiond().expect("bastiond");
    lab.enroll_alice(&b).unwrap();
    b.ctl_ok(&["grant", "remove", "alice-web1"]).unwrap();
    b.ctl_ok(&[
        "grant",
        "add",
        "guarded",
        "--user",
        "alice",
        "--target",
        "web1",
        "--login",
        "root",
        "--rights",
        "shell",
        "--deny-command",
        "touch *denied*",
        "--alert-command",
        "*alert-me*",
        "--terminate-command",
        "*self-destruct*",
    ])
    .unwrap();
    let marker = lab.info().run_dir.join("marker-denied");
    let mut t = Term::open(&lab);
    t.line(&[format!("touch {}", marker.display()).as_bytes(), b"\r"]);
    assert!(
        t.text()
            .contains("bastion: command denied by rule `touch *denied*` of grant guarded"),
        "{}",
        t.text()
    );
    assert!(!marker.exists(), "the target never ran the denied line");
    t.line(&[b"echo alert-me-$((6*7))", b"\r"]);
    assert!(t.text().contains("alert-me-42"), "an alert lets it run");
    t.line(&[b"echo findable-output-$((1000+337))", b"\r"]);
    // Typed faster than the echo (one write): the keys alone match the rule.
    t.send(b"echo self-destruct\r");
    let status = t.exited();
    assert!(!status.success());
    let said = t.text();
    assert!(
        said.contains(
            "bastion: command ends the session by rule `*self-destruct*` of grant guarded"
        ),
        "{said}"
    );
    let id = session_id(&b);
    wait_closed(&b, &id);

    let got = commands(&b, &id);
    let lines: Vec<(&str, &str)> = got
        .iter()
        .map(|(l, _, s)| (l.as_str(), s.as_str()))
        .collect();
    let touch = format!("touch {}", marker.display());
    assert!(lines.contains(&(&touch, "refused")), "{lines:?}");
    assert!(
        lines.contains(&("echo alert-me-$((6*7))", "shell")),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("echo self-destruct", "refused")),
        "{lines:?}"
    );
    let audit = b.ctl_ok(&["audit"]).unwrap();
    for what in ["deny", "alert", "terminate"] {
        assert!(audit.contains(what), "{what} audited:\n{audit}");
    }

    // Search: filters narrow, newest first, offsets replay from the line.
    let found = b
        .ctl_ok(&["search", "alert-me", "--user", "alice"])
        .unwrap();
    assert!(found.contains("echo alert-me-$((6*7))"), "{found}");
    assert!(found.contains("1 found"), "{found}");
    let none = b.ctl_ok(&["search", "alert-me", "--user", "bob"]).unwrap();
    assert!(none.contains("0 found"), "{none}");
    let none = b
        .ctl_ok(&["search", "alert-me", "--login", "nobody"])
        .unwrap();
    assert!(none.contains("0 found"), "{none}");
    let later = b
        .ctl_ok(&["search", "alert-me", "--since", "2999-01-01"])
        .unwrap();
    assert!(later.contains("0 found"), "{later}");
    let out = b
        .ctl_ok(&["search", "--output", "findable-output-1337"])
        .unwrap();
    assert!(out.contains("out findable-output-1337"), "{out}");
    let replay = out
        .lines()
        .find_map(|l| l.strip_prefix("replay: bastionctl "))
        .unwrap()
        .to_owned();
    let args: Vec<&str> = replay.split_whitespace().collect();
    let played = b.ctl_ok(&[&args[..], &["--no-wait"]].concat()).unwrap();
    assert!(played.contains("findable-output-1337"), "{played}");
}
