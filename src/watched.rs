//! Pure: what an endpoint's answers say as metrics: the values its
//! `metrics` filters find (`pollhook_value`), the HTTP status of its last
//! answer (`pollhook_last_status_code`) and when the certificate of an
//! `https` endpoint expires (`pollhook_tls_cert_expiry_timestamp_seconds`).
//!
//! The poll finds them ([`Answer`]); the endpoint's status keeps the last
//! ones ([`Watched`]), and `/metrics` writes them when it is scraped.

use std::sync::Arc;

use serde_json::Value;

use crate::jq::Jq;

/// An endpoint's `metrics`: each name with its jq filter, in name order.
#[derive(Debug, Clone, PartialEq)]
pub struct Filters(pub Box<[(Arc<str>, Jq)]>);

/// A metric's name as `metrics` keys are written: what a Prometheus label
/// value reads without escaping (letters, digits, `_`, `-`, `.`, `:`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct MetricName(pub String);

impl std::str::FromStr for MetricName {
    type Err = String;

    fn from_str(name: &str) -> Result<MetricName, String> {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
        match !name.is_empty() && name.len() <= 100 && name.chars().all(allowed) {
            true => Ok(MetricName(name.to_string())),
            false => Err(format!(
                "invalid metric name `{name}`: use 1 to 100 letters, digits, `_`, `-`, `.` or `:`"
            )),
        }
    }
}

impl<'de> serde::Deserialize<'de> for MetricName {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Each `metrics` filter's number, or why it has none.
pub type Values = Vec<(Arc<str>, Result<f64, String>)>;

/// What one poll's answer said, besides its document.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Answer {
    /// The HTTP status of the last response (of a paged list: its last page).
    pub status: u16,
    /// When the server's certificate expires, in Unix seconds (`https` only).
    pub certificate_expiry_s: Option<i64>,
    /// Each `metrics` filter's number, or why it has none; `None` when no
    /// body came (a 304): the values stay as they were.
    pub values: Option<Values>,
}

/// When a DER certificate stops being valid, in Unix seconds; `None` when
/// it does not parse.
pub fn certificate_expiry(der: &[u8]) -> Option<i64> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(certificate.validity().not_after.timestamp())
}

/// Runs every filter over the response, as JSON. A filter gives a value
/// when its first output is a number (or a boolean: 0 or 1).
pub fn values(filters: &Filters, body: &[u8]) -> Values {
    let response = serde_json::from_slice::<Value>(body)
        .map_err(|error| format!("the response is not JSON: {error}"));
    filters
        .0
        .iter()
        .map(|(name, filter)| {
            let value = response
                .as_ref()
                .map_err(Clone::clone)
                .and_then(|response| number(filter, response));
            (name.clone(), value)
        })
        .collect()
}

fn number(filter: &Jq, response: &Value) -> Result<f64, String> {
    let outputs = filter.run(response)?;
    match outputs.first() {
        Some(Value::Number(number)) => number
            .as_f64()
            .filter(|value| value.is_finite())
            .ok_or_else(|| format!("`{number}` is too large for a metric")),
        Some(Value::Bool(flag)) => Ok(f64::from(u8::from(*flag))),
        Some(other) => Err(format!(
            "gave {}, not a number",
            shorten(&other.to_string())
        )),
        None => Err("gave no output".to_string()),
    }
}

fn shorten(text: &str) -> String {
    match text.char_indices().nth(60) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

/// What an endpoint's metrics show now: the last answer's, and the names
/// already warned about (a value that is not a number is logged once, not
/// at every poll).
#[derive(Debug, Clone, Default)]
pub struct Watched {
    pub status: Option<u16>,
    pub certificate_expiry_s: Option<i64>,
    pub values: Vec<(Arc<str>, f64)>,
    warned: Vec<Arc<str>>,
}

impl Watched {
    /// Takes a successful poll's answer. Returns the values to warn about
    /// now: those that are not numbers and were not warned about before.
    pub fn answered(&mut self, answer: &Answer) -> Vec<(Arc<str>, String)> {
        self.status = Some(answer.status);
        if answer.certificate_expiry_s.is_some() {
            self.certificate_expiry_s = answer.certificate_expiry_s;
        }
        let Some(values) = &answer.values else {
            return Vec::new();
        };
        self.values.clear();
        let mut warn = Vec::new();
        for (name, value) in values {
            match value {
                Ok(value) => {
                    self.values.push((name.clone(), *value));
                    self.warned.retain(|warned| warned != name);
                }
                Err(why) if !self.warned.contains(name) => {
                    self.warned.push(name.clone());
                    warn.push((name.clone(), why.clone()));
                }
                Err(_) => {}
            }
        }
        warn
    }

    /// A poll the server answered with an error status. The values stay
    /// those of the last answer that had them.
    pub fn failed(&mut self, status: u16) {
        self.status = Some(status);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filters(pairs: &[(&str, &str)]) -> Filters {
        Filters(
            pairs
                .iter()
                .map(|(name, code)| (Arc::from(*name), code.parse().unwrap()))
                .collect(),
        )
    }

    #[test]
    fn numbers_and_booleans_are_values_and_the_rest_say_why_not() {
        let filters = filters(&[
            ("price", ".data.amount"),
            ("stock", ".items | length"),
            ("open", ".open"),
            ("name", ".name"),
            ("none", "empty"),
            ("huge", ".huge"),
        ]);
        let body =
            br#"{"data":{"amount":12.5},"items":[1,2,3],"open":true,"name":"shop","huge":1e400}"#;
        let found: Vec<(String, Result<f64, String>)> = values(&filters, body)
            .into_iter()
            .map(|(name, value)| (name.to_string(), value))
            .collect();
        let expected = [
            ("price", Ok(12.5)),
            ("stock", Ok(3.0)),
            ("open", Ok(1.0)),
            ("name", Err("gave \"shop\", not a number".to_string())),
            ("none", Err("gave no output".to_string())),
            (
                "huge",
                Err("`1e+400` is too large for a metric".to_string()),
            ),
        ]
        .map(|(name, value)| (name.to_string(), value));
        assert_eq!(found, expected);
        let garbage = values(&filters, b"<html>");
        assert!(garbage.iter().all(|(_, value)| {
            value
                .as_ref()
                .is_err_and(|why| why.starts_with("the response is not JSON"))
        }));
    }

    #[test]
    fn a_value_that_is_not_a_number_is_warned_about_once() {
        let mut watched = Watched::default();
        let answer = |value: Result<f64, String>| Answer {
            status: 200,
            certificate_expiry_s: None,
            values: Some(vec![(Arc::from("price"), value)]),
        };
        let bad = answer(Err("gave null, not a number".into()));
        assert_eq!(watched.answered(&bad).len(), 1);
        assert!(watched.values.is_empty());
        assert!(watched.answered(&bad).is_empty());
        watched.answered(&answer(Ok(3.0)));
        assert_eq!(watched.values, vec![(Arc::from("price"), 3.0)]);
        // A 304 has no body: the values stay.
        let not_modified = Answer {
            status: 304,
            ..Answer::default()
        };
        watched.answered(&not_modified);
        assert_eq!((watched.status, watched.values.len()), (Some(304), 1));
        // Good again, then bad again: said again.
        assert_eq!(watched.answered(&bad).len(), 1);
        watched.failed(503);
        assert_eq!(watched.status, Some(503));
        assert_eq!(watched.values, Vec::new());
    }

    #[test]
    fn metric_names() {
        for good in ["price", "stock_level", "a.b-c:d", "X9"] {
            assert!(good.parse::<MetricName>().is_ok(), "{good}");
        }
        for bad in ["", "with space", "quote\"", "ünï"] {
            assert!(bad.parse::<MetricName>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_certificate_says_when_it_expires() {
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 1, 2);
        let key = rcgen::KeyPair::generate().unwrap();
        let certificate = params.self_signed(&key).unwrap();
        assert_eq!(certificate_expiry(certificate.der()), Some(1_925_078_400));
        assert_eq!(certificate_expiry(b"not a certificate"), None);
    }
}
