//! The stats page's charts: hourly series ([`switchyard_engine::series`]) as inline SVG
//! geometry. Templates draw what this computes with SVG attributes only (`points`, `x`,
//! `width`…) and CSS classes, as the console's CSP requires (no inline styles).
//!
//! The x axis is the window's hours, one slot each (oldest left); an hour with nothing
//! finished has no point. Latency charts draw p50 and p95 as lines with a dot per hour; cost
//! charts draw a bar per hour. The y axis starts at 0 and ends at a rounded-up maximum.

use super::timeline::fmt_ms;
use serde::Serialize;
use std::collections::BTreeMap;
use switchyard_core::stats::HOUR_MS;
use switchyard_engine::series::{Point, Series};

/// Chart width in SVG user units.
pub const W: f64 = 600.0;
/// Room left of the plot for the y labels.
pub const LEFT: f64 = 56.0;
/// Room under the plot for the x labels.
pub const BOTTOM: f64 = 16.0;

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Chart {
    pub width: f64,
    pub height: f64,
    /// The plot's bottom edge (the x axis).
    pub base: f64,
    pub left: f64,
    /// The y axis's top label (`1.2 s`, `$0.0042`).
    pub y_max: String,
    pub x_labels: Vec<Label>,
    pub lines: Vec<Line>,
    pub dots: Vec<Dot>,
    pub bars: Vec<Rect>,
    /// Nothing to draw.
    pub empty: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Label {
    pub x: f64,
    pub text: String,
    /// SVG `text-anchor`: the first label starts at its slot, the last ends at it, so
    /// neither is cut at the chart's edge.
    pub anchor: &'static str,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// CSS class: `p50`, `p95`.
    pub class: String,
    /// SVG `points`: `x,y x,y …`.
    pub points: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dot {
    pub class: String,
    pub cx: f64,
    pub cy: f64,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Rect {
    pub x: f64,
    pub y: f64,
    pub width: f64,
    pub height: f64,
    pub title: String,
}

/// A workflow's charts, and its steps' by name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkflowCharts {
    pub latency: Chart,
    pub cost: Chart,
    pub steps: BTreeMap<String, StepCharts>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepCharts {
    pub latency: Chart,
    pub cost: Chart,
}

/// `2026-12-03T13:00` → `12-03 13:00` (UTC).
fn hour_label(hour: u64) -> String {
    let t = switchyard_core::time::rfc3339_ms(hour);
    t.get(5..16).unwrap_or(&t).replace('T', " ")
}

/// A round maximum at or above `v`: 1, 2 or 5 times a power of ten.
pub fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .map(|m| m * mag)
        .find(|m| *m >= v)
        .unwrap_or(10.0 * mag)
}

fn usd(v: f64) -> String {
    if v >= 1.0 {
        format!("${v:.2}")
    } else {
        format!("${v:.4}")
    }
}

fn r1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

/// The frame shared by both kinds: slots, labels, y scale.
struct Frame {
    from: u64,
    slots: u64,
    slot: f64,
    height: f64,
    base: f64,
}

impl Frame {
    fn new(from: u64, to: u64, height: f64) -> Frame {
        let slots = (to.saturating_sub(from) / HOUR_MS + 1).max(1);
        Frame {
            from,
            slots,
            slot: (W - LEFT) / slots as f64,
            height,
            base: height - BOTTOM,
        }
    }

    fn x(&self, hour: u64) -> f64 {
        let i = (hour.saturating_sub(self.from) / HOUR_MS).min(self.slots - 1);
        LEFT + (i as f64 + 0.5) * self.slot
    }

    fn y(&self, v: f64, max: f64) -> f64 {
        r1(self.base - (v / max).clamp(0.0, 1.0) * (self.base - 4.0))
    }

    fn labels(&self) -> Vec<Label> {
        let last = self.slots - 1;
        let mut idx = vec![0, last / 2, last];
        idx.dedup();
        let n = idx.len();
        idx.into_iter()
            .enumerate()
            .map(|(k, i)| Label {
                x: r1(LEFT + (i as f64 + 0.5) * self.slot),
                text: hour_label(self.from + i * HOUR_MS),
                anchor: match k {
                    0 if n > 1 => "start",
                    k if k + 1 == n && n > 1 => "end",
                    _ => "middle",
                },
            })
            .collect()
    }

    fn chart(&self, y_max: String, empty: bool) -> Chart {
        Chart {
            width: W,
            height: self.height,
            base: self.base,
            left: LEFT,
            y_max,
            x_labels: self.labels(),
            lines: vec![],
            dots: vec![],
            bars: vec![],
            empty,
        }
    }
}

/// p50 and p95 latency per hour.
pub fn latency(points: &[Point], from: u64, to: u64, height: f64) -> Chart {
    let f = Frame::new(from, to, height);
    let top = points
        .iter()
        .filter_map(|p| p.p95_ms.or(p.p50_ms))
        .max()
        .unwrap_or(0);
    let max = nice_max(top as f64);
    let mut c = f.chart(fmt_ms(max as u64), top == 0 && points.is_empty());
    for (class, pick) in [
        ("p95", (|p: &Point| p.p95_ms) as fn(&Point) -> Option<u64>),
        ("p50", |p: &Point| p.p50_ms),
    ] {
        let mut pts = Vec::new();
        for p in points {
            if let Some(v) = pick(p) {
                let (cx, cy) = (r1(f.x(p.hour)), f.y(v as f64, max));
                pts.push(format!("{cx},{cy}"));
                c.dots.push(Dot {
                    class: class.into(),
                    cx,
                    cy,
                    title: format!(
                        "{} {class} {} ({} finished)",
                        hour_label(p.hour),
                        fmt_ms(v),
                        p.count
                    ),
                });
            }
        }
        if pts.len() > 1 {
            c.lines.push(Line {
                class: class.into(),
                points: pts.join(" "),
            });
        }
    }
    c
}

/// Cost per hour, as bars.
pub fn cost(points: &[Point], from: u64, to: u64, height: f64) -> Chart {
    let f = Frame::new(from, to, height);
    let top = points.iter().map(|p| p.cost_usd).fold(0.0, f64::max);
    let max = nice_max(top);
    let mut c = f.chart(usd(max), points.is_empty());
    let width = r1((f.slot * 0.7).max(1.0));
    for p in points {
        let y = f.y(p.cost_usd, max);
        c.bars.push(Rect {
            x: r1(f.x(p.hour) - width / 2.0),
            y,
            width,
            height: r1((f.base - y).max(0.0)),
            title: format!(
                "{} {} ({} finished)",
                hour_label(p.hour),
                usd(p.cost_usd),
                p.count
            ),
        });
    }
    c
}

/// Every workflow's charts, by workflow name.
pub fn for_series(s: &Series) -> BTreeMap<String, WorkflowCharts> {
    s.workflows
        .iter()
        .map(|w| {
            let steps = w
                .steps
                .iter()
                .map(|st| {
                    (
                        st.step.clone(),
                        StepCharts {
                            latency: latency(&st.points, s.from_hour, s.to_hour, 70.0),
                            cost: cost(&st.points, s.from_hour, s.to_hour, 70.0),
                        },
                    )
                })
                .collect();
            (
                w.workflow.clone(),
                WorkflowCharts {
                    latency: latency(&w.runs, s.from_hour, s.to_hour, 140.0),
                    cost: cost(&w.runs, s.from_hour, s.to_hour, 140.0),
                    steps,
                },
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn p(hour: u64, p50: u64, p95: u64, cost: f64) -> Point {
        Point {
            hour: hour * HOUR_MS,
            count: 1,
            p50_ms: Some(p50),
            p95_ms: Some(p95),
            cost_usd: cost,
        }
    }

    #[test]
    fn round_maxima() {
        for (v, want) in [
            (0.0, 1.0),
            (0.7, 1.0),
            (3.0, 5.0),
            (120.0, 200.0),
            (0.0042, 0.005),
            (1000.0, 1000.0),
        ] {
            assert!((nice_max(v) - want).abs() < 1e-12, "{v}: {}", nice_max(v));
        }
    }

    #[test]
    fn points_sit_in_their_hours_slot_and_scale_to_the_maximum() {
        // Four hours (0..=3), data in hours 0 and 2.
        let pts = [p(0, 50, 100, 0.5), p(2, 100, 200, 1.0)];
        let c = latency(&pts, 0, 3 * HOUR_MS, 116.0);
        let slot = (W - LEFT) / 4.0;
        assert_eq!(c.y_max, "200 ms");
        assert_eq!(c.base, 100.0);
        let p95 = c.lines.iter().find(|l| l.class == "p95").unwrap();
        // y = base − v/max × (base − 4): 100 → 52, 200 → 4.
        assert_eq!(
            p95.points,
            format!("{},52 {},4", r1(LEFT + 0.5 * slot), r1(LEFT + 2.5 * slot))
        );
        assert_eq!(c.dots.len(), 4);
        let anchors: Vec<&str> = c.x_labels.iter().map(|l| l.anchor).collect();
        assert_eq!(anchors, ["start", "middle", "end"]);
        let bars = cost(&pts, 0, 3 * HOUR_MS, 116.0).bars;
        assert_eq!(bars.len(), 2);
        // $1 of a $1 maximum: full height; $0.5: half of it.
        assert_eq!((bars[1].y, bars[1].height), (4.0, 96.0));
        assert_eq!((bars[0].y, bars[0].height), (52.0, 48.0));
        assert!(latency(&[], 0, 0, 70.0).empty);
    }
}
