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
    let mut csv = String::from(
        "t_s,done,running,up_nodes,gossip_bytes_per_node_s,starts,concurrent_duplicates,events,ledger_bytes_mean,ledger_bytes_max,ledger_facts_mean\n",
    );
    for s in &r.samples {
        writeln!(
            csv,
            "{:.0},{},{},{},{:.1},{},{},{},{:.0},{},{:.1}",
            s.t_s,
            s.done,
            s.running,
            s.up_nodes,
            s.gossip_bytes_per_node_s,
            s.starts,
            s.duplicates,
            s.events,
            s.ledger_bytes_mean,
            s.ledger_bytes_max,
            s.ledger_facts_mean
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
    let plots: [(&str, &str, Vec<f64>); 5] = [
        ("ledger", "ledger KB per node (mean)", r.samples.iter().map(|s| s.ledger_bytes_mean / 1000.0).collect()),
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

/// One chart of `column` of each run's `*-metrics.csv` against simulated time (days), a line per
/// run, labelled: several runs compared (the month's ledger with and without compaction).
pub fn plot_runs(runs: &[(String, std::path::PathBuf)], column: &str, out: &Path) -> anyhow::Result<()> {
    let mut series = Vec::new();
    for (label, file) in runs {
        let text = std::fs::read_to_string(file).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
        let col = header.iter().position(|h| *h == column).ok_or_else(|| {
            anyhow::anyhow!("{}: no column `{column}` (it has {})", file.display(), header.join(", "))
        })?;
        let points: Vec<(f64, f64)> = lines
            .filter_map(|l| {
                let v: Vec<&str> = l.split(',').collect();
                Some((v.first()?.parse::<f64>().ok()? / 86_400.0, v.get(col)?.parse::<f64>().ok()?))
            })
            .collect();
        series.push((label.clone(), points));
    }
    let x_max = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).fold(1e-3, f64::max);
    let y_max = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(1e-3, f64::max) * 1.05;
    let root = SVGBackend::new(out, (800, 400)).into_drawing_area();
    let e = |e: DrawingAreaErrorKind<_>| anyhow::anyhow!("{e}");
    root.fill(&WHITE).map_err(e)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("{column} per node"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(72)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(e)?;
    chart.configure_mesh().x_desc("simulated time (days)").y_desc(column).draw().map_err(e)?;
    for (i, (label, points)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color))
            .map_err(e)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart.configure_series_labels().background_style(WHITE).border_style(BLACK).draw().map_err(e)?;
    root.present().map_err(e)?;
    Ok(())
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
