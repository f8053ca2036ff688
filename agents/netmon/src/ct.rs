//! Conntrack mode: the kernel's connection tracking table, dumped over netlink (what
//! `conntrack -L` prints), read as counter readings for the delta accounting.
//!
//! A connection's original direction starts at the local end that opened it: TX is the
//! original direction's counters, RX the reply's. The destination is the reply's source,
//! which is the endpoint that really answered (after kube-proxy's DNAT of a Service address).

use std::path::Path;

use crate::NetmonError;
use crate::ctdump::{CtSocket, Dump};
use crate::flows::Reading;

const ACCT_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_acct";
const TIMESTAMP_SYSCTL: &str = "/proc/sys/net/netfilter/nf_conntrack_timestamp";

/// An open conntrack netlink socket (in the network namespace of the thread that opened it).
pub struct ConntrackReader {
    socket: CtSocket,
}

impl ConntrackReader {
    /// Opens the socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, NetmonError> {
        Ok(Self {
            socket: CtSocket::open()?,
        })
    }

    /// Streams the table: one reading per tracked connection, parsed as each netlink
    /// datagram arrives (see [`crate::ctdump`]); an error ends the dump early. Feed it to
    /// [`crate::flows::FlowTable::try_poll`], which keeps what a cut dump did not reach.
    pub fn dump(&self) -> Result<Dump<'_>, NetmonError> {
        self.socket.dump()
    }

    /// The whole table at once (for tests and small tables; the agent streams [`Self::dump`]).
    pub fn read(&self) -> Result<Vec<Reading>, NetmonError> {
        self.dump()?.collect()
    }
}

/// Turns on `nf_conntrack_acct` (per-connection byte and packet counters) in the calling
/// thread's network namespace. Returns true when it was off. Connections that started while
/// it was off have no counters.
pub fn enable_accounting() -> Result<bool, NetmonError> {
    enable_accounting_at(Path::new(ACCT_SYSCTL))
}

/// Turns on `nf_conntrack_timestamp` (each entry's start time, which tells a new connection
/// from an old one whose id it reuses). Returns true when it was off.
pub fn enable_timestamps() -> Result<bool, NetmonError> {
    enable_accounting_at(Path::new(TIMESTAMP_SYSCTL))
}

fn enable_accounting_at(path: &Path) -> Result<bool, NetmonError> {
    let sysctl = |e: std::io::Error| {
        NetmonError::Conntrack(format!(
            "{}: {e} (is the nf_conntrack module loaded?)",
            path.display()
        ))
    };
    let current = std::fs::read_to_string(path).map_err(sysctl)?;
    if current.trim() == "1" {
        return Ok(false);
    }
    std::fs::write(path, "1\n").map_err(sysctl)?;
    Ok(true)
}

/// Moves the calling thread into the network namespace at `path` (a `/var/run/netns/<name>`
/// or `/proc/<pid>/ns/net` file). Sockets opened afterwards by this thread live there.
pub fn enter_netns(path: &Path) -> Result<(), NetmonError> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)
        .map_err(|e| NetmonError::Netns(format!("opening {}: {e}", path.display())))?;
    // SAFETY: setns on a valid namespace file descriptor affects only the calling thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(NetmonError::Netns(format!(
            "entering {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounting_is_switched_on_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nf_conntrack_acct");
        std::fs::write(&path, "0\n").unwrap();
        assert!(enable_accounting_at(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "1\n");
        assert!(!enable_accounting_at(&path).unwrap());
        let err = enable_accounting_at(&dir.path().join("missing")).unwrap_err();
        assert!(err.to_string().contains("nf_conntrack module"), "{err}");
    }
}
