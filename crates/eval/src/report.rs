//! A comparison written out for people and programs: `report.md`, `results.json`,
//! `per_query.csv` and PNG charts.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use crate::compare::Comparison;

/// Where a TrueType font for the charts' text is looked for, after `$CLOZE_FONT`.
const FONT_PATHS: [&str; 4] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/Library/Fonts/Arial.ttf",
];
const FONT: &str = "sans-serif";
const COLORS: [RGBColor; 6] = [
    RGBColor(90, 90, 90),
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
];

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "no TrueType font for the charts: set CLOZE_FONT to a .ttf file, or install one \
         (Debian: fonts-dejavu-core)"
    )]
    NoFont,
    #[error("drawing {path}: {message}")]
    Chart { path: PathBuf, message: String },
}

/// Writes the report of `comparison` into `dir` (created if needed): `report.md` (the table
/// and what the charts show), `results.json` (`comparison` with `settings`), `per_query.csv`
/// (every query's score per run and metric, with its text) and the charts `metrics.png` (each
/// metric's mean per run with its 95% confidence interval) and `difference-<run>.png` (per
/// query, the first metric's difference from the baseline, sorted). Returns the files written.
pub fn write_report(
    comparison: &Comparison,
    query_texts: &HashMap<String, String>,
    settings: &serde_json::Value,
    dir: &Path,
) -> Result<Vec<PathBuf>, ReportError> {
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io { path: dir.into(), source })?;
    let write = |name: &str, content: &str| {
        let path = dir.join(name);
        std::fs::write(&path, content)
            .map_err(|source| ReportError::Io { path: path.clone(), source })?;
        Ok::<_, ReportError>(path)
    };
    let mut written = Vec::new();
    let mut results = serde_json::to_value(comparison).expect("a comparison serializes");
    results["settings"] = settings.clone();
    written
        .push(write("results.json", &serde_json::to_string_pretty(&results).expect("serializes"))?);
    written.push(write("per_query.csv", &per_query_csv(comparison, query_texts))?);

    register_chart_font()?;
    let chart = dir.join("metrics.png");
    draw_metrics(comparison, &chart)
        .map_err(|message| ReportError::Chart { path: chart.clone(), message })?;
    written.push(chart);
    let mut difference_charts = Vec::new();
    for run in 1..comparison.runs.len() {
        let path = dir.join(format!("difference-{}.png", file_name(&comparison.runs[run].name)));
        draw_difference(comparison, run, &path)
            .map_err(|message| ReportError::Chart { path: path.clone(), message })?;
        difference_charts.push(path.clone());
        written.push(path);
    }
    written.push(write("report.md", &markdown(comparison, settings, &difference_charts))?);
    Ok(written)
}

/// A run's name as part of a file name.
fn file_name(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

fn per_query_csv(comparison: &Comparison, query_texts: &HashMap<String, String>) -> String {
    let quote = |text: &str| format!("\"{}\"", text.replace('"', "\"\""));
    let mut csv = String::from("query,run,metric,value,difference_from_baseline,query_text\n");
    for (q, query) in comparison.query_ids().iter().enumerate() {
        let text = query_texts.get(query).map(String::as_str).unwrap_or("");
        for (r, run) in comparison.runs.iter().enumerate() {
            for (m, metric) in comparison.metrics.iter().enumerate() {
                // + 0.0 turns the -0.0 of an empty sum into 0.
                let value = comparison.scores(r, m)[q] + 0.0;
                let difference = value - comparison.scores(0, m)[q] + 0.0;
                let _ = writeln!(
                    csv,
                    "{},{},{metric},{value},{difference},{}",
                    quote(query),
                    quote(&run.name),
                    quote(text)
                );
            }
        }
    }
    csv
}

fn markdown(comparison: &Comparison, settings: &serde_json::Value, charts: &[PathBuf]) -> String {
    let mut md = String::from("# Evaluation report\n\n");
    let _ = writeln!(
        md,
        "{} judged queries; baseline **{}**. Differences are against the baseline, with queries \
         won / tied / lost and two-sided p-values of the paired t-test and of the paired \
         randomization test ({} trials, seed {}){}.\n",
        comparison.queries,
        comparison.baseline,
        comparison.options.trials,
        comparison.options.seed,
        if comparison.options.holm { ", Holm-Bonferroni corrected across runs" } else { "" }
    );
    let _ = writeln!(md, "| run | {} |", comparison.metrics.join(" | "));
    let _ = writeln!(md, "|---|{}", "---|".repeat(comparison.metrics.len()));
    for run in &comparison.runs {
        let cells: Vec<String> = run
            .metrics
            .iter()
            .map(|m| match &m.versus_baseline {
                None => format!("{:.4}", m.mean),
                Some(v) => {
                    let (t, random) = match (v.t_test_p_holm, v.randomization_p_holm) {
                        (Some(t), Some(r)) => (t, r),
                        _ => (v.t_test_p, v.randomization_p),
                    };
                    format!(
                        "{:.4} ({:+.4}; {}/{}/{}; t p={}; rand. p={})",
                        m.mean,
                        v.difference,
                        v.wins,
                        v.ties,
                        v.losses,
                        format_p(t),
                        format_p(random)
                    )
                }
            })
            .collect();
        let _ = writeln!(md, "| {} | {} |", run.name, cells.join(" | "));
    }
    md.push_str(
        "\n![Each metric's mean per run, with its 95% confidence interval](metrics.png)\n\n",
    );
    for (chart, run) in charts.iter().zip(&comparison.runs[1..]) {
        let name = chart.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let _ = writeln!(
            md,
            "![{} minus {} on {}, per query, sorted]({name})\n",
            run.name, comparison.baseline, comparison.metrics[0]
        );
    }
    md.push_str(
        "Per-query scores are in `per_query.csv`; everything above, with the settings, in \
                 `results.json`.\n\n## Settings\n\n```json\n",
    );
    md.push_str(&serde_json::to_string_pretty(settings).expect("serializes"));
    md.push_str("\n```\n");
    md
}

/// p-values as people read them: small ones in scientific notation.
pub fn format_p(p: f64) -> String {
    if p < 0.001 {
        format!("{p:.1e}")
    } else {
        format!("{p:.3}")
    }
}

fn register_chart_font() -> Result<(), ReportError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let registered = REGISTERED.get_or_init(|| {
        let candidates = std::env::var_os("CLOZE_FONT")
            .map(PathBuf::from)
            .into_iter()
            .chain(FONT_PATHS.iter().map(PathBuf::from));
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                // plotters keeps fonts for the life of the program.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if register_font(FONT, FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    });
    if *registered {
        Ok(())
    } else {
        Err(ReportError::NoFont)
    }
}

/// One panel per metric, three to a row: a bar per run at its mean, with its 95% confidence
/// interval.
fn draw_metrics(comparison: &Comparison, path: &Path) -> Result<(), String> {
    const PER_ROW: usize = 3;
    let runs = comparison.runs.len();
    let panels = comparison.metrics.len();
    let (columns, rows) = (panels.min(PER_ROW), panels.div_ceil(PER_ROW));
    let panel_width = (80 + 130 * runs as u32).max(320);
    let size = (columns as u32 * panel_width, 40 + rows as u32 * 400);
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let title = format!("Mean over {} queries, with 95% confidence intervals", comparison.queries);
    let root = root.titled(&title, (FONT, 20)).map_err(|e| e.to_string())?;
    let areas = root.split_evenly((rows, columns));
    for (m, area) in areas.iter().enumerate().take(panels) {
        let top = comparison.runs.iter().map(|r| r.metrics[m].ci95[1]).fold(0.0, f64::max);
        let top = if top <= 0.0 { 1.0 } else { (top * 1.15).min(1.0).max(top) };
        // `into_segmented` makes a segment of each value from the first to the last.
        let mut chart = ChartBuilder::on(area)
            .caption(&comparison.metrics[m], (FONT, 18))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(50)
            .build_cartesian_2d((0..runs - 1).into_segmented(), 0.0..top)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(runs)
            .x_label_formatter(&|value| match value {
                SegmentValue::CenterOf(i) if *i < runs => comparison.runs[*i].name.clone(),
                _ => String::new(),
            })
            .y_label_formatter(&|y| format!("{:.2}", y + 0.0))
            .label_style((FONT, 13))
            .draw()
            .map_err(|e| e.to_string())?;
        for (r, run) in comparison.runs.iter().enumerate() {
            let result = &run.metrics[m];
            let color = COLORS[r % COLORS.len()];
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(r), 0.0), (SegmentValue::Exact(r + 1), result.mean)],
                color.mix(0.8).filled(),
            );
            bar.set_margin(0, 0, 20, 20);
            chart.draw_series(std::iter::once(bar)).map_err(|e| e.to_string())?;
            let center = SegmentValue::CenterOf(r);
            let whisker = ErrorBar::new_vertical(
                center.clone(),
                result.ci95[0].max(0.0),
                result.mean,
                result.ci95[1],
                BLACK.stroke_width(2),
                12,
            );
            chart.draw_series(std::iter::once(whisker)).map_err(|e| e.to_string())?;
            let label = format!("{:.3}", result.mean);
            let label = Text::new(label, (SegmentValue::Exact(r), result.ci95[1]), (FONT, 13));
            chart.draw_series(std::iter::once(label)).map_err(|e| e.to_string())?;
        }
    }
    root.present().map_err(|e| e.to_string())
}

/// Every query's difference from the baseline on the first metric, largest gain first.
fn draw_difference(comparison: &Comparison, run: usize, path: &Path) -> Result<(), String> {
    let (values, baseline) = (comparison.scores(run, 0), comparison.scores(0, 0));
    let mut differences: Vec<f64> = values.iter().zip(baseline).map(|(v, b)| v - b).collect();
    differences.sort_by(|a, b| b.total_cmp(a));
    let versus =
        comparison.runs[run].metrics[0].versus_baseline.as_ref().expect("not the baseline");
    let root = BitMapBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let caption = format!(
        "{} minus {}, {} per query: {:+.4} on average; {} better, {} same, {} worse",
        comparison.runs[run].name,
        comparison.baseline,
        comparison.metrics[0],
        versus.difference,
        versus.wins,
        versus.ties,
        versus.losses
    );
    let extent = differences.iter().map(|d| d.abs()).fold(0.0, f64::max).max(0.05) * 1.05;
    let count = differences.len().max(1);
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, (FONT, 17))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55)
        .build_cartesian_2d(0..count, -extent..extent)
        .map_err(|e| e.to_string())?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc("queries, sorted by difference")
        .y_desc("difference")
        .y_label_formatter(&|y| format!("{:.1}", y + 0.0))
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .draw()
        .map_err(|e| e.to_string())?;
    let gain = RGBColor(44, 160, 44);
    let loss = RGBColor(214, 39, 40);
    chart
        .draw_series(differences.iter().enumerate().map(|(i, d)| {
            let color = if *d >= 0.0 { gain } else { loss };
            Rectangle::new([(i, 0.0), (i + 1, *d)], color.filled())
        }))
        .map_err(|e| e.to_string())?;
    chart
        .draw_series(std::iter::once(PathElement::new(vec![(0, 0.0), (count, 0.0)], BLACK)))
        .map_err(|e| e.to_string())?;
    root.present().map_err(|e| e.to_string())
}
