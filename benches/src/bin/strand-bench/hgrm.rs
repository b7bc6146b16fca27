//! A histogram written out as HdrHistogram's percentile distribution (`.hgrm` text), the
//! format of Java's `AbstractHistogram::outputPercentileDistribution`: what the HdrHistogram
//! plotter and `wrk2` users read. Values are recorded in microseconds and written in
//! milliseconds.

use std::io::Write;

use hdrhistogram::Histogram;

/// Percentile ticks per half distance to 100%, as HdrHistogram's own tools use.
const TICKS_PER_HALF_DISTANCE: u32 = 5;
/// Recorded values are microseconds; the file says milliseconds.
const MICROS_PER_OUTPUT_UNIT: f64 = 1000.0;

pub fn write_percentile_distribution(
    histogram: &Histogram<u64>,
    out: &mut impl Write,
) -> std::io::Result<()> {
    let digits = usize::from(histogram.sigfig());
    writeln!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    for step in histogram.iter_quantiles(TICKS_PER_HALF_DISTANCE) {
        total += step.count_since_last_iteration();
        let value = step.value_iterated_to() as f64 / MICROS_PER_OUTPUT_UNIT;
        let quantile = step.quantile_iterated_to();
        if quantile < 1.0 {
            writeln!(
                out,
                "{value:12.digits$} {quantile:2.12} {total:10} {:14.2}",
                1.0 / (1.0 - quantile)
            )?;
        } else {
            writeln!(out, "{value:12.digits$} {quantile:2.12} {total:10}")?;
        }
    }
    // The Java implementation's sub-bucket count: the power of two that holds 2 * 10^sigfig.
    let sub_buckets = (2 * 10u64.pow(u32::from(histogram.sigfig()))).next_power_of_two();
    writeln!(
        out,
        "#[Mean    = {:12.digits$}, StdDeviation   = {:12.digits$}]",
        histogram.mean() / MICROS_PER_OUTPUT_UNIT,
        histogram.stdev() / MICROS_PER_OUTPUT_UNIT
    )?;
    writeln!(
        out,
        "#[Max     = {:12.digits$}, Total count    = {:12}]",
        histogram.max() as f64 / MICROS_PER_OUTPUT_UNIT,
        histogram.len()
    )?;
    writeln!(
        out,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        histogram.buckets(),
        sub_buckets
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_every_record_once_and_ends_at_the_max() {
        let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for us in 1..=1000u64 {
            histogram.record(us * 10).unwrap();
        }
        let mut out = Vec::new();
        write_percentile_distribution(&histogram, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .take_while(|line| !line.starts_with('#'))
            .map(|line| line.split_whitespace().collect())
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        // Values are each bucket's highest equivalent, as in the Java implementation: within
        // 0.1% at three significant figures.
        let ms = |cell: &str| cell.parse::<f64>().unwrap();
        assert!((ms(last[0]) - 10.0).abs() <= 0.01, "{last:?}");
        let median = rows.iter().find(|row| row[1] == "0.500000000000").unwrap();
        assert!((ms(median[0]) - 5.0).abs() <= 0.005, "{median:?}");
        assert!(text.contains(", Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
    }
}
