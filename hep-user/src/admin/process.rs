//! `hepfwd_build_info` and the standard process metrics (`process_resident_memory_bytes`,
//! `process_open_fds`, `process_cpu_seconds_total`, `process_start_time_seconds`), read
//! from `/proc/self` at each scrape. A value that cannot be read is left out.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// The version the binary was built from.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One reading of the process's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessReading {
    /// Resident memory, bytes.
    pub resident_memory_bytes: Option<f64>,
    /// Open file descriptors.
    pub open_fds: Option<f64>,
    /// User + system CPU time, seconds.
    pub cpu_seconds: Option<f64>,
    /// Start time, seconds since the Unix epoch.
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), 100 if it cannot be read.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf(3) takes a constant name and only returns a value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The fields of `/proc/self/stat` after the command (which may hold spaces and
/// parentheses): the first is field 3, `state`.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().collect())
}

/// Seconds since the epoch at boot (`btime` of `/proc/stat`).
fn boot_time(proc_stat: &str) -> Option<f64> {
    proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<f64>().ok())
}

/// Resident memory in bytes (`VmRSS` of `/proc/self/status`, in KiB there).
fn vm_rss_bytes(status: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|kib| kib * 1024.0)
}

/// Reads the process's figures from `/proc`.
pub fn read() -> ProcessReading {
    let ticks = clock_ticks();
    let stat = std::fs::read_to_string("/proc/self/stat").ok();
    let fields = stat.as_deref().and_then(stat_fields);
    // Field n (1-based, as proc(5) numbers them) is fields[n - 3].
    let field = |n: usize| -> Option<f64> {
        fields
            .as_ref()
            .and_then(|f| f.get(n - 3))
            .and_then(|v| v.parse::<f64>().ok())
    };
    let cpu_seconds = match (field(14), field(15)) {
        (Some(utime), Some(stime)) => Some((utime + stime) / ticks),
        _ => None,
    };
    let start_time_seconds = match (
        field(22),
        std::fs::read_to_string("/proc/stat")
            .ok()
            .as_deref()
            .and_then(boot_time),
    ) {
        (Some(start), Some(btime)) => Some(btime + start / ticks),
        _ => None,
    };
    let resident_memory_bytes = std::fs::read_to_string("/proc/self/status")
        .ok()
        .as_deref()
        .and_then(vm_rss_bytes);
    // The directory's own descriptor is one of the entries.
    let open_fds = std::fs::read_dir("/proc/self/fd")
        .ok()
        .map(|d| d.count().saturating_sub(1) as f64);
    ProcessReading {
        resident_memory_bytes,
        open_fds,
        cpu_seconds,
        start_time_seconds,
    }
}

/// Writes `hepfwd_build_info` and the process metrics on each scrape.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        {
            let mut me = encoder.encode_descriptor(
                "hepfwd_build_info",
                "The version hepfwd was built from (always 1)",
                None,
                MetricType::Gauge,
            )?;
            let labels = [("version", VERSION)];
            ConstGauge::new(1i64).encode(me.encode_family(&labels)?)?;
        }
        let p = read();
        let gauges = [
            (
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                p.resident_memory_bytes,
            ),
            (
                "process_open_fds",
                "Number of open file descriptors",
                p.open_fds,
            ),
            (
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds",
                p.start_time_seconds,
            ),
        ];
        for (name, help, v) in gauges {
            if let Some(v) = v {
                let me = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
                ConstGauge::new(v).encode(me)?;
            }
        }
        if let Some(v) = p.cpu_seconds {
            let me = encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(v).encode(me)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_survive_a_command_with_spaces_and_parentheses() {
        let stat = "42 (a (b) c) S 1 42 42 0 -1 4194560 100 0 0 0 7 3 0 0 20 0 4 0 1234 1000 200";
        let f = stat_fields(stat).unwrap();
        assert_eq!(f[0], "S");
        assert_eq!(f[14 - 3], "7");
        assert_eq!(f[15 - 3], "3");
        assert_eq!(f[22 - 3], "1234");
    }

    #[test]
    fn boot_time_and_rss_are_read() {
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\nprocesses 9\n"),
            Some(1.7e9)
        );
        assert_eq!(
            vm_rss_bytes("Name:\tx\nVmRSS:\t   2048 kB\n"),
            Some(2048.0 * 1024.0)
        );
    }

    #[test]
    fn this_process_reads_plausibly() {
        let p = read();
        assert!(p.resident_memory_bytes.unwrap() > 0.0);
        assert!(p.open_fds.unwrap() >= 3.0);
        assert!(p.cpu_seconds.unwrap() >= 0.0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let start = p.start_time_seconds.unwrap();
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
