//! Per-command events from interactive shells: a real bash on a real sshd, typed at through
//! bastiond by a scripted terminal, every editing feature the issue names, each line with its
//! ground truth; then PTY command rules (deny checked on the target's side, alert, terminate)
//! and search (filters, offsets that `session play --from` takes, output text).

// In test helpers a panic is the failure report.
#![allow(clippy::unwrap_used)]

use bastion_core::{
    record::commands::Doubt,
    session::{CommandSource, SessionState},
};
use bastion_lab::{
    Lab,
    bastiond::Bastiond,
    interactive::Interactive,
    wait::{LIMIT, eventually},
};

mod common;

const PROMPT: &str = "corpus$ ";

/// A scripted terminal: `ssh -tt` through bastiond, keys written as a person would type them
/// (one group at a time, waiting for the shell to answer).
struct Term(Interactive);

impl Term {
    fn open(lab: &Lab) -> Term {
        let mut t = Term(lab.interactive("root@web1", &[]).unwrap());
        // root's login shell prompts with `# ` (typing earlier would be typing ahead).
        t.0.wait_for("# ").unwrap();
        t.0.settle();
        // A known shell: no rc files, a fixed prompt, history in memory only.
        let home = lab.info().run_dir.display().to_string();
        t.0.send(
            format!(
                "exec env -i HOME={home} HISTFILE= TERM=xterm INPUTRC=/dev/null PS1='{PROMPT}' bash --norc --noprofile -i\r"
            )
            .as_bytes(),
        )
        .unwrap();
        t.0.wait_for(PROMPT).unwrap();
        t
    }

    fn text(&self) -> String {
        self.0.output()
    }

    fn send(&mut self, keys: &[u8]) {
        self.0.send(keys).unwrap();
    }

    /// Types each group of keys, letting the shell answer in between; the last group ends the
    /// line, and the shell's next prompt is waited for.
    fn line(&mut self, groups: &[&[u8]]) {
        let prompts = self.text().matches(PROMPT).count();
        self.keys(groups);
        self.0.wait_for_times(PROMPT, prompts + 1).unwrap();
    }

    /// Waits (bounded) for ssh to exit and for its output to be read to the end.
    fn exited(&mut self) -> std::process::ExitStatus {
        self.0.wait_exit().unwrap()
    }

    /// Types each group of keys, letting the program answer in between.
    fn keys(&mut self, groups: &[&[u8]]) {
        for g in groups {
            self.send(g);
            self.0.settle();
        }
    }
}

/// The lines entered in `session`, oldest first, with their doubts and sources.
fn commands(b: &Bastiond, session: &str) -> Vec<(String, Vec<Doubt>, CommandSource)> {
    let mut hits: Vec<_> = common::search(b, &["--session", session, "--limit", "500"])
        .into_iter()
        .map(|h| (h.line, h.doubts, h.source))
        .collect();
    hits.reverse();
    hits
}

fn session_id(b: &Bastiond) -> String {
    common::sessions(b)[0].id.to_string()
}

fn wait_closed(b: &Bastiond, id: &str) {
    let id: u64 = id.parse().unwrap();
    eventually(&format!("session {id} closed"), LIMIT, || {
        (common::session(b, id).state == SessionState::Closed).then_some(())
    })
    .unwrap();
}

/// Keys typed (in groups), the line bash ran, and the doubts it must carry.
type Step<'a> = (Vec<&'a [u8]>, &'a str, &'a [Doubt]);

#[test]
fn every_line_of_an_edited_bash_session_matches_its_ground_truth() {
    let (lab, b) = Lab::with_alice().unwrap();
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
        (vec![b"hunter2", b"\r"], "", &[Doubt::NoEcho]),
        (
            vec![b"printf '\\e[?1049h'; read x; printf '\\e[?1049l'", b"\r"],
            "printf '\\e[?1049h'; read x; printf '\\e[?1049l'",
            &[],
        ),
        (vec![b"in-vim", b"\r"], "in-vim", &[Doubt::FullScreen]),
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

    let mut expected: Vec<(String, Vec<Doubt>, CommandSource)> = vec![(
        format!(
            "exec env -i HOME={} HISTFILE= TERM=xterm INPUTRC=/dev/null PS1='{PROMPT}' bash --norc --noprofile -i",
            lab.info().run_dir.display()
        ),
        vec![],
        CommandSource::Shell,
    )];
    for (_, line, doubts) in &corpus {
        expected.push((line.to_string(), doubts.to_vec(), CommandSource::Shell));
    }
    for line in ["echo 'multi", "line'", "exit"] {
        expected.push((line.into(), vec![], CommandSource::Shell));
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
    let (lab, b) = Lab::with_alice().unwrap();
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
    let lines: Vec<(&str, CommandSource)> = got.iter().map(|(l, _, s)| (l.as_str(), *s)).collect();
    let touch = format!("touch {}", marker.display());
    assert!(
        lines.contains(&(&touch, CommandSource::Refused)),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("echo alert-me-$((6*7))", CommandSource::Shell)),
        "{lines:?}"
    );
    assert!(
        lines.contains(&("echo self-destruct", CommandSource::Refused)),
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
