//! Charts drawn on the server as SVG documents (served as images, so no script or style of
//! the page is involved): lines or dots of numbers over time, with the axis labels, a legend
//! of series names (XML-escaped: account names come from the inventory, host names from it
//! too, but nothing is trusted to be markup-free), and nothing else.

use std::fmt::Write;

/// One series: a name, its points (ns since the epoch, value), and how to draw it.
pub struct Series {
    /// The legend's text.
    pub name: String,
    /// Points, in any order (sorted here).
    pub points: Vec<(i64, f64)>,
    /// Dots instead of a line (events such as pulls).
    pub dots: bool,
    /// A dashed line (a limit such as an allocation).
    pub dashed: bool,
}

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 20.0;
const BOTTOM: f64 = 50.0;
const COLOURS: [&str; 8] = [
    "#1f5fa8", "#b3261e", "#1a7f37", "#9a6700", "#6f42c1", "#0f766e", "#c2410c", "#475569",
];

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// An SVG chart of `series` titled `title`, values shown by `label` (bytes, seconds).
/// Empty series draw an empty frame saying there is no data yet.
pub fn svg(title: &str, series: &[Series], label: &dyn Fn(f64) -> String) -> String {
    let points = series.iter().flat_map(|s| s.points.iter());
    let (mut t0, mut t1, mut vmax) = (i64::MAX, i64::MIN, 0f64);
    for &(t, v) in points {
        t0 = t0.min(t);
        t1 = t1.max(t);
        if v.is_finite() {
            vmax = vmax.max(v);
        }
    }
    let mut out = String::new();
    let _ = write!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="11">"#
    );
    let _ = write!(
        out,
        r##"<rect width="100%" height="100%" fill="#fff"/><text x="{LEFT}" y="14" font-size="12" font-weight="600">{}</text>"##,
        escape(title)
    );
    let (w, h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    if t0 > t1 {
        let _ = write!(
            out,
            r##"<text x="{}" y="{}" fill="#5b6775">no samples yet</text></svg>"##,
            LEFT + 10.0,
            TOP + h / 2.0
        );
        return out;
    }
    let vmax = if vmax > 0.0 { vmax * 1.1 } else { 1.0 };
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| LEFT + (t - t0) as f64 / span * w;
    let y = |v: f64| TOP + h - (v.max(0.0) / vmax) * h;
    for i in 0..=4 {
        let v = vmax * f64::from(i) / 4.0;
        let _ = write!(
            out,
            r##"<line x1="{LEFT}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="#d8dee6"/><text x="{}" y="{:.1}" text-anchor="end" fill="#5b6775">{}</text>"##,
            LEFT + w,
            LEFT - 6.0,
            y(v) + 4.0,
            escape(&label(v)),
            yy = y(v),
        );
    }
    let day = |t: i64| xstore::format_utc(t.div_euclid(1_000_000_000)).replace('T', " ");
    let _ = write!(
        out,
        r##"<text x="{LEFT}" y="{}" fill="#5b6775">{}</text><text x="{}" y="{}" text-anchor="end" fill="#5b6775">{}</text>"##,
        TOP + h + 16.0,
        escape(&day(t0)),
        LEFT + w,
        TOP + h + 16.0,
        escape(&day(t1))
    );
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        let mut pts = s.points.clone();
        pts.sort_by_key(|p| p.0);
        // A line of few points shows them too (one sample is a dot, not an invisible line).
        if s.dots || pts.len() <= 48 {
            for (t, v) in &pts {
                let _ = write!(
                    out,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{colour}"/>"#,
                    x(*t),
                    y(*v)
                );
            }
        }
        if !s.dots {
            let line: Vec<String> = pts
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let dash = if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let _ = write!(
                out,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"#,
                line.join(" ")
            );
        }
        // One legend row (the charts here have at most three series).
        let lx = LEFT + i as f64 * 170.0;
        let ly = HEIGHT - 14.0;
        let _ = write!(
            out,
            r#"<rect x="{lx}" y="{}" width="10" height="10" fill="{colour}"/><text x="{}" y="{ly}">{}</text>"#,
            ly - 9.0,
            lx + 14.0,
            escape(&s.name)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn names_are_escaped_and_empty_charts_say_so() {
        let s = Series {
            name: "<script>alert(1)</script>".into(),
            points: vec![(1_000_000_000, 1.0), (2_000_000_000, 3.0)],
            dots: false,
            dashed: false,
        };
        let svg = svg("t&t", &[s], &|v| format!("{v:.0}"));
        assert!(!svg.contains("<script>"));
        assert!(svg.contains("&lt;script&gt;"));
        assert!(svg.contains("t&amp;t"));
        assert!(svg.contains("<polyline"));
        assert!(super::svg("x", &[], &|v| v.to_string()).contains("no samples yet"));
    }
}
