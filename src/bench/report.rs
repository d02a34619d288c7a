//! The benchmark's report: per image, network and mode the median and spread of the time to
//! ready and what crossed the network; a table on the terminal, `coldstart.json`, and a chart
//! (`coldstart.svg`, and `coldstart.png` when `rsvg-convert` is installed).

use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::{Deserialize, Serialize};

use super::run::RunResult;

/// What is known about an image before any run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageFacts {
    pub name: String,
    pub uncompressed_bytes: u64,
    pub gzip_bytes: u64,
    pub estargz_bytes: u64,
    pub erofs_bytes: u64,
    /// Total size of the files the workload read (from `lazypull mount --record`).
    pub workload_read_bytes: u64,
    /// The bytes of those files it read (reports written before ranges were recorded: 0).
    #[serde(default)]
    pub workload_range_bytes: u64,
    pub workload_files: u64,
}

/// Median and spread of a mode's runs.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub ready_median: f64,
    pub ready_min: f64,
    pub ready_max: f64,
    pub bytes_median: u64,
    pub requests_median: u64,
    pub round_trips_median: u64,
    pub peak_rss_kib_max: Option<u64>,
}

fn median<T: Copy + PartialOrd>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

impl Summary {
    /// The summary of `runs` (at least one).
    pub fn of(runs: &[RunResult]) -> Summary {
        let secs: Vec<f64> = runs.iter().map(|r| r.ready_secs).collect();
        Summary {
            ready_median: median(secs.clone()),
            ready_min: secs.iter().copied().fold(f64::INFINITY, f64::min),
            ready_max: secs.iter().copied().fold(0.0, f64::max),
            bytes_median: median(runs.iter().map(|r| r.bytes_fetched).collect()),
            requests_median: median(runs.iter().map(|r| r.requests).collect()),
            round_trips_median: median(runs.iter().map(|r| r.round_trips).collect()),
            peak_rss_kib_max: runs.iter().filter_map(|r| r.peak_rss_kib).max(),
        }
    }
}

/// One image, network and mode: every run and their summary.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Measured {
    pub image: String,
    pub network: String,
    pub mode: String,
    pub summary: Summary,
    pub runs: Vec<RunResult>,
}

/// The reports in `dirs` (each a `coldstart.json` of an earlier run) as one: their images
/// (once each) and results, in order; the largest run count. For runs made one network at a
/// time, whose figures belong in one table and chart.
pub fn merge(dirs: &[std::path::PathBuf]) -> Result<(Vec<ImageFacts>, Vec<Measured>, usize)> {
    #[derive(Deserialize)]
    struct Report {
        images: Vec<ImageFacts>,
        results: Vec<Measured>,
        runs: usize,
    }
    let (mut facts, mut measured, mut runs) = (Vec::<ImageFacts>::new(), Vec::new(), 0);
    for d in dirs {
        let path = d.join("coldstart.json");
        let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let r: Report = serde_json::from_slice(&text)
            .with_context(|| format!("{}: not a lazypull bench report", path.display()))?;
        for f in r.images {
            if !facts.iter().any(|g| g.name == f.name) {
                facts.push(f);
            }
        }
        measured.extend(r.results);
        runs = runs.max(r.runs);
    }
    Ok((facts, measured, runs))
}

/// `n` bytes for people.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Print the table and the target checks; write the JSON and the chart into `out`.
pub fn write(out: &Path, facts: &[ImageFacts], measured: &[Measured], runs: usize) -> Result<()> {
    println!();
    for f in facts {
        println!(
            "{}: {} uncompressed, gzip {}, eStargz {}, EROFS {}; the workload reads {} files \
             of {} in all, {} of it",
            f.name,
            human(f.uncompressed_bytes),
            human(f.gzip_bytes),
            human(f.estargz_bytes),
            human(f.erofs_bytes),
            f.workload_files,
            human(f.workload_read_bytes),
            human(f.workload_range_bytes)
        );
    }
    println!();
    println!(
        "| image | network | mode | ready (median, min–max of {runs}) | vs full pull | vs containerd full pull | fetched | requests | round trips | lazypull peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for m in measured {
        let s = &m.summary;
        let ratio = |baseline: &str| {
            measured
                .iter()
                .find(|f| f.image == m.image && f.network == m.network && f.mode == baseline)
                .map_or("–".into(), |f| {
                    format!("{:.0}%", 100.0 * s.ready_median / f.summary.ready_median)
                })
        };
        println!(
            "| {} | {} | {} | {:.2} s ({:.2}–{:.2}) | {} | {} | {} | {} | {} | {} |",
            m.image,
            m.network,
            m.mode,
            s.ready_median,
            s.ready_min,
            s.ready_max,
            ratio("full pull"),
            ratio("containerd full pull"),
            human(s.bytes_median),
            s.requests_median,
            s.round_trips_median,
            s.peak_rss_kib_max.map_or("–".into(), |k| human(k * 1024)),
        );
    }
    let json = serde_json::json!({ "images": facts, "results": measured, "runs": runs });
    std::fs::write(
        out.join("coldstart.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    let svg = out.join("coldstart.svg");
    chart(&svg, measured)?;
    let png = out.join("coldstart.png");
    match std::process::Command::new("rsvg-convert")
        .arg("-o")
        .arg(&png)
        .arg(&svg)
        .status()
    {
        Ok(s) if s.success() => {}
        _ => eprintln!("bench: rsvg-convert (Debian librsvg2-bin) not found: no PNG chart"),
    }
    println!();
    println!(
        "wrote {}, {} and {}",
        out.join("coldstart.json").display(),
        svg.display(),
        png.display()
    );
    Ok(())
}

/// Grouped bars: per image and network, the median time to ready of every mode, with the
/// min–max spread as an error bar.
fn chart(path: &Path, measured: &[Measured]) -> Result<()> {
    let mut groups: Vec<(String, String)> = Vec::new();
    for m in measured {
        let g = (m.image.clone(), m.network.clone());
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    let mut modes: Vec<String> = Vec::new();
    for m in measured {
        if !modes.contains(&m.mode) {
            modes.push(m.mode.clone());
        }
    }
    let top = measured
        .iter()
        .map(|m| m.summary.ready_max)
        .fold(0.0, f64::max)
        * 1.15;
    // About 18 px per bar, and empty slots on the right where the legend goes, clear of bars.
    let spare = 14;
    let width = (18 * (groups.len().max(1) * (modes.len() + 1) + spare) + 80).max(640) as u32;
    let root = SVGBackend::new(path, (width, 480)).into_drawing_area();
    let draw = |e: &dyn std::fmt::Display| anyhow::anyhow!("drawing the chart: {e}");
    root.fill(&WHITE).map_err(|e| draw(&e))?;
    let slots = groups.len() * (modes.len() + 1) + spare;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "cold start: time until the workload is ready",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(48)
        .y_label_area_size(56)
        .right_y_label_area_size(0)
        .build_cartesian_2d(0f64..slots as f64, 0f64..top.max(0.1))
        .map_err(|e| draw(&e))?;
    let per = modes.len() + 1;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Group names are drawn below by hand: the mesh puts its labels at "nice" points, which
        // need not fall on a group's middle slot.
        .x_labels(0)
        .y_desc("seconds (median, min–max)")
        .draw()
        .map_err(|e| draw(&e))?;
    let label_style =
        TextStyle::from(("sans-serif", 12).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
    for (g, (image, network)) in groups.iter().enumerate() {
        let middle = (g * per) as f64 + modes.len() as f64 / 2.0;
        let (x, y) = chart.backend_coord(&(middle, 0.0));
        root.draw(&Text::new(
            format!("{image} {network}"),
            (x, y + 8),
            label_style.clone(),
        ))
        .map_err(|e| draw(&e))?;
    }
    for (k, mode) in modes.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let bars: Vec<(f64, &Measured)> = measured
            .iter()
            .filter(|m| &m.mode == mode)
            .filter_map(|m| {
                let g = groups
                    .iter()
                    .position(|g| g.0 == m.image && g.1 == m.network)?;
                Some(((g * per + k) as f64, m))
            })
            .collect();
        chart
            .draw_series(bars.iter().map(|(x, m)| {
                Rectangle::new(
                    [(*x + 0.1, 0.0), (*x + 0.9, m.summary.ready_median)],
                    color.filled(),
                )
            }))
            .map_err(|e| draw(&e))?
            .label(mode.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        chart
            .draw_series(bars.iter().map(|(x, m)| {
                ErrorBar::new_vertical(
                    x + 0.5,
                    m.summary.ready_min,
                    m.summary.ready_median,
                    m.summary.ready_max,
                    BLACK.stroke_width(1),
                    6,
                )
            }))
            .map_err(|e| draw(&e))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(|e| draw(&e))?;
    root.present().map_err(|e| draw(&e))?;
    Ok(())
}
