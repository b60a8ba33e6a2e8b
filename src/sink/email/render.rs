//! A message's words: its Subject, a plain-text part and an HTML part, for one alert or a
//! group of them.
//!
//! Every string that comes from an event (pipeline, stage and metric names, and so the
//! summary and the links built from them) is untrusted: up to 128 characters of anything,
//! `<script>`, quotes, CR/LF or bidi controls included. So: control and invisible
//! formatting characters become U+FFFD everywhere (a name cannot start a new header
//! line, fake a line of the text part, or reorder what the reader sees), everything in the
//! HTML is escaped, and a link is a link only when it is http(s). The Subject is also cut
//! to a length every mail client shows.

use std::fmt::Write;

use crate::alert::{human_number, Alert, AlertStatus};
use crate::time::{format_ms, human_ms};

/// Longest Subject, in characters: clients show 60–100, and a bound keeps a group of long
/// names from building a header that servers refuse.
const SUBJECT_MAX_CHARS: usize = 200;

/// Alerts shown in full in one message. A larger digest (a storm held back by the hourly
/// cap) lists the rest one line each: still every alert, in a message that stays readable
/// and well under servers' size limits.
const DETAILED_MAX: usize = 50;

/// What the mailer puts in the message.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Renders `alerts` (one message's worth, at least one). `overview` is the dashboard's base
/// URL, linked in the footer.
pub fn render(alerts: &[Alert], overview: Option<&str>) -> Rendered {
    let ordered = reading_order(alerts);
    let subject = subject(&ordered);
    Rendered {
        text: text(&ordered, overview),
        html: html(&subject, &ordered, overview),
        subject,
    }
}

/// Firing before resolved, critical before warning; otherwise in arrival order.
fn reading_order(alerts: &[Alert]) -> Vec<&Alert> {
    let mut ordered: Vec<&Alert> = alerts.iter().collect();
    ordered.sort_by_key(|a| (a.status == AlertStatus::Resolved, a.severity != "critical"));
    ordered
}

fn subject(alerts: &[&Alert]) -> String {
    let first = alerts[0];
    let line = if let [only] = alerts {
        match only.status {
            AlertStatus::Firing => {
                format!("[pipewatch] FIRING {}: {}", only.severity, only.summary)
            }
            AlertStatus::Resolved => format!("[pipewatch] RESOLVED: {}", only.summary),
        }
    } else {
        format!(
            "[pipewatch] {}: {}/{} {} and {} more",
            counts(alerts),
            first.pipeline,
            first.stage,
            first.kind,
            alerts.len() - 1
        )
    };
    one_line(&line, SUBJECT_MAX_CHARS)
}

/// "3 firing (1 critical), 1 resolved".
fn counts(alerts: &[&Alert]) -> String {
    let firing = alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing)
        .count();
    let critical = alerts
        .iter()
        .filter(|a| a.status == AlertStatus::Firing && a.severity == "critical")
        .count();
    let resolved = alerts.len() - firing;
    let mut parts = Vec::new();
    if firing > 0 {
        parts.push(if critical > 0 {
            format!("{firing} firing ({critical} critical)")
        } else {
            format!("{firing} firing")
        });
    }
    if resolved > 0 {
        parts.push(format!("{resolved} resolved"));
    }
    parts.join(", ")
}

/// One labelled line of an alert's details, shared by both parts so they never disagree.
struct Fact {
    label: &'static str,
    value: String,
}

fn facts(a: &Alert) -> Vec<Fact> {
    let fact = |label, value| Fact { label, value };
    let mut facts = vec![
        fact("Pipeline", a.pipeline.clone()),
        fact("Stage", a.stage.clone()),
        fact("Metric", a.metric.clone()),
        fact("Kind", a.kind.to_string()),
        fact(
            "Severity",
            match a.status {
                AlertStatus::Firing => a.severity.to_string(),
                AlertStatus::Resolved => format!("{} (resolved)", a.severity),
            },
        ),
        fact(
            "Detector",
            if a.score.is_finite() {
                format!("{} (score {:.1})", a.detector, a.score)
            } else {
                a.detector.to_string()
            },
        ),
        fact("Value", amount(a.kind, a.value)),
        fact(
            "Expected",
            format!(
                "{} (band {} to {})",
                amount(a.kind, a.expected),
                amount(a.kind, a.lower),
                amount(a.kind, a.upper)
            ),
        ),
        fact("Since", format_ms(a.starts_at)),
    ];
    if let Some(ended) = a.ends_at {
        facts.push(fact("Ended", format_ms(ended)));
    }
    facts.push(fact(
        "Bucket",
        format!(
            "{} to {}",
            format_ms(a.bucket_start),
            format_ms(a.bucket_end)
        ),
    ));
    if let Some(note) = a.annotations.get("note") {
        facts.push(fact("Note", note.clone()));
    }
    if !a.correlation_ids.is_empty() {
        facts.push(fact("Correlation ids", a.correlation_ids.join(", ")));
    }
    facts
}

/// A figure in its metric's unit. A forced resolution (the stage was forgotten) observed
/// nothing and carries NaN, read as "n/a".
fn amount(kind: &str, x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_string();
    }
    match kind {
        "error_rate" | "failure_rate" | "rejected_rate" => {
            format!("{}%", human_number(x * 100.0))
        }
        "latency" => format!("{} ms", human_number(x)),
        // silence is measured in seconds between events
        "silence" => human_ms((x * 1000.0) as i64),
        _ => human_number(x),
    }
}

fn badge(a: &Alert) -> String {
    match a.status {
        AlertStatus::Firing => format!("FIRING {}", a.severity),
        AlertStatus::Resolved => "RESOLVED".to_string(),
    }
}

fn dashboard(a: &Alert) -> Option<&str> {
    a.annotations.get("dashboard").map(String::as_str)
}

/// Only http(s) URLs become links: a `javascript:` or `data:` URL in an annotation must
/// not be one click away.
fn is_web_url(url: &str) -> bool {
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    lower.starts_with("http://") || lower.starts_with("https://")
}

fn intro(alerts: &[&Alert]) -> String {
    match alerts {
        [a] if a.status == AlertStatus::Firing => {
            "pipewatch found an anomaly in a pipeline stage.".to_string()
        }
        [_] => "An anomaly pipewatch reported has ended.".to_string(),
        _ => format!("pipewatch: {} alerts, {}.", alerts.len(), counts(alerts)),
    }
}

const FOOTER: &str = "Times are event time: when the pipeline's events say things happened.";

fn text(alerts: &[&Alert], overview: Option<&str>) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}\n", intro(alerts));
    let (detailed, listed) = alerts.split_at(alerts.len().min(DETAILED_MAX));
    for a in detailed {
        let _ = writeln!(out, "[{}] {}", badge(a), visible(&a.summary));
        for f in facts(a) {
            let _ = writeln!(
                out,
                "  {:<16} {}",
                format!("{}:", f.label),
                visible(&f.value)
            );
        }
        if let Some(url) = dashboard(a) {
            let _ = writeln!(out, "  {:<16} {}", "Dashboard:", visible(url));
        }
        out.push('\n');
    }
    if !listed.is_empty() {
        let _ = writeln!(out, "And {} more:", listed.len());
        for a in listed {
            let _ = write!(out, "- [{}] {}", badge(a), visible(&a.summary));
            if let Some(url) = dashboard(a) {
                let _ = write!(out, " <{}>", visible(url));
            }
            out.push('\n');
        }
        out.push('\n');
    }
    let _ = writeln!(out, "-- \n{FOOTER}");
    if let Some(url) = overview {
        let _ = writeln!(out, "All alerts: {}", visible(url));
    }
    out
}

fn html(subject: &str, alerts: &[&Alert], overview: Option<&str>) -> String {
    // Inline styles only: mail clients drop <style> blocks and external sheets.
    const TH: &str = "text-align:left;vertical-align:top;padding:2px 12px 2px 8px;\
                      font-weight:normal;color:#555;white-space:nowrap";
    const TD: &str = "padding:2px 8px;overflow-wrap:anywhere";
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{}</title></head>\n\
         <body style=\"font-family:sans-serif;font-size:14px;color:#222\">\n<p>{}</p>\n",
        escape_html(subject),
        escape_html(&intro(alerts))
    );
    let (detailed, listed) = alerts.split_at(alerts.len().min(DETAILED_MAX));
    for a in detailed {
        let colour = match (a.status, a.severity) {
            (AlertStatus::Resolved, _) => "#2e7d32",
            (_, "critical") => "#c62828",
            _ => "#ef6c00",
        };
        let _ = write!(
            out,
            "<table style=\"border-collapse:collapse;margin:0 0 18px 0;\
             border-left:4px solid {colour}\">\n\
             <tr><td colspan=\"2\" style=\"padding:4px 8px\"><b style=\"color:{colour}\">{}</b> \
             {}</td></tr>\n",
            escape_html(&badge(a)),
            escape_html(&a.summary)
        );
        for f in facts(a) {
            let _ = writeln!(
                out,
                "<tr><th style=\"{TH}\">{}</th><td style=\"{TD}\">{}</td></tr>",
                escape_html(f.label),
                escape_html(&f.value)
            );
        }
        if let Some(url) = dashboard(a) {
            let _ = writeln!(
                out,
                "<tr><th style=\"{TH}\">Dashboard</th><td style=\"{TD}\">{}</td></tr>",
                link(url, &format!("{}/{}", a.pipeline, a.stage))
            );
        }
        out.push_str("</table>\n");
    }
    if !listed.is_empty() {
        let _ = writeln!(out, "<p>And {} more:</p>\n<ul>", listed.len());
        for a in listed {
            let _ = write!(
                out,
                "<li><b>{}</b> {}",
                escape_html(&badge(a)),
                escape_html(&a.summary)
            );
            if let Some(url) = dashboard(a) {
                let _ = write!(out, " ({})", link(url, "dashboard"));
            }
            out.push_str("</li>\n");
        }
        out.push_str("</ul>\n");
    }
    let _ = write!(
        out,
        "<p style=\"color:#777;font-size:12px\">{}",
        escape_html(FOOTER)
    );
    if let Some(url) = overview {
        let _ = write!(out, "<br>All alerts: {}", link(url, url));
    }
    out.push_str("</p>\n</body></html>\n");
    out
}

/// `<a href>` for a web URL; the bare (escaped) text for anything else.
fn link(url: &str, label: &str) -> String {
    if is_web_url(url) {
        format!(
            "<a href=\"{}\">{}</a>",
            escape_html(url),
            escape_html(label)
        )
    } else {
        escape_html(url)
    }
}

/// Characters that could move text around or start a new line where the reader (or a
/// header parser) does not expect one: C0/C1 controls (CR, LF, NEL, ...), Unicode line
/// and paragraph separators, bidi overrides and isolates, the BOM.
fn is_hidden(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}' | '\u{2029}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}' | '\u{feff}'
        )
}

/// `s` with each hidden character replaced by U+FFFD, which shows that something was
/// there (a space would let `a\r\nBcc: x` pass for a normal name).
pub fn visible(s: &str) -> String {
    s.chars()
        .map(|c| if is_hidden(c) { '\u{fffd}' } else { c })
        .collect()
}

/// [`visible`], then cut to `max_chars` (on a character boundary, ending in "…"): a
/// header value that cannot span lines.
pub fn one_line(s: &str, max_chars: usize) -> String {
    let clean = visible(s);
    match clean.char_indices().nth(max_chars.saturating_sub(1)) {
        Some((cut, _)) if clean.chars().count() > max_chars => {
            format!("{}…", &clean[..cut])
        }
        _ => clean,
    }
}

/// [`visible`], then HTML-escaped for text and for quoted attribute values alike.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in visible(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A firing alert as the engine builds it (`orders_etl/transform`, records fell).
    pub(crate) fn alert() -> Alert {
        let kind = crate::metric::AlertKind::ThroughputDrop;
        crate::alert::test_alert("orders_etl", "transform", "records", kind)
    }

    const HOSTILE: &str = "<img src=x onerror=alert(1)>\"'&\r\nBcc: evil@x\u{202e}";

    #[test]
    fn one_firing_alert() {
        let r = render(&[alert()], Some("http://h:9898"));
        assert_eq!(
            r.subject,
            "[pipewatch] FIRING critical: orders_etl/transform records fell to 120 per 1m \
             (expected 8,200–11,800)"
        );
        for part in [&r.text, &r.html] {
            assert!(part.contains("records fell to 120 per 1m"), "{part}");
            assert!(part.contains("8,200 to 11,800"), "{part}");
            assert!(part.contains("10,000"), "{part}");
            assert!(part.contains("2026-11-24T03:01:00Z"), "{part}");
            assert!(
                part.contains("http://h:9898/stages/orders_etl/transform"),
                "{part}"
            );
            assert!(!part.contains("Ended"), "{part}");
        }
        assert!(r
            .html
            .contains("<a href=\"http://h:9898/stages/orders_etl/transform\">"));
        assert!(r.html.contains("<a href=\"http://h:9898\">"));
    }

    #[test]
    fn resolved_alert_says_when_it_ended() {
        let mut a = alert();
        a.status = AlertStatus::Resolved;
        a.ends_at = Some(a.starts_at + 600_000);
        a.summary = "orders_etl/transform records is back to 9,000".into();
        let r = render(&[a], None);
        assert_eq!(
            r.subject,
            "[pipewatch] RESOLVED: orders_etl/transform records is back to 9,000"
        );
        assert!(r.text.contains("Ended:           2026-11-24T03:11:00Z"));
        assert!(r.html.contains("RESOLVED"));
        assert!(
            !r.text.contains("All alerts"),
            "no overview link without one"
        );
    }

    #[test]
    fn a_group_counts_and_puts_firing_critical_first() {
        let mut warn = alert();
        warn.severity = "warning";
        warn.stage = "load".into();
        let mut resolved = alert();
        resolved.status = AlertStatus::Resolved;
        resolved.stage = "extract".into();
        let crit = alert();
        let r = render(&[resolved, warn, crit], None);
        assert_eq!(
            r.subject,
            "[pipewatch] 2 firing (1 critical), 1 resolved: orders_etl/transform \
             throughput_drop and 2 more"
        );
        let order: Vec<usize> = ["Stage:           transform", "load", "extract"]
            .iter()
            .map(|s| r.text.find(s).unwrap())
            .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{}", r.text);
    }

    #[test]
    fn hostile_names_are_escaped_and_cannot_break_lines() {
        let mut a = alert();
        a.pipeline = HOSTILE.into();
        a.stage = "a\r\nBcc: evil@x".into();
        a.metric = "quality.<b>".into();
        a.summary = format!("{}/{} {} fell", a.pipeline, a.stage, a.metric);
        a.annotations
            .insert("dashboard", "javascript:alert(1)//\"><script>".into());
        let r = render(&[a.clone(), a], None);

        assert!(
            !r.subject.contains(['\r', '\n', '\u{202e}']),
            "{:?}",
            r.subject
        );
        assert!(r.subject.contains("a\u{fffd}\u{fffd}Bcc: evil@x"));

        assert!(!r.text.contains('\r'), "{:?}", r.text);
        assert!(!r.text.contains("\nBcc"), "{:?}", r.text);

        let html = &r.html;
        assert!(!html.contains("<img"), "{html}");
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("<b>"), "{html}");
        assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;&quot;&#39;&amp;"));
        assert!(!html.contains('\r') && !html.contains("\nBcc"), "{html}");
        assert!(!html.contains("href=\"javascript"), "not a link: {html}");
        assert!(html.contains("javascript:alert(1)//&quot;&gt;&lt;script&gt;"));
    }

    #[test]
    fn subject_is_one_bounded_line() {
        let mut a = alert();
        a.summary = "ü".repeat(500);
        let s = render(&[a], None).subject;
        assert_eq!(s.chars().count(), SUBJECT_MAX_CHARS);
        assert!(s.ends_with('…'));
        assert_eq!(
            one_line("a\u{85}b\u{2028}c\td", 10),
            "a\u{fffd}b\u{fffd}c\u{fffd}d"
        );
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("exactly10!", 10), "exactly10!");
        assert_eq!(one_line("exactly11!!", 10), "exactly11…");
    }

    #[test]
    fn a_large_digest_lists_the_rest_one_line_each() {
        let alerts: Vec<Alert> = (0..DETAILED_MAX + 10)
            .map(|i| {
                let mut a = alert();
                a.stage = format!("stage-{i}");
                a.summary = format!("orders_etl/stage-{i} records fell");
                a
            })
            .collect();
        let r = render(&alerts, None);
        assert_eq!(r.text.matches("  Pipeline:").count(), DETAILED_MAX);
        assert!(r
            .text
            .contains("And 10 more:\n- [FIRING critical] orders_etl/stage-50 records fell <http"));
        assert!(r.text.contains("orders_etl/stage-59 records fell"));
        assert_eq!(r.html.matches("<table").count(), DETAILED_MAX);
        assert_eq!(r.html.matches("<li>").count(), 10);
        assert!(r.html.contains("orders_etl/stage-59 records fell"));
    }

    #[test]
    fn figures_in_their_units_and_nothing_observed_as_na() {
        let mut rate = alert();
        rate.kind = "error_rate";
        rate.value = 0.125;
        rate.lower = 0.0;
        rate.upper = 0.02;
        let r = render(&[rate], None);
        assert!(r.text.contains("12.5%"), "{}", r.text);
        assert!(r.text.contains("band 0% to 2%"), "{}", r.text);

        let mut forced = alert();
        forced.status = AlertStatus::Resolved;
        forced.detector = "none";
        forced.ends_at = Some(forced.starts_at);
        for x in [
            &mut forced.value,
            &mut forced.expected,
            &mut forced.lower,
            &mut forced.upper,
            &mut forced.score,
        ] {
            *x = f64::NAN;
        }
        forced
            .annotations
            .insert("note", "the stage was idle and is forgotten".into());
        let r = render(&[forced], None);
        assert!(r.text.contains("Value:           n/a"), "{}", r.text);
        assert!(r.text.contains("Detector:        none\n"), "{}", r.text);
        assert!(r.html.contains("the stage was idle and is forgotten"));
        assert!(!r.text.contains("NaN"));
    }
}
