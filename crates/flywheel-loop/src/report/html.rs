//! `flywheel report --html`: one self-contained page (inline CSS and SVG, no script, no network)
//! with the runs side by side on the iteration axis: held-out accuracy overall and per bucket,
//! kept and drawn samples, the quality metrics with the collapse watch's warnings marked, and the
//! time of each phase; the text tables follow.

use std::fmt::Write as _;

use super::{render, render_data, render_quality, RunReport};
use crate::events::{Event, QualityEvent};
use crate::quality::metrics::Quality;
use crate::quality::watch::Severity;

/// Series colours (colour-blind safe, Okabe & Ito), one per run or bucket in order.
const PALETTE: [&str; 8] = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"];

const WIDTH: f64 = 440.0;
/// Most characters of a series name in a chart's legend (at 6 px a character, one line of the plot).
const LEGEND_CHARS: usize = 52;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 30.0;
const BOTTOM: f64 = 36.0;

/// One line of a chart: its name and its points (iteration, value).
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// A mark on the iteration axis: the iteration, its label and whether it is critical.
struct Mark {
    x: f64,
    label: String,
    critical: bool,
}

/// A chart of one quality metric: its title, the metric, and how its values read.
type QualityChart = (&'static str, fn(&Quality) -> Option<f64>, Scale);

/// How a chart's values read.
#[derive(Clone, Copy)]
enum Scale {
    /// Shares shown as percentages, axis 0-100%.
    Percent,
    /// Shares 0-1, axis 0-1.
    Unit,
    /// Any non-negative values, axis from 0 to the largest.
    Count,
}

/// The page for `runs`.
pub fn render_html(runs: &[RunReport]) -> String {
    let mut body = String::new();
    let names: Vec<String> = runs.iter().map(|r| r.name.clone()).collect();
    let _ = writeln!(body, "<h1>flywheel report: {}</h1>", escape(&names.join(", ")));
    let _ = writeln!(body, "<p class=\"legend\">{}</p>", legend(&names));

    body.push_str("<h2>Held-out accuracy</h2>\n<div class=\"grid\">\n");
    let overall: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: r.name.clone(),
            points: r.rows.iter().map(|row| (row.iteration as f64, row.eval.accuracy)).collect(),
        })
        .collect();
    body.push_str(&line_chart("overall (greedy)", &overall, Scale::Percent, &marks(runs)));
    for run in runs {
        let mut buckets: Vec<&String> = run.rows.iter().flat_map(|r| r.eval.by_bucket.keys()).collect();
        buckets.sort_by_key(|b| (b.parse::<u64>().unwrap_or(u64::MAX), b.as_str()));
        buckets.dedup();
        let series: Vec<Series> = buckets
            .iter()
            .map(|b| Series {
                name: (*b).clone(),
                points: run
                    .rows
                    .iter()
                    .filter_map(|r| r.eval.by_bucket.get(*b).map(|a| (r.iteration as f64, *a)))
                    .collect(),
            })
            .collect();
        body.push_str(&line_chart(&format!("{}: per bucket", run.name), &series, Scale::Percent, &[]));
    }
    body.push_str("</div>\n");

    body.push_str("<h2>Samples</h2>\n<div class=\"grid\">\n");
    let sample_series = |f: fn(&crate::events::SampleEvent) -> f64| -> Vec<Series> {
        runs.iter()
            .map(|r| Series {
                name: r.name.clone(),
                points: r
                    .events
                    .iter()
                    .filter_map(|e| match e {
                        Event::Sample(s) => Some((s.iteration as f64, f(s))),
                        _ => None,
                    })
                    .collect(),
            })
            .collect()
    };
    body.push_str(&line_chart("samples drawn", &sample_series(|s| s.samples as f64), Scale::Count, &[]));
    body.push_str(&line_chart("samples kept", &sample_series(|s| s.kept as f64), Scale::Count, &[]));
    body.push_str(&line_chart("share of samples correct", &sample_series(|s| s.sample_accuracy), Scale::Percent, &[]));
    body.push_str("</div>\n");

    body.push_str("<h2>Quality of the samples (collapse watch)</h2>\n<div class=\"grid\">\n");
    let metrics: [QualityChart; 6] = [
        ("distinct-2", |q| q.distinct_2, Scale::Unit),
        ("self-BLEU-4", |q| q.self_bleu, Scale::Unit),
        ("near-duplicate rate", |q| q.near_duplicate_rate, Scale::Unit),
        ("moving-average TTR", |q| q.mattr, Scale::Unit),
        ("repetition (repeated 4-grams)", |q| q.repetition, Scale::Unit),
        ("answer entropy per problem (bits)", |q| q.answer_entropy, Scale::Count),
    ];
    for (title, metric, scale) in metrics {
        let series: Vec<Series> = runs
            .iter()
            .map(|r| Series {
                name: r.name.clone(),
                points: quality_events(r)
                    .filter_map(|q| Some((q.iteration as f64, metric(q.samples.as_ref()?)?)))
                    .collect(),
            })
            .collect();
        body.push_str(&line_chart(title, &series, scale, &marks(runs)));
    }
    let heldout: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: r.name.clone(),
            points: quality_events(r).filter_map(|q| Some((q.iteration as f64, q.heldout.distinct_2?))).collect(),
        })
        .collect();
    body.push_str(&line_chart("distinct-2 of the held-out answers", &heldout, Scale::Unit, &[]));
    let perplexity: Vec<Series> = runs
        .iter()
        .map(|r| Series {
            name: r.name.clone(),
            points: quality_events(r).filter_map(|q| Some((q.iteration as f64, q.perplexity?))).collect(),
        })
        .collect();
    if perplexity.iter().any(|s| !s.points.is_empty()) {
        let title = "perplexity on held-out reference solutions";
        body.push_str(&line_chart(title, &perplexity, Scale::Count, &marks(runs)));
    }
    body.push_str("</div>\n");
    body.push_str(&warnings_table(runs));

    body.push_str("<h2>Time per phase (seconds)</h2>\n<div class=\"grid\">\n");
    for run in runs {
        body.push_str(&phase_chart(run));
    }
    body.push_str("</div>\n<h2>Tables</h2>\n");
    for run in runs {
        let _ = writeln!(
            body,
            "<h3>{}</h3>\n<pre>{}\n{}\n{}</pre>",
            escape(&run.name),
            escape(&render(&run.rows)),
            escape(&render_data(run)),
            escape(&render_quality(run))
        );
    }
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>flywheel report: {}</title>\n\
         <style>{STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n",
        escape(&names.join(", "))
    )
}

const STYLE: &str = "body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;\
color:#222;max-width:1400px}h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}\
.grid{display:flex;flex-wrap:wrap;gap:16px}.chart{border:1px solid #e4e4e4;border-radius:6px;background:#fff}\
.legend span{display:inline-block;margin-right:18px}.swatch{display:inline-block;width:14px;height:4px;\
margin-right:6px;vertical-align:middle}pre{background:#f7f7f7;padding:10px;overflow-x:auto;font-size:12px}\
table{border-collapse:collapse}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:left;font-size:13px}\
.critical{color:#b00020;font-weight:600}";

fn quality_events(run: &RunReport) -> impl Iterator<Item = &QualityEvent> {
    run.events.iter().filter_map(|e| match e {
        Event::Quality(q) => Some(&**q),
        _ => None,
    })
}

/// The iterations with warnings, over all runs.
fn marks(runs: &[RunReport]) -> Vec<Mark> {
    runs.iter()
        .flat_map(|r| {
            quality_events(r).filter(|q| !q.warnings.is_empty()).map(|q| Mark {
                x: q.iteration as f64,
                label: q.warnings.iter().map(|w| w.rule.as_str()).collect::<Vec<_>>().join(", "),
                critical: q.warnings.iter().any(|w| w.severity == Severity::Critical),
            })
        })
        .collect()
}

fn legend(names: &[String]) -> String {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                "<span><i class=\"swatch\" style=\"background:{}\"></i>{}</span>",
                PALETTE[i % PALETTE.len()],
                escape(n)
            )
        })
        .collect()
}

fn warnings_table(runs: &[RunReport]) -> String {
    let rows: Vec<String> = runs
        .iter()
        .flat_map(|r| {
            quality_events(r).flat_map(move |q| {
                q.warnings.iter().map(move |w| {
                    let class = if w.severity == Severity::Critical { " class=\"critical\"" } else { "" };
                    format!(
                        "<tr{class}><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td></tr>",
                        escape(&r.name),
                        q.iteration,
                        w.severity,
                        escape(&w.rule),
                        escape(&w.message)
                    )
                })
            })
        })
        .collect();
    if rows.is_empty() {
        return "<p>The collapse watch raised no warning.</p>\n".to_owned();
    }
    format!(
        "<h3>Warnings</h3>\n<table><tr><th>run</th><th>iteration</th><th>severity</th><th>rule</th><th>what it saw</th></tr>\n{}\n</table>\n",
        rows.join("\n")
    )
}

/// A line chart of `series` over iterations, with the warnings' iterations marked.
fn line_chart(title: &str, series: &[Series], scale: Scale, marks: &[Mark]) -> String {
    let points = || series.iter().flat_map(|s| s.points.iter());
    let x_max = points().map(|p| p.0).fold(1.0f64, f64::max);
    let y_max = match scale {
        Scale::Percent | Scale::Unit => 1.0,
        Scale::Count => nice_ceiling(points().map(|p| p.1).fold(0.0f64, f64::max)),
    };
    // The legend runs under the title, left to right, wrapping; the plot starts below it.
    let mut legend_items = Vec::new();
    let (mut lx, mut ly) = (LEFT, 32.0);
    if series.len() > 1 {
        for (i, s) in series.iter().enumerate() {
            // Up to a line of the plot's width: run names that share a long prefix (a run and its
            // variants) must stay told apart; longer ones wrap to the next legend line.
            let name = truncate(&s.name, LEGEND_CHARS);
            let width = 16.0 + 6.0 * name.chars().count() as f64 + 14.0;
            if lx + width > WIDTH - RIGHT && lx > LEFT {
                (lx, ly) = (LEFT, ly + 13.0);
            }
            legend_items.push((lx, ly, PALETTE[i % PALETTE.len()], name));
            lx += width;
        }
    }
    let top = if legend_items.is_empty() { TOP } else { ly + 10.0 };
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - top - BOTTOM);
    let sx = |x: f64| LEFT + x / x_max * pw;
    let sy = |y: f64| top + ph - (y / y_max).clamp(0.0, 1.0) * ph;
    let mut svg = chart_start(title);
    y_grid(&mut svg, y_max, sy, |v| match scale {
        Scale::Percent => format!("{:.0}%", v * 100.0),
        Scale::Unit => format!("{v:.2}"),
        Scale::Count => short_number(v),
    });
    let step = (x_max / 10.0).ceil().max(1.0);
    let mut x = 0.0;
    while x <= x_max + 1e-9 {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{x:.0}</text>",
            sx(x),
            HEIGHT - BOTTOM + 14.0
        );
        x += step;
    }
    let _ = write!(
        svg,
        "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">iteration</text>",
        LEFT + pw / 2.0,
        HEIGHT - 6.0
    );
    for m in marks {
        let colour = if m.critical { "#b00020" } else { "#d08c00" };
        let _ = write!(
            svg,
            "<line x1=\"{x:.1}\" x2=\"{x:.1}\" y1=\"{top:.1}\" y2=\"{:.1}\" stroke=\"{colour}\" stroke-dasharray=\"4 3\">\
             <title>iteration {}: {}</title></line>",
            top + ph,
            m.x,
            escape(&m.label),
            x = sx(m.x)
        );
    }
    if points().next().is_none() {
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"12\" text-anchor=\"middle\" fill=\"#888\">no data</text>",
            LEFT + pw / 2.0,
            top + ph / 2.0
        );
    }
    for (i, s) in series.iter().enumerate() {
        let colour = PALETTE[i % PALETTE.len()];
        let path: Vec<String> = s.points.iter().map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y))).collect();
        if path.len() > 1 {
            let _ = write!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                path.join(" ")
            );
        }
        for &(x, y) in &s.points {
            let value = match scale {
                Scale::Percent => format!("{:.1}%", y * 100.0),
                _ => format!("{y:.3}"),
            };
            let _ = write!(
                svg,
                "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{colour}\"><title>{}, iteration {x}: {value}</title></circle>",
                sx(x),
                sy(y),
                escape(&s.name)
            );
        }
    }
    for (x, y, colour, name) in legend_items {
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"12\" height=\"3\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{y:.1}\" font-size=\"10\" fill=\"#333\">{}</text>",
            y - 4.0,
            x + 16.0,
            escape(&name)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// An SVG chart's opening tag, its accessible title and its visible title.
fn chart_start(title: &str) -> String {
    format!(
        "<svg class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{HEIGHT}\" \
         viewBox=\"0 0 {WIDTH} {HEIGHT}\" role=\"img\" aria-label=\"{t}\"><title>{t}</title>\
         <text x=\"{LEFT}\" y=\"18\" font-size=\"13\" font-weight=\"600\">{t}</text>",
        t = escape(title)
    )
}

/// Five horizontal grid lines from 0 to `y_max`, placed by `sy` and labelled by `label`.
fn y_grid(svg: &mut String, y_max: f64, sy: impl Fn(f64) -> f64, label: impl Fn(f64) -> String) {
    for i in 0..=4 {
        let v = y_max * i as f64 / 4.0;
        let y = sy(v);
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#eee\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"end\" fill=\"#555\">{}</text>",
            WIDTH - RIGHT,
            LEFT - 6.0,
            y + 3.5,
            label(v)
        );
    }
}

/// Stacked bars of one run's seconds per phase and iteration.
fn phase_chart(run: &RunReport) -> String {
    const PHASES: [(&str, &str); 3] = [("sample", "#0072B2"), ("train", "#E69F00"), ("eval", "#009E73")];
    let iterations: Vec<usize> = run.rows.iter().map(|r| r.iteration).collect();
    let seconds: Vec<[f64; 3]> = iterations.iter().map(|&k| PHASES.map(|(p, _)| run.seconds(k, p))).collect();
    let y_max = nice_ceiling(seconds.iter().map(|s| s.iter().sum::<f64>()).fold(0.0, f64::max));
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let slot = pw / iterations.len().max(1) as f64;
    let title = format!("{}: seconds per phase ({:.0} s in all)", run.name, run.total_seconds());
    let mut svg = chart_start(&title);
    y_grid(&mut svg, y_max, |v| TOP + ph - v / y_max * ph, short_number);
    for (j, (&k, s)) in iterations.iter().zip(&seconds).enumerate() {
        let x = LEFT + slot * j as f64 + slot * 0.15;
        let mut base = 0.0;
        for ((phase, colour), &v) in PHASES.iter().zip(s) {
            let (y0, y1) = (TOP + ph - base / y_max * ph, TOP + ph - (base + v) / y_max * ph);
            let _ = write!(
                svg,
                "<rect x=\"{x:.1}\" y=\"{y1:.1}\" width=\"{:.1}\" height=\"{:.1}\" fill=\"{colour}\">\
                 <title>iteration {k}: {phase} {v:.0} s</title></rect>",
                slot * 0.7,
                (y0 - y1).max(0.0)
            );
            base += v;
        }
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" text-anchor=\"middle\" fill=\"#555\">{k}</text>",
            x + slot * 0.35,
            HEIGHT - BOTTOM + 14.0
        );
    }
    for (i, (phase, colour)) in PHASES.iter().enumerate() {
        let x = WIDTH - RIGHT - 180.0 + 60.0 * i as f64;
        let _ = write!(
            svg,
            "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"10\" height=\"10\" fill=\"{colour}\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{phase}</text>",
            TOP - 8.0,
            x + 13.0,
            TOP + 1.0
        );
    }
    svg.push_str("</svg>\n");
    svg
}

/// The next of 1, 2, 5 × 10^n at or above `x` (1 for 0).
fn nice_ceiling(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|&v| v >= x).unwrap_or(10.0 * p)
}

fn short_number(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10.0 || v == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// Text safe inside HTML and SVG elements and attributes.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_scales() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(380.0), 500.0);
        assert_eq!(nice_ceiling(1000.0), 1000.0);
    }

    #[test]
    fn a_chart_plots_each_point_and_marks_warnings() {
        let series = [Series { name: "run <a>".into(), points: vec![(0.0, 0.1), (1.0, 0.5), (2.0, 0.4)] }];
        let marks = [Mark { x: 2.0, label: "accuracy-falling".into(), critical: true }];
        let svg = line_chart("accuracy", &series, Scale::Percent, &marks);
        assert_eq!(svg.matches("<circle").count(), 3);
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("run &lt;a&gt;, iteration 1: 50.0%"));
        assert!(svg.contains("stroke=\"#b00020\""), "the critical warning's iteration is marked");
        // 50% of a 174-pixel-high plot below the top margin of 30.
        assert!(svg.contains(&format!("cy=\"{:.1}\"", TOP + (HEIGHT - TOP - BOTTOM) / 2.0)));
    }

    /// Runs named as variants of one another (a long shared prefix) keep names told apart in a
    /// chart's legend, each fitting the plot's width; only a name longer than a line is cut.
    #[test]
    fn legends_tell_variant_runs_apart() {
        let names = ["collapse-demo-mitigated", "collapse-demo-mitigated-no-schedule", &"x".repeat(80)];
        let series: Vec<Series> =
            names.iter().map(|n| Series { name: n.to_string(), points: vec![(0.0, 0.1), (1.0, 0.2)] }).collect();
        let svg = line_chart("distinct-2", &series, Scale::Unit, &[]);
        assert!(svg.contains(">collapse-demo-mitigated</text>"), "{svg}");
        assert!(svg.contains(">collapse-demo-mitigated-no-schedule</text>"), "{svg}");
        assert!(svg.contains(&format!(">{}…</text>", "x".repeat(LEGEND_CHARS - 1))), "{svg}");
        assert!(16.0 + 6.0 * LEGEND_CHARS as f64 + 14.0 <= WIDTH - LEFT - RIGHT, "a legend entry fits a line");
    }
}
