//! Tabular views of the per-day metrics: an aligned text table for the terminal and a CSV for
//! spreadsheets. Both list the same columns; the dimension columns are the union over all days.

use super::metrics::order_dimensions;
use super::DayMetrics;

/// Column names of the fixed part of the CSV, the JSON keys before `dimensions`.
pub const CSV_FIXED_COLUMNS: [&str; 9] =
    ["date", "steps", "mean_score", "recs", "rec_mean", "norecs", "norec_mean", "success_rate", "recs_per_awake_hour"];

/// Prefix of a dimension's pass-rate column in the CSV (`dim_Timing`).
pub const CSV_DIMENSION_PREFIX: &str = "dim_";

fn all_dimensions(days: &[DayMetrics]) -> Vec<String> {
    order_dimensions(days.iter().flat_map(|d| d.dimensions.keys().map(String::as_str)))
}

/// A CSV field per RFC 4180: quoted when it holds a comma, quote or line break.
pub(super) fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_owned()
    }
}

fn opt(v: Option<f64>) -> String {
    v.map(|x| x.to_string()).unwrap_or_default()
}

/// The metrics as CSV with a header line; empty cells for values that do not exist (no
/// evaluated step, or a dimension absent that day). Numbers keep full precision.
pub fn render_csv(days: &[DayMetrics]) -> String {
    let dims = all_dimensions(days);
    let mut header: Vec<String> = CSV_FIXED_COLUMNS.iter().map(|c| c.to_string()).collect();
    header.extend(dims.iter().map(|d| csv_field(&format!("{CSV_DIMENSION_PREFIX}{d}"))));
    let mut out = header.join(",") + "\n";
    for d in days {
        let mut row = vec![
            csv_field(&d.date),
            d.steps.to_string(),
            opt(d.mean_score),
            d.recs.to_string(),
            opt(d.rec_mean),
            d.norecs.to_string(),
            opt(d.norec_mean),
            opt(d.success_rate),
            d.recs_per_awake_hour.to_string(),
        ];
        row.extend(dims.iter().map(|k| opt(d.dimensions.get(k).copied())));
        out += &row.join(",");
        out.push('\n');
    }
    out
}

fn fixed(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}")).unwrap_or_else(|| "-".to_owned())
}

fn percent(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "-".to_owned())
}

/// The table's header and formatted rows (rates as percentages, `-` where a value does not
/// exist), shared by the terminal table and the web page's metrics table.
pub fn table_cells(days: &[DayMetrics]) -> (Vec<String>, Vec<Vec<String>>) {
    let dims = all_dimensions(days);
    let mut header: Vec<String> =
        ["Date", "Steps", "Mean", "Recs", "Rec mean", "NoRecs", "NoRec mean", "Success", "Recs/awake h"]
            .map(String::from)
            .to_vec();
    header.extend(dims.iter().cloned());
    let rows: Vec<Vec<String>> = days
        .iter()
        .map(|d| {
            let mut row = vec![
                d.date.clone(),
                d.steps.to_string(),
                fixed(d.mean_score, 2),
                d.recs.to_string(),
                fixed(d.rec_mean, 2),
                d.norecs.to_string(),
                fixed(d.norec_mean, 2),
                percent(d.success_rate),
                fixed(Some(d.recs_per_awake_hour), 1),
            ];
            row.extend(dims.iter().map(|k| percent(d.dimensions.get(k).copied())));
            row
        })
        .collect();
    (header, rows)
}

/// An aligned text table, one row per day: text left-aligned, numbers right-aligned, rates as
/// percentages, `-` where a value does not exist.
pub fn render_table(days: &[DayMetrics]) -> String {
    let (header, rows) = table_cells(days);
    let width =
        |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].chars().count()]).max().unwrap_or(0);
    let widths: Vec<usize> = (0..header.len()).map(width).collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                if i == 0 {
                    format!("{c}{}", " ".repeat(pad))
                } else {
                    format!("{}{c}", " ".repeat(pad))
                }
            })
            .collect();
        parts.join("  ")
    };
    let mut out = line(&header) + "\n";
    out += &(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  ") + "\n");
    for r in &rows {
        out += &(line(r) + "\n");
    }
    if days.is_empty() {
        out += "(no step with an assistant suggestion yet)\n";
    }
    out
}
