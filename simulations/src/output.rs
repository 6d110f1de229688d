//! A run's report as a Markdown table row, CSV files and SVG plots of its metrics over time.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use crate::Report;

pub const TABLE_HEADER: &str = "| scenario | nodes | jobs | DAGs | done | makespan h | lower bound h | ratio | ratio at mean speed | extra starts | concurrent dup. | claim latency p50/p99 s | gossip kbit/s/node (mean/max) | converge after heal s | events | events/s | wall s |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|";

/// One row of [`TABLE_HEADER`].
pub fn table_row(scenario: &str, r: &Report, wall_s: f64) -> String {
    let pct = |x: u64| 100.0 * x as f64 / r.jobs.max(1) as f64;
    format!(
        "| {scenario} | {} | {} | {} | {} | {:.2} | {:.2} | {:.3} | {:.3} | {} ({:.2}%) | {} ({:.2}%) | {:.1}/{:.1} | {:.1}/{:.1} | {} | {} | {:.0} | {:.0} |",
        r.nodes,
        r.jobs,
        r.dags,
        r.done,
        r.makespan_ms as f64 / 3.6e6,
        r.lower_bound_ms as f64 / 3.6e6,
        r.makespan_ms as f64 / r.lower_bound_ms.max(1) as f64,
        r.makespan_ms as f64 / r.lower_bound_mean_speed_ms.max(1) as f64,
        r.extra_starts,
        pct(r.extra_starts),
        r.concurrent_duplicates,
        pct(r.concurrent_duplicates),
        r.claim_latency_ms.p50 as f64 / 1000.0,
        r.claim_latency_ms.p99 as f64 / 1000.0,
        r.gossip_bytes_per_node_s * 8.0 / 1000.0,
        r.gossip_bytes_per_node_s_max * 8.0 / 1000.0,
        r.converge_after_heal_ms.map_or("-".to_string(), |ms| format!("{:.1}", ms as f64 / 1000.0)),
        r.events,
        r.events as f64 / wall_s.max(1e-9),
        wall_s,
    )
}

/// Writes `NAME-metrics.csv` (one row per sample), `NAME-summary.csv` and `NAME-*.svg` into `dir`.
pub fn write(dir: &Path, name: &str, r: &Report, wall_s: f64) -> anyhow::Result<Vec<std::path::PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    let mut csv =
        String::from("t_s,done,running,up_nodes,gossip_bytes_per_node_s,starts,concurrent_duplicates,events\n");
    for s in &r.samples {
        writeln!(
            csv,
            "{:.0},{},{},{},{:.1},{},{},{}",
            s.t_s, s.done, s.running, s.up_nodes, s.gossip_bytes_per_node_s, s.starts, s.duplicates, s.events
        )?;
    }
    let path = dir.join(format!("{name}-metrics.csv"));
    std::fs::write(&path, csv)?;
    written.push(path);
    let summary = format!(
        "seed,nodes,jobs,dags,done,failed,makespan_ms,lower_bound_ms,lower_bound_mean_speed_ms,starts,extra_starts,concurrent_duplicates,stopped,wasted_ms,claim_latency_mean_ms,claim_latency_p50_ms,claim_latency_p99_ms,claim_latency_max_ms,gossip_bytes_per_node_s,gossip_bytes_per_node_s_max,converge_after_heal_ms,converge_at_end_ms,events,wall_s,crashes,joins,leaves,outputs_lost,violations\n\
         {},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.0},{},{},{},{:.1},{:.1},{},{},{},{:.1},{},{},{},{},{}\n",
        r.seed,
        r.nodes,
        r.jobs,
        r.dags,
        r.done,
        r.failed,
        r.makespan_ms,
        r.lower_bound_ms,
        r.lower_bound_mean_speed_ms,
        r.starts,
        r.extra_starts,
        r.concurrent_duplicates,
        r.stopped,
        r.wasted_ms,
        r.claim_latency_ms.mean,
        r.claim_latency_ms.p50,
        r.claim_latency_ms.p99,
        r.claim_latency_ms.max,
        r.gossip_bytes_per_node_s,
        r.gossip_bytes_per_node_s_max,
        r.converge_after_heal_ms.map_or(String::new(), |v| v.to_string()),
        r.converge_at_end_ms.map_or(String::new(), |v| v.to_string()),
        r.events,
        wall_s,
        r.crashes,
        r.joins,
        r.leaves,
        r.outputs_lost,
        r.violations.len(),
    );
    let path = dir.join(format!("{name}-summary.csv"));
    std::fs::write(&path, summary)?;
    written.push(path);
    let t_h: Vec<f64> = r.samples.iter().map(|s| s.t_s / 3600.0).collect();
    let plots: [(&str, &str, Vec<f64>); 4] = [
        ("progress", "jobs done", r.samples.iter().map(|s| s.done as f64).collect()),
        ("running", "jobs running", r.samples.iter().map(|s| s.running as f64).collect()),
        (
            "gossip",
            "kbit/s received per node",
            r.samples.iter().map(|s| s.gossip_bytes_per_node_s * 8.0 / 1000.0).collect(),
        ),
        ("nodes", "nodes up", r.samples.iter().map(|s| s.up_nodes as f64).collect()),
    ];
    for (what, label, ys) in plots {
        let path = dir.join(format!("{name}-{what}.svg"));
        plot(&path, &format!("{name}: {label}"), label, &t_h, &ys)?;
        written.push(path);
    }
    Ok(written)
}

fn plot(path: &Path, title: &str, label: &str, xs: &[f64], ys: &[f64]) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (800, 360)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let x_max = xs.iter().copied().fold(0.0f64, f64::max).max(1e-3);
    let y_max = ys.iter().copied().fold(0.0f64, f64::max).max(1e-3) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart.configure_mesh().x_desc("simulated time (h)").y_desc(label).draw().map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(xs.iter().copied().zip(ys.iter().copied()), &BLUE))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}
