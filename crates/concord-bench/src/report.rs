//! One result line per figure, printed as a table or as JSON lines in the shape
//! PERFORMANCE.md documents.

use serde::Serialize;

/// One figure next to its same-run baseline.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub metric: String,
    pub value: f64,
    pub unit: &'static str,
    pub baseline: String,
    pub baseline_value: f64,
    pub ratio: f64,
    /// `None` for figures recorded for context only (no target).
    pub target: Option<f64>,
    pub pass: Option<bool>,
}

fn ratio(value: f64, baseline_value: f64) -> f64 {
    if baseline_value == 0.0 {
        0.0
    } else {
        value / baseline_value
    }
}

impl Row {
    /// Higher is better: passes when `value / baseline_value >= target`.
    pub fn at_least(
        workload: &'static str,
        metric: &str,
        value: f64,
        unit: &'static str,
        baseline: &str,
        baseline_value: f64,
        target: f64,
    ) -> Row {
        let r = ratio(value, baseline_value);
        Row {
            workload,
            metric: metric.to_string(),
            value,
            unit,
            baseline: baseline.to_string(),
            baseline_value,
            ratio: r,
            target: Some(target),
            pass: Some(r >= target),
        }
    }

    /// A figure with a limit it must stay within (`value <= limit`); the ratio is
    /// `value / limit` and the target 1.0. `extra_ok` folds in a further check.
    pub fn at_most(
        workload: &'static str,
        metric: &str,
        value: f64,
        unit: &'static str,
        limit: f64,
        extra_ok: bool,
    ) -> Row {
        Row {
            workload,
            metric: metric.to_string(),
            value,
            unit,
            baseline: "limit".to_string(),
            baseline_value: limit,
            ratio: ratio(value, limit),
            target: Some(1.0),
            pass: Some(value <= limit && extra_ok),
        }
    }

    /// Recorded for context: no target, `pass` is null.
    pub fn info(
        workload: &'static str,
        metric: &str,
        value: f64,
        unit: &'static str,
        baseline: &str,
        baseline_value: f64,
    ) -> Row {
        Row {
            workload,
            metric: metric.to_string(),
            value,
            unit,
            baseline: baseline.to_string(),
            baseline_value,
            ratio: ratio(value, baseline_value),
            target: None,
            pass: None,
        }
    }
}

fn round(x: f64) -> f64 {
    if x.abs() >= 100.0 {
        x.round()
    } else {
        (x * 1000.0).round() / 1000.0
    }
}

pub fn print_json(rows: &[Row]) {
    for r in rows {
        let mut r = r.clone();
        r.value = round(r.value);
        r.baseline_value = round(r.baseline_value);
        r.ratio = (r.ratio * 1000.0).round() / 1000.0;
        // Serialising plain numbers and strings cannot fail.
        println!("{}", serde_json::to_string(&r).unwrap_or_default());
    }
}

pub fn print_table(rows: &[Row]) {
    println!(
        "{:<4} {:<24} {:>14} {:<9} {:<20} {:>14} {:>7} {:>6} {:<5}",
        "id", "metric", "value", "unit", "baseline", "baseline", "ratio", "target", "pass"
    );
    for r in rows {
        println!(
            "{:<4} {:<24} {:>14.1} {:<9} {:<20} {:>14.1} {:>7.3} {:>6} {:<5}",
            r.workload,
            r.metric,
            r.value,
            r.unit,
            r.baseline,
            r.baseline_value,
            r.ratio,
            r.target.map_or("-".to_string(), |t| format!("{t}")),
            match r.pass {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "-",
            }
        );
    }
}
