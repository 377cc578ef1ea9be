//! A VMM process's memory from /proc/PID/smaps: what the whole process
//! holds, and how much of that is guest RAM the guest has touched.

use std::path::PathBuf;

use crate::run::record::MemorySample;

#[derive(Debug, thiserror::Error)]
pub enum SmapsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no mapping of the guest's {0} KiB of RAM in the process")]
    NoGuestMapping(u64),
}

/// One mapping: its size and resident figures, in KiB.
#[derive(Debug, Default, Clone, PartialEq)]
struct Mapping {
    writable: bool,
    /// Copy-on-write (`p`) rather than shared (`s`).
    private: bool,
    path: String,
    size: u64,
    rss: u64,
    pss: u64,
}

/// A mapping header line: `start-end perms offset dev inode [path]`.
fn parse_header(line: &str) -> Option<Mapping> {
    let mut fields = line.split_whitespace();
    let range = fields.next()?;
    let (start, end) = range.split_once('-')?;
    u64::from_str_radix(start, 16).ok()?;
    u64::from_str_radix(end, 16).ok()?;
    let perms = fields.next()?;
    let path = fields.nth(3).unwrap_or("").to_string();
    Some(Mapping {
        writable: perms.as_bytes().get(1) == Some(&b'w'),
        private: perms.as_bytes().get(3) == Some(&b'p'),
        path,
        ..Default::default()
    })
}

/// A `Name:   value kB` line.
fn parse_field(line: &str) -> Option<(&str, u64)> {
    let (name, rest) = line.split_once(':')?;
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some((name, value))
}

fn parse_mappings(text: &str) -> Vec<Mapping> {
    let mut maps: Vec<Mapping> = Vec::new();
    for line in text.lines() {
        // Headers first: `addr-addr perms offset 08:01 ...` also has a colon.
        if let Some(m) = parse_header(line) {
            maps.push(m);
        } else if let (Some((name, value)), Some(m)) = (parse_field(line), maps.last_mut()) {
            match name {
                "Size" => m.size = value,
                "Rss" => m.rss = value,
                "Pss" => m.pss = value,
                _ => {}
            }
        }
    }
    maps
}

/// How much larger than its RAM region the guest's mapping may look: the
/// kernel merges an anonymous mapping with adjacent ones of the same
/// protection (a thread stack, a malloc chunk), so a 128 MiB guest can show
/// up as a 128.1 MiB VMA. The neighbours' few resident pages then count as
/// guest memory, a negligible error.
const MERGE_SLACK_KIB: u64 = 16 << 10;

/// Whether a mapping's backing can be guest RAM: anonymous, a memfd, or
/// (a restored VM) the snapshot's memory file mapped copy-on-write.
fn guest_backing(m: &Mapping) -> bool {
    let snapshot_file = format!("/{}", bulkhead_vmm::snapshot::MEMORY_FILE);
    m.path.is_empty()
        || m.path.starts_with("/memfd:")
        || (m.private && m.path.ends_with(&snapshot_file))
}

/// Which region a mapping holds, if it is guest RAM: writable, of a guest
/// backing, and the region's size give or take merged neighbours.
/// Nothing else in a VMM is that large and that shape.
fn guest_region(m: &Mapping, region_kib: &[u64]) -> Option<usize> {
    if !m.writable || !guest_backing(m) {
        return None;
    }
    region_kib
        .iter()
        .position(|r| m.size >= *r && m.size <= r + MERGE_SLACK_KIB)
}

/// Totals of an smaps text, with the mappings holding the RAM regions of
/// `region_kib` counted as guest RAM (one mapping per region).
pub fn parse(text: &str, region_kib: &[u64]) -> Result<MemorySample, SmapsError> {
    let maps = parse_mappings(text);
    let mut wanted = region_kib.to_vec();
    let mut guest_rss = 0;
    for m in &maps {
        if let Some(i) = guest_region(m, &wanted) {
            guest_rss += m.rss;
            wanted.remove(i);
        }
    }
    let guest_size_kib = region_kib.iter().sum();
    if wanted.len() == region_kib.len() && !region_kib.is_empty() {
        return Err(SmapsError::NoGuestMapping(guest_size_kib));
    }
    Ok(MemorySample {
        rss_kib: maps.iter().map(|m| m.rss).sum(),
        pss_kib: maps.iter().map(|m| m.pss).sum(),
        guest_rss_kib: guest_rss,
        guest_size_kib,
    })
}

/// The RAM regions of a `mem_mib` guest, in KiB, as the VMM lays them out.
pub fn guest_regions_kib(mem_mib: u64) -> Vec<u64> {
    bulkhead_vmm::vstate::memory::ram_regions(mem_mib << 20)
        .iter()
        .map(|(_, len)| *len as u64 >> 10)
        .collect()
}

/// Samples process `pid` (ourselves for `None`) holding a `mem_mib` guest.
/// For another VMM than ours (Firecracker), guest RAM is also one region
/// per RAM range below and above the 32-bit MMIO gap.
pub fn sample_vmm(pid: Option<u32>, mem_mib: u64) -> Result<MemorySample, SmapsError> {
    let path = match pid {
        Some(p) => PathBuf::from(format!("/proc/{p}/smaps")),
        None => PathBuf::from("/proc/self/smaps"),
    };
    let text =
        std::fs::read_to_string(&path).map_err(|source| SmapsError::Read { path, source })?;
    parse(&text, &guest_regions_kib(mem_mib))
}

/// A whole process's memory from smaps_rollup, in KiB.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rollup {
    pub rss: u64,
    pub pss: u64,
    /// Private_Clean + Private_Dirty: pages no other process maps. For a
    /// restored VM the snapshot's pages it only read are shared with the
    /// page cache (and other clones), so this is what the VM costs alone.
    pub private: u64,
}

/// The totals of an smaps_rollup text (absent fields count as 0).
pub fn parse_rollup(text: &str) -> Rollup {
    let mut r = Rollup::default();
    for (name, value) in text.lines().filter_map(parse_field) {
        match name {
            "Rss" => r.rss = value,
            "Pss" => r.pss = value,
            "Private_Clean" | "Private_Dirty" => r.private += value,
            _ => {}
        }
    }
    r
}

/// Process `pid`'s totals, from the cheaper smaps_rollup.
pub fn rollup(pid: u32) -> Result<Rollup, SmapsError> {
    let path = PathBuf::from(format!("/proc/{pid}/smaps_rollup"));
    let text =
        std::fs::read_to_string(&path).map_err(|source| SmapsError::Read { path, source })?;
    Ok(parse_rollup(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0a00000-55d0c0b00000 r-xp 00000000 08:01 1234                       /usr/bin/bulkhead
Size:               1024 kB
KernelPageSize:        4 kB
Rss:                 800 kB
Pss:                 400 kB
Shared_Clean:        800 kB
VmFlags: rd ex mr mw me dw
7f0000000000-7f0008000000 rw-p 00000000 00:00 0 
Size:             131072 kB
Rss:               40960 kB
Pss:               40960 kB
VmFlags: rd wr mr mw me ac sd
7f0010000000-7f0018000000 r--p 00000000 00:00 0 
Size:             131072 kB
Rss:                 100 kB
Pss:                 100 kB
7f1000000000-7f1000200000 rw-p 00000000 00:00 0                          [heap]
Size:               2048 kB
Rss:                1000 kB
Pss:                1000 kB
";

    #[test]
    fn splits_guest_ram_from_the_rest() {
        let s = parse(SMAPS, &[131072]).unwrap();
        assert_eq!(s.rss_kib, 800 + 40960 + 100 + 1000);
        assert_eq!(s.pss_kib, 400 + 40960 + 100 + 1000);
        // The read-only mapping of the same size is not guest RAM.
        assert_eq!(s.guest_rss_kib, 40960);
        assert_eq!(s.guest_size_kib, 131072);
        assert_eq!(s.overhead_rss_kib(), 1900);
        assert_eq!(s.overhead_pss_kib(), 1500);
    }

    #[test]
    fn no_guest_mapping_is_an_error() {
        assert!(matches!(
            parse(SMAPS, &[65536]),
            Err(SmapsError::NoGuestMapping(65536))
        ));
    }

    #[test]
    fn guest_ram_merged_with_a_neighbour_counts() {
        // What a 128 MiB guest looked like in bulkhead: 132 KiB merged in.
        let text = "\
7f1b90000000-7f1b98021000 rw-p 00000000 00:00 0 
Size:             131204 kB
Rss:               14512 kB
Pss:               14512 kB
7f1c00000000-7f1c03fdf000 rw-p 00000000 00:00 0 
Size:              65404 kB
Rss:                 300 kB
Pss:                 300 kB
";
        let s = parse(text, &[131072]).unwrap();
        assert_eq!(s.guest_rss_kib, 14512);
        assert_eq!(s.overhead_rss_kib(), 300);
        // A mapping far larger than the guest is not it.
        assert!(parse(text, &[65536]).is_err());
    }

    #[test]
    fn memfd_guest_ram_counts() {
        let text = "\
7f0000000000-7f0008000000 rw-s 00000000 00:01 77    /memfd:guest_mem (deleted)
Size:             131072 kB
Rss:                 512 kB
Pss:                 512 kB
";
        assert_eq!(parse(text, &[131072]).unwrap().guest_rss_kib, 512);
    }

    #[test]
    fn a_restored_guest_maps_its_snapshot_file_privately() {
        let text = "\
7f0000000000-7f0008000000 rw-p 00000000 fd:01 99    /tmp/t/templates/c1220af3f57e3f43/memory
Size:             131072 kB
Rss:                9000 kB
Pss:                3000 kB
7f1000000000-7f1008000000 rw-s 00000000 fd:01 98    /tmp/other/memory
Size:             131072 kB
Rss:                 100 kB
Pss:                 100 kB
7f2000000000-7f2008000000 rw-p 00000000 fd:01 97    /tmp/t/notes
Size:             131072 kB
Rss:                 100 kB
Pss:                 100 kB
";
        let s = parse(text, &[131072]).unwrap();
        assert_eq!(s.guest_rss_kib, 9000);
        // A shared mapping or another file is never guest RAM.
        let others: String = text.lines().skip(4).map(|l| format!("{l}\n")).collect();
        assert!(parse(&others, &[131072]).is_err());
    }

    #[test]
    fn rollup_sums_private_pages() {
        let text = "\
55d0c0a00000-7ffd5c9f6000 ---p 00000000 00:00 0                          [rollup]
Rss:               20480 kB
Pss:               12000 kB
Pss_Anon:           4000 kB
Shared_Clean:      12000 kB
Private_Clean:      1024 kB
Private_Dirty:      7000 kB
Referenced:        20000 kB
";
        assert_eq!(
            parse_rollup(text),
            Rollup {
                rss: 20480,
                pss: 12000,
                private: 8024
            }
        );
        assert_eq!(parse_rollup("garbage\n"), Rollup::default());
    }

    #[test]
    fn regions_follow_the_vmm_layout() {
        assert_eq!(guest_regions_kib(128), vec![128 * 1024]);
        let big = guest_regions_kib(4096);
        assert_eq!(big.len(), 2);
        assert_eq!(big.iter().sum::<u64>(), 4096 * 1024);
    }

    #[test]
    fn reads_our_own_process() {
        // Our process has no guest: the rollup works, the full sample says
        // what is missing.
        let me = std::process::id();
        let r = rollup(me).unwrap();
        assert!(r.pss > 0);
        assert!(r.private > 0 && r.private <= r.rss);
        assert!(matches!(
            sample_vmm(None, 128),
            Err(SmapsError::NoGuestMapping(_))
        ));
    }
}
