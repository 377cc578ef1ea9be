//! Summaries of repeated measurements.

/// min / median / max of a set of samples.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub runs: usize,
}

/// Summarizes `samples`; `None` when there are none or one is not a number
/// (a NaN would make the order, and so every figure, meaningless).
pub fn summarize(samples: &[f64]) -> Option<Summary> {
    if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    // The mean of the two middle samples for an even count.
    let median = if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    };
    Some(Summary {
        min: sorted[0],
        median,
        max: sorted[n - 1],
        runs: n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_count_takes_the_middle_sample() {
        let s = summarize(&[30.0, 10.0, 20.0]).unwrap();
        assert_eq!(
            s,
            Summary {
                min: 10.0,
                median: 20.0,
                max: 30.0,
                runs: 3
            }
        );
    }

    #[test]
    fn even_count_averages_the_middle_pair() {
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.runs), (1.0, 2.5, 4.0, 4));
    }

    #[test]
    fn one_sample_is_min_median_and_max() {
        let s = summarize(&[7.5]).unwrap();
        assert_eq!((s.min, s.median, s.max, s.runs), (7.5, 7.5, 7.5, 1));
    }

    #[test]
    fn nothing_to_summarize() {
        assert_eq!(summarize(&[]), None);
        assert_eq!(summarize(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn negative_and_duplicate_samples() {
        let s = summarize(&[-1.0, 5.0, 5.0, 5.0, -1.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (-1.0, 5.0, 5.0));
    }
}
