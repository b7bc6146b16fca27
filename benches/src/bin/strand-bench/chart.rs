//! `--chart FILE.svg`: SVG charts drawn with plotters' SVG backend alone. Its text is written as
//! SVG `<text>` elements that the viewer renders, so no font is read at build or run time
//! (plotters is built without its `ttf` feature and sizes labels by estimate).
//!
//! Also the time series the charts draw: [`Timeline`] (events per time bin, shown per second)
//! and [`LatencyTimeline`] (a histogram per time bin, shown as percentiles).

use std::path::Path;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use plotters::prelude::*;

/// The width of a time bin in the over-time charts.
pub const BIN: Duration = Duration::from_millis(100);
const SIZE: (u32, u32) = (960, 540);
const COLOURS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
];

/// Events counted in [`BIN`]-wide bins from a start instant.
#[derive(Debug, Clone)]
pub struct Timeline {
    start: Instant,
    counts: Vec<u64>,
}

impl Timeline {
    pub fn new(start: Instant) -> Timeline {
        Timeline {
            start,
            counts: Vec::new(),
        }
    }

    fn bin(&self, at: Instant) -> usize {
        (at.saturating_duration_since(self.start).as_nanos() / BIN.as_nanos()) as usize
    }

    /// Counts `n` events at `at`.
    pub fn add(&mut self, at: Instant, n: u64) {
        let bin = self.bin(at);
        if self.counts.len() <= bin {
            self.counts.resize(bin + 1, 0);
        }
        self.counts[bin] += n;
    }

    /// Adds another timeline's counts (one with the same start).
    pub fn merge(&mut self, other: &Timeline) {
        if self.counts.len() < other.counts.len() {
            self.counts.resize(other.counts.len(), 0);
        }
        for (mine, theirs) in self.counts.iter_mut().zip(&other.counts) {
            *mine += theirs;
        }
    }

    /// (seconds since the start at the bin's end, events per second in the bin), from the
    /// first bin with an event to the last.
    pub fn per_second(&self) -> Vec<(f64, f64)> {
        let first = self.counts.iter().position(|&n| n > 0).unwrap_or(0);
        let scale = 1.0 / BIN.as_secs_f64();
        (first..self.counts.len())
            .map(|i| {
                (
                    ((i + 1) as f64) * BIN.as_secs_f64(),
                    self.counts[i] as f64 * scale,
                )
            })
            .collect()
    }
}

/// A latency histogram (microseconds) per [`BIN`] from a start instant.
#[derive(Debug, Clone)]
pub struct LatencyTimeline {
    start: Instant,
    bins: Vec<Histogram<u64>>,
}

impl LatencyTimeline {
    pub fn new(start: Instant) -> LatencyTimeline {
        LatencyTimeline {
            start,
            bins: Vec::new(),
        }
    }

    /// Records a latency of `micros` observed at `at`.
    pub fn record(&mut self, at: Instant, micros: u64) -> anyhow::Result<()> {
        let bin = (at.saturating_duration_since(self.start).as_nanos() / BIN.as_nanos()) as usize;
        while self.bins.len() <= bin {
            // Two significant figures: a percentile per tenth of a second needs no more.
            self.bins
                .push(Histogram::new_with_bounds(1, 600_000_000, 2)?);
        }
        self.bins[bin].record(micros.max(1))?;
        Ok(())
    }

    /// (seconds since the start at the bin's end, the `quantile` in milliseconds) for every bin
    /// that recorded something.
    pub fn quantile_ms(&self, quantile: f64) -> Vec<(f64, f64)> {
        self.bins
            .iter()
            .enumerate()
            .filter(|(_, h)| !h.is_empty())
            .map(|(i, h)| {
                (
                    ((i + 1) as f64) * BIN.as_secs_f64(),
                    h.value_at_quantile(quantile) as f64 / 1000.0,
                )
            })
            .collect()
    }
}

/// A named line.
#[derive(Debug)]
pub struct Series {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

fn draw_error(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("drawing the chart: {e}")
}

/// `1 / (1 - q)` on a log scale: 0 is the 0th percentile, 1 the 90th, 2 the 99th, 3 the 99.9th.
fn nines(quantile: f64) -> f64 {
    (1.0 / (1.0 - quantile)).log10()
}

fn percentile_label(nines: &f64) -> String {
    let percent = 100.0 * (1.0 - 10f64.powf(-nines));
    let digits = (nines.round() as usize).saturating_sub(2);
    format!("{percent:.digits$}%")
}

/// The latency distribution as HdrHistogram plots it: latency against percentile, the
/// percentile axis stretched so that each further nine takes the same width.
pub fn percentile_curve(
    path: &Path,
    title: &str,
    histograms: &[(&str, &Histogram<u64>)],
) -> anyhow::Result<()> {
    let curves: Vec<Series> = histograms
        .iter()
        .map(|(name, histogram)| Series {
            name: name.to_string(),
            points: histogram
                .iter_quantiles(5)
                .filter(|step| step.quantile_iterated_to() < 1.0)
                .map(|step| {
                    (
                        nines(step.quantile_iterated_to()),
                        step.value_iterated_to() as f64 / 1000.0,
                    )
                })
                .collect(),
        })
        .collect();
    let x_max = curves
        .iter()
        .flat_map(|c| c.points.iter().map(|p| p.0))
        .fold(1.0f64, f64::max)
        .ceil();
    let y_max = histograms
        .iter()
        .map(|(_, h)| h.max() as f64 / 1000.0)
        .fold(0.001f64, f64::max)
        * 1.05;
    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(15)
        .margin_right(45)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_labels(x_max as usize + 1)
        .x_label_formatter(&percentile_label)
        .x_desc("percentile")
        .y_desc("latency (ms)")
        .draw()
        .map_err(draw_error)?;
    for (i, curve) in curves.into_iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(curve.points, colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(curve.name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)?;
    root.present().map_err(draw_error)
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    x_max: f64,
    series: &[Series],
) -> anyhow::Result<()> {
    let y_max = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.001f64, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(15)
        .margin_right(30)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(0f64..x_max, 0f64..y_max)
        .map_err(draw_error)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc(y_desc)
        .y_label_formatter(&|y| {
            if *y >= 10_000.0 {
                format!("{:.0}k", y / 1000.0)
            } else if *y >= 10.0 || *y == 0.0 {
                format!("{y:.0}")
            } else {
                format!("{y:.2}")
            }
        })
        .draw()
        .map_err(draw_error)?;
    for (i, s) in series.iter().enumerate() {
        let colour = COLOURS[i % COLOURS.len()];
        chart
            .draw_series(LineSeries::new(s.points.clone(), colour.stroke_width(2)))
            .map_err(draw_error)?
            .label(s.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(draw_error)
}

/// Throughput over time (`rates`, per second, in `rate_unit`) and, when there are any, latency
/// percentiles over time (milliseconds) in a second panel below it.
pub fn over_time(
    path: &Path,
    title: &str,
    rate_unit: &str,
    rates: &[Series],
    latencies: &[Series],
) -> anyhow::Result<()> {
    let x_max = rates
        .iter()
        .chain(latencies)
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .fold(0.1f64, f64::max);
    let height = if latencies.is_empty() {
        SIZE.1
    } else {
        SIZE.1 * 2
    };
    let root = SVGBackend::new(path, (SIZE.0, height)).into_drawing_area();
    root.fill(&WHITE).map_err(draw_error)?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(draw_error)?;
    if latencies.is_empty() {
        panel(&root, "throughput", rate_unit, x_max, rates)?;
    } else {
        let (upper, lower) = root.split_vertically(root.dim_in_pixel().1 / 2);
        panel(&upper, "throughput", rate_unit, x_max, rates)?;
        panel(&lower, "latency", "ms", x_max, latencies)?;
    }
    root.present().map_err(draw_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_labels_name_the_nines() {
        assert_eq!(percentile_label(&0.0), "0%");
        assert_eq!(percentile_label(&1.0), "90%");
        assert_eq!(percentile_label(&2.0), "99%");
        assert_eq!(percentile_label(&3.0), "99.9%");
        assert_eq!(percentile_label(&4.0), "99.99%");
    }

    #[test]
    fn a_timeline_gives_rates_per_second_from_its_first_event() {
        let start = Instant::now();
        let mut timeline = Timeline::new(start);
        timeline.add(start + Duration::from_millis(250), 10);
        timeline.add(start + Duration::from_millis(350), 20);
        let rates = timeline.per_second();
        assert_eq!(rates.len(), 2);
        assert!((rates[0].1 - 100.0).abs() < 1e-9 && (rates[1].1 - 200.0).abs() < 1e-9);
        assert!((rates[0].0 - 0.3).abs() < 1e-9);
    }
}
