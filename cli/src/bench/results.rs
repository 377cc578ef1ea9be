//! Collected samples and the three ways they are reported: a Markdown (or
//! plain) table, JSON, and the rows the plot is drawn from.

use serde::Serialize;

use super::stats::{summarize, Summary};

/// What was measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum System {
    #[serde(rename = "bulkhead-warm")]
    BulkheadWarm,
    #[serde(rename = "bulkhead-cold")]
    BulkheadCold,
    #[serde(rename = "crun")]
    Crun,
    #[serde(rename = "runc")]
    Runc,
    /// bulkhead itself as the OCI runtime (`bulkhead run --bundle`): the
    /// lifecycle engines drive, on the same bundles as crun and runc.
    #[serde(rename = "bulkhead-oci")]
    BulkheadOci,
    #[serde(rename = "firecracker")]
    Firecracker,
}

impl System {
    pub fn name(self) -> &'static str {
        match self {
            System::BulkheadWarm => "bulkhead-warm",
            System::BulkheadCold => "bulkhead-cold",
            System::Crun => "crun",
            System::Runc => "runc",
            System::BulkheadOci => "bulkhead-oci",
            System::Firecracker => "firecracker",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Unit {
    #[serde(rename = "ms")]
    Ms,
    #[serde(rename = "MiB")]
    MiB,
}

impl Unit {
    pub fn name(self) -> &'static str {
        match self {
            Unit::Ms => "ms",
            Unit::MiB => "MiB",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub system: System,
    pub metric: String,
    pub unit: Unit,
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub runs: usize,
}

#[derive(Serialize)]
struct Report<'a> {
    results: &'a [Row],
}

/// Samples per (system, metric, unit), kept in the order first recorded so
/// the report reads in phase order.
#[derive(Debug, Default)]
pub struct Results {
    series: Vec<(System, String, Unit, Vec<f64>)>,
}

impl Results {
    pub fn record(&mut self, system: System, metric: &str, unit: Unit, value: f64) {
        match self
            .series
            .iter_mut()
            .find(|(s, m, u, _)| *s == system && m == metric && *u == unit)
        {
            Some((_, _, _, samples)) => samples.push(value),
            None => self
                .series
                .push((system, metric.to_string(), unit, vec![value])),
        }
    }

    /// One row per series, grouped by system (in [`System`] order), each
    /// system's rows in the order first recorded.
    pub fn rows(&self) -> Vec<Row> {
        let mut rows: Vec<Row> = self
            .series
            .iter()
            .filter_map(|(system, metric, unit, samples)| {
                let Summary {
                    min,
                    median,
                    max,
                    runs,
                } = summarize(samples)?;
                Some(Row {
                    system: *system,
                    metric: metric.clone(),
                    unit: *unit,
                    min,
                    median,
                    max,
                    runs,
                })
            })
            .collect();
        rows.sort_by_key(|r| r.system);
        rows
    }
}

/// `{"results": [{"system", "metric", "unit", "min", "median", "max", "runs"}]}`.
pub fn to_json(rows: &[Row]) -> String {
    // Serializing plain structs of strings and finite numbers cannot fail.
    serde_json::to_string_pretty(&Report { results: rows }).unwrap_or_default()
}

fn figure(v: f64, unit: Unit) -> String {
    match unit {
        Unit::Ms if v.abs() < 100.0 => format!("{v:.2}"),
        Unit::Ms => format!("{v:.0}"),
        Unit::MiB => format!("{v:.1}"),
    }
}

pub fn to_markdown(rows: &[Row]) -> String {
    let mut out = String::from(
        "| system | metric | unit | min | median | max | runs |\n|---|---|---|---:|---:|---:|---:|\n",
    );
    for r in rows {
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} |\n",
            r.system.name(),
            r.metric,
            r.unit.name(),
            figure(r.min, r.unit),
            figure(r.median, r.unit),
            figure(r.max, r.unit),
            r.runs
        ));
    }
    out
}

/// The same table aligned for a terminal.
pub fn to_text(rows: &[Row]) -> String {
    let width = rows
        .iter()
        .map(|r| r.metric.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "{:<14} {:<width$} {:<4} {:>10} {:>10} {:>10} {:>4}\n",
        "SYSTEM", "METRIC", "UNIT", "MIN", "MEDIAN", "MAX", "RUNS"
    );
    for r in rows {
        out.push_str(&format!(
            "{:<14} {:<width$} {:<4} {:>10} {:>10} {:>10} {:>4}\n",
            r.system.name(),
            r.metric,
            r.unit.name(),
            figure(r.min, r.unit),
            figure(r.median, r.unit),
            figure(r.max, r.unit),
            r.runs
        ));
    }
    out
}

/// The median of one row, if present.
pub fn median_of(rows: &[Row], system: System, metric: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.system == system && r.metric == metric)
        .map(|r| r.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Results {
        let mut r = Results::default();
        for v in [30.0, 10.0, 20.0] {
            r.record(System::BulkheadCold, "true: total", Unit::Ms, v);
        }
        r.record(System::Runc, "true: total", Unit::Ms, 25.0);
        r.record(
            System::BulkheadCold,
            "true: vmm overhead (PSS)",
            Unit::MiB,
            9.5,
        );
        r
    }

    #[test]
    fn rows_group_by_system_and_summarize() {
        let rows = sample().rows();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0].system, System::BulkheadCold);
        assert_eq!(rows[0].metric, "true: total");
        assert_eq!(
            (rows[0].min, rows[0].median, rows[0].max),
            (10.0, 20.0, 30.0)
        );
        assert_eq!(rows[0].runs, 3);
        // Recorded after runc, listed with the rest of bulkhead.
        assert_eq!(rows[1].system, System::BulkheadCold);
        assert_eq!(rows[1].unit, Unit::MiB);
        assert_eq!(rows[2].system, System::Runc);
        assert_eq!(median_of(&rows, System::Runc, "true: total"), Some(25.0));
        assert_eq!(median_of(&rows, System::Crun, "true: total"), None);
    }

    #[test]
    fn json_has_exactly_the_documented_shape() {
        let json: serde_json::Value = serde_json::from_str(&to_json(&sample().rows())).unwrap();
        let obj = json.as_object().unwrap();
        assert_eq!(obj.keys().collect::<Vec<_>>(), ["results"]);
        let results = obj["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        for r in results {
            let mut keys: Vec<_> = r.as_object().unwrap().keys().cloned().collect();
            keys.sort();
            assert_eq!(
                keys,
                ["max", "median", "metric", "min", "runs", "system", "unit"]
            );
            assert!([
                "bulkhead-warm",
                "bulkhead-cold",
                "crun",
                "runc",
                "firecracker"
            ]
            .contains(&r["system"].as_str().unwrap()));
            assert!(["ms", "MiB"].contains(&r["unit"].as_str().unwrap()));
            assert!(r["runs"].is_u64());
            for k in ["min", "median", "max"] {
                assert!(r[k].is_number());
            }
        }
        assert_eq!(
            results[0],
            serde_json::json!({"system": "bulkhead-cold", "metric": "true: total",
                "unit": "ms", "min": 10.0, "median": 20.0, "max": 30.0, "runs": 3})
        );
        assert_eq!(results[1]["unit"], "MiB");
    }

    #[test]
    fn every_system_serializes_to_its_name() {
        for s in [
            System::BulkheadWarm,
            System::BulkheadCold,
            System::Crun,
            System::Runc,
            System::BulkheadOci,
            System::Firecracker,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.name());
        }
    }

    #[test]
    fn markdown_table_has_a_row_per_result() {
        let md = to_markdown(&sample().rows());
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines.len(), 2 + 3);
        assert!(lines[0].starts_with("| system | metric |"));
        assert_eq!(
            lines[2],
            "| bulkhead-cold | true: total | ms | 10.00 | 20.00 | 30.00 | 3 |"
        );
        assert!(lines[3].contains("| MiB | 9.5 | 9.5 | 9.5 | 1 |"));
        assert_eq!(to_text(&sample().rows()).lines().count(), 4);
    }
}
