//! [`Interactive`]: an interactive session through bastiond as a test drives it. `ssh -tt` from
//! the admin namespace, typed at through its stdin, its output collected as it comes
//! ([`Collected`]), every wait bounded by [`LIMIT`]. The ssh child never outlives its
//! `Interactive`: dropping one kills and reaps the child.

use std::{
    fs::File,
    io::Write,
    os::fd::{AsRawFd, FromRawFd},
    process::{Child, ExitStatus, Stdio},
};

use anyhow::{Context, bail};

use crate::{
    Lab,
    wait::{Collected, LIMIT, eventually},
};

pub struct Interactive {
    child: Child,
    /// Where keys go: ssh's stdin pipe, or the master side of its terminal.
    input: Box<dyn Write + Send>,
    output: Collected,
    /// ssh's stderr (on a terminal of its own, stderr is part of `output` and this stays empty).
    errors: Collected,
    /// The terminal's master side, when ssh runs on one ([`Lab::interactive_on_pty`]).
    pty: Option<File>,
}

impl Lab {
    /// `ssh -tt` to `dest` through bastiond with `extra` arguments, stdin, stdout and stderr on
    /// pipes. The terminal type is xterm whatever terminal runs the tests: under the TERM=dumb of
    /// a CI runner, readline scrolls long lines sideways instead of wrapping.
    pub fn interactive(&self, dest: &str, extra: &[&str]) -> anyhow::Result<Interactive> {
        let mut child = self
            .interactive_command(dest, extra)?
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting ssh -tt")?;
        let (Some(input), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("ssh -tt started without its pipes");
        };
        Ok(Interactive {
            child,
            input: Box::new(input),
            output: Collected::spawn(stdout),
            errors: Collected::spawn(stderr),
            pty: None,
        })
    }

    /// Like [`Lab::interactive`], with ssh on a terminal of its own of `rows` × `cols` (its
    /// controlling terminal), so that [`Interactive::resize`] reaches it as a window change.
    pub fn interactive_on_pty(
        &self,
        dest: &str,
        extra: &[&str],
        rows: u16,
        cols: u16,
    ) -> anyhow::Result<Interactive> {
        let mut cmd = self.interactive_command(dest, extra)?;
        let (master, slave) = openpty(rows, cols)?;
        let slave_dup = || slave.try_clone().context("duplicating the terminal");
        cmd.stdin(slave_dup()?)
            .stdout(slave_dup()?)
            .stderr(slave_dup()?);
        // SAFETY: only async-signal-safe calls (setsid, ioctl) between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().context("starting ssh -tt on a terminal")?;
        // Our copies of the terminal's slave side: once ssh exits, reading the master ends.
        drop(cmd);
        drop(slave);
        Ok(Interactive {
            child,
            input: Box::new(master.try_clone()?),
            output: Collected::spawn(master.try_clone()?),
            errors: Collected::spawn(std::io::empty()),
            pty: Some(master),
        })
    }

    fn interactive_command(
        &self,
        dest: &str,
        extra: &[&str],
    ) -> anyhow::Result<std::process::Command> {
        let args: Vec<&str> = ["-tt"].iter().chain(extra).copied().collect();
        let mut cmd = self.ssh_via_bastion(dest, &args)?;
        cmd.env("TERM", "xterm");
        Ok(cmd)
    }
}

impl Interactive {
    /// Types `keys` (written at once and flushed).
    pub fn send(&mut self, keys: &[u8]) -> anyhow::Result<()> {
        self.input.write_all(keys).context("typing at ssh")?;
        self.input.flush().context("typing at ssh")
    }

    /// Waits until `needle` has been printed.
    pub fn wait_for(&self, needle: &str) -> anyhow::Result<()> {
        self.wait_for_times(needle, 1)
    }

    /// Waits until `needle` has been printed at least `times` times.
    pub fn wait_for_times(&self, needle: &str, times: usize) -> anyhow::Result<()> {
        self.output
            .wait_for_times(needle, times, LIMIT)
            .map_err(|e| anyhow::anyhow!("{e}; ssh's stderr: {:?}", self.errors.text()))
    }

    /// Waits until the output has been quiet for 150 ms (a program answering keys has
    /// answered), at most 5 s: a program that keeps printing is not an error here, the next
    /// [`Interactive::wait_for`] says whether what it printed was right.
    pub fn settle(&self) {
        const QUIET: std::time::Duration = std::time::Duration::from_millis(150);
        let mut last = self.output.len();
        let mut quiet = std::time::Instant::now();
        let _ = eventually("quiet output", std::time::Duration::from_secs(5), || {
            let now = self.output.len();
            if now != last {
                last = now;
                quiet = std::time::Instant::now();
            }
            (quiet.elapsed() >= QUIET).then_some(())
        });
    }

    /// What ssh printed so far (on a terminal, with its stderr).
    pub fn output(&self) -> String {
        self.output.text()
    }

    /// What ssh printed on its stderr so far.
    pub fn errors(&self) -> String {
        self.errors.text()
    }

    /// Resizes ssh's terminal (only on [`Lab::interactive_on_pty`]): the kernel signals ssh,
    /// which sends a window change.
    pub fn resize(&self, rows: u16, cols: u16) -> anyhow::Result<()> {
        let Some(pty) = &self.pty else {
            bail!("ssh has no terminal of its own to resize");
        };
        let ws = winsize(rows, cols);
        // SAFETY: TIOCSWINSZ on our terminal's master with a valid winsize.
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(std::io::Error::last_os_error()).context("resizing the terminal");
        }
        Ok(())
    }

    /// Waits for ssh to exit and for its output to be read to the end (what it printed last,
    /// such as a refusal before it hangs up, is then in [`Interactive::output`]); stdin stays
    /// open until then. A child that does not exit within [`LIMIT`] is killed.
    pub fn wait_exit(&mut self) -> anyhow::Result<ExitStatus> {
        let status = eventually("ssh's exit", LIMIT, || self.child.try_wait().ok().flatten());
        let status = match status {
            Ok(status) => status,
            Err(e) => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("{e}; it showed: {:?}{:?}", self.output(), self.errors());
            }
        };
        self.output.wait_ended(LIMIT)?;
        self.errors.wait_ended(LIMIT)?;
        Ok(status)
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn winsize(rows: u16, cols: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

/// A new pseudo-terminal of `rows` × `cols`: (master, slave).
fn openpty(rows: u16, cols: u16) -> anyhow::Result<(File, File)> {
    let (mut master, mut slave) = (0, 0);
    let ws = winsize(rows, cols);
    // SAFETY: openpty writes two fds we then own; the winsize outlives the call.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("openpty");
    }
    // SAFETY: both fds were just opened for us and are owned by nothing else.
    Ok(unsafe { (File::from_raw_fd(master), File::from_raw_fd(slave)) })
}
