//! Worker processes on this host, one per slot `0..n`.
//!
//! A worker's command is the one after `--` with `{slot}` replaced by its
//! slot and `{port}` by `--base-port` plus its slot (distinct API ports,
//! data dirs, worker names); it also gets `DESA_AUTOSCALE_SLOT`. Scaling in
//! stops the highest slots first with SIGTERM, so a worker leaves the group
//! after writing and committing what it consumed, and SIGKILL only after
//! `stop_timeout` (the store's offsets keep even that exact). A worker that
//! exits on its own is started again; workers get SIGTERM when the scaler
//! dies, even by SIGKILL.

use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

pub struct Pool {
    command: Vec<String>,
    base_port: u16,
    stop_timeout: Duration,
    slots: Vec<Child>,
}

impl Pool {
    pub fn new(command: Vec<String>, base_port: u16, stop_timeout: Duration) -> Pool {
        Pool {
            command,
            base_port,
            stop_timeout,
            slots: Vec::new(),
        }
    }

    pub fn running(&self) -> u32 {
        self.slots.len() as u32
    }

    fn argv(&self, slot: usize) -> Vec<String> {
        let port = (self.base_port as usize + slot).to_string();
        self.command
            .iter()
            .map(|a| {
                a.replace("{slot}", &slot.to_string())
                    .replace("{port}", &port)
            })
            .collect()
    }

    fn spawn(&self, slot: usize) -> std::io::Result<Child> {
        let argv = self.argv(slot);
        // The scaler's stdout is its own (scripts read its address there);
        // a worker's goes to the scaler's stderr with the worker's logs.
        let stdout = std::io::stderr().as_fd().try_clone_to_owned()?;
        let mut command = Command::new(&argv[0]);
        command
            .args(&argv[1..])
            .env("DESA_AUTOSCALE_SLOT", slot.to_string())
            .stdout(stdout);
        // A scaler killed with SIGKILL leaves no worker behind: the kernel
        // sends each SIGTERM when the thread that started it (the control
        // loop) ends.
        // SAFETY: prctl(2) is async-signal-safe, as pre_exec requires.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let child = command.spawn()?;
        tracing::info!(slot, pid = child.id(), command = ?argv, "worker started");
        Ok(child)
    }

    /// Starts or stops workers until `n` run.
    pub fn scale_to(&mut self, n: u32) -> std::io::Result<()> {
        while self.slots.len() > n as usize {
            if let Some(child) = self.slots.pop() {
                self.stop(self.slots.len(), child);
            }
        }
        while self.slots.len() < n as usize {
            let child = self.spawn(self.slots.len())?;
            self.slots.push(child);
        }
        Ok(())
    }

    /// Starts again every worker that exited; returns how many did.
    pub fn restart_exited(&mut self) -> u32 {
        let mut restarted = 0;
        for slot in 0..self.slots.len() {
            let status = match self.slots[slot].try_wait() {
                Ok(Some(status)) => status,
                Ok(None) => continue,
                Err(e) => {
                    tracing::warn!(slot, error = %e, "cannot check a worker");
                    continue;
                }
            };
            tracing::warn!(slot, %status, "worker exited; starting it again");
            match self.spawn(slot) {
                Ok(child) => {
                    self.slots[slot] = child;
                    restarted += 1;
                }
                Err(e) => tracing::error!(slot, error = %e, "cannot start a worker"),
            }
        }
        restarted
    }

    fn stop(&self, slot: usize, mut child: Child) {
        let pid = child.id();
        // SAFETY: kill(2) on the pid of a child not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + self.stop_timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    tracing::info!(slot, pid, %status, "worker stopped");
                    return;
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                _ => break,
            }
        }
        tracing::warn!(slot, pid, timeout = ?self.stop_timeout, "worker did not stop; killed");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Stops every worker (on the scaler's own shutdown).
    pub fn stop_all(&mut self) {
        let _ = self.scale_to(0);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop_all();
    }
}
