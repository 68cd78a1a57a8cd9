//! The paper's figure as a self-contained SVG written by hand (no plotting dependency): daily
//! mean score on a 0–4 left axis and recommendations per awake hour on a right axis, by day.
//! Each series is a `<g>` with a stable id (`series-mean-score`, `series-recs-per-hour`) so tools
//! and tests can find it; every point has a `<title>` tooltip with its exact value.

use std::fmt::Write;

use super::DayMetrics;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 80.0;
const TOP: f64 = 70.0;
const BOTTOM: f64 = 110.0;
const SCORE_MAX: f64 = 4.0;
const SCORE_COLOR: &str = "#1f77b4";
const RATE_COLOR: &str = "#d95f02";

/// Escape text for XML content and attribute values.
pub(super) fn xml(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c if (c as u32) < 0x20 && c != '\t' && c != '\n' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// Top of the right axis: at least 24 (one decision per 2.5 min), rounded up to a multiple of 4
/// so its four intervals line up with the score axis' gridlines at whole numbers.
fn rate_axis_max(days: &[DayMetrics]) -> f64 {
    let max = days.iter().map(|d| d.recs_per_awake_hour).filter(|v| v.is_finite()).fold(0.0, f64::max);
    (max / 4.0).ceil().max(6.0) * 4.0
}

fn trim_num(v: f64) -> String {
    let s = format!("{v:.1}");
    s.strip_suffix(".0").map(str::to_owned).unwrap_or(s)
}

/// A polyline through consecutive present points; a missing value breaks the line.
fn polylines(points: &[Option<(f64, f64)>]) -> Vec<Vec<(f64, f64)>> {
    let mut runs = vec![Vec::new()];
    for p in points {
        match p {
            Some(xy) => runs.last_mut().expect("runs is never empty").push(*xy),
            None => runs.push(Vec::new()),
        }
    }
    runs.retain(|r| !r.is_empty());
    runs
}

fn series(
    svg: &mut String,
    id: &str,
    color: &str,
    dashed: bool,
    square: bool,
    points: &[Option<(f64, f64)>],
    tips: &[String],
) {
    let _ = writeln!(svg, r#"<g id="{id}" class="series" fill="none" stroke="{color}" stroke-width="2.5">"#);
    for run in polylines(points) {
        let coords: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
        let dash = if dashed { r#" stroke-dasharray="7 4""# } else { "" };
        let _ = writeln!(svg, r#"  <polyline points="{}"{dash}/>"#, coords.join(" "));
    }
    for (p, tip) in points.iter().zip(tips) {
        let Some((x, y)) = p else { continue };
        let shape = if square {
            format!(
                r#"<rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{color}" stroke="white" stroke-width="1">"#,
                x - 4.0,
                y - 4.0
            )
        } else {
            format!(r#"<circle cx="{x:.1}" cy="{y:.1}" r="4.5" fill="{color}" stroke="white" stroke-width="1">"#)
        };
        let close = if square { "</rect>" } else { "</circle>" };
        let _ = writeln!(svg, "  {shape}<title>{}</title>{close}", xml(tip));
    }
    svg.push_str("</g>\n");
}

/// The plot area's geometry for `n` days.
struct Plot {
    n: f64,
    w: f64,
    h: f64,
    bottom: f64,
    right: f64,
}

impl Plot {
    fn new(days: usize) -> Plot {
        let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
        Plot { n: days.max(1) as f64, w, h, bottom: TOP + h, right: LEFT + w }
    }
    fn x(&self, i: usize) -> f64 {
        LEFT + (i as f64 + 0.5) * self.w / self.n
    }
    fn y_score(&self, v: f64) -> f64 {
        self.bottom - v.clamp(0.0, SCORE_MAX) / SCORE_MAX * self.h
    }
}

/// A right-hand axis: its label, color and top value.
struct RightAxis<'a> {
    label: &'a str,
    color: &'a str,
    max: f64,
}

/// The document's start and its title, shrunk for long names instead of overflowing.
fn open_svg(svg: &mut String, title: &str) {
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="Helvetica, Arial, sans-serif" font-size="13">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let title_size = (17.0 * 85.0 / title.chars().count() as f64).clamp(8.0, 17.0);
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="28" text-anchor="middle" font-size="{title_size:.1}" font-weight="bold">{}</text>"#,
        WIDTH / 2.0,
        xml(title)
    );
}

/// Gridlines, the 0–4 score axis on the left, an optional right axis (four intervals each), and
/// the day labels.
fn axes(svg: &mut String, p: &Plot, dates: &[&str], right_axis: Option<&RightAxis>) {
    let (bottom, right, plot_w, plot_h) = (p.bottom, p.right, p.w, p.h);
    svg.push_str("<g id=\"axes\">\n");
    for k in 0..=4 {
        let y = bottom - k as f64 / 4.0 * plot_h;
        let _ = writeln!(
            svg,
            r##"  <line x1="{LEFT}" y1="{y:.1}" x2="{right}" y2="{y:.1}" stroke="#dddddd" stroke-width="1"/>"##
        );
        let _ = writeln!(
            svg,
            r#"  <text x="{:.1}" y="{:.1}" text-anchor="end" fill="{SCORE_COLOR}">{}</text>"#,
            LEFT - 8.0,
            y + 4.5,
            k
        );
        if let Some(a) = right_axis {
            let _ = writeln!(
                svg,
                r#"  <text x="{:.1}" y="{:.1}" text-anchor="start" fill="{}">{}</text>"#,
                right + 8.0,
                y + 4.5,
                a.color,
                trim_num(a.max * k as f64 / 4.0)
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"  <rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444444" stroke-width="1"/>"##
    );
    let _ = writeln!(
        svg,
        r#"  <text transform="translate({:.1},{:.1}) rotate(-90)" text-anchor="middle" fill="{SCORE_COLOR}" font-size="14">Mean score (0–4)</text>"#,
        LEFT - 45.0,
        TOP + plot_h / 2.0
    );
    if let Some(a) = right_axis {
        let _ = writeln!(
            svg,
            r#"  <text transform="translate({:.1},{:.1}) rotate(90)" text-anchor="middle" fill="{}" font-size="14">{}</text>"#,
            right + 48.0,
            TOP + plot_h / 2.0,
            a.color,
            xml(a.label)
        );
    }
    // Label at most ~20 days so rotated labels never overlap; every day keeps its tick.
    let label_every = dates.len().div_ceil(20).max(1);
    for (i, d) in dates.iter().enumerate() {
        let x = p.x(i);
        let _ = writeln!(
            svg,
            r##"  <line x1="{x:.1}" y1="{bottom:.1}" x2="{x:.1}" y2="{:.1}" stroke="#444444"/>"##,
            bottom + 5.0
        );
        if i % label_every != 0 {
            continue;
        }
        let _ = writeln!(
            svg,
            r#"  <text transform="translate({:.1},{:.1}) rotate(-40)" text-anchor="end">{}</text>"#,
            x + 4.0,
            bottom + 18.0,
            xml(d)
        );
    }
    let _ = writeln!(
        svg,
        r#"  <text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="14">Day</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 12.0
    );
    if dates.is_empty() {
        let _ = writeln!(
            svg,
            r##"  <text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#888888">no step with an assistant suggestion yet</text>"##,
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
    }
    svg.push_str("</g>\n");
}

/// The chart for simulation `sim`. Days without an evaluated step leave a gap in the score line.
pub fn render_svg(sim: &str, days: &[DayMetrics]) -> String {
    let p = Plot::new(days.len());
    let rate_max = rate_axis_max(days);
    let x_of = |i: usize| p.x(i);
    let y_score = |v: f64| p.y_score(v);
    let y_rate = |v: f64| p.bottom - v.clamp(0.0, rate_max) / rate_max * p.h;
    let right = p.right;

    let mut svg = String::new();
    open_svg(&mut svg, &format!("Daily mean score and recommendations per awake hour: {sim}"));
    let dates: Vec<&str> = days.iter().map(|d| d.date.as_str()).collect();
    axes(
        &mut svg,
        &p,
        &dates,
        Some(&RightAxis { label: "Recommendations per awake hour", color: RATE_COLOR, max: rate_max }),
    );

    let score_pts: Vec<Option<(f64, f64)>> =
        days.iter().enumerate().map(|(i, d)| d.mean_score.map(|v| (x_of(i), y_score(v)))).collect();
    let score_tips: Vec<String> = days
        .iter()
        .map(|d| format!("{}: mean score {}", d.date, d.mean_score.map_or("-".to_owned(), |v| format!("{v:.3}"))))
        .collect();
    series(&mut svg, "series-mean-score", SCORE_COLOR, false, false, &score_pts, &score_tips);
    let rate_pts: Vec<Option<(f64, f64)>> = days
        .iter()
        .enumerate()
        .map(|(i, d)| d.recs_per_awake_hour.is_finite().then(|| (x_of(i), y_rate(d.recs_per_awake_hour))))
        .collect();
    let rate_tips: Vec<String> = days
        .iter()
        .map(|d| {
            format!(
                "{}: {:.2} recommendations per awake hour ({} of {} steps)",
                d.date, d.recs_per_awake_hour, d.recs, d.steps
            )
        })
        .collect();
    series(&mut svg, "series-recs-per-hour", RATE_COLOR, true, true, &rate_pts, &rate_tips);

    // Legend, above the plot on the right.
    let lx = right - 330.0;
    let ly = TOP - 22.0;
    let _ = writeln!(svg, r#"<g id="legend" font-size="13">"#);
    let _ = writeln!(
        svg,
        r#"  <line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{SCORE_COLOR}" stroke-width="2.5"/>"#,
        lx + 28.0
    );
    let _ = writeln!(svg, r#"  <circle cx="{:.1}" cy="{ly:.1}" r="4.5" fill="{SCORE_COLOR}"/>"#, lx + 14.0);
    let _ = writeln!(svg, r#"  <text x="{:.1}" y="{:.1}">Mean score</text>"#, lx + 36.0, ly + 4.5);
    let lx2 = lx + 130.0;
    let _ = writeln!(
        svg,
        r#"  <line x1="{lx2:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{RATE_COLOR}" stroke-width="2.5" stroke-dasharray="7 4"/>"#,
        lx2 + 28.0
    );
    let _ = writeln!(
        svg,
        r#"  <rect x="{:.1}" y="{:.1}" width="8" height="8" fill="{RATE_COLOR}"/>"#,
        lx2 + 10.0,
        ly - 4.0
    );
    let _ = writeln!(svg, r#"  <text x="{:.1}" y="{:.1}">Recs per awake hour</text>"#, lx2 + 36.0, ly + 4.5);
    svg.push_str("</g>\n</svg>\n");
    svg
}

/// One day of a score averaged over several sims: its mean, its 95% interval, how many sims.
pub struct BandPoint<'a> {
    pub date: &'a str,
    pub mean: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    pub n: u64,
}

/// The paper's figure for a sweep: the mean score per day over its sims, with the 95% interval
/// as a shaded band (`<g id="band-mean-score">`, one polygon per run of days that have one) under
/// the line (`series-mean-score`).
pub fn render_score_band_svg(title: &str, points: &[BandPoint]) -> String {
    let p = Plot::new(points.len());
    let mut svg = String::new();
    open_svg(&mut svg, title);
    let dates: Vec<&str> = points.iter().map(|d| d.date).collect();
    axes(&mut svg, &p, &dates, None);
    let bands: Vec<Option<(f64, f64, f64)>> = points
        .iter()
        .enumerate()
        .map(|(i, d)| match (d.low, d.high) {
            (Some(lo), Some(hi)) => Some((p.x(i), p.y_score(lo), p.y_score(hi))),
            _ => None,
        })
        .collect();
    let _ = writeln!(svg, r#"<g id="band-mean-score" fill="{SCORE_COLOR}" fill-opacity="0.2" stroke="none">"#);
    for run in bands.split(|b| b.is_none()).filter(|r| !r.is_empty()) {
        let run: Vec<(f64, f64, f64)> = run.iter().flatten().copied().collect();
        // A single day gets a narrow bar so its interval still shows.
        let widen = if run.len() == 1 { 6.0 } else { 0.0 };
        let upper = run.iter().map(|(x, _, hi)| format!("{:.1},{hi:.1}", x - widen));
        let lower = run.iter().rev().map(|(x, lo, _)| format!("{:.1},{lo:.1}", x + widen));
        let pts: Vec<String> = if widen > 0.0 {
            let (x, lo, hi) = run[0];
            vec![
                format!("{:.1},{hi:.1}", x - widen),
                format!("{:.1},{hi:.1}", x + widen),
                format!("{:.1},{lo:.1}", x + widen),
                format!("{:.1},{lo:.1}", x - widen),
            ]
        } else {
            upper.chain(lower).collect()
        };
        let _ = writeln!(svg, r#"  <polygon points="{}"/>"#, pts.join(" "));
    }
    svg.push_str("</g>\n");
    let pts: Vec<Option<(f64, f64)>> =
        points.iter().enumerate().map(|(i, d)| d.mean.map(|v| (p.x(i), p.y_score(v)))).collect();
    let tips: Vec<String> = points
        .iter()
        .map(|d| {
            let interval = match (d.low, d.high) {
                (Some(lo), Some(hi)) => format!(", 95% interval {lo:.3}–{hi:.3}"),
                _ => String::new(),
            };
            let mean = d.mean.map_or("-".to_owned(), |v| format!("{v:.3}"));
            format!("{}: mean score {mean}{interval} over {} personas", d.date, d.n)
        })
        .collect();
    series(&mut svg, "series-mean-score", SCORE_COLOR, false, false, &pts, &tips);
    let (lx, ly) = (p.right - 300.0, TOP - 22.0);
    let _ = writeln!(svg, r#"<g id="legend" font-size="13">"#);
    let _ = writeln!(
        svg,
        r#"  <line x1="{lx:.1}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{SCORE_COLOR}" stroke-width="2.5"/>"#,
        lx + 28.0
    );
    let _ = writeln!(svg, r#"  <circle cx="{:.1}" cy="{ly:.1}" r="4.5" fill="{SCORE_COLOR}"/>"#, lx + 14.0);
    let _ = writeln!(svg, r#"  <text x="{:.1}" y="{:.1}">Mean over personas</text>"#, lx + 36.0, ly + 4.5);
    let lx2 = lx + 165.0;
    let _ = writeln!(
        svg,
        r#"  <rect x="{lx2:.1}" y="{:.1}" width="28" height="12" fill="{SCORE_COLOR}" fill-opacity="0.2"/>"#,
        ly - 6.0
    );
    let _ = writeln!(svg, r#"  <text x="{:.1}" y="{:.1}">95% interval</text>"#, lx2 + 36.0, ly + 4.5);
    svg.push_str("</g>\n</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_split_lines_and_text_is_escaped() {
        let runs = polylines(&[Some((1.0, 1.0)), None, Some((2.0, 2.0)), Some((3.0, 3.0))]);
        assert_eq!(runs.len(), 2);
        assert_eq!(runs[1].len(), 2);
        assert_eq!(xml("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn rate_axis_covers_the_data() {
        let day = |r: f64| DayMetrics { steps: 1, recs_per_awake_hour: r, ..DayMetrics::empty("d") };
        assert_eq!(rate_axis_max(&[day(3.0)]), 24.0);
        assert_eq!(rate_axis_max(&[day(30.5)]), 32.0);
    }
}
