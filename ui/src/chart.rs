//! Charts rendered on the server as SVG: axes with ticks and units, a legend, reference lines
//! and markers. No JavaScript; times on the x axis are labelled in UTC and relabelled in the
//! reader's zone by `tally.js` (`data-ts` attributes).

use chrono::{DateTime, Utc};
use maud::{Markup, PreEscaped, html};

/// Colours that stay apart for common colour blindness (Okabe–Ito) and reach 3:1 on white.
pub const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

/// One line: (time in ms, value) points.
pub struct Series {
    pub name: String,
    pub points: Vec<(i64, f64)>,
    /// Dashed (for derived lines such as percentiles).
    pub dashed: bool,
}

/// A horizontal line across the chart: a request, a limit, a percentile.
pub struct Reference {
    pub name: String,
    pub value: f64,
    pub colour: &'static str,
}

/// A line chart over time.
pub struct LineChart<'a> {
    /// What the chart shows, for screen readers (`<title>`).
    pub title: &'a str,
    pub series: Vec<Series>,
    pub references: Vec<Reference>,
    /// Times of events to mark on the x axis (OOM kills).
    pub markers: Vec<(i64, String)>,
    /// Formats a y value with its unit.
    pub unit: fn(f64) -> String,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 78.0;
const RIGHT: f64 = 16.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 34.0;

/// "Nice" tick values covering [0, max].
fn ticks(max: f64) -> Vec<f64> {
    if max <= 0.0 || !max.is_finite() {
        return vec![0.0, 1.0];
    }
    let raw = max / 4.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0]
        .iter()
        .map(|m| m * magnitude)
        .find(|s| *s >= raw)
        .unwrap_or(10.0 * magnitude);
    let top = (max / step).ceil().max(1.0) * step;
    let mut out = Vec::new();
    let mut v = 0.0;
    while v <= top + step * 0.01 {
        out.push(v);
        v += step;
    }
    out
}

impl LineChart<'_> {
    pub fn render(&self) -> Markup {
        let times: Vec<i64> = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0))
            .chain(self.markers.iter().map(|m| m.0))
            .collect();
        if times.is_empty() {
            return html! { p.empty { "No samples in this window yet." } };
        }
        let (t0, t1) = (
            *times.iter().min().expect("not empty"),
            *times.iter().max().expect("not empty"),
        );
        let span = (t1 - t0).max(1) as f64;
        let max = self
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .chain(self.references.iter().map(|r| r.value))
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        let ys = ticks(max * 1.05);
        let top = *ys.last().expect("ticks");
        let x = |t: i64| LEFT + (t - t0) as f64 / span * (WIDTH - LEFT - RIGHT);
        let y = |v: f64| TOP + (1.0 - v / top) * (HEIGHT - TOP - BOTTOM);
        let x_ticks: Vec<i64> = (0..=4)
            .map(|k| t0 + (span * k as f64 / 4.0) as i64)
            .collect();
        html! {
            figure.chart {
                svg viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) role="img" aria-label=(self.title) {
                    title { (self.title) }
                    @for v in &ys {
                        line.grid x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(*v)) y2=(y(*v)) {}
                        text.axis x=(LEFT - 6.0) y=(y(*v) + 4.0) text-anchor="end" { ((self.unit)(*v)) }
                    }
                    line.axisline x1=(LEFT) x2=(LEFT) y1=(TOP) y2=(HEIGHT - BOTTOM) {}
                    line.axisline x1=(LEFT) x2=(WIDTH - RIGHT) y1=(HEIGHT - BOTTOM) y2=(HEIGHT - BOTTOM) {}
                    @for (k, t) in x_ticks.iter().enumerate() {
                        @let anchor = match k { 0 => "start", 4 => "end", _ => "middle" };
                        text.axis x=(x(*t)) y=(HEIGHT - BOTTOM + 18.0) text-anchor=(anchor) data-ts=(t) {
                            (label(*t))
                        }
                    }
                    @for (i, s) in self.series.iter().enumerate() {
                        @let colour = PALETTE[i % PALETTE.len()];
                        polyline fill="none" stroke=(colour) stroke-width="2"
                            stroke-dasharray=[s.dashed.then_some("5 3")]
                            points=(s.points.iter().map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v))).collect::<Vec<_>>().join(" ")) {}
                    }
                    @for r in &self.references {
                        line x1=(LEFT) x2=(WIDTH - RIGHT) y1=(y(r.value)) y2=(y(r.value)) stroke=(r.colour) stroke-width="1.5" stroke-dasharray="2 3" {}
                    }
                    @for (t, what) in &self.markers {
                        g.marker {
                            title { (what) }
                            line x1=(x(*t)) x2=(x(*t)) y1=(TOP) y2=(HEIGHT - BOTTOM) stroke="#B00020" stroke-width="1" {}
                            path d=(format!("M{:.1},{:.1} l-5,-9 h10 z", x(*t), HEIGHT - BOTTOM)) fill="#B00020" {}
                        }
                    }
                }
                figcaption.legend {
                    @for (i, s) in self.series.iter().enumerate() {
                        span { i.swatch style=(format!("background:{}", PALETTE[i % PALETTE.len()])) {} (s.name) }
                    }
                    @for r in &self.references {
                        span { i.swatch.dotted style=(format!("border-color:{}", r.colour)) {} (r.name) ": " ((self.unit)(r.value)) }
                    }
                    @if !self.markers.is_empty() {
                        span { i.swatch style="background:#B00020" {} "OOM kill (" (self.markers.len()) ")" }
                    }
                }
            }
        }
    }
}

fn label(t: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(t)
        .map(|t| t.format("%b %d %H:%M").to_string())
        .unwrap_or_default()
}

/// Horizontal bars: a label and a value each, largest first as given.
pub fn bars(title: &str, rows: &[(String, f64)], unit: fn(f64) -> String) -> Markup {
    if rows.is_empty() {
        return html! { p.empty { "Nothing to show in this window yet." } };
    }
    let max = rows
        .iter()
        .map(|r| r.1)
        .fold(0.0f64, f64::max)
        .max(f64::MIN_POSITIVE);
    let row_height = 22.0;
    let height = rows.len() as f64 * row_height + 4.0;
    let label_width = 200.0;
    let bar_space = WIDTH - label_width - 110.0;
    html! {
        figure.chart {
            svg viewBox=(format!("0 0 {WIDTH} {height}")) role="img" aria-label=(title) {
                title { (title) }
                @for (i, (name, value)) in rows.iter().enumerate() {
                    @let y = i as f64 * row_height + 2.0;
                    text.axis x=(label_width - 6.0) y=(y + 15.0) text-anchor="end" { (truncate(name, 30)) }
                    rect x=(label_width) y=(y + 3.0) width=(format!("{:.1}", (value / max * bar_space).max(1.0))) height=(row_height - 6.0) fill=(PALETTE[0]) {}
                    text.axis x=(label_width + (value / max * bar_space).max(1.0) + 6.0) y=(y + 15.0) { (unit(*value)) }
                }
            }
        }
    }
}

fn truncate(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        text.to_string()
    } else {
        let mut out: String = text.chars().take(chars - 1).collect();
        out.push('…');
        out
    }
}

/// A small inline gauge: used vs a whole, as a bar with its percentage.
pub fn gauge(used: f64, whole: f64) -> Markup {
    let fraction = if whole > 0.0 { used / whole } else { 0.0 };
    let width = (fraction.clamp(0.0, 1.0) * 100.0).round();
    let class = if fraction > 0.9 { "hot" } else { "" };
    html! {
        span.gauge title=(format!("{:.0} %", fraction * 100.0)) {
            span.fill.(class) style=(PreEscaped(format!("width:{width}%"))) {}
        }
        " " (format!("{:.0} %", fraction * 100.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_and_cover_the_maximum() {
        assert_eq!(ticks(3.7), vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        assert_eq!(ticks(0.0), vec![0.0, 1.0]);
        let t = ticks(1234.0);
        assert!(*t.last().unwrap() >= 1234.0);
    }

    #[test]
    fn a_chart_has_axes_legend_and_markers() {
        let chart = LineChart {
            title: "CPU of app",
            series: vec![Series {
                name: "p95 <script>".into(),
                points: vec![(0, 0.5), (3_600_000, 1.5)],
                dashed: false,
            }],
            references: vec![Reference {
                name: "request".into(),
                value: 2.0,
                colour: "#000",
            }],
            markers: vec![(1_800_000, "OOM".into())],
            unit: |v| crate::format::cores(Some(v)),
        }
        .render()
        .into_string();
        assert!(chart.contains("<svg"), "{chart}");
        assert!(chart.contains("request: 2.00 cores"), "{chart}");
        assert!(chart.contains("OOM kill (1)"), "{chart}");
        assert!(chart.contains("p95 &lt;script&gt;"), "{chart}");
        assert!(chart.contains("data-ts=\"0\""), "{chart}");
    }
}
