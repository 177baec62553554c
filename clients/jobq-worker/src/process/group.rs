//! A tool run as the leader of its own process group, so that a stop
//! reaches everything it started (yt-dlp's ffmpeg too), signalled through
//! the `kill` system call and never after the group id may have been reused.

use std::io;
use std::process::ExitStatus;

use rustix::process::{Pid, Signal, WaitId, WaitIdOptions};
use tokio::process::{Child, ChildStderr, ChildStdout, Command};
use tokio::signal::unix::{SignalKind, signal};

/// What [`ProcessGroup::signal`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Signalled {
    /// The signal went to the group.
    Sent,
    /// Nothing was sent: the leader has been reaped, so the group id may
    /// already name someone else's group.
    LeaderReaped,
    /// The kernel refused (with this errno), e.g. no such group.
    Refused(i32),
}

/// Where the group's leader (the tool) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leader {
    Running,
    /// Exited but not reaped: a zombie, which keeps its pid and so the
    /// group id from being reused.
    Exited,
    Reaped,
}

/// A tool's process group, owning the tool's [`Child`].
///
/// Why signals are safe here: the kernel does not hand out a pid (nor so a
/// group id) while any process still holds it as its pid or group id — the
/// leader, even as a zombie, or any member. So the group is signalled only
/// while the leader is not reaped, and [`ProcessGroup::finish`] kills what
/// the tool left in its group *before* it reaps the leader: it waits for
/// the exit without reaping (`waitid` with `WNOWAIT`), sends SIGKILL, then
/// reaps. After that nothing is ever sent, from a method or from `Drop`.
///
/// Dropped before it was reaped (an aborted handler), the group gets
/// SIGKILL — one `kill` system call, which does not block — and the child
/// is reaped by tokio in the background (`kill_on_drop`).
#[derive(Debug)]
pub(crate) struct ProcessGroup {
    // Dropped after `Drop::drop` has signalled the group: while the child
    // is not reaped, its zombie keeps the group id.
    child: Child,
    pgid: Pid,
    leader: Leader,
}

impl ProcessGroup {
    /// Starts `command` as the leader of a new process group.
    pub(crate) fn spawn(command: &mut Command) -> io::Result<Self> {
        let child = command.process_group(0).kill_on_drop(true).spawn()?;
        // `id` is None only once the child is reaped, and nothing reaped it.
        let pgid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(Pid::from_raw)
            .ok_or_else(|| io::Error::other("the started tool has no pid"))?;
        Ok(Self {
            child,
            pgid,
            leader: Leader::Running,
        })
    }

    /// The leader's pid, which is also the group id.
    pub(crate) fn pid(&self) -> u32 {
        self.pgid.as_raw_nonzero().get().unsigned_abs()
    }

    /// The tool's stdout, if piped and not taken yet.
    pub(crate) fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The tool's stderr, if piped and not taken yet.
    pub(crate) fn take_stderr(&mut self) -> Option<ChildStderr> {
        self.child.stderr.take()
    }

    /// Whether a signal would still be sent: only until the leader is reaped.
    pub(crate) fn will_signal(&self) -> bool {
        self.leader != Leader::Reaped
    }

    /// Sends `signal` to the whole group, unless the leader is reaped.
    pub(crate) fn signal(&self, signal: Signal) -> Signalled {
        if !self.will_signal() {
            return Signalled::LeaderReaped;
        }
        match rustix::process::kill_process_group(self.pgid, signal) {
            Ok(()) => Signalled::Sent,
            Err(errno) => Signalled::Refused(errno.raw_os_error()),
        }
    }

    /// Waits until the leader has exited, without reaping it (so the group
    /// id stays its own). Cancel-safe.
    pub(crate) async fn wait_exited(&mut self) -> io::Result<()> {
        if self.leader != Leader::Running {
            return Ok(());
        }
        // Listen before looking, so an exit between the look and the wait
        // still wakes us.
        let mut child_signals = signal(SignalKind::child())?;
        loop {
            let exited = rustix::process::waitid(
                WaitId::Pid(self.pgid),
                WaitIdOptions::EXITED | WaitIdOptions::NOWAIT | WaitIdOptions::NOHANG,
            )
            .map_err(|errno| io::Error::from_raw_os_error(errno.raw_os_error()))?;
            if exited.is_some() {
                self.leader = Leader::Exited;
                return Ok(());
            }
            if child_signals.recv().await.is_none() {
                return Err(io::Error::other("SIGCHLD can no longer be received"));
            }
        }
    }

    /// Reaps the leader. Cancel-safe.
    async fn reap(&mut self) -> io::Result<ExitStatus> {
        let status = self.child.wait().await?;
        self.leader = Leader::Reaped;
        Ok(status)
    }

    /// Waits for the leader to exit, kills what it left running in its
    /// group (SIGKILL), then reaps it. Cancel-safe.
    pub(crate) async fn finish(&mut self) -> io::Result<ExitStatus> {
        self.wait_exited().await?;
        self.signal(Signal::KILL);
        self.reap().await
    }

    /// Stops the group: SIGTERM, up to `grace` for the leader to exit, then
    /// SIGKILL for all that is left, and the leader reaped. Returns its exit
    /// status and whether the grace ran out.
    pub(crate) async fn stop(
        &mut self,
        grace: std::time::Duration,
    ) -> io::Result<(ExitStatus, bool)> {
        self.signal(Signal::TERM);
        let timed_out = tokio::time::timeout(grace, self.wait_exited())
            .await
            .is_err();
        if timed_out {
            self.signal(Signal::KILL);
        }
        Ok((self.finish().await?, timed_out))
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // Runs before `child` is dropped, so an unreaped leader still pins
        // the group id. A reaped one means there is nothing to send.
        self.signal(Signal::KILL);
    }
}

#[cfg(test)]
mod tests {
    use std::process::Stdio;
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncBufReadExt, BufReader};

    use super::*;

    /// Generous: the machine may be busy.
    const DEADLINE: Duration = Duration::from_secs(30);

    fn sh(script: &str) -> ProcessGroup {
        let mut command = Command::new("sh");
        command
            .args(["-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        ProcessGroup::spawn(&mut command).expect("sh starts")
    }

    /// The first stdout line: a pid the script printed.
    async fn printed_pid(group: &mut ProcessGroup) -> u32 {
        let stdout = group.take_stdout().expect("piped stdout");
        let mut line = String::new();
        let mut reader = BufReader::new(stdout);
        tokio::time::timeout(DEADLINE, reader.read_line(&mut line))
            .await
            .expect("the script prints in time")
            .expect("stdout reads");
        line.trim().parse().expect("a pid")
    }

    /// Gone: no such process, or dead and not yet reaped by its new parent.
    fn is_gone(pid: u32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
        }
    }

    async fn until_gone(pid: u32) {
        let start = Instant::now();
        while !is_gone(pid) {
            assert!(start.elapsed() < DEADLINE, "process {pid} still alive");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn stop_kills_the_tool_and_what_it_started() {
        let mut group = sh("sleep 1000 & echo $!; sleep 1000");
        let grandchild = printed_pid(&mut group).await;
        assert!(!is_gone(grandchild));
        let (status, timed_out) = group.stop(DEADLINE).await.expect("stops");
        assert!(!timed_out, "sh exits on SIGTERM");
        assert!(!status.success());
        until_gone(grandchild).await;
        assert!(!group.will_signal());
        assert_eq!(group.signal(Signal::KILL), Signalled::LeaderReaped);
    }

    #[tokio::test]
    async fn a_tool_ignoring_sigterm_gets_sigkill_after_the_grace() {
        use std::os::unix::process::ExitStatusExt;

        // An ignored signal stays ignored in the children too.
        let mut group = sh("trap '' TERM; sleep 1000 & echo $!; wait");
        let grandchild = printed_pid(&mut group).await;
        let (status, timed_out) = group.stop(Duration::from_millis(300)).await.expect("stops");
        assert!(timed_out);
        assert_eq!(status.signal(), Some(9), "{status}");
        until_gone(grandchild).await;
    }

    #[tokio::test]
    async fn finish_kills_what_the_tool_left_running_then_never_signals_again() {
        let mut group = sh("sleep 1000 & echo $!; exit 3");
        let grandchild = printed_pid(&mut group).await;
        assert!(group.will_signal());
        let status = tokio::time::timeout(DEADLINE, group.finish())
            .await
            .expect("finishes in time")
            .expect("finishes");
        assert_eq!(status.code(), Some(3));
        until_gone(grandchild).await;
        // The leader is reaped: its group id may be reused, so a later stop
        // or the drop sends nothing.
        assert!(!group.will_signal());
        assert_eq!(group.signal(Signal::TERM), Signalled::LeaderReaped);
        let (status, _) = group.stop(Duration::from_millis(1)).await.expect("no-op");
        assert_eq!(status.code(), Some(3));
    }

    #[tokio::test]
    async fn a_leader_that_exited_unreaped_still_pins_its_group() {
        let mut group = sh("exit 0");
        tokio::time::timeout(DEADLINE, group.wait_exited())
            .await
            .expect("exits in time")
            .expect("waits");
        // A zombie: still signalled (harmlessly), the group id is its own.
        assert!(group.will_signal());
        assert_eq!(group.signal(Signal::KILL), Signalled::Sent);
        let status = group.finish().await.expect("reaps");
        assert!(status.success());
        assert!(!group.will_signal());
    }

    #[tokio::test]
    async fn dropping_an_unreaped_group_kills_it() {
        let mut group = sh("sleep 1000 & echo $!; wait");
        let grandchild = printed_pid(&mut group).await;
        let leader = group.pid();
        drop(group);
        until_gone(grandchild).await;
        until_gone(leader).await;
    }
}
