//! [`XdpCounters`]: the XDP program's per-CPU counters, summed over the CPUs.

use aya::maps::{MapData, PerCpuArray};
use hep_common::abi::XdpCounter;

use super::XdpError;

/// One reading of every counter (sum over CPUs), indexed by [`XdpCounter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XdpCounters {
    /// The values, in [`XdpCounter`] index order.
    pub values: [u64; XdpCounter::COUNT],
}

impl XdpCounters {
    /// Reads and sums every counter of `map` (the `COUNTERS` per-CPU array).
    pub fn read(map: &PerCpuArray<&MapData, u64>) -> Result<Self, XdpError> {
        let mut values = [0u64; XdpCounter::COUNT];
        for c in XdpCounter::ALL {
            let per_cpu = map.get(&c.index(), 0)?;
            values[c.index() as usize] = per_cpu.iter().fold(0u64, |a, v| a.wrapping_add(*v));
        }
        Ok(XdpCounters { values })
    }

    /// The value of one counter.
    pub fn get(&self, c: XdpCounter) -> u64 {
        self.values[c.index() as usize]
    }

    /// `(name, value)` for every counter, in index order (for metrics).
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        XdpCounter::ALL.iter().map(|c| (c.name(), self.get(*c)))
    }

    /// What changed since `earlier` (wrapping, as the counters are monotonic u64).
    pub fn delta(&self, earlier: &XdpCounters) -> XdpCounters {
        let mut values = [0u64; XdpCounter::COUNT];
        for (i, v) in values.iter_mut().enumerate() {
            *v = self.values[i].wrapping_sub(earlier.values[i]);
        }
        XdpCounters { values }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_and_names() {
        let mut a = XdpCounters::default();
        let mut b = XdpCounters::default();
        a.values[XdpCounter::HepV3 as usize] = 5;
        b.values[XdpCounter::HepV3 as usize] = 12;
        b.values[XdpCounter::Received as usize] = u64::MAX;
        let d = b.delta(&a);
        assert_eq!(d.get(XdpCounter::HepV3), 7);
        assert_eq!(d.get(XdpCounter::Received), u64::MAX);
        let names: Vec<_> = d.iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), XdpCounter::COUNT);
        assert_eq!(names[0], "received");
    }
}
