//! The email sink against a real SMTP server: `tests/smtp_sink.py` (aiosmtpd, Debian's
//! `python3-aiosmtpd`), started on a free loopback port for each test and stopped after.
//! It writes each message it accepts to a directory, parsed by Python's email package, so
//! what is checked here is what a mail client would read.

mod common;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::free_port;
use common::smtp::{eventually, SmtpServer};

use pipewatch::alert::{Alert, AlertFactory, AlertFacts, Notice, Severity};
use pipewatch::config::{EmailRoute, EmailSettings, EmailTls, Settings};
use pipewatch::metric::AlertKind;
use pipewatch::sink::email::{EmailCounts, EmailNotifier};

const DASHBOARD: &str = "http://pipewatch.test:9898";

/// Email settings for a server on `port`, with durations short enough for tests, checked
/// by the same validation as a configuration file.
fn settings(port: u16, edit: impl FnOnce(&mut EmailSettings)) -> EmailSettings {
    let mut all = Settings::defaults();
    let e = &mut all.email;
    e.enabled = true;
    e.smtp_port = port;
    e.from = "pipewatch <pipewatch@example.com>".into();
    e.to = vec!["oncall@example.com".into()];
    e.timeout = Duration::from_secs(2);
    e.group_wait = Duration::from_millis(200);
    e.retry_backoff = Duration::from_millis(50);
    e.retry_max_backoff = Duration::from_millis(200);
    edit(e);
    all.validate().expect("test settings are valid");
    all.email
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

fn start(settings: &EmailSettings, runtime: &tokio::runtime::Runtime) -> EmailNotifier {
    EmailNotifier::start(settings, Some(DASHBOARD), runtime.handle()).expect("notifier starts")
}

fn counts(notifier: &EmailNotifier) -> EmailCounts {
    notifier.counters().snapshot()
}

/// Shuts `notifier` down; returns its final counts.
fn stop(notifier: EmailNotifier, rt: &tokio::runtime::Runtime, timeout: Duration) -> EmailCounts {
    let counters = Arc::clone(notifier.counters());
    rt.block_on(notifier.shutdown(timeout));
    counters.snapshot()
}

/// Waits until the counters satisfy `check`; fails with them otherwise.
fn wait_counts(notifier: &EmailNotifier, what: &str, check: impl Fn(&EmailCounts) -> bool) {
    let found = eventually(what, || {
        let c = counts(notifier);
        check(&c).then_some(())
    });
    assert!(found.is_some(), "{what}: {:?}", counts(notifier));
}

const STARTED_MS: i64 = 1_795_489_260_000; // 2026-11-24T03:01:00Z

/// An alert as the engine builds it: `records` of `pipeline/stage` fell to 120.
fn alert(pipeline: &str, stage: &str, notice: Notice) -> Alert {
    let factory = AlertFactory {
        bucket_ms: 60_000,
        dashboard_url: DASHBOARD.into(),
    };
    factory.build(&AlertFacts {
        notice,
        kind: AlertKind::ThroughputDrop,
        pipeline,
        stage,
        metric: "records",
        detector: "ewma",
        value: 120.0,
        expected: 10_000.0,
        lower: 8_200.0,
        upper: 11_800.0,
        score: -16.4,
        bucket_start: STARTED_MS - 60_000,
        bucket_end: STARTED_MS,
        correlation_ids: &["run-1"],
        upward_only: false,
    })
}

fn firing(pipeline: &str, stage: &str) -> Alert {
    alert(
        pipeline,
        stage,
        Notice::Firing {
            started_ms: STARTED_MS,
            severity: Severity::Critical,
        },
    )
}

fn resolved(pipeline: &str, stage: &str) -> Alert {
    let mut a = alert(
        pipeline,
        stage,
        Notice::Resolved {
            started_ms: STARTED_MS,
            ended_ms: STARTED_MS + 600_000,
            severity: Severity::Critical,
        },
    );
    a.value = 9_500.0;
    a
}

#[test]
fn a_firing_alert_then_its_resolution() {
    let port = free_port();
    let server = SmtpServer::start(port, &[]);
    let rt = runtime();
    let notifier = start(&settings(port, |_| {}), &rt);

    let sent_at = Instant::now();
    notifier.notify(&firing("orders_etl", "transform"));
    let [mail] = &server.wait_for(1)[..] else {
        panic!("one message")
    };
    assert!(
        sent_at.elapsed() >= Duration::from_millis(200),
        "it waited group_wait for company"
    );
    assert_eq!(
        mail.subject(),
        "[pipewatch] FIRING critical: orders_etl/transform records fell to 120 per 1m \
         (expected 8,200–11,800)"
    );
    assert_eq!(
        mail.header("From").unwrap(),
        "pipewatch <pipewatch@example.com>"
    );
    assert_eq!(mail.header("To").unwrap(), "oncall@example.com");
    assert_eq!(mail.recipients(), ["oncall@example.com"]);
    assert_eq!(mail.0["mail_from"], "pipewatch@example.com");
    assert_eq!(mail.0["content_type"], "multipart/alternative");
    let link = "http://pipewatch.test:9898/stages/orders_etl/transform";
    for part in mail.parts() {
        for needle in [
            "orders_etl/transform records fell to 120 per 1m (expected 8,200–11,800)",
            "throughput_drop",
            "critical",
            "ewma",
            "8,200 to 11,800",
            "10,000",
            "2026-11-24T03:01:00Z",
            link,
        ] {
            assert!(part.contains(needle), "{needle:?} not in {part}");
        }
        assert!(!part.contains("Ended"), "{part}");
    }
    assert!(mail.html().contains(&format!("<a href=\"{link}\">")));
    assert!(mail.text().contains(&format!("All alerts: {DASHBOARD}")));

    notifier.notify(&resolved("orders_etl", "transform"));
    let mail = &server.wait_for(2)[1];
    assert!(
        mail.subject()
            .starts_with("[pipewatch] RESOLVED: orders_etl/transform records"),
        "{}",
        mail.subject()
    );
    for part in mail.parts() {
        assert!(part.contains("RESOLVED"), "{part}");
        assert!(part.contains("2026-11-24T03:11:00Z"), "ended: {part}");
        assert!(part.contains(link), "{part}");
    }

    let c = stop(notifier, &rt, Duration::from_secs(5));
    assert_eq!(server.messages().len(), 2);
    assert_eq!(
        c,
        EmailCounts {
            messages_sent: 2,
            alerts_sent: 2,
            ..EmailCounts::default()
        }
    );
}

#[test]
fn alerts_within_group_wait_share_a_message_per_route() {
    let port = free_port();
    let server = SmtpServer::start(port, &[]);
    let rt = runtime();
    let notifier = start(
        &settings(port, |e| {
            e.routes = vec![EmailRoute {
                stages: Some("billing/*".into()),
                metrics: None,
                to: vec!["billing-oncall@example.com".into()],
            }];
        }),
        &rt,
    );
    for (pipeline, stage) in [
        ("orders", "extract"),
        ("billing", "invoice"),
        ("orders", "load"),
        ("billing", "charge"),
    ] {
        notifier.notify(&firing(pipeline, stage));
    }
    let mut mails = server.wait_for(2);
    // nothing more comes after the group wait
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(server.messages().len(), 2);
    mails.sort_by_key(|m| m.recipients());
    let (billing, default) = (&mails[0], &mails[1]);
    assert_eq!(billing.recipients(), ["billing-oncall@example.com"]);
    assert_eq!(default.recipients(), ["oncall@example.com"]);
    assert!(
        billing
            .subject()
            .starts_with("[pipewatch] 2 firing (2 critical): billing/invoice"),
        "{}",
        billing.subject()
    );
    for part in billing.parts() {
        assert!(part.contains("billing/invoice") && part.contains("billing/charge"));
        assert!(!part.contains("orders/"), "{part}");
    }
    for part in default.parts() {
        assert!(part.contains("orders/extract") && part.contains("orders/load"));
        assert!(!part.contains("billing/"), "{part}");
    }
    let c = stop(notifier, &rt, Duration::from_secs(5));
    assert_eq!(
        (c.messages_sent, c.alerts_sent, c.queued),
        (2, 4, 0),
        "{c:?}"
    );
}

#[test]
fn hostile_names_are_escaped_and_add_no_headers() {
    let port = free_port();
    let server = SmtpServer::start(port, &[]);
    let rt = runtime();
    let notifier = start(&settings(port, |_| {}), &rt);
    let pipeline = "<img src=x onerror=alert(1)>";
    let stage = "a\r\nBcc: evil@x\r\n\r\n<script>alert('x')</script>";
    notifier.notify(&firing(pipeline, stage));
    let [mail] = &server.wait_for(1)[..] else {
        panic!("one message")
    };

    // the envelope and the headers are ours alone
    assert_eq!(mail.recipients(), ["oncall@example.com"]);
    let mut names: Vec<String> = mail.headers().into_iter().map(|(n, _)| n).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "Content-Type",
            "Date",
            "From",
            "MIME-Version",
            "Message-ID",
            "Subject",
            "To",
            "User-Agent"
        ]
    );
    let raw = mail.0["raw_headers"].as_str().unwrap();
    assert!(!raw.to_ascii_lowercase().contains("bcc"), "{raw}");
    let subject = mail.subject();
    assert!(!subject.contains(['\r', '\n']), "{subject:?}");
    assert!(
        subject.contains("<img src=x onerror=alert(1)>/a\u{fffd}\u{fffd}Bcc: evil@x"),
        "{subject:?}"
    );

    // the HTML shows the names as text, never as markup
    let html = mail.html();
    assert!(
        html.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{html}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"),
        "{html}"
    );
    assert!(
        !html.contains("<img") && !html.contains("<script"),
        "{html}"
    );
    assert!(!mail.text().contains("\nBcc"), "{}", mail.text());
    // the link is percent-encoded by the alert, escaped again by the HTML
    assert!(html.contains("/stages/%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E/a%0D%0ABcc"));
    stop(notifier, &rt, Duration::from_secs(5));
}

#[test]
fn a_server_down_at_first_gets_the_mail_once_it_is_up() {
    let port = free_port();
    let rt = runtime();
    let notifier = start(&settings(port, |_| {}), &rt);

    let called = Instant::now();
    notifier.notify(&firing("orders_etl", "transform"));
    assert!(
        called.elapsed() < Duration::from_millis(200),
        "notify returns at once"
    );
    wait_counts(&notifier, "failed attempts", |c| c.failures >= 3);
    let c = counts(&notifier);
    assert_eq!(
        (c.messages_sent, c.queued, c.alerts_dropped),
        (0, 1, 0),
        "{c:?}"
    );
    assert!(c.retries >= 2, "{c:?}");

    let server = SmtpServer::start(port, &[]);
    server.wait_for(1);
    wait_counts(&notifier, "the alert sent", |c| c.alerts_sent == 1);
    // several backoff periods later there is still one message
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(server.messages().len(), 1);
    let c = stop(notifier, &rt, Duration::from_secs(5));
    assert_eq!(
        (c.messages_sent, c.alerts_sent, c.queued),
        (1, 1, 0),
        "{c:?}"
    );
    assert_eq!(server.messages().len(), 1);
}

#[test]
fn a_refusing_server_is_retried_and_gets_the_mail_once() {
    let port = free_port();
    let server = SmtpServer::start(port, &["--refuse", "2"]);
    let rt = runtime();
    // Backoffs long enough that the resolution surely comes while the retries go on.
    let notifier = start(
        &settings(port, |e| {
            e.retry_backoff = Duration::from_millis(300);
            e.retry_max_backoff = Duration::from_millis(300);
        }),
        &rt,
    );
    notifier.notify(&firing("orders_etl", "transform"));
    // a resolution arriving while the firing one is retried takes its place
    wait_counts(&notifier, "a refusal", |c| c.failures >= 1);
    notifier.notify(&resolved("orders_etl", "transform"));
    let mails = server.wait_for(1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(server.messages().len(), 1);
    assert!(
        mails[0].subject().starts_with("[pipewatch] RESOLVED"),
        "{}",
        mails[0].subject()
    );
    let c = stop(notifier, &rt, Duration::from_secs(5));
    assert_eq!(
        c,
        EmailCounts {
            messages_sent: 1,
            alerts_sent: 1,
            failures: 2,
            retries: 2,
            alerts_replaced: 1,
            ..EmailCounts::default()
        }
    );
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let port = free_port();
    let server = SmtpServer::start(port, &[]);
    // A runtime nobody drives yet: the sender task cannot take anything off the queue.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let notifier = start(&settings(port, |e| e.queue_capacity = 2), &rt);
    let called = Instant::now();
    for i in 0..5 {
        notifier.notify(&firing("orders_etl", &format!("stage-{i}")));
    }
    assert!(
        called.elapsed() < Duration::from_millis(200),
        "notify never waits"
    );
    let c = counts(&notifier);
    assert_eq!((c.alerts_dropped, c.queued), (3, 2), "{c:?}");
    // on stop, the two queued go out at once, group_wait or not
    let c = stop(notifier, &rt, Duration::from_secs(5));
    assert_eq!(
        (c.messages_sent, c.alerts_sent, c.alerts_dropped, c.queued),
        (1, 2, 3, 0),
        "{c:?}"
    );
    let [mail] = &server.wait_for(1)[..] else {
        panic!("one message")
    };
    assert!(mail.text().contains("stage-0") && mail.text().contains("stage-1"));
}

#[test]
fn a_full_outbox_drops_new_alerts_and_a_stop_is_bounded() {
    // Nothing listens: every alert stays in the outbox.
    let port = free_port();
    let rt = runtime();
    let notifier = start(&settings(port, |e| e.max_pending = 2), &rt);
    for i in 0..5 {
        notifier.notify(&firing("orders_etl", &format!("stage-{i}")));
    }
    wait_counts(&notifier, "3 dropped, 2 held", |c| {
        c.alerts_dropped == 3 && c.queued == 2
    });
    let stopping = Instant::now();
    let c = stop(notifier, &rt, Duration::from_millis(500));
    let took = stopping.elapsed();
    assert!(took < Duration::from_millis(700), "the stop took {took:?}");
    assert_eq!(
        (c.alerts_dropped, c.queued, c.alerts_sent),
        (5, 0, 0),
        "{c:?}"
    );
}

#[test]
fn the_hourly_cap_holds_alerts_for_the_next_message() {
    let port = free_port();
    let server = SmtpServer::start(port, &[]);
    let rt = runtime();
    let notifier = start(
        &settings(port, |e| {
            e.max_per_hour = 2;
            e.group_wait = Duration::from_millis(100);
            e.routes = vec![EmailRoute {
                stages: Some("billing/*".into()),
                metrics: None,
                to: vec!["billing-oncall@example.com".into()],
            }];
        }),
        &rt,
    );
    notifier.notify(&firing("p", "one"));
    server.wait_for(1);
    notifier.notify(&firing("p", "two"));
    server.wait_for(2);
    notifier.notify(&firing("p", "three"));
    wait_counts(&notifier, "the cap reached", |c| c.rate_limited == 1);
    notifier.notify(&firing("p", "four"));
    // another route's group falls due while the cap holds: it waits too, and is counted
    notifier.notify(&firing("billing", "charge"));
    wait_counts(&notifier, "both groups held", |c| c.rate_limited == 2);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.messages().len(), 2, "capped at 2 an hour");
    let c = counts(&notifier);
    assert_eq!(
        (c.queued, c.alerts_dropped),
        (3, 0),
        "held, not lost: {c:?}"
    );

    // On stop, what the cap held goes out: one digest per set of recipients.
    let c = stop(notifier, &rt, Duration::from_secs(5));
    let mut held = server.wait_for(4).split_off(2);
    held.sort_by_key(|m| m.recipients());
    let (billing, default) = (&held[0], &held[1]);
    assert_eq!(billing.recipients(), ["billing-oncall@example.com"]);
    assert!(billing.text().contains("billing/charge"));
    assert!(
        default.subject().starts_with("[pipewatch] 2 firing"),
        "{}",
        default.subject()
    );
    assert!(default.text().contains("p/three") && default.text().contains("p/four"));
    assert_eq!(
        (c.messages_sent, c.alerts_sent, c.alerts_dropped, c.queued),
        (4, 5, 0, 0),
        "{c:?}"
    );
    assert_eq!(server.messages().len(), 4);
}

#[test]
fn smtp_auth_logs_in_and_a_wrong_password_fails() {
    let port = free_port();
    let server = SmtpServer::start(port, &["--auth", "pipewatch:s3cret"]);
    let rt = runtime();
    let good = start(
        &settings(port, |e| {
            e.username = "pipewatch".into();
            e.password = "s3cret".into();
        }),
        &rt,
    );
    good.notify(&firing("orders_etl", "transform"));
    let mails = server.wait_for(1);
    assert_eq!(mails[0].0["authenticated"], true);
    stop(good, &rt, Duration::from_secs(5));

    let bad = start(
        &settings(port, |e| {
            e.username = "pipewatch".into();
            e.password = "wrong".into();
        }),
        &rt,
    );
    bad.notify(&firing("orders_etl", "transform"));
    wait_counts(&bad, "refused logins", |c| c.failures >= 2);
    let c = stop(bad, &rt, Duration::from_millis(300));
    assert_eq!((c.messages_sent, c.alerts_dropped), (0, 1), "{c:?}");
    assert_eq!(server.messages().len(), 1);
}

#[test]
fn starttls_is_required_not_attempted() {
    // aiosmtpd offers no STARTTLS here: a `starttls` sink must not fall back to plain text.
    let port = free_port();
    let server = SmtpServer::start(port, &[]);
    let rt = runtime();
    let notifier = start(&settings(port, |e| e.tls = EmailTls::Starttls), &rt);
    notifier.notify(&firing("orders_etl", "transform"));
    wait_counts(&notifier, "failed attempts", |c| c.failures >= 2);
    stop(notifier, &rt, Duration::from_millis(300));
    assert!(server.messages().is_empty());
}

#[test]
fn a_server_that_never_answers_times_out() {
    // Accepts connections (the kernel does, from the backlog) and never says a word.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let rt = runtime();
    let notifier = start(
        &settings(port, |e| e.timeout = Duration::from_millis(300)),
        &rt,
    );
    let called = Instant::now();
    notifier.notify(&firing("orders_etl", "transform"));
    wait_counts(&notifier, "a timed-out attempt", |c| c.failures >= 1);
    let took = called.elapsed();
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "group_wait + timeout, not longer: {took:?}"
    );
    let c = stop(notifier, &rt, Duration::from_millis(300));
    assert_eq!((c.alerts_dropped, c.queued), (1, 0), "{c:?}");
    drop(silent);
}

#[test]
fn a_stop_tries_at_once_however_long_the_backoff_has_grown() {
    let port = free_port();
    let rt = runtime();
    let notifier = start(
        &settings(port, |e| {
            e.retry_backoff = Duration::from_secs(60);
            e.retry_max_backoff = Duration::from_secs(60);
        }),
        &rt,
    );
    notifier.notify(&firing("orders_etl", "transform"));
    wait_counts(&notifier, "a failed attempt", |c| c.failures == 1);
    // The next try would be a minute away; the server comes back, and pipewatch stops.
    let server = SmtpServer::start(port, &[]);
    let stopping = Instant::now();
    let c = stop(notifier, &rt, Duration::from_secs(5));
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopping.elapsed()
    );
    assert_eq!(
        (c.messages_sent, c.alerts_dropped, c.queued),
        (1, 0, 0),
        "{c:?}"
    );
    assert_eq!(server.messages().len(), 1);
}

#[test]
fn start_refuses_settings_without_recipients() {
    let rt = runtime();
    let mut e = settings(free_port(), |_| {});
    e.to.clear();
    let err = EmailNotifier::start(&e, None, rt.handle())
        .err()
        .expect("no recipients, no notifier");
    assert!(err.to_string().contains("email.to"), "{err}");
}
