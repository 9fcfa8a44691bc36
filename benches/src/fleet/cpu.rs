//! CPU time and memory from `/proc`: of this process's threads by name (the in-process
//! controller and the simulated proxies run on runtimes of their own, named apart), and of
//! another process, all its threads (the real `maille-proxy`).

use std::path::Path;
use std::time::Duration;

/// Clock ticks per second of `/proc/<pid>/stat` (USER_HZ, 100 on Linux whatever the kernel's HZ).
const TICKS_PER_SECOND: u64 = 100;

/// CPU time of one thread: nanoseconds on a CPU from `schedstat` (exact), else user + system
/// ticks from `stat` (10 ms steps).
fn task_cpu(task: &Path) -> Duration {
    if let Some(ns) = std::fs::read_to_string(task.join("schedstat"))
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
    {
        return Duration::from_nanos(ns);
    }
    stat_cpu(&task.join("stat")).unwrap_or_default()
}

/// User + system time of a `stat` file (a process's covers its threads, live and exited).
fn stat_cpu(path: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(path).ok()?;
    // The command name may hold spaces and parentheses: fields count from the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state is field 3 of the man page, utime 14 and stime 15.
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 1000 / TICKS_PER_SECOND))
}

/// CPU time so far of the threads of this process whose name starts with one of `prefixes`.
/// Threads that have exited are not counted: the runtimes measured keep theirs alive.
pub fn threads_cpu(prefixes: &[&str]) -> Duration {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Duration::ZERO;
    };
    tasks
        .filter_map(Result::ok)
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|c| prefixes.iter().any(|p| c.starts_with(p)))
        })
        .map(|t| task_cpu(&t.path()))
        .sum()
}

/// CPU time so far of process `pid`: its threads' exact times, or its `stat` when larger (a
/// thread that exited is only counted there).
pub fn process_cpu(pid: u32) -> Duration {
    let dir = Path::new("/proc").join(pid.to_string());
    let threads: Duration = std::fs::read_dir(dir.join("task"))
        .map(|tasks| {
            tasks
                .filter_map(Result::ok)
                .map(|t| task_cpu(&t.path()))
                .sum()
        })
        .unwrap_or_default();
    let stat = stat_cpu(&dir.join("stat")).unwrap_or_default();
    // `stat` counts in 10 ms ticks: only believe it over the threads' sum when it is ahead by
    // more than its own rounding.
    if stat > threads + Duration::from_millis(20) {
        stat
    } else {
        threads
    }
}

/// Resident and peak resident memory of process `pid` (`VmRSS`, `VmHWM`), in bytes.
pub fn rss(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kib| kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_thread_is_counted_by_name_and_in_the_process() {
        let own_before = process_cpu(std::process::id());
        let busy = std::thread::Builder::new()
            .name("cpu-test-busy".into())
            .spawn(|| {
                // Spin until /proc shows 20 ms for this thread's name (or give up after 5 s,
                // which the assertion below catches).
                let start = std::time::Instant::now();
                let mut x = 0u64;
                while threads_cpu(&["cpu-test-busy"]) < Duration::from_millis(20)
                    && start.elapsed() < Duration::from_secs(5)
                {
                    for _ in 0..100_000 {
                        x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
                    }
                }
                threads_cpu(&["cpu-test-busy"])
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(busy >= Duration::from_millis(20), "{busy:?}");
        assert!(threads_cpu(&["no-such-thread"]).is_zero());
        assert!(process_cpu(std::process::id()) >= own_before + Duration::from_millis(20));
        let (rss, peak) = rss(std::process::id()).unwrap();
        assert!(rss > 1 << 20 && peak >= rss, "{rss} {peak}");
    }

    #[test]
    fn stat_fields_are_read_after_the_name() {
        let dir = std::env::temp_dir().join(format!("fleet-stat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("stat");
        // A name with a space and a parenthesis; utime 250, stime 50 ticks.
        std::fs::write(
            &path,
            "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 1 0",
        )
        .unwrap();
        assert_eq!(stat_cpu(&path), Some(Duration::from_secs(3)));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
