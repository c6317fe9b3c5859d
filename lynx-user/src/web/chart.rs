//! Line charts as SVG, drawn on the server: a time axis (UTC), a value axis with its unit,
//! and a point per sample whose `<title>` the browser shows on hover. Colours are SVG
//! attributes, not styles, so the page's Content-Security-Policy allows them.
use std::fmt::Write;

use super::page::escape;

const WIDTH: f64 = 720.0;
const HEIGHT: f64 = 220.0;
/// Room for the value labels on the left, the time labels below.
const LEFT: f64 = 64.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 28.0;
/// Time labels along the axis.
const TIME_TICKS: usize = 5;

/// One line: its samples as (Unix seconds, value), oldest first.
pub struct Series<'a> {
    pub title: &'a str,
    /// After each value: `req/s`, `conns`.
    pub unit: &'a str,
    pub colour: &'a str,
    pub points: &'a [(f64, f64)],
}

/// `HH:MM:SS` of Unix time `t` (UTC), or `HH:MM` with the date when the span is days.
fn clock(t: f64, long_span: bool) -> String {
    let secs = t.max(0.0) as i64;
    let day_secs = secs.rem_euclid(86_400);
    let (h, m, s) = (day_secs / 3600, day_secs / 60 % 60, day_secs % 60);
    if long_span {
        let date = time::OffsetDateTime::from_unix_timestamp(secs)
            .map(|d| format!("{:02}-{:02} ", u8::from(d.month()), d.day()))
            .unwrap_or_default();
        format!("{date}{h:02}:{m:02}")
    } else {
        format!("{h:02}:{m:02}:{s:02}")
    }
}

/// A round upper bound for the value axis: 1, 2 or 5 times a power of ten, at least `max`.
fn nice_ceiling(max: f64) -> f64 {
    if !(max.is_finite() && max > 0.0) {
        return 1.0;
    }
    let power = 10f64.powf(max.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * power)
        .find(|&c| c >= max)
        .unwrap_or(10.0 * power)
}

/// A value for a label: whole numbers and values from 100 up without decimals, one from 10
/// up, else two.
fn figure(value: f64) -> String {
    if value.abs() >= 100.0 || value == value.trunc() {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The SVG of `series` on one time axis; says so in the chart when there is no sample.
pub fn render(series: &Series<'_>) -> String {
    let mut svg = String::new();
    let _ = write!(
        svg,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" class=\"chart\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" \
         width=\"{WIDTH}\" height=\"{HEIGHT}\" role=\"img\" aria-label=\"{title}\" \
         font-family=\"sans-serif\" font-size=\"11\">\
         <text x=\"{LEFT}\" y=\"16\" font-size=\"13\" font-weight=\"bold\">{title} ({unit})</text>",
        title = escape(series.title),
        unit = escape(series.unit),
    );
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let _ = write!(
        svg,
        "<rect x=\"{LEFT}\" y=\"{TOP}\" width=\"{plot_w}\" height=\"{plot_h}\" fill=\"none\" stroke=\"#999\"/>"
    );
    let points = series.points;
    let (Some(first), Some(last)) = (points.first(), points.last()) else {
        let _ = write!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">no samples yet</text></svg>",
            LEFT + plot_w / 2.0,
            TOP + plot_h / 2.0
        );
        return svg;
    };
    let (t0, t1) = (first.0, last.0.max(first.0 + 1.0));
    let long_span = t1 - t0 > 86_400.0;
    let top = nice_ceiling(points.iter().map(|p| p.1).fold(0.0, f64::max));
    let x = |t: f64| LEFT + (t - t0) / (t1 - t0) * plot_w;
    let y = |v: f64| TOP + plot_h - (v.max(0.0) / top) * plot_h;
    // Value axis: 0, half, top, with grid lines.
    for value in [0.0, top / 2.0, top] {
        let _ = write!(
            svg,
            "<line x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{} {}</text>",
            LEFT + plot_w,
            LEFT - 4.0,
            y(value) + 4.0,
            figure(value),
            escape(series.unit),
            y = y(value),
        );
    }
    // Time axis.
    for i in 0..TIME_TICKS {
        let t = t0 + (t1 - t0) * i as f64 / (TIME_TICKS - 1) as f64;
        let anchor = match i {
            0 => "start",
            i if i == TIME_TICKS - 1 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            x(t),
            HEIGHT - 10.0,
            clock(t, long_span)
        );
    }
    let _ = write!(
        svg,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"end\" fill=\"#666\">UTC</text>",
        WIDTH - RIGHT,
        TOP - 4.0
    );
    let line: Vec<String> = points
        .iter()
        .map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v)))
        .collect();
    let _ = write!(
        svg,
        "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"1.5\" points=\"{}\"/>",
        line.join(" "),
        c = escape(series.colour)
    );
    for &(t, v) in points {
        let _ = write!(
            svg,
            "<circle class=\"point\" cx=\"{:.1}\" cy=\"{:.1}\" r=\"2\" fill=\"{c}\"><title>{} {}: {}</title></circle>",
            x(t),
            y(v),
            figure(v),
            escape(series.unit),
            clock(t, long_span),
            c = escape(series.colour)
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_a_point_with_its_value_and_time_per_sample() {
        let points = [
            (1_795_000_000.0, 0.0),
            (1_795_000_001.0, 12.5),
            (1_795_000_002.0, 40.0),
        ];
        let svg = render(&Series {
            title: "Requests",
            unit: "req/s",
            colour: "#1f77b4",
            points: &points,
        });
        assert_eq!(svg.matches("<circle").count(), 3, "{svg}");
        assert!(svg.contains("<title>12.5 req/s: 11:06:41</title>"), "{svg}");
        assert!(svg.contains(">50 req/s</text>"), "a round axis top: {svg}");
        assert!(svg.contains(">11:06:40</text>") && svg.contains(">11:06:42</text>"));
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
    }

    #[test]
    fn says_when_there_is_nothing_to_draw_and_escapes_its_text() {
        let svg = render(&Series {
            title: "<b>",
            unit: "&",
            colour: "red",
            points: &[],
        });
        assert!(svg.contains("no samples yet") && !svg.contains("<circle"));
        assert!(svg.contains("&lt;b&gt; (&amp;)"), "{svg}");
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice_ceiling(0.0), 1.0);
        assert_eq!(nice_ceiling(3.2), 5.0);
        assert_eq!(nice_ceiling(10.0), 10.0);
        assert_eq!(nice_ceiling(101.0), 200.0);
        assert_eq!(clock(1_795_000_000.0, true), "11-18 11:06");
    }
}
