//! The fleet bench's tables (Markdown, as pasted in `benches/README.md`): the simulated fleets,
//! the real proxy, and issue 15's goals next to the figures that answer them. Ratios are
//! against the full-table delivery of the same run (same fleet size). KB and MB are 1,000 and
//! 1,000,000 bytes, as in the goals.

use std::fmt::Write;
use std::time::Duration;

use super::{Delivery, FleetPhase, RealPhase, Report};

/// The value at quantile `q` (nearest rank) of `values`; zero when empty.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    let mut v = values.to_vec();
    v.sort();
    if v.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms >= 100.0 {
        format!("{ms:.0}")
    } else if ms >= 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.2}")
    }
}

fn kb(bytes: f64) -> String {
    let kb = bytes / 1000.0;
    if kb >= 100.0 {
        format!("{kb:.0}")
    } else {
        format!("{kb:.1}")
    }
}

fn ratio(x: f64, base: Option<f64>) -> String {
    match base {
        Some(b) if b > 0.0 => {
            let r = x / b;
            if r >= 0.1 {
                format!("{r:.2}×")
            } else if r >= 0.001 {
                format!("{r:.3}×")
            } else {
                format!("{r:.1e}×")
            }
        }
        _ => "—".into(),
    }
}

/// Per-phase medians of the fleet figures.
struct FleetFigures {
    published_p50: Duration,
    last_p50: Duration,
    last_p99: Duration,
    each_p50: Duration,
    bytes_per_proxy: f64,
    controller_cpu: Duration,
    rebuild: Duration,
    fleet_cpu: Duration,
}

fn fleet_figures(p: &FleetPhase) -> FleetFigures {
    let last: Vec<Duration> = p.changes.iter().map(|c| c.to_last).collect();
    let each: Vec<Duration> = p
        .changes
        .iter()
        .flat_map(|c| c.per_proxy.iter().copied())
        .collect();
    let median = |f: &dyn Fn(&super::FleetChange) -> Duration| {
        quantile(&p.changes.iter().map(f).collect::<Vec<_>>(), 0.5)
    };
    let mut bytes: Vec<u64> = p.changes.iter().map(|c| c.bytes).collect();
    bytes.sort_unstable();
    FleetFigures {
        published_p50: median(&|c| c.milestones.published),
        last_p50: quantile(&last, 0.5),
        last_p99: quantile(&last, 0.99),
        each_p50: quantile(&each, 0.5),
        bytes_per_proxy: bytes.get(bytes.len() / 2).copied().unwrap_or(0) as f64
            / p.proxies.max(1) as f64,
        controller_cpu: median(&|c| c.controller_cpu),
        rebuild: median(&|c| c.rebuild),
        fleet_cpu: median(&|c| c.fleet_cpu),
    }
}

struct RealFigures {
    visible_p50: Duration,
    visible_p99: Duration,
    proxy_cpu: Duration,
    controller_cpu: Duration,
    bytes: f64,
}

fn real_figures(p: &RealPhase) -> RealFigures {
    let pick = |f: &dyn Fn(&super::RealChange) -> Duration, q: f64| {
        quantile(&p.changes.iter().map(f).collect::<Vec<_>>(), q)
    };
    let mut bytes: Vec<u64> = p.changes.iter().map(|c| c.bytes).collect();
    bytes.sort_unstable();
    RealFigures {
        visible_p50: pick(&|c| c.visible, 0.5),
        visible_p99: pick(&|c| c.visible, 0.99),
        proxy_cpu: pick(&|c| c.proxy_cpu, 0.5),
        controller_cpu: pick(&|c| c.controller_cpu, 0.5),
        bytes: bytes.get(bytes.len() / 2).copied().unwrap_or(0) as f64,
    }
}

fn goal_line(out: &mut String, goal: &str, target: &str, measured: Option<(String, bool)>) {
    let (value, met) = match measured {
        Some((v, true)) => (v, "yes"),
        Some((v, false)) => (v, "**no**"),
        None => ("not measured".into(), "—"),
    };
    let _ = writeln!(out, "| {goal} | {target} | {value} | {met} |");
}

/// The report as Markdown.
pub fn markdown(r: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} services, {} endpoints each; full table {} KB as JSON; controller start (read the folder, first table) {:.1} s; this process's peak RSS {:.0} MB.\n",
        r.services,
        r.endpoints,
        kb(r.table_bytes as f64),
        r.controller_start.as_secs_f64(),
        r.bench_peak_rss as f64 / 1e6,
    );
    if !r.fleet.is_empty() {
        let _ = writeln!(
            out,
            "Simulated proxies (medians over the changes; p99 of few changes is their maximum):\n"
        );
        let _ = writeln!(out, "| proxies | delivery | changes | first table to all, s | controller published p50 ms | to last proxy p50 ms | to last proxy p99 ms | each proxy p50 ms | KB per proxy per change | controller CPU ms per change | controller rebuild ms | simulated proxies' CPU ms per change | vs full: p99, KB, controller CPU |");
        let _ = writeln!(
            out,
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for p in &r.fleet {
            let f = fleet_figures(p);
            let base = r
                .fleet
                .iter()
                .find(|b| b.proxies == p.proxies && b.delivery == Delivery::Full)
                .map(fleet_figures);
            let vs = match (&base, p.delivery) {
                (Some(b), Delivery::FullGzip | Delivery::Delta) => format!(
                    "{} / {} / {}",
                    ratio(f.last_p99.as_secs_f64(), Some(b.last_p99.as_secs_f64())),
                    ratio(f.bytes_per_proxy, Some(b.bytes_per_proxy)),
                    ratio(
                        f.controller_cpu.as_secs_f64(),
                        Some(b.controller_cpu.as_secs_f64())
                    ),
                ),
                (Some(_), Delivery::Full) => "1.00× (baseline)".into(),
                (None, _) => "—".into(),
            };
            let trouble = if p.errors + p.resyncs > 0 {
                format!(" ({} failed polls, {} resyncs)", p.errors, p.resyncs)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "| {} | {}{} | {} | {:.1}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                p.proxies,
                p.delivery.label(),
                trouble,
                p.changes.len(),
                p.first_contact.as_secs_f64(),
                if p.seeded {
                    format!(" ({} proxies; seeded)", p.first_sample)
                } else {
                    String::new()
                },
                ms(f.published_p50),
                ms(f.last_p50),
                ms(f.last_p99),
                ms(f.each_p50),
                kb(f.bytes_per_proxy),
                ms(f.controller_cpu),
                ms(f.rebuild),
                ms(f.fleet_cpu),
                vs,
            );
        }
        if r.fleet.iter().any(|p| p.seeded) {
            let _ = writeln!(
                out,
                "\n*Seeded*: the first table was fetched by the number of proxies shown (its time is theirs); then the whole fleet started from one decoded first table (shared until a proxy's own change replaces a part of it), each proxy polling and applying every change itself."
            );
        }
        out.push('\n');
    }
    if !r.real.is_empty() {
        let _ = writeln!(
            out,
            "The real `maille-proxy` (alone against the controller):\n"
        );
        let _ = writeln!(out, "| delivery | changes | first table, s | change visible p50 ms | p99 ms | proxy CPU ms per applied change | vs full-gzip | controller CPU ms per change | KB per change | RSS MB after | peak RSS MB | idle CPU ms/s |");
        let _ = writeln!(
            out,
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
        );
        let base = r
            .real
            .iter()
            .find(|p| p.delivery == Delivery::FullGzip)
            .map(real_figures);
        for p in &r.real {
            let f = real_figures(p);
            let _ = writeln!(
                out,
                "| {} | {} | {:.1} | {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} |",
                p.delivery.label(),
                p.changes.len(),
                p.first_table.as_secs_f64(),
                ms(f.visible_p50),
                ms(f.visible_p99),
                ms(f.proxy_cpu),
                ratio(
                    f.proxy_cpu.as_secs_f64(),
                    base.as_ref().map(|b| b.proxy_cpu.as_secs_f64())
                ),
                ms(f.controller_cpu),
                kb(f.bytes),
                p.rss as f64 / 1e6,
                p.peak_rss as f64 / 1e6,
                ms(p.idle_cpu_per_second),
            );
        }
        out.push('\n');
        let _ = writeln!(
            out,
            "Where the real proxy's change time goes (medians over the changes; from the rename):\n"
        );
        let _ = writeln!(out, "| delivery | controller published ms | long-poll answered ms | proxy applied (log line read) ms | proxy: parse ms | apply ms | compile and swap ms |");
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
        for p in &r.real {
            let pick = |f: &dyn Fn(&super::RealChange) -> Duration| {
                ms(quantile(&p.changes.iter().map(f).collect::<Vec<_>>(), 0.5))
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                p.delivery.label(),
                pick(&|c| c.milestones.published),
                pick(&|c| c.milestones.answered),
                pick(&|c| c.visible),
                pick(&|c| c.work.parse),
                pick(&|c| c.work.apply),
                pick(&|c| c.work.swap),
            );
        }
        out.push('\n');
    }

    let real_delta = r
        .real
        .iter()
        .find(|p| p.delivery == Delivery::Delta)
        .map(|p| (p, real_figures(p)));
    let largest_delta = r
        .fleet
        .iter()
        .filter(|p| p.delivery == Delivery::Delta)
        .max_by_key(|p| p.proxies)
        .map(|p| (p, fleet_figures(p)));
    let _ = writeln!(out, "Goals of issue 15 (delta delivery):\n");
    let _ = writeln!(out, "| goal | target | measured | met |");
    let _ = writeln!(out, "|---|---|---|---|");
    goal_line(
        &mut out,
        "controller CPU per change (one real proxy served)",
        "≤ 10 ms",
        real_delta.as_ref().map(|(_, f)| {
            (
                format!("{} ms", ms(f.controller_cpu)),
                f.controller_cpu <= Duration::from_millis(10),
            )
        }),
    );
    goal_line(
        &mut out,
        "bytes per proxy per change",
        "≤ 8 KB",
        largest_delta.as_ref().map(|(p, f)| {
            (
                format!("{} KB ({} proxies)", kb(f.bytes_per_proxy), p.proxies),
                f.bytes_per_proxy <= 8000.0,
            )
        }),
    );
    goal_line(
        &mut out,
        "change visible at a real proxy",
        "≤ 50 ms",
        real_delta.as_ref().map(|(_, f)| {
            (
                format!("p50 {} ms, p99 {} ms", ms(f.visible_p50), ms(f.visible_p99)),
                f.visible_p99 <= Duration::from_millis(50),
            )
        }),
    );
    goal_line(
        &mut out,
        "1,000 simulated proxies all have it",
        "≤ 250 ms p99",
        largest_delta
            .as_ref()
            .filter(|(p, _)| p.proxies >= 1000)
            .map(|(p, f)| {
                (
                    format!("{} ms ({} proxies)", ms(f.last_p99), p.proxies),
                    f.last_p99 <= Duration::from_millis(250),
                )
            }),
    );
    goal_line(
        &mut out,
        &format!("proxy RSS with {} services", r.services),
        "≤ 60 MB",
        real_delta.as_ref().map(|(p, _)| {
            (
                format!(
                    "{:.1} MB (peak {:.1} MB)",
                    p.rss as f64 / 1e6,
                    p.peak_rss as f64 / 1e6
                ),
                p.rss <= 60_000_000,
            )
        }),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&v, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&v, 0.99), Duration::from_millis(99));
        let few = [3, 1, 2].map(Duration::from_millis);
        assert_eq!(quantile(&few, 0.99), Duration::from_millis(3));
        assert_eq!(quantile(&few, 0.5), Duration::from_millis(2));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn ratios_keep_small_values_readable() {
        assert_eq!(ratio(1.0, Some(2.0)), "0.50×");
        assert_eq!(ratio(1.0, Some(500.0)), "0.002×");
        assert_eq!(ratio(1.0, Some(1e6)), "1.0e-6×");
        assert_eq!(ratio(1.0, Some(0.0)), "—");
    }
}
