//! CPU time and memory of a process, read from `/proc/PID/stat` and `/proc/PID/status`.
//!
//! `utime + stime` in `/proc/PID/stat` covers every thread of the process (live and exited), but
//! not its children; the unit is clock ticks (`sysconf(_SC_CLK_TCK)`, 100 on Linux), so a window
//! of a few seconds gives a per-call figure accurate to well under a percent.

use std::fs;
use std::io;

/// A process to watch, with the label the report uses for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Watched {
    pub label: String,
    pub pid: u32,
}

impl Watched {
    /// Parses `label=PID` or a bare `PID` (labelled `pid<PID>`).
    pub fn parse(spec: &str) -> Result<Watched, String> {
        let (label, pid) = match spec.split_once('=') {
            Some((label, pid)) => (label.trim().to_string(), pid.trim()),
            None => (format!("pid{}", spec.trim()), spec.trim()),
        };
        let pid: u32 = pid
            .parse()
            .map_err(|_| format!("bad --pid {spec:?}: want LABEL=PID"))?;
        if label.is_empty() {
            return Err(format!("bad --pid {spec:?}: empty label"));
        }
        Ok(Watched { label, pid })
    }
}

/// Clock ticks per second, the unit of `utime` and `stime`.
pub fn clock_ticks_per_sec() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
}

/// `utime + stime` of the process, in microseconds.
pub fn cpu_micros(pid: u32) -> io::Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let ticks = parse_stat_cpu_ticks(&stat).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unparsable /proc/{pid}/stat"),
        )
    })?;
    Ok(ticks.saturating_mul(1_000_000) / clock_ticks_per_sec())
}

/// `utime + stime` (fields 14 and 15) from the text of `/proc/PID/stat`.
pub fn parse_stat_cpu_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may itself hold spaces or ')'.
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace();
    // `after` starts at field 3 (state): utime is field 14, i.e. the 12th from here.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Current resident set size (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size (`VmHWM`).
    pub hwm_kib: u64,
}

/// `VmRSS` and `VmHWM` of the process.
pub fn memory(pid: u32) -> io::Result<Memory> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    Ok(parse_status_memory(&status))
}

/// `VmRSS` and `VmHWM` from the text of `/proc/PID/status` (0 when absent, as for zombies).
pub fn parse_status_memory(status: &str) -> Memory {
    let mut mem = Memory::default();
    for line in status.lines() {
        let field = |rest: &str| -> u64 {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap_or(0)
        };
        if let Some(rest) = line.strip_prefix("VmRSS:") {
            mem.rss_kib = field(rest);
        } else if let Some(rest) = line.strip_prefix("VmHWM:") {
            mem.hwm_kib = field(rest);
        }
    }
    mem
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields() {
        let stat = "1234 (tokio) runtime worker) S 1 1234 1234 0 -1 4194560 1000 0 0 0 \
                    250 75 0 0 20 0 9 0 100 123456789 2048 18446744073709551615";
        assert_eq!(parse_stat_cpu_ticks(stat), Some(325));
        assert_eq!(parse_stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn status_fields() {
        let status = "Name:\tx\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status_memory(status),
            Memory {
                rss_kib: 10240,
                hwm_kib: 20480
            }
        );
    }

    #[test]
    fn own_process_is_readable() {
        let me = std::process::id();
        assert!(cpu_micros(me).is_ok());
        assert!(memory(me).is_ok_and(|m| m.rss_kib > 0));
        assert_eq!(
            Watched::parse("gateway=12"),
            Ok(Watched {
                label: "gateway".into(),
                pid: 12
            })
        );
        assert!(Watched::parse("gateway=x").is_err());
        assert_eq!(Watched::parse("7").map(|w| w.label), Ok("pid7".into()));
    }
}
