//! Line charts drawn on the server as SVG (no script, no inline style: the stylesheet colours
//! them by class), for the overview's players and instances over time.

use maud::{Markup, html};

use super::widgets::clock;

/// The drawing's size in SVG units (it scales to the page's width).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 150.0;
/// Room for the value labels on the left and the times below.
const LEFT: f64 = 36.0;
const BOTTOM: f64 = 18.0;
const TOP: f64 = 8.0;
const RIGHT: f64 = 8.0;

/// One line of a chart: its name, its stylesheet class, and its points (Unix ms, value),
/// oldest first.
pub struct Series<'a> {
    pub name: &'a str,
    pub class: &'a str,
    pub points: Vec<(i64, i64)>,
}

/// What a chart covers: `from_ms`..`to_ms`, sampled every `every_ms` (a longer silence between
/// two samples is drawn as a gap, not as a line across it).
#[derive(Debug, Clone, Copy)]
pub struct Span {
    pub from_ms: i64,
    pub to_ms: i64,
    pub every_ms: i64,
}

/// The smallest of 1, 2 and 5 times a power of ten that is at least `value` (and at least 1).
fn axis_top(value: i64) -> i64 {
    let mut step = 1;
    loop {
        for factor in [1, 2, 5] {
            if step * factor >= value {
                return step * factor;
            }
        }
        step *= 10;
    }
}

/// The runs of `points` without a gap longer than the span allows, as SVG point lists.
fn runs(points: &[(i64, i64)], span: Span, top: i64) -> Vec<String> {
    let width = WIDTH - LEFT - RIGHT;
    let height = HEIGHT - TOP - BOTTOM;
    let length = (span.to_ms - span.from_ms).max(1) as f64;
    let x = |at: i64| LEFT + width * ((at - span.from_ms).max(0) as f64 / length);
    let y = |value: i64| TOP + height * (1.0 - value as f64 / top as f64);
    let mut runs: Vec<String> = Vec::new();
    let mut previous: Option<i64> = None;
    for &(at, value) in points {
        let point = format!("{:.1},{:.1}", x(at), y(value));
        match (previous, runs.last_mut()) {
            (Some(before), Some(run)) if at - before <= span.every_ms * 3 / 2 => {
                run.push(' ');
                run.push_str(&point);
            }
            _ => runs.push(point),
        }
        previous = Some(at);
    }
    runs
}

/// A chart `id` titled `title` of `series` over `span`: each series a line (a lone sample a
/// dot), the values' scale on the left, the span's ends below, and a legend with each series'
/// latest value.
pub fn line_chart(id: &str, title: &str, span: Span, series: &[Series]) -> Markup {
    let highest = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .max()
        .unwrap_or(0);
    let top = axis_top(highest);
    let latest = |s: &Series| s.points.last().map(|p| p.1);
    let summary: Vec<String> = series
        .iter()
        .map(|s| match latest(s) {
            Some(value) => format!("{} {value}", s.name),
            None => format!("{} no samples", s.name),
        })
        .collect();
    let view_box = format!("0 0 {WIDTH} {HEIGHT}");
    let floor = HEIGHT - BOTTOM;
    html! {
        figure.chart id=(id) {
            figcaption {
                (title)
                @for s in series {
                    " " span class={ "legend " (s.class) } data-series=(s.class)
                        data-points=(s.points.len()) data-latest=[latest(s)] {
                        (s.name) ": " @match latest(s) { Some(v) => (v), None => "–" }
                    }
                }
            }
            svg viewBox=(view_box) role="img" aria-label={ (title) ": " (summary.join(", ")) } {
                line.axis x1=(LEFT) y1=(TOP) x2=(LEFT) y2=(floor) {}
                line.axis x1=(LEFT) y1=(floor) x2=(WIDTH - RIGHT) y2=(floor) {}
                line.grid x1=(LEFT) y1=(TOP) x2=(WIDTH - RIGHT) y2=(TOP) {}
                text.tick x=(LEFT - 4.0) y=(TOP + 4.0) text-anchor="end" { (top) }
                text.tick x=(LEFT - 4.0) y=(floor) text-anchor="end" { "0" }
                text.tick x=(LEFT) y=(HEIGHT - 4.0) { (clock(span.from_ms)) " UTC" }
                text.tick x=(WIDTH - RIGHT) y=(HEIGHT - 4.0) text-anchor="end" { (clock(span.to_ms)) " UTC" }
                @for s in series {
                    @for run in runs(&s.points, span, top) {
                        @if run.contains(' ') {
                            polyline class={ "line " (s.class) } points=(run) {}
                        } @else {
                            @let (cx, cy) = run.split_once(',').unwrap_or(("0", "0"));
                            circle class={ "dot " (s.class) } cx=(cx) cy=(cy) r="2.5" {}
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scale_rounds_up_to_one_two_or_five() {
        let tops: Vec<i64> = [0, 1, 2, 3, 7, 10, 11, 40, 51, 999]
            .into_iter()
            .map(axis_top)
            .collect();
        assert_eq!(tops, [1, 1, 2, 5, 10, 10, 20, 50, 100, 1000]);
    }

    #[test]
    fn a_silence_longer_than_the_interval_breaks_the_line() {
        let span = Span {
            from_ms: 0,
            to_ms: 10_000,
            every_ms: 1_000,
        };
        let points = [(0, 0), (1_000, 5), (2_000, 10), (6_000, 10), (7_000, 0)];
        let drawn = runs(&points, span, 10);
        assert_eq!(drawn.len(), 2, "{drawn:?}");
        assert_eq!(drawn[0], "36.0,132.0 91.6,70.0 147.2,8.0");
        assert_eq!(drawn[1].split(' ').count(), 2);
    }

    #[test]
    fn a_chart_names_each_series_latest_value() {
        let span = Span {
            from_ms: 0,
            to_ms: 60_000,
            every_ms: 1_000,
        };
        let series = [
            Series {
                name: "Players",
                class: "players",
                points: vec![(1_000, 3), (2_000, 4)],
            },
            Series {
                name: "Running",
                class: "running",
                points: vec![],
            },
        ];
        let drawn = line_chart("c", "Players online", span, &series).into_string();
        assert!(drawn.contains(r#"aria-label="Players online: Players 4, Running no samples""#));
        assert!(
            drawn.contains(r#"data-points="2" data-latest="4""#),
            "{drawn}"
        );
        assert!(drawn.contains(r#"<polyline class="line players""#));
        assert!(!drawn.contains("style="));
    }
}
