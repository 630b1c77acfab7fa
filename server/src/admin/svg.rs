//! Charts as inline SVG, drawn on the server: no script, no image requests.

use super::html::{bytes, escape};

/// A bar per `(label, value)`, scaled to the largest; each bar's title is
/// its label and value (the browser shows it on hover), and the axis names
/// the first and last labels and the largest value.
pub fn bars(id: &str, points: &[(String, u64)]) -> String {
    const WIDTH: f64 = 720.0;
    const HEIGHT: f64 = 180.0;
    const AXIS: f64 = 20.0;
    let max = points.iter().map(|(_, v)| *v).max().unwrap_or(0);
    let slot = WIDTH / points.len().max(1) as f64;
    let mut svg = format!(
        "<svg id=\"{id}\" role=\"img\" width=\"{WIDTH}\" height=\"{total}\" \
         viewBox=\"0 0 {WIDTH} {total}\" xmlns=\"http://www.w3.org/2000/svg\">\
         <line x1=\"0\" y1=\"{HEIGHT}\" x2=\"{WIDTH}\" y2=\"{HEIGHT}\" stroke=\"#889\"/>",
        id = escape(id),
        total = HEIGHT + AXIS,
    );
    for (i, (label, value)) in points.iter().enumerate() {
        let height = if max == 0 {
            0.0
        } else {
            (*value as f64 / max as f64 * (HEIGHT - 10.0)).max(if *value > 0 { 1.0 } else { 0.0 })
        };
        svg.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"{height:.1}\" \
             fill=\"#3b6fd8\" data-label=\"{label}\" data-value=\"{value}\">\
             <title>{label}: {human}</title></rect>",
            x = i as f64 * slot + slot * 0.1,
            y = HEIGHT - height,
            w = slot * 0.8,
            label = escape(label),
            human = bytes(*value),
        ));
    }
    if let (Some((first, _)), Some((last, _))) = (points.first(), points.last()) {
        svg.push_str(&format!(
            "<text x=\"0\" y=\"{y}\" font-size=\"12\">{first}</text>\
             <text x=\"{WIDTH}\" y=\"{y}\" font-size=\"12\" text-anchor=\"end\">{last}</text>\
             <text x=\"4\" y=\"12\" font-size=\"12\">max {top}</text>",
            y = HEIGHT + AXIS - 4.0,
            first = escape(first),
            last = escape(last),
            top = bytes(max),
        ));
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_scale_to_the_largest_and_name_their_values() {
        let points = vec![
            ("2025-01-01".to_string(), 0),
            ("2025-01-02".to_string(), 50),
            ("2025-01-03".to_string(), 100),
        ];
        let svg = bars("egress", &points);
        assert_eq!(svg.matches("<rect").count(), 3);
        assert!(svg.contains("height=\"0.0\""), "{svg}");
        assert!(svg.contains("height=\"170.0\""), "{svg}");
        assert!(svg.contains("height=\"85.0\""), "{svg}");
        assert!(svg.contains("data-value=\"50\""));
        assert!(svg.contains("<title>2025-01-03: 100 B</title>"));
        assert!(bars("none", &[]).ends_with("</svg>"));
        assert!(!bars("<x>", &[("<y>".into(), 1)]).contains("<y>"));
    }
}
